"""The chart and the webhook on a real control plane: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler (tests/python/cluster/control_plane.py).

Helm 4 installs the chart as a user would; the apiserver validates every object, runs
the chart's RBAC, and calls the webhook from its own admission chain (matchConditions,
the namespaceSelector, failurePolicy, the reinvocation policy), applies the patch with
its own JSON Patch library, validates the result and runs the chart's
ValidatingAdmissionPolicy. The pods are the ReplicaSet controller's, bound by the
scheduler. The webhook runs on this machine with the args of the chart's Deployment;
an EndpointSlice points the chart's Service at it."""

import base64
import subprocess
import time

import pytest
import requests
import trustme

from cluster.base import Fail
from cluster_tools import versions
from cluster.control_plane import ControlPlane, free_port, host_address
from deploy_harness import CHART, SAMPLES, load_yaml_docs
from webhook_harness import WEBHOOK_BIN

NAMESPACE = "ipmgmt-system"
RELEASE = "ipmgmt"
APPS = "multus-demo"
NODE = "ip-10-0-0-10.us-west-2.compute.internal"
CERT_MANAGER_BEFORE_1_12 = tuple(map(int, versions()["CERT_MANAGER_VERSION"].lstrip("v").split(".")[:2])) < (1, 12)


class HostWebhook:
    """ipmgmt-webhook on this machine, run with the args of the chart's Deployment as
    the apiserver stored it; only the listen ports and the certificate paths differ."""

    def __init__(self, cp, tmp, cert_pem, key_pem):
        deployment = cp.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{RELEASE}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        self.port, self.admin_port = free_port(), free_port()
        tls = tmp / "webhook-tls"
        tls.mkdir()
        (tls / "tls.crt").write_bytes(cert_pem)
        (tls / "tls.key").write_bytes(key_pem)
        replaced = {
            "--listen": f"0.0.0.0:{self.port}",
            "--admin-listen": f"127.0.0.1:{self.admin_port}",
            "--tls-cert": str(tls / "tls.crt"),
            "--tls-key": str(tls / "tls.key"),
        }
        args = []
        for arg in container["args"]:
            name = arg.split("=", 1)[0]
            args.append(f"{name}={replaced[name]}" if name in replaced else arg)
        self.args = args
        self.log_path = tmp / "webhook.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(WEBHOOK_BIN), *args], stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 15
        while "HTTPS" not in self.log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Fail(f"the webhook did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def reviews(self):
        """Reviews answered so far, by outcome, from the webhook's own metrics."""
        text = requests.get(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5).text
        out = {}
        for line in text.splitlines():
            if line.startswith("ipmgmt_webhook_reviews_total{"):
                labels, value = line.rsplit(" ", 1)
                out[labels.split('outcome="', 1)[1].split('"', 1)[0]] = int(float(value))
        return out

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def install_with_cert_manager(cp):
    """The chart's defaults: cert-manager issues the serving certificate from the
    chart's own CA and injects that CA into the webhook configuration."""
    cp.start_cert_manager()
    cp.helm("install", RELEASE, CHART, "--namespace", NAMESPACE, "--set", "aws.region=us-west-2")
    certificate = cp.get(f"/apis/cert-manager.io/v1/namespaces/{NAMESPACE}/certificates/{RELEASE}")
    secret_path = f"/api/v1/namespaces/{NAMESPACE}/secrets/{certificate['spec']['secretName']}"
    secret = cp.wait_for("cert-manager's serving certificate", lambda: (
        r := cp.get(secret_path, raw=True)).status_code == 200 and r.json().get("data", {}).get("tls.crt")
        and r.json(), timeout=60)
    webhooks = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{RELEASE}"
    cp.wait_for("the CA injected into the webhook configuration", lambda: all(
        w["clientConfig"].get("caBundle") for w in cp.get(webhooks)["webhooks"]), timeout=60)
    return base64.b64decode(secret["data"]["tls.crt"]), base64.b64decode(secret["data"]["tls.key"])


def install_with_own_certificate(cp, tmp):
    """Without cert-manager: a kubernetes.io/tls Secret and its CA as `tls.caBundle`."""
    ca = trustme.CA()
    cert = ca.issue_cert(f"{RELEASE}.{NAMESPACE}.svc", f"{RELEASE}.{NAMESPACE}.svc.cluster.local")
    chain = b"".join(b.bytes() for b in cert.cert_chain_pems)
    key = cert.private_key_pem.bytes()
    files = tmp / "secret"
    files.mkdir()
    (files / "tls.crt").write_bytes(chain)
    (files / "tls.key").write_bytes(key)
    cp.kubectl("-n", NAMESPACE, "create", "secret", "tls", "ipmgmt-serving-cert",
               f"--cert={files / 'tls.crt'}", f"--key={files / 'tls.key'}")
    cp.helm("install", RELEASE, CHART, "--namespace", NAMESPACE,
            "--set", "certManager.enabled=false", "--set", "tls.secretName=ipmgmt-serving-cert",
            "--set", f"tls.caBundle={base64.b64encode(ca.cert_pem.bytes()).decode()}",
            "--set", "aws.region=us-west-2")
    return chain, key


@pytest.fixture(scope="module", params=["cert-manager", "own-certificate"])
def cluster(request, tmp_path_factory):
    assert WEBHOOK_BIN.exists(), f"{WEBHOOK_BIN} is missing: build the workspace first (cargo build --workspace)"
    tmp = tmp_path_factory.mktemp("control-plane")
    cp = ControlPlane(tmp / "cluster")
    cp.tls = request.param
    webhook = None
    try:
        cp.add_node(NODE, "aws:///us-west-2a/i-0001", labels={"example.com/multus-ready": "true"})
        cp.kubectl("create", "namespace", NAMESPACE)
        if cp.tls == "cert-manager":
            chain, key = install_with_cert_manager(cp)
        else:
            chain, key = install_with_own_certificate(cp, tmp)
        webhook = HostWebhook(cp, tmp, chain, key)
        service = cp.get(f"/api/v1/namespaces/{NAMESPACE}/services/{RELEASE}")
        (https,) = [p for p in service["spec"]["ports"] if p["name"] == "https"]
        cp.create(f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices", {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{RELEASE}-on-this-machine", "labels": {
                "kubernetes.io/service-name": RELEASE,
                # Not the EndpointSlice controller's: it leaves this slice alone.
                "endpointslice.kubernetes.io/managed-by": "ipmgmt-tests"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [host_address()], "conditions": {"ready": True}}],
            "ports": [{"name": https["name"], "port": webhook.port, "protocol": "TCP"}],
        })
        for doc in load_yaml_docs(SAMPLES / "namespace.yaml"):
            cp.create("/api/v1/namespaces", doc)
        yield cp, webhook
    finally:
        if webhook:
            webhook.stop()
        cp.stop()


def pods_of(cp, namespace, app):
    return cp.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"app={app}")["items"]


def sample_deployment(name):
    for f in sorted(SAMPLES.glob("*.yaml")):
        for doc in load_yaml_docs(f):
            if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no sample Deployment {name}")


def test_the_chart_installs_on_the_apiserver_and_its_objects_are_stored(cluster):
    cp, _ = cluster
    config = cp.get(f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{RELEASE}")
    (hook,) = config["webhooks"]
    assert hook["clientConfig"]["service"] == {"namespace": NAMESPACE, "name": RELEASE, "path": "/mutate",
                                               "port": 443}
    managers = [(m["manager"], m["operation"]) for m in config["metadata"]["managedFields"]]
    if cp.tls == "cert-manager" and CERT_MANAGER_BEFORE_1_12:
        # cert-manager's cainjector before 1.12 updates the whole configuration with
        # types that predate matchConditions, and so erases them (the user guide asks
        # for 1.12 or newer). The webhook still sees only the namespaces it serves and
        # leaves pods without the annotation alone (below).
        assert ("cert-manager-cainjector", "Update") in managers
        assert not hook.get("matchConditions"), "a cert-manager that keeps them: drop this branch"
    else:
        assert hook.get("matchConditions"), f"the chart's CEL match conditions are gone; writers: {managers}"
    policies = cp.get("/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies")["items"]
    assert any(p["metadata"]["name"].startswith(RELEASE) for p in policies)
    # The controller-manager made the chart's Deployments' ReplicaSets and pods, and the
    # scheduler placed them (they never run: no kubelet).
    webhook_pods = cp.wait_for("the webhook Deployment's pods", lambda: [
        p for p in cp.get(f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "webhook"])
    assert webhook_pods


def test_a_replicasets_pod_is_injected_through_the_apiservers_admission_chain(cluster):
    cp, webhook = cluster
    deployment = sample_deployment("multus-app")
    injected = webhook.reviews().get("injected", 0)
    cp.create(f"/apis/apps/v1/namespaces/{APPS}/deployments", deployment)
    pods = cp.wait_for("the sample's pods", lambda: len(pods_of(cp, APPS, "multus-app")) == 2
                       and pods_of(cp, APPS, "multus-app"))
    for pod in pods:
        init = pod["spec"]["initContainers"]
        assert init[0]["name"] == "aws-ip-mgmt", [c["name"] for c in init]
        assert init[0]["command"][-1] == "init"
        assert init[0]["securityContext"]["runAsUser"] == 65532
        env = {e["name"]: e for e in init[0]["env"]}
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        # The app's own container is untouched.
        assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]
    assert webhook.reviews().get("injected", 0) - injected == 2, webhook.reviews()
    scheduled = cp.wait_for("the pods bound by the scheduler", lambda: all(
        p["spec"].get("nodeName") == NODE for p in pods_of(cp, APPS, "multus-app")))
    assert scheduled


def test_a_pod_without_the_annotation_is_left_alone(cluster):
    cp, webhook = cluster
    before = sum(webhook.reviews().values())
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain", "namespace": APPS},
           "spec": {"containers": [{"name": "app", "image": "busybox"}]}}
    created = cp.create(f"/api/v1/namespaces/{APPS}/pods", pod)
    assert [c["name"] for c in created["spec"]["containers"]] == ["app"]
    assert "initContainers" not in created["spec"]
    reviewed = sum(webhook.reviews().values()) - before
    if cp.tls == "cert-manager" and CERT_MANAGER_BEFORE_1_12:
        assert reviewed == 1, "no matchConditions left: reviewed, and not patched"
    else:
        assert reviewed == 0, "the chart's matchConditions kept it from the webhook"


def test_a_pod_with_a_bad_mode_is_refused_with_the_webhooks_message(cluster):
    cp, _ = cluster
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "bad-mode", "namespace": APPS, "annotations": {"ipmgmt.aws/mode": "daemon"}},
           "spec": {"containers": [{"name": "app", "image": "busybox"}]}}
    r = cp.request("POST", f"/api/v1/namespaces/{APPS}/pods", pod, raw=True)
    assert r.status_code in (400, 403, 422), r.text
    message = r.json()["message"]
    assert "ipmgmt.aws/mode" in message and "daemon" in message, message
