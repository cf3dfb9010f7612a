//! Ed25519 signing keys: generated, persisted in `signing_keys`, held in memory, and published.
//!
//! The current key is the newest row not yet retired. [`KeyRing`] keeps the current key and the
//! published JWKS in memory and is reloaded from the database periodically, so a `rotate-key`
//! run by another process is picked up without a restart.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use base64::Engine as _;
use ed25519_dalek::{
    SigningKey,
    pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, KeypairBytes},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use sha2::{Digest, Sha256};
use weft_mesh::db::Database;
use weft_proto::auth::Jwk;

use crate::{domain::Error, store};

/// A row of `signing_keys`.
#[derive(Clone)]
pub struct StoredKey {
    /// Key id: 16 hex characters of SHA-256 of the public key.
    pub kid: String,
    /// Standard base64 of the PKCS#8 v1 DER private key.
    pub private_key: String,
    /// base64url (no padding) of the 32-byte public key.
    pub public_x: String,
    /// When the key was made, in microseconds.
    pub created_at: i64,
    /// When the key stopped signing, in microseconds.
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("public_x", &self.public_x)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// Makes a new random key, created at `now` (microseconds).
pub fn generate_key(now: i64) -> Result<StoredKey, Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    let key = SigningKey::from_bytes(&seed);
    // PKCS#8 v1 (no embedded public key): the widest-read form of an Ed25519 private key.
    let der = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_der()
    .map_err(|e| Error::internal(format!("cannot encode key: {e}")))?;
    let public = key.verifying_key().to_bytes();
    Ok(StoredKey {
        kid: kid_of(&public),
        private_key: base64::engine::general_purpose::STANDARD.encode(der.as_bytes()),
        public_x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public),
        created_at: now,
        retired_at: None,
    })
}

/// The key id of a public key: the first 16 hex characters of its SHA-256.
pub fn kid_of(public: &[u8]) -> String {
    let mut kid = crate::domain::hex(&Sha256::digest(public));
    kid.truncate(16);
    kid
}

/// The public half of a stored key as a JWK.
pub fn jwk(key: &StoredKey) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: key.public_x.clone(),
        kid: key.kid.clone(),
        alg: "EdDSA".into(),
        r#use: "sig".into(),
    }
}

/// The DER of a stored private key, checked to match its public key.
fn decode_private(key: &StoredKey) -> Result<Vec<u8>, String> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(&key.private_key)
        .map_err(|_| "private_key is not base64".to_owned())?;
    let signing = SigningKey::from_pkcs8_der(&der)
        .map_err(|_| "private_key is not PKCS#8 Ed25519".to_owned())?;
    let public =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes());
    if public != key.public_x {
        return Err("public_x does not match private_key".into());
    }
    Ok(der)
}

/// The keys in use at one moment: the one that signs, and the ones that verify.
#[derive(Clone)]
pub struct KeySet {
    kid: String,
    encoding: EncodingKey,
    jwks: Vec<Jwk>,
}

impl KeySet {
    /// Builds the set from every stored key at `now`: the newest unretired key signs; unretired
    /// keys and keys retired less than `access_ttl_micros` ago are published. `None` when no
    /// usable unretired key exists.
    pub fn from_rows(mut rows: Vec<StoredKey>, now: i64, access_ttl_micros: i64) -> Option<KeySet> {
        rows.sort_by(|a, b| (b.created_at, &b.kid).cmp(&(a.created_at, &a.kid)));
        let mut current = None;
        let mut jwks = Vec::new();
        for row in &rows {
            let published = match row.retired_at {
                None => true,
                Some(retired) => retired.saturating_add(access_ttl_micros) > now,
            };
            if !published {
                continue;
            }
            // A key that cannot sign cannot have signed anything either: leave it out.
            let der = match decode_private(row) {
                Ok(der) => der,
                Err(reason) => {
                    tracing::error!(kid = %row.kid, reason, "skipping unusable signing key");
                    continue;
                }
            };
            if current.is_none() && row.retired_at.is_none() {
                current = Some((row.kid.clone(), EncodingKey::from_ed_der(&der)));
            }
            jwks.push(jwk(row));
        }
        let (kid, encoding) = current?;
        Some(KeySet {
            kid,
            encoding,
            jwks,
        })
    }

    /// The id of the signing key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The published public keys.
    pub fn jwks(&self) -> &[Jwk] {
        &self.jwks
    }

    /// Signs `claims` as an EdDSA JWT with the current key's `kid` in the header.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, Error> {
        let header = Header {
            alg: Algorithm::EdDSA,
            kid: Some(self.kid.clone()),
            ..Default::default()
        };
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| Error::internal(format!("cannot sign token: {e}")))
    }
}

/// The signing keys in memory, shared by every call.
pub struct KeyRing {
    set: RwLock<Arc<KeySet>>,
    access_ttl_micros: i64,
}

impl KeyRing {
    /// Loads the keys from `db`, creating the first key when none can sign.
    pub async fn load(db: &Database, access_ttl_secs: u64) -> Result<Self, Error> {
        let access_ttl_micros = crate::domain::secs_to_micros(access_ttl_secs);
        let set = load_or_create(db, access_ttl_micros).await?;
        tracing::info!(kid = %set.kid, published = set.jwks.len(), "signing keys loaded");
        Ok(Self {
            set: RwLock::new(Arc::new(set)),
            access_ttl_micros,
        })
    }

    /// The keys as of the last load.
    pub fn current(&self) -> Arc<KeySet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the keys from `db`.
    pub async fn reload(&self, db: &Database) -> Result<(), Error> {
        let set = load_or_create(db, self.access_ttl_micros).await?;
        let previous = self.current();
        if previous.kid != set.kid || previous.jwks.len() != set.jwks.len() {
            tracing::info!(kid = %set.kid, published = set.jwks.len(), "signing keys changed");
        }
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(())
    }

    /// Reloads the keys from `db` every `interval`, until the database is closed.
    pub fn spawn_reload(self: Arc<Self>, db: Database, interval: Duration) {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                if db.read.is_closed() {
                    break;
                }
                if let Err(err) = self.reload(&db).await {
                    tracing::warn!(error = %err, "cannot reload signing keys; keeping the old ones");
                }
            }
        });
    }
}

async fn load_or_create(db: &Database, access_ttl_micros: i64) -> Result<KeySet, Error> {
    let now = weft_mesh::clock::now_micros();
    if let Some(set) = KeySet::from_rows(store::load_keys(&db.read).await?, now, access_ttl_micros)
    {
        return Ok(set);
    }
    let key = generate_key(now)?;
    if store::insert_first_key(&db.write, &key).await? {
        tracing::info!(kid = %key.kid, "created a signing key: none was current");
    }
    // Another process may have won the race: whichever key is now current is the one to use.
    KeySet::from_rows(store::load_keys(&db.write).await?, now, access_ttl_micros)
        .ok_or_else(|| Error::internal("no usable signing key after creating one"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use weft_mesh::auth::Claims;

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: "weft-auth".into(),
            aud: "weft".into(),
            sub: "u1".into(),
            role: "user".into(),
            iat: exp - 900,
            exp,
            jti: "j".into(),
        }
    }

    fn now_secs() -> u64 {
        crate::domain::unix_secs(weft_mesh::clock::now_micros())
    }

    #[test]
    fn generated_keys_have_the_stored_shape() {
        let key = generate_key(1).unwrap();
        assert_eq!(key.kid.len(), 16);
        assert!(key.kid.chars().all(|c| c.is_ascii_hexdigit()));
        let der = base64::engine::general_purpose::STANDARD
            .decode(&key.private_key)
            .unwrap();
        assert_eq!(der.len(), 48, "PKCS#8 v1 Ed25519 DER");
        assert_eq!(der[4], 0, "version 0 (v1)");
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&key.public_x)
            .unwrap();
        assert_eq!(kid_of(&public), key.kid);
        assert!(!format!("{key:?}").contains(&key.private_key));
    }

    #[test]
    fn tokens_verify_with_the_published_key() {
        let key = generate_key(1).unwrap();
        let set = KeySet::from_rows(vec![key.clone()], 2, 900_000_000).unwrap();
        let token = set.sign(&claims(now_secs() + 600)).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));

        let jwk = &set.jwks()[0];
        assert_eq!((jwk.kty.as_str(), jwk.crv.as_str()), ("OKP", "Ed25519"));
        assert_eq!((jwk.alg.as_str(), jwk.r#use.as_str()), ("EdDSA", "sig"));
        let decoding = DecodingKey::from_ed_components(&jwk.x).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["weft"]);
        validation.set_issuer(&["weft-auth"]);
        let data = jsonwebtoken::decode::<Claims>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.claims.sub, "u1");

        let other = generate_key(1).unwrap();
        let wrong = DecodingKey::from_ed_components(&other.public_x).unwrap();
        assert!(jsonwebtoken::decode::<Claims>(&token, &wrong, &validation).is_err());
    }

    #[test]
    fn newest_unretired_key_signs_and_recently_retired_keys_stay_published() {
        let hour = 3_600_000_000;
        let now = 10 * hour;
        let mut old = generate_key(now - 3 * hour).unwrap();
        old.retired_at = Some(now - 2 * hour);
        let mut previous = generate_key(now - 2 * hour).unwrap();
        previous.retired_at = Some(now - 60_000_000);
        let current = generate_key(now - 60_000_000).unwrap();
        let rows = vec![old.clone(), current.clone(), previous.clone()];
        let set = KeySet::from_rows(rows, now, 900_000_000).unwrap();
        assert_eq!(set.kid(), current.kid);
        let kids: Vec<&str> = set.jwks().iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, [current.kid.as_str(), previous.kid.as_str()]);

        assert!(KeySet::from_rows(vec![old], now, 900_000_000).is_none());
        assert!(KeySet::from_rows(Vec::new(), now, 900_000_000).is_none());
    }

    #[test]
    fn corrupt_keys_are_skipped() {
        let mut bad = generate_key(5).unwrap();
        bad.private_key = "not base64!".into();
        let good = generate_key(1).unwrap();
        let set = KeySet::from_rows(vec![bad, good.clone()], 6, 900_000_000).unwrap();
        assert_eq!(set.kid(), good.kid);
        assert_eq!(set.jwks().len(), 1);
    }
}
