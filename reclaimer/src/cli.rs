//! `ipmgmt`: the project's command line for users. `ipmgmt check` tells what is wrong
//! with an install (`crate::check`). The same command is built twice: as `ipmgmt`, and
//! as `kubectl-ipmgmt`, which kubectl runs for `kubectl ipmgmt …` when it is on the
//! PATH (kubectl's plugin convention).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::check::{self, Options};
use crate::config::master;
use crate::ec2::SdkEc2;

#[derive(Parser)]
#[command(version, about = "ipmgmt's command line")]
struct Cli {
    /// The kubeconfig to read (else KUBECONFIG, else ~/.kube/config, else the pod's
    /// service account).
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig's context to use (else its current context).
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
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

/// Runs the command line, named `name` in its help and errors (`ipmgmt`, or `kubectl
/// ipmgmt` for the plugin).
pub fn main(name: &'static str) -> ExitCode {
    let matches = Cli::command().name(name).bin_name(name).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(run(cli))
}

/// The cluster's client: `--kubeconfig` and `--context` when given, else as kubectl
/// finds its configuration.
async fn kube_client(
    kubeconfig: Option<&std::path::Path>,
    context: Option<String>,
) -> Result<kube::Client, String> {
    let options = KubeConfigOptions {
        context,
        ..KubeConfigOptions::default()
    };
    let config = match (kubeconfig, options.context.is_some()) {
        (Some(path), _) => {
            let file =
                Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| e.to_string())?
        }
        (None, true) => {
            (kube::Config::from_kubeconfig(&options).await).map_err(|e| e.to_string())?
        }
        (None, false) => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> ExitCode {
    let Command::Check {
        what,
        name,
        release_namespace,
        dry_run_namespace,
        guard_master,
        cluster_tag,
        iam_profile,
        output,
    } = cli.command;
    let client = match kube_client(cli.kubeconfig.as_deref(), cli.context).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!(
                "ipmgmt: cannot read the cluster's configuration: {e} (check KUBECONFIG, --kubeconfig or --context)"
            );
            return ExitCode::from(2);
        }
    };
    let sdk = ipmgmt_common::aws::loader(check::RETRIES).load().await;
    let attempts = ipmgmt_common::aws::Attempts::default();
    let ec2 = SdkEc2::new(ipmgmt_common::aws::ec2_client(&sdk, &attempts))
        .only_tagged(cluster_tag)
        .for_check();
    let report = match what {
        Some(What::Pod { name, namespace }) => check::pod(&client, &ec2, &namespace, &name).await,
        None => {
            let options = Options {
                name,
                namespace: release_namespace,
                dry_run_namespace,
                masters: guard_master.into_iter().collect(),
                iam: iam_profile,
                region: sdk.region().cloned(),
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
