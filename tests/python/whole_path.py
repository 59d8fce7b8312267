"""The scenes of the whole path, from an annotated sample workload to addresses on
node ENIs: the story `./scripts/demo` tells, and what `test_whole_path.py` asserts.
Each scene returns what happened; the story prints it, the tests check it.

    python whole_path.py      (as root; ./scripts/demo runs it)
"""

import ipaddress
import re
import sys
import tempfile
import time

from cluster import Cluster, Fail, ec2_calls, host, pod_from_template, sample
from deploy_harness import SAMPLES

VIP_SAMPLE = SAMPLES / "deployment-sidecar-floating-ip.yaml"


def floating_ip():
    """The floating IP the sample's comment tells users to add, with its prefix."""
    (vip,) = set(re.findall(r"ip addr add (\S+) dev net1", VIP_SAMPLE.read_text()))
    return vip


def holds(holders, address, eni):
    return holders.get(str(ipaddress.ip_address(address))) == [eni.id]


def injected(admitted):
    return admitted.pod["metadata"]["annotations"].get("ipmgmt.aws/injected", "")


def scene_init_deployment(cluster):
    """The sample init Deployment, one replica per node: each pod's addresses on its
    own node's ENIs before its app starts."""
    deployment = sample("multus-app")
    out = []
    for node in cluster.nodes[: deployment["spec"]["replicas"]]:
        since = len(cluster.vpc.log())
        admitted = cluster.create(pod_from_template(deployment))
        pod = cluster.start(admitted.pod, node)
        placed = {}
        app_log = wait_for_log(pod.container("app"), "net1") if pod.phase == "Running" else ""
        holders = cluster.vpc.holders()
        for iface, cidr in pod.addresses:
            placed[host(cidr)] = (cluster.eni_of(node, iface, pod), holders.get(host(cidr), []))
        out.append({"admitted": admitted, "pod": pod, "node": node, "placed": placed, "app_log": app_log,
                    "calls": ec2_calls(cluster.vpc.log(), since)})
    return out


def scene_floating_ip(cluster):
    """The sample floating-IP pair: the VIP appears in the pod on node 1, moves to the
    pod on node 2, then the old pod stops, then the new one stops while holding it."""
    deployment = sample("floating-ip-pair")
    vip = floating_ip()
    pods = []
    for node in cluster.nodes[:2]:
        admitted = cluster.create(pod_from_template(deployment))
        pods.append((admitted, cluster.start(admitted.pod, node)))
    (admitted_a, a), (_, b) = pods
    eni_a, eni_b = cluster.eni_of(a.node, "net1", a), cluster.eni_of(b.node, "net1", b)
    out = {"admitted": admitted_a, "pods": (a, b), "vip": vip, "eni_a": eni_a, "eni_b": eni_b,
           "startup": [p.init_results[0][2] for p in (a, b)],
           "sidecar": a.containers[0].inspect(), "sidecar_process": a.containers[0].process_status()}

    # As the sample's comment tells users to, with the app container's NET_ADMIN.
    a.exec("app", "ip", "addr", "add", vip, "dev", "net1")
    out["to_a"] = cluster.vpc.wait_for(lambda h: holds(h, host(vip), eni_a))
    # The failover, timed from the address change itself: `ip -n` makes the same
    # kernel event as the HA software in the pod, without `podman exec`'s start-up.
    since = len(cluster.vpc.log())
    a.sandbox.del_address("net1", vip)
    b.sandbox.add_address("net1", vip)
    out["failover"] = cluster.vpc.wait_for(lambda h: holds(h, host(vip), eni_b), poll=0.001)
    out["failover_calls"] = ec2_calls(cluster.vpc.log(), since)

    own_a = host(a.addresses[0][1])
    out["stop_a"] = cluster.stop(a)
    holders = cluster.vpc.holders()
    out["after_a"] = {"vip": holders.get(host(vip), []), "own": holders.get(own_a, [])}

    own_b = host(b.addresses[0][1])
    out["stop_b"] = cluster.stop(b)
    holders = cluster.vpc.holders()
    out["after_b"] = {"vip": holders.get(host(vip), []), "own": holders.get(own_b, [])}
    return out


def wait_for_log(container, text, timeout=10):
    deadline = time.monotonic() + timeout
    while text not in (log := container.logs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


def scene_missing_permission(cluster):
    """An init pod whose role lacks ec2:AssignPrivateIpAddresses: the pod stays in
    Init:Error, with the one-line reason in the container's termination message."""
    deployment = sample("multus-app")
    cluster.vpc.set_faults(deny=["AssignPrivateIpAddresses"])
    try:
        admitted = cluster.create(pod_from_template(deployment))
        pod = cluster.start(admitted.pod, cluster.nodes[0])
    finally:
        cluster.vpc.set_faults()
    holders = cluster.vpc.holders()
    out = {"pod": pod, "held": {host(c): holders.get(host(c), []) for _, c in pod.addresses}}
    cluster.delete(pod)
    return out


# --- the story -------------------------------------------------------------------------

def say(text=""):
    print(text, flush=True)


def story():
    with tempfile.TemporaryDirectory(prefix="ipmgmt-whole-path-") as workdir:
        started = time.monotonic()
        cluster = Cluster(workdir)
        try:
            tell(cluster, started)
        finally:
            cluster.close()


def tell(cluster, started):
    (_, ipmgr_size), (_, webhook_size) = cluster.images["ipmgr"], cluster.images["webhook"]
    say(f"images     built FROM scratch with buildah: ipmgr {ipmgr_size / 2**20:.0f} MiB, "
        f"webhook {webhook_size / 2**20:.0f} MiB ({cluster.timings['images']:.1f} s)")
    say(f"webhook    the chart's Deployment, run by podman from {cluster.webhook.image}, "
        f"ready in {cluster.timings['webhook']:.1f} s")
    for node in cluster.nodes:
        say(f"node       {node.name} ({node.instance_id}): eth1 {node.enis[1].id}, eth2 {node.enis[2].id}")
    say()

    say("1. The sample init Deployment (deploy/samples/deployment-init.yaml), 2 replicas on 2 nodes")
    for step in scene_init_deployment(cluster):
        pod, admitted = step["pod"], step["admitted"]
        say(f"   {pod.name}: injected {injected(admitted)} ({len(admitted.patch)} patch operations; "
            f"jsonpatch and evanphx/json-patch agree; valid for Kubernetes 1.33)")
        name, code, seconds, message = pod.init_results[0]
        say(f"   on {pod.node.name}: {name} exited {code} after {seconds:.2f} s; "
            f"EC2 calls {fmt_calls(step['calls'])}")
        for address, (eni, holders) in step["placed"].items():
            mark = "ok" if holders == [eni.id] else f"NOT ASSIGNED (held by {holders or 'nobody'})"
            say(f"     {address:<22} on {eni.id} (the node's {eni_name(eni)})  {mark}")
        seen = sorted(set(re.findall(r"inet6? (\S+) scope global", step["app_log"])))
        say(f"   app started {pod.app_started - pod.init_started:.2f} s after the pod; pod {pod.phase}; "
            f"`ip addr` in the app shows {', '.join(seen)}")
    say()

    say("2. The floating-IP pair (deploy/samples/deployment-sidecar-floating-ip.yaml), one pod per node")
    scene = scene_floating_ip(cluster)
    a, b = scene["pods"]
    say(f"   sidecars started; startup probes passed after {scene['startup'][0]:.2f} s and "
        f"{scene['startup'][1]:.2f} s")
    say(f"   {scene['vip']} added by the app in {a.name} on node 1 (kubectl exec … ip addr add): "
        f"on {scene['eni_a'].id}")
    say(f"   moved to {b.name} on node 2: on {scene['eni_b'].id} {scene['failover'] * 1000:.0f} ms after the "
        f"address change (EC2 calls {fmt_calls(scene['failover_calls'])})")
    say(f"   {a.name} stopped (exit codes {fmt_codes(scene['stop_a'])}): the VIP stays on {', '.join(scene['after_a']['vip'])}; "
        f"its own address is {'released' if not scene['after_a']['own'] else 'still held'}")
    say(f"   {b.name} stopped while holding the VIP (exit codes {fmt_codes(scene['stop_b'])}): "
        f"the VIP is {'released' if not scene['after_b']['vip'] else 'still on ' + str(scene['after_b']['vip'])}")
    say()

    say("3. A role without ec2:AssignPrivateIpAddresses")
    scene = scene_missing_permission(cluster)
    name, code, _, message = scene["pod"].init_results[0]
    say(f"   {scene['pod'].name}: {scene['pod'].phase}, {name} exited {code}; kubectl describe shows:")
    for line in message.splitlines() or ["(no message)"]:
        say(f"     {line}")
    say()
    say(f"Done in {time.monotonic() - started:.1f} s. The same scenes run as tests: tests/python/test_whole_path.py")


def eni_name(eni):
    return f"eth{eni.index}"


def fmt_codes(codes):
    return ", ".join(f"{name} {code}" for name, code in codes.items())


def fmt_calls(calls):
    return ", ".join(f"{action} {n}" for action, n in sorted(calls.items())) or "none"


def main():
    try:
        story()
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
