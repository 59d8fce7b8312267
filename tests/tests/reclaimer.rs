//! The reclaimer against the fake API server (`fake_kube`: list, watch,
//! resourceVersion, bookmarks, 410 Gone) and the fake EC2 under the reclaimer's own
//! IAM policy. kube-runtime's reflectors and the SDK client run unmodified; each scene
//! asserts what EC2 holds afterwards.
//!
//! What a real API server can show runs on one: `tests/python/test_control_plane_reclaimer.py`
//! (force-deleted and gracefully deleted pods, a pod past its deletionTimestamp, an
//! address handed to the next pod within the grace, a floating IP, a dry run, served
//! namespaces, cluster tags, an ENI's primary IPv6, whereabouts' IPPool records,
//! throttled EC2, the Lease handed over, compaction and a restart). The scenes here
//! need what only the fake API server gives:
//! - its request log, to count the reclaimer's lists and writes (relists after 410;
//!   one replica acting while another waits);
//! - a change to the cluster made inside an EC2 call (`claim_on_first_unassign`, and
//!   the refused batch): a pod handed an address at the instant its unassign waits
//!   or lands, which a real apiserver cannot be made to do at that instant;
//! - a connection that stops carrying bytes without closing (`Proxy`);
//! - a CRD served only after the controller started, which a real API server can
//!   show only by deleting the CRD (and every object of it) that other scenes use.
//!
//! The world (`scenario::world`): node-1 is i-0001 (Multus ENI eni-1n3 in
//! 10.0.1.0/24), node-2 is i-0002 (eni-2n3, holding the floating IP 10.0.1.99).
//! whereabouts hands out addresses of 10.0.1.0/24 and 2600:1f14:aaa:1b00::/64; what a
//! scene says IPAM handed out, it says either through a pod's network-status or
//! through a whereabouts IPPool record (`Cluster::recorded`).

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
use ipmgmt_tests::fake_ec2::{Arrival, FakeEc2};
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

fn namespace_object(name: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

fn node(name: &str, instance: &str) -> Value {
    json!({"metadata": {"name": name},
           "spec": {"providerID": format!("aws:///us-west-2a/{instance}")},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

/// An ipmgmt pod on `node` to which Multus gave `addresses` on net1.
fn pod(name: &str, node: &str, addresses: &[&str]) -> Value {
    pod_in("multus-demo", name, node, addresses)
}

fn pod_in(namespace: &str, name: &str, node: &str, addresses: &[&str]) -> Value {
    let status = json!([
        {"name": "aws-cni", "interface": "eth0", "ips": ["10.0.0.77"], "default": true},
        {"name": format!("{namespace}/ipvlan-net1"), "interface": "net1", "ips": addresses},
    ]);
    json!({"metadata": {"name": name, "namespace": namespace, "annotations": {
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
        let cluster = Cluster::start_before_crds(world).await;
        cluster.kube.serve_whereabouts();
        cluster
    }

    /// The cluster before whereabouts' (and Multus's) CRDs are installed.
    async fn start_before_crds(world: ipmgmt_tests::fake_ec2::World) -> Cluster {
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
        for namespace in ["multus-demo", "ipmgmt"] {
            kube.apply(Kind::Namespace, namespace_object(namespace));
        }
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

    /// whereabouts' record that it handed `address` to `pod` (`namespace/name`), as
    /// it stays after a pod is force-deleted from a node that never ran the CNI DEL.
    fn recorded(&self, address: &str, pod: &str) {
        let address = ip(address);
        let (name, range): (&str, ipnet::IpNet) = match address {
            IpAddr::V4(_) => ("10.0.1.0-24", "10.0.1.0/24".parse().unwrap()),
            IpAddr::V6(_) => (
                "2600-1f14-aaa-1b00---64",
                "2600:1f14:aaa:1b00::/64".parse().unwrap(),
            ),
        };
        let offset = match (address, range.network()) {
            (IpAddr::V4(a), IpAddr::V4(n)) => u128::from(u32::from(a) - u32::from(n)),
            (IpAddr::V6(a), IpAddr::V6(n)) => u128::from(a) - u128::from(n),
            _ => unreachable!("one family"),
        };
        let mut pool = self
            .kube
            .get(Kind::IpPool, "kube-system", name)
            .unwrap_or_else(|| {
                json!({"metadata": {"name": name, "namespace": "kube-system"},
                   "spec": {"range": range.to_string(), "allocations": {}}})
            });
        pool["spec"]["allocations"][offset.to_string()] =
            json!({"id": format!("c-{offset}"), "podref": pod, "ifname": "net1"});
        self.kube.apply(Kind::IpPool, pool);
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
        self.reclaimer_via(self.kube_addr, identity, extra).await
    }

    /// Starts the reclaimer with its API server at `kube` (a proxy, in some scenes).
    async fn reclaimer_via(
        &self,
        kube: std::net::SocketAddr,
        identity: &str,
        extra: &[&str],
    ) -> Reclaimer {
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
        let config = kube::Config::new(format!("http://{kube}").parse().unwrap());
        let client = ipmgmt_reclaimer::kube_client(config, &args).unwrap();
        let sdk = ipmgmt_common::aws::loader(ipmgmt_common::aws::Retries {
            max_attempts: args.ec2_max_attempts,
            initial_backoff: Duration::from_millis(5),
        })
        .region(Region::new("us-west-2"))
        .endpoint_url(format!("http://{}", self.ec2_addr))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .load()
        .await;
        let ec2 = SdkEc2::new(ipmgmt_common::aws::ec2_client(
            &sdk,
            &ipmgmt_common::aws::Attempts::default(),
        ))
        .only_tagged(args.cluster_tag.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, admin) = oneshot::channel();
        let task = tokio::spawn(ipmgmt_reclaimer::run(
            args,
            client,
            ec2,
            ipmgmt_common::metrics::Component::Reclaimer.registry(),
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
    // The watcher's backoff decides how many of the five 410s are followed by a list
    // before the next one arrives (two or more on an idle machine, one under load):
    // at least one must be.
    assert!(
        relists >= 2,
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
        c.recorded(&format!("10.0.1.{n}"), &format!("multus-demo/gone-{n}"));
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
        c.recorded(&format!("10.0.1.{n}"), &format!("multus-demo/gone-{n}"));
    }
    // The Events follow the call that released them: wait for both.
    wait_for(
        "three more released, with their Events",
        Duration::from_secs(15),
        || {
            (70..73).all(|n| c.holder(&format!("10.0.1.{n}")).is_none())
                && reporters(&c).iter().filter(|r| *r == "reclaimer-b").count() >= 3
        },
    )
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

/// The addresses of dual-stack scenes: whereabouts hands out both families.
const V6_A: &str = "2600:1f14:aaa:1b00::66";

/// A hook for the fake EC2: on the first unassign that names one of `addresses`, a
/// pod `claimer` on node-1 is handed them (whereabouts gives out the lowest free
/// address, which is the one being released), and EC2 answers as `answer` says.
fn claim_on_first_unassign(
    c: &Cluster,
    claimer: &'static str,
    addresses: &'static [&'static str],
    answer: Arrival,
) {
    let kube = c.kube.clone();
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    c.ec2.on_arrival(Some(std::sync::Arc::new(
        move |action: &str, _eni: Option<&str>| {
            if !action.starts_with("Unassign")
                || fired.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return Arrival::Proceed;
            }
            kube.apply(Kind::Pod, pod(claimer, "node-1", addresses));
            answer
        },
    )));
}

/// Whether an unassign that EC2 carried out named `address`.
fn unassigned(c: &Cluster, eni: &str) -> usize {
    c.ec2
        .log()
        .iter()
        .filter(|e| {
            e.action.starts_with("Unassign") && e.status == 200 && e.eni.as_deref() == Some(eni)
        })
        .count()
}

async fn claimed_during_a_throttled_unassign(addresses: &'static [&'static str]) {
    let c = Cluster::start().await;
    for a in addresses {
        c.ec2.move_address(ip(a), "eni-1n3");
    }
    c.kube.apply(Kind::Pod, pod("app-a", "node-1", addresses));
    let r = c
        .reclaimer("reclaimer-0", &["--ec2-initial-backoff", "300ms"])
        .await;
    tokio::time::sleep(GRACE).await;
    claim_on_first_unassign(&c, "app-b", addresses, Arrival::Throttle);
    c.kube.delete(Kind::Pod, "multus-demo", "app-a");
    wait_for("the throttled unassign", Duration::from_secs(10), || {
        c.ec2
            .log()
            .iter()
            .any(|e| e.code.as_deref() == Some("RequestLimitExceeded"))
    })
    .await;
    tokio::time::sleep(GRACE * 3).await;
    for a in addresses {
        assert_eq!(c.holder(a).as_deref(), Some("eni-1n3"), "{a} is app-b's");
    }
    assert_eq!(
        unassigned(&c, "eni-1n3"),
        0,
        "the retry checked the claims first: {:?}",
        c.ec2.log()
    );
    let m = r.metrics().await;
    assert_eq!(
        sample(
            &m,
            "ipmgmt_reclaimer_releases_total{result=\"claimed_at_confirm\"}"
        ),
        addresses.len() as f64
    );
    assert_eq!(
        sample(&m, "ipmgmt_reclaimer_releases_total{result=\"released\"}"),
        0.0
    );
    assert!(c.events().is_empty(), "{:#?}", c.events());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_claimed_while_a_throttled_unassign_waits_is_kept() {
    claimed_during_a_throttled_unassign(&["10.0.1.66"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_addresses_claimed_while_a_throttled_unassign_waits_are_kept() {
    claimed_during_a_throttled_unassign(&["10.0.1.66", V6_A]).await;
}

async fn claimed_while_the_unassign_lands(addresses: &'static [&'static str]) {
    let c = Cluster::start().await;
    for a in addresses {
        c.ec2.move_address(ip(a), "eni-1n3");
    }
    c.kube.apply(Kind::Pod, pod("app-a", "node-1", addresses));
    let r = c.reclaimer("reclaimer-0", &[]).await;
    tokio::time::sleep(GRACE).await;
    // The claim lands after the last check and before EC2 acts: only the check after
    // the calls can see it.
    claim_on_first_unassign(&c, "app-b", addresses, Arrival::Proceed);
    c.kube.delete(Kind::Pod, "multus-demo", "app-a");
    wait_for("the Event of the put-back", Duration::from_secs(10), || {
        c.events().iter().any(|e| e["reason"] == "AddressPutBack")
    })
    .await;
    for a in addresses {
        assert_eq!(c.holder(a).as_deref(), Some("eni-1n3"), "{a} is app-b's");
    }
    let events = c.events();
    assert!(
        events.iter().all(|e| e["reason"] == "AddressPutBack"
            && e["type"] == "Warning"
            && e["note"].as_str().unwrap().contains("multus-demo/app-b")),
        "{events:#?}"
    );
    // The first call lands and is put back; in a dual-stack scene the other family's
    // call comes after the claim, and its check keeps the address.
    let m = r.metrics().await;
    let put_back = sample(&m, "ipmgmt_reclaimer_releases_total{result=\"put_back\"}");
    let kept = sample(
        &m,
        "ipmgmt_reclaimer_releases_total{result=\"claimed_at_confirm\"}",
    );
    assert_eq!((put_back, kept), (1.0, addresses.len() as f64 - 1.0), "{m}");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(
        sample(&m, "ipmgmt_reclaimer_releases_total{result=\"released\"}"),
        0.0
    );
    // And it stays: app-b's claim holds through later sweeps.
    tokio::time::sleep(GRACE * 3).await;
    for a in addresses {
        assert_eq!(c.holder(a).as_deref(), Some("eni-1n3"));
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_claimed_while_its_unassign_lands_is_put_back() {
    claimed_while_the_unassign_lands(&["10.0.1.66"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_addresses_claimed_while_their_unassigns_land_are_put_back() {
    claimed_while_the_unassign_lands(&["10.0.1.66", V6_A]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_ec2_refuses_does_not_keep_the_others() {
    let c = Cluster::start().await;
    let gone = ["10.0.1.66", "10.0.1.67", "10.0.1.68"];
    for a in gone {
        c.ec2.move_address(ip(a), "eni-1n3");
    }
    c.kube.apply(Kind::Pod, pod("app-a", "node-1", &gone));
    let r = c.reclaimer("reclaimer-0", &[]).await;
    tokio::time::sleep(GRACE).await;
    // While the batch is on its way, another node's pod takes 10.0.1.67 over
    // (reassignment): EC2 refuses the whole call, since one address is not there.
    let ec2 = c.ec2.clone();
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    c.ec2.on_arrival(Some(std::sync::Arc::new(
        move |action: &str, _eni: Option<&str>| {
            if action == "UnassignPrivateIpAddresses"
                && !fired.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                ec2.move_address("10.0.1.67".parse().unwrap(), "eni-2n3");
            }
            Arrival::Proceed
        },
    )));
    c.kube
        .apply(Kind::Pod, pod("app-c", "node-2", &["10.0.1.67"]));
    c.kube.delete(Kind::Pod, "multus-demo", "app-a");
    wait_for("the two others released", Duration::from_secs(10), || {
        c.holder("10.0.1.66").is_none() && c.holder("10.0.1.68").is_none()
    })
    .await;
    assert_eq!(c.holder("10.0.1.67").as_deref(), Some("eni-2n3"), "app-c's");
    let refused = c
        .ec2
        .log()
        .iter()
        .filter(|e| e.code.as_deref() == Some("InvalidParameterValue"))
        .count();
    assert!(refused >= 1, "the batch was refused: {:?}", c.ec2.log());
    r.stop().await;
}

/// A TCP proxy that can stop carrying bytes without closing anything, as a
/// half-dead NAT entry or a stuck apiserver does.
struct Proxy {
    addr: std::net::SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn to(upstream: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let gate = frozen.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pipe(dr, uw, gate.subscribe()));
                tokio::spawn(pipe(ur, dw, gate.subscribe()));
            }
        });
        Proxy { addr, frozen }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        // Bytes read while frozen are held until the thaw, or forever.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_goes_silent_counts_as_a_watch_error() {
    let c = Cluster::start().await;
    c.running("app-a", "node-1", "10.0.1.66", "eni-1n3");
    let proxy = Proxy::to(c.kube_addr).await;
    let r = c
        .reclaimer_via(proxy.addr, "reclaimer-0", &["--watch-timeout", "1s"])
        .await;
    tokio::time::sleep(GRACE * 2).await;
    let before = sample(
        &r.metrics().await,
        "ipmgmt_reclaimer_watch_errors_total{resource=\"pods\"}",
    );
    assert_eq!(before, 0.0, "watches that end on time are not errors");
    proxy.freeze(true);
    let frozen = Instant::now();
    let mut errors = 0.0;
    while errors < 1.0 {
        assert!(
            frozen.elapsed() < Duration::from_secs(15),
            "the silent watch was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        errors = sample(
            &r.metrics().await,
            "ipmgmt_reclaimer_watch_errors_total{resource=\"pods\"}",
        );
    }
    proxy.freeze(false);
    // Back: the view follows the cluster again.
    c.kube.delete(Kind::Pod, "multus-demo", "app-a");
    wait_for("released after the thaw", Duration::from_secs(20), || {
        c.holder("10.0.1.66").is_none()
    })
    .await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_stops_leading_before_the_lease_can_pass() {
    let c = Cluster::start().await;
    let proxy = Proxy::to(c.kube_addr).await;
    let a = c.reclaimer_via(proxy.addr, "reclaimer-a", &[]).await;
    wait_for("reclaimer-a leads", Duration::from_secs(10), || {
        holder_of_lease(&c).as_deref() == Some("reclaimer-a")
    })
    .await;
    let b = c.reclaimer("reclaimer-b", &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sample(&a.metrics().await, "ipmgmt_reclaimer_leader"), 1.0);
    proxy.freeze(true);
    let frozen = Instant::now();
    let mut a_stopped = None;
    while holder_of_lease(&c).as_deref() != Some("reclaimer-b") {
        assert!(
            frozen.elapsed() < Duration::from_secs(15),
            "reclaimer-b never took over"
        );
        if a_stopped.is_none() && sample(&a.metrics().await, "ipmgmt_reclaimer_leader") == 0.0 {
            a_stopped = Some(frozen.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_took = frozen.elapsed();
    let a_stopped =
        a_stopped.expect("reclaimer-a still believed it led when reclaimer-b took the Lease");
    assert!(
        a_stopped < b_took,
        "a stopped at {a_stopped:?}, b took over at {b_took:?}"
    );
    assert!(
        a_stopped <= Duration::from_millis(1500 + 400),
        "within the renew deadline: {a_stopped:?}"
    );
    proxy.freeze(false);
    b.stop().await;
    drop(a);
}

/// Started before whereabouts' CRD was installed, the controller looks for it every
/// `--crd-poll-interval`; once it is served, the controller ends cleanly (its Lease
/// given up) so that its Deployment starts it again reading IPPools. Until then it
/// runs on.
#[tokio::test]
async fn a_crd_installed_after_the_start_ends_the_process_for_a_restart_that_reads_it() {
    let cluster = Cluster::start_before_crds(scenario::world()).await;
    let reclaimer = cluster
        .reclaimer("r-1", &["--crd-poll-interval", "100ms"])
        .await;
    let holder = || {
        let lease = cluster.kube.get(Kind::Lease, "ipmgmt", "ipmgmt-reclaimer");
        lease.and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder().as_deref() != Some("r-1") {
        assert!(Instant::now() < deadline, "the replica never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!reclaimer.task.is_finished(), "nothing new is served yet");
    cluster.kube.serve_whereabouts();
    let ended = tokio::time::timeout(Duration::from_secs(10), reclaimer.task)
        .await
        .expect("the controller ends once the CRD is served");
    ended.unwrap().unwrap();
    // Its Lease was given up on the way out, for the restarted process (or the other
    // replica) to take at once.
    assert_eq!(holder().unwrap_or_default(), "");
}
