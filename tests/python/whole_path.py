"""The whole path, from an annotated sample workload to addresses on node ENIs, on a
real control plane and two real nodes (kubelet, containerd, Multus, whereabouts,
kube-proxy): the story `./scripts/demo` tells. `test_real_whole_path.py` runs the same
samples and asserts what this prints.

    python whole_path.py      (as root; ./scripts/demo runs it)
"""

import ipaddress
import json
import re
import sys
import tempfile
import time

from cluster import Fail, ec2_calls
from cluster.real import RealCluster, init_failed, is_ready
from deploy_harness import SAMPLES

APPS = "multus-demo"
INIT_SAMPLE = SAMPLES / "deployment-init.yaml"
VIP_SAMPLE = SAMPLES / "deployment-sidecar-floating-ip.yaml"
MANAGER = "aws-ip-mgmt"


def floating_ip():
    """The floating IP the sample's comment tells users to add, with its prefix."""
    (vip,) = set(re.findall(r"ip addr add (\S+) dev net1", VIP_SAMPLE.read_text()))
    return vip


def seconds_between(start, end):
    parse = lambda t: time.mktime(time.strptime(t, "%Y-%m-%dT%H:%M:%SZ"))
    return parse(end) - parse(start)


def exec_app(cluster, pod, *command):
    return cluster.kubectl("-n", APPS, "exec", pod, "-c", "app", "--", *command)


def scene_floating_ip(cluster):
    """The sample floating-IP pair: the VIP added in the pod on one node, moved to the
    pod on the other (the failover timed from the address change in its network
    namespace, the kernel event HA software makes), then each pod stopped by a
    scale-down, the first picked by its pod-deletion-cost."""
    cluster.kubectl("apply", "-f", VIP_SAMPLE)
    a, b = cluster.wait_for_pods(APPS, "app=floating-ip-pair", 2, is_ready)
    name_a, name_b = a["metadata"]["name"], b["metadata"]["name"]
    ((own_a, (eni_a, _)),) = cluster.placed(a).items()
    ((own_b, (eni_b, _)),) = cluster.placed(b).items()
    vip = floating_ip()
    vip_host = str(ipaddress.ip_interface(vip).ip)
    exec_app(cluster, name_a, "ip", "addr", "add", vip, "dev", "net1")
    cluster.vpc.wait_for(lambda h: h.get(vip_host) == [eni_a.id])
    since = len(cluster.vpc.log())
    cluster.in_pod_netns(a, "app", "ip", "addr", "del", vip, "dev", "net1")
    cluster.in_pod_netns(b, "app", "ip", "addr", "add", vip, "dev", "net1")
    failover = cluster.vpc.wait_for(lambda h: h.get(vip_host) == [eni_b.id], poll=0.001)
    out = {"vip": vip, "a": name_a, "b": name_b, "eni_a": eni_a.id, "eni_b": eni_b.id, "failover": failover,
           "failover_calls": ec2_calls(cluster.vpc.log(), since)}
    cluster.kubectl("-n", APPS, "annotate", "pod", name_a, "controller.kubernetes.io/pod-deletion-cost=-1000")
    cluster.kubectl("-n", APPS, "scale", "deployment/floating-ip-pair", "--replicas=1")
    cluster.gone(APPS, name_a)
    holders = cluster.vpc.holders()
    out["after_a"] = {"vip": holders.get(vip_host, []), "own": holders.get(own_a, [])}
    cluster.kubectl("-n", APPS, "scale", "deployment/floating-ip-pair", "--replicas=0")
    cluster.gone(APPS, name_b)
    holders = cluster.vpc.holders()
    out["after_b"] = {"vip": holders.get(vip_host, []), "own": holders.get(own_b, [])}
    return out


def say(text=""):
    print(text, flush=True)


def story():
    with tempfile.TemporaryDirectory(prefix="ipmgmt-whole-path-") as workdir:
        started = time.monotonic()
        cluster = RealCluster(workdir)
        try:
            tell(cluster, started)
        finally:
            cluster.close()


def tell(cluster, started):
    sizes = {stage: int(json.loads(cluster.podman("image", "inspect", tag).stdout)[0]["Size"])
             for stage, tag in cluster.images.items()}
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    say("images        built FROM scratch with buildah, imported into each node's containerd: "
        + ", ".join(f"{stage} {size / 2**20:.0f} MiB" for stage, size in sizes.items())
        + f" ({cluster.timings['images']:.1f} s)")
    say(f"control plane etcd, kube-apiserver {server}, controller-manager, scheduler; two nodes, each kubelet, "
        f"containerd, kube-proxy, Multus and whereabouts ({cluster.timings['control plane and nodes']:.1f} s)")
    for node in cluster.nodes:
        say(f"  node        {node.name} ({node.provider_id}): eth1 {node.enis[1].id}, eth2 {node.enis[2].id}")
    say(f"helm install  the chart, its certificate from cert-manager; webhook pods Ready behind the chart's "
        f"Service ({cluster.timings['install']:.1f} s)")
    for line in cluster.kubectl("-n", "ipmgmt-system", "get", "pods", "-o", "wide").stdout.splitlines():
        say(f"  {line}")
    say()
    say("kubectl apply -f deploy/samples/namespace.yaml -f deploy/samples/nad-ipvlan-whereabouts.yaml "
        "-f deploy/samples/nad-dual-stack.yaml")
    cluster.apply_samples()
    say()

    say("1. kubectl apply -f deploy/samples/deployment-init.yaml (2 replicas)")
    since = len(cluster.vpc.log())
    cluster.kubectl("apply", "-f", INIT_SAMPLE)
    for pod in cluster.wait_for_pods(APPS, "app=multus-app", 2, is_ready):
        name = pod["metadata"]["name"]
        manager = pod["status"]["initContainerStatuses"][0]
        ran = manager["state"]["terminated"]
        say(f"   {name} on {pod['spec']['nodeName']}: stored with {manager['name']} as its first init container")
        say(f"     {manager['name']} exited {ran['exitCode']} "
            f"({seconds_between(ran['startedAt'], ran['finishedAt']):.0f} s by kubelet's clock)")
        for address, (eni, holders) in cluster.placed(pod).items():
            mark = "ok" if holders == [eni.id] else f"NOT ASSIGNED (held by {holders or 'nobody'})"
            say(f"     {address:<22} on {eni.id} (the node's eth{eni.index})  {mark}")
        log = cluster.kubectl("-n", APPS, "logs", name, "-c", "app").stdout
        seen = sorted(set(re.findall(r"inet6? (\S+) scope global", log)))
        say(f"     the app started after it; `ip addr` in the app shows {', '.join(seen)}")
    say(f"   EC2 calls for both pods: {fmt_calls(ec2_calls(cluster.vpc.log(), since))}")
    for line in cluster.kubectl("-n", APPS, "get", "pods", "-l", "app=multus-app", "-o", "wide").stdout.splitlines():
        say(f"   {line}")
    say()

    say("2. kubectl apply -f deploy/samples/deployment-sidecar-floating-ip.yaml (a pair, one pod per node)")
    scene = scene_floating_ip(cluster)
    say("   native sidecars started, the apps after the sidecars' startup probes passed")
    say(f"   {scene['vip']} added by the app in {scene['a']} (kubectl exec … ip addr add): on {scene['eni_a']}")
    say(f"   moved to {scene['b']}: on {scene['eni_b']} {scene['failover'] * 1000:.0f} ms after the address "
        f"change in its network namespace (EC2 calls {fmt_calls(scene['failover_calls'])})")
    say(f"   kubectl scale --replicas=1 took {scene['a']}: the VIP stays on {', '.join(scene['after_a']['vip'])}; "
        f"its own address is {'released' if not scene['after_a']['own'] else 'still held'}")
    say(f"   kubectl scale --replicas=0 took {scene['b']} while it held the VIP: the VIP is "
        f"{'released' if not scene['after_b']['vip'] else 'still held'}")
    say()

    say("3. kubectl scale deployment/multus-app --replicas=3, with a role without ec2:AssignPrivateIpAddresses")
    before = {p["metadata"]["uid"] for p in cluster.pods(APPS, "app=multus-app")}
    cluster.vpc.set_faults(deny=["AssignPrivateIpAddresses"])
    try:
        cluster.kubectl("-n", APPS, "scale", "deployment/multus-app", "--replicas=3")
        pods = cluster.wait_for_pods(APPS, "app=multus-app", 3, lambda p: p["metadata"]["uid"] in before
                                     or init_failed(p))
        (failed,) = [p for p in pods if p["metadata"]["uid"] not in before]
        name = failed["metadata"]["name"]
        shown = cluster.cp.wait_for("the failure in kubectl get", lambda: (
            s := cluster.kubectl("-n", APPS, "get", "pod", name, "--no-headers").stdout.split())[2]
            in ("Init:Error", "Init:CrashLoopBackOff") and s, timeout=60)
        status = cluster.cp.get(f"/api/v1/namespaces/{APPS}/pods/{name}")["status"]["initContainerStatuses"][0]
        terminated = status["state"].get("terminated") or status["lastState"]["terminated"]
    finally:
        cluster.vpc.set_faults()
    say(f"   {name}: kubectl get shows {shown[2]} (kubelet retries it with backoff); {status['name']} exited "
        f"{terminated['exitCode']}; kubectl describe shows:")
    for line in terminated.get("message", "(no message)").splitlines():
        say(f"     {line}")
    cluster.kubectl("-n", APPS, "scale", "deployment/multus-app", "--replicas=2")
    say("   kubectl scale --replicas=2: the ReplicaSet takes the pod that is not ready first")
    say()
    say(f"Done in {time.monotonic() - started:.1f} s. The same scenes run as tests: "
        f"tests/python/test_real_whole_path.py")


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
