//! The real ipmgr binary inside a pod's network namespace, against the fake EC2 and
//! IMDS listening on the host end of the pod's eth0. ipmgr runs as the injected
//! container does: uid 65532, no capabilities, no new privileges. Setting up the
//! namespaces needs root.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipmgmt_tests::fake_ec2::{FakeEc2, Faults, World};
use ipmgmt_tests::fake_imds::{Asked, FakeImds};
use ipmgmt_tests::netns::{Endpoints, POD_UID, PodNet, ipmgr_for_tests, pod_dir};
use ipmgmt_tests::scenario::{MAC_N3, MAC_N6, identity, world};

struct Pod {
    net: PodNet,
    ec2: FakeEc2,
    ec2_addr: SocketAddr,
    imds_addr: SocketAddr,
    imds_asked: Asked,
    dir: PathBuf,
}

impl Pod {
    async fn start(world: World, imds_reachable: bool) -> Pod {
        let net = PodNet::create();
        let ec2 = FakeEc2::new(world);
        let ec2_addr = ec2
            .serve(SocketAddr::new(net.host_ip.into(), 0))
            .await
            .unwrap();
        let imds_at = SocketAddr::new(net.host_ip.into(), 0);
        let (imds_addr, imds_asked) = match imds_reachable {
            true => {
                let imds = FakeImds::new(identity());
                (imds.serve(imds_at).await.unwrap(), imds.asked())
            }
            false => FakeImds::black_hole(imds_at).await.unwrap(),
        };
        let dir = pod_dir(&format!("ipmgmt-{}", net.ns));
        Pod {
            net,
            ec2,
            ec2_addr,
            imds_addr,
            imds_asked,
            dir,
        }
    }

    fn ipmgr(&self, mode: &str) -> Command {
        let at = Endpoints {
            ec2: self.ec2_addr,
            imds: self.imds_addr,
        };
        let mut cmd = self.net.ipmgr(&ipmgr_for_tests(), mode, at, &self.dir);
        cmd.env("IPMGR_ADDRESS_WAIT_SECONDS", "2")
            .env("IPMGR_DEADLINE_SECONDS", "20")
            .env("IPMGR_RETRY_INITIAL_BACKOFF_MS", "10")
            .env("IPMGR_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    async fn run(&self, mode: &str) -> (Option<i32>, String, String) {
        let out = output(self.ipmgr(mode)).await;
        let termination =
            std::fs::read_to_string(self.dir.join("termination-log")).unwrap_or_default();
        (
            out.status.code(),
            termination,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn holder(&self, ip: &str) -> Option<String> {
        self.ec2.holder(ip.parse::<IpAddr>().unwrap())
    }

    fn ready(&self) -> bool {
        self.dir.join("ready").exists()
    }

    fn termination(&self) -> String {
        std::fs::read_to_string(self.dir.join("termination-log")).unwrap_or_default()
    }

    /// Starts the sidecar, with its log on the test's stderr.
    fn sidecar(&self, env: &[(&str, &str)]) -> Sidecar {
        let mut cmd = self.ipmgr("sidecar");
        cmd.envs(env.iter().copied()).stderr(Stdio::inherit());
        Sidecar(cmd.spawn().unwrap())
    }

    async fn wait_ready(&self, child: &mut std::process::Child) {
        let until = Instant::now() + Duration::from_secs(20);
        while !self.ready() {
            assert!(Instant::now() < until, "sidecar never became ready");
            assert!(child.try_wait().unwrap().is_none(), "sidecar exited early");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_holder(&self, ip: &str, want: Option<&str>) {
        let until = Instant::now() + Duration::from_secs(10);
        while self.holder(ip).as_deref() != want {
            assert!(
                Instant::now() < until,
                "{ip}: holder {:?}, want {want:?}; log {:?}",
                self.holder(ip),
                self.ec2.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A running sidecar; killed if the test fails before stopping it, so that no
/// manager outlives its test.
struct Sidecar(std::process::Child);

impl std::ops::Deref for Sidecar {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Sidecar {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs a command to completion off the async runtime, so the fakes keep serving.
async fn output(mut cmd: Command) -> Output {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || cmd.output()),
    );
    out.await
        .expect("ipmgr finishes within a minute")
        .unwrap()
        .unwrap()
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_assigns_by_mac_and_by_subnet_then_exits_zero() {
    let pod = Pod::start(world(), true).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    pod.net.add_address("net1", "10.0.1.51/24");
    // A MAC no ENI has: placed by subnet containment (a secondary VPC CIDR).
    pod.net.add_interface("net2", "0e:00:00:00:09:09");
    pod.net.add_address("net2", "100.64.1.7/20");
    let (code, termination, logs) = pod.run("init").await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(termination.is_empty(), "{termination}");
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));
    assert_eq!(pod.holder("10.0.1.51").as_deref(), Some("eni-1n3"));
    assert_eq!(pod.holder("100.64.1.7").as_deref(), Some("eni-1n6"));
    // eth0's address is the VPC CNI's: never touched.
    assert!(
        pod.ec2
            .log()
            .iter()
            .all(|e| e.eni.as_deref() != Some("eni-1primary"))
    );
    assert!(
        logs.contains("\"action\":\"AssignPrivateIpAddresses\""),
        "one line per decision: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_fails_with_one_line_when_the_role_lacks_permission() {
    let pod = Pod::start(world(), true).await;
    pod.ec2.set_faults(Faults {
        deny: ["AssignPrivateIpAddresses".into()].into(),
        ..Faults::default()
    });
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    let (code, termination, _) = pod.run("init").await;
    assert_eq!(code, Some(1));
    assert_eq!(termination.lines().count(), 1, "{termination}");
    assert!(
        termination.contains("UnauthorizedOperation")
            && termination.contains("deploy/iam-policy.json"),
        "{termination}"
    );
    assert_eq!(pod.holder("10.0.1.50"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_fails_with_one_line_when_the_eni_is_full() {
    let mut w = world();
    w.enis[1].ipv4 = (10..20)
        .map(|n| format!("10.0.1.{n}").parse().unwrap())
        .collect();
    let pod = Pod::start(w, true).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    let (code, termination, _) = pod.run("init").await;
    assert_eq!(code, Some(1));
    assert!(
        termination.contains("PrivateIpAddressLimitExceeded")
            && termination.contains("eni-1n3 holds 10"),
        "{termination}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_fails_naming_the_interfaces_when_there_is_no_secondary_address() {
    let pod = Pod::start(world(), true).await;
    let (code, termination, _) = pod.run("init").await;
    assert_eq!(code, Some(1));
    assert!(
        termination.contains("no address on a secondary interface"),
        "{termination}"
    );
    assert!(
        termination.contains("eth0") && termination.contains("k8s.v1.cni.cncf.io/networks"),
        "{termination}"
    );
    assert!(pod.ec2.log().is_empty(), "no EC2 call without an address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_assigns_ipv6_moving_it_from_its_holder() {
    let mut w = world();
    w.enis[3].ipv6 = vec!["2600:1f14:aaa:1b00::42".parse().unwrap()];
    let pod = Pod::start(w, true).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "2600:1f14:aaa:1b00::42/64");
    let (code, _, logs) = pod.run("init").await;
    assert_eq!(code, Some(0), "{logs}");
    assert_eq!(
        pod.holder("2600:1f14:aaa:1b00::42").as_deref(),
        Some("eni-1n3")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_converges_with_half_the_requests_throttled() {
    let pod = Pod::start(world(), true).await;
    pod.ec2.set_faults(Faults {
        throttle_fraction: 0.5,
        ..Faults::default()
    });
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    pod.net.add_interface("net2", MAC_N6);
    pod.net.add_address("net2", "100.64.1.7/20");
    let (code, _, logs) = pod.run("init").await;
    assert_eq!(code, Some(0), "{logs}");
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));
    assert_eq!(pod.holder("100.64.1.7").as_deref(), Some("eni-1n6"));
    assert!(
        pod.ec2
            .log()
            .iter()
            .any(|e| e.code.as_deref() == Some("RequestLimitExceeded"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_works_without_imds_from_region_and_node_name() {
    let pod = Pod::start(world(), false).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    let mut cmd = pod.ipmgr("init");
    cmd.env("NODE_NAME", "ip-10-0-0-10.us-west-2.compute.internal");
    let out = output(cmd).await;
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{logs}");
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));
    // The ENI with the interface's MAC names the instance, and the pass starts from
    // it: 3 calls, as many as the seed script made, and no DescribeInstances.
    let actions: Vec<String> = pod.ec2.log().into_iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            "DescribeNetworkInterfaces",
            "AssignPrivateIpAddresses",
            "DescribeNetworkInterfaces"
        ]
    );
    assert!(
        logs.contains("instance of the ENIs the pod's interfaces ride on"),
        "{logs}"
    );
    // The MACs answered first, so a node whose IMDS pods cannot reach (hop limit 1)
    // costs the pod no IMDS timeout.
    assert_eq!(pod.imds_asked.load(Ordering::Relaxed), 0, "{logs}");
}

/// `ipmgr init` with an IP-based node name on an interface whose MAC no ENI has (the
/// address is placed by subnet), IMDS answering or not; it succeeds either way.
async fn init_on_a_mac_no_eni_has(imds_reachable: bool) -> (Pod, String) {
    let pod = Pod::start(world(), imds_reachable).await;
    pod.net.add_interface("net1", "0e:00:00:00:09:09");
    pod.net.add_address("net1", "10.0.1.50/24");
    let mut cmd = pod.ipmgr("init");
    cmd.env("NODE_NAME", "ip-10-0-0-10.us-west-2.compute.internal");
    let out = output(cmd).await;
    let logs = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{logs}");
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));
    (pod, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_asks_imds_only_when_no_interface_carries_an_enis_mac() {
    let (pod, logs) = init_on_a_mac_no_eni_has(true).await;
    assert!(logs.contains("instance from IMDS"), "{logs}");
    assert!(pod.imds_asked.load(Ordering::Relaxed) > 0);
    let actions: Vec<String> = pod.ec2.log().into_iter().map(|e| e.action).collect();
    assert!(
        !actions.iter().any(|a| a == "DescribeInstances"),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_looks_the_node_name_up_when_no_interface_carries_an_enis_mac() {
    let (pod, logs) = init_on_a_mac_no_eni_has(false).await;
    assert!(
        pod.ec2
            .log()
            .iter()
            .any(|e| e.action == "DescribeInstances")
    );
    let fallback = logs
        .lines()
        .find(|l| l.contains("instance by private DNS name"))
        .unwrap_or_else(|| panic!("no fallback line: {logs}"));
    // One readable cause, not the SDK's Debug dump of it.
    assert!(fallback.contains("timeout"), "{fallback}");
    for dump in ["DispatchFailure", "ConnectorError", "source:", "kind:"] {
        assert!(!fallback.contains(dump), "{fallback}");
    }
}

/// SIGTERM, as kubelet sends it; waits for the exit. `ip netns exec` and `setpriv`
/// exec the program, so the child's pid is ipmgr itself.
async fn stop(child: &mut std::process::Child) -> (std::process::ExitStatus, Duration) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let sent = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, sent.elapsed());
        }
        assert!(
            sent.elapsed() < Duration::from_secs(40),
            "sidecar did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `Uid:` and `CapEff:` of a running process, from /proc.
fn credentials(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (field("Uid:"), field("CapEff:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_follows_a_floating_ip_and_releases_only_what_it_holds() {
    let pod = Pod::start(world(), true).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    let mut child = pod.sidecar(&[]);
    pod.wait_ready(&mut child).await;
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));
    let (uid, caps) = credentials(child.id());
    assert_eq!(uid, format!("{POD_UID} {POD_UID} {POD_UID} {POD_UID}"));
    assert_eq!(caps, "0000000000000000", "no capabilities");

    // A floating IP moves in from the other node.
    pod.net.add_address("net1", "10.0.1.99/24");
    pod.wait_holder("10.0.1.99", Some("eni-1n3")).await;
    // An address the pod takes and then gives up.
    pod.net.add_address("net1", "10.0.1.60/24");
    pod.wait_holder("10.0.1.60", Some("eni-1n3")).await;
    pod.net.del_address("net1", "10.0.1.60/24");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, _) = stop(&mut child).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(pod.holder("10.0.1.50"), None, "held at stop: released");
    assert_eq!(pod.holder("10.0.1.99"), None, "held at stop: released");
    assert_eq!(
        pod.holder("10.0.1.60").as_deref(),
        Some("eni-1n3"),
        "given up earlier: may be another pod's, left alone"
    );
    assert_eq!(
        pod.holder("10.0.1.10").as_deref(),
        Some("eni-1n3"),
        "the ENI's primary is never touched"
    );
    assert!(!pod.ready(), "not ready once stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_skips_addresses_that_are_not_the_vpcs() {
    let pod = Pod::start(world(), true).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    // A node-local bridge network and a tunnel-like address, on a MAC no ENI has.
    pod.net.add_interface("br1", "0e:00:00:00:07:07");
    pod.net.add_address("br1", "192.168.77.5/24");
    pod.net.add_address("br1", "fd00:77::5/64");
    // A VIP outside the VPC on the Multus ENI's own interface, as route tables carry
    // one across Availability Zones.
    pod.net.add_address("net1", "192.168.50.5/32");
    let (code, termination, logs) = pod.run("init").await;
    assert_eq!(code, Some(0), "{termination}\n{logs}");
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));
    assert_eq!(pod.holder("192.168.50.5"), None);
    let skips = logs
        .lines()
        .filter(|l| l.contains("not a VPC address of this node's Multus ENIs; left alone"))
        .count();
    assert_eq!(skips, 3, "one line per skipped address: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_assigns_the_rest_then_fails_naming_the_address_it_refused() {
    let pod = Pod::start(world(), true).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    // An interface carrying the primary ENI's MAC: never ipmgr's to assign to.
    pod.net.add_interface("net2", "0a:00:00:00:00:01");
    pod.net.add_address("net2", "10.0.0.50/24");
    pod.net.add_interface("net3", MAC_N6);
    pod.net.add_address("net3", "100.64.1.7/20");
    let (code, termination, logs) = pod.run("init").await;
    assert_eq!(code, Some(1), "{logs}");
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));
    assert_eq!(pod.holder("100.64.1.7").as_deref(), Some("eni-1n6"));
    assert_eq!(pod.holder("10.0.0.50"), None);
    assert_eq!(termination.lines().count(), 1, "{termination}");
    assert!(
        termination.contains("1 of the pod's addresses is not assigned: 10.0.0.50 on net2")
            && termination.contains("eni-1primary"),
        "{termination}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refuses_an_eni_without_the_no_manage_tag() {
    let mut w = world();
    w.enis[1].tags.clear();
    let pod = Pod::start(w, true).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    let (code, termination, _) = pod.run("init").await;
    assert_eq!(code, Some(1));
    assert!(
        termination.contains("eni-1n3")
            && termination.contains("node.k8s.amazonaws.com/no_manage=true"),
        "{termination}"
    );
    assert_eq!(pod.holder("10.0.1.50"), None);

    let mut lax = pod.ipmgr("init");
    lax.env("IPMGR_REQUIRE_NO_MANAGE_TAG", "false");
    let out = output(lax).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_manages_only_the_interfaces_it_is_given() {
    let pod = Pod::start(world(), true).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    pod.net.add_interface("net2", MAC_N6);
    pod.net.add_address("net2", "100.64.1.7/20");
    let mut cmd = pod.ipmgr("init");
    cmd.env("IPMGR_INTERFACES", "net1");
    let out = output(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));
    assert_eq!(pod.holder("100.64.1.7"), None, "net2 is not the manager's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_keeps_the_real_cause_when_its_deadline_cuts_a_pass() {
    let pod = Pod::start(world(), true).await;
    // An EC2 endpoint that accepts connections and never answers.
    let (silent, _) = FakeImds::black_hole(SocketAddr::new(pod.net.host_ip.into(), 0))
        .await
        .unwrap();
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    let mut cmd = pod.ipmgr("init");
    cmd.env("AWS_ENDPOINT_URL_EC2", format!("http://{silent}"))
        .env("IPMGR_DEADLINE_SECONDS", "3");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    let termination = pod.termination();
    assert!(
        termination.contains("addresses not assigned within 3s")
            && termination.contains("DescribeNetworkInterfaces had no answer from EC2"),
        "{termination}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_retries_a_failed_pass_until_it_succeeds() {
    let pod = Pod::start(world(), true).await;
    // A role without the permission yet (IAM still propagating): a permanent error
    // for EC2, and still worth retrying.
    pod.ec2.set_faults(Faults {
        deny: ["AssignPrivateIpAddresses".into()].into(),
        ..Faults::default()
    });
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    let mut child = pod.sidecar(&[]);
    let denied = || {
        pod.ec2
            .log()
            .iter()
            .filter(|e| e.code.as_deref() == Some("UnauthorizedOperation"))
            .count()
    };
    let until = Instant::now() + Duration::from_secs(20);
    while denied() < 3 {
        assert!(Instant::now() < until, "no retries: {:?}", pod.ec2.log());
        assert!(child.try_wait().unwrap().is_none(), "sidecar exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!pod.ready(), "not ready while the address is unassigned");
    // The role is fixed: the next retry assigns, with no address event.
    pod.ec2.set_faults(Faults::default());
    pod.wait_ready(&mut child).await;
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));

    // A pass after an address event fails too (throttled past the SDK's retries) and
    // is retried until it succeeds.
    pod.ec2.set_faults(Faults {
        throttle_fraction: 1.0,
        ..Faults::default()
    });
    pod.net.add_address("net1", "10.0.1.51/24");
    let until = Instant::now() + Duration::from_secs(20);
    while pod.ready() {
        assert!(Instant::now() < until, "the failed pass did not show");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pod.ec2.set_faults(Faults::default());
    pod.wait_ready(&mut child).await;
    assert_eq!(pod.holder("10.0.1.51").as_deref(), Some("eni-1n3"));
    let (status, _) = stop(&mut child).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_periodic_pass_repairs_but_never_steals() {
    let pod = Pod::start(world(), true).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    pod.net.add_address("net1", "10.0.1.99/24");
    let mut child = pod.sidecar(&[("IPMGR_RESYNC_SECONDS", "1")]);
    pod.wait_ready(&mut child).await;
    assert_eq!(
        pod.holder("10.0.1.99").as_deref(),
        Some("eni-1n3"),
        "taken at start"
    );

    // The peer on the other node takes the floating IP; this pod keeps a stale copy.
    // And someone unassigns 10.0.1.50 behind the pod's back.
    pod.ec2
        .move_address("10.0.1.99".parse().unwrap(), "eni-2n3");
    pod.ec2.remove_address("10.0.1.50".parse().unwrap());
    pod.wait_holder("10.0.1.50", Some("eni-1n3")).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        pod.holder("10.0.1.99").as_deref(),
        Some("eni-2n3"),
        "periodic passes never take it back"
    );
    assert!(
        pod.ready(),
        "a floating IP left with its new owner is no failure"
    );

    // The pod takes the floating IP again (its HA software re-adds it): it moves.
    pod.net.del_address("net1", "10.0.1.99/24");
    pod.net.add_address("net1", "10.0.1.99/24");
    pod.wait_holder("10.0.1.99", Some("eni-1n3")).await;
    let (status, _) = stop(&mut child).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_abandons_a_pass_in_flight_and_releases_at_once() {
    let pod = Pod::start(world(), true).await;
    // The floating IP's remap takes a minute to show: the pass waits in its confirm loop.
    pod.ec2.set_faults(Faults {
        remap_delay_ms: 60_000,
        ..Faults::default()
    });
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    pod.net.add_address("net1", "10.0.1.99/24");
    let mut child = pod.sidecar(&[]);
    pod.wait_holder("10.0.1.50", Some("eni-1n3")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pod.ready(), "still confirming the remap");
    let (status, took) = stop(&mut child).await;
    assert!(status.success(), "{status:?}");
    // Well inside kubelet's default 30 s grace period: the release timeout is 5 s.
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
    assert_eq!(pod.holder("10.0.1.50"), None, "released");
    let releases = pod
        .ec2
        .log()
        .iter()
        .filter(|e| e.action == "UnassignPrivateIpAddresses")
        .count();
    assert_eq!(releases, 1);
}

/// ipmgr as IRSA runs it: the role and the projected token in the environment, the
/// SDK trading the token at STS (the fake, on the same endpoint) for credentials.
fn with_irsa(pod: &Pod, token: &str) -> Command {
    let token_file = pod.dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    std::os::unix::fs::chown(&token_file, Some(POD_UID), Some(POD_UID)).unwrap();
    let mut cmd = pod.ipmgr("init");
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env(
            "AWS_ROLE_ARN",
            "arn:aws:iam::111122223333:role/ipmgmt-ipmgr",
        )
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
        .env("AWS_ENDPOINT_URL_STS", format!("http://{}", pod.ec2_addr))
        .env("NODE_NAME", "ip-10-0-0-10.us-west-2.compute.internal");
    cmd
}

#[tokio::test]
async fn init_assigns_with_irsa_credentials_from_sts() {
    let pod = Pod::start(world(), false).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    let out = output(with_irsa(&pod, "eyJ.a-valid-token.sig")).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));
    assert!(
        pod.ec2
            .log()
            .iter()
            .any(|e| e.action == "AssumeRoleWithWebIdentity" && e.status == 200)
    );
}

#[tokio::test]
async fn an_expired_web_identity_token_is_one_line_and_a_failure() {
    let pod = Pod::start(world(), false).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    let started = std::time::Instant::now();
    let out = output(with_irsa(&pod, "expired")).await;
    let termination = std::fs::read_to_string(pod.dir.join("termination-log")).unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{termination}\n{logs}");
    assert_eq!(termination.lines().count(), 1, "{termination}");
    assert!(
        termination.contains("ExpiredTokenException")
            && termination.contains("web identity token as expired")
            && !termination.contains("found no AWS credentials"),
        "{termination}\n{logs}"
    );
    assert_eq!(
        termination.matches("Token expired").count(),
        1,
        "said once: {termination}"
    );
    assert!(started.elapsed() < Duration::from_secs(25), "no hang");
    assert_eq!(pod.holder("10.0.1.50"), None);
}
