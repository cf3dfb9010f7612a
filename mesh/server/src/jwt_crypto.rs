//! The one signature scheme of Weft's tokens, Ed25519, as `jsonwebtoken`'s crypto provider.
//!
//! `jsonwebtoken` ships providers for every JWT algorithm (RustCrypto or aws-lc); the
//! RustCrypto one brings in `rsa`, whose timing side channel (RUSTSEC-2023-0071) has no fix,
//! and the mesh signs and accepts EdDSA only. So the crate is built without a provider and this
//! module installs one that knows Ed25519 and refuses every other algorithm: a token signed
//! another way fails to verify (it was refused before its signature was checked anyway).
//!
//! [`install`] must run before the first `jsonwebtoken::encode` or `decode` in a process; the
//! verifier and the token issuer call it when they are made, and it is idempotent.

use ed25519_dalek::{Signature, SigningKey, VerifyingKey, pkcs8::DecodePrivateKey};
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, EncodingKey,
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::{Error, ErrorKind},
    jwk::EllipticCurve,
    signature,
};

/// Installs the Ed25519-only provider as the process's default; later calls do nothing.
pub fn install() {
    // An error means a provider is installed already: this one, by an earlier call.
    let _ = PROVIDER.install_default();
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        ed_pub_components_from_private_key: ed_public_key,
        ..KeyUtils::new_unimplemented()
    },
};

struct Ed25519Signer(SigningKey);

impl signature::Signer<Vec<u8>> for Ed25519Signer {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.0.sign(message).to_bytes().to_vec())
    }
}

impl JwtSigner for Ed25519Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct Ed25519Verifier(VerifyingKey);

impl signature::Verifier<Vec<u8>> for Ed25519Verifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let signature = Signature::from_slice(signature)?;
        self.0.verify_strict(message, &signature)
    }
}

impl JwtVerifier for Ed25519Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if *algorithm != Algorithm::EdDSA || key.family() != AlgorithmFamily::Ed {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let key = SigningKey::from_pkcs8_der(key.as_bytes()).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(Ed25519Signer(key)))
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if *algorithm != Algorithm::EdDSA || key.family() != AlgorithmFamily::Ed {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let bytes: &[u8; 32] = key
        .try_get_as_bytes()?
        .try_into()
        .map_err(|_| ErrorKind::InvalidEddsaKey)?;
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(Ed25519Verifier(key)))
}

fn ed_public_key(private_der: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>, Error> {
    if *curve != EllipticCurve::Ed25519 {
        return Err(ErrorKind::InvalidEddsaKey.into());
    }
    let key = SigningKey::from_pkcs8_der(private_der).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(key.verifying_key().as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePrivateKey;

    #[test]
    fn ed25519_tokens_sign_and_verify_and_other_algorithms_are_refused() {
        install();
        let key = SigningKey::from_bytes(&[7; 32]);
        let der = key.to_pkcs8_der().unwrap();
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        let claims = serde_json::json!({"sub": "u1", "exp": 4_000_000_000u64});
        let token = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();

        let public = base64_url(key.verifying_key().as_bytes());
        let decoding = DecodingKey::from_ed_components(&public).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation);
        assert_eq!(data.unwrap().claims["sub"], "u1");

        let other = base64_url(SigningKey::from_bytes(&[8; 32]).verifying_key().as_bytes());
        let wrong = DecodingKey::from_ed_components(&other).unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &wrong, &validation).is_err());

        let hmac = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        );
        assert!(hmac.is_err(), "only Ed25519 signs");
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
