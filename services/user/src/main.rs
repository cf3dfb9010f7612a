//! The `weft-user` process.

use std::process::ExitCode;

use clap::Parser;
use weft_mesh::CommonArgs;

/// Serves weft.user.v1.UserService: user profiles.
#[derive(Debug, Parser)]
#[command(name = "weft-user", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let contract = [weft_proto::FILE_DESCRIPTOR_SET];
    weft_mesh::launch(
        "weft-user",
        &contract,
        args.common.config,
        |config| async move {
            weft_mesh::server::serve(config.clone(), weft_user::NAME, weft_user::init(config)).await
        },
    )
}
