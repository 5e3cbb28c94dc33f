-- What a node's bootstrap bundle needs beyond the founding's first certificates, signed at
-- founding so that a bundle is pure rendering: one kubelet client certificate per node, and the
-- client certificates every control-plane node shares. Keys are sealed envelopes, as elsewhere.

ALTER TABLE apiservernodes
    ADD COLUMN kubelet_cert text NULL,
    ADD COLUMN kubelet_key  text NULL CHECK (kubelet_key LIKE 'v1:%'),
    ADD CONSTRAINT apiservernodes_kubelet_pair CHECK ((kubelet_cert IS NULL) = (kubelet_key IS NULL));

CREATE TABLE clustercerts (
    cluster_id uuid        NOT NULL REFERENCES kubeclusters (id) ON DELETE CASCADE,
    -- apiserver-etcd-client, etcd-healthcheck-client, front-proxy-client,
    -- apiserver-kubelet-client, controller-manager, scheduler
    name       text        NOT NULL CHECK (name ~ '^[a-z][a-z-]{1,62}$'),
    cert       text        NOT NULL,
    key        text        NOT NULL CHECK (key LIKE 'v1:%'),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, name)
);
