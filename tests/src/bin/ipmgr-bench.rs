//! ipmgr's figures, against the fake EC2 and IMDS on the host end of a pod namespace
//! (the scenario of tests/tests/pod_netns.rs: 2 secondary interfaces, 3 addresses):
//! - `ipmgr init`, process start to exit, and the EC2 calls it makes;
//! - sidecar: an address added in the pod → its AssignPrivateIpAddresses arriving at
//!   the fake; wake-ups and RSS while idle;
//! - the same events followed by the seed script's loop (`ipmgr-scale
//!   old-script-sidecar`: the pod's addresses every 500 ms, one Assign for what is new).
//!
//! Needs root.   ipmgr-bench [--ipmgr target/release/ipmgr] [--runs 30] [--events 30] [--idle 10]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use ipmgmt_tests::fake_ec2::FakeEc2;
use ipmgmt_tests::fake_imds::FakeImds;
use ipmgmt_tests::netns::{Endpoints, PodNet};
use ipmgmt_tests::scenario::{MAC_N3, MAC_N6, identity, ipmgr_beside, world};

#[derive(Parser)]
struct Args {
    /// The ipmgr binary; default: beside this one.
    #[arg(long)]
    ipmgr: Option<PathBuf>,
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Address events per follower; at most 75 (addresses 10.0.1.100 to .249).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=75))]
    events: u16,
    /// `ipmgr-scale`, whose hidden `old-script-sidecar` is the seed script's loop;
    /// default: beside this binary.
    #[arg(long)]
    old_script: Option<PathBuf>,
    /// Seconds the sidecar idles before its RSS and wake-ups are read, sampled each
    /// minute (3600 for the hour docs/benchmarks.md reports).
    #[arg(long, default_value_t = 10)]
    idle: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name}: median {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms (n={})",
        percentile(&ms, 0.5),
        percentile(&ms, 0.9),
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match args.ipmgr {
        Some(p) => p,
        None => ipmgr_beside(
            std::env::current_exe()?
                .parent()
                .context("binary directory")?,
        ),
    };
    let bin = ipmgmt_tests::netns::pod_executable(&bin);
    let net = PodNet::create();
    net.add_interface("net1", MAC_N3);
    net.add_address("net1", "10.0.1.50/24");
    net.add_address("net1", "10.0.1.51/24");
    net.add_interface("net2", MAC_N6);
    net.add_address("net2", "100.64.1.7/20");
    let fake = FakeEc2::new(world());
    let ec2 = fake.serve(SocketAddr::new(net.host_ip.into(), 0)).await?;
    let imds = FakeImds::new(identity())
        .serve(SocketAddr::new(net.host_ip.into(), 0))
        .await?;
    let dir = ipmgmt_tests::netns::pod_dir(&format!("ipmgr-bench-{}", std::process::id()));
    let at = Endpoints { ec2, imds };
    let ipmgr = |mode: &str| {
        let mut cmd = net.ipmgr(&bin, mode, at, &dir);
        cmd.env("IPMGR_LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        cmd
    };

    println!(
        "binary: {} ({:.1} MiB)",
        bin.display(),
        std::fs::metadata(&bin)?.len() as f64 / 1048576.0
    );

    let mut times = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..args.runs {
        fake.set_world(world());
        fake.clear_log();
        let mut cmd = ipmgr("init");
        let started = Instant::now();
        let status = tokio::task::spawn_blocking(move || cmd.status()).await??;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        ensure!(status.success(), "ipmgr init failed: {status}");
        ensure!(
            fake.holder("100.64.1.7".parse()?).as_deref() == Some("eni-1n6"),
            "not assigned"
        );
        calls.push(fake.log().len());
    }
    summary("init, process start to exit", times);
    println!(
        "init, EC2 calls per run: {:?}",
        calls.iter().min().zip(calls.iter().max()).unwrap()
    );

    // Room for every event's address on one ENI (m5.large holds 10).
    let mut big = world();
    big.instances[0].instance_type = "m5.24xlarge".into();
    fake.set_world(big);
    fake.clear_log();
    let mut sidecar = ipmgr("sidecar").spawn()?;
    let pid = sidecar.id();
    let until = Instant::now() + Duration::from_secs(30);
    while !dir.join("ready").exists() {
        ensure!(Instant::now() < until, "sidecar never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let IPv6 duplicate detection on the new interfaces finish first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (switches, rss) = (
        proc_status(pid, "voluntary_ctxt_switches:"),
        proc_status(pid, "VmRSS:"),
    );
    fake.clear_log();
    let idle = Duration::from_secs(args.idle);
    let idle_until = Instant::now() + idle;
    let mut largest = rss;
    while Instant::now() < idle_until {
        let left = idle_until.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_secs(60))).await;
        largest = largest.max(proc_status(pid, "VmRSS:"));
    }
    let idle_wakeups = proc_status(pid, "voluntary_ctxt_switches:") - switches;
    let idle_calls = fake.log().len();
    println!(
        "sidecar idle: {idle_wakeups} wake-ups and {idle_calls} EC2 calls in {} s; RSS {:.1} MiB at the start, \
         {:.1} MiB at most (sampled each minute), {:.1} MiB at the end",
        idle.as_secs(),
        rss as f64 / 1024.0,
        largest as f64 / 1024.0,
        proc_status(pid, "VmRSS:") as f64 / 1024.0,
    );

    let events = usize::from(args.events);
    let (upper, lower) = follow_latency(&fake, &net.ns, events, 100).await?;
    summary(
        "sidecar, address added → Assign at EC2 (from before `ip addr add`)",
        upper,
    );
    summary(
        "sidecar, address added → Assign at EC2 (from after `ip addr add` returned)",
        lower,
    );
    println!(
        "sidecar after {events} events: RSS {:.1} MiB, peak {:.1} MiB",
        proc_status(pid, "VmRSS:") as f64 / 1024.0,
        proc_status(pid, "VmHWM:") as f64 / 1024.0
    );
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = tokio::task::spawn_blocking(move || sidecar.wait()).await??;
    ensure!(status.success(), "sidecar exit {status}");

    // The seed script's sidecar loop on the same namespace, with the same events, once
    // the addresses of the events above are gone from the pod.
    for k in 0..events {
        let gone = Command::new("ip")
            .args([
                "-n",
                &net.ns,
                "addr",
                "del",
                &format!("10.0.1.{}/24", 100 + k),
                "dev",
                "net1",
            ])
            .status()?;
        ensure!(gone.success(), "ip addr del failed");
    }
    let script = ipmgmt_tests::netns::pod_executable(&match args.old_script {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("ipmgr-scale"),
    });
    let _ = std::fs::remove_file(dir.join("ready"));
    let mut old = net.ipmgr(&script, "old-script-sidecar", at, &dir);
    old.env("NODE_NAME", "ip-10-0-0-10.us-west-2.compute.internal")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut old = old.spawn()?;
    let until = Instant::now() + Duration::from_secs(30);
    while !dir.join("ready").exists() {
        ensure!(
            Instant::now() < until,
            "the seed script's loop never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (upper, lower) = follow_latency(&fake, &net.ns, events, 100 + events).await?;
    summary(
        "seed script's loop, address added → Assign at EC2 (from before `ip addr add`)",
        upper,
    );
    summary(
        "seed script's loop, address added → Assign at EC2 (from after `ip addr add` returned)",
        lower,
    );
    old.kill()?;
    old.wait()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Adds `events` addresses to the pod's net1, one at a time, and times each from just
/// before `ip addr add` started (upper) and from just after it returned (lower) to
/// its AssignPrivateIpAddresses arriving at the fake.
async fn follow_latency(
    fake: &FakeEc2,
    ns: &str,
    events: usize,
    first_host: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut upper, mut lower) = (Vec::new(), Vec::new());
    for k in 0..events {
        let assigned_before = fake
            .log()
            .iter()
            .filter(|e| e.action == "AssignPrivateIpAddresses")
            .count();
        let before = fake.now_us();
        let ok = Command::new("ip")
            .args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.0.1.{}/24", first_host + k),
                "dev",
                "net1",
            ])
            .status()?
            .success();
        let after = fake.now_us();
        ensure!(ok, "ip addr add failed");
        let until = Instant::now() + Duration::from_secs(10);
        let arrived = loop {
            let log = fake.log();
            let assigns: Vec<_> = log
                .iter()
                .filter(|e| e.action == "AssignPrivateIpAddresses")
                .collect();
            if assigns.len() > assigned_before {
                break assigns[assigned_before].at_us;
            }
            ensure!(Instant::now() < until, "no assignment for event {k}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        upper.push(arrived.saturating_sub(before) as f64 / 1000.0);
        lower.push(arrived.saturating_sub(after) as f64 / 1000.0);
        // A random pause, so that events do not fall in step with a poller's period.
        let random = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), k);
        tokio::time::sleep(Duration::from_millis(50 + random % 500)).await;
    }
    Ok((upper, lower))
}
