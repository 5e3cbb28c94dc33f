-- The compute service's subnets, security groups and idempotency records
-- (docs/ARCHITECTURE.md §4).

CREATE TABLE subnets (
    id           text        PRIMARY KEY,
    ipv4_cidr    cidr        NOT NULL CHECK (family(ipv4_cidr) = 4),
    ipv6_cidr    cidr        NULL CHECK (family(ipv6_cidr) = 6),
    -- where public IPv4 addresses for this subnet's VMs come from (none: VMs get no public IPv4)
    public_pool  cidr        NULL CHECK (family(public_pool) = 4),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE security_groups (
    id         text        PRIMARY KEY,
    name       text        NOT NULL,
    tags       jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE security_group_rules (
    id          text        PRIMARY KEY,
    group_id    text        NOT NULL REFERENCES security_groups (id) ON DELETE CASCADE,
    protocol    text        NOT NULL CHECK (protocol IN ('any', 'tcp', 'udp')),
    port        integer     NULL CHECK (port BETWEEN 1 AND 65535),
    remote_cidr cidr        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((protocol = 'any') = (port IS NULL))
);

CREATE INDEX security_group_rules_group_idx ON security_group_rules (group_id);

-- `POST /v1/vms` with an Idempotency-Key: a retry with the same key and body gets the same VM.
CREATE TABLE idempotency_keys (
    key                 text        PRIMARY KEY,
    request_fingerprint text        NOT NULL,
    vm_id               text        NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- Which VMs use a group (deleting a group in use is refused).
CREATE INDEX vms_security_group_ids_idx ON vms USING gin (security_group_ids);
