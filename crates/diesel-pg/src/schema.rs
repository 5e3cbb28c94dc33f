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
        ca_cert -> Text,
        ca_key -> Text,
        etcd_ca_cert -> Text,
        etcd_ca_key -> Text,
        front_proxy_ca_cert -> Text,
        front_proxy_ca_key -> Text,
        sa_public_key -> Text,
        sa_private_key -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
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

diesel::joinable!(etcdnodes -> kubeclusters (cluster_id));
diesel::joinable!(apiservernodes -> kubeclusters (cluster_id));
diesel::joinable!(clustercerts -> kubeclusters (cluster_id));
diesel::allow_tables_to_appear_in_same_query!(
    kubeclusters,
    etcdnodes,
    apiservernodes,
    clustercerts
);
