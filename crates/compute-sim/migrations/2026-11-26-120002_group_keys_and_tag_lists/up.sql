-- Idempotency keys for security groups as well as VMs, and listing by tag
-- (docs/ARCHITECTURE.md §4).
--
-- A key now lives in the namespace of one resource kind: `kind` is part of the primary key, so
-- the key of a VM creation never replays as a security group (nor the other way round). A key
-- points at exactly one resource of its kind, and goes with it when that is deleted.

ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD COLUMN kind text NOT NULL DEFAULT 'vm';
ALTER TABLE idempotency_keys ALTER COLUMN kind DROP DEFAULT;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (kind, key);
ALTER TABLE idempotency_keys ALTER COLUMN vm_id DROP NOT NULL;
ALTER TABLE idempotency_keys
    ADD COLUMN security_group_id text NULL REFERENCES security_groups (id) ON DELETE CASCADE;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_one_resource CHECK (
    (kind = 'vm' AND vm_id IS NOT NULL AND security_group_id IS NULL)
    OR (kind = 'security_group' AND security_group_id IS NOT NULL AND vm_id IS NULL)
);

-- Deleting a VM or a group finds its keys without a scan.
CREATE INDEX idempotency_keys_vm_idx ON idempotency_keys (vm_id) WHERE vm_id IS NOT NULL;
CREATE INDEX idempotency_keys_security_group_idx ON idempotency_keys (security_group_id)
    WHERE security_group_id IS NOT NULL;

-- `GET /v1/vms?tag=k=v` and `GET /v1/security-groups?tag=k=v`: `tags @> '{"k": "v"}'`.
-- jsonb_path_ops serves containment (the only operator used) with a smaller index.
CREATE INDEX vms_tags_idx ON vms USING gin (tags jsonb_path_ops);
CREATE INDEX security_groups_tags_idx ON security_groups USING gin (tags jsonb_path_ops);
