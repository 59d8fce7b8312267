//! ipmgr at scale, small: 20 pods on 4 nodes with the real `ipmgr` in pod namespaces
//! (uid 65532, no capabilities), against the fake EC2 with an Assign bucket far
//! smaller than EC2's, so that throttling really happens. The outcome is asserted:
//! every address assigned to exactly its node's ENI, no pod failed. Timings are
//! figures, not assertions (`scripts/bench-scale`, docs/benchmarks.md). Needs root.

use std::path::PathBuf;
use std::time::Duration;

use ipmgmt_tests::fake_ec2::{Rate, Rates};
use ipmgmt_tests::scale::rollout::{self, Manager, Rollout};

fn target_bin(name: &str) -> PathBuf {
    // target/debug/deps/<this test> → target/debug/<name>, built by `cargo test --workspace`.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// Assign: 4 at once, then 4 a second; 20 pods with 2 addresses on 2 ENIs ask for 40.
fn tight() -> Rates {
    Rates {
        mutating: Rate {
            burst: 4.0,
            per_second: 4.0,
        },
        ..Rates::default()
    }
}

fn small(manager: Manager) -> Rollout {
    Rollout {
        manager,
        nodes: 4,
        pods: 20,
        interfaces: 2,
        ipv6: false,
        concurrency: 20,
        buckets: Some(tight()),
        env: vec![("AWS_EC2_METADATA_DISABLED".to_owned(), "true".to_owned())],
        give_up: Duration::from_secs(40),
    }
}

async fn assert_rollout(manager: Manager) -> rollout::Outcome {
    let out = rollout::run(&small(manager)).await;
    assert!(out.misplaced.is_empty(), "{:#?}", out.misplaced);
    let failures: Vec<&String> = out.starts.iter().flat_map(|s| &s.failures).collect();
    assert_eq!(out.failed(), 0, "pods failed: {failures:?}");
    let assigns = out.calls.0["AssignPrivateIpAddresses"];
    assert!(
        assigns.throttled > 0,
        "the Assign bucket throttled nothing: {}",
        out.calls.table(out.pods)
    );
    assert_eq!(out.starts.len(), 20);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_assigns_every_address_of_20_pods_through_throttling() {
    let out = assert_rollout(Manager::Init(target_bin("ipmgr"))).await;
    assert!(out.stopped.is_empty(), "init leaves nothing running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_of_20_pods_get_ready_through_throttling() {
    let out = assert_rollout(Manager::Sidecar(target_bin("ipmgr"))).await;
    assert_eq!(out.stopped.len(), 20, "every sidecar was running");
}
