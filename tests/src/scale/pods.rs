//! Pods of a scale run: each a network namespace (`netns::PodNet`) whose interfaces
//! carry its node's Multus ENI MACs, as ipvlan slaves would, running the real `ipmgr`
//! with the settings the webhook injects: NODE_NAME, POD_NAME, POD_NAMESPACE and
//! AWS_REGION, uid 65532, no capabilities. IMDS is a black hole, as from pods on EKS
//! (hop limit 1). The fake EC2 listens on the host end of each pod's `eth0`.
//!
//! Pods start as kubelet starts them: a manager that exits non-zero (init) or never
//! gets ready (sidecar) is restarted after kubelet's back-off, 10 s doubling. At most
//! `concurrency` pods are starting at once.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Semaphore;

use super::world::{eni_id, mac, node_name};
use crate::fake_ec2::FakeEc2;
use crate::fake_imds::FakeImds;
use crate::netns::{Endpoints, PodNet, pod_dir};

/// One address of a pod: the Multus network (1 or 2) and the address.
#[derive(Clone, Debug)]
pub struct Address {
    pub net: usize,
    pub ip: IpAddr,
}

/// A pod to create on `node`.
#[derive(Clone, Debug)]
pub struct Spec {
    pub node: usize,
    pub addresses: Vec<Address>,
}

pub struct Pod {
    pub name: String,
    pub spec: Spec,
    pub net: PodNet,
    pub dir: PathBuf,
    at: Endpoints,
}

/// Namespaces are made with `ip`, a few processes each: this many at a time.
const SETUP_PARALLEL: usize = 8;

impl Pod {
    /// Each address on the interface of its network (`net1`, `net2`).
    pub async fn create(name: String, spec: Spec, fake: &FakeEc2) -> Pod {
        let setup = spec.clone();
        let net = tokio::task::spawn_blocking(move || {
            let net = PodNet::create();
            let mut nets: Vec<usize> = setup.addresses.iter().map(|a| a.net).collect();
            nets.sort();
            nets.dedup();
            for n in nets {
                net.add_interface(&format!("net{n}"), &mac(setup.node, n));
            }
            for a in &setup.addresses {
                let len = if a.ip.is_ipv4() { 16 } else { 64 };
                net.add_address(&format!("net{}", a.net), &format!("{}/{len}", a.ip));
            }
            net
        })
        .await
        .expect("pod namespace setup");
        let host = SocketAddr::new(net.host_ip.into(), 0);
        let ec2 = fake.serve(host).await.expect("the fake EC2 listens");
        let (imds, _) = FakeImds::black_hole(host).await.expect("IMDS black hole");
        let dir = pod_dir(&format!("ipmgr-scale-{}", net.ns));
        Pod {
            name,
            spec,
            net,
            dir,
            at: Endpoints { ec2, imds },
        }
    }

    /// Where each address belongs: its node's ENI of its network.
    pub fn belongs(&self) -> Vec<(IpAddr, String)> {
        (self.spec.addresses.iter())
            .map(|a| (a.ip, eni_id(self.spec.node, a.net)))
            .collect()
    }

    /// ipmgr's log (JSON lines), appended to by every run.
    pub fn log(&self) -> PathBuf {
        self.dir.join("ipmgr.log")
    }

    /// `ipmgr MODE` in the pod, as injected.
    pub fn ipmgr(&self, bin: &Path, mode: &str, env: &[(String, String)]) -> Command {
        let mut cmd = self.net.ipmgr(bin, mode, self.at, &self.dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("the pod's log file");
        cmd.env("NODE_NAME", node_name(self.spec.node))
            .env("POD_NAME", &self.name)
            .env("POD_NAMESPACE", "scale")
            .env("IPMGR_LOG_FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    pub fn ready(&self) -> bool {
        self.dir.join("ready").exists()
    }

    pub fn termination(&self) -> String {
        std::fs::read_to_string(self.dir.join("termination-log")).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates every pod, a few at a time.
pub async fn create_all(specs: Vec<Spec>, fake: &FakeEc2) -> Vec<Pod> {
    futures::stream::iter(specs.into_iter().enumerate())
        .map(|(k, spec)| Pod::create(format!("pod-{k:04}"), spec, fake))
        .buffered(SETUP_PARALLEL)
        .collect()
        .await
}

/// Deletes the pods' namespaces and files, a few at a time.
pub async fn remove_all(pods: Vec<Pod>) {
    futures::stream::iter(pods)
        .map(|pod| tokio::task::spawn_blocking(move || drop(pod)))
        .buffer_unordered(SETUP_PARALLEL)
        .for_each(|_| async {})
        .await;
}

/// How a pod's start went.
#[derive(Debug)]
pub struct Started {
    /// Runs kubelet restarted after a failure.
    pub restarts: u32,
    /// Each failed run's termination message.
    pub failures: Vec<String>,
    /// From the first run's start to the manager's exit (init) or ready file (sidecar).
    pub took: Duration,
    /// The running sidecar.
    pub sidecar: Option<Child>,
}

impl Started {
    pub fn ok(&self) -> bool {
        self.restarts == 0
    }
}

/// The first restart waits this long, doubling after each: kubelet's back-off.
const KUBELET_BACKOFF: Duration = Duration::from_secs(10);
/// A sidecar not ready after this long counts as failed and is restarted.
const SIDECAR_READY_WITHIN: Duration = Duration::from_secs(120);

/// Starts one pod's manager until it succeeds or `give_up` passes; the permit is held
/// while it starts, not while a sidecar runs.
pub async fn start(
    pod: &Pod,
    bin: &Path,
    mode: &str,
    env: &[(String, String)],
    limit: &Semaphore,
    give_up: Instant,
) -> Started {
    let permit = limit.acquire().await.expect("semaphore open");
    let started = Instant::now();
    let mut out = Started {
        restarts: 0,
        failures: Vec::new(),
        took: Duration::ZERO,
        sidecar: None,
    };
    let mut backoff = KUBELET_BACKOFF;
    loop {
        let mut cmd = pod.ipmgr(bin, mode, env);
        let ok = match mode {
            "sidecar" => match run_sidecar(pod, cmd).await {
                Ok(child) => {
                    out.sidecar = Some(child);
                    true
                }
                Err(()) => false,
            },
            _ => tokio::task::spawn_blocking(move || cmd.status())
                .await
                .expect("ipmgr waited for")
                .expect("ipmgr runs")
                .success(),
        };
        if ok {
            out.took = started.elapsed();
            drop(permit);
            return out;
        }
        out.failures.push(pod.termination());
        if Instant::now() + backoff > give_up {
            out.took = started.elapsed();
            return out;
        }
        out.restarts += 1;
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}

/// Spawns the sidecar and waits for its ready file; a sidecar that exits or is not
/// ready in time is killed, as a failed startup probe has kubelet do.
async fn run_sidecar(pod: &Pod, mut cmd: Command) -> Result<Child, ()> {
    let mut child = cmd.spawn().expect("ipmgr sidecar spawns");
    let until = Instant::now() + SIDECAR_READY_WITHIN;
    loop {
        if pod.ready() {
            return Ok(child);
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts every pod with at most `concurrency` starting at once.
pub async fn start_all(
    pods: &[Pod],
    bin: &Path,
    mode: &str,
    env: &[(String, String)],
    concurrency: usize,
    give_up: Duration,
) -> Vec<Started> {
    let limit = Arc::new(Semaphore::new(concurrency));
    let give_up = Instant::now() + give_up;
    let starts = pods
        .iter()
        .map(|pod| start(pod, bin, mode, env, &limit, give_up));
    futures::future::join_all(starts).await
}

/// SIGTERM to each running sidecar, then waits for all; the exit codes.
pub async fn stop_all(started: &mut [Started]) -> Vec<Option<i32>> {
    let mut children: Vec<Child> = started
        .iter_mut()
        .filter_map(|s| s.sidecar.take())
        .collect();
    for child in &children {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    tokio::task::spawn_blocking(move || {
        (children.iter_mut())
            .map(|c| c.wait().ok().and_then(|s| s.code()))
            .collect()
    })
    .await
    .expect("sidecars waited for")
}
