-- Idempotent foundings and the DNS outcome (docs/ARCHITECTURE.md §7, §10).
--
-- A client may send an Idempotency-Key with a founding; the key is kept per organization with
-- the fingerprint of the request and the operation it started, committed in the founding's first
-- transaction. A retry with the same key is answered from that operation (a success, a failure,
-- or one still running) instead of founding again; the same key with another request is refused.
-- Keys are forgotten after their retention.
--
-- `client_`: the compute service, which migrates the same database, has an `idempotency_keys`
-- table of its own (the keys plinth sends it), and the journal's keys are plinth's too.

CREATE TABLE client_idempotency_keys (
    org_id       text        NOT NULL CHECK (length(org_id) BETWEEN 1 AND 128),
    key          text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- SHA-256 of the request's route and canonical body, lowercase hex
    fingerprint  text        NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    -- No cascade from kubeclusters (there is no reference to it): a failed founding removes its
    -- cluster row, but its key keeps pointing at the failed operation so that a retry answers
    -- with that failure. Operations are never deleted.
    operation_id uuid        NOT NULL REFERENCES operations (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    -- one key per organization: a second founding with it is refused (IdempotencyKeyTaken)
    CONSTRAINT client_idempotency_keys_pkey PRIMARY KEY (org_id, key)
);

-- Purging walks the expired keys.
CREATE INDEX client_idempotency_keys_expires_idx ON client_idempotency_keys (expires_at);

-- What step 10 did about the control plane's DNS name: NULL until the founding has said (or
-- when its replica stopped before it could). An error comes only with an outcome.
ALTER TABLE kubeclusters
    ADD COLUMN dns_configured boolean NULL,
    ADD COLUMN dns_error      text    NULL,
    ADD CONSTRAINT kubeclusters_dns_error_with_outcome
        CHECK (dns_error IS NULL OR dns_configured IS NOT NULL);
