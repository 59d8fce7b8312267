"""The chart and the webhook on a real control plane: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler (tests/python/cluster/control_plane.py).

Helm 4 installs the chart as a user would; the apiserver validates every object, runs
the chart's RBAC, and calls the webhook from its own admission chain (matchConditions,
the namespaceSelector, failurePolicy, the reinvocation policy), applies the patch with
its own JSON Patch library, validates the result and runs the chart's
ValidatingAdmissionPolicy. The pods are the ReplicaSet controller's, bound by the
scheduler. The webhook runs on this machine with the args of the chart's Deployment;
an EndpointSlice points the chart's Service at it."""

import time

import pytest

from cluster.installed import APPS, CERT_MANAGER_BEFORE_1_12, NAMESPACE, NODE, RELEASE, restricted_pod, start, stop
from deploy_harness import SAMPLES, load_yaml_docs


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
