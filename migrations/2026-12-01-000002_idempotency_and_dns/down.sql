ALTER TABLE kubeclusters
    DROP CONSTRAINT kubeclusters_dns_error_with_outcome,
    DROP COLUMN dns_error,
    DROP COLUMN dns_configured;
DROP TABLE client_idempotency_keys;
