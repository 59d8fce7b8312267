use std::process::ExitCode;

use clap::Parser;
use ipmgr::config::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    ipmgr::run::main(cli)
}
