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
import re
import time

import pytest

import cluster as k
from cluster.installed import NAMESPACE, restricted_pod
from cluster.real import RealCluster, init_failed, is_ready, network_status
from deploy_harness import SAMPLES
from whole_path import exec_app, floating_ip

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



def test_the_init_sample_assigns_each_pods_addresses_to_its_own_nodes_enis(cluster):
    cluster.kubectl("apply", "-f", SAMPLES / "deployment-init.yaml")
    pods = cluster.wait_for_pods(APPS, "app=multus-app", 2, is_ready)
    assert {p["spec"]["nodeName"] for p in pods} == {n.name for n in cluster.nodes}, "one pod per node"
    for pod in pods:
        node = cluster.node(pod["spec"]["nodeName"])
        # The manager ran first, as kubelet started it, and finished before the app.
        manager = pod["status"]["initContainerStatuses"][0]
        assert manager["name"] == MANAGER
        assert manager["state"]["terminated"]["exitCode"] == 0, manager
        (spec,) = [c for c in pod["spec"]["initContainers"] if c["name"] == MANAGER]
        assert spec["securityContext"]["runAsUser"] == 65532
        assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # The apiserver called the webhook for the ReplicaSet's pods and applied its patch.
        assert pod["metadata"]["annotations"]["ipmgmt.aws/injected"]
        (owner,) = pod["metadata"]["ownerReferences"]
        assert owner["kind"] == "ReplicaSet" and owner["name"].startswith("multus-app-")
        assert [c["name"] for c in pod["spec"]["initContainers"]] == [MANAGER]
        assert spec["image"] == cluster.images["ipmgr"]
        assert [n["interface"] for n in network_status(pod)] == ["eth0", "net1", "net2"]
        placed = cluster.placed(pod)
        assert len(placed) == 3, placed
        for address, (eni, holders) in placed.items():
            assert holders == [eni.id], f"{address} of {pod['metadata']['name']}: {holders}"
        # The dual-stack attachment: both families on the second Multus ENI.
        assert {ipaddress.ip_address(a).version for a, (e, _) in placed.items() if e is node.enis[2]} == {4, 6}
        # The app started after the manager and saw its addresses with `ip addr`.
        log = cluster.kubectl("-n", APPS, "logs", pod["metadata"]["name"], "-c", "app").stdout
        for address in placed:
            assert f" {address}/" in log, f"the app's `ip addr` does not show {address}: {log}"


def test_images_follow_the_released_dockerfile(cluster):
    stages = k.dockerfile_stages()
    assert set(stages) == set(cluster.images) == {"webhook", "ipmgr", "reclaimer"}
    for name, tag in cluster.images.items():
        stage = stages[name]
        config = json.loads(cluster.podman("image", "inspect", tag).stdout)[0]["Config"]
        assert config["User"] == stage["user"] == "65532:65532"
        assert config["Entrypoint"] == stage["entrypoint"] == [stage["copy"][0][1]]
        assert sorted(config.get("ExposedPorts", {})) == sorted(f"{p}/tcp" for p in stage["expose"])


def test_a_changed_base_image_is_caught():
    stage = dict(k.dockerfile_stages()["ipmgr"], **{"from": "gcr.io/distroless/static-debian12:nonroot"})
    with pytest.raises(k.Fail, match="update cluster.build_image"):
        k.build_image(None, stage, k.TARGET / "debug" / "ipmgr", "unused")


def test_webhook_pods_run_the_deployments_own_container(cluster):
    """The chart's webhook pods, run by kubelet from the webhook image with the
    Deployment's args, spread over both nodes (EKS's zone labels), and listed by the
    EndpointSlice controller behind the chart's Service."""
    deployment = cluster.cp.get("/apis/apps/v1/namespaces/ipmgmt-system/deployments/ipmgmt")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    pods = cluster.pods("ipmgmt-system", k.selector(deployment))
    assert len(pods) == deployment["spec"]["replicas"] == 2
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, "spread over both nodes"
    endpoints = set(cluster.wait_for_webhook())
    stage = k.dockerfile_stages()["webhook"]
    for pod in pods:
        cmdline, status = cluster.process(pod, "webhook")
        assert cmdline == stage["entrypoint"] + container["args"]
        assert pod["spec"]["containers"][0]["image"] == container["image"] == cluster.images["webhook"]
        assert status["Uid"].split() == ["65532"] * 4
        assert pod["status"]["podIP"] in endpoints and is_ready(pod)


def test_imds_is_unreachable_from_the_pods_as_on_eks(cluster):
    (pod, _) = cluster.pods(APPS, "app=multus-app")
    out = cluster.kubectl("-n", APPS, "exec", pod["metadata"]["name"], "-c", "app", "--", "sh", "-c",
                          "wget -q -T 2 -O- http://169.254.169.254/latest/meta-data/ 2>&1 || echo unreachable").stdout
    assert out.strip().endswith("unreachable"), out


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
        assert terminated["exitCode"] == 1 and "ec2:AssignPrivateIpAddresses" in message, terminated
        app = failed["status"]["containerStatuses"][0]
        assert "running" not in app["state"] and not app.get("started"), "the app ran"
        assert failed["status"]["phase"] == "Pending"
        (net1,) = [s for s in network_status(failed) if s["interface"] == "net1"]
        holders = cluster.vpc.holders()
        assert all(not holders.get(str(ipaddress.ip_address(a))) for a in net1["ips"]), \
            "assigned although the role may not"
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
    name_a, name_b = a["metadata"]["name"], b["metadata"]["name"]
    # The pair has one attachment, net1: its own address, on its node's ENI.
    ((own_a, (eni_a, _)),), ((own_b, (eni_b, _)),) = cluster.placed(a).items(), cluster.placed(b).items()
    eni, own = {name_a: eni_a.id, name_b: eni_b.id}, {name_a: own_a, name_b: own_b}
    assert a["spec"]["nodeName"] != b["spec"]["nodeName"], "the sample's anti-affinity puts them on two nodes"
    # The manager is a native sidecar: started before the app, still running, as the
    # runtime started it from the patched pod: uid 65532, no capabilities, no new
    # privileges, the RuntimeDefault seccomp filter.
    for pod in (a, b):
        (sidecar,) = [s for s in pod["status"]["initContainerStatuses"] if s["name"] == MANAGER]
        assert "running" in sidecar["state"] and sidecar["started"], sidecar
        _, status = cluster.process(pod, MANAGER)
        assert status["Uid"].split() == ["65532"] * 4 and status["Gid"].split() == ["65532"] * 4
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2", "RuntimeDefault seccomp filter"

    exec_app(cluster, name_a, "ip", "addr", "add", vip, "dev", "net1")
    cluster.vpc.wait_for(lambda h: h.get(vip_host) == [eni[name_a]])
    exec_app(cluster, name_a, "ip", "addr", "del", vip, "dev", "net1")
    exec_app(cluster, name_b, "ip", "addr", "add", vip, "dev", "net1")
    cluster.vpc.wait_for(lambda h: h.get(vip_host) == [eni[name_b]])

    cluster.kubectl("-n", APPS, "annotate", "pod", name_a, "controller.kubernetes.io/pod-deletion-cost=-1000")
    cluster.kubectl("-n", APPS, "scale", "deployment/floating-ip-pair", "--replicas=1")
    cluster.gone(APPS, name_a)
    remaining = [p["metadata"]["name"] for p in cluster.pods(APPS, "app=floating-ip-pair")]
    assert remaining == [name_b], "the scale-down took the pod with the lower deletion cost"
    holders = cluster.vpc.holders()
    assert holders.get(vip_host) == [eni[name_b]], "the VIP stays with the pod that holds it"
    assert holders.get(own[name_a]) is None, "the stopped pod's own address is released"

    cluster.kubectl("-n", APPS, "scale", "deployment/floating-ip-pair", "--replicas=0")
    cluster.gone(APPS, name_b)
    holders = cluster.vpc.holders()
    assert holders.get(vip_host) is None and holders.get(own[name_b]) is None, holders


def test_the_reclaimer_pod_gives_back_a_stopped_init_pods_addresses_and_keeps_the_live_ones(cluster):
    """The chart's reclaimer, running as its own pods and reaching the apiserver through
    the kubernetes Service, reads what Multus wrote (network-status) and whereabouts'
    IPPool records: an init-mode pod scaled away leaves its addresses on the ENI (the
    init manager releases nothing); once unclaimed for the grace period they are
    released, while the live pod's, which Multus and whereabouts still record, stay."""
    pods = cluster.wait_for_pods(APPS, "app=multus-app", 2, is_ready)
    stopped, live = pods
    addresses = {p["metadata"]["name"]: list(cluster.placed(p)) for p in pods}
    pools = cluster.cp.get("/apis/whereabouts.cni.cncf.io/v1alpha1/ippools")["items"]
    recorded = {a["podref"] for pool in pools for a in pool["spec"]["allocations"].values()}
    assert f"{APPS}/{live['metadata']['name']}" in recorded, recorded
    holders = cluster.vpc.holders()
    assert all(holders.get(a) for p in pods for a in addresses[p["metadata"]["name"]]), holders

    cluster.kubectl("-n", APPS, "annotate", "pod", stopped["metadata"]["name"],
                    "controller.kubernetes.io/pod-deletion-cost=-1000")
    cluster.kubectl("-n", APPS, "scale", "deployment/multus-app", "--replicas=1")
    cluster.gone(APPS, stopped["metadata"]["name"])
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


def test_the_guard_in_the_controller_pod_passes_the_samples_and_the_webhook_pods_warn_of_a_bad_nad(cluster):
    """The chart's controller pod judges the samples' NADs, read from Multus's CRD, and
    finds nothing (their ranges reserved as the samples ask); a NAD whose range leaves
    its ENI's subnet gets a Warning Event, and once kubelet has projected the guard's
    ConfigMap into the webhook pods, a pod asking for that NAD is admitted with the
    warning kubectl prints."""
    cp = cluster.cp
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/ipmgmt-guard"
    published = cp.wait_for("the guard's findings published", lambda: (
        (r := cp.get(path, raw=True)).status_code == 200 and r.json()["data"]["findings.json"]), timeout=90)
    assert json.loads(published) == {}, published
    bad = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
           "metadata": {"name": "outside-net", "namespace": APPS},
           "spec": {"config": json.dumps({"cniVersion": "0.3.1", "type": "ipvlan", "master": "eth1", "mode": "l2",
                                          "ipam": {"type": "whereabouts", "range": "10.0.6.0/24"}})}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(bad))
    try:
        (event,) = cp.wait_for("an AddressRangeProblem Event", lambda: [
            e for e in cp.get(f"/apis/events.k8s.io/v1/namespaces/{APPS}/events")["items"]
            if e["regarding"].get("name") == "outside-net" and e["reason"] == "AddressRangeProblem"], timeout=60)
        assert "is not inside subnet-net1 (10.0.4.0/24)" in event["note"], event["note"]
        pod = restricted_pod("asks-for-outside-net", {"ipmgmt.aws/mode": "init",
                                                      "k8s.v1.cni.cncf.io/networks": "outside-net"})
        warned = cp.wait_for("the webhook pods' warning", lambda: (
            "address-range finding" in (p := cluster.kubectl("create", "--dry-run=server", "-f", "-",
                                                             input=json.dumps(pod), check=False)).stderr and p),
            timeout=120)
        assert (f"Warning: NetworkAttachmentDefinition {APPS}/outside-net has 1 address-range finding"
                in warned.stderr), warned.stderr
    finally:
        cluster.kubectl("delete", "network-attachment-definitions", "outside-net", "-n", APPS, "--ignore-not-found")


def test_the_vip_pair_holds_its_address_by_lease_and_hands_it_over_on_stop(cluster):
    """The keepalived-free sample pair: the two managers contend for the Lease in the
    real apiserver, through the sample's RoleBinding to the chart's ClusterRole and the
    pod's own service-account token. The holder has the VIP on its net1 and its node's
    ENI; the manager runs as the webhook asked for these pods only (uid 0 with
    CAP_NET_ADMIN alone). Deleting the holder hands the VIP to the peer in about a
    second (tests/tests/floating_pair.rs samples both interfaces for split brain)."""
    sample = SAMPLES / "deployment-vip-pair.yaml"
    (vip,) = set(re.findall(r"ipmgmt.aws/floating-ips: (\S+)", sample.read_text()))
    cluster.kubectl("apply", "-f", sample)
    pods = cluster.wait_for_pods(APPS, "app=vip-pair", 2, is_ready)
    by_name = {p["metadata"]["name"]: p for p in pods}
    eni = {}
    for name, pod in by_name.items():
        ((_, (node_eni, _)),) = cluster.placed(pod).items()
        eni[name] = node_eni.id
        _, status = cluster.process(pod, MANAGER)
        assert status["Uid"].split() == ["0"] * 4, status["Uid"]
        assert int(status["CapEff"], 16) == 1 << 12 == int(status["CapBnd"], 16), "CAP_NET_ADMIN alone"
        assert status["NoNewPrivs"] == "1"
        (app,) = [c for c in pod["spec"]["containers"] if c["name"] == "app"]
        assert "add" not in app["securityContext"]["capabilities"], "the app needs no NET_ADMIN"

    def lease_holder():
        leases = cluster.cp.get(f"/apis/coordination.k8s.io/v1/namespaces/{APPS}/leases")["items"]
        held = [l["spec"].get("holderIdentity") for l in leases if l["metadata"]["name"].startswith("ipmgmt-vip-")]
        return held[0] if held and held[0] else None

    def on_net1(name):
        return vip in exec_app(cluster, name, "ip", "-o", "addr", "show", "dev", "net1").stdout

    holder = cluster.cp.wait_for("a holder of the Lease", lease_holder)
    (peer,) = [n for n in by_name if n != holder]
    cluster.vpc.wait_for(lambda h: h.get(vip) == [eni[holder]])
    assert on_net1(holder) and not on_net1(peer)

    # The holder deleted as a user would: it takes the VIP off and gives the Lease up.
    start = time.monotonic()
    cluster.kubectl("-n", APPS, "delete", "pod", holder, "--wait=false")
    cluster.vpc.wait_for(lambda h: h.get(vip) == [eni[peer]], timeout=30)
    took = time.monotonic() - start
    assert lease_holder() == peer
    assert on_net1(peer)
    print(f"the VIP on the peer's ENI {took:.2f} s after kubectl delete")
    # kubectl's round trips and kubelet's SIGTERM come before the manager's part.
    assert took < 5, took
    cluster.kubectl("delete", "-f", sample)


def test_a_vip_pod_without_the_lease_binding_says_which_rolebinding_to_add(cluster):
    """The sample pair under a ServiceAccount the RoleBinding does not name: the API
    server refuses its managers the Lease (403), and each says, in one line of its log,
    the exact command that binds the chart's ClusterRole to it. The pods still start:
    their own addresses are assigned; only the floating address waits."""
    sample = (SAMPLES / "deployment-vip-pair.yaml").read_text()
    (deployment,) = [d for d in sample.split("\n---\n") if "kind: Deployment" in d]
    unbound = (deployment.replace("name: vip-pair", "name: vip-unbound")
               .replace("app: vip-pair", "app: vip-unbound")
               .replace("serviceAccountName: vip-pair", "serviceAccountName: vip-unbound")
               .replace("ipmgmt.aws/floating-ips: 10.0.4.101", "ipmgmt.aws/floating-ips: 10.0.4.103")
               .replace("replicas: 2", "replicas: 1"))
    account = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: vip-unbound\n  namespace: multus-demo\n"
    cluster.kubectl("apply", "-f", "-", input=account + "---\n" + unbound)
    (pod,) = cluster.wait_for_pods(APPS, "app=vip-unbound", 1, is_ready)
    expected = ("kubectl -n multus-demo create rolebinding ipmgmt-floating --clusterrole=ipmgmt-floating "
                "--serviceaccount=multus-demo:vip-unbound")

    def said():
        log = cluster.kubectl("-n", APPS, "logs", pod["metadata"]["name"], "-c", MANAGER).stdout
        return expected in log and log

    log = cluster.cp.wait_for("the manager's RoleBinding line", said)
    assert sum(1 for line in log.splitlines() if "refused the pod's service account" in line) >= 1
    assert "10.0.4.103" not in cluster.vpc.holders(), "no Lease, no floating address"
    cluster.kubectl("-n", APPS, "delete", "deployment", "vip-unbound")
