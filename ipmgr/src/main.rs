use std::process::ExitCode;

use clap::Parser;
use ipmgmt_common::shell::Start;
use ipmgr::config::Cli;

fn main() -> ExitCode {
    // Before anything of ours runs, so the exit line tells the manager's CPU from what
    // the container runtime spent in this thread before executing it.
    let start = Start::now();
    let cli = Cli::parse();
    ipmgr::run::main(cli, start)
}
