"""The whole path on real nodes (`cluster/real.py`): the samples go in with `kubectl
apply`, the apiserver calls the chart's webhook pods (run by kubelet in containerd) and
applies their patch, kubelet runs the patched pods, Multus and whereabouts give them
net1 on the node's ENI, and the injected manager, started by kubelet exactly as the
patch says (uid 65532, no capabilities, the projected token), assigns each address to
the ENI it rides on before the app starts.

Needs root; the workspace built (`cargo build --workspace`), as ./scripts/test does.
"""

import ipaddress
import json

import pytest

from cluster.real import RealCluster, is_ready
from deploy_harness import SAMPLES

APPS = "multus-demo"
MANAGER = "aws-ip-mgmt"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # The reclaimer too, as the chart's own pods, in-cluster (through the kubernetes
    # Service), with a grace short enough for a scene.
    c = RealCluster(tmp_path_factory.mktemp("real-whole-path"),
                    sets=["reclaimer.enabled=true", "reclaimer.grace=6s", "reclaimer.interval=2s"])
    try:
        c.apply_samples()
        yield c
    finally:
        c.close()


def network_status(pod):
    return json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"])


def test_the_init_sample_assigns_each_pods_addresses_to_its_own_nodes_enis(cluster):
    cluster.kubectl("apply", "-f", SAMPLES / "deployment-init.yaml")
    pods = cluster.wait_for_pods(APPS, "app=multus-app", 2, is_ready)
    assert {p["spec"]["nodeName"] for p in pods} == {n.name for n in cluster.nodes}, "one pod per node"
    holders = cluster.vpc.holders()
    for pod in pods:
        node = cluster.node(pod["spec"]["nodeName"])
        # The manager ran first, as kubelet started it, and finished before the app.
        manager = pod["status"]["initContainerStatuses"][0]
        assert manager["name"] == MANAGER
        assert manager["state"]["terminated"]["exitCode"] == 0, manager
        (spec,) = [c for c in pod["spec"]["initContainers"] if c["name"] == MANAGER]
        assert spec["securityContext"]["runAsUser"] == 65532
        assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
        secondary = [s for s in network_status(pod) if s.get("interface", "eth0") != "eth0"]
        assert secondary, network_status(pod)
        for attachment in secondary:
            (eni,) = [e for e in node.enis.values() if e.mac == attachment["mac"]]
            for address in attachment["ips"]:
                key = str(ipaddress.ip_address(address))
                assert holders.get(key) == [eni.id], f"{address} of {pod['metadata']['name']}: {holders.get(key)}"


def test_a_guaranteed_pod_stays_guaranteed_with_the_manager_in_it(cluster):
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "guaranteed", "namespace": APPS,
                     "annotations": {"ipmgmt.aws/mode": "init", "k8s.v1.cni.cncf.io/networks": "ipvlan-net1"}},
        "spec": {"nodeSelector": {"example.com/multus-ready": "true"},
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                     "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{"name": "app", "image": app_image(), "command": ["sleep", "3600"],
                                 "securityContext": {"allowPrivilegeEscalation": False,
                                                     "capabilities": {"drop": ["ALL"]}},
                                 "resources": {"requests": {"cpu": "250m", "memory": "64Mi"},
                                               "limits": {"cpu": "250m", "memory": "64Mi"}}}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    pods = cluster.wait_for_pods(APPS, "", 3, is_ready)
    (running,) = [p for p in pods if p["metadata"]["name"] == "guaranteed"]
    assert running["status"]["qosClass"] == "Guaranteed"
    out = cluster.kubectl("get", "pod", "-n", APPS, "guaranteed", "-o", "jsonpath={.status.qosClass}").stdout
    assert out == "Guaranteed"
    assert running["spec"]["initContainers"][0]["name"] == MANAGER


def app_image():
    from cluster import app_images
    (image,) = app_images()
    return image


def init_failed(pod):
    return any(s.get("lastState", {}).get("terminated", {}).get("exitCode", 0) != 0
               or s.get("state", {}).get("terminated", {}).get("exitCode", 0) != 0
               for s in pod.get("status", {}).get("initContainerStatuses", []))


def test_a_missing_iam_permission_shows_in_kubectl_as_init_error_with_one_line(cluster):
    """The init Deployment scaled up while its role lacks ec2:AssignPrivateIpAddresses:
    the new pod never starts its app; kubelet reports the manager's exit with its
    termination message, which `kubectl describe` shows as one line naming the action."""
    before = {p["metadata"]["uid"] for p in cluster.pods(APPS, "app=multus-app")}
    cluster.vpc.set_faults(deny=["AssignPrivateIpAddresses"])
    try:
        cluster.kubectl("-n", APPS, "scale", "deployment/multus-app", "--replicas=3")
        pods = cluster.wait_for_pods(APPS, "app=multus-app", 3,
                                     lambda p: p["metadata"]["uid"] in before or init_failed(p))
        (failed,) = [p for p in pods if p["metadata"]["uid"] not in before]
        name = failed["metadata"]["name"]
        # kubelet restarts the manager with backoff (the Deployment's restartPolicy is
        # Always): the STATUS column shows the failure between the tries.
        shown = cluster.cp.wait_for("Init:Error or Init:CrashLoopBackOff in kubectl get", lambda: (
            s := cluster.kubectl("-n", APPS, "get", "pod", name, "--no-headers").stdout.split())[2] in (
                "Init:Error", "Init:CrashLoopBackOff") and s, timeout=60)
        assert shown[1] == "0/1", shown
        failed = cluster.cp.get(f"/api/v1/namespaces/{APPS}/pods/{name}")
        status = failed["status"]["initContainerStatuses"][0]
        terminated = status["state"].get("terminated") or status["lastState"]["terminated"]
        message = terminated["message"].strip()
        assert len(message.splitlines()) == 1 and "AssignPrivateIpAddresses" in message, message
        assert "UnauthorizedOperation" in message, message
        described = cluster.kubectl("-n", APPS, "describe", "pod", name).stdout
        assert "AssignPrivateIpAddresses" in described and "UnauthorizedOperation" in described, described
        app = failed["status"]["containerStatuses"][0]
        assert "running" not in app["state"] and not app.get("started"), "the app ran"
    finally:
        cluster.vpc.set_faults()
    # Scaled back, the ReplicaSet takes the pod that is not ready first.
    cluster.kubectl("-n", APPS, "scale", "deployment/multus-app", "--replicas=2")
    cluster.wait_for_pods(APPS, "app=multus-app", 2, lambda p: p["metadata"]["uid"] in before)


def test_the_floating_ip_follows_the_pod_that_holds_it_and_stays_with_it(cluster):
    """The sample floating-IP pair, as its comment tells users to run it: the VIP added
    with `kubectl exec` in one pod lands on that pod's node ENI; moved to the other pod,
    it follows; the first pod's graceful stop (a scale-down, picked by its deletion
    cost) releases its own address and leaves the VIP where it is; the last stop
    releases everything."""
    cluster.kubectl("apply", "-f", SAMPLES / "deployment-sidecar-floating-ip.yaml")
    a, b = cluster.wait_for_pods(APPS, "app=floating-ip-pair", 2, is_ready)
    vip = floating_ip()
    vip_host = str(ipaddress.ip_interface(vip).ip)
    eni = {p["metadata"]["name"]: eni_of(cluster, p, "net1") for p in (a, b)}
    own = {p["metadata"]["name"]: own_address(p) for p in (a, b)}
    name_a, name_b = a["metadata"]["name"], b["metadata"]["name"]
    # The manager is a native sidecar: started before the app, still running.
    for pod in (a, b):
        (sidecar,) = [s for s in pod["status"]["initContainerStatuses"] if s["name"] == MANAGER]
        assert "running" in sidecar["state"] and sidecar["started"], sidecar

    exec_in(cluster, name_a, "ip", "addr", "add", vip, "dev", "net1")
    cluster.vpc.wait_for(lambda h: h.get(vip_host) == [eni[name_a]])
    exec_in(cluster, name_a, "ip", "addr", "del", vip, "dev", "net1")
    exec_in(cluster, name_b, "ip", "addr", "add", vip, "dev", "net1")
    cluster.vpc.wait_for(lambda h: h.get(vip_host) == [eni[name_b]])

    cluster.kubectl("-n", APPS, "annotate", "pod", name_a, "controller.kubernetes.io/pod-deletion-cost=-1000")
    cluster.kubectl("-n", APPS, "scale", "deployment/floating-ip-pair", "--replicas=1")
    gone(cluster, name_a)
    holders = cluster.vpc.holders()
    assert holders.get(vip_host) == [eni[name_b]], "the VIP stays with the pod that holds it"
    assert holders.get(own[name_a]) is None, "the stopped pod's own address is released"

    cluster.kubectl("-n", APPS, "scale", "deployment/floating-ip-pair", "--replicas=0")
    gone(cluster, name_b)
    holders = cluster.vpc.holders()
    assert holders.get(vip_host) is None and holders.get(own[name_b]) is None, holders


def floating_ip():
    import re
    (vip,) = set(re.findall(r"ip addr add (\S+) dev net1", (SAMPLES / "deployment-sidecar-floating-ip.yaml").read_text()))
    return vip


def eni_of(cluster, pod, iface):
    node = cluster.node(pod["spec"]["nodeName"])
    (status,) = [s for s in network_status(pod) if s.get("interface") == iface]
    (eni,) = [e.id for e in node.enis.values() if e.mac == status["mac"]]
    return eni


def own_address(pod):
    (status,) = [s for s in network_status(pod) if s.get("interface") == "net1"]
    return str(ipaddress.ip_address(status["ips"][0]))


def exec_in(cluster, pod, *command):
    return cluster.kubectl("-n", APPS, "exec", pod, "-c", "app", "--", *command)


def gone(cluster, name, timeout=90):
    cluster.cp.wait_for(f"pod {name} gone", lambda: cluster.check() or cluster.cp.get(
        f"/api/v1/namespaces/{APPS}/pods/{name}", raw=True).status_code == 404, timeout=timeout)


def test_the_reclaimer_pod_gives_back_a_stopped_init_pods_addresses_and_keeps_the_live_ones(cluster):
    """The chart's reclaimer, running as its own pods and reaching the apiserver through
    the kubernetes Service, reads what Multus wrote (network-status) and whereabouts'
    IPPool records: an init-mode pod scaled away leaves its addresses on the ENI (the
    init manager releases nothing); once unclaimed for the grace period they are
    released, while the live pod's, which Multus and whereabouts still record, stay."""
    pods = cluster.wait_for_pods(APPS, "app=multus-app", 2, is_ready)
    stopped, live = pods
    addresses = {p["metadata"]["name"]: [str(ipaddress.ip_address(a)) for s in network_status(p)
                                         if s.get("interface", "eth0") != "eth0" for a in s["ips"]] for p in pods}
    pools = cluster.cp.get("/apis/whereabouts.cni.cncf.io/v1alpha1/ippools")["items"]
    recorded = {a["podref"] for pool in pools for a in pool["spec"]["allocations"].values()}
    assert f"{APPS}/{live['metadata']['name']}" in recorded, recorded
    holders = cluster.vpc.holders()
    assert all(holders.get(a) for p in pods for a in addresses[p["metadata"]["name"]]), holders

    cluster.kubectl("-n", APPS, "annotate", "pod", stopped["metadata"]["name"],
                    "controller.kubernetes.io/pod-deletion-cost=-1000")
    cluster.kubectl("-n", APPS, "scale", "deployment/multus-app", "--replicas=1")
    gone(cluster, stopped["metadata"]["name"])
    assert all(cluster.vpc.holders().get(a) for a in addresses[stopped["metadata"]["name"]]), \
        "an init pod's stop releases nothing"
    cluster.vpc.wait_for(lambda h: not any(h.get(a) for a in addresses[stopped["metadata"]["name"]]),
                         timeout=90)
    holders = cluster.vpc.holders()
    assert all(holders.get(a) for a in addresses[live["metadata"]["name"]]), "the live pod's addresses stay"
    released = reclaimer_metric(cluster, 'ipmgmt_reclaimer_releases_total{result="released"}')
    assert released >= len(addresses[stopped["metadata"]["name"]]), released


def reclaimer_metric(cluster, series):
    """A sample summed over the reclaimer's pods, read through the apiserver's proxy."""
    total = 0.0
    for pod in cluster.pods("ipmgmt-system", "app.kubernetes.io/component=reclaimer"):
        text = cluster.kubectl("get", "--raw",
                               f"/api/v1/namespaces/ipmgmt-system/pods/{pod['metadata']['name']}:8080/proxy/metrics"
                               ).stdout
        total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " "))
    return total
