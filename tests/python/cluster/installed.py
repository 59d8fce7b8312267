"""The chart installed on a real control plane (`control_plane.py`) with Helm 4, and
the webhook run on this machine with the args of the chart's Deployment: an
EndpointSlice points the chart's Service at it, so the apiserver calls it through the
Service as it would call the chart's pods. These scenes run no kubelet, so each can
start the webhook with a fault of its own; the whole path (`Cluster`) runs the chart's
pods from their images instead."""

import base64
import subprocess
import time

import requests
import trustme

from cluster_tools import tool, versions
from deploy_harness import CHART, SAMPLES, load_yaml_docs
from webhook_harness import WEBHOOK_BIN

from .base import Fail
from .control_plane import ControlPlane, endpoint_address, free_port

NAMESPACE = "ipmgmt-system"
RELEASE = "ipmgmt"
APPS = "multus-demo"
RESTRICTED = "pod-security.kubernetes.io/enforce"
# Node 1 of the fake VPC (`vpc.Node(1)`): its name and its instance.
NODE = "ip-10-0-0-10.us-west-2.compute.internal"
NODE_INSTANCE = "i-0000000000000001"
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
        # The guard's ConfigMap volume, as kubelet projects it (`project_guard`).
        self.guard_dir = tmp / "webhook-guard"
        self.guard_dir.mkdir()
        self.guard_config_map = next((v["configMap"]["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]
                                      if "configMap" in v), None)
        replaced = {
            "--listen": f"0.0.0.0:{self.port}",
            "--admin-listen": f"127.0.0.1:{self.admin_port}",
            "--tls-cert": str(tls / "tls.crt"),
            "--tls-key": str(tls / "tls.key"),
            "--guard-findings": str(self.guard_dir / "findings.json"),
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

    def project_guard(self, cp):
        """What kubelet does for the chart's optional ConfigMap volume: each key of the
        ConfigMap the guard writes as a file, none while it does not exist. Returns the
        findings file's text, or None."""
        path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{self.guard_config_map}"
        r = cp.get(path, raw=True)
        target = self.guard_dir / "findings.json"
        if r.status_code == 404:
            target.unlink(missing_ok=True)
            return None
        text = r.json().get("data", {}).get("findings.json")
        if text is None:
            target.unlink(missing_ok=True)
            return None
        staged = self.guard_dir / ".findings.json.new"
        staged.write_text(text)
        staged.rename(target)
        return text

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
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def restricted_pod(name, annotations=None, node=None):
    """A pod of one busybox container that the restricted Pod Security profile admits."""
    spec = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "app", "image": "busybox", "securityContext": {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
    }
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": APPS, "annotations": annotations or {}}, "spec": spec}


def create_restricted_namespace(cp, name):
    """A namespace that enforces the restricted Pod Security profile."""
    cp.kubectl("create", "namespace", name)
    cp.kubectl("label", "namespace", name, f"{RESTRICTED}=restricted")


def install_with_cert_manager(cp, sets):
    """The chart's defaults: cert-manager issues the serving certificate from the
    chart's own CA and injects that CA into the webhook configuration."""
    cp.start_cert_manager()
    cp.helm("install", RELEASE, CHART, "--namespace", NAMESPACE, "--set", "aws.region=us-west-2",
            *[a for s in sets for a in ("--set", s)])
    certificate = cp.get(f"/apis/cert-manager.io/v1/namespaces/{NAMESPACE}/certificates/{RELEASE}")
    secret_path = f"/api/v1/namespaces/{NAMESPACE}/secrets/{certificate['spec']['secretName']}"
    secret = cp.wait_for("cert-manager's serving certificate", lambda: (
        r := cp.get(secret_path, raw=True)).status_code == 200 and r.json().get("data", {}).get("tls.crt")
        and r.json(), timeout=60)
    webhooks = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{RELEASE}"
    cp.wait_for("the CA injected into the webhook configuration", lambda: all(
        w["clientConfig"].get("caBundle") for w in cp.get(webhooks)["webhooks"]), timeout=60)
    return base64.b64decode(secret["data"]["tls.crt"]), base64.b64decode(secret["data"]["tls.key"])


def install_with_own_certificate(cp, tmp, sets):
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
            "--set", "aws.region=us-west-2", *[a for s in sets for a in ("--set", s)])
    return chain, key


def start(tmp, tls, sets=()):
    """A control plane with one Node, the chart installed (`tls`: "cert-manager" or
    "own-certificate"; `sets`: more --set values) and the webhook serving it."""
    assert WEBHOOK_BIN.exists(), f"{WEBHOOK_BIN} is missing: build the workspace first (cargo build --workspace)"
    cp = ControlPlane(tmp / "cluster")
    cp.tls = tls
    webhook = None
    try:
        cp.add_node(NODE, f"aws:///us-west-2a/{NODE_INSTANCE}", labels={"example.com/multus-ready": "true"})
        # Both namespaces enforce the restricted Pod Security profile, as the user guide
        # allows: a chart pod, or an injected manager, that breaks it is refused.
        create_restricted_namespace(cp, NAMESPACE)
        if cp.tls == "cert-manager":
            chain, key = install_with_cert_manager(cp, sets)
        else:
            chain, key = install_with_own_certificate(cp, tmp, sets)
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
            "endpoints": [{"addresses": [endpoint_address()], "conditions": {"ready": True}}],
            "ports": [{"name": https["name"], "port": webhook.port, "protocol": "TCP"}],
        })
        for doc in load_yaml_docs(SAMPLES / "namespace.yaml"):
            doc["metadata"].setdefault("labels", {})[RESTRICTED] = "restricted"
            cp.create("/api/v1/namespaces", doc)
        cp.webhook = webhook
        return cp
    except BaseException:
        if webhook:
            webhook.stop()
        cp.stop()
        raise


def stop(cp):
    """The control plane first: with the apiserver's connections closed, the webhook
    has nothing to drain and exits after its shutdown delay."""
    try:
        cp.stop()
    finally:
        cp.webhook.stop()




def main():
    """`scripts/cluster`: the tests' cluster, kept running until Ctrl-C, to poke at."""
    import argparse
    import pathlib
    import signal
    import tempfile

    parser = argparse.ArgumentParser(prog="scripts/cluster", description=main.__doc__)
    parser.add_argument("--tls", choices=["cert-manager", "own-certificate"], default="cert-manager")
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                        help="a chart value, as helm install --set takes it")
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ipmgmt-cluster-"))
    cp = start(tmp, args.tls, args.sets)
    print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
    print(f"# kubectl: {tool('kubectl')}; helm: {tool('helm')}; logs in {cp.dir} and {tmp}", flush=True)
    print("# Ctrl-C stops the cluster", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        stop(cp)


if __name__ == "__main__":
    main()
