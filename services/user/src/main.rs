//! The `weft-user` process: serves UserService, or grants a role or migrates its database and
//! exits.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use weft_mesh::CommonArgs;
use weft_proto::user::Role;

/// Serves weft.user.v1.UserService: user profiles.
#[derive(Debug, Parser)]
#[command(name = "weft-user", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Gives the account with an email a role, in this service's database, prints the profile
    /// and exits; the user's next sign-in carries it.
    GrantRole {
        /// The account's email (registered already).
        #[arg(long)]
        email: String,
        /// The role to give.
        #[arg(long, value_enum)]
        role: RoleArg,
        // Also accepted after the subcommand: `weft-user grant-role --config mesh.toml ...`.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Applies this service's database migrations and exits (a deployment's migration Job).
    Migrate {
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// A role an operator may give.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    /// May do everything (add products, list users, change roles).
    Admin,
    /// An ordinary account.
    User,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config_path = match &args.command {
        Some(Command::GrantRole { common, .. } | Command::Migrate { common }) => {
            common.config.clone().or(args.common.config)
        }
        None => args.common.config,
    };
    let contract = [weft_proto::FILE_DESCRIPTOR_SET];
    weft_mesh::launch("weft-user", &contract, config_path, |config| async move {
        match args.command {
            Some(Command::GrantRole { email, role, .. }) => {
                let (role, name) = match role {
                    RoleArg::Admin => (Role::Admin, "admin"),
                    RoleArg::User => (Role::User, "user"),
                };
                let user = weft_user::grant_role(&config, &email, role).await?;
                println!(
                    "{} is now {name} (user {}); the role applies from their next sign-in",
                    user.email, user.id
                );
                Ok(())
            }
            Some(Command::Migrate { .. }) => {
                weft_mesh::migrate(&config, weft_user::NAME, &weft_user::MIGRATOR).await
            }
            None => {
                weft_mesh::server::serve(config.clone(), weft_user::NAME, weft_user::init(config))
                    .await
            }
        }
    })
}
