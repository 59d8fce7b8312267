"""The reclaimer on a real control plane: the chart installs it with its RBAC, and the
reclaimer binary runs on this machine with the args of the chart's Deployment and the
token of the chart's ServiceAccount, so every list, watch, Lease write and Event is
the chart's own RBAC at work against kube-apiserver. EC2 is the fake (`fake-vpc`)
under `deploy/reclaimer-iam-policy.json`. The pods are admitted through the webhook;
their `network-status` is written as Multus writes it."""

import ipaddress
import json
import os
import subprocess
import time

import boto3
import pytest
import requests

from cluster.base import Fail
from cluster.control_plane import free_port
from cluster.installed import APPS, NAMESPACE, NODE, RELEASE, restricted_pod, start, stop
from cluster.vpc import Node, Vpc
from cluster_tools import tool
from webhook_harness import ROOT, TARGET

RECLAIMER_BIN = TARGET / "debug" / "ipmgmt-reclaimer"
# whereabouts' own CRDs (and ClusterRole), from its module source (scripts/cluster-tools).
IPPOOL_CRD = tool("whereabouts").parent.parent / "manifests.yaml"
# Multus's, with the NetworkAttachmentDefinition CRD the guard watches.
NAD_CRD = tool("multus").parent.parent / "manifests.yaml"
# Nodes that should carry a Multus ENI at device index 1 (the chart's default).
READY_LABEL = ("example.com/multus-eni", "expected")
# The range the guard's scene ends with, under an explicit reservation in eth1's subnet.
RESERVED = "10.0.4.192/26"
POLICY = ROOT / "deploy" / "reclaimer-iam-policy.json"
# What `ipmgmt check` needs, for the user who runs it (by the access key it signs with).
CHECK_KEY, CHECK_POLICY = "AKIACHECKTEST", ROOT / "deploy" / "check-iam-policy.json"
# The roles `ipmgmt check --iam-profile` tries, by their access keys: the IP manager's,
# the controller's, and a controller role whose policy lacks one action.
MANAGER_KEY, CONTROLLER_KEY, WANTING_KEY = "AKIAMANAGERROLE", "AKIACONTROLLERROLE", "AKIAWANTINGROLE"
WANTING = "ec2:UnassignIpv6Addresses"
# A controller role with deploy/reclaimer-reserve-iam-policy.json attached too, and
# one with deploy/reclaimer-attach-iam-policy.json.
RESERVING_KEY, ATTACHING_KEY = "AKIARESERVINGROLE", "AKIAATTACHINGROLE"
NODE1 = Node(1)
ETH1, ETH2 = NODE1.enis[1], NODE1.enis[2]
# The ranges whereabouts hands out from, one IPPool each: eth1's and eth2's subnets.
RANGES = [ipaddress.ip_network(n) for n in ("10.0.4.0/24", "10.0.5.0/24", "2001:db8:0:5::/64")]
GONE, LIVE = "10.0.4.66", "10.0.4.67"
# A floating IP in the same subnet: on the ENI, in no pod's network-status.
VIP = "10.0.4.100"
# A pod made after the apiserver's restart.
LATER = "10.0.4.68"
# A pod deleted gracefully, whose deletion a kubelet finishes later.
DRAINING = "10.0.4.69"
# A pod force-deleted, whose address whereabouts hands to the next pod on the node.
REUSED = "10.0.4.70"
# A pod gone while a dry-run replica leads.
REPORTED = "10.0.4.71"
# Pods gone from a namespace the reclaimer serves, and from one it does not.
SERVED, UNSERVED = "10.0.4.72", "10.0.4.73"
# Pods gone before any reclaimer saw them: only whereabouts' records remember them.
STALE = [f"10.0.4.{n}" for n in range(80, 86)]
# On eth2, whose primary IPv6 address IPAM once handed out too.
PRIMARY_V6, STALE_ON_ETH2 = "2001:db8:0:5::10", "10.0.5.80"
# eth1 carries the cluster's tag, eth2 does not.
CLUSTER_TAG = ("eks:cluster-name", "prod")
TAGGED, UNTAGGED = "10.0.4.86", "10.0.5.81"
# Recorded for a live pod whose network-status Multus has not written yet.
FRESH = "10.0.4.87"
# `ipmgmt check pod`: an address on its ENI, one on no ENI, one on the wrong ENI.
ON_ITS_ENI, ON_NO_ENI, ON_ETH2 = "10.0.4.90", "10.0.4.91", "10.0.4.92"


class HostReclaimer:
    """ipmgmt-reclaimer with the chart's args, as the chart's ServiceAccount."""

    def __init__(self, cp, tmp, ec2_port, name, flags=(), access_key="AKIARECLAIMERTEST"):
        """`flags`: `--name=value` in place of the chart's, as a changed chart value
        would render it. `access_key`: the role it signs as (the fake EC2 maps keys to
        policies)."""
        deployment = [d for d in cp.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments")["items"]
                      if d["metadata"]["name"].endswith("-reclaimer")][0]
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        kubeconfig = cp.token_kubeconfig(tmp / f"{name}.kubeconfig", NAMESPACE, spec["serviceAccountName"],
                                         expiration=3600)
        self.admin_port = free_port()
        flags = [f"--admin-listen=127.0.0.1:{self.admin_port}", *flags]
        names = {f.split("=", 1)[0] for f in flags}
        args = [a for a in container["args"] if a.split("=", 1)[0] not in names] + flags
        env = {"PATH": os.environ["PATH"], "KUBECONFIG": str(kubeconfig), "POD_NAME": name,
               "POD_NAMESPACE": NAMESPACE, "AWS_REGION": "us-west-2",
               "AWS_ENDPOINT_URL_EC2": f"http://127.0.0.1:{ec2_port}",
               "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": "reclaimer-secret",
               "AWS_EC2_METADATA_DISABLED": "true"}
        self.log_path = tmp / f"{name}.log"
        self.args, self.env = args, env
        self.start()

    def start(self):
        """Starts it (again, after `stop`), appending to its log."""
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([str(RECLAIMER_BIN), *self.args], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=self.log)

    def metric(self, series):
        """One sample of the reclaimer's metrics, `name{labels}`; 0 when absent."""
        text = requests.get(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def check(self):
        if self.proc.poll() is not None:
            raise Fail(f"the reclaimer exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    assert RECLAIMER_BIN.exists(), f"{RECLAIMER_BIN} is missing: build the workspace first (cargo build --workspace)"
    tmp = tmp_path_factory.mktemp("control-plane-reclaimer")
    on_eth1 = [GONE, LIVE, VIP, LATER, DRAINING, REUSED, REPORTED, SERVED, UNSERVED, *STALE, TAGGED, FRESH,
               ON_ITS_ENI]
    wanting = json.loads(POLICY.read_text())
    for statement in wanting["Statement"]:
        statement["Action"] = [a for a in statement["Action"] if a != WANTING]
    (tmp / "wanting-policy.json").write_text(json.dumps(wanting))
    reserving = json.loads(POLICY.read_text())
    reserving["Statement"] += json.loads((ROOT / "deploy" / "reclaimer-reserve-iam-policy.json").read_text())["Statement"]
    (tmp / "reserving-policy.json").write_text(json.dumps(reserving))
    attaching = json.loads(POLICY.read_text())
    attaching["Statement"] += json.loads((ROOT / "deploy" / "reclaimer-attach-iam-policy.json").read_text())["Statement"]
    (tmp / "attaching-policy.json").write_text(json.dumps(attaching))
    vpc = Vpc([NODE1], tmp, iam_policy=POLICY,
              held=[(ETH1.id, a) for a in on_eth1] + [(ETH2.id, STALE_ON_ETH2), (ETH2.id, UNTAGGED),
                                                      (ETH2.id, ON_ETH2)],
              tags=[(ETH1.id, *CLUSTER_TAG)], primary_ipv6=[(ETH2.id, PRIMARY_V6)],
              reservations=[("subnet-net1", RESERVED)],
              policies_by_key=[(CHECK_KEY, CHECK_POLICY), (MANAGER_KEY, ROOT / "deploy" / "iam-policy.json"),
                               (CONTROLLER_KEY, POLICY), (WANTING_KEY, tmp / "wanting-policy.json"),
                               (RESERVING_KEY, tmp / "reserving-policy.json"),
                               (ATTACHING_KEY, tmp / "attaching-policy.json")])
    cp = None
    reclaimer = None
    try:
        cp = start(tmp, "own-certificate",
                   sets=["reclaimer.enabled=true", "reclaimer.grace=2s", "reclaimer.interval=1s",
                         # Node readiness for the nodes labelled so (only the readiness
                         # scene adds one), checked every 2 s.
                         f"reclaimer.readiness.nodeSelector.{READY_LABEL[0].replace('.', chr(92) + '.')}={READY_LABEL[1]}",
                         "reclaimer.readiness.interval=2s"])
        cp.kubectl("apply", "--server-side", "-f", IPPOOL_CRD)
        cp.kubectl("apply", "--server-side", "-f", NAD_CRD)
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/ippools.whereabouts.cni.cncf.io",
                   "crd/network-attachment-definitions.k8s.cni.cncf.io")
        reclaimer = HostReclaimer(cp, tmp, vpc.port, "reclaimer-on-this-machine")
        yield cp, vpc, reclaimer
    finally:
        if reclaimer:
            reclaimer.stop()
        if cp:
            stop(cp)
        vpc.stop()


def multus_pod(name, namespace=APPS):
    """An init-mode pod on node 1 with one ipvlan network, as the samples declare it."""
    pod = restricted_pod(name, {"ipmgmt.aws/mode": "init", "k8s.v1.cni.cncf.io/networks": "ipvlan-net1"}, node=NODE)
    pod["metadata"]["namespace"] = namespace
    return pod


def attached(cp, name, address, namespace=APPS):
    """The pod created, admitted through the webhook, with the network-status Multus
    writes once its network is attached."""
    pod = cp.create(f"/api/v1/namespaces/{namespace}/pods", multus_pod(name, namespace))
    assert pod["spec"]["initContainers"][0]["name"] == "aws-ip-mgmt", "admitted through the webhook"
    cp.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}",
               {"metadata": {"annotations": {"k8s.v1.cni.cncf.io/network-status": network_status(address)}}},
               content_type="application/merge-patch+json")


def force_delete(cp, name, namespace=APPS):
    cp.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", {"gracePeriodSeconds": 0})


def calls_since(vpc, mark, action, code=None):
    """EC2 calls of `action` since the log held `mark` entries (with `code`: refused so)."""
    return [e for e in vpc.log()[mark:] if e["action"] == action and (code is None or e.get("code") == code)]


def unassigns_since(vpc, mark):
    return calls_since(vpc, mark, "UnassignPrivateIpAddresses")


def pool_of(address):
    """The range `address` is handed out from, and the path of its IPPool."""
    address = ipaddress.ip_address(address)
    (net,) = [n for n in RANGES if address in n]
    name = str(net).replace("/", "-").replace(":", "-")
    return net, f"/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/kube-system/ippools/{name}"


def record(cp, address, pod, keep=True):
    """whereabouts' allocation record of `address` for `pod` (namespace/name) in the
    IPPool of its range; with `keep` False, the record removed."""
    net, path = pool_of(address)
    if cp.get(path, raw=True).status_code == 404:
        cp.create(path.rsplit("/", 1)[0], {
            "apiVersion": "whereabouts.cni.cncf.io/v1alpha1", "kind": "IPPool",
            "metadata": {"name": path.rsplit("/", 1)[1], "namespace": "kube-system"},
            "spec": {"range": str(net), "allocations": {}}})
    offset = str(int(ipaddress.ip_address(address)) - int(net.network_address))
    entry = {"id": f"c-{offset}", "podref": pod, "ifname": "net1"} if keep else None
    cp.request("PATCH", path, {"spec": {"allocations": {offset: entry}}}, content_type="application/merge-patch+json")


def network_status(address):
    """The annotation Multus writes once the pod's networks are attached."""
    return json.dumps([
        {"name": "aws-cni", "interface": "eth0", "ips": ["192.168.1.5"], "default": True},
        {"name": f"{APPS}/ipvlan-net1", "interface": "net1", "ips": [address], "mac": ETH1.mac},
    ])


def test_the_reclaimer_releases_only_the_address_of_a_pod_that_is_gone(cluster):
    cp, vpc, reclaimer = cluster
    for name, address in (("gone", GONE), ("live", LIVE)):
        attached(cp, name, address)

    # The chart's reclaimer pods pass the namespace's restricted Pod Security profile.
    assert cp.wait_for("the reclaimer Deployment's pods", lambda: [
        p for p in cp.get(f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "reclaimer"])

    # It leads through the chart's Lease, written with the chart's RBAC.
    lease = cp.wait_for("the reclaimer holding its Lease", lambda: [
        item for item in cp.get(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases")["items"]
        if item["spec"].get("holderIdentity") == "reclaimer-on-this-machine"] or reclaimer.check(), timeout=60)
    assert lease
    # Both pods are seen (their claims), and nothing is released while they live.
    time.sleep(4)
    reclaimer.check()
    holders = vpc.holders()
    assert holders.get(GONE) == [ETH1.id] and holders.get(LIVE) == [ETH1.id], holders

    # The node died and the pod was force-deleted: its address goes after the grace.
    force_delete(cp, "gone")
    vpc.wait_for(lambda h: GONE not in h, timeout=60)
    holders = vpc.holders()
    assert holders.get(LIVE) == [ETH1.id], "the live pod's address stays"
    assert holders.get(VIP) == [ETH1.id], "a floating IP, which IPAM never handed out, is never released"
    assert reclaimer.metric('ipmgmt_reclaimer_addresses{verdict="not_from_ipam"}') >= 1, "the VIP, seen and left"
    assert holders.get(f"10.0.4.{10 * NODE1.n}") == [ETH1.id], "the ENI's primary stays"
    unassigns = [e for e in vpc.log() if e["action"] == "UnassignPrivateIpAddresses"]
    assert [e["eni"] for e in unassigns] == [ETH1.id], unassigns
    events = cp.wait_for("an AddressReleased Event", lambda: [
        e for e in cp.get("/api/v1/events")["items"] if e["reason"] == "AddressReleased"])
    assert any(GONE in e["message"] for e in events), [e["message"] for e in events]
    reclaimer.check()


def test_a_replica_stopping_hands_the_lease_over_at_once(cluster, tmp_path):
    """Two replicas through the real Lease: the one that stops gives the Lease up, and
    the other holds it well before the lease duration (15 s) runs out."""
    cp, vpc, reclaimer = cluster
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"

    def holder():
        lease = cp.get(f"{leases}/{RELEASE}-reclaimer", raw=True)
        return lease.status_code == 200 and lease.json()["spec"].get("holderIdentity")

    assert cp.wait_for("the first replica leading", lambda: holder() == "reclaimer-on-this-machine")
    second = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-second")
    try:
        time.sleep(3)
        second.check()
        assert holder() == "reclaimer-on-this-machine", "the second replica waits"
        reclaimer.stop()
        stopped = time.monotonic()
        cp.wait_for("the second replica leading", lambda: holder() == "reclaimer-second", timeout=30)
        assert time.monotonic() - stopped < 10, "handed over, not expired"
        second.check()
        assert vpc.holders().get(LIVE) == [ETH1.id]
    finally:
        second.stop()


def test_compacted_history_and_a_restarted_apiserver_release_nothing_by_mistake(cluster, tmp_path):
    """etcd's history compacted and the apiserver restarted: the reclaimer's watches
    are cut, resume from a resourceVersion that is gone (410) and list again. Nothing
    claimed is released meanwhile, and a pod gone after the restart still has its
    address released. (A replica of its own: the one above may have been stopped.)"""
    cp, vpc, _ = cluster
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-across-restart")
    try:
        compacted_history_scene(cp, vpc, replica)
    finally:
        replica.stop()


def compacted_history_scene(cp, vpc, replica):
    attached(cp, "later", LATER)
    time.sleep(3)
    compacted = cp.compact_and_restart_apiserver()
    stale = cp.request("GET", f"/api/v1/namespaces/{APPS}/pods", raw=True, watch="true",
                       resourceVersion=str(compacted - 1), timeoutSeconds="1")
    assert '"code":410' in stale.text, "history before the compaction is gone"
    # Several sweeps past the grace, across the relist.
    time.sleep(6)
    holders = vpc.holders()
    for address in (LIVE, VIP, LATER):
        assert holders.get(address) == [ETH1.id], (address, holders)

    force_delete(cp, "later")
    vpc.wait_for(lambda h: LATER not in h, timeout=60)
    assert vpc.holders().get(LIVE) == [ETH1.id]
    replica.check()


def test_a_pod_past_its_deletion_timestamp_keeps_its_address_until_it_is_gone(cluster, tmp_path):
    """A graceful delete only marks the pod (deletionTimestamp): on a node that has
    not finished stopping it, its containers may still run. The address stays, past
    the reclaimer's grace, until the kubelet's final delete removes the object (played
    here: no kubelet runs these pods)."""
    cp, vpc, _ = cluster
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-draining")
    try:
        attached(cp, "draining", DRAINING)
        time.sleep(3)
        cp.request("DELETE", f"/api/v1/namespaces/{APPS}/pods/draining", {"gracePeriodSeconds": 30})
        marked = cp.get(f"/api/v1/namespaces/{APPS}/pods/draining")
        assert marked["metadata"].get("deletionTimestamp"), "still there, marked for deletion"
        # Several sweeps, well past the 2 s grace.
        time.sleep(6)
        replica.check()
        assert vpc.holders().get(DRAINING) == [ETH1.id], "kept while the pod may still run"
        # The kubelet's last word: the object goes.
        force_delete(cp, "draining")
        vpc.wait_for(lambda h: DRAINING not in h, timeout=60)
        replica.check()
    finally:
        replica.stop()


def test_an_address_handed_to_the_next_pod_within_the_grace_is_kept(cluster, tmp_path):
    """A pod force-deleted, and its address handed by whereabouts to the next pod on
    the node before the grace is over: the new pod's claim stands, nothing is
    released."""
    cp, vpc, _ = cluster
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-reuse")
    mark = len(vpc.log())
    try:
        for name in ("first-holder", "next-holder"):
            attached(cp, name, REUSED)
            if name == "first-holder":
                time.sleep(3)
                force_delete(cp, name)
                time.sleep(1)
        # Several sweeps, well past the 2 s grace.
        time.sleep(8)
        replica.check()
        assert vpc.holders().get(REUSED) == [ETH1.id], "claimed again by the next pod"
        assert not unassigns_since(vpc, mark), "never released"
    finally:
        replica.stop()


def test_a_dry_run_reports_with_an_event_and_changes_nothing(cluster, tmp_path):
    """The chart's reclaimer.dryRun (`--dry-run=true`): a gone pod's address is
    reported, as an Event `kubectl get events` shows and a metric, and stays."""
    cp, vpc, _ = cluster
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-dry-run", ["--dry-run=true"])
    mark = len(vpc.log())
    try:
        attached(cp, "reported", REPORTED)
        time.sleep(3)
        force_delete(cp, "reported")
        events = cp.wait_for("an AddressWouldBeReleased Event", lambda: [
            e for e in cp.get("/api/v1/events")["items"]
            if e["reason"] == "AddressWouldBeReleased" and REPORTED in e["message"]], timeout=60)
        assert events[0]["message"].startswith(f"would release {REPORTED} from {ETH1.id}"), events[0]["message"]
        shown = cp.kubectl("get", "events", "-A", "--field-selector", "reason=AddressWouldBeReleased").stdout
        assert REPORTED in shown, shown
        time.sleep(4)
        replica.check()
        assert vpc.holders().get(REPORTED) == [ETH1.id] and not unassigns_since(vpc, mark)
        assert replica.metric('ipmgmt_reclaimer_releases_total{result="dry_run"}') >= 1
    finally:
        replica.stop()


def test_only_namespaces_the_reclaimer_serves_have_their_addresses_released(cluster, tmp_path):
    """A namespace outside the reclaimer's namespace selector (as the chart renders the
    webhook's): its gone pod's address stays; a served namespace's goes."""
    cp, vpc, _ = cluster
    cp.kubectl("create", "namespace", "other-team")
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-served", [
        "--namespace-selector=kubernetes.io/metadata.name notin (kube-system,ipmgmt-system,other-team)"])
    mark = len(vpc.log())
    try:
        attached(cp, "served", SERVED)
        attached(cp, "unserved", UNSERVED, namespace="other-team")
        time.sleep(3)
        force_delete(cp, "served")
        force_delete(cp, "unserved", namespace="other-team")
        vpc.wait_for(lambda h: SERVED not in h, timeout=60)
        time.sleep(4)
        replica.check()
        assert vpc.holders().get(UNSERVED) == [ETH1.id], "a namespace the reclaimer does not serve"
        assert len(unassigns_since(vpc, mark)) == 1, "the served pod's address only"
        assert replica.metric('ipmgmt_reclaimer_releases_total{result="released"}') == 1
    finally:
        replica.stop()


def test_throttled_ec2_slows_sweeps_down_and_fails_nothing(cluster, tmp_path):
    """Six stale addresses, remembered only by whereabouts' records, with EC2 answering
    60% of calls RequestLimitExceeded and the reclaimer allowed 3 releases a sweep and
    2 attempts a call: every one is released in time, nothing else, no sweep fails."""
    cp, vpc, _ = cluster
    for n, address in enumerate(STALE):
        record(cp, address, f"{APPS}/gone-{n}")
    mark = len(vpc.log())
    vpc.set_faults(throttle_fraction=0.6)
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-throttled",
                            ["--max-releases-per-sweep=3", "--ec2-max-attempts=2"])
    try:
        vpc.wait_for(lambda h: not any(a in h for a in STALE), timeout=90)
        vpc.set_faults()
        holders = vpc.holders()
        assert holders.get(LIVE) == [ETH1.id] and holders.get(VIP) == [ETH1.id]
        throttled = [e for e in vpc.log()[mark:] if e.get("code") == "RequestLimitExceeded"]
        assert throttled, "EC2 throttled"
        replica.check()
        assert replica.metric('ipmgmt_reclaimer_sweeps_total{result="throttled"}') >= 1
        assert replica.metric('ipmgmt_reclaimer_sweeps_total{result="failed"}') == 0
        assert replica.metric('ipmgmt_reclaimer_releases_total{result="released"}') == len(STALE)
    finally:
        vpc.set_faults()
        replica.stop()


def test_the_enis_primary_ipv6_is_never_released(cluster, tmp_path):
    """IPAM once handed out eth2's primary IPv6 address (a range over the whole /64),
    to a pod now gone: its IPv4 address is released, the primary never asked for."""
    cp, vpc, _ = cluster
    record(cp, STALE_ON_ETH2, f"{APPS}/v6-gone")
    record(cp, PRIMARY_V6, f"{APPS}/v6-gone")
    mark = len(vpc.log())
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-primary-v6")
    try:
        vpc.wait_for(lambda h: STALE_ON_ETH2 not in h, timeout=60)
        time.sleep(4)
        replica.check()
        assert vpc.holders().get(PRIMARY_V6) == [ETH2.id]
        assert not calls_since(vpc, mark, "UnassignIpv6Addresses"), "never asked"
    finally:
        replica.stop()


def test_with_a_cluster_tag_only_enis_carrying_it_are_swept(cluster, tmp_path):
    """aws.clusterTag (`--cluster-tag`): eth1 carries the tag, eth2 does not and so, as
    far as the reclaimer may know, belongs to another cluster sharing the account."""
    cp, vpc, _ = cluster
    record(cp, TAGGED, f"{APPS}/tagged-gone")
    record(cp, UNTAGGED, f"{APPS}/untagged-gone")
    mark = len(vpc.log())
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-cluster-tag",
                            [f"--cluster-tag={CLUSTER_TAG[0]}={CLUSTER_TAG[1]}"])
    try:
        vpc.wait_for(lambda h: TAGGED not in h, timeout=60)
        time.sleep(4)
        replica.check()
        assert vpc.holders().get(UNTAGGED) == [ETH2.id], "an ENI without the cluster's tag is never swept"
        assert [e["eni"] for e in unassigns_since(vpc, mark)] == [ETH1.id]
    finally:
        replica.stop()
        record(cp, UNTAGGED, None, keep=False)


def test_a_whereabouts_record_of_a_live_pod_claims_before_its_network_status(cluster, tmp_path):
    """A live pod that Multus has not written a network-status for yet (and that asked
    for no network by annotation: a namespace's default network): whereabouts' record
    alone ties it to its address, which stays."""
    cp, vpc, _ = cluster
    cp.create(f"/api/v1/namespaces/{APPS}/pods", restricted_pod("app-new", {"ipmgmt.aws/mode": "init"}, node=NODE))
    record(cp, FRESH, f"{APPS}/app-new")
    mark = len(vpc.log())
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-fresh")
    try:
        time.sleep(8)
        replica.check()
        assert vpc.holders().get(FRESH) == [ETH1.id]
        assert not unassigns_since(vpc, mark)
    finally:
        replica.stop()


def nad(cp, name, config, namespace=APPS):
    """A NetworkAttachmentDefinition made or replaced, as `kubectl apply` would."""
    body = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"config": json.dumps(config)}}
    path = f"/apis/k8s.cni.cncf.io/v1/namespaces/{namespace}/network-attachment-definitions"
    cp.request("PATCH", f"{path}/{name}?fieldManager=test&force=true", body,
               content_type="application/apply-patch+yaml")


def ipvlan_on_eth1(ipam):
    return {"cniVersion": "0.3.1", "type": "ipvlan", "master": "eth1", "mode": "l2", "ipam": ipam}


def nad_events(cp, name, reason):
    return [e for e in cp.get(f"/apis/events.k8s.io/v1/namespaces/{APPS}/events")["items"]
            if e["regarding"].get("name") == name and e["reason"] == reason]


def test_the_guard_tells_on_a_nad_whose_range_does_not_fit_and_again_once_it_does(cluster, tmp_path):
    """The chart's reclaimer with its guard on (the default): a NAD in a served namespace
    whose whereabouts range the VPC cannot route to eth1 gets a Warning Event that
    `kubectl describe` shows, naming the subnet and what to do, and a metric; fixed,
    it gets one Normal Event and the metric goes; a NAD in a namespace the webhook does
    not serve is not judged."""
    cp, vpc, first = cluster
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-guard")
    try:
        # The module's replica may still lead (when this scene runs alone); the guard
        # runs in whichever does, and so do its metrics.
        names = ("reclaimer-on-this-machine", "reclaimer-guard")
        (holder,) = cp.wait_for("a reclaimer leading", lambda: [
            h for item in cp.get(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases")["items"]
            if (h := item["spec"].get("holderIdentity")) in names], timeout=60)
        guarded(cp, vpc, replica if holder == "reclaimer-guard" else first)
    finally:
        replica.stop()


def guarded(cp, vpc, reclaimer):
    nad(cp, "outside", ipvlan_on_eth1({"type": "whereabouts", "range": "10.0.6.0/24"}))
    # kube-system is outside the webhook's namespaces, as the chart renders them.
    nad(cp, "outside", ipvlan_on_eth1({"type": "whereabouts", "range": "10.0.6.0/24"}), namespace="kube-system")
    (event,) = cp.wait_for("an AddressRangeProblem Event on the NAD", lambda: (
        nad_events(cp, "outside", "AddressRangeProblem") or reclaimer.check()), timeout=60)
    assert event["type"] == "Warning"
    assert event["regarding"]["kind"] == "NetworkAttachmentDefinition", event["regarding"]
    assert "range 10.0.6.1-10.0.6.254 is not inside subnet-net1 (10.0.4.0/24)" in event["note"], event["note"]
    assert "pick a range inside 10.0.4.0/24" in event["note"], event["note"]
    described = cp.kubectl("describe", "network-attachment-definitions", "-n", APPS, "outside").stdout
    assert "AddressRangeProblem" in described and "subnet-net1" in described, described

    # The findings reach the webhook through the chart's ConfigMap (written with the
    # chart's RBAC), and a pod that asks for the NAD is admitted with a warning that
    # kubectl prints; a pod asking for another network gets none.
    published = cp.wait_for("the findings in the guard's ConfigMap", lambda: (
        (text := cp.webhook.project_guard(cp)) and f"{APPS}/outside" in text and text), timeout=30)
    assert "kube-system/outside" not in published
    pod = multus_pod("asks-for-outside")
    pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = "outside"
    warned = cp.wait_for("kubectl's warning about the NAD", lambda: (
        "has 1 address-range finding" in (p := cp.kubectl("create", "--dry-run=server", "-f", "-",
                                                          input=json.dumps(pod))).stderr and p), timeout=30)
    assert (f"Warning: NetworkAttachmentDefinition {APPS}/outside has 1 address-range finding: "
            f"kubectl describe network-attachment-definitions -n {APPS} outside") in warned.stderr, warned.stderr
    assert "created (server dry run)" in warned.stdout, warned.stdout
    quiet = cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(multus_pod("asks-for-net1")))
    assert "address-range" not in quiet.stderr, quiet.stderr
    series = f'ipmgmt_reclaimer_guard_findings{{namespace="{APPS}",name="outside"}}'
    assert reclaimer.metric(series) >= 1
    assert not [e for e in cp.get("/apis/events.k8s.io/v1/namespaces/kube-system/events")["items"]
                if e["regarding"].get("kind") == "NetworkAttachmentDefinition"], "kube-system is not served"

    # Inside the subnet, but on AWS's reserved addresses and with nothing reserved
    # for it: the same NAD, its new findings.
    nad(cp, "outside", ipvlan_on_eth1({"type": "whereabouts", "range": "10.0.4.0/25"}))
    notes = cp.wait_for("the NAD's new findings", lambda: [
        e["note"] for e in nad_events(cp, "outside", "AddressRangeProblem") if "10.0.4.1-10.0.4.126" in e["note"]],
        timeout=60)
    assert "10.0.4.1, one of the five addresses AWS reserves in subnet-net1" in notes[0], notes[0]
    assert "create-subnet-cidr-reservation" in notes[0], notes[0]

    # Fixed: inside the subnet and its explicit reservation.
    nad(cp, "outside", ipvlan_on_eth1({"type": "whereabouts", "range": RESERVED}))
    (ok,) = cp.wait_for("an AddressRangeOk Event", lambda: nad_events(cp, "outside", "AddressRangeOk"), timeout=60)
    assert ok["type"] == "Normal"
    assert reclaimer.metric(series) == 0
    assert cp.webhook.project_guard(cp) == "{}"
    cp.wait_for("the pod admitted without the warning", lambda: "address-range" not in cp.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(pod)).stderr, timeout=30)
    guard_calls = [e["action"] for e in vpc.log() if e["action"] in ("DescribeSubnets", "GetSubnetCidrReservations")]
    assert guard_calls and not [e for e in vpc.log() if e.get("code") == "UnauthorizedOperation"
                                and e["action"] in ("DescribeSubnets", "GetSubnetCidrReservations")], \
        "the reclaimer's policy allows the guard's calls"


def test_the_guard_reserves_a_nads_range_when_allowed_and_says_why_not_when_not(cluster, tmp_path):
    """reclaimer.guard.reserveRanges: a NAD whose only finding is a range no explicit
    reservation covers gets one. Under the reclaimer's policy alone, EC2 refuses: a
    Warning Event naming the policy to attach, and nothing reserved. With the
    reservation policy attached, the range's CIDR is reserved (described with the
    NAD's name), an AddressRangeReserved Event says so, and the NAD has no finding left.
    A range with another mistake is never reserved. (The module's replica steps down
    for the scene; these replicas run in dry run, so only their guard acts.)"""
    cp, vpc, first = cluster
    flags = ("--guard-reserve-ranges=true", "--dry-run=true", "--guard-interval=30s", "--guard-configmap=")
    before = len(vpc.world()["reservations"])
    first.stop()
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-not-allowed", flags)
    try:
        nad(cp, "unreserved", ipvlan_on_eth1({"type": "whereabouts", "range": "10.0.4.160/27"}))
        # Inside, but on AWS's reserved addresses too: never reserved.
        nad(cp, "low", ipvlan_on_eth1({"type": "whereabouts", "range": "10.0.4.0/27"}))
        (refused,) = cp.wait_for("an AddressRangeNotReserved Event", lambda: (
            nad_events(cp, "unreserved", "AddressRangeNotReserved") or replica.check()), timeout=60)
        assert refused["type"] == "Warning"
        assert refused["note"].startswith("CreateSubnetCidrReservation 10.0.4.160/27 in subnet-net1: "
                                          "UnauthorizedOperation: "), refused["note"]
        assert "deploy/reclaimer-reserve-iam-policy.json" in refused["note"], refused["note"]
        assert len(vpc.world()["reservations"]) == before
        assert replica.metric('ipmgmt_reclaimer_guard_reservations_total{result="refused"}') >= 1
        # Asked again only after the interval, not at every pass (the second NAD's
        # change made one).
        time.sleep(3)
        assert len(nad_events(cp, "unreserved", "AddressRangeNotReserved")) == 1
        replica.stop()

        replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-reserving", flags, access_key=RESERVING_KEY)
        (reserved,) = cp.wait_for("an AddressRangeReserved Event", lambda: (
            nad_events(cp, "unreserved", "AddressRangeReserved") or replica.check()), timeout=60)
        assert reserved["type"] == "Normal"
        assert reserved["note"].startswith("reserved 10.0.4.160/27 in subnet-net1 (an explicit subnet CIDR "
                                           "reservation)"), reserved["note"]
        made = [r for r in vpc.world()["reservations"] if r["cidr"] == "10.0.4.160/27"]
        assert made == [{"subnet": "subnet-net1", "cidr": "10.0.4.160/27", "kind": "explicit",
                         "description": f"ipmgmt: NetworkAttachmentDefinition {APPS}/unreserved"}], made
        assert replica.metric('ipmgmt_reclaimer_guard_reservations_total{result="created"}') == 1
        # Judged again at once: its one finding is gone (its earlier findings, if this
        # replica reported them, end with AddressRangeOk).
        series = f'ipmgmt_reclaimer_guard_findings{{namespace="{APPS}",name="unreserved"}}'
        cp.wait_for("no finding left", lambda: replica.metric(series) == 0 and replica.metric(
            f'ipmgmt_reclaimer_guard_findings{{namespace="{APPS}",name="low"}}') >= 1, timeout=30)
        assert not [r for r in vpc.world()["reservations"] if r["cidr"].startswith("10.0.4.0")]
        assert not nad_events(cp, "low", "AddressRangeReserved")
    finally:
        replica.stop()
        for name in ("unreserved", "low"):
            cp.kubectl("delete", "network-attachment-definitions", name, "-n", APPS, "--ignore-not-found")
        world = vpc.world()
        world["reservations"] = [r for r in world["reservations"] if r["cidr"] != "10.0.4.160/27"]
        vpc.set_world(world)
        first.start()


def test_a_node_without_its_multus_eni_is_tainted_until_it_has_one(cluster, tmp_path):
    """Node readiness, with the chart's flags and RBAC: a node that should carry a
    Multus ENI and has none keeps the NoSchedule taint, so the scheduler places no
    ordinary pod there (a pod that tolerates everything, as Multus's DaemonSet does,
    still lands); the ENI attached and tagged, the taint goes and the waiting pod is
    scheduled; the ENI detached, the taint is back. Each change is an Event."""
    cp, vpc, _ = cluster
    # A replica of its own with the chart's flags: earlier scenes may have stopped the
    # module's. Whichever replica leads runs the loop.
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-readiness")
    node = Node(2)
    cp.add_node(node.name, node.provider_id, labels=dict([READY_LABEL]))
    pending = restricted_pod("wants-node-2")
    pending["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node.name}
    tolerant = restricted_pod("tolerates-all")
    tolerant["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node.name}
    tolerant["spec"]["tolerations"] = [{"operator": "Exists"}]

    def taints():
        return [t for t in cp.get(f"/api/v1/nodes/{node.name}")["spec"].get("taints", [])
                if t["key"] == "ipmgmt.aws/multus-eni-missing"]

    def node_events(reason):
        return [e for e in cp.get("/apis/events.k8s.io/v1/namespaces/default/events")["items"]
                if e["regarding"].get("name") == node.name and e["reason"] == reason]

    try:
        (taint,) = cp.wait_for("the Multus-ENI taint on the new node", taints, timeout=30)
        assert taint["effect"] == "NoSchedule"
        # (add_node clears the taints the apiserver puts on a new Node, so the taint
        # may be written twice.)
        event = cp.wait_for("a MultusEniMissing Event", lambda: node_events("MultusEniMissing"), timeout=30)[0]
        assert event["type"] == "Warning"
        assert event["note"].startswith("no Multus ENI at device index 1 (attached to the node's instance and "
                                        "tagged node.k8s.amazonaws.com/no_manage=true)"), event["note"]
        for pod in (pending, tolerant):
            cp.create(f"/api/v1/namespaces/{APPS}/pods", pod)
        cp.wait_for("the tolerant pod bound to the node", lambda: cp.get(
            f"/api/v1/namespaces/{APPS}/pods/tolerates-all")["spec"].get("nodeName") == node.name, timeout=30)
        (condition,) = cp.wait_for("the other pod unschedulable", lambda: [
            c for c in cp.get(f"/api/v1/namespaces/{APPS}/pods/wants-node-2").get("status", {}).get("conditions", [])
            if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"], timeout=30)
        assert "1 node(s) had untolerated taint" in condition["message"], condition["message"]

        # Someone attaches and tags the ENI.
        world = vpc.world()
        world["instances"].append({"id": node.instance_id, "instance_type": "m5.large",
                                   "private_dns_name": node.name})
        eni = node.enis[1]
        world["enis"].append({"id": eni.id, "instance_id": node.instance_id, "device_index": 1, "mac": eni.mac,
                              "subnet_id": eni.subnet, "ipv4": ["10.0.4.20"], "ipv6": [],
                              "tags": [["node.k8s.amazonaws.com/no_manage", "true"]]})
        vpc.set_world(world)
        cp.wait_for("the taint gone", lambda: not taints(), timeout=30)
        (ready,) = cp.wait_for("a MultusEnisReady Event", lambda: node_events("MultusEnisReady"), timeout=30)
        assert ready["type"] == "Normal"
        cp.wait_for("the waiting pod scheduled", lambda: cp.get(
            f"/api/v1/namespaces/{APPS}/pods/wants-node-2")["spec"].get("nodeName") == node.name, timeout=60)

        # Detached again: the taint is back, with a new Event.
        missing_before = len(node_events("MultusEniMissing"))
        world["enis"] = [e for e in world["enis"] if e["id"] != eni.id]
        vpc.set_world(world)
        cp.wait_for("the taint back", taints, timeout=30)
        cp.wait_for("a new MultusEniMissing Event", lambda: len(node_events("MultusEniMissing")) > missing_before,
                    timeout=30)
    finally:
        replica.stop()
        for name in ("wants-node-2", "tolerates-all"):
            cp.request("DELETE", f"/api/v1/namespaces/{APPS}/pods/{name}", {"gracePeriodSeconds": 0}, raw=True)
        cp.request("DELETE", f"/api/v1/nodes/{node.name}", raw=True)


def test_with_attach_on_a_node_gets_its_multus_eni_from_the_controller(cluster, tmp_path):
    """reclaimer.readiness.attach: a node that joins without its Multus ENI gets one
    made in the subnet of its zone, tagged, attached at the device index and deleted
    with the instance, and so is never left tainted; an Event on the node says so. A
    node in a zone the description has no subnet for stays tainted, with a Warning
    Event naming the zone. (The module's replica steps down for the scene.)"""
    cp, vpc, first = cluster
    attach = json.dumps({"deviceIndex": 1, "subnets": {"us-west-2a": "subnet-net1"},
                         "securityGroups": ["sg-0multus"]})
    served, elsewhere = Node(3), Node(4)
    world = vpc.world()
    for node in (served, elsewhere):
        world["instances"].append({"id": node.instance_id, "instance_type": "m5.large",
                                   "private_dns_name": node.name})
    vpc.set_world(world)
    first.stop()
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-attaching", (f"--readiness-attach={attach}",),
                            access_key=ATTACHING_KEY)

    def node_events(node, reason):
        return [e for e in cp.get("/apis/events.k8s.io/v1/namespaces/default/events")["items"]
                if e["regarding"].get("name") == node.name and e["reason"] == reason]

    def taints(node):
        return [t for t in cp.get(f"/api/v1/nodes/{node.name}")["spec"].get("taints", [])
                if t["key"] == "ipmgmt.aws/multus-eni-missing"]

    try:
        cp.add_node(served.name, served.provider_id, labels=dict([READY_LABEL]))
        cp.add_node(elsewhere.name, elsewhere.provider_id,
                    labels={**dict([READY_LABEL]), "topology.kubernetes.io/zone": "us-west-2b"})
        (attached,) = cp.wait_for("a MultusEniAttached Event", lambda: (
            node_events(served, "MultusEniAttached") or replica.check()), timeout=60)
        assert attached["type"] == "Normal"
        (eni,) = [e for e in vpc.world()["enis"] if e["instance_id"] == served.instance_id]
        assert attached["note"] == (f"attached {eni['id']} (created in subnet-net1, deleted with the instance) "
                                    "at device index 1"), attached["note"]
        assert (eni["device_index"], eni["subnet_id"], eni["delete_on_termination"]) == (1, "subnet-net1", True)
        assert ["node.k8s.amazonaws.com/no_manage", "true"] in eni["tags"], eni
        assert ["ipmgmt.aws/attached-for", f"{served.instance_id}/1"] in eni["tags"], eni
        # Attached in the pass that found it missing, before the taints were decided:
        # never tainted.
        assert not taints(served) and not node_events(served, "MultusEniMissing")
        assert replica.metric('ipmgmt_reclaimer_readiness_attachments_total{result="attached"}') == 1

        (refused,) = cp.wait_for("a MultusEniNotAttached Event", lambda: node_events(elsewhere, "MultusEniNotAttached"),
                                 timeout=30)
        assert refused["type"] == "Warning"
        assert refused["note"].startswith("no subnet for zone us-west-2b at device index 1"), refused["note"]
        cp.wait_for("the other node tainted", lambda: taints(elsewhere), timeout=30)
        assert not [e for e in vpc.world()["enis"] if e["instance_id"] == elsewhere.instance_id]
    finally:
        replica.stop()
        first.start()
        for node in (served, elsewhere):
            cp.request("DELETE", f"/api/v1/nodes/{node.name}", raw=True)
        world = vpc.world()
        world["enis"] = [e for e in world["enis"] if not any(k == "ipmgmt.aws/attached-for" for k, _ in e["tags"])]
        world["instances"] = [i for i in world["instances"]
                              if i["id"] not in (served.instance_id, elsewhere.instance_id)]
        vpc.set_world(world)


IPMGMT_BIN = TARGET / "debug" / "ipmgmt"


def ipmgmt_check(cp, vpc, *args, env=None):
    """`ipmgmt check` as a user runs it: their kubeconfig, their AWS credentials (the
    fake EC2's, under deploy/check-iam-policy.json)."""
    env = {"PATH": os.environ["PATH"], "KUBECONFIG": str(cp.kubeconfig), "AWS_REGION": "us-west-2",
           **({"AWS_ENDPOINT_URL_EC2": f"http://127.0.0.1:{vpc.port}"} if vpc else {}), "AWS_ACCESS_KEY_ID": CHECK_KEY,
           "AWS_SECRET_ACCESS_KEY": "check-secret", "AWS_EC2_METADATA_DISABLED": "true", **(env or {})}
    return subprocess.run([str(IPMGMT_BIN), "check", f"--release-namespace={NAMESPACE}", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def failures(report):
    return [c["what"] for s in report["sections"] for c in s["checks"] if c["status"] == "fail"]


def test_ipmgmt_check_passes_a_healthy_install_and_names_each_broken_part(cluster, tmp_path):
    """`ipmgmt check` against the chart on the real control plane: every check passes
    (exit 0); then one thing broken at a time (a NAD's range, a full ENI, the CA
    bundle, the controller's Lease, the ValidatingAdmissionPolicy), it names exactly
    that (exit 1), as text and as JSON."""
    assert IPMGMT_BIN.exists(), f"{IPMGMT_BIN} is missing: build the workspace first (cargo build --workspace)"
    cp, vpc, first = cluster
    cp.kubectl("delete", "network-attachment-definitions", "--all", "-n", APPS)
    replica = HostReclaimer(cp, tmp_path, vpc.port, "reclaimer-checked")
    policy_path = f"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/{RELEASE}-require-manager"
    policy = cp.get(policy_path)
    # What kubelet labels a node with from its cloud provider; the fake VPC's node 1 has
    # every address of the scenes on eth1, which a large type holds.
    cp.kubectl("label", "node", NODE, "node.kubernetes.io/instance-type=m5.24xlarge", "--overwrite")
    try:
        nad(cp, "checked", ipvlan_on_eth1({"type": "whereabouts", "range": RESERVED}))
        # The controller leads (this replica or another) before the check.
        cp.wait_for("a fresh Lease", lambda: "the controller leads" in ipmgmt_check(cp, vpc).stdout, timeout=60)
        healthy = ipmgmt_check(cp, vpc)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        text = healthy.stdout
        for line in ("✓ Multus: NetworkAttachmentDefinitions are served", "✓ whereabouts: IPPools are served",
                     f"✓ the webhook: MutatingWebhookConfiguration {RELEASE} carries its CA bundle",
                     "✓ the webhook injects: a dry-run pod in default got the IP manager (aws-ip-mgmt)",
                     f"✓ the ValidatingAdmissionPolicy {RELEASE}-require-manager is in place",
                     f"({NODE1.instance_id}): Multus ENIs at device index 1 ({ETH1.id}, ",
                     "IPv4 addresses free), device index 2 (",
                     f"✓ {APPS}/checked", "all checks passed"):
            assert line in text, text
        assert "\x1b[" not in text, "no colour off a terminal"

        # A NAD whose range leaves its subnet: the one failure names it.
        nad(cp, "checked", ipvlan_on_eth1({"type": "whereabouts", "range": "10.0.6.0/24"}))
        broken = ipmgmt_check(cp, vpc, "--output=json")
        assert broken.returncode == 1, broken.stdout + broken.stderr
        report = json.loads(broken.stdout)
        assert report["ok"] is False
        (failure,) = failures(report)
        assert failure.startswith(f"{APPS}/checked: range 10.0.6.1-10.0.6.254 is not inside subnet-net1"), failure
        nad(cp, "checked", ipvlan_on_eth1({"type": "whereabouts", "range": RESERVED}))

        # A type whose ENIs hold six addresses: eth1 is full, and the check says what
        # the next pod there meets.
        cp.kubectl("label", "node", NODE, "node.kubernetes.io/instance-type=t3.medium", "--overwrite")
        full = ipmgmt_check(cp, vpc, "--output=json")
        (failure,) = failures(json.loads(full.stdout))
        assert failure == (f"{NODE} ({NODE1.instance_id}): no free IPv4 address on {ETH1.id}: the next pod's "
                           "manager there fails with PrivateIpAddressLimitExceeded"), failure
        cp.kubectl("label", "node", NODE, "node.kubernetes.io/instance-type=m5.24xlarge", "--overwrite")

        # Run as an identity without the check's own policy (the controller's role,
        # which has no DescribeInstanceTypes): the failure says what the user's
        # identity lacks, not what the controller's should have.
        lacking = ipmgmt_check(cp, vpc, "--output=json", env={"AWS_ACCESS_KEY_ID": CONTROLLER_KEY})
        (failure,) = [c for s in json.loads(lacking.stdout)["sections"] for c in s["checks"] if c["status"] == "fail"]
        assert failure["what"].startswith("cannot read the instance types' address limits: DescribeInstanceTypes "
                                          "of m5.24xlarge: UnauthorizedOperation: "), failure
        assert "the AWS identity you run the check as lacks ec2:DescribeInstanceTypes: attach " \
               "deploy/check-iam-policy.json" in failure["what"], failure
        assert "reclaimer" not in failure["what"].split("; ", 1)[1], failure

        # The CA bundle gone (cert-manager's cainjector not running, say): the check
        # names it, and the API server, which can no longer verify the webhook,
        # refuses the dry-run pod, so the injection check fails too and says why.
        mwc = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{RELEASE}"
        bundle = cp.get(mwc)["webhooks"][0]["clientConfig"]["caBundle"]
        cp.request("PATCH", mwc, [{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}],
                   content_type="application/json-patch+json")
        try:
            unverified = failures(json.loads(ipmgmt_check(cp, vpc, "--output=json").stdout))
        finally:
            cp.request("PATCH", mwc, [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle}],
                       content_type="application/json-patch+json")
        assert unverified[0] == f"the webhook: MutatingWebhookConfiguration {RELEASE} has no CA bundle", unverified
        assert len(unverified) == 2 and "failed calling webhook" in unverified[1], unverified

        # No replica leading (both stopped, the Lease left to a holder that is gone):
        # the one failure names the Lease and where to look.
        first.stop()
        replica.stop()
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{RELEASE}-reclaimer"
        cp.request("PATCH", lease_path, {"spec": {"holderIdentity": "gone-replica",
                                                  "renewTime": "2026-01-01T00:00:00.000000Z"}},
                   content_type="application/merge-patch+json")
        leaderless = json.loads(ipmgmt_check(cp, vpc, "--output=json").stdout)
        first.start()
        assert failures(leaderless) == [f"no replica of the controller holds its Lease {RELEASE}-reclaimer"], leaderless
        (fix,) = [c["fix"] for s in leaderless["sections"] for c in s["checks"] if c["status"] == "fail"]
        assert fix == f"kubectl -n {NAMESPACE} logs deploy/{RELEASE}-reclaimer", fix
        cp.wait_for("a replica leading again", lambda: "the controller leads" in ipmgmt_check(cp, vpc).stdout,
                    timeout=60)

        # The policy gone: the one failure names it, with what to do.
        cp.request("DELETE", policy_path)
        broken = ipmgmt_check(cp, vpc, "--output=json")
        assert broken.returncode == 1
        report = json.loads(broken.stdout)
        assert failures(report) == [
            f"no ValidatingAdmissionPolicy {RELEASE}-require-manager: a pod the webhook missed would run unrouted"]
        (fix,) = [c["fix"] for s in report["sections"] for c in s["checks"] if c["status"] == "fail"]
        assert "validatingAdmissionPolicy.enabled=true" in fix, fix
    finally:
        if cp.get(policy_path, raw=True).status_code == 404:
            for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
                policy["metadata"].pop(key, None)
            policy.pop("status", None)
            cp.create("/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies", policy)
        cp.kubectl("delete", "network-attachment-definitions", "checked", "-n", APPS, "--ignore-not-found")
        replica.stop()


def test_ipmgmt_check_tries_each_roles_actions_and_names_the_one_missing(cluster, tmp_path):
    """`ipmgmt check --iam-profile`: each action the IP manager and the controller
    call, tried with the role's credentials (an AWS profile each) against a Multus
    ENI; the describe calls with DryRun, the address calls with an address EC2
    refuses once it has authorized the caller. A role missing one action gets the one
    ✗ naming it and the policy that grants it; nothing in EC2 changes."""
    cp, vpc, _ = cluster
    credentials = tmp_path / "credentials"
    credentials.write_text("".join(
        f"[{name}]\naws_access_key_id = {key}\naws_secret_access_key = role-secret\n\n"
        for name, key in (("ipmgmt-manager", MANAGER_KEY), ("ipmgmt-controller", CONTROLLER_KEY),
                          ("controller-wanting", WANTING_KEY))))
    (tmp_path / "config").write_text("")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_CONFIG_FILE": str(tmp_path / "config")}

    def iam(*profiles):
        done = ipmgmt_check(cp, vpc, "--output=json", *(f"--iam-profile={p}" for p in profiles), env=env)
        (section,) = [s for s in json.loads(done.stdout)["sections"] if s["name"] == "IAM"]
        return section["checks"]

    def address_calls(since):
        return [e for e in vpc.log()[since:] if "ssign" in e["action"]]

    unprobed = iam()
    assert [c["status"] for c in unprobed] == ["skip"], unprobed
    assert "--iam-profile manager=PROFILE" in unprobed[0]["what"]

    since = len(vpc.log())
    good = iam("manager=ipmgmt-manager", "controller=ipmgmt-controller")
    assert [c["status"] for c in good] == ["pass", "pass", "skip"], good
    manager, controller, opt_in = (c["what"] for c in good)
    assert opt_in == ("the controller's role (profile ipmgmt-controller): CreateSubnetCidrReservation, "
                      "CreateNetworkInterface, AttachNetworkInterface, ModifyNetworkInterfaceAttribute, "
                      "DeleteNetworkInterface not tried: the controller does not run with --guard-reserve-ranges, "
                      "--readiness-attach"), opt_in
    eni = next(e.id for e in (ETH1, ETH2) if e.id in manager)
    assert manager == ("the IP manager's role (profile ipmgmt-manager) may call DescribeInstances, "
                       "DescribeNetworkInterfaces, DescribeSubnets, DescribeVpcs, AssignPrivateIpAddresses, "
                       "UnassignPrivateIpAddresses, AssignIpv6Addresses, UnassignIpv6Addresses "
                       f"(the address calls on {eni})"), manager
    assert controller.startswith("the controller's role (profile ipmgmt-controller) may call "
                                 "DescribeNetworkInterfaces, DescribeSubnets, GetSubnetCidrReservations, "), controller
    # Each address call was asked for something EC2 refused after authorizing it.
    calls = address_calls(since)
    assert len(calls) == 8 and all(e["status"] == 400 and e["eni"] == eni for e in calls), calls
    assert {e["code"] for e in calls} == {"InvalidParameterValue"}, calls
    dry = [e for e in vpc.log()[since:] if e["code"] == "DryRunOperation"]
    assert {e["action"] for e in dry} >= {"DescribeInstances", "DescribeVpcs", "GetSubnetCidrReservations"}, dry

    since = len(vpc.log())
    wanting = iam("controller=controller-wanting")
    failed = [c for c in wanting if c["status"] == "fail"]
    assert len(failed) == 1, wanting
    assert failed[0]["what"].startswith(
        f"the controller's role (profile controller-wanting) may not call {WANTING} on {eni} "
        "(UnauthorizedOperation: You are not authorized"), failed[0]
    assert failed[0]["fix"] == (f"grant {WANTING} on network interfaces tagged node.k8s.amazonaws.com/no_manage=true, "
                                "as deploy/reclaimer-iam-policy.json does"), failed[0]
    assert [c["status"] for c in wanting if c is not failed[0]] == ["pass", "skip"]
    assert not [e for e in address_calls(since) if e["status"] == 200]

    # With reclaimer.guard.reserveRanges and readiness.attach on, as the chart renders
    # them, the check tries their actions too (DryRun, the attachment's against the
    # Multus ENI): the base policy lacks them, and each fix names its opt-in policy; a
    # role with the policy passes its actions.
    deployment = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{RELEASE}-reclaimer"
    args = cp.get(deployment)["spec"]["template"]["spec"]["containers"][0]["args"]
    patch = [{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": value} for value in (
        "--guard-reserve-ranges=true", '--readiness-attach={"deviceIndex":1,"pool":"upf"}')]
    cp.request("PATCH", deployment, patch, content_type="application/json-patch+json")
    try:
        denied = [c for c in iam("controller=ipmgmt-controller") if c["status"] == "fail"]
        assert [c["what"].split(" (UnauthorizedOperation")[0] for c in denied] == [
            f"the controller's role (profile ipmgmt-controller) may not call ec2:{action}" + on
            for action, on in (("CreateSubnetCidrReservation", ""), ("CreateNetworkInterface", ""),
                               ("AttachNetworkInterface", ""), ("ModifyNetworkInterfaceAttribute", ""),
                               ("DeleteNetworkInterface", ""))], denied
        tagged = "on network interfaces tagged node.k8s.amazonaws.com/no_manage=true and on instances"
        assert [c["fix"] for c in denied] == [
            "grant ec2:CreateSubnetCidrReservation on *, as deploy/reclaimer-reserve-iam-policy.json does",
            "grant ec2:CreateNetworkInterface with the request tag node.k8s.amazonaws.com/no_manage=true (and "
            "ec2:CreateTags at creation), as deploy/reclaimer-attach-iam-policy.json does",
            f"grant ec2:AttachNetworkInterface {tagged}, as deploy/reclaimer-attach-iam-policy.json does",
            f"grant ec2:ModifyNetworkInterfaceAttribute {tagged}, as deploy/reclaimer-attach-iam-policy.json does",
            f"grant ec2:DeleteNetworkInterface {tagged}, as deploy/reclaimer-attach-iam-policy.json does"]
        with open(credentials, "a") as f:
            for name, key in (("ipmgmt-reserving", RESERVING_KEY), ("ipmgmt-attaching", ATTACHING_KEY)):
                f.write(f"[{name}]\naws_access_key_id = {key}\naws_secret_access_key = s\n\n")
        reserving = iam("controller=ipmgmt-reserving")
        assert [c["status"] for c in reserving] == ["fail", "fail", "fail", "fail", "pass"], reserving
        assert "GetSubnetCidrReservations, CreateSubnetCidrReservation, " in reserving[4]["what"], reserving
        attaching = iam("controller=ipmgmt-attaching")
        assert [c["status"] for c in attaching] == ["fail", "pass"], attaching
        assert ("CreateNetworkInterface, AttachNetworkInterface, ModifyNetworkInterfaceAttribute, "
                "DeleteNetworkInterface") in attaching[1]["what"], attaching
    finally:
        restore = [{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": args}]
        cp.request("PATCH", deployment, restore, content_type="application/json-patch+json")

    missing = iam("manager=no-such-profile")
    assert [c["status"] for c in missing] == ["fail"], missing
    assert "its credentials do not work" in missing[0]["what"], missing
    assert "AWS_SHARED_CREDENTIALS_FILE" in missing[0]["fix"]

    # As text, exit 1, the ✗ line and what to do.
    text = ipmgmt_check(cp, vpc, "--iam-profile=controller=controller-wanting", env=env)
    assert text.returncode == 1
    assert f"✗ the controller's role (profile controller-wanting) may not call {WANTING}" in text.stdout, text.stdout
    assert f"→ grant {WANTING} on network interfaces tagged" in text.stdout


def test_kubectl_runs_ipmgmt_check_as_its_plugin(cluster):
    """`kubectl ipmgmt check`: kubectl finds `kubectl-ipmgmt` on the PATH and runs it
    with the arguments after the plugin's name; `--kubeconfig` and `--context` are the
    check's own, as kubectl passes none of its flags to a plugin."""
    cp, vpc, _ = cluster
    plugin = TARGET / "debug" / "kubectl-ipmgmt"
    assert plugin.exists(), f"{plugin} is missing: build the workspace first (cargo build --workspace)"
    env = {"PATH": f"{plugin.parent}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root"),
           "AWS_REGION": "us-west-2", "AWS_ENDPOINT_URL_EC2": f"http://127.0.0.1:{vpc.port}",
           "AWS_ACCESS_KEY_ID": CHECK_KEY, "AWS_SECRET_ACCESS_KEY": "check-secret",
           "AWS_EC2_METADATA_DISABLED": "true"}
    kubectl = str(tool("kubectl"))
    listed = subprocess.run([kubectl, "plugin", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert str(plugin) in listed.stdout, listed.stdout + listed.stderr
    done = subprocess.run([kubectl, "ipmgmt", "check", f"--kubeconfig={cp.kubeconfig}",
                           f"--release-namespace={NAMESPACE}", "--output=json"],
                          env=env, capture_output=True, text=True, timeout=60)
    report = json.loads(done.stdout)
    assert [s["name"] for s in report["sections"]] == ["Cluster", "Nodes", "NetworkAttachmentDefinitions", "IAM"]
    assert "the webhook injects: a dry-run pod in default got the IP manager (aws-ip-mgmt)" in [
        c["what"] for c in report["sections"][0]["checks"] if c["status"] == "pass"], report
    wrong = subprocess.run([kubectl, "ipmgmt", "check", f"--kubeconfig={cp.kubeconfig}", "--context=no-such"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    assert "no-such" in wrong.stderr and "--context" in wrong.stderr, wrong.stderr
    usage = subprocess.run([kubectl, "ipmgmt", "chek"], env=env, capture_output=True, text=True, timeout=60)
    assert "Usage: kubectl ipmgmt" in usage.stderr, usage.stderr


@pytest.fixture
def moto():
    """moto_server on this host, for the wire format of what `ipmgmt check` calls."""
    port = free_port()
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ipmgmt_check_reads_what_moto_answers_in_ec2s_wire_format(cluster, tmp_path, moto):
    """The check's calls against moto, which answers in EC2's own format (with AWS's
    instance-type data): DescribeInstanceTypes' network limits, GetSubnetCidrReservations'
    explicit reservation, DescribeNetworkInterfaces' tags and attachment, and the
    DryRunOperation answer (HTTP 412) of the IAM section's tries. moto grants every
    action and checks no address against a subnet, so only the format is tested here;
    the semantics are the fake's (the scenes above). Then the guard's
    CreateSubnetCidrReservation, read back with boto3."""
    cp, _, first = cluster
    ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto, aws_access_key_id="AKIAMOTO",
                       aws_secret_access_key="moto")
    vpc_id = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.9.4.0/24", AvailabilityZone="us-west-2a")["Subnet"]
    ec2.create_subnet_cidr_reservation(SubnetId=subnet["SubnetId"], Cidr="10.9.4.192/26",
                                       ReservationType="explicit")
    (instance,) = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="m5.large",
                                    SubnetId=subnet["SubnetId"])["Instances"]
    # moto picks addresses at random: the Multus ENI's own is fixed outside the NADs'
    # ranges, and the one the controller attaches goes to a subnet of its own.
    eni = ec2.create_network_interface(SubnetId=subnet["SubnetId"], PrivateIpAddress="10.9.4.10", TagSpecifications=[{
        "ResourceType": "network-interface",
        "Tags": [{"Key": "node.k8s.amazonaws.com/no_manage", "Value": "true"}]}])["NetworkInterface"]
    ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"], InstanceId=instance["InstanceId"],
                                 DeviceIndex=1)
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                    PrivateIpAddresses=["10.9.4.200", "10.9.4.201"])
    node = "node-on-moto"
    cp.add_node(node, f"aws:///us-west-2a/{instance['InstanceId']}",
                labels={"node.kubernetes.io/instance-type": "m5.large"})
    (tmp_path / "credentials").write_text("[moto-role]\naws_access_key_id = AKIAMOTOROLE\n"
                                          "aws_secret_access_key = moto\n")
    (tmp_path / "config").write_text("")
    try:
        nad(cp, "on-moto", ipvlan_on_eth1({"type": "whereabouts", "range": "10.9.4.192/26"}))
        env = {"AWS_ENDPOINT_URL_EC2": moto, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
               "AWS_CONFIG_FILE": str(tmp_path / "config")}
        done = ipmgmt_check(cp, None, "--output=json", "--iam-profile=manager=moto-role", env=env)
        report = json.loads(done.stdout)
        checks = {s["name"]: s["checks"] for s in report["sections"]}
        # m5.large: 10 IPv4 addresses per interface, as AWS publishes it; the ENI holds
        # its primary and two more.
        assert {"status": "pass", "what": f"{node} ({instance['InstanceId']}): Multus ENIs at device index 1 "
                f"({eni['NetworkInterfaceId']}, 7 of 10 IPv4 addresses free)"} in checks["Nodes"], checks["Nodes"]
        # Inside the subnet and under its explicit reservation.
        assert {"status": "pass", "what": f"{APPS}/on-moto"} in checks["NetworkAttachmentDefinitions"], checks
        (manager,) = checks["IAM"]
        assert manager["status"] == "pass", manager
        assert manager["what"].startswith("the IP manager's role (profile moto-role) may call DescribeInstances, "
                                          "DescribeNetworkInterfaces, DescribeSubnets, DescribeVpcs, "), manager

        # The controller's writes as it sends them, and moto's answers read back (the
        # module's replica steps down meanwhile): the guard's CreateSubnetCidrReservation,
        # and readiness attaching a missing ENI at device index 2 (Create-, Attach-,
        # ModifyNetworkInterface(Attribute)).
        nad(cp, "moto-unreserved", ipvlan_on_eth1({"type": "whereabouts", "range": "10.9.4.160/27"}))
        cp.kubectl("label", "node", node, "=".join(READY_LABEL), "--overwrite")
        other = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.9.8.0/24", AvailabilityZone="us-west-2a")["Subnet"]
        attach = json.dumps({"deviceIndex": 2, "subnets": {"us-west-2a": other["SubnetId"]}})
        first.stop()
        replica = HostReclaimer(cp, tmp_path, int(moto.rsplit(":", 1)[1]), "reclaimer-on-moto",
                                ("--guard-reserve-ranges=true", "--dry-run=true", "--guard-configmap=",
                                 "--readiness-device-index=2", f"--readiness-attach={attach}"))
        try:
            (event,) = cp.wait_for("the reservation made in moto", lambda: (
                nad_events(cp, "moto-unreserved", "AddressRangeReserved") or replica.check()), timeout=60)
            assert event["note"].startswith(f"reserved 10.9.4.160/27 in {subnet['SubnetId']}"), event["note"]
            (attached,) = cp.wait_for("the ENI attached in moto", lambda: [
                e for e in cp.get("/apis/events.k8s.io/v1/namespaces/default/events")["items"]
                if e["regarding"].get("name") == node and e["reason"] == "MultusEniAttached"], timeout=60)
        finally:
            replica.stop()
            first.start()
        (made,) = ec2.describe_network_interfaces(Filters=[
            {"Name": "attachment.instance-id", "Values": [instance["InstanceId"]]},
            {"Name": "tag:ipmgmt.aws/attached-for", "Values": [f"{instance['InstanceId']}/2"]}])["NetworkInterfaces"]
        assert made["Attachment"]["DeviceIndex"] == 2 and made["SubnetId"] == other["SubnetId"], made
        assert {"Key": "node.k8s.amazonaws.com/no_manage", "Value": "true"} in made["TagSet"], made
        assert attached["note"].startswith(f"attached {made['NetworkInterfaceId']} (created in "), attached["note"]
        # (moto keeps no Description; the fake's scene checks it.)
        made = ec2.get_subnet_cidr_reservations(SubnetId=subnet["SubnetId"])["SubnetIpv4CidrReservations"]
        assert {(r["Cidr"], r["ReservationType"]) for r in made} == {
            ("10.9.4.192/26", "explicit"), ("10.9.4.160/27", "explicit")}, made
    finally:
        for name in ("on-moto", "moto-unreserved"):
            cp.kubectl("delete", "network-attachment-definitions", name, "-n", APPS, "--ignore-not-found")
        cp.request("DELETE", f"/api/v1/nodes/{node}", raw=True)


def test_ipmgmt_check_pod_shows_each_address_the_eni_it_should_be_on_and_the_one_it_is_on(cluster):
    """`ipmgmt check pod`: for each address of the pod's network-status, the Multus ENI
    with the interface's MAC on the pod's node, and the ENI EC2 says holds it."""
    cp, vpc, _ = cluster
    try:
        attached(cp, "checked-fine", ON_ITS_ENI)
        fine = ipmgmt_check(cp, vpc, "pod", "checked-fine", "-n", APPS)
        assert fine.returncode == 0, fine.stdout + fine.stderr
        assert f"✓ {ON_ITS_ENI} (net1 of {APPS}/ipvlan-net1) is on {ETH1.id} (device index 1)" in fine.stdout, \
            fine.stdout

        attached(cp, "checked-unassigned", ON_NO_ENI)
        unassigned = ipmgmt_check(cp, vpc, "--output=json", "pod", "checked-unassigned", "-n", APPS)
        assert unassigned.returncode == 1
        (failure,) = failures(json.loads(unassigned.stdout))
        assert failure == (f"{ON_NO_ENI} (net1 of {APPS}/ipvlan-net1) should be on {ETH1.id} and no ENI holds it: "
                           "the VPC drops its traffic"), failure

        attached(cp, "checked-elsewhere", ON_ETH2)
        elsewhere = ipmgmt_check(cp, vpc, "--output=json", "pod", "checked-elsewhere", "-n", APPS)
        (failure,) = failures(json.loads(elsewhere.stdout))
        assert failure.startswith(f"{ON_ETH2} (net1 of {APPS}/ipvlan-net1) should be on {ETH1.id} but is on "
                                  f"{ETH2.id}"), failure

        missing = ipmgmt_check(cp, vpc, "pod", "no-such-pod", "-n", APPS)
        assert missing.returncode == 1 and f"no pod no-such-pod in {APPS}" in missing.stdout, missing.stdout
    finally:
        for name in ("checked-fine", "checked-unassigned", "checked-elsewhere"):
            cp.request("DELETE", f"/api/v1/namespaces/{APPS}/pods/{name}", {"gracePeriodSeconds": 0}, raw=True)
