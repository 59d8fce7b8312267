//! Pods as network namespaces. Each pod namespace gets `eth0`, a veth to the host
//! namespace where the fakes listen, and secondary interfaces that are macvlans on a
//! host-side veth. This kernel has no ipvlan: a macvlan given the ENI's MAC stands in
//! for an ipvlan slave, which shares its master's (the ENI's) MAC.
//!
//! Needs root. Setup shells out to iproute2; the code under test does not.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct PodNet {
    pub ns: String,
    /// The host end of `eth0`; the fakes listen here.
    pub host_ip: Ipv4Addr,
    host_veth: String,
    parent: String,
    n: u32,
    macvlans: AtomicU32,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 `ip` runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PodNet {
    pub fn create() -> PodNet {
        assert!(
            is_root(),
            "network-namespace tests need root (CI runs them as root): run the test command as root"
        );
        // 198.18.0.0/15 (RFC 2544 benchmarking): one /30 per pod, only on these veths;
        // 198.18.1.0/24 is left to the whole-path pods (tests/python/cluster/vpc.py).
        // A /30 another process's pods hold (a benchmark beside the tests) is skipped:
        // two veths with one prefix would route one pod's traffic to the other.
        let (n, base) = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            assert!(n < 1 << 15, "too many pod namespaces in one process");
            let slot = if n < 64 { n } else { n + 64 };
            let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 4 * slot;
            let prefix = format!("{}/30", Ipv4Addr::from(base));
            let held = Command::new("ip")
                .args(["-o", "-4", "addr", "show", "to", &prefix])
                .output()
                .expect("ip runs");
            if held.stdout.is_empty() {
                break (n, base);
            }
        };
        let tag = format!("{}x{n}", std::process::id() % 10_000);
        let ns = format!("ipmgmt-pod-{tag}");
        let (host_veth, pod_veth) = (format!("ipmh{tag}"), format!("ipmp{tag}"));
        let (parent, parent_peer) = (format!("ipmx{tag}"), format!("ipmy{tag}"));
        let (host_ip, pod_ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "link", "add", &host_veth, "type", "veth", "peer", "name", &pod_veth,
        ]);
        ip(&["link", "set", &pod_veth, "netns", &ns]);
        ip(&["-n", &ns, "link", "set", &pod_veth, "name", "eth0"]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_veth]);
        ip(&["link", "set", &host_veth, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{pod_ip}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&[
            "link",
            "add",
            &parent,
            "type",
            "veth",
            "peer",
            "name",
            &parent_peer,
        ]);
        ip(&["link", "set", &parent, "up"]);
        ip(&["link", "set", &parent_peer, "up"]);
        let pod = PodNet {
            ns,
            host_ip,
            host_veth,
            parent,
            n,
            macvlans: AtomicU32::new(0),
        };
        pod.wait_carrier();
        pod
    }

    /// A new veth takes a moment to get carrier; a SYN sent before that is dropped and
    /// retried only after a second. Pods start with their network settled.
    fn wait_carrier(&self) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let host =
                std::fs::read_to_string(format!("/sys/class/net/{}/operstate", self.host_veth))
                    .unwrap_or_default();
            let pod = Command::new("ip")
                .args(["-n", &self.ns, "-o", "link", "show", "eth0"])
                .output();
            let pod_up = pod.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("state UP"));
            if host.trim() == "up" && pod_up {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "{} never got carrier",
                self.host_veth
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// A secondary interface `name` with `mac`, up, in the pod.
    pub fn add_interface(&self, name: &str, mac: &str) {
        let tmp = format!(
            "ipmv{}x{}",
            self.n,
            self.macvlans.fetch_add(1, Ordering::Relaxed)
        );
        ip(&[
            "link",
            "add",
            "link",
            &self.parent,
            "name",
            &tmp,
            "address",
            mac,
            "type",
            "macvlan",
            "mode",
            "bridge",
        ]);
        ip(&["link", "set", &tmp, "netns", &self.ns]);
        ip(&["-n", &self.ns, "link", "set", &tmp, "name", name]);
        ip(&["-n", &self.ns, "link", "set", name, "up"]);
    }

    pub fn add_address(&self, iface: &str, cidr: &str) {
        let mut args = vec!["-n", &self.ns, "addr", "add", cidr, "dev", iface];
        if cidr.contains(':') {
            args.push("nodad");
        }
        ip(&args);
    }

    pub fn del_address(&self, iface: &str, cidr: &str) {
        ip(&["-n", &self.ns, "addr", "del", cidr, "dev", iface]);
    }

    /// `program` run inside the pod's network namespace as the injected container's
    /// securityContext runs it: uid and gid 65532, no supplementary groups, every
    /// capability dropped, no new privileges.
    pub fn command(&self, program: &std::path::Path) -> Command {
        self.command_as(program, POD_UID, "-all")
    }

    /// `program` run as the webhook runs the manager of a pod with floating addresses:
    /// uid and gid 0 with CAP_NET_ADMIN alone (a container runtime gives root exactly
    /// its bounding set), no new privileges.
    pub fn command_with_net_admin(&self, program: &std::path::Path) -> Command {
        self.command_as(program, 0, "-all,+net_admin")
    }

    fn command_as(&self, program: &std::path::Path, uid: u32, bounding: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--inh-caps=-all", "--ambient-caps=-all"])
            .arg(format!("--bounding-set={bounding}"))
            .args(["--no-new-privs", "--"])
            .arg(program);
        cmd
    }

    /// Whether `ip` is on any interface of the pod.
    pub fn has_address(&self, ip: std::net::IpAddr) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.ns, "-o", "addr", "show"])
            .output()
            .expect("ip runs");
        let want = ip.to_string();
        String::from_utf8_lossy(&out.stdout).lines().any(|line| {
            let mut words = line.split_whitespace();
            words.any(|w| w == "inet" || w == "inet6")
                && words
                    .next()
                    .and_then(|cidr| cidr.split('/').next())
                    .is_some_and(|a| a == want)
        })
    }
}

/// Where ipmgr finds AWS from inside a pod: the fakes on the host end of `eth0`.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    pub ec2: std::net::SocketAddr,
    pub imds: std::net::SocketAddr,
}

impl PodNet {
    /// `ipmgr MODE` in this pod as the injected container runs it (`command`), with
    /// only the environment the pod would give it: the region, the fake endpoints,
    /// test credentials, and its files (termination log, ready file) in `dir`. The
    /// one launcher of the namespace tests and the benchmark; callers add settings
    /// and stdio.
    pub fn ipmgr(
        &self,
        program: &std::path::Path,
        mode: &str,
        at: Endpoints,
        dir: &std::path::Path,
    ) -> Command {
        Self::ipmgr_env(self.command(program), mode, at, dir)
    }

    /// `ipmgr sidecar` as the manager of a pod with floating addresses runs
    /// (`command_with_net_admin`), with the same environment as `ipmgr`.
    pub fn ipmgr_with_net_admin(
        &self,
        program: &std::path::Path,
        at: Endpoints,
        dir: &std::path::Path,
    ) -> Command {
        Self::ipmgr_env(self.command_with_net_admin(program), "sidecar", at, dir)
    }

    fn ipmgr_env(mut cmd: Command, mode: &str, at: Endpoints, dir: &std::path::Path) -> Command {
        cmd.arg(mode)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir)
            .env("AWS_ENDPOINT_URL_EC2", format!("http://{}", at.ec2))
            .env(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://{}", at.imds),
            )
            .env("AWS_REGION", "us-west-2")
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("IPMGR_TERMINATION_LOG", dir.join("termination-log"))
            .env("IPMGR_READY_FILE", dir.join("ready"));
        cmd
    }
}

/// The user the webhook's injected container runs as.
pub const POD_UID: u32 = 65532;

/// The workspace's ipmgr as a test in `target/*/deps` finds it (built by `cargo test
/// --workspace`), copied once per test process where the pod's user can execute it.
pub fn ipmgr_for_tests() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let target = exe.parent().and_then(|d| d.parent()).unwrap();
        pod_executable(&crate::scenario::ipmgr_beside(target))
    })
    .clone()
}

/// A copy of `program` that the pod's user can execute: the checkout may sit below a
/// directory only root may enter (a CI clone under /root), as an image never does.
/// One copy per program is kept, replaced whole by each caller.
pub fn pod_executable(program: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join("ipmgmt-bin");
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let name = program.file_name().expect("a program path names a file");
    let copy = dir.join(name);
    // Unique per caller, so that two tests of one process never share a partial copy.
    static COPIES: AtomicU32 = AtomicU32::new(0);
    let partial = dir.join(format!(
        ".{}.{}.{}.partial",
        name.to_string_lossy(),
        std::process::id(),
        COPIES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::copy(program, &partial).expect("copy the program");
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&partial, &copy).expect("rename the copy");
    copy
}

/// A directory the pod's user can write (its termination log, its ready file).
pub fn pod_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::os::unix::fs::chown(&dir, Some(POD_UID), Some(POD_UID)).expect("chown the pod's dir");
    dir
}

impl Drop for PodNet {
    fn drop(&mut self) {
        for args in [
            vec!["netns", "del", self.ns.as_str()],
            vec!["link", "del", self.host_veth.as_str()],
            vec!["link", "del", self.parent.as_str()],
        ] {
            let _ = Command::new("ip").args(&args).output();
        }
    }
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}
