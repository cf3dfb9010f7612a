//! The `weft` command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    weft::run(weft::Cli::parse())
}
