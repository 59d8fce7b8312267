//! The real ipmgr binary inside a pod's network namespace, against the fake EC2 and
//! IMDS listening on the host end of the pod's eth0. Needs root.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ipmgmt_tests::fake_ec2::{FakeEc2, Faults, World};
use ipmgmt_tests::fake_imds::FakeImds;
use ipmgmt_tests::netns::PodNet;
use ipmgmt_tests::scenario::{MAC_N3, MAC_N6, identity, world};

fn ipmgr_bin() -> PathBuf {
    // target/debug/deps/<this test> → target/debug/ipmgr, built by `cargo test --workspace`.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join("ipmgr");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace`",
        bin.display()
    );
    bin
}

struct Pod {
    net: PodNet,
    ec2: FakeEc2,
    ec2_addr: SocketAddr,
    imds_addr: SocketAddr,
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
        let imds_addr = match imds_reachable {
            true => FakeImds::new(identity()).serve(imds_at).await.unwrap(),
            false => FakeImds::black_hole(imds_at).await.unwrap(),
        };
        let dir = std::env::temp_dir().join(format!("ipmgmt-{}", net.ns));
        std::fs::create_dir_all(&dir).unwrap();
        Pod {
            net,
            ec2,
            ec2_addr,
            imds_addr,
            dir,
        }
    }

    fn ipmgr(&self, mode: &str) -> Command {
        let mut cmd = self.net.command(&ipmgr_bin());
        cmd.arg(mode)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("AWS_ENDPOINT_URL_EC2", format!("http://{}", self.ec2_addr))
            .env(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://{}", self.imds_addr),
            )
            .env("AWS_REGION", "us-west-2")
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("IPMGR_TERMINATION_LOG", self.dir.join("termination-log"))
            .env("IPMGR_READY_FILE", self.dir.join("ready"))
            .env("IPMGR_ADDRESS_WAIT_SECONDS", "2")
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
            .any(|e| e.action == "DescribeInstances")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_follows_a_floating_ip_and_releases_only_what_it_holds() {
    let pod = Pod::start(world(), true).await;
    pod.net.add_interface("net1", MAC_N3);
    pod.net.add_address("net1", "10.0.1.50/24");
    let mut child = pod
        .ipmgr("sidecar")
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let ready = pod.dir.join("ready");
    let until = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < until, "sidecar never became ready");
        assert!(child.try_wait().unwrap().is_none(), "sidecar exited early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pod.holder("10.0.1.50").as_deref(), Some("eni-1n3"));

    // A floating IP moves in from the other node.
    pod.net.add_address("net1", "10.0.1.99/24");
    pod.wait_holder("10.0.1.99", Some("eni-1n3")).await;
    // An address the pod takes and then gives up.
    pod.net.add_address("net1", "10.0.1.60/24");
    pod.wait_holder("10.0.1.60", Some("eni-1n3")).await;
    pod.net.del_address("net1", "10.0.1.60/24");
    tokio::time::sleep(Duration::from_millis(100)).await;

    // `ip netns exec` execs the program, so this pid is ipmgr itself.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "sidecar did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
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
}
