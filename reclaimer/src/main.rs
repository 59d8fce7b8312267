use clap::{CommandFactory, Parser};
use ipmgmt_common::metrics::Component;
use ipmgmt_reclaimer::config::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Err(why) = args.check() {
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, why)
            .exit();
    }
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .expect("no other crypto provider is installed before main");
    ipmgmt_reclaimer::init_logging(args.log_format, &args.log_level)?;
    let kube = ipmgmt_reclaimer::kube_client(kube::Config::infer().await?, &args)?;
    let mut registry = Component::Reclaimer.registry();
    let ec2 = ipmgmt_reclaimer::ec2_client(&args, &mut registry).await;
    let shutdown = ipmgmt_reclaimer::shutdown_signal();
    ipmgmt_reclaimer::run(args, kube, ec2, registry, shutdown, None).await
}
