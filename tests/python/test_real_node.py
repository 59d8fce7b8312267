"""Real nodes under the real control plane: kubelet v1.37 and containerd 2 (CRI, runc,
the CNI plugins) run the pods, two nodes side by side on this machine, each in a
network namespace of its own (`cluster/real_node.py`).

What these scenes hold: a node registers itself with its providerID and EKS's labels
and turns Ready (the node lifecycle controller lifts its not-ready taint); the
scheduler's pods start in containerd from the project's own images, imported from OCI
archives with the project's pause image as the sandbox; each pod's eth0 comes from
the ptp plugin out of its node's range, reachable from the host; the apiserver reaches
kubelet for `kubectl logs` and `kubectl exec` by the node's InternalIP, with its client
certificate; deleting a pod runs kubelet's graceful stop.

Needs root (network namespaces, cgroups, mounts).
"""

import ipaddress
import json
import os
import time

import pytest

from cluster.control_plane import ControlPlane
from cluster.images import Podman, build_app_image, build_pause_image, oci_archive
from cluster.real_node import PAUSE_IMAGE, Multus, RealNode
from cluster_tools import versions
from deploy_harness import SAMPLES, load_yaml_docs

APP_IMAGE = "localhost/ipmgmt/busybox:real-node"
NODES = {"node1": ("us-west-2a", "i-0a1b2c3d4e5f60001"), "node2": ("us-west-2b", "i-0a1b2c3d4e5f60002")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("real nodes need root (network namespaces, cgroups, mounts): run ./scripts/test as root")
    work = tmp_path_factory.mktemp("real-node")
    podman = Podman()
    build_pause_image(podman, PAUSE_IMAGE)
    build_app_image(podman, APP_IMAGE)
    images = {image: oci_archive(podman, image, work / f"{i}.tar") for i, image in enumerate([PAUSE_IMAGE, APP_IMAGE])}
    cp = ControlPlane(work / "control-plane", nodes=list(NODES), kubelets=True)
    nodes = []
    try:
        multus = Multus(cp, work)
        for index, (name, (zone, instance)) in enumerate(NODES.items(), start=1):
            nodes.append(RealNode(cp, name, index, work, images, f"aws:///{zone}/{instance}",
                                  labels={"topology.kubernetes.io/zone": zone,
                                          "topology.kubernetes.io/region": "us-west-2",
                                          "node.kubernetes.io/instance-type": "m5.large"},
                                  enis=[("eth1", f"02:00:00:00:0{index}:01")], multus=multus))
        for node in nodes:
            node.wait_ready()
        yield cp, nodes
    finally:
        for node in nodes:
            node.close()
        cp.stop()


def pod(name, node, command, grace=30):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": grace,
                     "containers": [{"name": "app", "image": APP_IMAGE, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", command]}]}}


def running(cp, name, nodes):
    def check():
        for node in nodes:
            node.check()
        p = cp.get(f"/api/v1/namespaces/default/pods/{name}")
        return p["status"].get("phase") == "Running" and p["status"].get("podIP") and p
    return cp.wait_for(f"pod {name} Running", check, timeout=90)


def test_nodes_register_themselves_as_eks_nodes_do(cluster):
    cp, nodes = cluster
    want = versions()
    for real, (name, (zone, instance)) in zip(nodes, NODES.items()):
        node = real.registered()
        assert node["spec"]["providerID"] == f"aws:///{zone}/{instance}"
        assert node["metadata"]["labels"]["topology.kubernetes.io/zone"] == zone
        info = node["status"]["nodeInfo"]
        assert info["kubeletVersion"] == want["KUBERNETES_VERSION"]
        assert info["containerRuntimeVersion"] == f"containerd://{want['CONTAINERD_VERSION'].lstrip('v')}"
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert node["metadata"]["name"] == name
        assert addresses["InternalIP"] == real.network.host_address


def test_a_pod_runs_in_containerd_with_eth0_from_its_nodes_range(cluster):
    cp, nodes = cluster
    for node in nodes:
        name = f"hello-{node.name}"
        cp.create("/api/v1/namespaces/default/pods", pod(name, node.name, "ip -4 -o addr show eth0; sleep 3600"))
        p = running(cp, name, nodes)
        assert p["spec"]["nodeName"] == node.name
        assert ipaddress.ip_address(p["status"]["podIP"]) in ipaddress.ip_network(node.network.pod_cidr)
        # The apiserver reaches kubelet by the node's InternalIP: logs and exec.
        logs = cp.wait_for(f"{name}'s log", lambda: cp.kubectl("logs", name, check=False).stdout)
        assert p["status"]["podIP"] in logs, logs
        out = cp.kubectl("exec", name, "--", "cat", "/proc/1/cmdline").stdout
        # sh ran the command list and exec'd into its last command.
        assert out.split("\x00")[:2] == ["sleep", "3600"], out
        # The pod is reachable from the host, through its node.
        reply = cp.kubectl("exec", name, "--", "ping", "-c1", "-W2", node.network.host_address, check=False)
        assert reply.returncode == 0, reply.stdout + reply.stderr


def test_a_deleted_pod_gets_sigterm_and_is_gone(cluster):
    cp, nodes = cluster
    script = "trap 'echo stopping; exit 0' TERM; while true; do sleep 1; done"
    cp.create("/api/v1/namespaces/default/pods", pod("graceful", "node1", script, grace=20))
    running(cp, "graceful", nodes)
    started = time.monotonic()
    cp.request("DELETE", "/api/v1/namespaces/default/pods/graceful")

    def gone():
        return cp.get("/api/v1/namespaces/default/pods/graceful", raw=True).status_code == 404
    cp.wait_for("the pod gone after SIGTERM", gone, timeout=40)
    # The trap ended the container on SIGTERM: kubelet's final DELETE came long before
    # the 20 s grace period would have ended in SIGKILL.
    assert time.monotonic() - started < 15
    events = json.loads(cp.kubectl("get", "events", "-o", "json").stdout)["items"]
    killing = [e for e in events if e["involvedObject"].get("name") == "graceful" and e["reason"] == "Killing"]
    assert killing, "kubelet reported no Killing event"


def test_multus_gives_net1_from_whereabouts_and_writes_network_status(cluster):
    cp, nodes = cluster
    multus = nodes[0].multus
    nad = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
           "metadata": {"name": "bridge-net1", "namespace": "default"},
           "spec": {"config": json.dumps({"cniVersion": "0.3.1", "name": "bridge-net1", "type": "bridge",
                                          "bridge": "eth1", "ipam": multus.ipam(range="10.0.1.64/27")})}}
    cp.create("/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions", nad)
    spec = pod("multi", "node2", "ip -4 -o addr show net1; sleep 3600")
    spec["metadata"]["annotations"] = {"k8s.v1.cni.cncf.io/networks": "bridge-net1"}
    cp.create("/api/v1/namespaces/default/pods", spec)
    running(cp, "multi", nodes)
    p = cp.get("/api/v1/namespaces/default/pods/multi")
    status = json.loads(p["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"])
    by_name = {s["name"]: s for s in status}
    net1 = by_name["default/bridge-net1"]
    assert net1["interface"] == "net1"
    (address,) = net1["ips"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network("10.0.1.64/27")
    # whereabouts recorded the allocation in its IPPool, for this pod.
    pools = cp.get("/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/kube-system/ippools")["items"]
    allocations = [a for pool in pools for a in pool["spec"]["allocations"].values()]
    assert any(a["podref"] == "default/multi" for a in allocations), pools
    logs = cp.wait_for("multi's log", lambda: cp.kubectl("logs", "multi", check=False).stdout)
    assert address in logs, logs


def test_a_sample_nad_gives_net1_with_its_enis_mac(cluster):
    """The sample NAD unchanged but for where whereabouts finds its flat file: ipvlan on
    eth1 (the stand-in for this kernel) gives the pod net1 with the ENI's MAC, as an
    ipvlan slave has its master's, and an address from the sample's range."""
    cp, nodes = cluster
    (doc,) = [d for d in load_yaml_docs(SAMPLES / "nad-ipvlan-whereabouts.yaml")
              if d["kind"] == "NetworkAttachmentDefinition"]
    doc["metadata"]["namespace"] = "default"
    cp.create("/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions",
              nodes[0].multus.nad(doc))
    for node in nodes:
        name = f"ipvlan-{node.name}"
        spec = pod(name, node.name, "ip -o link show net1; ip -4 -o addr show net1; sleep 3600")
        spec["metadata"]["annotations"] = {"k8s.v1.cni.cncf.io/networks": doc["metadata"]["name"]}
        cp.create("/api/v1/namespaces/default/pods", spec)
        running(cp, name, nodes)
        status = json.loads(cp.get(f"/api/v1/namespaces/default/pods/{name}")["metadata"]["annotations"]
                            ["k8s.v1.cni.cncf.io/network-status"])
        (net1,) = [s for s in status if s.get("interface") == "net1"]
        eni_mac = dict(node.enis)["eth1"]
        assert net1["mac"] == eni_mac
        (address,) = net1["ips"]
        assert ipaddress.ip_address("10.0.4.64") <= ipaddress.ip_address(address) <= ipaddress.ip_address("10.0.4.95")
        logs = cp.wait_for(f"{name}'s log", lambda: cp.kubectl("logs", name, check=False).stdout)
        assert eni_mac in logs and address in logs, logs


def test_pods_reach_the_apiserver_through_the_kubernetes_service(cluster):
    """kube-proxy on each node routes the `kubernetes` Service's cluster IP to the
    apiserver, so in-cluster clients (the reclaimer) work from pods."""
    cp, nodes = cluster
    service = cp.get("/api/v1/namespaces/default/services/kubernetes")["spec"]["clusterIP"]
    script = f"if echo | nc -w 3 {service} 443 >/dev/null 2>&1; then echo reached; else echo refused; fi; sleep 3600"
    cp.create("/api/v1/namespaces/default/pods", pod("in-cluster", "node1", script))
    running(cp, "in-cluster", nodes)
    logs = cp.wait_for("in-cluster's log", lambda: cp.kubectl("logs", "in-cluster", check=False).stdout.strip())
    assert logs.splitlines()[0] == "reached", logs
