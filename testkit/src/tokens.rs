//! Tokens for tests: the `authorization` header of a gRPC request, claims, and a signing key
//! the kit makes and hands to weft-auth through its command line (`weft-auth import-key`), so a
//! test can sign the tokens it needs (expired, for another audience, for an unknown user) with
//! a key the mesh trusts, without reading any service's tables.

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use ed25519_dalek::pkcs8::{EncodePrivateKey as _, KeypairBytes};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::{Request, metadata::MetadataValue};
pub use weft_mesh::auth::Claims;

/// The issuer of the mesh's tokens (`jwt.issuer`'s default).
pub const ISSUER: &str = "weft";
/// The audience of access tokens (`jwt.audience`'s default).
pub const AUDIENCE: &str = "weft";

/// `authorization: Bearer <token>` on a request.
pub fn bearer<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {token}"))
        .expect("a token must be a valid header value");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims of a valid access token for `subject` with `role` (`user`, `admin`, `service`),
/// issued now, expiring in 5 minutes, for the default issuer and audience.
pub fn claims(subject: &str, role: &str) -> Claims {
    let now = unix_now();
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: subject.to_string(),
        role: role.to_string(),
        iat: now,
        exp: now + 300,
        jti: uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// An Ed25519 signing key made by the kit.
#[derive(Clone)]
pub struct SigningKey {
    /// The key id weft-auth gave it (`import-key` prints it); empty until imported.
    pub kid: String,
    /// PKCS#8 v1 DER of the private key.
    pub der: Vec<u8>,
    /// The 32-byte public key.
    pub public: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> SigningKey {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("no randomness");
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let der = KeypairBytes {
            secret_key: key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_der()
        .expect("cannot encode the key as PKCS#8");
        SigningKey {
            kid: String::new(),
            der: der.as_bytes().to_vec(),
            public: key.verifying_key().to_bytes(),
        }
    }

    /// The private key as PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn pem(&self) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(&self.der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    /// Writes [`SigningKey::pem`] to `path`.
    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.pem())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// The public key as a JWK's `x` (base64url without padding).
    pub fn public_x(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.public)
    }

    /// `claims` signed with this key (EdDSA, with its `kid`).
    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        weft_mesh::jwt_crypto::install();
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.der))
            .expect("cannot sign the token")
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    #[test]
    fn tokens_signed_by_a_kit_key_verify_with_its_public_half() {
        let mut key = SigningKey::generate();
        key.kid = "k1".into();
        let token = key.sign(&claims("u1", "user"));
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        let decoded = jsonwebtoken::decode::<Claims>(
            &token,
            &DecodingKey::from_ed_components(&key.public_x()).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims.sub, "u1");
        assert_eq!(decoded.header.kid.as_deref(), Some("k1"));
        let pem = key.pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        assert!(pem.lines().all(|line| line.len() <= 64));
    }
}
