//! ipmgmt-reclaimer: the project's controller. Three loops run in it while its
//! replica holds the leader Lease (`leader`), over one view of the cluster (`view`),
//! each a `loops::Loop`:
//!
//! - **Reclaim** (`reclaim`): gives back the Multus ENI addresses of pods that are
//!   gone. Sidecars release their pod's addresses when they stop; nothing does for an
//!   init-mode pod, a killed sidecar, a dead node or a force-deleted pod, and each such
//!   address keeps one of the ENI's few slots. The Kubernetes API says which pods are live, what
//!   they hold and what IPAM handed out (`view`, `claims`, `whereabouts`), EC2 says
//!   what the Multus ENIs hold (`ec2`), `sweep` decides, pure, what is stale, and `run`
//!   releases it without ever leaving a claimed address unassigned.
//! - **Readiness** (`readiness`, opt-in): keeps a NoSchedule taint on nodes that
//!   should carry Multus ENIs until every expected one is attached and tagged.
//! - **Guard** (`guard`): judges NetworkAttachmentDefinitions' address ranges against
//!   the subnets of the Multus ENIs they ride on (inside the subnet, clear of AWS's
//!   reserved addresses and the ENIs' own, under an explicit CIDR reservation, apart
//!   from other NADs') and puts an Event on each NAD whose findings change; opt-in, it
//!   creates the explicit reservation a range lacks.

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod ec2;
pub mod events;
pub mod guard;
pub mod loops;
pub mod metrics;
pub mod readiness;
pub mod reclaim;
pub mod view;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::info;

use crate::config::Args;
use crate::ec2::Ec2;
use crate::metrics::Metrics;
use crate::reclaim::run::{Settings, Sweeper};
use crate::view::{Scope, View};
use ipmgmt_common::lease::Election;

/// The name Events are reported under.
pub const CONTROLLER: &str = "ipmgmt-reclaimer";

/// Runs until `shutdown` completes; then stops sweeping and releases the Lease.
/// `ready` receives the admin address once it is bound.
pub async fn run<E: Ec2 + Clone>(
    args: Args,
    kube: kube::Client,
    ec2: E,
    mut registry: Registry,
    shutdown: impl Future<Output = ()>,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    args.check().map_err(anyhow::Error::msg)?;
    let metrics = Metrics::default();
    metrics.register(&mut registry);
    let whereabouts = view::whereabouts_served(&kube).await;
    if !whereabouts {
        info!("whereabouts' IPPools are not served: only network-status says what IPAM handed out");
    }
    let guarding = args.guard && view::nads_served(&kube).await;
    if args.guard && !guarding {
        info!(
            "NetworkAttachmentDefinitions are not served: the address-range guard starts once Multus is installed"
        );
    }
    let scope = Scope {
        namespaces: args.namespace_selector.clone(),
        whereabouts,
        nads: guarding,
        watch_timeout: args.watch_timeout,
    };
    let view = View::start(&kube, &scope, &metrics);
    let admin = admin::serve(args.admin_listen, registry, view.clone()).await?;
    if let Some(tx) = ready {
        let _ = tx.send(admin);
    }
    info!(admin = %admin, dry_run = args.dry_run, grace = ?args.grace, interval = ?args.interval,
        namespaces = args.namespace_selector.as_deref().unwrap_or("all"), whereabouts = scope.whereabouts,
        guard = guarding, "started");

    let (leading_tx, leading) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let election = Election {
        api: Api::<Lease>::namespaced(kube.clone(), &args.namespace),
        name: args.lease_name.clone(),
        identity: args.identity.clone(),
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
        when_forbidden: format!(
            "the API server refused this replica the Lease {}/{}: the chart's Role for it is \
             missing or names another Lease (reinstall the chart, or set --lease-name to the \
             Role's)",
            args.namespace, args.lease_name
        ),
        renewed: None,
    };
    let election = tokio::spawn(election.run(leading_tx, stop_rx));

    let guard = guarding.then(|| {
        guard::run::Guard::new(
            ec2.clone(),
            view.clone(),
            events::Events::new(kube.clone(), CONTROLLER, &args.identity),
            metrics.clone(),
            guard::run::Settings {
                interval: args.guard_interval,
                masters: args.guard_master.iter().cloned().collect(),
                reserve: args.guard_reserve_ranges,
                publish: (args.guard_configmap.clone())
                    .filter(|name| !name.is_empty())
                    .map(|name| (Api::namespaced(kube.clone(), &args.namespace), name)),
            },
        )
    });
    let readiness = (!args.readiness_node_label.is_empty()).then(|| {
        readiness::Readiness::new(
            ec2.clone(),
            view.clone(),
            kube.clone(),
            events::Events::new(kube.clone(), CONTROLLER, &args.identity),
            metrics.clone(),
            readiness::Settings {
                labels: args.readiness_node_label.iter().cloned().collect(),
                device_indexes: args.readiness_device_index.iter().copied().collect(),
                interval: args.readiness_interval,
                cluster_tag: args
                    .cluster_tag
                    .as_ref()
                    .map(|t| format!("{}={}", t.key, t.value)),
                attach: (args.readiness_attach.iter())
                    .map(|s| (s.device_index, s.clone()))
                    .collect(),
            },
        )
    });
    let events = events::Events::new(kube.clone(), CONTROLLER, &args.identity);
    let sweeper = Sweeper::new(
        ec2,
        view.clone(),
        kube.clone(),
        events,
        metrics.clone(),
        Settings {
            grace: args.grace,
            max_releases_per_sweep: usize::try_from(args.max_releases_per_sweep)
                .unwrap_or(usize::MAX),
            dry_run: args.dry_run,
            attempts: args.ec2_max_attempts,
            backoff: args.ec2_initial_backoff,
        },
        leading.clone(),
    );

    let reclaim = sweeper.run(args.interval);
    // The leader metric follows the election, whichever loops run.
    let leader_metric = {
        let metrics = metrics.clone();
        let mut leading = leading.clone();
        async move {
            loop {
                metrics.set_leader(*leading.borrow_and_update());
                if leading.changed().await.is_err() {
                    return;
                }
            }
        }
    };
    let work = async {
        view.wait_until_ready().await;
        info!("pods, nodes and namespaces listed");
        let guarding = async {
            if let Some(guard) = guard {
                guard.run(leading.clone()).await;
            }
        };
        let readying = async {
            if let Some(readiness) = readiness {
                readiness.run(leading.clone()).await;
            }
        };
        tokio::join!(reclaim, guarding, readying, leader_metric);
    };
    let awaited = crd_appears(
        &kube,
        args.guard && !guarding,
        !whereabouts,
        args.crd_poll_interval,
    );
    tokio::select! {
        () = work => {}
        () = shutdown => info!("shutting down"),
        what = awaited => info!("{what} are served now: exiting, to be started again reading them"),
    }
    metrics.set_leader(false);
    let _ = stop_tx.send(true);
    let _ = election.await;
    Ok(())
}

/// Completes once a CRD the view started without is served (NADs when `nads`, IPPools
/// when `pools`), naming it. The view's reflectors are fixed at start, so the process
/// then ends (releasing its Lease at once) and its Deployment starts it again with
/// them: simpler, and as quick, as adding a reflector to a running view.
async fn crd_appears(
    kube: &kube::Client,
    nads: bool,
    pools: bool,
    every: Duration,
) -> &'static str {
    if !nads && !pools {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(every).await;
        // Quietly: not served yet is what this waits through.
        let nad = crate::guard::nad_resource();
        if nads && view::is_served(kube, &nad).await.unwrap_or(false) {
            return "Multus's NetworkAttachmentDefinitions";
        }
        let pool = crate::reclaim::whereabouts::ip_pool_resource();
        if pools && view::is_served(kube, &pool).await.unwrap_or(false) {
            return "whereabouts' IPPools";
        }
    }
}

/// The Kubernetes client as production builds it, from `config` (in-cluster or
/// `KUBECONFIG`): a read timeout a little longer than the watches' server-side
/// timeout, counted from each request, so that no call waits for ever on a
/// connection that stopped carrying bytes without closing.
pub fn kube_client(mut config: kube::Config, args: &Args) -> anyhow::Result<kube::Client> {
    config.read_timeout = Some(args.watch_timeout + Duration::from_secs(2));
    config.reset_reader_on_write = true;
    Ok(kube::Client::try_from(config)?)
}

/// The EC2 client as production builds it: `ipmgmt_common::aws`'s timeouts and retries,
/// the standard credential chain (IRSA, Pod Identity), attempts counted.
pub async fn ec2_client(args: &Args, registry: &mut Registry) -> ec2::SdkEc2 {
    let sdk = ipmgmt_common::aws::loader(ipmgmt_common::aws::Retries {
        max_attempts: args.ec2_max_attempts,
        initial_backoff: std::time::Duration::from_millis(200),
    })
    .load()
    .await;
    let attempts = ipmgmt_common::aws::Attempts::default();
    attempts.register(registry);
    ec2::SdkEc2::new(ipmgmt_common::aws::ec2_client(&sdk, &attempts))
        .only_tagged(args.cluster_tag.clone())
}

pub fn init_logging(format: config::LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    ipmgmt_common::shell::init_logging(filter, matches!(format, config::LogFormat::Json));
    Ok(())
}

/// Completes on SIGTERM (kubelet stopping the pod) or SIGINT.
pub async fn shutdown_signal() {
    ipmgmt_common::shell::terminated().await;
}
