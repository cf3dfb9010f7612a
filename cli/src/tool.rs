//! Runs a service's own command line to completion, for the `weft` subcommands that wrap one
//! (`weft admin grant` runs `weft-user grant-role`, `weft keys rotate` runs `weft-auth
//! rotate-key`): the service binary owns its database and its rules; `weft` only finds it and
//! reports what it said.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The deployment a `weft` operator command acts on: its mesh-config and the service binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct Deployment {
    #[command(flatten)]
    pub mesh: MeshConfigFile,
    #[command(flatten)]
    pub bin_dir: BinDir,
}

/// The mesh-config file a `weft` command reads: `--config`, `WEFT_CONFIG`, or the local one.
#[derive(Debug, Clone, clap::Args)]
pub struct MeshConfigFile {
    /// The mesh-config file (the services' addresses and databases, `[mtls]`).
    #[arg(
        long,
        env = weft_mesh::config::CONFIG_ENV,
        value_name = "FILE",
        default_value = "mesh-config/local.toml"
    )]
    pub config: PathBuf,
}

/// Where the service binaries are: `--bin-dir` when given, else the folder of this `weft`
/// executable (where `cargo build --workspace --bins` puts them all).
#[derive(Debug, Clone, clap::Args)]
pub struct BinDir {
    /// Folder of the Weft binaries (default: the folder of this `weft` executable).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

impl BinDir {
    /// The path of the binary `name`; an error saying how to build it when it is missing.
    /// The folder: `--bin-dir`, or the folder of this `weft` executable.
    pub fn dir(&self) -> anyhow::Result<PathBuf> {
        match &self.bin_dir {
            Some(dir) => Ok(dir.clone()),
            None => std::env::current_exe()
                .context("cannot find the weft executable")?
                .parent()
                .map(Path::to_path_buf)
                .context("the weft executable has no folder"),
        }
    }

    /// The path of the binary `name`; an error saying how to build it when it is missing.
    pub fn binary(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.dir()?;
        let binary = crate::child::binary_in(&dir, name);
        if !binary.is_file() {
            bail!(
                "{name} not found in {}: build it with `cargo build --workspace --bins`, or name \
                 its folder with --bin-dir",
                dir.display()
            );
        }
        Ok(binary)
    }
}

/// Runs `binary args...` and returns what it printed on standard output; when it fails, the
/// error is the last line it wrote on standard error (its one-line reason).
pub fn run(binary: &Path, args: &[&OsStr]) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reason = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("(it wrote nothing)");
    bail!("{reason}")
}
