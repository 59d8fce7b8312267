//! The reclaimer at cluster size: `NODES` nodes, `PODS_PER_NODE` live ipmgmt pods on
//! each, every pod's address on its node's Multus ENI, then one pod per node deleted.
//! The real `ipmgmt-reclaimer` binary runs against the fake API server and the fake
//! EC2; this prints the EC2 calls per sweep, the API requests, how long until every
//! stale address is back, and the controller's memory.
//!
//! `reclaimer-bench --binary target/release/ipmgmt-reclaimer [--nodes 50] [--pods-per-node 10]`

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use ipmgmt_tests::fake_ec2::{Eni, FakeEc2, Instance, NO_MANAGE, Subnet, World};
use ipmgmt_tests::fake_kube::{FakeKube, Kind};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    binary: PathBuf,
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    #[arg(long, default_value_t = 10)]
    pods_per_node: usize,
    /// Sweep interval and grace, as the reclaimer reads them.
    #[arg(long, default_value = "1s")]
    interval: String,
    #[arg(long, default_value = "3s")]
    grace: String,
}

fn address(node: usize, slot: usize) -> IpAddr {
    format!("10.1.{}.{}", node, 10 + slot).parse().unwrap()
}

/// A pod as a Deployment's ReplicaSet makes it, with what the apiserver adds: two
/// containers, the injected manager, a projected token, status with conditions,
/// managedFields. The reclaimer keeps only what it reads.
fn pod(node: usize, slot: usize) -> Value {
    let name = format!("app-{node}-{slot}");
    let ip = address(node, slot).to_string();
    let status = json!([
        {"name": "aws-cni", "interface": "eth0", "ips": [format!("10.0.{node}.{}", 100 + slot)], "default": true},
        {"name": "multus-demo/ipvlan-net1", "interface": "net1", "ips": [ip], "mac": "0a:00:00:00:01:01"},
    ]);
    let container = |n: &str| {
        json!({"name": n, "image": "registry.example.com/team/app:1.2.3", "command": ["/app", "--serve"],
               "env": (0..12).map(|i| json!({"name": format!("SETTING_{i}"), "value": "some value of a setting"})).collect::<Vec<_>>(),
               "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
               "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]})
    };
    let conditions: Vec<Value> = ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
        .iter()
        .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": "2026-12-01T00:00:00Z"}))
        .collect();
    json!({
        "metadata": {"name": name, "namespace": "multus-demo",
            "generateName": "app-", "labels": {"app": "cnf", "pod-template-hash": "5d8f7c9b6d"},
            "annotations": {"ipmgmt.aws/mode": "init", "ipmgmt.aws/injected": "container=aws-ip-mgmt,mode=init",
                "k8s.v1.cni.cncf.io/networks": "ipvlan-net1",
                "k8s.v1.cni.cncf.io/network-status": status.to_string()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-5d8f7c9b6d",
                "uid": "3f2b1c4d-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": (0..4).map(|i| json!({"manager": format!("m{i}"), "operation": "Update", "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": {"f:a": {}, "f:b": {}}}, "f:status": {"f:conditions": {}}}})).collect::<Vec<_>>()},
        "spec": {"nodeName": format!("node-{node}"), "containers": [container("app"), container("sidecar")],
            "initContainers": [container("aws-ip-mgmt")],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
            "serviceAccountName": "default", "restartPolicy": "Always", "terminationGracePeriodSeconds": 30},
        "status": {"phase": "Running", "podIP": format!("10.0.{node}.{}", 100 + slot),
            "conditions": conditions,
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "app", "imageID": "sha256:0", "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}}]}
    })
}

fn world(nodes: usize, per_node: usize) -> World {
    let mut w = World {
        subnets: vec![
            Subnet {
                tags: Vec::new(),
                id: "subnet-a".into(),
                ipv4: "10.0.0.0/16".parse().unwrap(),
                ipv6: vec![],
            },
            Subnet {
                tags: Vec::new(),
                id: "subnet-b".into(),
                ipv4: "10.1.0.0/16".parse().unwrap(),
                ipv6: vec![],
            },
        ],
        ..World::default()
    };
    for n in 0..nodes {
        let instance = format!("i-{n:04}");
        w.instances.push(Instance {
            id: instance.clone(),
            instance_type: "m5.4xlarge".into(),
            private_dns_name: format!("ip-10-0-{n}-1.eu-west-1.compute.internal"),
        });
        w.enis.push(Eni {
            delete_on_termination: false,
            source_dest_check: true,
            id: format!("eni-{n}-0"),
            instance_id: Some(instance.clone()),
            device_index: 0,
            mac: format!("0a:00:00:00:{:02x}:00", n),
            subnet_id: "subnet-a".into(),
            ipv4: vec![format!("10.0.{n}.1").parse().unwrap()],
            ipv6: vec![],
            primary_ipv6: None,
            tags: vec![],
        });
        let mut ipv4 = vec![format!("10.1.{n}.1").parse().unwrap()];
        ipv4.extend((0..per_node).map(|s| match address(n, s) {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => unreachable!(),
        }));
        w.enis.push(Eni {
            delete_on_termination: false,
            source_dest_check: true,
            id: format!("eni-{n}-1"),
            instance_id: Some(instance),
            device_index: 1,
            mac: format!("0a:00:00:00:{:02x}:01", n),
            subnet_id: "subnet-b".into(),
            ipv4,
            ipv6: vec![],
            primary_ipv6: None,
            tags: vec![(NO_MANAGE.0.into(), NO_MANAGE.1.into())],
        });
    }
    w
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kube = FakeKube::default();
    for n in 0..args.nodes {
        kube.apply(
            Kind::Node,
            json!({"metadata": {"name": format!("node-{n}")},
            "spec": {"providerID": format!("aws:///eu-west-1a/i-{n:04}")}}),
        );
        for s in 0..args.pods_per_node {
            kube.apply(Kind::Pod, pod(n, s));
        }
    }
    let kube_addr = kube.serve("127.0.0.1:0".parse()?).await?;
    let ec2 = FakeEc2::new(world(args.nodes, args.pods_per_node));
    ec2.set_faults(ipmgmt_tests::fake_ec2::Faults {
        rate_limits: true,
        ..Default::default()
    });
    let ec2_addr = ec2.serve("127.0.0.1:0".parse()?).await?;

    let dir = std::env::temp_dir().join(format!("reclaimer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: f\n  cluster:\n    server: http://{kube_addr}\nusers:\n- name: r\n  user:\n    token: t\n\
         contexts:\n- name: f\n  context:\n    cluster: f\n    user: r\ncurrent-context: f\n"
        ),
    )?;
    let child = Command::new(&args.binary)
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "reclaimer-0")
        .env("POD_NAMESPACE", "ipmgmt")
        .env("AWS_ENDPOINT_URL_EC2", format!("http://{ec2_addr}"))
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--interval",
            &args.interval,
            "--grace",
            &args.grace,
            "--max-releases-per-sweep",
            "100",
            "--log-level",
            "warn",
        ])
        .stderr(std::fs::File::create(dir.join("reclaimer.log"))?)
        .spawn()?;
    let mut child = Killed(child);
    let pid = child.0.id();

    // Steady state: three sweeps with every address claimed.
    let describes = |ec2: &FakeEc2| {
        ec2.log()
            .iter()
            .filter(|e| e.action == "DescribeNetworkInterfaces")
            .count()
    };
    let start = Instant::now();
    while describes(&ec2) < 3 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "no three sweeps within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let steady_calls = ec2.log().len();
    let rss_steady = rss_kib(pid, "VmRSS:");

    for n in 0..args.nodes {
        kube.delete(Kind::Pod, "multus-demo", &format!("app-{n}-0"));
    }
    let deleted = Instant::now();
    let stale: Vec<IpAddr> = (0..args.nodes).map(|n| address(n, 0)).collect();
    while stale.iter().any(|ip| ec2.holder(*ip).is_some()) {
        anyhow::ensure!(
            deleted.elapsed() < Duration::from_secs(120),
            "not all released within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let released_after = deleted.elapsed();
    let kept = (0..args.nodes)
        .flat_map(|n| (1..args.pods_per_node).map(move |s| address(n, s)))
        .filter(|ip| ec2.holder(*ip).is_some())
        .count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_end = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.0.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let log = ec2.log();
    let mut by_action = std::collections::BTreeMap::<String, usize>::new();
    for e in &log {
        *by_action
            .entry(format!(
                "{} {}",
                e.action,
                e.code.as_deref().unwrap_or("ok")
            ))
            .or_default() += 1;
    }
    let sweeps = describes(&ec2);
    let mut api = std::collections::BTreeMap::<String, usize>::new();
    for r in kube.requests() {
        *api.entry(format!("{} {:?}", r.verb, r.kind)).or_default() += 1;
    }
    println!(
        "cluster: {} nodes, {} pods, {} addresses on Multus ENIs",
        args.nodes,
        args.nodes * args.pods_per_node,
        args.nodes * args.pods_per_node
    );
    println!(
        "steady state: {steady_calls} EC2 calls in the first 3 sweeps ({:.1} per sweep)",
        steady_calls as f64 / 3.0
    );
    println!(
        "all {} stale addresses released {:.2} s after the deletes (grace {}, interval {}); {kept} live addresses kept of {}",
        stale.len(),
        released_after.as_secs_f64(),
        args.grace,
        args.interval,
        args.nodes * (args.pods_per_node - 1)
    );
    println!("sweeps (DescribeNetworkInterfaces calls): {sweeps}");
    for (k, v) in &by_action {
        println!("  EC2 {k}: {v}");
    }
    for (k, v) in &api {
        println!("  API {k}: {v}");
    }
    println!(
        "RSS: {:.1} MiB steady, {:.1} MiB at the end, peak {:.1} MiB",
        rss_steady as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    anyhow::ensure!(
        kept == args.nodes * (args.pods_per_node - 1),
        "a live address was released"
    );
    Ok(())
}

/// The reclaimer process, killed if the bench stops early.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
