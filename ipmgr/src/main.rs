//! ipmgr: makes the VPC route a pod's Multus secondary-interface addresses.
//! Skeleton: the subcommands the webhook injects exist; their work lands next.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ipmgr",
    version,
    about = "Assigns a pod's secondary-interface addresses to the node's ENIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Assign every secondary-interface address once, confirm, and exit.
    Init,
    /// Assign, then follow address changes and release on SIGTERM.
    Sidecar,
    /// Exit 0 once the sidecar has assigned the pod's addresses (startup probe).
    Ready,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!("ipmgr {:?} is not implemented in this build", cli.command)
}
