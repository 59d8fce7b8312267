//! init, sidecar and ready: the flows around a pass.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

use crate::config::{Args, Cli, Command, LogFormat};
use crate::discover::{DiscoverError, Discovery, Snapshot, Watch};
use crate::ec2::{Ec2, SdkEc2};
use crate::eni::Local;
use crate::manager::{Manager, PassError, Settings};
use crate::{aws, identity};

/// Why ipmgr stopped: always one line, for the pod's status.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(
        "no address on a secondary interface after {waited:?} (interfaces: {}); check the pod's \
         k8s.v1.cni.cncf.io/networks annotation and its NetworkAttachmentDefinition",
        interfaces.join(", ")
    )]
    NoAddresses {
        waited: Duration,
        interfaces: Vec<String>,
    },
    #[error("addresses not assigned within {deadline:?}: {last}")]
    Deadline { deadline: Duration, last: String },
    #[error("{0}")]
    Pass(#[from] PassError),
    #[error("{0}")]
    Discover(#[from] DiscoverError),
    #[error("{0}")]
    Identity(#[from] identity::IdentityError),
    #[error("cannot write the ready file {path}: {source}")]
    Ready {
        path: String,
        source: std::io::Error,
    },
}

pub fn main(cli: Cli) -> ExitCode {
    let args = cli.settings;
    if let Command::Ready { wait } = cli.command {
        return ready(&args.ready_file, wait.map(Duration::from_secs));
    }
    if let Err(e) = init_logging(args.log_format, &args.log_level) {
        eprintln!("ipmgr: {e}");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let result = runtime.block_on(async {
        let sdk = aws::sdk_config(aws::Retries {
            max_attempts: args.retry_max_attempts.max(1),
            initial_backoff: Duration::from_millis(args.retry_initial_backoff_ms),
        })
        .await;
        let ec2 = SdkEc2::new(aws_sdk_ec2::Client::new(&sdk));
        match cli.command {
            Command::Init => init(ec2, &args).await,
            Command::Sidecar => sidecar(ec2, &args).await,
            Command::Ready { .. } => unreachable!("answered above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let line = failure.to_string();
            error!("{line}");
            // kubelet shows this file in the pod's status (Init:Error and `kubectl describe`).
            let _ = std::fs::write(&args.termination_log, format!("{line}\n"));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("--log-level {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn settings(args: &Args) -> Settings {
    Settings {
        allow_reassignment: args.allow_reassignment,
        min_device_index: args.min_device_index,
        confirm_timeout: Duration::from_secs(args.confirm_seconds),
    }
}

async fn manager<E: Ec2>(ec2: E, args: &Args) -> Result<Manager<E>, Failure> {
    let instance = identity::instance_id(&ec2, args.node_name.as_deref()).await?;
    info!(instance = %instance, "running on");
    Ok(Manager::new(ec2, instance, settings(args)))
}

/// Waits (on address events, not a timer) until a secondary interface has an address.
async fn first_addresses(
    discovery: &Discovery,
    watch: &mut Watch,
    wait: Duration,
) -> Result<Snapshot, Failure> {
    let until = Instant::now() + wait;
    loop {
        let snapshot = discovery.snapshot().await?;
        if !snapshot.addresses.is_empty() {
            return Ok(snapshot);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero()
            || tokio::time::timeout(left, watch.changed(Duration::ZERO))
                .await
                .is_err()
        {
            return Err(Failure::NoAddresses {
                waited: wait,
                interfaces: snapshot.interfaces,
            });
        }
    }
}

/// Assigns until done, a permanent error, or the deadline. Returns what it assigned.
async fn assign_all<E: Ec2>(
    mgr: &Manager<E>,
    discovery: &Discovery,
    snapshot: Snapshot,
    args: &Args,
) -> Result<Vec<Local>, Failure> {
    let deadline = Duration::from_secs(args.deadline_seconds);
    let started = Instant::now();
    let mut snapshot = snapshot;
    let mut backoff = Duration::from_millis(250);
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        let last = match tokio::time::timeout(left, mgr.assign(&snapshot.addresses)).await {
            Ok(Ok(outcome)) => {
                info!(
                    addresses = outcome.placed.len(),
                    calls = outcome.calls,
                    "all addresses assigned"
                );
                return Ok(snapshot.addresses);
            }
            Ok(Err(e)) if e.is_permanent() => return Err(e.into()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the last pass did not finish".to_owned(),
        };
        if started.elapsed() + backoff >= deadline {
            return Err(Failure::Deadline { deadline, last });
        }
        warn!(error = %last, retry_in = ?backoff, "assignment pass failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        snapshot = discovery.snapshot().await?;
    }
}

/// The start both modes share: wait for addresses, find the instance, assign them.
/// The watch is subscribed before the first look, so no change between the two is
/// missed; the sidecar goes on with it.
async fn first_pass<E: Ec2>(
    ec2: E,
    args: &Args,
) -> Result<(Discovery, Watch, Manager<E>, Vec<Local>), Failure> {
    let mut watch = Watch::new()?;
    let discovery = Discovery::new(&args.primary_interface)?;
    let wait = Duration::from_secs(args.address_wait_seconds);
    let snapshot = first_addresses(&discovery, &mut watch, wait).await?;
    let mgr = manager(ec2, args).await?;
    let assigned = assign_all(&mgr, &discovery, snapshot, args).await?;
    Ok((discovery, watch, mgr, assigned))
}

async fn init<E: Ec2>(ec2: E, args: &Args) -> Result<(), Failure> {
    first_pass(ec2, args).await.map(drop)
}

async fn sidecar<E: Ec2>(ec2: E, args: &Args) -> Result<(), Failure> {
    // A restarted sidecar must not pass its startup probe on the last run's file.
    let _ = std::fs::remove_file(&args.ready_file);
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let (discovery, mut watch, mgr, mut last) = first_pass(ec2, args).await?;
    std::fs::write(&args.ready_file, b"ready\n").map_err(|source| Failure::Ready {
        path: args.ready_file.display().to_string(),
        source,
    })?;
    info!(file = %args.ready_file.display(), "ready; following address changes");

    let coalesce = Duration::from_millis(args.coalesce_ms);
    let mut resync = tokio::time::interval(Duration::from_secs(args.resync_seconds.max(1)));
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.reset();
    loop {
        let (why, periodic) = tokio::select! {
            _ = term.recv() => break,
            changed = watch.changed(coalesce) => match changed {
                Some(events) => (format!("{events} address events"), false),
                None => return Err(DiscoverError::Socket(std::io::Error::other("netlink event socket closed")).into()),
            },
            _ = resync.tick() => ("periodic re-assertion".to_owned(), true),
        };
        let snapshot = discovery.snapshot().await?;
        // Link-local addresses, DAD completing, the primary interface: events that
        // change nothing ipmgr manages cost no EC2 call.
        if !periodic && snapshot.addresses == last {
            debug!(reason = %why, "no change to the managed addresses");
            continue;
        }
        match mgr.assign(&snapshot.addresses).await {
            Ok(outcome) => {
                info!(reason = %why, addresses = outcome.placed.len(), calls = outcome.calls, "pass done");
                last = snapshot.addresses;
            }
            Err(e) => {
                warn!(reason = %why, error = %e, "pass failed; the next event or periodic pass retries")
            }
        }
    }

    // Release what the pod holds at this moment, and nothing it gave up.
    let held: Vec<_> = discovery
        .snapshot()
        .await?
        .addresses
        .into_iter()
        .map(|l| l.ip)
        .collect();
    let calls = mgr.release(&held).await?;
    info!(addresses = held.len(), calls, "released on SIGTERM");
    Ok(())
}

fn ready(file: &Path, wait: Option<Duration>) -> ExitCode {
    let until = Instant::now() + wait.unwrap_or_default();
    loop {
        if file.exists() {
            return ExitCode::SUCCESS;
        }
        if Instant::now() >= until {
            eprintln!("not ready: {} does not exist yet", file.display());
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
