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
import http.server
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest
import trustme

from cluster.base import Fail
from cluster.control_plane import ControlPlane, endpoint_address, free_port
from cluster.installed import APPS, CERT_MANAGER_BEFORE_1_12, NAMESPACE, NODE, RELEASE, restricted_pod, start, stop
from deploy_harness import CHART, SAMPLES, load_yaml_docs
from webhook_harness import TARGET


@pytest.fixture(scope="module", params=["cert-manager", "own-certificate"])
def cluster(request, tmp_path_factory):
    cp = start(tmp_path_factory.mktemp("control-plane"), request.param)
    try:
        yield cp, cp.webhook
    finally:
        stop(cp)


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
    # What a user sees with kubectl: the manager first among the init containers, and
    # the node the scheduler chose.
    name = pods[0]["metadata"]["name"]
    described = cp.kubectl("-n", APPS, "describe", "pod", name).stdout
    init_section = described.split("Init Containers:", 1)[1].split("Containers:", 1)[0]
    assert init_section.lstrip().startswith("aws-ip-mgmt:"), described
    assert re.search(rf"^Node:\s+{re.escape(NODE)}", described, re.M), described
    wide = cp.kubectl("-n", APPS, "get", "pods", "-l", "app=multus-app", "-o", "wide").stdout
    assert wide.count(NODE) == 2, wide


def test_a_pod_without_the_annotation_is_left_alone(cluster):
    cp, webhook = cluster
    before = sum(webhook.reviews().values())
    pod = restricted_pod("plain")
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
    pod = restricted_pod("bad-mode", {"ipmgmt.aws/mode": "daemon"})
    r = cp.request("POST", f"/api/v1/namespaces/{APPS}/pods", pod, raw=True)
    assert r.status_code in (400, 403, 422), r.text
    message = r.json()["message"]
    assert "ipmgmt.aws/mode" in message and "daemon" in message, message


class MeshWebhook:
    """A second mutating webhook, of the test's own, that puts an init container first,
    as service meshes do: served over TLS on the veth address, called by URL."""

    def __init__(self, tmp):
        self.ca = trustme.CA()
        cert = self.ca.issue_cert(endpoint_address())
        files = tmp / "mesh-tls"
        files.mkdir(exist_ok=True)
        cert.private_key_and_cert_chain_pem.write_to_path(str(files / "pair.pem"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(files / "pair.pem"))

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                pod = review["request"]["object"]
                init = pod["spec"].get("initContainers") or []
                response = {"uid": review["request"]["uid"], "allowed": True}
                if not any(c["name"] == "mesh-init" for c in init):
                    container = {"name": "mesh-init", "image": "busybox", "command": ["true"], "securityContext": {
                        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
                    op = ({"op": "add", "path": "/spec/initContainers/0", "value": container} if init else
                          {"op": "add", "path": "/spec/initContainers", "value": [container]})
                    response |= {"patchType": "JSONPatch",
                                 "patch": base64.b64encode(json.dumps([op]).encode()).decode()}
                body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                   "response": response}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((endpoint_address(), 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def test_a_webhook_that_puts_its_container_first_reinvokes_ipmgmts(cluster, tmp_path):
    """The apiserver calls the webhooks in name order: ipmgmt's injects the manager
    first, the mesh's puts its own container in front of it, and the dispatcher calls
    ipmgmt's again (reinvocationPolicy IfNeeded), which moves the manager back."""
    cp, webhook = cluster
    mesh = MeshWebhook(tmp_path)
    try:
        cp.create("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "zz-mesh"},
            "webhooks": [{
                "name": "mesh.example.com", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Fail", "timeoutSeconds": 5, "reinvocationPolicy": "Never",
                "clientConfig": {"url": f"https://{endpoint_address()}:{mesh.port}/inject",
                                 "caBundle": base64.b64encode(mesh.ca.cert_pem.bytes()).decode()},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"]}],
                "objectSelector": {"matchLabels": {"mesh": "on"}},
            }],
        })
        reordered = webhook.reviews().get("reordered", 0)
        pod = restricted_pod("meshed", {"ipmgmt.aws/mode": "init", "k8s.v1.cni.cncf.io/networks": "ipvlan-net1"})
        pod["metadata"]["labels"] = {"mesh": "on"}
        # The configuration takes effect once the apiserver's informer has it.
        created = cp.wait_for("the mesh webhook in effect", lambda: (
            r := cp.request("POST", f"/api/v1/namespaces/{APPS}/pods", pod, raw=True)).status_code == 201
            and any(c["name"] == "mesh-init" for c in r.json()["spec"]["initContainers"]) and r.json()
            or (r.status_code == 201 and cp.request("DELETE", f"/api/v1/namespaces/{APPS}/pods/meshed",
                                                    {"gracePeriodSeconds": 0}) and None))
        names = [c["name"] for c in created["spec"]["initContainers"]]
        assert names == ["aws-ip-mgmt", "mesh-init"], names
        assert webhook.reviews().get("reordered", 0) - reordered == 1, webhook.reviews()
    finally:
        cp.request("DELETE", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/zz-mesh", raw=True)
        mesh.stop()


def test_with_the_webhook_unreachable_the_policy_refuses_an_annotated_pod(cluster):
    """failurePolicy Ignore lets the pod through the webhook unpatched; the chart's
    ValidatingAdmissionPolicy then refuses it, saying why."""
    cp, webhook = cluster
    configs = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    slice_path = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices/{RELEASE}-on-this-machine"
    merge = "application/merge-patch+json"
    original = cp.get(slice_path)["ports"]
    config = cp.get(f"{configs}/{RELEASE}")
    config["webhooks"][0]["failurePolicy"] = "Ignore"
    cp.request("PUT", f"{configs}/{RELEASE}", config)
    # Nothing listens there: the apiserver's call fails.
    cp.request("PATCH", slice_path, {"ports": [{**original[0], "port": free_port()}]}, content_type=merge)
    try:
        pod = restricted_pod("unmanaged", {"ipmgmt.aws/mode": "init"})
        # The apiserver sees the changes through its informers: try until it does.
        deadline = time.monotonic() + 30
        while True:
            r = cp.request("POST", f"/api/v1/namespaces/{APPS}/pods", pod, raw=True)
            if r.status_code != 201:
                break
            cp.request("DELETE", f"/api/v1/namespaces/{APPS}/pods/unmanaged", {"gracePeriodSeconds": 0}, raw=True)
            assert time.monotonic() < deadline, f"still admitted: {r.json()['spec'].get('initContainers')}"
            time.sleep(0.5)
        message = r.json()["message"]
        assert r.status_code == 422, r.text
        assert "ValidatingAdmissionPolicy" in message and "has no aws-ip-mgmt container" in message, message
        # A pod without the annotation is not the policy's business.
        plain = cp.request("POST", f"/api/v1/namespaces/{APPS}/pods", restricted_pod("plain-2"), raw=True)
        assert plain.status_code == 201, plain.text
    finally:
        cp.request("PATCH", slice_path, {"ports": original}, content_type=merge)
        config = cp.get(f"{configs}/{RELEASE}")
        config["webhooks"][0]["failurePolicy"] = "Fail"
        cp.request("PUT", f"{configs}/{RELEASE}", config)


def test_a_value_the_apiserver_refuses_fails_helm_install_with_its_message(cluster):
    """An opt-in label key that is not a valid label key passes the chart's schema (a
    label key's syntax is the apiserver's to judge) and is refused by the apiserver,
    whose message names the field and the rule; Helm prints it and fails."""
    cp, _ = cluster
    cp.kubectl("create", "namespace", "refused")
    proc = cp.helm("install", "refused", CHART, "--namespace", "refused", "--set", "aws.region=us-west-2",
                   "--set", "certManager.enabled=false", "--set", "tls.secretName=none",
                   "--set", "tls.caBundle=" + base64.b64encode(b"not used").decode(),
                   "--set", "webhook.matchConditions=false", "--set-string", "webhook.optInLabel=bad key!",
                   check=False)
    assert proc.returncode != 0, proc.stdout
    assert "is invalid" in proc.stderr and "bad key!" in proc.stderr, proc.stderr
    assert "name part must consist of alphanumeric characters" in proc.stderr, proc.stderr
    cp.helm("uninstall", "refused", "--namespace", "refused", check=False)


def test_a_component_that_cannot_start_stops_the_scene_with_its_own_words(tmp_path):
    """The apiserver's port is taken: the start fails at once with the apiserver's
    last lines, not after a timeout."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        started = time.monotonic()
        with pytest.raises(Fail) as failed:
            ControlPlane(tmp_path / "cluster", port=taken.getsockname()[1])
    assert "kube-apiserver exited" in str(failed.value), failed.value
    assert "address already in use" in str(failed.value), failed.value
    assert time.monotonic() - started < 60


def test_the_schema_refuses_the_selector_the_apiserver_refuses(cluster):
    """A namespace selector term `In` with no values: the apiserver refuses the webhook
    configuration it would render (shown with the schema skipped), so the chart's
    schema refuses the value first, with the value's path."""
    cp, _ = cluster
    cp.kubectl("create", "namespace", "selector")
    term = ["--set", "webhook.namespaceSelectorExpressions[0].key=team",
            "--set", "webhook.namespaceSelectorExpressions[0].operator=In"]
    common = ["install", "selector", CHART, "--namespace", "selector", "--set", "aws.region=us-west-2",
              "--set", "certManager.enabled=false", "--set", "tls.secretName=none",
              "--set", "tls.caBundle=" + base64.b64encode(b"not used").decode(), *term]
    by_apiserver = cp.helm(*common, "--skip-schema-validation", check=False)
    assert by_apiserver.returncode != 0 and "is invalid" in by_apiserver.stderr, by_apiserver.stderr
    assert "must be specified when `operator` is 'In' or 'NotIn'" in by_apiserver.stderr, by_apiserver.stderr
    cp.helm("uninstall", "selector", "--namespace", "selector", check=False)
    by_schema = cp.helm(*common, check=False)
    assert by_schema.returncode != 0 and "/webhook/namespaceSelectorExpressions/0" in by_schema.stderr, \
        by_schema.stderr


def test_ipmgmt_check_says_whether_cert_manager_issued_the_webhooks_certificate(cluster):
    """With cert-manager (the chart's default), `ipmgmt check` finds the Certificate the
    CA bundle is injected from and reports it Ready; pointed at one that does not
    exist, it names that. With the chart's own certificate, cert-manager is not used.
    (EC2 is unreachable here: only the cluster's checks are read.)"""
    cp, _ = cluster
    binary = TARGET / "debug" / "ipmgmt"
    assert binary.exists(), f"{binary} is missing: build the workspace first (cargo build --workspace)"
    env = {"PATH": os.environ["PATH"], "KUBECONFIG": str(cp.kubeconfig), "AWS_REGION": "us-west-2",
           "AWS_ENDPOINT_URL_EC2": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "AKIANOWHERE",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_EC2_METADATA_DISABLED": "true"}

    def cert_manager_line():
        done = subprocess.run([str(binary), "check", f"--release-namespace={NAMESPACE}", "--output=json"],
                              env=env, capture_output=True, text=True, timeout=120)
        report = json.loads(done.stdout)
        (line,) = [c for c in report["sections"][0]["checks"] if c["what"].startswith("cert-manager:")]
        return line

    line = cert_manager_line()
    if cp.tls != "cert-manager":
        assert line["status"] == "skip" and "not used" in line["what"], line
        return
    assert line["status"] == "pass", line
    assert line["what"].startswith(f"cert-manager: Certificate {NAMESPACE}/{RELEASE} is Ready (valid until "), line
    path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{RELEASE}"
    annotation = "cert-manager.io~1inject-ca-from"
    before = cp.get(path)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    cp.request("PATCH", path, [{"op": "replace", "path": f"/metadata/annotations/{annotation}",
                                "value": f"{NAMESPACE}/no-such-certificate"}],
               content_type="application/json-patch+json")
    try:
        missing = cert_manager_line()
    finally:
        cp.request("PATCH", path, [{"op": "replace", "path": f"/metadata/annotations/{annotation}", "value": before}],
                   content_type="application/json-patch+json")
    assert missing["status"] == "fail", missing
    assert missing["what"] == (f"cert-manager: Certificate {NAMESPACE}/no-such-certificate does not exist, yet the "
                               "webhook's CA bundle is injected from it"), missing
