-- plinth's durable cluster truth (docs/ARCHITECTURE.md §1, §7). Private keys are stored only
-- as envelopes ("v1:<key-id>:<base64url(nonce || ciphertext || tag)>", AES-256-GCM, see
-- crates/diesel-pg); the CHECKs refuse anything else, so plaintext keys cannot land here by
-- mistake.

CREATE TABLE kubeclusters (
    id                           uuid        PRIMARY KEY,
    org_id                       text        NOT NULL CHECK (length(org_id) BETWEEN 1 AND 128),
    name                         text        NULL CHECK (name ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'),
    control_plane_count          smallint    NOT NULL CHECK (control_plane_count IN (1, 3, 5, 7)),
    subnet_id                    text        NOT NULL,
    flavor                       text        NOT NULL,
    image                        text        NOT NULL,
    -- what the caller asked for: NULL means "create a group for the cluster"
    requested_security_group_ids text[]      NULL,
    -- what the control-plane VMs got (step 4), and the group plinth created, if any
    security_group_ids           text[]      NOT NULL DEFAULT '{}',
    created_security_group_id    text        NULL,
    pod_cidr                     cidr        NOT NULL,
    service_cidr                 cidr        NOT NULL,
    dns_domain                   text        NOT NULL,
    api_server_port              integer     NOT NULL CHECK (api_server_port BETWEEN 1 AND 65535),
    control_plane_dns_name       text        NOT NULL,
    ingress_wildcard_dns_name    text        NOT NULL,
    ca_cert                      text        NOT NULL,
    ca_key                       text        NOT NULL CHECK (ca_key LIKE 'v1:%'),
    etcd_ca_cert                 text        NOT NULL,
    etcd_ca_key                  text        NOT NULL CHECK (etcd_ca_key LIKE 'v1:%'),
    front_proxy_ca_cert          text        NOT NULL,
    front_proxy_ca_key           text        NOT NULL CHECK (front_proxy_ca_key LIKE 'v1:%'),
    sa_public_key                text        NOT NULL,
    sa_private_key               text        NOT NULL CHECK (sa_private_key LIKE 'v1:%'),
    created_at                   timestamptz NOT NULL,
    updated_at                   timestamptz NOT NULL DEFAULT now(),
    -- a name is unique within its organization (several unnamed clusters are fine: NULLs differ)
    CONSTRAINT kubeclusters_org_name_key UNIQUE (org_id, name)
);

-- Listing an organization's clusters newest first, with keyset pagination on (created_at, id).
CREATE INDEX kubeclusters_org_created_idx ON kubeclusters (org_id, created_at DESC, id DESC);

-- One row per control-plane node and facet. The same node appears in both tables: one machine
-- is an etcd member and an API server host.
CREATE TABLE etcdnodes (
    cluster_id  uuid        NOT NULL REFERENCES kubeclusters (id) ON DELETE CASCADE,
    ordinal     smallint    NOT NULL CHECK (ordinal BETWEEN 1 AND 7),
    node_name   text        NOT NULL,
    vm_id       text        NOT NULL,
    ipv4        inet        NOT NULL,
    ipv6        inet        NULL,
    public_ipv4 inet        NULL,
    cert        text        NOT NULL,
    key         text        NOT NULL CHECK (key LIKE 'v1:%'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, ordinal),
    CONSTRAINT etcdnodes_cluster_node_name_key UNIQUE (cluster_id, node_name)
);

CREATE TABLE apiservernodes (
    cluster_id                 uuid        NOT NULL REFERENCES kubeclusters (id) ON DELETE CASCADE,
    ordinal                    smallint    NOT NULL CHECK (ordinal BETWEEN 1 AND 7),
    node_name                  text        NOT NULL,
    vm_id                      text        NOT NULL,
    ipv4                       inet        NOT NULL,
    ipv6                       inet        NULL,
    public_ipv4                inet        NULL,
    cert                       text        NOT NULL,
    key                        text        NOT NULL CHECK (key LIKE 'v1:%'),
    -- the node's bootstrap token, hashed ("sha256:<hex>"); the token itself is only in its userdata
    bootstrap_token_hash       text        NOT NULL CHECK (bootstrap_token_hash LIKE 'sha256:%'),
    bootstrap_token_expires_at timestamptz NOT NULL,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, ordinal),
    CONSTRAINT apiservernodes_cluster_node_name_key UNIQUE (cluster_id, node_name)
);
