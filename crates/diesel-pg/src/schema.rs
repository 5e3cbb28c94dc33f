//! The tables plinth reads and writes (written to match `migrations/` and the compute service's
//! `vms`; `diesel print-schema` would need libpq, which this workspace avoids).

diesel::table! {
    kubeclusters (id) {
        id -> Uuid,
        org_id -> Text,
        name -> Nullable<Text>,
        control_plane_count -> Int2,
        subnet_id -> Text,
        flavor -> Text,
        image -> Text,
        requested_security_group_ids -> Nullable<Array<Text>>,
        security_group_ids -> Array<Text>,
        created_security_group_id -> Nullable<Text>,
        pod_cidr -> Cidr,
        service_cidr -> Cidr,
        dns_domain -> Text,
        api_server_port -> Int4,
        control_plane_dns_name -> Text,
        ingress_wildcard_dns_name -> Text,
        ca_cert -> Nullable<Text>,
        ca_key -> Nullable<Text>,
        etcd_ca_cert -> Nullable<Text>,
        etcd_ca_key -> Nullable<Text>,
        front_proxy_ca_cert -> Nullable<Text>,
        front_proxy_ca_key -> Nullable<Text>,
        sa_public_key -> Nullable<Text>,
        sa_private_key -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        status -> Text,
        dns_configured -> Nullable<Bool>,
        dns_error -> Nullable<Text>,
        certificates_expire_at -> Nullable<Timestamptz>,
        /// Founded before the expiry was kept (set by the migration that added it; never
        /// written by plinth).
        certificates_expiry_unknown -> Bool,
    }
}

diesel::table! {
    etcdnodes (cluster_id, ordinal) {
        cluster_id -> Uuid,
        ordinal -> Int2,
        node_name -> Text,
        vm_id -> Text,
        ipv4 -> Inet,
        ipv6 -> Nullable<Inet>,
        public_ipv4 -> Nullable<Inet>,
        cert -> Text,
        key -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    apiservernodes (cluster_id, ordinal) {
        cluster_id -> Uuid,
        ordinal -> Int2,
        node_name -> Text,
        vm_id -> Text,
        ipv4 -> Inet,
        ipv6 -> Nullable<Inet>,
        public_ipv4 -> Nullable<Inet>,
        cert -> Text,
        key -> Text,
        bootstrap_token_hash -> Text,
        bootstrap_token_expires_at -> Timestamptz,
        created_at -> Timestamptz,
        kubelet_cert -> Nullable<Text>,
        kubelet_key -> Nullable<Text>,
        bootstrap_token_first_used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    clustercerts (cluster_id, name) {
        cluster_id -> Uuid,
        name -> Text,
        cert -> Text,
        key -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// The compute service's table; plinth only reads it.
    vms (id) {
        id -> Text,
        name -> Text,
        status -> Text,
        ipv4 -> Nullable<Inet>,
        ipv6 -> Nullable<Inet>,
        public_ipv4 -> Nullable<Inet>,
    }
}

diesel::table! {
    operations (id) {
        id -> Uuid,
        kind -> Text,
        org_id -> Text,
        cluster_id -> Uuid,
        state -> Text,
        step -> Text,
        owner -> Text,
        lease_expires_at -> Nullable<Timestamptz>,
        problem -> Nullable<Jsonb>,
        started_at -> Timestamptz,
        ended_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    operation_journal (operation_id, idempotency_key) {
        operation_id -> Uuid,
        idempotency_key -> Text,
        kind -> Text,
        resource_id -> Nullable<Text>,
        deleted -> Bool,
        position -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    client_idempotency_keys (org_id, key) {
        org_id -> Text,
        key -> Text,
        fingerprint -> Text,
        operation_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::joinable!(operation_journal -> operations (operation_id));
diesel::joinable!(client_idempotency_keys -> operations (operation_id));
diesel::joinable!(etcdnodes -> kubeclusters (cluster_id));
diesel::joinable!(apiservernodes -> kubeclusters (cluster_id));
diesel::joinable!(clustercerts -> kubeclusters (cluster_id));
diesel::allow_tables_to_appear_in_same_query!(
    kubeclusters,
    etcdnodes,
    apiservernodes,
    clustercerts,
    operations,
    operation_journal,
    client_idempotency_keys
);
