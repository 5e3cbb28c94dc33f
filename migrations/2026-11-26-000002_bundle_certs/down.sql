DROP TABLE clustercerts;
ALTER TABLE apiservernodes
    DROP CONSTRAINT apiservernodes_kubelet_pair,
    DROP COLUMN kubelet_key,
    DROP COLUMN kubelet_cert;
