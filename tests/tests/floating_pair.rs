//! Two replicas of a workload with a floating address, each the real ipmgr binary in
//! its own pod network namespace on its own node, as the webhook runs it for such a
//! pod (uid 0 with CAP_NET_ADMIN alone), contending for the address's Lease in the fake
//! API server and moving it in the fake EC2. A sampler looks at both pods' interfaces
//! every few milliseconds for the whole scene: at no instant may both have the address.
//! Needs root.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipmgmt_tests::fake_ec2::iam::Policy;
use ipmgmt_tests::fake_ec2::{ElasticIp, FakeEc2, Faults, Route, RouteTable, World};
use ipmgmt_tests::fake_imds::FakeImds;
use ipmgmt_tests::fake_kube::{FakeKube, Kind};
use ipmgmt_tests::netns::{Endpoints, PodNet, pod_dir, pod_executable};
use ipmgmt_tests::scenario::{MAC_N3, world};

const VIP: &str = "10.0.1.100";
const METRICS_PORT: u16 = 9090;
const LEASE: &str = "ipmgmt-vip-";
/// Node i-0002's Multus ENI in subnet-b (`scenario::world`'s eni-2n3).
const MAC_2N3: &str = "0a:00:00:00:11:01";

fn ipmgr_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join("ipmgr");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace`",
        bin.display()
    );
    pod_executable(&bin)
}

/// One replica: its pod, its node, and its manager once started.
struct Replica {
    name: &'static str,
    vip: &'static str,
    net: PodNet,
    ec2: SocketAddr,
    imds: SocketAddr,
    kube: SocketAddr,
    dir: PathBuf,
    node: &'static str,
    eni: &'static str,
    child: Option<Child>,
}

impl Replica {
    async fn new(
        name: &'static str,
        vip: &'static str,
        ec2: &FakeEc2,
        kube: &FakeKube,
        (mac, address, node, eni): (&str, &str, &'static str, &'static str),
    ) -> Replica {
        let net = PodNet::create();
        let host = net.host_ip.into();
        let ec2_at = ec2.serve(SocketAddr::new(host, 0)).await.unwrap();
        let kube_at = kube.serve(SocketAddr::new(host, 0)).await.unwrap();
        // IMDS never answers from these pods: the manager finds its node by name.
        let (imds, _) = FakeImds::black_hole(SocketAddr::new(host, 0))
            .await
            .unwrap();
        net.add_interface("net1", mac);
        net.add_address("net1", address);
        let dir = pod_dir(&format!("ipmgmt-{}", net.ns));
        // Writable by the manager's uid 0 without CAP_DAC_OVERRIDE, as an emptyDir is.
        let mut perms = std::fs::metadata(&dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
        std::fs::set_permissions(&dir, perms).unwrap();
        Replica {
            name,
            vip,
            net,
            ec2: ec2_at,
            imds,
            kube: kube_at,
            dir,
            node,
            eni,
            child: None,
        }
    }

    fn start(&mut self, env: &[(&str, &str)]) {
        let kubeconfig = self.dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{}\n\
                 users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
                 current-context: c\n",
                self.kube
            ),
        )
        .unwrap();
        let at = Endpoints {
            ec2: self.ec2,
            imds: self.imds,
        };
        let mut cmd = self.net.ipmgr_with_net_admin(&ipmgr_bin(), at, &self.dir);
        cmd.env("KUBECONFIG", &kubeconfig)
            .env("NODE_NAME", self.node)
            .env("POD_NAME", self.name)
            .env("POD_NAMESPACE", "upf")
            .env("POD_SERVICE_ACCOUNT", "upf")
            .env("IPMGR_FLOATING_IPS", self.vip)
            .env("IPMGR_RETRY_INITIAL_BACKOFF_MS", "10")
            .env("IPMGR_METRICS_LISTEN", format!("0.0.0.0:{METRICS_PORT}"))
            .env("IPMGR_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log")).unwrap());
        self.child = Some(cmd.spawn().unwrap());
    }

    /// The manager's `/metrics`, served on the pod's eth0.
    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let pod_ip = std::net::Ipv4Addr::from(u32::from(self.net.host_ip) + 1);
        let mut conn = std::net::TcpStream::connect((pod_ip, METRICS_PORT)).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn signal(&mut self, signal: &str) {
        let child = self.child.as_ref().expect("started");
        // `ip netns exec` execs setpriv, which execs ipmgr: the pid is the manager's.
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> Option<i32> {
        let child = self.child.as_mut().expect("started");
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < until,
                "{} did not exit: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Cuts the pod off from the API server, not from EC2: packets to it are dropped,
    /// so open connections hang rather than close.
    fn cut_from_api_server(&self) {
        let status = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.net.ns,
                "iptables",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
            ])
            .args([
                "-d",
                &self.kube.ip().to_string(),
                "--dport",
                &self.kube.port().to_string(),
            ])
            .args(["-j", "DROP"])
            .status()
            .unwrap();
        assert!(status.success(), "iptables in the pod's namespace");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Samples both pods' interfaces until stopped; counts the instants at which both had
/// the address, and remembers which pod had it last.
struct Sampler {
    stop: Arc<AtomicBool>,
    both: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    task: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(a: &str, b: &str, vip: &'static str) -> Sampler {
        let stop: Arc<AtomicBool> = Arc::default();
        let (both, samples): (Arc<AtomicUsize>, Arc<AtomicUsize>) = Default::default();
        let (s, t, n) = (Arc::clone(&stop), Arc::clone(&both), Arc::clone(&samples));
        let (a, b) = (a.to_owned(), b.to_owned());
        let task = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let has = |ns: &str| {
                    let out = Command::new("ip")
                        .args(["-n", ns, "-o", "addr", "show", "to", vip])
                        .output()
                        .unwrap();
                    !out.stdout.is_empty()
                };
                if has(&a) && has(&b) {
                    t.fetch_add(1, Ordering::Relaxed);
                }
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
        Sampler {
            stop,
            both,
            samples,
            task: Some(task),
        }
    }

    /// How many samples saw both pods with the address, and how many were taken.
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.take().unwrap().join().unwrap();
        (
            self.both.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

struct Scene {
    vip: &'static str,
    /// Routed through route tables, never an ENI's address.
    routed: bool,
    ec2: FakeEc2,
    kube: FakeKube,
    a: Replica,
    b: Replica,
}

impl Scene {
    fn vip(&self) -> IpAddr {
        self.vip.parse().unwrap()
    }

    async fn start() -> Scene {
        Scene::start_with(world(), VIP, &[]).await
    }

    /// Two replicas with `vip` in `world`, each with `env` besides the defaults.
    async fn start_with(
        world: World,
        vip: &'static str,
        env: &[(&'static str, &'static str)],
    ) -> Scene {
        let ec2 = FakeEc2::new(world);
        // A reassigned address shows on its new ENI after a while, as EC2's remap is
        // asynchronous.
        ec2.set_faults(Faults {
            remap_delay_ms: 200,
            ..Faults::default()
        });
        let kube = FakeKube::default();
        let a = Replica::new(
            "upf-0",
            vip,
            &ec2,
            &kube,
            (
                MAC_N3,
                "10.0.1.50/24",
                "ip-10-0-0-10.us-west-2.compute.internal",
                "eni-1n3",
            ),
        )
        .await;
        let b = Replica::new(
            "upf-1",
            vip,
            &ec2,
            &kube,
            (
                MAC_2N3,
                "10.0.1.60/24",
                "ip-10-0-0-20.us-west-2.compute.internal",
                "eni-2n3",
            ),
        )
        .await;
        let routed = env.iter().any(|(k, _)| *k == "IPMGR_ROUTE_TABLES");
        Scene {
            vip,
            routed,
            ec2,
            kube,
            a,
            b,
        }
    }

    fn on_interface(&self) -> Vec<&'static str> {
        [&self.a, &self.b]
            .into_iter()
            .filter(|r| r.net.has_address(self.vip()))
            .map(|r| r.name)
            .collect()
    }

    fn lease_holder(&self) -> Option<String> {
        let leases = self.kube.list(Kind::Lease);
        let lease = leases.iter().find(|l| {
            l["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(LEASE))
        })?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
    }

    /// Waits until exactly `who` has the address on its interface, its ENI holds it in
    /// EC2 and it holds the Lease; returns how long each took, interface then ENI.
    async fn wait_held_by(&self, who: &Replica, within: Duration) -> (Duration, Duration) {
        let start = Instant::now();
        let mut on_interface = None;
        loop {
            let iface = self.on_interface() == [who.name];
            if iface && on_interface.is_none() {
                on_interface = Some(start.elapsed());
            }
            let eni = self.routed || self.ec2.holder(self.vip()).as_deref() == Some(who.eni);
            if let (Some(i), true, true) = (on_interface, eni, iface) {
                assert_eq!(self.lease_holder().as_deref(), Some(who.name));
                return (i, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "{} does not hold {} after {within:?}: on interfaces {:?}, ENI {:?}, lease {:?}\n{}: {}\n{}: {}",
                who.name,
                self.vip,
                self.on_interface(),
                self.ec2.holder(self.vip()),
                self.lease_holder(),
                self.a.name,
                self.a.log(),
                self.b.name,
                self.b.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The replica holding the address and the other.
    fn holder_and_peer(&mut self) -> (&mut Replica, &mut Replica) {
        if self.a.net.has_address(self.vip()) {
            (&mut self.a, &mut self.b)
        } else {
            (&mut self.b, &mut self.a)
        }
    }
}

/// First start: exactly one holder, with the address on its interface and its ENI;
/// then the holder is stopped (SIGTERM) and the peer holds it within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_and_a_graceful_handover_within_a_second() {
    let mut scene = Scene::start().await;
    let sampler = Sampler::start(&scene.a.net.ns, &scene.b.net.ns, scene.vip);
    scene.a.start(&[]);
    scene.b.start(&[]);
    let until = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let on = scene.on_interface();
        if on.len() == 1 && scene.lease_holder().as_deref() == Some(on[0]) {
            break on[0];
        }
        assert!(
            Instant::now() < until,
            "no holder: {}\n{}",
            scene.a.log(),
            scene.b.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let holder = if first == scene.a.name {
        &scene.a
    } else {
        &scene.b
    };
    scene.wait_held_by(holder, Duration::from_secs(10)).await;

    let (holder, peer) = scene.holder_and_peer();
    let (holder_name, peer_name) = (holder.name, peer.name);
    holder.signal("-TERM");
    assert_eq!(holder.wait_exit(), Some(0), "{}", holder.log());
    let stopped = Instant::now();
    let peer = if peer_name == scene.a.name {
        &scene.a
    } else {
        &scene.b
    };
    let (iface, eni) = scene.wait_held_by(peer, Duration::from_secs(10)).await;
    let handover = stopped.elapsed();
    let (both, samples) = sampler.finish();
    eprintln!(
        "graceful handover {holder_name} -> {peer_name}: interface {iface:?}, ENI {eni:?} after the holder exited"
    );
    assert_eq!(
        both, 0,
        "both pods had {VIP} in {both} of {samples} samples"
    );
    assert!(samples > 50, "{samples} samples");
    // The holder gave the Lease up before it exited: the peer needed no expiry.
    assert!(
        iface < Duration::from_secs(1),
        "on the peer's interface after {iface:?}"
    );
    assert!(handover < Duration::from_secs(5), "{handover:?}");
    let peer = if peer_name == scene.a.name {
        &scene.a
    } else {
        &scene.b
    };
    // The pass that took the address records "on the ENI" once it has confirmed it.
    let until = Instant::now() + Duration::from_secs(5);
    let mut metrics = peer.metrics();
    while !metrics.contains("stage=\"eni\"") && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = peer.metrics();
    }
    for line in [
        "ipmgmt_manager_floating_holding 1",
        "ipmgmt_manager_floating_transitions_total{to=\"holding\"} 1",
        "ipmgmt_manager_floating_takeover_seconds_count{stage=\"interface\"} 1",
        "ipmgmt_manager_floating_takeover_seconds_count{stage=\"eni\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    let holder = if holder_name == scene.a.name {
        &scene.a
    } else {
        &scene.b
    };
    assert!(
        holder
            .log()
            .contains("floating addresses taken off the interfaces"),
        "{}",
        holder.log()
    );
}

/// The holder killed outright: the kernel takes the address off its dead pod's
/// interface by itself, and the peer holds it after the Lease's duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_loses_the_address_before_the_peer_takes_it() {
    let mut scene = Scene::start().await;
    scene.a.start(&[]);
    scene.wait_held_by(&scene.a, Duration::from_secs(10)).await;
    scene.b.start(&[]);
    // The peer is contending (it has created nothing, the Lease is held).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sampler = Sampler::start(&scene.a.net.ns, &scene.b.net.ns, scene.vip);
    scene.a.signal("-KILL");
    scene.a.wait_exit();
    let killed = Instant::now();
    let (iface, eni) = scene.wait_held_by(&scene.b, Duration::from_secs(10)).await;
    let (both, samples) = sampler.finish();
    eprintln!("after SIGKILL: on the peer's interface after {iface:?}, on its ENI after {eni:?}");
    assert_eq!(
        both, 0,
        "both pods had {VIP} in {both} of {samples} samples"
    );
    // Not before the Lease (3 s) could expire, not much after.
    let took = killed.elapsed();
    assert!(iface >= Duration::from_millis(2000), "{iface:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

/// The holder cut off from the API server but not from EC2: it takes the address off
/// its interface at the renew deadline, before the peer may take the Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_the_api_server_lets_go_first() {
    let mut scene = Scene::start().await;
    scene.a.start(&[]);
    scene.wait_held_by(&scene.a, Duration::from_secs(10)).await;
    scene.b.start(&[]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sampler = Sampler::start(&scene.a.net.ns, &scene.b.net.ns, scene.vip);
    scene.a.cut_from_api_server();
    let cut = Instant::now();
    let until = cut + Duration::from_secs(5);
    while scene.a.net.has_address(scene.vip()) {
        assert!(Instant::now() < until, "{}", scene.a.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dropped = cut.elapsed();
    scene.wait_held_by(&scene.b, Duration::from_secs(10)).await;
    let taken = cut.elapsed();
    let (both, samples) = sampler.finish();
    eprintln!("cut off: the holder let go after {dropped:?}, the peer held it after {taken:?}");
    assert_eq!(
        both, 0,
        "both pods had {VIP} in {both} of {samples} samples"
    );
    assert!(dropped < taken);
    // The kernel's lifetime or the holder's renew deadline, whichever came first.
    let log = scene.a.log();
    assert!(
        log.contains("the floating addresses lapse from the interfaces unless")
            && log.contains("could not renew the lease within the renew deadline"),
        "{log}"
    );
    // The cut-off replica is still running, waiting to contend again.
    assert!(
        scene
            .a
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none()
    );
}

/// `scenario::world` with an Elastic IP and two route tables tagged for ipmgmt, and the
/// Multus ENIs' source/destination check as `check`.
fn world_with_eip_and_tables(check: bool) -> World {
    let mut w = world();
    let floating = || vec![("ipmgmt.aws/floating".to_owned(), "true".to_owned())];
    w.addresses = vec![ElasticIp {
        allocation_id: "eipalloc-0a1b2c3d".into(),
        public_ip: "203.0.113.10".parse().unwrap(),
        association: None,
        tags: floating(),
    }];
    w.route_tables = ["rtb-0a1b2c3d", "rtb-0e1f2a3b"]
        .map(|id| RouteTable {
            id: id.into(),
            routes: vec![Route {
                destination: "10.0.0.0/16".parse().unwrap(),
                eni: None,
                gateway: Some("local".into()),
            }],
            tags: floating(),
        })
        .into();
    for eni in &mut w.enis {
        eni.source_dest_check = check;
    }
    w
}

const EIP: [(&str, &str); 1] = [("IPMGR_ELASTIC_IP", "eipalloc-0a1b2c3d")];
/// Outside the VPC's CIDRs: reached through the route tables, across zones.
const ROUTED_VIP: &str = "192.168.100.1";
const TABLES: [(&str, &str); 1] = [("IPMGR_ROUTE_TABLES", "rtb-0a1b2c3d,rtb-0e1f2a3b")];

impl Scene {
    /// The ENI and private address the Elastic IP is associated with.
    fn eip(&self) -> Option<(String, String)> {
        let world = self.ec2.world();
        let a = world.addresses[0].association.clone()?;
        Some((a.eni, a.private_ip.to_string()))
    }

    /// The ENI each route table's route to the routed VIP points at.
    fn routes(&self) -> Vec<Option<String>> {
        let dest: ipnet::IpNet = format!("{ROUTED_VIP}/32").parse().unwrap();
        (self.ec2.world().route_tables.iter())
            .map(|t| {
                (t.routes.iter())
                    .find(|r| r.destination == dest)
                    .and_then(|r| r.eni.clone())
            })
            .collect()
    }

    async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&Scene) -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < within,
                "{what} not within {within:?}: EIP {:?}, routes {:?}\n{}: {}\n{}: {}",
                self.eip(),
                self.routes(),
                self.a.name,
                self.a.log(),
                self.b.name,
                self.b.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }
}

/// The Elastic IP follows the floating address to the peer on a graceful stop, and
/// the stopping pod gives back only an association that is still its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_elastic_ip_follows_the_floating_address() {
    let mut scene = Scene::start_with(world_with_eip_and_tables(true), VIP, &[]).await;
    scene.a.start(&EIP);
    scene.wait_held_by(&scene.a, Duration::from_secs(10)).await;
    let on_a = Some(("eni-1n3".to_owned(), VIP.to_owned()));
    scene
        .wait_until("the EIP on upf-0's address", Duration::from_secs(10), |s| {
            s.eip() == on_a
        })
        .await;
    scene.b.start(&EIP);
    tokio::time::sleep(Duration::from_millis(700)).await;
    scene.a.signal("-TERM");
    scene.a.wait_exit();
    let stopped = Instant::now();
    let on_b = Some(("eni-2n3".to_owned(), VIP.to_owned()));
    scene.wait_held_by(&scene.b, Duration::from_secs(10)).await;
    scene
        .wait_until("the EIP on upf-1's address", Duration::from_secs(10), |s| {
            s.eip() == on_b
        })
        .await;
    eprintln!(
        "graceful: the EIP on the peer's address {:?} after the holder exited",
        stopped.elapsed()
    );
    // And it stays there: nothing the first holder did lands late.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(scene.eip(), on_b);
    assert!(
        scene.b.log().contains("the Elastic IP points at this pod"),
        "{}",
        scene.b.log()
    );
}

/// A VIP outside the VPC's CIDRs across zones: never assigned to an ENI, its route in
/// every table points at the holder's ENI, and at the peer's after the holder is
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_a_vip_outside_the_vpc() {
    let mut scene = Scene::start_with(world_with_eip_and_tables(false), ROUTED_VIP, &TABLES).await;
    scene.a.start(&TABLES);
    scene.wait_held_by(&scene.a, Duration::from_secs(10)).await;
    let to = |eni: &str| vec![Some(eni.to_owned()); 2];
    scene
        .wait_until("routes to upf-0's ENI", Duration::from_secs(10), |s| {
            s.routes() == to("eni-1n3")
        })
        .await;
    scene.b.start(&TABLES);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sampler = Sampler::start(&scene.a.net.ns, &scene.b.net.ns, scene.vip);
    scene.a.signal("-KILL");
    scene.a.wait_exit();
    let killed = Instant::now();
    scene
        .wait_until("routes to upf-1's ENI", Duration::from_secs(10), |s| {
            s.routes() == to("eni-2n3")
        })
        .await;
    let took = killed.elapsed();
    let (both, samples) = sampler.finish();
    eprintln!("after SIGKILL: the routes point at the peer after {took:?}");
    assert_eq!(
        both, 0,
        "both pods had {ROUTED_VIP} in {both} of {samples} samples"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert_eq!(
        scene.ec2.holder(scene.vip()),
        None,
        "a routed VIP is never an ENI's address"
    );
}

/// Bad input: one line that names what to fix, and nothing changed in EC2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_line_and_changes_nothing() {
    // The ENI's source/destination check is on.
    let mut scene = Scene::start_with(world_with_eip_and_tables(true), ROUTED_VIP, &TABLES).await;
    scene.a.start(&TABLES);
    scene.wait_held_by(&scene.a, Duration::from_secs(10)).await;
    scene
        .wait_until("the refusal", Duration::from_secs(10), |s| {
            s.a.log()
                .contains("ENI eni-1n3 has its source/destination check on")
        })
        .await;
    assert!(scene.a.log().contains("no route was changed"));
    assert_eq!(scene.routes(), vec![None, None]);
    drop(scene);

    // A route table that does not exist.
    let missing = [("IPMGR_ROUTE_TABLES", "rtb-0a1b2c3d,rtb-0deadbee")];
    let mut scene = Scene::start_with(world_with_eip_and_tables(false), ROUTED_VIP, &missing).await;
    scene.a.start(&missing);
    scene
        .wait_until("the refusal", Duration::from_secs(10), |s| {
            s.a.log().contains("InvalidRouteTableID.NotFound")
        })
        .await;
    assert!(
        scene.a.log().contains("check ipmgmt.aws/route-tables"),
        "{}",
        scene.a.log()
    );
    assert_eq!(scene.routes(), vec![None, None]);
    drop(scene);

    // The role lacks the floating policy.
    let mut scene = Scene::start_with(world_with_eip_and_tables(true), VIP, &[]).await;
    let base: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/iam-policy.json")).unwrap();
    scene.ec2.set_policy(Some(Policy::parse(&base)));
    scene.a.start(&EIP);
    scene.wait_held_by(&scene.a, Duration::from_secs(10)).await;
    scene
        .wait_until("the refusal", Duration::from_secs(10), |s| {
            s.a.log().contains("UnauthorizedOperation")
        })
        .await;
    let log = scene.a.log();
    let line = (log.lines())
        .find(|l| l.contains("UnauthorizedOperation"))
        .unwrap();
    assert!(
        line.contains("DescribeAddresses eipalloc-0a1b2c3d: UnauthorizedOperation")
            && line.contains("attach deploy/floating-iam-policy.json to it"),
        "{line}"
    );
    // Said once, however often it is retried.
    assert_eq!(log.matches("UnauthorizedOperation").count(), 1, "{log}");
    assert_eq!(scene.eip(), None);
}
