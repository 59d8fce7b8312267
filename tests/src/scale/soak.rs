//! A sidecar soak: a floating IP moved back and forth between two sidecar pods on two
//! nodes, `events` address events in all (each move is two: removed in one pod, added
//! in the other). After each move EC2 must show the address on the receiving pod's ENI
//! within `within`, or the change counts as missed. The buckets are off: the run
//! compresses an hour's events into minutes, which EC2's refill rate would not allow
//! at that pace (an hour of 10,000 events is about 1.4 moves a second, under 5/s).

use std::path::Path;
use std::time::{Duration, Instant};

use super::pods::{self, Address, Spec};
use super::report::Calls;
use super::rollout::shipped_policy;
use super::world::{eni_id, pod_address, vip, world};
use crate::fake_ec2::FakeEc2;

#[derive(Clone, Debug)]
pub struct Soak {
    pub events: usize,
    /// How long EC2 may take to show a move before it counts as missed.
    pub within: Duration,
    /// `IPMGR_RESYNC_SECONDS` for both sidecars.
    pub resync: Duration,
}

pub struct Outcome {
    pub moves: usize,
    pub missed: usize,
    pub took: Duration,
    /// VmRSS of each sidecar (KiB) once ready, and at the end.
    pub rss_start: [u64; 2],
    pub rss_end: [u64; 2],
    /// Peak (VmHWM, KiB) at the end.
    pub rss_peak: [u64; 2],
    pub calls: Calls,
    /// Periodic passes the sidecars made during the run.
    pub periodic: usize,
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status.lines())
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ip(args: &[&str]) {
    let ok = std::process::Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {}", args.join(" "));
}

pub async fn run(ipmgr: &Path, s: &Soak) -> Outcome {
    let fake = FakeEc2::new(world(2));
    fake.set_policy(Some(shipped_policy()));
    let floating = vip(0);
    let specs = (0..2)
        .map(|k| Spec {
            node: 1 + k,
            addresses: vec![Address {
                net: 1,
                ip: pod_address(1, k).into(),
            }],
        })
        .collect();
    let pods = pods::create_all(specs, &fake).await;
    let bin = crate::netns::pod_executable(ipmgr);
    let env = [(
        "IPMGR_RESYNC_SECONDS".to_owned(),
        s.resync.as_secs().to_string(),
    )];
    let mut started =
        pods::start_all(&pods, &bin, "sidecar", &env, 2, Duration::from_secs(60)).await;
    assert!(started.iter().all(|s| s.ok()), "the sidecars start");
    let pids: Vec<u32> = started
        .iter()
        .map(|s| s.sidecar.as_ref().expect("running").id())
        .collect();
    // Let IPv6 duplicate detection on the new interfaces finish first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = |key| [proc_status(pids[0], key), proc_status(pids[1], key)];
    let rss_start = rss("VmRSS:");
    fake.clear_log();

    let cidr = format!("{floating}/16");
    let ns: Vec<String> = pods.iter().map(|p| p.net.ns.clone()).collect();
    let begun = Instant::now();
    let moves = s.events.div_ceil(2);
    let mut missed = 0;
    let mut held_by: Option<usize> = None;
    for m in 0..moves {
        let to = m % 2;
        let step = ns.clone();
        let cidr = cidr.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(from) = held_by {
                ip(&["-n", &step[from], "addr", "del", &cidr, "dev", "net1"]);
            }
            ip(&["-n", &step[to], "addr", "add", &cidr, "dev", "net1"]);
        })
        .await
        .expect("ip ran");
        held_by = Some(to);
        let want = eni_id(pods[to].spec.node, 1);
        let until = Instant::now() + s.within;
        while fake.holder(floating.into()).as_deref() != Some(want.as_str()) {
            if Instant::now() > until {
                missed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let took = begun.elapsed();
    let (rss_end, rss_peak) = (rss("VmRSS:"), rss("VmHWM:"));
    let calls = Calls::of(&fake.log());
    pods::stop_all(&mut started).await;
    let periodic = pods
        .iter()
        .map(|p| std::fs::read_to_string(p.log()).unwrap_or_default())
        .map(|log| {
            log.lines()
                .filter(|l| l.contains("every address assigned") && l.contains("periodic pass"))
                .count()
        })
        .sum();
    Outcome {
        moves,
        missed,
        took,
        rss_start,
        rss_end,
        rss_peak,
        calls,
        periodic,
    }
}
