//! The local CA and the certificates of the mesh's processes, as `weft certs` writes them
//! (rcgen, ECDSA P-256): a CA certificate that may only sign, and per process a leaf
//! certificate whose one SAN is the process's [`Identity`] URI, good for both ends of a TLS
//! connection (server and client authentication).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::identity::Identity;

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

/// A certificate that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// rcgen refused (a bad CA file, a bad name).
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Lifetime of the CA `weft certs` makes: 10 years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A new self-signed CA for the trust domain `trust_domain`, valid for `validity` from now.
pub fn new_ca(trust_domain: &str, validity: Duration) -> Result<Pem, IssueError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("Weft mesh CA ({trust_domain})"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + validity;
    params.serial_number = Some(serial());
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A leaf certificate for `identity`, signed by `ca`, valid for `validity` from now.
pub fn leaf(ca: &Pem, identity: &Identity, validity: Duration) -> Result<Pem, IssueError> {
    let now = OffsetDateTime::now_utc();
    leaf_between(
        ca,
        identity,
        now - time::Duration::minutes(5),
        now + validity,
    )
}

/// A leaf certificate for `identity`, signed by `ca`, valid from `not_before` to `not_after`
/// (tests make expired ones with it).
pub fn leaf_between(
    ca: &Pem,
    identity: &Identity,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Pem, IssueError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, identity.name.clone());
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(serial());
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A random positive 16-byte serial number.
fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}
