-- A bootstrap fetch finds its node by the hash of the token it presents (docs/ARCHITECTURE.md
-- §6, §12): one indexed read decides, before any key is opened. Tokens are 256 random bits, so
-- two nodes never share a hash; the index also makes sure of it.
CREATE UNIQUE INDEX apiservernodes_token_hash_idx ON apiservernodes (bootstrap_token_hash);
