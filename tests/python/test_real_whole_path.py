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
    c = RealCluster(tmp_path_factory.mktemp("real-whole-path"))
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
