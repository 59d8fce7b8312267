//! The webhook and the IP manager agree on the modes: every mode the webhook injects
//! runs `ipmgr <mode>`, which ipmgr must accept. A mode added to one crate and not the
//! other fails here, not in a pod.

use clap::{Parser, ValueEnum};
use ipmgmt_webhook::inject::Mode;
use ipmgr::config::{Cli, Command};

#[test]
fn every_webhook_mode_is_an_ipmgr_subcommand() {
    for mode in Mode::value_variants() {
        let cli = Cli::try_parse_from(["ipmgr", mode.as_str()])
            .unwrap_or_else(|e| panic!("ipmgr does not accept `{}`: {e}", mode.as_str()));
        assert!(
            !matches!(cli.command, Command::Ready { .. }),
            "`{}` must run a mode, not the probe",
            mode.as_str()
        );
    }
}
