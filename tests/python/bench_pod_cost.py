"""What each pod pays for the IP manager, on a real node (`cluster/real.py`) with the
release images and the chart's own requests and limits (the manager's 100m CPU limit
is a CFS quota there): the time from the pod's creation to its app starting, with and
without the init manager; the manager's CPU time and peak RSS in init mode; and an
idle native sidecar's RSS and CPU. Run by ./scripts/bench-pod-cost (as root), with
the release binaries; figures in docs/benchmarks.md.

The app prints the machine's uptime when it starts (/proc/uptime, 10 ms steps; the
kernel is the nodes' own), so the delay is measured from the moment the pod was POSTed
to within 10 ms. Each pod gets a new
address (none is deleted before the end), so every init assigns, as a new pod does.
"""

import datetime
import json
import statistics
import sys
import tempfile
import time

import cluster
from cluster.real import RealCluster, is_ready

APPS = "multus-demo"
MANAGER = "aws-ip-mgmt"
NODE_SELECTOR = {"example.com/multus-ready": "true"}


def pod(name, node, image, mode=None, command="cat /proc/uptime; sleep 3600"):
    annotations = {"k8s.v1.cni.cncf.io/networks": "ipvlan-net1"}
    if mode:
        annotations["ipmgmt.aws/mode"] = mode
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": APPS, "annotations": annotations},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "app", "image": image, "command": ["sh", "-c", command],
                                     "securityContext": {"allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]}}}]}}


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def started(c, name, timeout=120):
    """Until the app has printed its start time; that time."""
    def check():
        c.check()
        out = c.kubectl("-n", APPS, "logs", name, "-c", "app", check=False).stdout.strip()
        return out and float(out.splitlines()[0].split()[0])
    return c.cp.wait_for(f"{name}'s app started", check, timeout=timeout)


def manager_usage(c, name):
    """The manager's own account: its CPU time and peak RSS (its last log line), and the
    time from its first log line to its last."""
    lines = [json.loads(line) for line in c.kubectl("-n", APPS, "logs", name, "-c", MANAGER).stdout.splitlines()
             if line.startswith("{")]
    last = lines[-1] if lines and "cpu_ms" in lines[-1] else None
    if last is None:
        return None
    stamp = lambda line: datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
    return float(last["cpu_ms"]), int(last["peak_rss_kib"]), (stamp(last) - stamp(lines[0])) * 1000


def main(runs):
    with tempfile.TemporaryDirectory(prefix="ipmgmt-bench-pod-") as workdir:
        c = RealCluster(workdir, sets=["injection.logFormat=json"])
        try:
            c.apply_samples()
            (image,) = cluster.app_images()
            delays = {"plain": [], "init": []}
            usage = []
            for i in range(runs):
                # Alternate nodes: each init assigns one more address to its node's eth1
                # ENI, and an m5.large's ENI holds 9 secondary addresses.
                node = c.nodes[i % len(c.nodes)].name
                for kind in ("plain", "init"):
                    name = f"{kind}-{i}"
                    body = pod(name, node, image, mode="init" if kind == "init" else None)
                    posted = uptime()
                    c.cp.create(f"/api/v1/namespaces/{APPS}/pods", body)
                    delays[kind].append((started(c, name) - posted) * 1000)
                    if kind == "init":
                        usage.append(manager_usage(c, name))
            c.cp.create(f"/api/v1/namespaces/{APPS}/pods", pod("sidecar", c.nodes[0].name, image, mode="sidecar"))
            (sidecar,) = [p for p in c.wait_for_pods(APPS, "", 2 * runs + 1, is_ready) if p["metadata"]["name"] == "sidecar"]
            _, first = c.process(sidecar, MANAGER)
            idle = 60
            time.sleep(idle)
            _, after = c.process(sidecar, MANAGER)
        finally:
            c.close()

    def summary(values):
        values = sorted(values)
        p90 = values[max(0, round(0.9 * len(values)) - 1)]
        return f"median {statistics.median(values):.0f} ms, p90 {p90:.0f} ms, max {values[-1]:.0f} ms"

    print(f"pod POSTed -> app started, without the manager: {summary(delays['plain'])} (n={runs})")
    print(f"pod POSTed -> app started, init manager:        {summary(delays['init'])} (n={runs})")
    extra = [i - p for i, p in zip(delays["init"], delays["plain"])]
    print(f"what the init manager adds (paired runs):        {summary(extra)}")
    cpu = [u[0] for u in usage if u]
    rss = [u[1] for u in usage if u]
    if cpu:
        wall = [u[2] for u in usage if u]
        print(f"init manager CPU time: median {statistics.median(cpu):.1f} ms, max {max(cpu):.1f} ms; "
              f"peak RSS median {statistics.median(rss) / 1024:.1f} MiB (its own account, n={len(cpu)})")
        print(f"init manager, first log line to exit: {summary(wall)}")
    print(f"idle sidecar after {idle} s: RSS {int(after['VmRSS'].split()[0]) / 1024:.1f} MiB, "
          f"peak {int(after['VmHWM'].split()[0]) / 1024:.1f} MiB; "
          f"voluntary context switches in the window {int(after['voluntary_ctxt_switches']) - int(first['voluntary_ctxt_switches'])}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
