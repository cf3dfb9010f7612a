//! `weft keys rotate`: rotates weft-auth's token signing key.
//!
//! It runs `weft-auth rotate-key` on the deployment's config: the new key is published in the
//! JWKS at once and signs only after the activation delay (`auth.key_reload_interval_ms` +
//! `jwt.jwks_min_refresh_interval_ms` + 1 s), so no verifier meets a `kid` it cannot fetch; the
//! old key stops signing then and stays published until the tokens it signed have expired
//! (`jwt.access_ttl_secs`). Running instances see the rotation within
//! `auth.key_reload_interval_ms`, without a restart.

use std::ffi::OsStr;

use clap::Subcommand;

use crate::tool::{self, Deployment};

/// Options of `weft keys`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// The subcommands of `weft keys`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new signing key: published at once, signing after the activation delay; the
    /// current key is kept in the JWKS until its tokens have expired. Prints the new key id.
    Rotate(Deployment),
}

/// Runs `weft keys`; errors are one readable message.
pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::Rotate(args) => {
            let binary = args.bin_dir.binary("weft-auth")?;
            let out = tool::run(
                &binary,
                &[
                    OsStr::new("rotate-key"),
                    OsStr::new("--config"),
                    args.mesh.config.as_os_str(),
                ],
            )?;
            print!("{out}");
            Ok(())
        }
    }
}
