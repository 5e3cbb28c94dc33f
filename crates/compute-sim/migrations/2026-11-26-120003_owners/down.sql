ALTER TABLE security_groups DROP COLUMN owner;
ALTER TABLE subnets DROP COLUMN owner;
