//! The `weft-user` process.

use std::process::ExitCode;

use clap::Parser;
use weft_mesh::{CommonArgs, ServiceName};

/// Serves weft.user.v1.UserService: user profiles.
#[derive(Debug, Parser)]
#[command(name = "weft-user", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    weft_mesh::launch(ServiceName::User, args.common.config, |config| async move {
        weft_mesh::server::serve(config.clone(), ServiceName::User, weft_user::init(config)).await
    })
}
