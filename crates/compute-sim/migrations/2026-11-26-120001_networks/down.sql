DROP INDEX vms_security_group_ids_idx;
DROP TABLE idempotency_keys;
DROP TABLE security_group_rules;
DROP TABLE security_groups;
DROP TABLE subnets;
