//! The `weft-auth` process: serves AuthService, or rotates or imports the signing key, or
//! migrates its database, and exits.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_mesh::CommonArgs;

/// weft-auth: credentials, tokens and signing keys of the Weft mesh.
#[derive(Debug, Parser)]
#[command(name = "weft-auth", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates a new signing key, retires the current one, prints the new key id and exits.
    RotateKey {
        // Also accepted after the subcommand: `weft-auth rotate-key --config mesh.toml`.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Stores an Ed25519 private key (PKCS#8 PEM) as a new signing key, as `rotate-key` stores a
    /// generated one (it signs at once when no other key is current), prints its key id and
    /// exits.
    ImportKey {
        /// The PEM file (`-----BEGIN PRIVATE KEY-----`).
        #[arg(long, value_name = "FILE")]
        pem: std::path::PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Applies this service's database migrations and exits (a deployment's migration Job).
    Migrate {
        #[command(flatten)]
        common: CommonArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = match &cli.command {
        Some(
            Command::RotateKey { common }
            | Command::ImportKey { common, .. }
            | Command::Migrate { common },
        ) => common.config.clone().or(cli.common.config),
        None => cli.common.config,
    };
    let contract = [weft_proto::FILE_DESCRIPTOR_SET];
    weft_mesh::launch("weft-auth", &contract, config_path, |config| async move {
        match cli.command {
            Some(Command::RotateKey { .. }) => {
                let kid = weft_auth::rotate_key(&config).await?;
                println!("{kid}");
                Ok(())
            }
            Some(Command::ImportKey { pem, .. }) => {
                let pem = std::fs::read_to_string(&pem)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", pem.display()))?;
                let kid = weft_auth::import_key(&config, &pem).await?;
                println!("{kid}");
                Ok(())
            }
            Some(Command::Migrate { .. }) => {
                weft_mesh::migrate(&config, weft_auth::NAME, &weft_auth::MIGRATOR).await
            }
            None => {
                weft_mesh::server::serve(config.clone(), weft_auth::NAME, weft_auth::init(config))
                    .await
            }
        }
    })
}
