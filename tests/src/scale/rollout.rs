//! A rollout: `pods` annotated pods start on `nodes` nodes, spread evenly, each with
//! an address on net1 (and on net2, and an IPv6 one, when asked), with at most
//! `concurrency` starting at once. Then every address must sit on exactly its node's
//! ENI. Sidecars are stopped at the end (SIGTERM: they release).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::pods::{self, Address, Spec, Started};
use super::report::Calls;
use super::world::{misplaced, pod_address, pod_address_v6, world};
use crate::fake_ec2::iam::Policy;
use crate::fake_ec2::{FakeEc2, Faults, Rates};

/// Who assigns the pods' addresses.
#[derive(Clone, Debug)]
pub enum Manager {
    /// `ipmgr init` (this binary).
    Init(PathBuf),
    /// `ipmgr sidecar`.
    Sidecar(PathBuf),
    /// The model of the seed script: this program's `old-script` subcommand.
    OldScript(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Rollout {
    pub manager: Manager,
    pub nodes: usize,
    pub pods: usize,
    /// 1: net1 only; 2: net1 and net2.
    pub interfaces: usize,
    /// An IPv6 address on net2 too.
    pub ipv6: bool,
    pub concurrency: usize,
    /// The buckets' rates, or none: no throttling.
    pub buckets: Option<Rates>,
    /// Settings for every manager (`IPMGR_*`), as `--ipmgr-env` would give.
    pub env: Vec<(String, String)>,
    /// Pods still failing after this long are given up on.
    pub give_up: Duration,
}

pub struct Outcome {
    /// Creating the pods' namespaces, before any manager starts.
    pub setup: Duration,
    pub pods: usize,
    pub wall: Duration,
    pub starts: Vec<Started>,
    pub calls: Calls,
    /// The least time the buckets allow for the calls that went through.
    pub bound: Duration,
    /// Addresses not on exactly their node's ENI.
    pub misplaced: Vec<String>,
    /// Sidecars: exit codes after SIGTERM, and the calls their release made.
    pub stopped: Vec<Option<i32>>,
    pub release_calls: Calls,
}

impl Outcome {
    /// Pods that needed a restart (or never started).
    pub fn failed(&self) -> usize {
        self.starts.iter().filter(|s| !s.ok()).count()
    }
}

/// The shipped IAM policy, enforced on every request as on the manager's role.
pub fn shipped_policy() -> Policy {
    let text = include_str!("../../../deploy/iam-policy.json");
    Policy::parse(&serde_json::from_str(text).expect("deploy/iam-policy.json is JSON"))
}

pub fn specs(r: &Rollout) -> Vec<Spec> {
    (0..r.pods)
        .map(|k| {
            let mut addresses = vec![Address {
                net: 1,
                ip: pod_address(1, k).into(),
            }];
            if r.interfaces >= 2 {
                addresses.push(Address {
                    net: 2,
                    ip: pod_address(2, k).into(),
                });
            }
            if r.ipv6 {
                addresses.push(Address {
                    net: 2,
                    ip: pod_address_v6(k),
                });
            }
            Spec {
                node: 1 + k % r.nodes,
                addresses,
            }
        })
        .collect()
}

pub async fn run(r: &Rollout) -> Outcome {
    let fake = FakeEc2::new(world(r.nodes));
    fake.set_policy(Some(shipped_policy()));
    let setup = Instant::now();
    let pods = pods::create_all(specs(r), &fake).await;
    let setup = setup.elapsed();
    let (bin, mode) = r.manager.program();
    let bin = crate::netns::pod_executable(bin);
    fake.set_faults(Faults {
        rate_limits: r.buckets.is_some(),
        rates: r.buckets,
        ..Faults::default()
    });
    fake.clear_log();
    let started = Instant::now();
    let mut starts = pods::start_all(&pods, &bin, mode, &r.env, r.concurrency, r.give_up).await;
    let wall = started.elapsed();
    let calls = Calls::of(&fake.log());
    let belongs: Vec<(IpAddr, String)> = pods.iter().flat_map(|p| p.belongs()).collect();
    let misplaced = misplaced(&fake.world(), &belongs);
    fake.clear_log();
    let stopped = pods::stop_all(&mut starts).await;
    let release_calls = Calls::of(&fake.log());
    let n = pods.len();
    pods::remove_all(pods).await;
    Outcome {
        setup,
        pods: n,
        wall,
        starts,
        bound: calls.bound(&r.buckets.unwrap_or_default()),
        calls,
        misplaced,
        stopped,
        release_calls,
    }
}

impl Manager {
    /// The program and its subcommand.
    fn program(&self) -> (&Path, &'static str) {
        match self {
            Manager::Init(bin) => (bin, "init"),
            Manager::Sidecar(bin) => (bin, "sidecar"),
            Manager::OldScript(bin) => (bin, "old-script"),
        }
    }
}
