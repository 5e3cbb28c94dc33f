-- A cluster's life after its founding (docs/ARCHITECTURE.md §7, §9): deletion as a durable
-- operation, bootstrap tokens that burn after their first use and can be issued again, and the
-- certificates' expiry kept for reports.

-- A deletion is an operation like a founding: journaled, leased, taken over when its replica
-- goes away.
ALTER TABLE operations
    DROP CONSTRAINT operations_kind_check,
    ADD CONSTRAINT operations_kind_check CHECK (kind IN ('found', 'delete'));

-- At most one deletion of a cluster runs. `begin_deletion` already serialises on the cluster's
-- row and answers with the running one; this makes a second one impossible whatever the code,
-- and finds the running one for it.
CREATE UNIQUE INDEX operations_one_running_deletion_idx ON operations (cluster_id)
    WHERE kind = 'delete' AND state = 'running';

-- `deleting`: a ready cluster whose deletion runs, or stopped and waits for another DELETE. Its
-- row keeps everything it had (kubeclusters_ready_has_trust_root holds for it as for a ready
-- one: only `provisioning` may lack trust material) until the deletion's last transaction
-- removes it with its node rows and certificates (ON DELETE CASCADE).
ALTER TABLE kubeclusters
    DROP CONSTRAINT kubeclusters_status_check,
    ADD CONSTRAINT kubeclusters_status_check CHECK (status IN ('provisioning', 'ready', 'deleting'));

-- The earliest notAfter of the cluster's certificates (CAs included), written by the founding's
-- last transaction, for `GET /clusters?expiring_before=`. NULL while provisioning.
--
-- Clusters founded before this migration have no value, and plinth cannot compute one in SQL:
-- they are marked `certificates_expiry_unknown` (every row that exists now, including a
-- provisioning one an older replica may still finish: the column is added with DEFAULT true,
-- which marks existing rows without rewriting them, then defaults to false for new rows). Every
-- other cluster past `provisioning` must carry its expiry. A listing by expiry never selects a
-- cluster without one.
ALTER TABLE kubeclusters
    ADD COLUMN certificates_expire_at      timestamptz NULL,
    ADD COLUMN certificates_expiry_unknown boolean     NOT NULL DEFAULT true;
ALTER TABLE kubeclusters
    ALTER COLUMN certificates_expiry_unknown SET DEFAULT false,
    ADD CONSTRAINT kubeclusters_founded_has_expiry CHECK (
        status = 'provisioning' OR certificates_expire_at IS NOT NULL OR certificates_expiry_unknown
    );

-- `expiring_before` within an organization: the clusters of an org whose certificates end before
-- a time. (Without the bound, listing walks kubeclusters_org_created_idx as before.)
CREATE INDEX kubeclusters_org_expiry_idx ON kubeclusters (org_id, certificates_expire_at)
    WHERE certificates_expire_at IS NOT NULL;

-- When a bundle was first handed out for the node's current bootstrap token (NULL: not yet).
-- The token is burned a reuse window after that; issuing a new token clears it.
ALTER TABLE apiservernodes
    ADD COLUMN bootstrap_token_first_used_at timestamptz NULL;
