-- The compute service's VM records (docs/ARCHITECTURE.md §4). The compute service owns this
-- table; plinth only reads it, at step 6 of a founding, to learn each VM's name and addresses.
-- A row is committed, with its addresses, before `POST /v1/vms` answers.

CREATE TABLE vms (
    id                 text        PRIMARY KEY,
    name               text        NOT NULL,
    status             text        NOT NULL,
    ipv4               inet        NULL,
    ipv6               inet        NULL,
    public_ipv4        inet        NULL,
    flavor             text        NOT NULL,
    image              text        NOT NULL,
    subnet_id          text        NOT NULL,
    security_group_ids text[]      NOT NULL DEFAULT '{}',
    tags               jsonb       NOT NULL DEFAULT '{}',
    user_data          text        NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- An address is never handed out twice while its VM exists.
CREATE UNIQUE INDEX vms_subnet_ipv4_key ON vms (subnet_id, ipv4) WHERE ipv4 IS NOT NULL;
CREATE UNIQUE INDEX vms_ipv6_key ON vms (ipv6) WHERE ipv6 IS NOT NULL;
CREATE UNIQUE INDEX vms_public_ipv4_key ON vms (public_ipv4) WHERE public_ipv4 IS NOT NULL;
