//! Ed25519 signing keys: generated, persisted in `signing_keys`, held in memory, and published.
//!
//! A rotation publishes before it signs: `rotate-key` stores the new key at once but schedules the
//! old key's retirement [`KeyTiming::activation_delay_micros`] later, and only a key that has been
//! published that long signs. Verifiers cache the JWKS and refetch it at most once per
//! `jwt.jwks_min_refresh_interval_ms`, and this service notices the new row within
//! `auth.key_reload_interval_ms`; waiting out both before signing with the new key means no
//! verifier ever meets a `kid` it cannot fetch. [`KeyRing`] keeps the signing key and the published
//! JWKS in memory and is reloaded from the database periodically, so a `rotate-key` run by another
//! process is picked up without a restart.
//!
//! With `auth.signing_key_file` set, the key comes from that PKCS#8 PEM file instead (a mounted
//! secret, say) and is the only one published: the database holds no private key, and keys
//! stored there earlier sign and verify nothing.

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
use weft_mesh_proto::Jwk;

use crate::{domain::Error, store};

pub use crate::store::StoredKey;

/// Makes a new random key, created at `now` (microseconds).
pub fn generate_key(now: i64) -> Result<StoredKey, Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    stored(&SigningKey::from_bytes(&seed), now)
}

/// The key in a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) Ed25519 private key, created at
/// `now` (microseconds).
pub fn key_from_pem(pem: &str, now: i64) -> Result<StoredKey, Error> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|line| *line != "-----BEGIN PRIVATE KEY-----")
        .skip(1)
        .take_while(|line| *line != "-----END PRIVATE KEY-----")
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| Error::internal("not a PEM `PRIVATE KEY` block"))?;
    let key = SigningKey::from_pkcs8_der(&der)
        .map_err(|_| Error::internal("not a PKCS#8 Ed25519 private key"))?;
    stored(&key, now)
}

/// The stored form of `key`, created at `now`.
fn stored(key: &SigningKey, now: i64) -> Result<StoredKey, Error> {
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

/// How long keys take to come into use and to leave the JWKS.
#[derive(Debug, Clone, Copy)]
pub struct KeyTiming {
    /// How long a retired key stays published: the access-token lifetime.
    pub access_ttl_micros: i64,
    /// How long a new key is published before it signs.
    pub activation_delay_micros: i64,
}

impl KeyTiming {
    /// The timing that `config` and the service's `settings` imply.
    pub fn new(config: &weft_mesh::MeshConfig, settings: &crate::settings::AuthSettings) -> Self {
        let millis = settings
            .key_reload_interval_ms
            .saturating_add(config.jwt.jwks_min_refresh_interval_ms)
            .saturating_add(1_000);
        Self {
            access_ttl_micros: crate::domain::secs_to_micros(config.jwt.access_ttl_secs),
            activation_delay_micros: i64::try_from(millis.saturating_mul(1_000))
                .unwrap_or(i64::MAX),
        }
    }
}

impl KeySet {
    /// Builds the set from every stored key at `now`. Keys not retired by `now` are published,
    /// and so are keys retired less than an access-token lifetime ago. The newest unretired key
    /// that has been published for the activation delay signs; when none has (the very first
    /// key, or a rotation right after it), the oldest unretired key does, being the one
    /// published longest. `None` when no usable unretired key exists.
    pub fn from_rows(mut rows: Vec<StoredKey>, now: i64, timing: KeyTiming) -> Option<KeySet> {
        rows.sort_by(|a, b| (b.created_at, &b.kid).cmp(&(a.created_at, &a.kid)));
        let mut current = None;
        let mut oldest_unretired = None;
        let mut jwks = Vec::new();
        for row in &rows {
            let unretired = row.retired_at.is_none_or(|retired| retired > now);
            let published = unretired
                || row
                    .retired_at
                    .is_some_and(|retired| retired.saturating_add(timing.access_ttl_micros) > now);
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
            if unretired {
                let active = row
                    .created_at
                    .saturating_add(timing.activation_delay_micros)
                    <= now;
                if current.is_none() && active {
                    current = Some((row.kid.clone(), EncodingKey::from_ed_der(&der)));
                }
                // Rows run newest first: the last unretired one seen is the oldest.
                oldest_unretired = Some((row.kid.clone(), EncodingKey::from_ed_der(&der)));
            }
            jwks.push(jwk(row));
        }
        let (kid, encoding) = current.or(oldest_unretired)?;
        Some(KeySet {
            kid,
            encoding,
            jwks,
        })
    }

    /// The set of one key, which signs and is the only one published.
    pub fn single(key: &StoredKey) -> Result<KeySet, Error> {
        let der = decode_private(key).map_err(Error::internal)?;
        Ok(KeySet {
            kid: key.kid.clone(),
            encoding: EncodingKey::from_ed_der(&der),
            jwks: vec![jwk(key)],
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
        let _span = weft_mesh::telemetry::span("jwt.sign").entered();
        let header = Header {
            alg: Algorithm::EdDSA,
            kid: Some(self.kid.clone()),
            ..Default::default()
        };
        weft_mesh::jwt_crypto::install();
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| Error::internal(format!("cannot sign token: {e}")))
    }
}

/// The signing keys in memory, shared by every call.
pub struct KeyRing {
    set: RwLock<Arc<KeySet>>,
    timing: KeyTiming,
}

impl KeyRing {
    /// Loads the keys from `db`, creating the first key when none can sign.
    pub async fn load(db: &Database, timing: KeyTiming) -> Result<Self, Error> {
        let set = load_or_create(db, timing).await?;
        tracing::info!(kid = %set.kid, published = set.jwks.len(), "signing keys loaded");
        Ok(Self {
            set: RwLock::new(Arc::new(set)),
            timing,
        })
    }

    /// The ring of the one key in the PKCS#8 PEM `pem` (`auth.signing_key_file`), never
    /// reloaded and never stored.
    pub fn from_pem(pem: &str, timing: KeyTiming) -> Result<Self, Error> {
        let key = key_from_pem(pem, weft_mesh::clock::now_micros())?;
        let set = KeySet::single(&key)?;
        tracing::info!(kid = %set.kid, "signing key loaded from auth.signing_key_file");
        Ok(Self {
            set: RwLock::new(Arc::new(set)),
            timing,
        })
    }

    /// The keys as of the last load.
    pub fn current(&self) -> Arc<KeySet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the keys from `db`.
    pub async fn reload(&self, db: &Database) -> Result<(), Error> {
        let set = load_or_create(db, self.timing).await?;
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

async fn load_or_create(db: &Database, timing: KeyTiming) -> Result<KeySet, Error> {
    let now = weft_mesh::clock::now_micros();
    if let Some(set) = KeySet::from_rows(store::load_keys(&db.read).await?, now, timing) {
        return Ok(set);
    }
    let key = generate_key(now)?;
    if store::insert_first_key(&db.write, &key).await? {
        tracing::info!(kid = %key.kid, "created a signing key: none was current");
    }
    // Another process may have won the race: whichever key is now current is the one to use.
    KeySet::from_rows(store::load_keys(&db.write).await?, now, timing)
        .ok_or_else(|| Error::internal("no usable signing key after creating one"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use weft_mesh::auth::Claims;

    const TIMING: KeyTiming = KeyTiming {
        access_ttl_micros: 900_000_000,
        activation_delay_micros: 0,
    };

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
    fn an_imported_pem_key_is_stored_like_a_generated_one() {
        let generated = generate_key(5).unwrap();
        let body = generated.private_key.as_bytes().chunks(64);
        let lines: Vec<&str> = body.map(|l| std::str::from_utf8(l).unwrap()).collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        let imported = key_from_pem(&pem, 7).unwrap();
        assert_eq!(imported.kid, generated.kid);
        assert_eq!(imported.public_x, generated.public_x);
        assert_eq!(imported.private_key, generated.private_key);
        assert_eq!((imported.created_at, imported.retired_at), (7, None));
        assert!(key_from_pem("not a key", 7).is_err());
        assert!(
            key_from_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
                7
            )
            .is_err()
        );
    }

    #[test]
    fn tokens_verify_with_the_published_key() {
        let key = generate_key(1).unwrap();
        let set = KeySet::from_rows(vec![key.clone()], 2, TIMING).unwrap();
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
        let set = KeySet::from_rows(rows, now, TIMING).unwrap();
        assert_eq!(set.kid(), current.kid);
        let kids: Vec<&str> = set.jwks().iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, [current.kid.as_str(), previous.kid.as_str()]);

        assert!(KeySet::from_rows(vec![old], now, TIMING).is_none());
        assert!(KeySet::from_rows(Vec::new(), now, TIMING).is_none());
    }

    #[test]
    fn a_rotated_in_key_is_published_before_it_signs() {
        let second = 1_000_000;
        let timing = KeyTiming {
            access_ttl_micros: 900 * second,
            activation_delay_micros: 10 * second,
        };
        // Rotation at t=100 s: the old key retires at 110 s, when the new key becomes active.
        let mut old = generate_key(0).unwrap();
        old.retired_at = Some(110 * second);
        let new = generate_key(100 * second).unwrap();
        let rows = vec![old.clone(), new.clone()];

        let during = KeySet::from_rows(rows.clone(), 105 * second, timing).unwrap();
        assert_eq!(
            during.kid(),
            old.kid,
            "the old key signs while the new one spreads"
        );
        assert_eq!(during.jwks().len(), 2, "the new key is already published");

        let after = KeySet::from_rows(rows, 111 * second, timing).unwrap();
        assert_eq!(after.kid(), new.kid);
        assert_eq!(
            after.jwks().len(),
            2,
            "the old key verifies until its tokens expire"
        );

        // The first key of all signs at once: nothing could have cached an older JWKS.
        let first = KeySet::from_rows(vec![new.clone()], 100 * second, timing).unwrap();
        assert_eq!(first.kid(), new.kid);

        // A rotation before even the first key is active: the first key goes on signing.
        let young = generate_key(99 * second).unwrap();
        let mut young_retiring = young.clone();
        young_retiring.retired_at = Some(110 * second);
        let early = KeySet::from_rows(vec![young_retiring, new.clone()], 101 * second, timing);
        assert_eq!(early.unwrap().kid(), young.kid);
    }

    #[test]
    fn a_key_from_a_pem_file_signs_alone() {
        let key = generate_key(1).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            key.private_key
        );
        let ring = KeyRing::from_pem(&pem, TIMING).unwrap();
        let set = ring.current();
        assert_eq!(set.kid(), key.kid);
        let kids: Vec<&str> = set.jwks().iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, [key.kid.as_str()]);
        assert!(KeyRing::from_pem("no key here", TIMING).is_err());
    }

    #[test]
    fn corrupt_keys_are_skipped() {
        let mut bad = generate_key(5).unwrap();
        bad.private_key = "not base64!".into();
        let good = generate_key(1).unwrap();
        let set = KeySet::from_rows(vec![bad, good.clone()], 6, TIMING).unwrap();
        assert_eq!(set.kid(), good.kid);
        assert_eq!(set.jwks().len(), 1);
    }
}
