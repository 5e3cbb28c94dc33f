DROP TABLE operation_journal;
DROP TABLE operations;
DELETE FROM kubeclusters WHERE status <> 'ready';
ALTER TABLE kubeclusters
    DROP CONSTRAINT kubeclusters_ready_has_trust_root,
    DROP COLUMN status,
    ALTER COLUMN ca_cert SET NOT NULL,
    ALTER COLUMN ca_key SET NOT NULL,
    ALTER COLUMN etcd_ca_cert SET NOT NULL,
    ALTER COLUMN etcd_ca_key SET NOT NULL,
    ALTER COLUMN front_proxy_ca_cert SET NOT NULL,
    ALTER COLUMN front_proxy_ca_key SET NOT NULL,
    ALTER COLUMN sa_public_key SET NOT NULL,
    ALTER COLUMN sa_private_key SET NOT NULL;
