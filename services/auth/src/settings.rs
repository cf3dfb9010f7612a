//! weft-auth's own settings: the `[auth]` table of mesh-config, read and checked at start.

use serde::{Deserialize, Serialize};
use weft_mesh::{MeshConfig, config::ConfigError};

/// The rules of weft-auth (`[auth]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Argon2id password hashing cost.
    pub argon2: Argon2Settings,
    /// How often the service re-reads signing keys (to see a rotation), in ms; default 10000.
    pub key_reload_interval_ms: u64,
    /// A PKCS#8 PEM file holding the Ed25519 signing key (a mounted secret); default empty:
    /// keys are generated and kept in the database. When set, it is the only key, and the
    /// database holds none.
    pub signing_key_file: String,
    /// Password hashes run at once (each holds `argon2.memory_kib`); default 0: one per core.
    pub password_workers: usize,
    /// Password hashes that may wait for a worker; beyond them Register and Login answer
    /// RESOURCE_EXHAUSTED at once; default 32.
    pub password_queue: usize,
}

/// Argon2id cost parameters; the defaults are OWASP's minimums.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Settings {
    /// Memory per hash in KiB; default 19456 (19 MiB).
    pub memory_kib: u32,
    /// Passes over memory; default 2.
    pub iterations: u32,
    /// Lanes; default 1.
    pub parallelism: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            argon2: Argon2Settings::default(),
            key_reload_interval_ms: 10_000,
            signing_key_file: String::new(),
            password_workers: 0,
            password_queue: 32,
        }
    }
}

impl Default for Argon2Settings {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl AuthSettings {
    /// The `[auth]` table of `config`, checked; the error names the key.
    pub fn from_config(config: &MeshConfig) -> Result<Self, ConfigError> {
        let settings: Self = config.settings(crate::NAME)?;
        settings.validate().map_err(|(key, reason)| ConfigError {
            source_name: "mesh-config".into(),
            key: Some(format!("{}.{key}", crate::NAME)),
            reason,
        })?;
        Ok(settings)
    }

    /// How many password hashes run at once: `password_workers`, or one per core when 0.
    pub fn password_workers(&self) -> usize {
        match self.password_workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let argon = &self.argon2;
        if argon.parallelism == 0 || argon.iterations == 0 {
            return Err((
                "argon2".into(),
                "iterations and parallelism must be at least 1".into(),
            ));
        }
        if argon.memory_kib < 8 * argon.parallelism {
            return Err((
                "argon2.memory_kib".into(),
                "must be at least 8 x parallelism".into(),
            ));
        }
        if self.key_reload_interval_ms == 0 {
            return Err(("key_reload_interval_ms".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AuthSettings, ConfigError> {
        let text = format!("[services.auth]\nlisten = \"127.0.0.1:1\"\n[auth]\n{text}");
        let config: MeshConfig = MeshConfig::load_from_str(&text).unwrap();
        AuthSettings::from_config(&config)
    }

    #[test]
    fn settings_default_and_are_checked_with_their_key() {
        assert_eq!(load("").unwrap(), AuthSettings::default());
        let settings = load("password_workers = 3\npassword_queue = 0").unwrap();
        assert_eq!(
            (settings.password_workers(), settings.password_queue),
            (3, 0)
        );
        assert!(
            AuthSettings::default().password_workers() >= 1,
            "one per core"
        );
        let err = load("[auth.argon2]\nmemory_kib = 1").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("auth.argon2.memory_kib"));
        // Roles are granted with `weft-user grant-role`, never by configuration: the old
        // setting is refused rather than silently ignored.
        let err = load("admin_emails = [\"root@example.com\"]").unwrap_err();
        assert!(err.to_string().contains("admin_emails"), "{err}");
    }
}
