//! ipmgr at scale against the fake EC2 with EC2's token buckets (`ipmgmt_tests::scale`):
//!
//!   ipmgr-scale rollout --manager init|sidecar|old-script [--pods 500 --nodes 50 …]
//!   ipmgr-scale storm [--vips 100] [--no-buckets]
//!   ipmgr-scale soak [--events 10000]
//!
//! Needs root (pod namespaces). `scripts/bench-scale` runs the figures of
//! docs/benchmarks.md. `old-script` alone is the seed script's model, run in a pod.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use clap::{Parser, Subcommand, ValueEnum};
use ipmgmt_tests::fake_ec2::{Rate, Rates};
use ipmgmt_tests::scale::rollout::{self, Manager, Rollout};
use ipmgmt_tests::scale::{old_script, soak, storm};
use ipmgmt_tests::scenario::ipmgr_beside;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Who {
    Init,
    Sidecar,
    OldScript,
}

#[derive(Subcommand)]
enum Command {
    /// Pods start in numbers; every address must end on its node's ENI.
    Rollout {
        #[arg(long, value_enum)]
        manager: Who,
        #[arg(long, default_value_t = 500)]
        pods: usize,
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        /// 1: an address on net1; 2: on net1 and net2.
        #[arg(long, default_value_t = 1)]
        interfaces: usize,
        /// An IPv6 address on net2 too (dual-stack pods).
        #[arg(long)]
        ipv6: bool,
        /// Pods starting at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// No throttling at all.
        #[arg(long)]
        no_buckets: bool,
        /// The Assign bucket as BURST/PER_SECOND, instead of EC2's 100/5.
        #[arg(long)]
        assign_bucket: Option<String>,
        /// IPMGR_* settings for every manager, NAME=VALUE.
        #[arg(long = "env")]
        env: Vec<String>,
        #[arg(long, default_value_t = 600)]
        give_up_seconds: u64,
        #[arg(long)]
        ipmgr: Option<PathBuf>,
    },
    /// Floating IPs of a failed zone move at once to standby pods.
    Storm {
        #[arg(long, default_value_t = 100)]
        vips: usize,
        #[arg(long)]
        no_buckets: bool,
        #[arg(long, default_value_t = 500)]
        remap_delay_ms: u64,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        #[arg(long)]
        ipmgr: Option<PathBuf>,
    },
    /// One floating IP moved between two sidecars, `events` address events.
    Soak {
        #[arg(long, default_value_t = 10_000)]
        events: usize,
        #[arg(long, default_value_t = 10)]
        resync_seconds: u64,
        #[arg(long, default_value_t = 5000)]
        within_ms: u64,
        #[arg(long)]
        ipmgr: Option<PathBuf>,
    },
    /// The seed script's calls for one pod start (run inside a pod).
    #[command(hide = true)]
    OldScript,
    /// The seed script's sidecar loop, polling every 500 ms (run inside a pod).
    #[command(hide = true)]
    OldScriptSidecar,
}

fn beside(name: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match name {
        Some(p) => Ok(p),
        None => Ok(ipmgr_beside(
            std::env::current_exe()?
                .parent()
                .context("binary directory")?,
        )),
    }
}

fn rates(assign: Option<&str>) -> anyhow::Result<Rates> {
    let mut rates = Rates::default();
    if let Some(text) = assign {
        let (burst, per_second) = text.split_once('/').context("BURST/PER_SECOND")?;
        rates.mutating = Rate {
            burst: burst.parse()?,
            per_second: per_second.parse()?,
        };
    }
    Ok(rates)
}

fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::OldScriptSidecar => old_script::follow().await,
        Command::OldScript => {
            if let Err(e) = old_script::pod_start().await {
                let line = format!("{e:#}");
                if let Some(path) = std::env::var_os("IPMGR_TERMINATION_LOG") {
                    let _ = std::fs::write(path, format!("{line}\n"));
                }
                return Err(e);
            }
            Ok(())
        }
        Command::Rollout {
            manager,
            pods,
            nodes,
            interfaces,
            ipv6,
            concurrency,
            no_buckets,
            assign_bucket,
            env,
            give_up_seconds,
            ipmgr,
        } => {
            let ipmgr = beside(ipmgr)?;
            let manager = match manager {
                Who::Init => Manager::Init(ipmgr),
                Who::Sidecar => Manager::Sidecar(ipmgr),
                Who::OldScript => Manager::OldScript(std::env::current_exe()?),
            };
            let env = (env.iter())
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect::<Option<Vec<_>>>()
                .context("--env NAME=VALUE")?;
            let buckets = (!no_buckets)
                .then(|| rates(assign_bucket.as_deref()))
                .transpose()?;
            let r = Rollout {
                manager,
                nodes,
                pods,
                interfaces,
                ipv6,
                concurrency,
                buckets,
                env,
                give_up: Duration::from_secs(give_up_seconds),
            };
            println!(
                "rollout: {pods} pods on {nodes} nodes, {concurrency} starting at once, manager {:?}, buckets {}",
                manager_name(&r.manager),
                match &r.buckets {
                    Some(b) => format!(
                        "Assign {}/{} per s, filtered Describe {}/{} per s",
                        b.mutating.burst,
                        b.mutating.per_second,
                        b.filtered.burst,
                        b.filtered.per_second
                    ),
                    None => "off".into(),
                }
            );
            let out = rollout::run(&r).await;
            let restarts: u32 = out.starts.iter().map(|s| s.restarts).sum();
            let mut took: Vec<f64> = out.starts.iter().map(|s| s.took.as_secs_f64()).collect();
            took.sort_by(f64::total_cmp);
            println!(
                "pod namespaces made in {:.1} s; rollout wall time {:.1} s; the buckets allow no less than {:.1} s for the calls that went through",
                out.setup.as_secs_f64(),
                out.wall.as_secs_f64(),
                out.bound.as_secs_f64()
            );
            println!(
                "pods failed (restarted by kubelet or given up): {}, restarts {restarts}; per pod start: median {:.1} s, max {:.1} s",
                out.failed(),
                took[took.len() / 2],
                took[took.len() - 1]
            );
            print!(
                "EC2 calls during the rollout:\n{}",
                out.calls.table(out.pods)
            );
            println!(
                "addresses not on exactly their node's ENI: {}",
                out.misplaced.len()
            );
            for m in out.misplaced.iter().take(10) {
                println!("  {m}");
            }
            for f in out.starts.iter().flat_map(|s| &s.failures).take(5) {
                println!("  a failed start: {}", f.trim());
            }
            if !out.stopped.is_empty() {
                let clean = out.stopped.iter().filter(|c| **c == Some(0)).count();
                println!(
                    "sidecars stopped: {} of {} exited 0 (released within the release timeout); calls:\n{}",
                    clean,
                    out.stopped.len(),
                    out.release_calls.table(out.pods)
                );
            }
            ensure!(out.misplaced.is_empty(), "addresses misplaced");
            Ok(())
        }
        Command::Storm {
            vips,
            no_buckets,
            remap_delay_ms,
            concurrency,
            ipmgr,
        } => {
            let s = storm::Storm {
                vips,
                buckets: (!no_buckets).then(Rates::default),
                remap_delay: Duration::from_millis(remap_delay_ms),
                concurrency,
            };
            println!(
                "storm: {vips} floating IPs move from zone A (25 nodes) to standby pods in zone B (25 nodes); \
                 buckets {}; remaps show after {remap_delay_ms} ms",
                if no_buckets { "off" } else { "EC2's" }
            );
            let out = storm::run(&beside(ipmgr)?, &s).await;
            println!(
                "last floating IP on its new ENI after {:.2} s; last confirmed by its sidecar after {:.2} s",
                out.last_moved.as_secs_f64(),
                out.last_confirmed.as_secs_f64()
            );
            println!(
                "sidecar starts that failed before the storm: {}",
                out.failed_starts
            );
            print!("EC2 calls during the storm:\n{}", out.calls.table(vips));
            println!(
                "addresses not on exactly one ENI, their new one: {}",
                out.misplaced.len()
            );
            for m in out.misplaced.iter().take(10) {
                println!("  {m}");
            }
            ensure!(out.misplaced.is_empty(), "addresses misplaced");
            Ok(())
        }
        Command::Soak {
            events,
            resync_seconds,
            within_ms,
            ipmgr,
        } => {
            let s = soak::Soak {
                events,
                within: Duration::from_millis(within_ms),
                resync: Duration::from_secs(resync_seconds),
            };
            println!(
                "soak: a floating IP moved between two sidecars, {events} address events; resync every {resync_seconds} s; buckets off"
            );
            let out = soak::run(&beside(ipmgr)?, &s).await;
            println!(
                "{} moves in {:.1} s; missed changes: {}; periodic passes: {}",
                out.moves,
                out.took.as_secs_f64(),
                out.missed,
                out.periodic
            );
            for k in 0..2 {
                println!(
                    "sidecar {}: RSS {} at the start, {} at the end (peak {})",
                    k + 1,
                    kib(out.rss_start[k]),
                    kib(out.rss_end[k]),
                    kib(out.rss_peak[k])
                );
            }
            print!("EC2 calls:\n{}", out.calls.table(out.moves));
            ensure!(out.missed == 0, "changes missed");
            Ok(())
        }
    }
}

fn manager_name(m: &Manager) -> &'static str {
    match m {
        Manager::Init(_) => "ipmgr init",
        Manager::Sidecar(_) => "ipmgr sidecar",
        Manager::OldScript(_) => "the seed script's model",
    }
}
