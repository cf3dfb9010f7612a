//! `weft certs`: the mesh's local CA and one certificate per process, for mTLS.
//!
//! It reads `[mtls]` of the mesh-config for where the files go (`ca_file`, `ca_key_file`,
//! `cert_dir/<name>.pem` and `.key`) and `[services]` for who gets one: every service, the
//! gateway, and `weft` (the operator tools: `weft up`'s health checks). Keys are ECDSA P-256;
//! each certificate's one SAN is the process's identity,
//! `spiffe://<trust_domain>/ns/<namespace>/sa/<name>`. Files are written 0600 in folders
//! 0700, each through a temporary file renamed into place.
//!
//! - `weft certs`: creates the CA and the certificates; refuses to overwrite any.
//! - `weft certs --rotate`: issues every certificate again with the same CA; running
//!   processes pick them up within `mtls.reload_interval_ms`, without a restart.
//! - `weft certs --force`: a new CA and new certificates (running processes refuse each
//!   other until all have reloaded).
//!
//! `weft up` runs the missing-only variant ([`Mode::Missing`]) at start when mTLS is on.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use weft_mesh::{
    MeshConfig,
    config::MtlsConfig,
    mtls::{
        Identity,
        issue::{self, CA_VALIDITY, Pem},
    },
};

/// Options of `weft certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// The mesh-config file: `[mtls]` says where the files go, `[services]` who gets one.
    #[command(flatten)]
    pub mesh: crate::tool::MeshConfigFile,
    /// Issue every process's certificate again with the existing CA (rotation).
    #[arg(long, conflicts_with = "force")]
    pub rotate: bool,
    /// Replace the CA and every certificate.
    #[arg(long)]
    pub force: bool,
}

/// What to (re)create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The CA and every certificate; refuses when any file exists.
    Create,
    /// New certificates with the existing CA.
    Rotate,
    /// A new CA and new certificates, over what exists.
    Force,
    /// Only what is missing (a new CA: every certificate again).
    Missing,
}

/// Runs `weft certs`; prints what it wrote.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let config = MeshConfig::load(Some(&args.mesh.config))?;
    let mode = match (args.rotate, args.force) {
        (true, _) => Mode::Rotate,
        (_, true) => Mode::Force,
        _ => Mode::Create,
    };
    for line in issue_all(&config.mtls, &config.identities(), mode)? {
        println!("{line}");
    }
    Ok(())
}

/// Creates what `mode` asks for the processes `names`; returns one line per file written
/// (none when nothing was missing).
pub fn issue_all(mtls: &MtlsConfig, names: &[String], mode: Mode) -> anyhow::Result<Vec<String>> {
    let ca_file = PathBuf::from(&mtls.ca_file);
    let ca_key_file = PathBuf::from(&mtls.ca_key_file);
    let leaf_files = |name: &str| (mtls.cert_file(name), mtls.key_file(name));
    if mode == Mode::Create {
        let mut existing: Vec<PathBuf> = vec![ca_file.clone(), ca_key_file.clone()];
        for name in names {
            let (cert, key) = leaf_files(name);
            existing.extend([cert, key]);
        }
        existing.retain(|path| path.exists());
        if let Some(first) = existing.first() {
            bail!(
                "{} already exists: `weft certs --rotate` issues the certificates again with the \
                 same CA, `weft certs --force` replaces the CA too",
                first.display()
            );
        }
    }
    let ca_exists = ca_file.exists() && ca_key_file.exists();
    let mut written = Vec::new();
    let new_ca = match mode {
        Mode::Create | Mode::Force => true,
        Mode::Missing => !ca_exists,
        Mode::Rotate if !ca_exists => bail!(
            "no CA to rotate with ({} or {} is missing): run `weft certs` first",
            ca_file.display(),
            ca_key_file.display()
        ),
        Mode::Rotate => false,
    };
    let ca = if new_ca {
        let ca = issue::new_ca(&mtls.trust_domain, CA_VALIDITY)?;
        write_private(&ca_key_file, &ca.key)?;
        write_private(&ca_file, &ca.cert)?;
        written.push(format!(
            "created the mesh CA {} (key {})",
            ca_file.display(),
            ca_key_file.display()
        ));
        ca
    } else {
        Pem {
            cert: read(&ca_file)?,
            key: read(&ca_key_file)?,
        }
    };
    let validity = Duration::from_secs(mtls.cert_validity_days.saturating_mul(24 * 3600));
    for name in names {
        let (cert_file, key_file) = leaf_files(name);
        let missing = !cert_file.exists() || !key_file.exists();
        if mode == Mode::Missing && !new_ca && !missing {
            continue;
        }
        let identity = Identity::of(mtls, name);
        let leaf = issue::leaf(&ca, &identity, validity)?;
        write_private(&key_file, &leaf.key)?;
        write_private(&cert_file, &leaf.cert)?;
        written.push(format!(
            "{} {} for {identity} (valid {} days)",
            if mode == Mode::Rotate {
                "rotated"
            } else {
                "issued"
            },
            cert_file.display(),
            mtls.cert_validity_days
        ));
    }
    Ok(written)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `text` to `path` with mode 0600 (its folder 0700), through a temporary file renamed
/// into place, so that a reader sees the old file or the new one.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
        }
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("certificate");
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mtls(dir: &Path) -> MtlsConfig {
        MtlsConfig {
            ca_file: dir.join("ca.pem").display().to_string(),
            ca_key_file: dir.join("ca.key").display().to_string(),
            cert_dir: dir.join("certs").display().to_string(),
            ..MtlsConfig::default()
        }
    }

    #[test]
    fn certs_are_private_never_overwritten_and_rotated_with_the_same_ca() {
        let dir = std::env::temp_dir().join(format!("weft-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mtls = mtls(&dir);
        let names = vec!["order".to_string(), "gateway".to_string()];
        let written = issue_all(&mtls, &names, Mode::Create).unwrap();
        assert_eq!(written.len(), 3, "{written:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(mtls.key_file("order")), 0o600);
            assert_eq!(mode(mtls.cert_file("order")), 0o600);
            assert_eq!(mode(PathBuf::from(&mtls.cert_dir)), 0o700);
        }
        let err = issue_all(&mtls, &names, Mode::Create).unwrap_err();
        assert!(err.to_string().contains("--rotate"), "{err}");
        // Nothing missing: nothing written.
        assert!(issue_all(&mtls, &names, Mode::Missing).unwrap().is_empty());
        let ca_before = std::fs::read(&mtls.ca_file).unwrap();
        let cert_before = std::fs::read(mtls.cert_file("order")).unwrap();
        let rotated = issue_all(&mtls, &names, Mode::Rotate).unwrap();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert_eq!(std::fs::read(&mtls.ca_file).unwrap(), ca_before);
        assert_ne!(std::fs::read(mtls.cert_file("order")).unwrap(), cert_before);
        // The rotated certificate loads, with the process's identity.
        let tls = weft_mesh::mtls::MeshTls::load(&mtls, "order").unwrap();
        assert_eq!(tls.identity().name, "order");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
