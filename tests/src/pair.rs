//! Two replicas of a workload with a floating address, each in its own pod network
//! namespace on its own node, against the fake API server (for their Lease) and the
//! fake EC2: what `tests/tests/floating_pair.rs` and the floating-address benchmark
//! (`floating-bench`) run. A sampler reads both pods' interfaces every few
//! milliseconds and counts the instants at which both had the address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::fake_ec2::FakeEc2;
use crate::fake_imds::FakeImds;
use crate::fake_kube::FakeKube;
use crate::netns::{Endpoints, PodNet, pod_dir};

/// Where a replica's manager serves its metrics, on the pod's eth0.
pub const METRICS_PORT: u16 = 9090;
/// Node i-0002's Multus ENI in subnet-b (`scenario::world`'s eni-2n3).
pub const MAC_2N3: &str = "0a:00:00:00:11:01";

/// The two replicas of `scenario::world`'s nodes: `upf-0` on i-0001 (eni-1n3,
/// `10.0.1.50/24` on net1) and `upf-1` on i-0002 (eni-2n3, `10.0.1.60/24`), both in
/// subnet-b, with the floating address `vip`.
pub async fn replicas(ec2: &FakeEc2, kube: &FakeKube, vip: &'static str) -> (Replica, Replica) {
    let node = |n: u8| format!("ip-10-0-0-{n}0.us-west-2.compute.internal");
    let a = Replica::new(
        "upf-0",
        vip,
        ec2,
        kube,
        (crate::scenario::MAC_N3, "10.0.1.50/24", node(1), "eni-1n3"),
    )
    .await;
    let b = Replica::new(
        "upf-1",
        vip,
        ec2,
        kube,
        (MAC_2N3, "10.0.1.60/24", node(2), "eni-2n3"),
    )
    .await;
    (a, b)
}

/// A pod's kubeconfig for `server`, written into `dir`.
pub fn kubeconfig(dir: &Path, server: SocketAddr) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{server}\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
             current-context: c\n"
        ),
    )
    .unwrap();
    path
}

/// One replica: its pod, its node, and its manager once started.
pub struct Replica {
    pub name: &'static str,
    pub vip: &'static str,
    pub net: PodNet,
    ec2: SocketAddr,
    imds: SocketAddr,
    kube: SocketAddr,
    pub dir: PathBuf,
    node: String,
    pub eni: &'static str,
    pub child: Option<Child>,
}

impl Replica {
    pub async fn new(
        name: &'static str,
        vip: &'static str,
        ec2: &FakeEc2,
        kube: &FakeKube,
        (mac, address, node, eni): (&str, &str, String, &'static str),
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

    /// The manager as the webhook runs it for a pod with floating addresses.
    pub fn start(&mut self, program: &Path, env: &[(&str, &str)]) {
        let at = self.endpoints();
        let cmd = self.net.ipmgr_with_net_admin(program, at, &self.dir);
        self.spawn(cmd, &[&[("IPMGR_FLOATING_IPS", self.vip)], env].concat());
    }

    /// The manager as the webhook runs it for a pod without floating addresses (uid
    /// 65532, no capabilities): a pool's Elastic IP for the pod's own address.
    pub fn start_without_floating(&mut self, program: &Path, env: &[(&str, &str)]) {
        let at = self.endpoints();
        let cmd = self.net.ipmgr(program, "sidecar", at, &self.dir);
        self.spawn(cmd, env);
    }

    fn spawn(&mut self, mut cmd: Command, env: &[(&str, &str)]) {
        let kubeconfig = kubeconfig(&self.dir, self.kube);
        cmd.env("KUBECONFIG", &kubeconfig)
            .env("NODE_NAME", &self.node)
            .env("POD_NAME", self.name)
            .env("POD_NAMESPACE", "upf")
            .env("POD_SERVICE_ACCOUNT", "upf")
            .env("IPMGR_RETRY_INITIAL_BACKOFF_MS", "10")
            .env("IPMGR_METRICS_LISTEN", format!("0.0.0.0:{METRICS_PORT}"))
            .env("IPMGR_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log")).unwrap());
        self.child = Some(cmd.spawn().unwrap());
    }

    /// The manager's `/metrics`, served on the pod's eth0.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let pod_ip = std::net::Ipv4Addr::from(u32::from(self.net.host_ip) + 1);
        let mut conn = std::net::TcpStream::connect((pod_ip, METRICS_PORT)).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn signal(&mut self, signal: &str) {
        let child = self.child.as_ref().expect("started");
        // `ip netns exec` execs setpriv, which execs ipmgr: the pid is the manager's.
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self) -> Option<i32> {
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

    /// The pod's endpoints for the fake EC2 and IMDS.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            ec2: self.ec2,
            imds: self.imds,
        }
    }

    /// Whether the floating address is on the pod's interfaces now.
    pub fn has_vip(&self) -> bool {
        self.net.has_address(self.vip.parse().unwrap())
    }

    /// Cuts the pod off from the API server, not from EC2: packets to it are dropped,
    /// so open connections hang rather than close.
    pub fn cut_from_api_server(&self) {
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
pub struct Sampler {
    stop: Arc<AtomicBool>,
    both: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    task: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(a: &str, b: &str, vip: &'static str) -> Sampler {
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
    pub fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.take().unwrap().join().unwrap();
        (
            self.both.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}
