DROP INDEX security_groups_tags_idx;
DROP INDEX vms_tags_idx;
DROP INDEX idempotency_keys_security_group_idx;
DROP INDEX idempotency_keys_vm_idx;

-- Back to VM keys only: the security groups' keys go.
DELETE FROM idempotency_keys WHERE kind <> 'vm';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_one_resource;
ALTER TABLE idempotency_keys DROP COLUMN security_group_id;
ALTER TABLE idempotency_keys ALTER COLUMN vm_id SET NOT NULL;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys DROP COLUMN kind;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (key);
