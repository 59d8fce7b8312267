//! A failover storm: an availability zone fails with `vips` floating IPs on it. Each
//! floating IP is held by a sidecar pod on a node of zone A (nodes 1–25); a standby
//! sidecar pod on a node of zone B (26–50) holds an address of its own. The zone's
//! managers die without releasing (SIGKILL: the node is gone), then every standby
//! takes its floating IP at once (`ip addr add`, as keepalived would) and its sidecar
//! moves it. Measured from the first `ip addr add`: when EC2 shows each floating IP on
//! its new ENI, and when each standby's sidecar logs the pass that confirmed it.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::pods::{self, Address, Pod, Spec};
use super::report::Calls;
use super::rollout::shipped_policy;
use super::world::{eni_id, misplaced, pod_address, vip, world};
use crate::fake_ec2::{FakeEc2, Faults, Rates};

const ZONE: usize = 25;

#[derive(Clone, Debug)]
pub struct Storm {
    pub vips: usize,
    /// The buckets' rates during the storm, or none.
    pub buckets: Option<Rates>,
    /// How long EC2 takes to show a remapped address on its new ENI.
    pub remap_delay: Duration,
    pub concurrency: usize,
}

pub struct Outcome {
    /// From the first `ip addr add` to EC2 showing the last floating IP moved.
    pub last_moved: Duration,
    /// From the first `ip addr add` to the last standby's confirming pass (its log).
    pub last_confirmed: Duration,
    pub calls: Calls,
    pub misplaced: Vec<String>,
    /// Pods whose sidecar needed a restart before the storm.
    pub failed_starts: usize,
}

fn specs(vips: usize) -> (Vec<Spec>, Vec<Spec>) {
    let holders = (0..vips)
        .map(|k| Spec {
            node: 1 + k % ZONE,
            addresses: vec![Address {
                net: 1,
                ip: vip(k).into(),
            }],
        })
        .collect();
    let standbys = (0..vips)
        .map(|k| Spec {
            node: 1 + ZONE + k % ZONE,
            addresses: vec![Address {
                net: 1,
                ip: pod_address(1, k).into(),
            }],
        })
        .collect();
    (holders, standbys)
}

pub async fn run(ipmgr: &Path, s: &Storm) -> Outcome {
    let fake = FakeEc2::new(world(2 * ZONE));
    fake.set_policy(Some(shipped_policy()));
    let (holders, standbys) = specs(s.vips);
    let holders = pods::create_all(holders, &fake).await;
    let standbys = pods::create_all(standbys, &fake).await;
    let bin = crate::netns::pod_executable(ipmgr);
    let give_up = Duration::from_secs(300);
    let mut before = pods::start_all(&holders, &bin, "sidecar", &[], s.concurrency, give_up).await;
    let mut standing =
        pods::start_all(&standbys, &bin, "sidecar", &[], s.concurrency, give_up).await;
    let failed_starts = before.iter().chain(&standing).filter(|s| !s.ok()).count();
    for started in &mut before {
        if let Some(mut child) = started.sidecar.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fake.set_faults(Faults {
        rate_limits: s.buckets.is_some(),
        rates: s.buckets,
        remap_delay_ms: s.remap_delay.as_millis() as u64,
        ..Faults::default()
    });
    fake.clear_log();
    let (t0, wall0) = (Instant::now(), SystemTime::now());
    let adds = standbys.iter().enumerate().map(|(k, pod)| {
        let (ns, cidr) = (pod.net.ns.clone(), format!("{}/16", vip(k)));
        tokio::task::spawn_blocking(move || {
            let ok = std::process::Command::new("ip")
                .args(["-n", &ns, "addr", "add", &cidr, "dev", "net1"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip addr add {cidr} in {ns}");
        })
    });
    futures::future::join_all(adds).await;

    let targets: Vec<(IpAddr, String)> = (0..s.vips)
        .map(|k| (vip(k).into(), eni_id(standbys[k].spec.node, 1)))
        .collect();
    let until = t0 + give_up;
    let last_moved = loop {
        if misplaced(&fake.world(), &targets).is_empty() || Instant::now() > until {
            break t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut last_confirmed = Duration::ZERO;
    for pod in &standbys {
        let confirmed = loop {
            if let Some(at) = confirmed_after(pod, wall0) {
                break at;
            }
            if Instant::now() > until {
                break give_up;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        last_confirmed = last_confirmed.max(confirmed);
    }
    let calls = Calls::of(&fake.log());
    let belongs: Vec<(IpAddr, String)> = targets
        .into_iter()
        .chain(standbys.iter().flat_map(Pod::belongs))
        .collect();
    let misplaced = misplaced(&fake.world(), &belongs);
    pods::stop_all(&mut standing).await;
    pods::remove_all(holders).await;
    pods::remove_all(standbys).await;
    Outcome {
        last_moved,
        last_confirmed,
        calls,
        misplaced,
        failed_starts,
    }
}

/// When, after `since`, the sidecar logged a complete pass started by address events.
fn confirmed_after(pod: &Pod, since: SystemTime) -> Option<Duration> {
    let log = std::fs::read_to_string(pod.log()).ok()?;
    let since = since.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    log.lines()
        .filter(|l| l.contains("every address assigned") && l.contains("address events"))
        .filter_map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).ok()?;
            unix_time(line["timestamp"].as_str()?)
        })
        .find(|at| *at >= since)
        .map(|at| at - since)
}

/// `2026-12-02T02:05:06.123456Z` (tracing's JSON timestamps, UTC) as time since the
/// epoch.
pub fn unix_time(rfc3339: &str) -> Option<Duration> {
    let (date, time) = rfc3339.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(Duration::from_secs(days * 86_400 + h * 3600 + min * 60) + Duration::from_secs_f64(sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_timestamps_read_as_unix_time() {
        assert_eq!(
            unix_time("1970-01-02T00:00:01.5Z"),
            Some(Duration::from_millis(86_401_500))
        );
        // date -d 2026-12-02T02:05:06Z +%s
        assert_eq!(
            unix_time("2026-12-02T02:05:06.000000Z").map(|d| d.as_secs()),
            Some(1_796_177_106)
        );
        assert_eq!(unix_time("yesterday"), None);
    }
}
