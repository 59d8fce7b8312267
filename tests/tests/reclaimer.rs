//! The reclaimer against the fake API server (`fake_kube`: list, watch,
//! resourceVersion, bookmarks, 410 Gone) and the fake EC2 under the reclaimer's own
//! IAM policy. kube-runtime's reflectors and the SDK client run unmodified; each scene
//! asserts what EC2 holds afterwards.
//!
//! The world (`scenario::world`): node-1 is i-0001 (Multus ENI eni-1n3 in
//! 10.0.1.0/24), node-2 is i-0002 (eni-2n3, holding the floating IP 10.0.1.99). The
//! NAD hands out 10.0.1.64–10.0.1.95 by whereabouts.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use aws_config::Region;
use aws_sdk_ec2::config::Credentials;
use clap::Parser;
use ipmgmt_reclaimer::config::Args;
use ipmgmt_reclaimer::ec2::SdkEc2;
use ipmgmt_tests::fake_ec2::iam::Policy as IamPolicy;
use ipmgmt_tests::fake_ec2::{FakeEc2, Faults};
use ipmgmt_tests::fake_kube::{FakeKube, Kind};
use ipmgmt_tests::scenario;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const GRACE: Duration = Duration::from_millis(1000);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn reclaimer_policy() -> IamPolicy {
    let json = include_str!("../../deploy/reclaimer-iam-policy.json");
    IamPolicy::parse(&serde_json::from_str(json).expect("the policy is JSON"))
}

fn node(name: &str, instance: &str) -> Value {
    json!({"metadata": {"name": name},
           "spec": {"providerID": format!("aws:///us-west-2a/{instance}")},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

fn nad() -> Value {
    json!({"metadata": {"name": "ipvlan-net1", "namespace": "multus-demo"},
           "spec": {"config": r#"{"cniVersion":"0.3.1","type":"ipvlan","master":"eth1","mode":"l2",
              "ipam":{"type":"whereabouts","range":"10.0.1.64-10.0.1.95/24"}}"#}})
}

/// An ipmgmt pod on `node` to which Multus gave `addresses` on net1.
fn pod(name: &str, node: &str, addresses: &[&str]) -> Value {
    let status = json!([
        {"name": "aws-cni", "interface": "eth0", "ips": ["10.0.0.77"], "default": true},
        {"name": "multus-demo/ipvlan-net1", "interface": "net1", "ips": addresses},
    ]);
    json!({"metadata": {"name": name, "namespace": "multus-demo", "annotations": {
               "ipmgmt.aws/mode": "init",
               "k8s.v1.cni.cncf.io/networks": "ipvlan-net1",
               "k8s.v1.cni.cncf.io/network-status": status.to_string()}},
           "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]},
           "status": {"phase": "Running"}})
}

struct Cluster {
    kube: FakeKube,
    ec2: FakeEc2,
    kube_addr: std::net::SocketAddr,
    ec2_addr: std::net::SocketAddr,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(scenario::world()).await
    }

    async fn start_with(world: ipmgmt_tests::fake_ec2::World) -> Cluster {
        // RECLAIMER_TEST_LOG=debug shows what the in-process reclaimer does.
        if let Ok(filter) = std::env::var("RECLAIMER_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let kube = FakeKube::default();
        kube.set_bookmark_interval(Some(Duration::from_millis(200)));
        kube.apply(Kind::Node, node("node-1", "i-0001"));
        kube.apply(Kind::Node, node("node-2", "i-0002"));
        kube.apply(Kind::NetworkAttachmentDefinition, nad());
        let kube_addr = kube.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ec2 = FakeEc2::new(world);
        ec2.set_policy(Some(reclaimer_policy()));
        let ec2_addr = ec2.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        Cluster {
            kube,
            ec2,
            kube_addr,
            ec2_addr,
        }
    }

    /// A pod that ran on `node` and whose address EC2 still holds on `eni`.
    fn running(&self, name: &str, node: &str, address: &str, eni: &str) {
        self.kube.apply(Kind::Pod, pod(name, node, &[address]));
        self.ec2.move_address(ip(address), eni);
    }

    fn holder(&self, address: &str) -> Option<String> {
        self.ec2.holder(ip(address))
    }

    fn events(&self) -> Vec<Value> {
        self.kube.list(Kind::Event)
    }

    fn unassign_calls(&self) -> usize {
        self.ec2
            .log()
            .iter()
            .filter(|e| e.action.starts_with("Unassign") && e.status == 200)
            .count()
    }

    /// Starts the reclaimer in this process; it stops when the handle drops.
    async fn reclaimer(&self, identity: &str, extra: &[&str]) -> Reclaimer {
        let mut argv = vec![
            "ipmgmt-reclaimer",
            "--namespace",
            "ipmgmt",
            "--identity",
            identity,
            "--admin-listen",
            "127.0.0.1:0",
            "--interval",
            "100ms",
            "--grace",
            "1s",
            "--lease-duration",
            "2s",
            "--renew-deadline",
            "1500ms",
            "--retry-period",
            "200ms",
        ];
        argv.extend(extra);
        let args = Args::try_parse_from(argv).unwrap();
        let config = kube::Config::new(format!("http://{}", self.kube_addr).parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let sdk = ipmgr::aws::loader(ipmgr::aws::Retries {
            max_attempts: args.ec2_max_attempts,
            initial_backoff: Duration::from_millis(5),
        })
        .region(Region::new("us-west-2"))
        .endpoint_url(format!("http://{}", self.ec2_addr))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .load()
        .await;
        let ec2 = SdkEc2::new(ipmgr::aws::ec2_client(
            &sdk,
            &ipmgr::aws::Attempts::default(),
        ))
        .only_tagged(args.cluster_tag.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, admin) = oneshot::channel();
        let task = tokio::spawn(ipmgmt_reclaimer::run(
            args,
            client,
            ec2,
            Default::default(),
            async {
                let _ = stopped.await;
            },
            Some(ready),
        ));
        let admin = admin.await.expect("the reclaimer binds its admin port");
        Reclaimer {
            stop: Some(stop),
            task,
            admin,
        }
    }
}

struct Reclaimer {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    admin: std::net::SocketAddr,
}

impl Reclaimer {
    async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").await
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of one sample line, `name{labels} value`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

async fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_force_deleted_pods_give_their_addresses_back_after_the_grace() {
    let c = Cluster::start().await;
    c.running("app-a", "node-1", "10.0.1.66", "eni-1n3");
    c.running("app-b", "node-2", "10.0.1.70", "eni-2n3");
    c.running("app-c", "node-1", "10.0.1.71", "eni-1n3");
    let r = c.reclaimer("reclaimer-0", &[]).await;
    tokio::time::sleep(GRACE * 2).await;
    assert_eq!(
        c.holder("10.0.1.66").as_deref(),
        Some("eni-1n3"),
        "claimed by a live pod"
    );

    // app-a: a graceful delete runs to its end; app-b: force-deleted from node-2,
    // which stopped answering (no grace, no kubelet).
    c.kube.delete(Kind::Pod, "multus-demo", "app-a");
    let mut dead = node("node-2", "i-0002");
    dead["status"]["conditions"][0]["status"] = json!("Unknown");
    c.kube.apply(Kind::Node, dead);
    c.kube.delete(Kind::Pod, "multus-demo", "app-b");
    let deleted = Instant::now();
    wait_for("both addresses released", Duration::from_secs(10), || {
        c.holder("10.0.1.66").is_none() && c.holder("10.0.1.70").is_none()
    })
    .await;
    assert!(
        deleted.elapsed() >= GRACE,
        "released {:?} after the delete, inside the grace",
        deleted.elapsed()
    );
    assert_eq!(
        c.holder("10.0.1.71").as_deref(),
        Some("eni-1n3"),
        "app-c is live"
    );
    assert_eq!(
        c.holder("10.0.1.99").as_deref(),
        Some("eni-2n3"),
        "the floating IP"
    );
    assert_eq!(
        c.holder("10.0.1.10").as_deref(),
        Some("eni-1n3"),
        "the ENI's primary"
    );

    let events = c.events();
    let released: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["regarding"]["name"].as_str().unwrap_or(""),
                e["note"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(released.len(), 2, "one Event per release: {events:#?}");
    assert!(
        released.iter().any(|(n, note)| *n == "node-1"
            && note.contains("10.0.1.66")
            && note.contains("eni-1n3"))
    );
    assert!(
        released
            .iter()
            .any(|(n, note)| *n == "node-2" && note.contains("10.0.1.70"))
    );
    assert!(
        events
            .iter()
            .all(|e| e["reason"] == "AddressReleased" && e["reportingInstance"] == "reclaimer-0")
    );
    let m = r.metrics().await;
    assert_eq!(
        sample(&m, "ipmgmt_reclaimer_releases_total{result=\"released\"}"),
        2.0
    );
    assert_eq!(sample(&m, "ipmgmt_reclaimer_leader"), 1.0);
    assert_eq!(
        c.unassign_calls(),
        2,
        "one UnassignPrivateIpAddresses per ENI"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_floating_ip_outside_every_pool_is_never_released() {
    let c = Cluster::start().await;
    // 10.0.1.99 sits on eni-2n3 (the floating IP an HA pair moves), and in the
    // subnet, but in no NAD's range; the pod that uses it lists only its own.
    c.running("ha-1", "node-2", "10.0.1.80", "eni-2n3");
    let r = c.reclaimer("reclaimer-0", &[]).await;
    tokio::time::sleep(GRACE * 4).await;
    assert_eq!(c.holder("10.0.1.99").as_deref(), Some("eni-2n3"));
    assert_eq!(c.holder("10.0.1.80").as_deref(), Some("eni-2n3"));
    assert_eq!(c.unassign_calls(), 0);
    let m = r.metrics().await;
    assert_eq!(
        sample(&m, "ipmgmt_reclaimer_addresses{verdict=\"outside_pools\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "ipmgmt_reclaimer_addresses{verdict=\"claimed\"}"),
        1.0
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_tag_only_enis_carrying_it_are_swept() {
    // Only node-1's Multus ENI carries the cluster's tag: node-2's belongs, as far as
    // the reclaimer may know, to another cluster sharing the account.
    let mut world = scenario::world();
    let n3 = world.enis.iter_mut().find(|e| e.id == "eni-1n3").unwrap();
    n3.tags.push(("eks:cluster-name".into(), "prod".into()));
    let c = Cluster::start_with(world).await;
    c.running("app-a", "node-1", "10.0.1.66", "eni-1n3");
    c.running("app-b", "node-2", "10.0.1.70", "eni-2n3");
    let r = c
        .reclaimer("reclaimer-0", &["--cluster-tag", "eks:cluster-name=prod"])
        .await;
    tokio::time::sleep(GRACE).await;
    c.kube.delete(Kind::Pod, "multus-demo", "app-a");
    c.kube.delete(Kind::Pod, "multus-demo", "app-b");
    wait_for(
        "the tagged ENI's address released",
        Duration::from_secs(10),
        || c.holder("10.0.1.66").is_none(),
    )
    .await;
    tokio::time::sleep(GRACE * 2).await;
    assert_eq!(
        c.holder("10.0.1.70").as_deref(),
        Some("eni-2n3"),
        "an ENI without the cluster's tag is never swept"
    );
    assert_eq!(c.unassign_calls(), 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_taken_again_on_the_same_node_within_the_grace_is_kept() {
    let c = Cluster::start().await;
    c.running("app-a", "node-1", "10.0.1.66", "eni-1n3");
    let r = c.reclaimer("reclaimer-0", &[]).await;
    tokio::time::sleep(GRACE).await;
    c.kube.delete(Kind::Pod, "multus-demo", "app-a");
    // whereabouts hands the lowest free address to the next pod on the node.
    tokio::time::sleep(GRACE / 2).await;
    c.kube
        .apply(Kind::Pod, pod("app-a2", "node-1", &["10.0.1.66"]));
    tokio::time::sleep(GRACE * 4).await;
    assert_eq!(c.holder("10.0.1.66").as_deref(), Some("eni-1n3"));
    assert_eq!(c.unassign_calls(), 0);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_and_releases_nothing_falsely() {
    let c = Cluster::start().await;
    c.running("app-a", "node-1", "10.0.1.66", "eni-1n3");
    c.running("app-b", "node-2", "10.0.1.70", "eni-2n3");
    let r = c.reclaimer("reclaimer-0", &[]).await;
    tokio::time::sleep(GRACE).await;
    // The apiserver restarts with its history compacted, five times over five
    // grace periods; meanwhile app-a is replaced by app-a2 with the same address.
    for round in 0..5 {
        c.kube.compact();
        c.kube.close_watches();
        if round == 1 {
            c.kube.delete(Kind::Pod, "multus-demo", "app-a");
            c.kube
                .apply(Kind::Pod, pod("app-a2", "node-1", &["10.0.1.66"]));
        }
        tokio::time::sleep(GRACE).await;
    }
    assert_eq!(c.holder("10.0.1.66").as_deref(), Some("eni-1n3"));
    assert_eq!(c.holder("10.0.1.70").as_deref(), Some("eni-2n3"));
    assert_eq!(
        c.unassign_calls(),
        0,
        "nothing released while the claims stood"
    );
    let m = r.metrics().await;
    assert!(
        sample(&m, "ipmgmt_reclaimer_watch_errors_total{resource=\"pods\"}") >= 1.0,
        "the 410 reached the watcher:\n{m}"
    );
    let relists = c
        .kube
        .requests()
        .iter()
        .filter(|q| q.kind == Kind::Pod && q.verb == "list")
        .count();
    assert!(
        relists >= 3,
        "the pod watch listed again after 410s: {relists} lists"
    );
    // The view follows the cluster after the relists: app-a2 going is seen.
    c.kube.delete(Kind::Pod, "multus-demo", "app-a2");
    wait_for("app-a2's address released", Duration::from_secs(40), || {
        c.holder("10.0.1.66").is_none()
    })
    .await;
    assert_eq!(c.holder("10.0.1.70").as_deref(), Some("eni-2n3"));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_throttling_slows_sweeps_down_and_fails_nothing() {
    let c = Cluster::start().await;
    // Twelve stale addresses from pods long gone, two live ones.
    for n in 0..6 {
        c.ec2
            .move_address(ip(&format!("10.0.1.{}", 64 + n)), "eni-1n3");
        c.ec2
            .move_address(ip(&format!("10.0.1.{}", 72 + n)), "eni-2n3");
    }
    c.running("live-1", "node-1", "10.0.1.90", "eni-1n3");
    c.running("live-2", "node-2", "10.0.1.91", "eni-2n3");
    c.ec2.set_faults(Faults {
        throttle_fraction: 0.6,
        ..Faults::default()
    });
    let r = c
        .reclaimer(
            "reclaimer-0",
            &["--max-releases-per-sweep", "3", "--ec2-max-attempts", "2"],
        )
        .await;
    wait_for(
        "every stale address released",
        Duration::from_secs(30),
        || {
            (0..6).all(|n| {
                c.holder(&format!("10.0.1.{}", 64 + n)).is_none()
                    && c.holder(&format!("10.0.1.{}", 72 + n)).is_none()
            })
        },
    )
    .await;
    assert_eq!(c.holder("10.0.1.90").as_deref(), Some("eni-1n3"));
    assert_eq!(c.holder("10.0.1.91").as_deref(), Some("eni-2n3"));
    assert_eq!(c.holder("10.0.1.99").as_deref(), Some("eni-2n3"));
    let throttled = c
        .ec2
        .log()
        .iter()
        .filter(|e| e.code.as_deref() == Some("RequestLimitExceeded"))
        .count();
    assert!(throttled > 0, "the fake throttled");
    let m = r.metrics().await;
    assert!(
        sample(&m, "ipmgmt_reclaimer_sweeps_total{result=\"throttled\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "ipmgmt_reclaimer_sweeps_total{result=\"failed\"}"),
        0.0
    );
    assert_eq!(
        sample(&m, "ipmgmt_reclaimer_releases_total{result=\"released\"}"),
        12.0
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reports_and_changes_nothing() {
    let c = Cluster::start().await;
    // A workload on the NAD, and an address of one of its pods that is gone.
    c.running("live-1", "node-2", "10.0.1.90", "eni-2n3");
    c.ec2.move_address(ip("10.0.1.66"), "eni-1n3");
    let r = c.reclaimer("reclaimer-0", &["--dry-run", "true"]).await;
    wait_for("an Event", Duration::from_secs(10), || {
        !c.events().is_empty()
    })
    .await;
    let events = c.events();
    assert_eq!(events[0]["reason"], "AddressWouldBeReleased");
    assert!(
        events[0]["note"]
            .as_str()
            .unwrap()
            .starts_with("would release 10.0.1.66 from eni-1n3")
    );
    assert_eq!(c.holder("10.0.1.66").as_deref(), Some("eni-1n3"));
    assert_eq!(c.unassign_calls(), 0);
    let m = r.metrics().await;
    assert!(sample(&m, "ipmgmt_reclaimer_releases_total{result=\"dry_run\"}") >= 1.0);
    r.stop().await;
}

/// The binary beside this test's, as `cargo build --workspace` leaves it.
fn reclaimer_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("ipmgmt-reclaimer");
    assert!(
        path.exists(),
        "{} is missing: run cargo build --workspace first",
        path.display()
    );
    path
}

/// One replica as a process, configured as the chart configures it (the downward
/// API's POD_NAME and POD_NAMESPACE, a kubeconfig for the API server).
fn replica(c: &Cluster, dir: &std::path::Path, name: &str) -> Replica {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: r\n  user:\n    token: t\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: r\n\
             current-context: fake\n",
            c.kube_addr
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(reclaimer_binary())
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", "ipmgmt")
        .env("AWS_ENDPOINT_URL_EC2", format!("http://{}", c.ec2_addr))
        .env("AWS_REGION", "us-west-2")
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--interval",
            "100ms",
            "--grace",
            "1s",
            "--lease-duration",
            "2s",
            "--renew-deadline",
            "1500ms",
            "--retry-period",
            "200ms",
            "--log-level",
            &std::env::var("RECLAIMER_TEST_LOG").unwrap_or_else(|_| "info".into()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Replica(child)
}

/// A replica process, killed if the test ends without stopping it.
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn holder_of_lease(c: &Cluster) -> Option<String> {
    c.kube
        .get(Kind::Lease, "ipmgmt", "ipmgmt-reclaimer")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

fn reporters(c: &Cluster) -> Vec<String> {
    c.events()
        .iter()
        .map(|e| e["reportingInstance"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_hand_over_only_one_replica_acts() {
    let c = Cluster::start().await;
    let dir = std::env::temp_dir().join(format!("ipmgmt-reclaimer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    c.running("live-1", "node-2", "10.0.1.90", "eni-2n3");
    let mut a = replica(&c, &dir, "reclaimer-a");
    wait_for("reclaimer-a leads", Duration::from_secs(20), || {
        holder_of_lease(&c).as_deref() == Some("reclaimer-a")
    })
    .await;
    let mut b = replica(&c, &dir, "reclaimer-b");
    for n in 64..70 {
        c.ec2.move_address(ip(&format!("10.0.1.{n}")), "eni-1n3");
    }
    // One call releases the six; their Events follow it, one at a time.
    wait_for(
        "six released, with their Events",
        Duration::from_secs(15),
        || (64..70).all(|n| c.holder(&format!("10.0.1.{n}")).is_none()) && c.events().len() >= 6,
    )
    .await;
    assert_eq!(
        reporters(&c),
        vec!["reclaimer-a"; 6],
        "only the leader acted"
    );
    assert_eq!(holder_of_lease(&c).as_deref(), Some("reclaimer-a"));

    // The leader dies without a word (SIGKILL): b takes over once the lease runs out.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let killed = Instant::now();
    wait_for("reclaimer-b leads", Duration::from_secs(20), || {
        holder_of_lease(&c).as_deref() == Some("reclaimer-b")
    })
    .await;
    assert!(
        killed.elapsed() >= Duration::from_millis(1500),
        "b waited for the lease to run out"
    );
    for n in 70..73 {
        c.ec2.move_address(ip(&format!("10.0.1.{n}")), "eni-2n3");
    }
    wait_for("three more released", Duration::from_secs(15), || {
        (70..73).all(|n| c.holder(&format!("10.0.1.{n}")).is_none())
    })
    .await;
    let reporters = reporters(&c);
    assert_eq!(
        reporters.iter().filter(|r| *r == "reclaimer-b").count(),
        3,
        "{reporters:?}"
    );
    let refused: Vec<_> = c
        .ec2
        .log()
        .into_iter()
        .filter(|e| e.action.starts_with("Unassign") && e.status != 200)
        .collect();
    assert!(
        refused.is_empty(),
        "no replica released what another had: {refused:?}"
    );
    let lease = c
        .kube
        .get(Kind::Lease, "ipmgmt", "ipmgmt-reclaimer")
        .unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // SIGTERM: b gives the lease up on its way out.
    let pid = b.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = b.0.wait().unwrap();
    assert!(status.success(), "reclaimer-b exited {status}");
    assert_eq!(holder_of_lease(&c), None, "released on SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}
