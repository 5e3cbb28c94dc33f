//! `IssueCredentials` on the ports' doubles: who may get credentials for what, and what the
//! certificate request says.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::*;
use crate::model::ClusterStatus;
use crate::ports::pki::{CertificateFacts, MockPki};
use crate::ports::repo::MockRepo;
use crate::testing::{ZONE, certified, cluster_details};

fn org() -> OrgId {
    OrgId::parse("org-a").unwrap()
}

/// A repo that has `cluster` of org-a in `status`, with its root CA.
fn repo_with(cluster: ClusterId, status: ClusterStatus) -> MockRepo {
    let mut repo = MockRepo::new();
    repo.expect_find_cluster().returning(move |o, id| {
        Ok((*o == org() && id == cluster).then(|| cluster_details("org-a", cluster, status)))
    });
    repo.expect_cluster_root_ca()
        .returning(move |o, id| Ok((*o == org() && id == cluster).then(|| certified("ca"))));
    repo
}

/// A PKI that signs and reports what it was asked.
fn signing_pki(asked: Arc<Mutex<Vec<ClientCertRequest>>>) -> MockPki {
    let mut pki = MockPki::new();
    let seen = Arc::clone(&asked);
    pki.expect_sign_client_cert()
        .returning(move |issuer, request| {
            assert_eq!(issuer, &certified("ca"));
            seen.lock().unwrap().push(request.clone());
            Ok(certified(&format!("admin {}", request.common_name)))
        });
    pki.expect_certificate_facts().returning(move |pem| {
        assert!(pem.starts_with("cert of admin"), "{pem}");
        Ok(CertificateFacts {
            serial_hex: "0a1b2c".to_owned(),
            not_after: asked.lock().unwrap().last().unwrap().not_after.unwrap(),
        })
    });
    pki
}

fn lifetime(secs: u64) -> CredentialsLifetime {
    CredentialsLifetime::from_secs(secs).unwrap()
}

fn use_case(repo: MockRepo, pki: MockPki) -> IssueCredentials {
    IssueCredentials::new(Arc::new(repo), Arc::new(pki), lifetime(86_400))
}

#[tokio::test]
async fn a_ready_cluster_gets_a_kubeconfig_naming_the_caller_that_ends_when_asked() {
    let cluster = ClusterId::new_random();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let issue = use_case(
        repo_with(cluster, ClusterStatus::Ready),
        signing_pki(Arc::clone(&asked)),
    );

    let before = OffsetDateTime::now_utc();
    let issued = issue
        .issue(&org(), cluster, "alice@example.com", Some(lifetime(3_600)))
        .await
        .unwrap();

    let requests = asked.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].common_name, "alice@example.com");
    assert_eq!(requests[0].organizations, [ADMIN_GROUP]);
    let ends = requests[0].not_after.unwrap();
    assert_eq!(ends.nanosecond(), 0, "notAfter holds whole seconds");
    let from_before = ends - before;
    assert!(
        from_before > time::Duration::seconds(3_598)
            && from_before <= time::Duration::seconds(3_601),
        "{from_before}"
    );
    assert_eq!(issued.expires_at, ends);
    assert_eq!(issued.serial_hex, "0a1b2c");
    let kubeconfig = issued.kubeconfig.expose();
    assert!(kubeconfig.contains(&STANDARD.encode("cert of admin alice@example.com")));
    assert!(
        kubeconfig.contains(&format!(
            "server: https://api.cluster-{cluster}.{ZONE}:6443"
        )),
        "{kubeconfig}"
    );
}

#[tokio::test]
async fn without_a_lifetime_the_default_is_used() {
    let cluster = ClusterId::new_random();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let issue = use_case(
        repo_with(cluster, ClusterStatus::Ready),
        signing_pki(Arc::clone(&asked)),
    );
    let issued = issue.issue(&org(), cluster, "bob", None).await.unwrap();
    let left = issued.expires_at - OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::seconds(86_390) && left <= time::Duration::seconds(86_400),
        "{left}"
    );
}

#[tokio::test]
async fn another_organizations_cluster_an_unknown_one_and_a_provisioning_one_get_nothing() {
    let cluster = ClusterId::new_random();
    let mut pki = MockPki::new();
    pki.expect_sign_client_cert().never();
    let issue = use_case(repo_with(cluster, ClusterStatus::Ready), pki);
    let other_org = OrgId::parse("org-b").unwrap();
    assert!(matches!(
        issue.issue(&other_org, cluster, "mallory", None).await,
        Err(CredentialsError::NotFound(id)) if id == cluster
    ));
    let unknown = ClusterId::new_random();
    assert!(matches!(
        issue.issue(&org(), unknown, "alice", None).await,
        Err(CredentialsError::NotFound(id)) if id == unknown
    ));

    let mut pki = MockPki::new();
    pki.expect_sign_client_cert().never();
    let issue = use_case(repo_with(cluster, ClusterStatus::Provisioning), pki);
    let err = issue
        .issue(&org(), cluster, "alice", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CredentialsError::NotReady {
                status: ClusterStatus::Provisioning,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_subject_no_certificate_can_hold_is_refused_before_anything_is_read() {
    let mut repo = MockRepo::new();
    repo.expect_find_cluster().never();
    let mut pki = MockPki::new();
    pki.expect_sign_client_cert().never();
    let issue = use_case(repo, pki);
    for subject in [
        String::new(),
        "line\nbreak".to_owned(),
        "x".repeat(MAX_SUBJECT_LEN + 1),
    ] {
        let err = issue
            .issue(&org(), ClusterId::new_random(), &subject, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CredentialsError::UnusableSubject(_)),
            "{subject:?}: {err}"
        );
    }
}

#[test]
fn lifetimes_run_from_ten_minutes_to_thirty_days() {
    for bad in [0, 599, 2_592_001, u64::MAX] {
        assert!(CredentialsLifetime::from_secs(bad).is_err(), "{bad}");
    }
    for good in [600, 86_400, 2_592_000] {
        assert_eq!(
            CredentialsLifetime::from_secs(good).unwrap().as_duration(),
            std::time::Duration::from_secs(good)
        );
    }
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(999_999_999)
        .unwrap();
    let ends = lifetime(600).expiry_from(now);
    assert_eq!(ends.nanosecond(), 0);
    assert_eq!(
        ends - now.replace_nanosecond(0).unwrap(),
        time::Duration::seconds(600)
    );
    let section = CredentialsSection {
        default_expiration_secs: 60,
    };
    assert_eq!(
        section.default_lifetime().unwrap_err().key,
        "default_expiration_secs"
    );
}
