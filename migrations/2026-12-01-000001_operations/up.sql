-- Durable foundings (docs/ARCHITECTURE.md §9). A founding commits its operation and its cluster
-- row first (the row claims the name, `provisioning`, with no trust material yet), journals every
-- side effect before and after it happens, and ends with one short transaction that makes the
-- cluster `ready`. A replica renews its operations' leases; any replica takes over an operation
-- whose lease expired and rolls it back from the journal.

ALTER TABLE kubeclusters
    ADD COLUMN status text NOT NULL DEFAULT 'ready' CHECK (status IN ('provisioning', 'ready')),
    ALTER COLUMN ca_cert DROP NOT NULL,
    ALTER COLUMN ca_key DROP NOT NULL,
    ALTER COLUMN etcd_ca_cert DROP NOT NULL,
    ALTER COLUMN etcd_ca_key DROP NOT NULL,
    ALTER COLUMN front_proxy_ca_cert DROP NOT NULL,
    ALTER COLUMN front_proxy_ca_key DROP NOT NULL,
    ALTER COLUMN sa_public_key DROP NOT NULL,
    ALTER COLUMN sa_private_key DROP NOT NULL,
    -- A ready cluster has all of its trust material; a provisioning one gets it at step 3.
    ADD CONSTRAINT kubeclusters_ready_has_trust_root CHECK (
        status = 'provisioning' OR (
            ca_cert IS NOT NULL AND ca_key IS NOT NULL
            AND etcd_ca_cert IS NOT NULL AND etcd_ca_key IS NOT NULL
            AND front_proxy_ca_cert IS NOT NULL AND front_proxy_ca_key IS NOT NULL
            AND sa_public_key IS NOT NULL AND sa_private_key IS NOT NULL
        )
    );
-- Existing rows are ready; new rows say what they are.
ALTER TABLE kubeclusters ALTER COLUMN status DROP DEFAULT;

CREATE TABLE operations (
    id               uuid        PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('found')),
    org_id           text        NOT NULL CHECK (length(org_id) BETWEEN 1 AND 128),
    -- no foreign key: a failed founding's cluster row is removed, its operation stays
    cluster_id       uuid        NOT NULL,
    state            text        NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    step             text        NOT NULL,
    -- the replica holding (or, once ended, last holding) the operation
    owner            text        NOT NULL,
    lease_expires_at timestamptz NULL,
    -- why it failed: {kind, step, detail, removed, left_behind}
    problem          jsonb       NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    ended_at         timestamptz NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT operations_lease_while_running CHECK ((state = 'running') = (lease_expires_at IS NOT NULL)),
    CONSTRAINT operations_ended_when_done CHECK ((state = 'running') = (ended_at IS NULL)),
    CONSTRAINT operations_problem_when_failed CHECK ((state = 'failed') = (problem IS NOT NULL))
);

-- Recovery looks for running operations whose lease expired.
CREATE INDEX operations_running_lease_idx ON operations (lease_expires_at) WHERE state = 'running';
CREATE INDEX operations_cluster_idx ON operations (cluster_id);

-- Every side effect of an operation: written with its idempotency key before the call, with the
-- resource's id after it, marked deleted when a rollback removed it.
CREATE TABLE operation_journal (
    operation_id    uuid        NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    idempotency_key text        NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    kind            text        NOT NULL CHECK (kind IN ('security_group', 'vm')),
    resource_id     text        NULL,
    deleted         boolean     NOT NULL DEFAULT false,
    position        bigserial,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operation_id, idempotency_key)
);
