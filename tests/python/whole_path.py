"""The scenes of the whole path, from an annotated sample workload to addresses on
node ENIs, on the real control plane: the story `./scripts/demo` tells, and what
`test_whole_path.py` asserts. Each scene `kubectl apply`s a sample, waits for what the
apiserver reports, and returns what happened; the story prints it, the tests check it.

    python whole_path.py      (as root; ./scripts/demo runs it)
"""

import ipaddress
import json
import re
import sys
import tempfile
import time

from cluster import Cluster, Fail, ec2_calls, host, init_failed
from deploy_harness import SAMPLES

APPS = "multus-demo"
INIT_SAMPLE = SAMPLES / "deployment-init.yaml"
VIP_SAMPLE = SAMPLES / "deployment-sidecar-floating-ip.yaml"
MANAGER = "aws-ip-mgmt"


def floating_ip():
    """The floating IP the sample's comment tells users to add, with its prefix."""
    (vip,) = set(re.findall(r"ip addr add (\S+) dev net1", VIP_SAMPLE.read_text()))
    return vip


def holds(holders, address, eni):
    return holders.get(str(ipaddress.ip_address(address))) == [eni.id]


def injected(pod):
    return pod["metadata"]["annotations"].get("ipmgmt.aws/injected", "")


def apply_samples(cluster):
    """The samples' namespace and NetworkAttachmentDefinitions, as the user guide
    applies them; kubectl's output."""
    return cluster.kubectl("apply", "-f", SAMPLES / "namespace.yaml", "-f", SAMPLES / "nad-ipvlan-whereabouts.yaml",
                           "-f", SAMPLES / "nad-dual-stack.yaml").stdout


def scene_init_deployment(cluster):
    """The sample init Deployment, two replicas: each pod's addresses on its own node's
    ENIs before its app starts."""
    since = len(cluster.vpc.log())
    applied = cluster.kubectl("apply", "-f", INIT_SAMPLE).stdout
    out = []
    for stored, worker in cluster.wait_for_pods(APPS, "app=multus-app", 2):
        pod, node = worker.pod, worker.agent.node
        app_log = wait_for_log(pod.container("app"), "net1")
        holders = cluster.vpc.holders()
        placed = {host(cidr): (cluster.eni_of(node, iface, pod), holders.get(host(cidr), []))
                  for iface, cidr in pod.addresses}
        out.append({"stored": stored, "pod": pod, "node": node, "placed": placed, "app_log": app_log,
                    "applied": applied})
    out[0]["calls"] = ec2_calls(cluster.vpc.log(), since)
    return out


def scene_floating_ip(cluster):
    """The sample floating-IP pair: the VIP appears in the pod on node 1, moves to the
    pod on node 2, then the old pod stops, then the new one stops while holding it.
    Each stop is a scale-down of the Deployment, the first pod picked by its
    pod-deletion-cost, so the ReplicaSet controller and kubelet's graceful delete do it."""
    applied = cluster.kubectl("apply", "-f", VIP_SAMPLE).stdout
    vip = floating_ip()
    (stored_a, worker_a), (stored_b, worker_b) = cluster.wait_for_pods(APPS, "app=floating-ip-pair", 2)
    a, b = worker_a.pod, worker_b.pod
    eni_a, eni_b = cluster.eni_of(a.node, "net1", a), cluster.eni_of(b.node, "net1", b)
    sidecar = a.container(MANAGER)
    out = {"applied": applied, "stored": stored_a, "pods": (a, b), "vip": vip, "eni_a": eni_a, "eni_b": eni_b,
           "startup": [p.init_results[0][2] for p in (a, b)],
           "sidecar": sidecar.inspect(), "sidecar_process": sidecar.process_status()}

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
    cluster.kubectl("-n", APPS, "annotate", "pod", stored_a["metadata"]["name"],
                    "controller.kubernetes.io/pod-deletion-cost=-1000")
    cluster.kubectl("-n", APPS, "scale", "deployment/floating-ip-pair", "--replicas=1")
    cluster.wait_gone(worker_a)
    out["stop_a"] = worker_a.exit_codes
    holders = cluster.vpc.holders()
    out["after_a"] = {"vip": holders.get(host(vip), []), "own": holders.get(own_a, [])}
    out["pods_after_a"] = [p["metadata"]["name"] for p, _ in cluster.workers(APPS, "app=floating-ip-pair")]

    own_b = host(b.addresses[0][1])
    cluster.kubectl("-n", APPS, "scale", "deployment/floating-ip-pair", "--replicas=0")
    cluster.wait_gone(worker_b)
    out["stop_b"] = worker_b.exit_codes
    holders = cluster.vpc.holders()
    out["after_b"] = {"vip": holders.get(host(vip), []), "own": holders.get(own_b, [])}
    return out


def wait_for_log(container, text, timeout=10):
    deadline = time.monotonic() + timeout
    while text not in (log := container.logs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


def scene_missing_permission(cluster):
    """The init Deployment scaled up while its role lacks
    ec2:AssignPrivateIpAddresses: the new pod stays in Init:Error, with the one-line
    reason in the container's termination message, as the apiserver reports it; then
    scaled back, which takes the failed pod away first (it is not ready)."""
    before = {p["metadata"]["uid"] for p, _ in cluster.workers(APPS, "app=multus-app")}
    cluster.vpc.set_faults(deny=["AssignPrivateIpAddresses"])
    try:
        cluster.kubectl("-n", APPS, "scale", "deployment/multus-app", "--replicas=3")
        pods = cluster.wait_for_pods(APPS, "app=multus-app", 3,
                                     settled=lambda p: p["metadata"]["uid"] in before or init_failed(p))
    finally:
        cluster.vpc.set_faults()
    ((stored, worker),) = [(p, w) for p, w in pods if p["metadata"]["uid"] not in before]
    holders = cluster.vpc.holders()
    shown = cluster.kubectl("-n", APPS, "get", "pod", stored["metadata"]["name"], "--no-headers").stdout.split()
    out = {"stored": stored, "pod": worker.pod, "status_column": shown[2],
           "held": {host(c): holders.get(host(c), []) for _, c in worker.pod.addresses}}
    cluster.kubectl("-n", APPS, "scale", "deployment/multus-app", "--replicas=2")
    cluster.wait_gone(worker)
    out["kept"] = sorted(p["metadata"]["uid"] for p, _ in cluster.workers(APPS, "app=multus-app"))
    out["before"] = sorted(before)
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
    versions = cluster.cp.kubectl("version", "-o", "json").stdout
    server = json.loads(versions)["serverVersion"]["gitVersion"]
    say(f"images        built FROM scratch with buildah: ipmgr {ipmgr_size / 2**20:.0f} MiB, "
        f"webhook {webhook_size / 2**20:.0f} MiB ({cluster.timings['images']:.1f} s)")
    say(f"control plane etcd, kube-apiserver {server}, controller-manager, scheduler; two nodes run by the "
        f"kubelet stand-in ({cluster.timings['control plane']:.1f} s)")
    for node in cluster.nodes:
        say(f"  node        {node.name} ({node.provider_id}): eth1 {node.enis[1].id}, eth2 {node.enis[2].id}")
    say(f"helm install  the chart, its certificate from cert-manager; webhook pods Ready behind the chart's "
        f"Service ({cluster.timings['install']:.1f} s)")
    for line in cluster.kubectl("-n", "ipmgmt-system", "get", "pods", "-o", "wide").stdout.splitlines():
        say(f"  {line}")
    say()
    say("kubectl apply -f deploy/samples/namespace.yaml -f deploy/samples/nad-ipvlan-whereabouts.yaml "
        "-f deploy/samples/nad-dual-stack.yaml")
    for line in apply_samples(cluster).splitlines():
        say(f"  {line}")
    say()

    say("1. kubectl apply -f deploy/samples/deployment-init.yaml (2 replicas)")
    steps = scene_init_deployment(cluster)
    for step in steps:
        pod, stored = step["pod"], step["stored"]
        name, code, seconds, message = pod.init_results[0]
        first = stored["spec"]["initContainers"][0]["name"]
        say(f"   {pod.name} on {pod.node.name}: the apiserver stored it with {first} as its first init "
            f"container (injected: {injected(stored)})")
        say(f"     {name} exited {code} after {seconds:.2f} s")
        for address, (eni, holders) in step["placed"].items():
            mark = "ok" if holders == [eni.id] else f"NOT ASSIGNED (held by {holders or 'nobody'})"
            say(f"     {address:<22} on {eni.id} (the node's {eni_name(eni)})  {mark}")
        seen = sorted(set(re.findall(r"inet6? (\S+) scope global", step["app_log"])))
        say(f"     app started {pod.app_started - pod.init_started:.2f} s after the pod's sandbox; "
            f"`ip addr` in the app shows {', '.join(seen)}")
    say(f"   EC2 calls for both pods: {fmt_calls(steps[0]['calls'])}")
    for line in cluster.kubectl("-n", APPS, "get", "pods", "-l", "app=multus-app", "-o", "wide").stdout.splitlines():
        say(f"   {line}")
    say()

    say("2. kubectl apply -f deploy/samples/deployment-sidecar-floating-ip.yaml (a pair, one pod per node)")
    scene = scene_floating_ip(cluster)
    a, b = scene["pods"]
    say(f"   native sidecars started; startup probes passed after {scene['startup'][0]:.2f} s and "
        f"{scene['startup'][1]:.2f} s")
    say(f"   {scene['vip']} added by the app in {a.name} on node 1 (kubectl exec … ip addr add): "
        f"on {scene['eni_a'].id}")
    say(f"   moved to {b.name} on node 2: on {scene['eni_b'].id} {scene['failover'] * 1000:.0f} ms after the "
        f"address change (EC2 calls {fmt_calls(scene['failover_calls'])})")
    say(f"   kubectl scale --replicas=1 took {a.name} (exit codes {fmt_codes(scene['stop_a'])}): the VIP stays on "
        f"{', '.join(scene['after_a']['vip'])}; its own address is "
        f"{'released' if not scene['after_a']['own'] else 'still held'}")
    say(f"   kubectl scale --replicas=0 took {b.name} while it held the VIP (exit codes {fmt_codes(scene['stop_b'])}): "
        f"the VIP is {'released' if not scene['after_b']['vip'] else 'still on ' + str(scene['after_b']['vip'])}")
    say()

    say("3. kubectl scale deployment/multus-app --replicas=3, with a role without ec2:AssignPrivateIpAddresses")
    scene = scene_missing_permission(cluster)
    stored = scene["stored"]
    (status,) = stored["status"]["initContainerStatuses"][:1]
    terminated = status["state"]["terminated"]
    say(f"   {stored['metadata']['name']}: kubectl get shows {scene['status_column']}; {status['name']} exited "
        f"{terminated['exitCode']}; kubectl describe shows:")
    for line in terminated.get("message", "(no message)").splitlines():
        say(f"     {line}")
    say("   kubectl scale --replicas=2: the ReplicaSet took the failed pod away and kept the two Ready ones")
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
