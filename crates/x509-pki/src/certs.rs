//! Certificate profiles and issuance: the cluster CAs, serving and client leaves.
//!
//! Every rule here is one Go's crypto/x509 or `openssl verify -x509_strict` enforces
//! (docs/ARCHITECTURE.md §5.4): CAs with critical basicConstraints, keyUsage and an SKI and
//! no EKU; leaves with AKI, SANs and the EKUs their role needs; the issuer copied from the CA's
//! subject byte for byte; positive random serials of at most 20 octets; times in canonical form.

use std::net::IpAddr;
use std::time::SystemTime;

use const_oid::ObjectIdentifier;
use const_oid::db::rfc4519::{COMMON_NAME, ORGANIZATION_NAME, ORGANIZATIONAL_UNIT_NAME};
use const_oid::db::rfc5912::{ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH};
use der::asn1::{Ia5String, OctetString, SetOfVec};
use der::pem::LineEnding;
use der::{Any, Decode, DecodePem, Encode, EncodePem, Tag};
use plinth_domain::model::{ClusterId, SubjectAltNames};
use plinth_domain::ports::pki::{
    CertificateFacts, CertifiedKey, ClientCertRequest, ClusterCa, PkiError, ServiceAccountKeyPair,
    ServingCertRequest,
};
use plinth_domain::ports::{BoxError, context};
use spki::SubjectPublicKeyInfoRef;
use time::OffsetDateTime;
use x509_cert::Certificate;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::builder::CertificateBuilder;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::keys::KeyPair;
use crate::settings::PkiSettings;
use crate::source::KeySource;

/// The CA subjects' common names, kubeadm's.
const ROOT_CN: &str = "kubernetes";
const ETCD_CA_CN: &str = "etcd-ca";
const FRONT_PROXY_CA_CN: &str = "front-proxy-ca";

/// Creates a cluster's root CA and its `etcd-ca` and `front-proxy-ca` intermediates.
pub fn create_cluster_ca(
    settings: &PkiSettings,
    cluster: ClusterId,
) -> Result<ClusterCa, PkiError> {
    create_cluster_ca_from(settings, &KeySource::inline(), cluster)
}

/// [`create_cluster_ca`] with keys from `keys`.
pub fn create_cluster_ca_from(
    settings: &PkiSettings,
    keys: &KeySource,
    cluster: ClusterId,
) -> Result<ClusterCa, PkiError> {
    let unit = cluster.label();
    let root_key = keys.certificate_key(settings.key_algorithm)?;
    let root_subject = ca_subject(ROOT_CN, &unit)?;
    let root_cert = issue(
        settings,
        Profile {
            subject: root_subject.clone(),
            issuer: root_subject,
            issuer_key_id: None,
            kind: Kind::Ca,
        },
        &root_key,
        &root_key,
        SystemTime::now() + settings.ca_validity,
    )?;
    let root = Issuer {
        key_id: subject_key_id(&root_cert),
        cert: root_cert,
        key: root_key,
    };
    let etcd = create_intermediate(settings, keys, &root, ETCD_CA_CN, &unit)?;
    let front_proxy = create_intermediate(settings, keys, &root, FRONT_PROXY_CA_CN, &unit)?;
    Ok(ClusterCa {
        root: root.into_certified()?,
        etcd,
        front_proxy,
    })
}

fn create_intermediate(
    settings: &PkiSettings,
    keys: &KeySource,
    root: &Issuer,
    common_name: &str,
    unit: &str,
) -> Result<CertifiedKey, PkiError> {
    let key = keys.certificate_key(settings.key_algorithm)?;
    let cert = issue(
        settings,
        Profile {
            subject: ca_subject(common_name, unit)?,
            issuer: root.cert.tbs_certificate().subject().clone(),
            issuer_key_id: root.key_id.clone(),
            kind: Kind::Ca,
        },
        &key,
        &root.key,
        SystemTime::now() + settings.ca_validity,
    )?;
    Issuer {
        key_id: None,
        cert,
        key,
    }
    .into_certified()
}

/// Creates the service-account key pair (`sa.key`, `sa.pub`).
pub fn create_service_account_key(
    settings: &PkiSettings,
) -> Result<ServiceAccountKeyPair, PkiError> {
    create_service_account_key_from(settings, &KeySource::inline())
}

/// [`create_service_account_key`] with the key from `keys`.
pub fn create_service_account_key_from(
    settings: &PkiSettings,
    keys: &KeySource,
) -> Result<ServiceAccountKeyPair, PkiError> {
    keys.service_account_key(settings.service_account_key_algorithm)
}

/// Signs a serving certificate with a fresh key: serverAuth (+ clientAuth when asked), the SANs.
pub fn sign_serving_cert(
    settings: &PkiSettings,
    issuer: &CertifiedKey,
    request: &ServingCertRequest,
) -> Result<CertifiedKey, PkiError> {
    sign_serving_cert_from(settings, &KeySource::inline(), issuer, request)
}

/// [`sign_serving_cert`] with the key from `keys`.
pub fn sign_serving_cert_from(
    settings: &PkiSettings,
    keys: &KeySource,
    issuer: &CertifiedKey,
    request: &ServingCertRequest,
) -> Result<CertifiedKey, PkiError> {
    if request.sans.dns_names.is_empty() && request.sans.ip_addresses.is_empty() {
        // Go ignores the CN for host checks: a serving cert without SANs serves nobody.
        return Err(PkiError::InvalidRequest(
            "a serving certificate needs at least one DNS or IP SAN".into(),
        ));
    }
    let mut usages = vec![ID_KP_SERVER_AUTH];
    if request.client_auth {
        usages.push(ID_KP_CLIENT_AUTH);
    }
    sign_leaf(
        settings,
        keys,
        issuer,
        leaf_subject(&request.common_name, &[])?,
        usages,
        Some(subject_alt_names(&request.sans)?),
        None,
    )
}

/// Signs a client certificate with a fresh key: clientAuth, CN = user, O = groups, and the
/// requested `notAfter` (to the second) or the configured leaf lifetime.
pub fn sign_client_cert(
    settings: &PkiSettings,
    issuer: &CertifiedKey,
    request: &ClientCertRequest,
) -> Result<CertifiedKey, PkiError> {
    sign_client_cert_from(settings, &KeySource::inline(), issuer, request)
}

/// [`sign_client_cert`] with the key from `keys`.
pub fn sign_client_cert_from(
    settings: &PkiSettings,
    keys: &KeySource,
    issuer: &CertifiedKey,
    request: &ClientCertRequest,
) -> Result<CertifiedKey, PkiError> {
    sign_leaf(
        settings,
        keys,
        issuer,
        leaf_subject(&request.common_name, &request.organizations)?,
        vec![ID_KP_CLIENT_AUTH],
        None,
        request.not_after.map(SystemTime::from),
    )
}

/// What a certificate says of itself: its serial (lowercase hex, without DER's sign octet) and
/// `notAfter`.
pub fn certificate_facts(cert_pem: &str) -> Result<CertificateFacts, PkiError> {
    let cert = Certificate::from_pem(cert_pem.as_bytes())
        .map_err(|e| PkiError::InvalidRequest(format!("not a PEM certificate: {e}")))?;
    let tbs = cert.tbs_certificate();
    let serial = tbs.serial_number().as_bytes();
    let serial = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    Ok(CertificateFacts {
        serial_hex: serial.iter().map(|b| format!("{b:02x}")).collect(),
        not_after: OffsetDateTime::from(tbs.validity().not_after.to_system_time()),
    })
}

fn sign_leaf(
    settings: &PkiSettings,
    keys: &KeySource,
    issuer: &CertifiedKey,
    subject: Name,
    usages: Vec<ObjectIdentifier>,
    sans: Option<SubjectAltName>,
    not_after: Option<SystemTime>,
) -> Result<CertifiedKey, PkiError> {
    let issuer = Issuer::load_recent(issuer)?;
    let now = SystemTime::now();
    let not_after = match not_after {
        None => now + settings.leaf_validity,
        Some(asked) => {
            let issuer_ends = issuer
                .cert
                .tbs_certificate()
                .validity()
                .not_after
                .to_system_time();
            if asked <= now {
                return Err(PkiError::InvalidRequest("notAfter is in the past".into()));
            }
            if asked > issuer_ends {
                // A chain is valid only while every certificate in it is.
                return Err(PkiError::InvalidRequest(
                    "notAfter is later than the issuer's own".into(),
                ));
            }
            asked
        }
    };
    let key = keys.certificate_key(settings.key_algorithm)?;
    let cert = issue(
        settings,
        Profile {
            subject,
            issuer: issuer.cert.tbs_certificate().subject().clone(),
            issuer_key_id: issuer.key_id.clone(),
            kind: Kind::Leaf {
                usages,
                sans,
                key_encipherment: key.is_rsa(),
            },
        },
        &key,
        &issuer.key,
        not_after,
    )?;
    Ok(CertifiedKey {
        cert_pem: to_pem(&cert)?,
        key_pem: key.to_pkcs8_pem()?,
    })
}

/// A CA certificate with its key, ready to sign.
struct Issuer {
    cert: Certificate,
    key: KeyPair,
    /// The CA's own SKI, copied into children's AKI so the two always match.
    key_id: Option<Vec<u8>>,
}

/// How many parsed issuers each thread keeps (see [`Issuer::load_recent`]): a founding signs
/// with its root CA and two intermediates.
const RECENT_ISSUERS: usize = 3;

/// A parsed issuer, with the certificate PEM it came from and a digest of its key's PEM.
type RecentIssuer = (String, [u8; 32], std::rc::Rc<Issuer>);

thread_local! {
    /// Issuers this thread parsed last; dropped (and their keys wiped) when pushed out or when
    /// the thread ends.
    static RECENT: std::cell::RefCell<Vec<RecentIssuer>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Issuer {
    /// [`Issuer::load`], reusing what this thread parsed for the same certificate and key among
    /// its last few issuers: parsing a CA key derives its public key, which costs about as much
    /// as a signature, and a founding signs 16 leaves with 3 CAs.
    fn load_recent(issuer: &CertifiedKey) -> Result<std::rc::Rc<Self>, PkiError> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(issuer.key_pem.expose().as_bytes()).into();
        let hit = RECENT.with_borrow(|recent| {
            recent
                .iter()
                .find(|(cert, key, _)| *key == digest && *cert == issuer.cert_pem)
                .map(|(_, _, parsed)| std::rc::Rc::clone(parsed))
        });
        if let Some(parsed) = hit {
            return Ok(parsed);
        }
        let parsed = std::rc::Rc::new(Self::load(issuer)?);
        RECENT.with_borrow_mut(|recent| {
            if recent.len() >= RECENT_ISSUERS {
                recent.remove(0);
            }
            recent.push((issuer.cert_pem.clone(), digest, std::rc::Rc::clone(&parsed)));
        });
        Ok(parsed)
    }

    /// Parses an issuer and checks it can sign: a CA certificate whose key is the given key.
    fn load(issuer: &CertifiedKey) -> Result<Self, PkiError> {
        let unusable = |why: BoxError| PkiError::UnusableIssuer(why);
        let cert = Certificate::from_pem(issuer.cert_pem.as_bytes()).map_err(|e| {
            unusable(context(
                "the issuer certificate is not a PEM certificate",
                e,
            ))
        })?;
        let key = KeyPair::from_pkcs8_pem(issuer.key_pem.expose())
            .map_err(|why| unusable(context("the issuer key", why)))?;
        if key.spki()? != *cert.tbs_certificate().subject_public_key_info() {
            return Err(unusable(
                "the issuer key does not belong to the issuer certificate".into(),
            ));
        }
        let is_ca = cert
            .tbs_certificate()
            .get_extension::<BasicConstraints>()
            .ok()
            .flatten()
            .is_some_and(|(_, bc)| bc.ca);
        if !is_ca {
            return Err(unusable("the issuer certificate is not a CA".into()));
        }
        Ok(Self {
            key_id: subject_key_id(&cert),
            cert,
            key,
        })
    }

    fn into_certified(self) -> Result<CertifiedKey, PkiError> {
        Ok(CertifiedKey {
            cert_pem: to_pem(&self.cert)?,
            key_pem: self.key.to_pkcs8_pem()?,
        })
    }
}

fn subject_key_id(cert: &Certificate) -> Option<Vec<u8>> {
    cert.tbs_certificate()
        .get_extension::<SubjectKeyIdentifier>()
        .ok()
        .flatten()
        .map(|(_, ski)| ski.0.as_bytes().to_vec())
}

enum Kind {
    Ca,
    Leaf {
        usages: Vec<ObjectIdentifier>,
        sans: Option<SubjectAltName>,
        key_encipherment: bool,
    },
}

/// One certificate's subject, issuer and extensions.
struct Profile {
    subject: Name,
    /// The issuing CA's subject as decoded from its certificate; DER re-encodes it to the same
    /// bytes, which is what Go matches parents by.
    issuer: Name,
    /// The issuer's SKI; `None` for a self-signed root (Go sets no AKI there either).
    issuer_key_id: Option<Vec<u8>>,
    kind: Kind,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let subject = tbs.subject();
        let mut extensions = Vec::with_capacity(6);
        let mut push = |ext: &dyn ToExtensionDyn| -> x509_cert::builder::Result<()> {
            extensions.push(ext.to_extension_dyn(subject)?);
            Ok(())
        };
        match &self.kind {
            Kind::Ca => {
                push(&BasicConstraints {
                    ca: true,
                    path_len_constraint: None,
                })?;
                push(&KeyUsage(
                    KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature,
                ))?;
            }
            Kind::Leaf {
                usages,
                sans,
                key_encipherment,
            } => {
                push(&BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                })?;
                let mut key_usage = KeyUsages::DigitalSignature.into();
                if *key_encipherment {
                    key_usage |= KeyUsages::KeyEncipherment;
                }
                push(&KeyUsage(key_usage))?;
                push(&ExtendedKeyUsage(usages.clone()))?;
                if let Some(sans) = sans {
                    push(sans)?;
                }
            }
        }
        push(&SubjectKeyIdentifier::try_from(spk)?)?;
        if let Some(key_id) = &self.issuer_key_id {
            push(&AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(key_id.as_slice())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            })?;
        }
        Ok(extensions)
    }
}

/// `ToExtension` with the subject only, object-safe, so the list above reads as a list.
trait ToExtensionDyn {
    fn to_extension_dyn(&self, subject: &Name) -> x509_cert::builder::Result<Extension>;
}

impl<T> ToExtensionDyn for T
where
    for<'a> &'a T: ToExtension,
    for<'a> <&'a T as ToExtension>::Error: Into<x509_cert::builder::Error>,
{
    fn to_extension_dyn(&self, subject: &Name) -> x509_cert::builder::Result<Extension> {
        self.to_extension(subject, &[]).map_err(Into::into)
    }
}

fn issue(
    settings: &PkiSettings,
    profile: Profile,
    subject_key: &KeyPair,
    issuer_key: &KeyPair,
    not_after: SystemTime,
) -> Result<Certificate, PkiError> {
    let failed = |what: &str, e: der::Error| PkiError::Failed(context(what, e));
    let now = SystemTime::now();
    let validity = Validity::new(
        Time::try_from(now - settings.backdate).map_err(|e| failed("notBefore", e))?,
        Time::try_from(not_after).map_err(|e| failed("notAfter", e))?,
    );
    let serial = SerialNumber::generate(&mut rand::rng());
    let builder = CertificateBuilder::new(profile, serial, validity, subject_key.spki()?)
        .map_err(|e| PkiError::Failed(context("preparing a certificate", e)))?;
    issuer_key.sign(builder)
}

fn to_pem(cert: &Certificate) -> Result<String, PkiError> {
    cert.to_pem(LineEnding::LF)
        .map_err(|e| PkiError::Failed(context("encoding a certificate", e)))
}

fn ca_subject(common_name: &str, unit: &str) -> Result<Name, PkiError> {
    name(&[
        (ORGANIZATION_NAME, "plinth"),
        (ORGANIZATIONAL_UNIT_NAME, unit),
        (COMMON_NAME, common_name),
    ])
}

/// O values first, then CN: the order Go's `pkix.Name` writes.
fn leaf_subject(common_name: &str, organizations: &[String]) -> Result<Name, PkiError> {
    let mut attributes: Vec<(ObjectIdentifier, &str)> = organizations
        .iter()
        .map(|o| (ORGANIZATION_NAME, o.as_str()))
        .collect();
    attributes.push((COMMON_NAME, common_name));
    name(&attributes)
}

/// A name of single-valued RDNs with UTF8String values.
fn name(attributes: &[(ObjectIdentifier, &str)]) -> Result<Name, PkiError> {
    let invalid = |e: der::Error| PkiError::InvalidRequest(format!("subject name: {e}"));
    let mut rdns = Vec::with_capacity(attributes.len());
    for (oid, value) in attributes {
        // X.520 bounds a common name at 64 characters, but Kubernetes identities are longer:
        // a kubelet's is `system:node:<node name>`, and node names are DNS names. kubeadm issues
        // such subjects, and Go (kube-apiserver) and OpenSSL verify them; 255 bounds the rest.
        if value.is_empty() || value.len() > 255 {
            return Err(PkiError::InvalidRequest(format!(
                "subject attribute {oid} must have 1 to 255 characters, got {} characters",
                value.len()
            )));
        }
        let value = Any::new(Tag::Utf8String, value.as_bytes()).map_err(invalid)?;
        let atv = AttributeTypeAndValue { oid: *oid, value };
        let set = SetOfVec::try_from(vec![atv]).map_err(invalid)?;
        rdns.push(RelativeDistinguishedName::from(set));
    }
    let der = RdnSequence::from(rdns).to_der().map_err(invalid)?;
    Name::from_der(&der).map_err(invalid)
}

fn subject_alt_names(sans: &SubjectAltNames) -> Result<SubjectAltName, PkiError> {
    let mut names = Vec::with_capacity(sans.dns_names.len() + sans.ip_addresses.len());
    for dns in &sans.dns_names {
        if dns.is_empty() || dns.ends_with('.') || !dns.is_ascii() {
            return Err(PkiError::InvalidRequest(format!(
                "DNS SAN {dns:?} must be non-empty ASCII without a trailing dot"
            )));
        }
        let ia5 = Ia5String::new(dns)
            .map_err(|e| PkiError::InvalidRequest(format!("DNS SAN {dns:?}: {e}")))?;
        names.push(GeneralName::DnsName(ia5));
    }
    for ip in &sans.ip_addresses {
        // Go rejects IPv4-mapped IPv6 SANs; store those as the IPv4 they are.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*ip, IpAddr::V4),
            IpAddr::V4(_) => *ip,
        };
        names.push(GeneralName::from(ip));
    }
    Ok(SubjectAltName(names))
}
