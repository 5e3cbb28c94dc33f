-- The schema before deletions existed cannot hold a deleting cluster or a deletion. Their rows
-- go (a deleting cluster's node rows and certificates with it): whatever its stopped deletion
-- left on the compute service then has neither a cluster row nor a running operation, so the
-- orphan sweep removes it — which is what the deletion was for.
DELETE FROM client_idempotency_keys
    WHERE operation_id IN (SELECT id FROM operations WHERE kind = 'delete');
DELETE FROM operations WHERE kind = 'delete';
DELETE FROM kubeclusters WHERE status = 'deleting';

ALTER TABLE apiservernodes DROP COLUMN bootstrap_token_first_used_at;

DROP INDEX kubeclusters_org_expiry_idx;
ALTER TABLE kubeclusters
    DROP CONSTRAINT kubeclusters_founded_has_expiry,
    DROP COLUMN certificates_expiry_unknown,
    DROP COLUMN certificates_expire_at,
    DROP CONSTRAINT kubeclusters_status_check,
    ADD CONSTRAINT kubeclusters_status_check CHECK (status IN ('provisioning', 'ready'));

DROP INDEX operations_one_running_deletion_idx;
ALTER TABLE operations
    DROP CONSTRAINT operations_kind_check,
    ADD CONSTRAINT operations_kind_check CHECK (kind IN ('found'));
