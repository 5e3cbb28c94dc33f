-- Who may use a subnet or a security group (docs/ARCHITECTURE.md §4): `shared` (every
-- organization) or one organization's id, written as plinth writes org ids (1 to 128 ASCII
-- letters, digits, `.`, `_`, `:`, `-`).
--
-- Existing subnets become `shared`: every subnet was usable by everyone before owners existed,
-- and the configuration reseeds each configured subnet's owner at start anyway.
--
-- Existing security groups: plinth tags every group it creates with `plinth.io/org-id`, so a
-- group carrying a well-formed org id there becomes that organization's — handing it to every
-- organization would let another tenant attach VMs to a group founded for someone else. A group
-- without that tag was not made for any organization plinth knows of; it stays `shared`, which
-- is what it was in effect (anyone could use it), so nothing that worked before stops working.
--
-- The defaults go once the rows are filled: every new row names its owner.

ALTER TABLE subnets ADD COLUMN owner text NOT NULL DEFAULT 'shared'
    CHECK (owner ~ '^[A-Za-z0-9._:-]{1,128}$');
ALTER TABLE subnets ALTER COLUMN owner DROP DEFAULT;

ALTER TABLE security_groups ADD COLUMN owner text NOT NULL DEFAULT 'shared'
    CHECK (owner ~ '^[A-Za-z0-9._:-]{1,128}$');
UPDATE security_groups
    SET owner = tags ->> 'plinth.io/org-id'
    WHERE tags ->> 'plinth.io/org-id' ~ '^[A-Za-z0-9._:-]{1,128}$';
ALTER TABLE security_groups ALTER COLUMN owner DROP DEFAULT;
