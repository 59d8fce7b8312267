//! Take-over of a floating address: ipmgmt's Lease-elected holder against keepalived
//! (Debian's, unicast VRRP, default timers) with the ipmgmt sidecar following the
//! address keepalived adds (what teams run today), on the same pod namespaces, nodes
//! and fake EC2, one after the other.
//!
//! For a graceful stop of the holder (SIGTERM), a crash (SIGKILL of ipmgr, or of
//! keepalived's processes) and a partition (the holder cut off from the API server;
//! for keepalived, VRRP between the two pods dropped), it reports the time until the
//! peer has the address on its interface and on its ENI, and the share of samples
//! (both pods' interfaces read every few ms for 8 s after the event) in which both
//! pods had it. Needs root.
//!
//!   floating-bench --ipmgr target/release/ipmgr --runs 5

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipmgmt_tests::fake_ec2::FakeEc2;
use ipmgmt_tests::fake_kube::FakeKube;
use ipmgmt_tests::netns::pod_executable;
use ipmgmt_tests::pair::{self, Replica, Sampler};
use ipmgmt_tests::scenario::world;

const VIP: &str = "10.0.1.100";
/// How long after each event the sampler counts split-brain instants.
const WINDOW: Duration = Duration::from_secs(8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Graceful,
    Crash,
    Partition,
}

/// One measurement: the peer's interface and ENI (None: not within the window), and
/// split-brain samples over all samples.
#[derive(Clone, Copy, Debug)]
struct Took {
    interface: Option<Duration>,
    eni: Option<Duration>,
    both: usize,
    samples: usize,
}

struct Pods {
    ec2: FakeEc2,
    a: Replica,
    b: Replica,
}

impl Pods {
    async fn new() -> Pods {
        let ec2 = FakeEc2::new(world());
        let kube = FakeKube::default();
        let (a, b) = pair::replicas(&ec2, &kube, VIP).await;
        Pods { ec2, a, b }
    }

    fn holder(&self) -> Option<bool> {
        match (self.a.has_vip(), self.b.has_vip()) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    }

    /// Waits for exactly one pod with the address, on its ENI; whether it is `a`.
    async fn settled(&self) -> bool {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(a) = self.holder() {
                let pod = if a { &self.a } else { &self.b };
                if self.ec2.holder(VIP.parse().unwrap()).as_deref() == Some(pod.eni) {
                    return a;
                }
            }
            assert!(
                Instant::now() < until,
                "never settled:\n{}\n{}",
                self.a.log(),
                self.b.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// From now: how long until `peer` has the address on its interface and its ENI,
    /// and the split-brain samples over the window.
    async fn measure(&self, peer_is_a: bool) -> Took {
        let sampler = Sampler::start(&self.a.net.ns, &self.b.net.ns, VIP);
        let peer = if peer_is_a { &self.a } else { &self.b };
        let start = Instant::now();
        let (mut interface, mut eni) = (None, None);
        while start.elapsed() < WINDOW {
            if interface.is_none() && peer.has_vip() {
                interface = Some(start.elapsed());
            }
            if eni.is_none() && self.ec2.holder(VIP.parse().unwrap()).as_deref() == Some(peer.eni) {
                eni = Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (both, samples) = sampler.finish();
        Took {
            interface,
            eni,
            both,
            samples,
        }
    }
}

/// ipmgmt: both pods' managers hold the address by the Lease.
async fn ipmgmt(program: &Path, event: Event) -> Took {
    let mut pods = Pods::new().await;
    pods.a.start(program, &[]);
    pods.b.start(program, &[]);
    let a_holds = pods.settled().await;
    // Both contending, the peer waiting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let holder = if a_holds { &mut pods.a } else { &mut pods.b };
    match event {
        Event::Graceful => holder.signal("-TERM"),
        Event::Crash => holder.signal("-KILL"),
        Event::Partition => holder.cut_from_api_server(),
    }
    pods.measure(!a_holds).await
}

/// A keepalived in one pod, and the ipmgmt sidecar that follows what it adds.
struct Keepalived {
    keepalived: Child,
    follower: Child,
}

impl Keepalived {
    fn start(pod: &Replica, program: &Path, own: &str, peer: &str, node: &str) -> Keepalived {
        let conf = pod.dir.join("keepalived.conf");
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id {name}\n}}\n\
                 vrrp_instance vip {{\n  state BACKUP\n  nopreempt\n  interface vrrp0\n  \
                 virtual_router_id 51\n  priority 100\n  advert_int 1\n  unicast_src_ip {own}\n  \
                 unicast_peer {{\n    {peer}\n  }}\n  virtual_ipaddress {{\n    {VIP}/32 dev net1\n  }}\n}}\n",
                name = pod.name
            ),
        )
        .unwrap();
        let dir = &pod.dir;
        let keepalived = Command::new("ip")
            .args(["netns", "exec", &pod.net.ns, "keepalived"])
            .args(["--dont-fork", "--log-console", "--no-syslog", "--vrrp"])
            .arg("-f")
            .arg(&conf)
            .arg("-p")
            .arg(dir.join("keepalived.pid"))
            .arg("-r")
            .arg(dir.join("vrrp.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("keepalived.log")).unwrap())
            .process_group(0)
            .spawn()
            .expect("keepalived runs (apt-get install keepalived)");
        let follower = pod
            .net
            .ipmgr(program, "sidecar", pod.endpoints(), dir)
            .env("NODE_NAME", node)
            .env("IPMGR_RETRY_INITIAL_BACKOFF_MS", "10")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("follower.log")).unwrap())
            .spawn()
            .unwrap();
        Keepalived {
            keepalived,
            follower,
        }
    }

    /// Signals keepalived's parent and its VRRP child.
    fn signal(&self, signal: &str) {
        let group = format!("-{}", self.keepalived.id());
        let _ = Command::new("kill").args([signal, "--", &group]).status();
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.signal("-KILL");
        let _ = self.keepalived.wait();
        let _ = self.follower.kill();
        let _ = self.follower.wait();
    }
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip").args(args).status().unwrap().success();
    assert!(ok, "ip {}", args.join(" "));
}

/// keepalived: unicast VRRP between the two pods over a link of their own.
async fn keepalived(program: &Path, event: Event) -> Took {
    let pods = Pods::new().await;
    let (a_end, b_end) = (
        format!("vrA{}", std::process::id() % 10_000),
        format!("vrB{}", std::process::id() % 10_000),
    );
    ip(&[
        "link", "add", &a_end, "type", "veth", "peer", "name", &b_end,
    ]);
    for (end, pod, address) in [
        (&a_end, &pods.a, "198.19.0.1/30"),
        (&b_end, &pods.b, "198.19.0.2/30"),
    ] {
        ip(&["link", "set", end, "netns", &pod.net.ns]);
        ip(&["-n", &pod.net.ns, "link", "set", end, "name", "vrrp0"]);
        ip(&["-n", &pod.net.ns, "addr", "add", address, "dev", "vrrp0"]);
        ip(&["-n", &pod.net.ns, "link", "set", "vrrp0", "up"]);
    }
    let ka = Keepalived::start(
        &pods.a,
        program,
        "198.19.0.1",
        "198.19.0.2",
        "ip-10-0-0-10.us-west-2.compute.internal",
    );
    let kb = Keepalived::start(
        &pods.b,
        program,
        "198.19.0.2",
        "198.19.0.1",
        "ip-10-0-0-20.us-west-2.compute.internal",
    );
    let a_holds = pods.settled().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (holder, holder_pod) = if a_holds {
        (&ka, &pods.a)
    } else {
        (&kb, &pods.b)
    };
    match event {
        Event::Graceful => holder.signal("-TERM"),
        Event::Crash => holder.signal("-KILL"),
        Event::Partition => {
            for chain in ["INPUT", "OUTPUT"] {
                let ok = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &holder_pod.net.ns,
                        "iptables",
                        "-A",
                        chain,
                        "-p",
                        "vrrp",
                        "-j",
                        "DROP",
                    ])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "iptables");
            }
        }
    }
    let took = pods.measure(!a_holds).await;
    drop((ka, kb));
    took
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".into(),
        |d| format!("{:.0}", d.as_secs_f64() * 1000.0),
    )
}

fn median(mut v: Vec<Option<Duration>>) -> Option<Duration> {
    v.sort_by_key(|d| d.unwrap_or(Duration::MAX));
    v.get(v.len() / 2).copied().flatten()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut program, mut runs) = (PathBuf::from("target/release/ipmgr"), 5_usize);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ipmgr" => program = args.next().expect("--ipmgr PATH").into(),
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let program = pod_executable(&program);
    println!(
        "| event | who | peer's interface, ms (median of {runs}) | its ENI, ms | split brain (samples with both) | runs |"
    );
    println!("|---|---|---|---|---|---|");
    for event in [Event::Graceful, Event::Crash, Event::Partition] {
        for who in ["ipmgmt", "keepalived"] {
            let mut all = Vec::new();
            for _ in 0..runs {
                let took = match who {
                    "ipmgmt" => ipmgmt(&program, event).await,
                    _ => keepalived(&program, event).await,
                };
                eprintln!("{event:?} {who}: {took:?}");
                all.push(took);
            }
            let iface = median(all.iter().map(|t| t.interface).collect());
            let eni = median(all.iter().map(|t| t.eni).collect());
            let (both, samples): (usize, usize) = all
                .iter()
                .fold((0, 0), |(b, s), t| (b + t.both, s + t.samples));
            let split = format!(
                "{:.1}% ({both} of {samples})",
                100.0 * both as f64 / samples.max(1) as f64
            );
            println!(
                "| {event:?} | {who} | {} | {} | {split} | {} |",
                ms(iface),
                ms(eni),
                all.len()
            );
        }
    }
}
