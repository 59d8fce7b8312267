//! `ipmgmt`: the project's command line for users. `ipmgmt check` tells what is wrong
//! with an install (`crate::check`). Installed as `kubectl-ipmgmt` on the PATH, it is
//! also `kubectl ipmgmt check`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ipmgmt_reclaimer::check::{self, Options};
use ipmgmt_reclaimer::config::master;
use ipmgmt_reclaimer::ec2::SdkEc2;

#[derive(Parser)]
#[command(name = "ipmgmt", version, about = "ipmgmt's command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks the install, the nodes' Multus ENIs and the NADs' address ranges, with
    /// your kubeconfig and AWS credentials; exits 1 when a check fails.
    Check {
        /// One pod instead of the install: each address, the ENI that should hold it,
        /// the ENI that does.
        #[command(subcommand)]
        what: Option<What>,
        /// The release's full name: its MutatingWebhookConfiguration's name.
        #[arg(long, default_value = "ipmgmt")]
        name: String,
        /// The release's namespace.
        #[arg(long, default_value = "ipmgmt-system")]
        release_namespace: String,
        /// The namespace the webhook is tried in, with a server-side dry-run pod.
        #[arg(long, default_value = "default")]
        dry_run_namespace: String,
        /// A NAD master that is not `ethN`, NAME=DEVICE_INDEX (as the chart's
        /// reclaimer.guard.masters).
        #[arg(long, value_name = "NAME=INDEX", value_parser = master)]
        guard_master: Vec<(String, i32)>,
        /// Only ENIs that also carry this tag (the chart's aws.clusterTag).
        #[arg(long, value_name = "KEY=VALUE")]
        cluster_tag: Option<ipmgmt_common::aws::Tag>,
        /// Try each EC2 action a role's component calls with an AWS profile holding
        /// that role's credentials (static keys, or role_arn with a source profile):
        /// manager=PROFILE, controller=PROFILE. Nothing is changed.
        #[arg(long, value_name = "ROLE=PROFILE", value_parser = check::role_profile)]
        iam_profile: Vec<(check::Role, String)>,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text, global = true)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum What {
    /// `ipmgmt check pod NAME -n NAMESPACE`.
    Pod {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Command::Check {
        what,
        name,
        release_namespace,
        dry_run_namespace,
        guard_master,
        cluster_tag,
        iam_profile,
        output,
    } = Cli::parse().command;
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!(
                "ipmgmt: cannot reach the cluster: {e} (check KUBECONFIG or --kubeconfig's context)"
            );
            return ExitCode::from(2);
        }
    };
    let sdk = ipmgmt_common::aws::loader(check::RETRIES).load().await;
    let attempts = ipmgmt_common::aws::Attempts::default();
    let ec2 = SdkEc2::new(ipmgmt_common::aws::ec2_client(&sdk, &attempts)).only_tagged(cluster_tag);
    let report = match what {
        Some(What::Pod { name, namespace }) => check::pod(&client, &ec2, &namespace, &name).await,
        None => {
            let options = Options {
                name,
                namespace: release_namespace,
                dry_run_namespace,
                masters: guard_master.into_iter().collect(),
                iam: iam_profile,
            };
            check::run(&client, &ec2, &options).await
        }
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        ),
        Output::Text => print!("{}", report.text(std::io::stdout().is_terminal())),
    }
    match report.ok {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    }
}
