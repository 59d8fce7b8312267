"""The apiserver's part of pod creation, and the webhook it calls: a ReplicaSet's pod
from a sample template, admission over TLS with the patch applied by two independent
libraries, strict validation, and the scheduler's node."""

import json
import os
import pathlib
import random
import socket
import ssl
import tempfile
import time
import urllib.request
import uuid

import jsonpatch
import kubernetes_validate
import trustme

from deploy_harness import SAMPLES, load_yaml_docs, one, render
from webhook_harness import TARGET, KubeletSecretDir, decode_patch, review_of

from .base import K8S_VERSION, REGION, Fail, run
from cluster_tools import tool

def pod_from_template(deployment):
    """The pod a ReplicaSet creates from a Deployment's template, as admission sees it:
    a generateName, no name yet, no node yet."""
    template = deployment["spec"]["template"]
    meta = deployment["metadata"]
    pod_hash = "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=10))
    labels = {**template["metadata"].get("labels", {}), "pod-template-hash": pod_hash}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{meta['name']}-{pod_hash}-",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": dict(template["metadata"].get("annotations", {})),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{meta['name']}-{pod_hash}",
                                 "uid": str(uuid.uuid4()), "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": json.loads(json.dumps(template["spec"])),
    }


def sample(name):
    for f in sorted(SAMPLES.glob("*.yaml")):
        for doc in load_yaml_docs(f):
            if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name:
                return doc
    raise Fail(f"no sample Deployment {name} in deploy/samples")


def app_images():
    """The images the sample workloads' own containers use."""
    images = {c["image"] for f in sorted(SAMPLES.glob("*.yaml")) for d in load_yaml_docs(f)
              if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]}
    for image in images:
        if "/busybox:" not in image:
            raise Fail(f"a sample runs {image}; only busybox apps run here (cluster.images.build_app_image)")
    return sorted(images)


def apply_patch_tool():
    """evanphx/json-patch's apply, at the version the control plane's apiserver uses,
    built by scripts/cluster-tools."""
    return tool("apply-patch")


def render_chart(values=()):
    """The chart's manifests with the region set, as an install would render them."""
    return render(sets=[f"aws.region={REGION}", *values])


def chart_images(docs):
    """The webhook's image and the manager's (`--image`), as the chart names them."""
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    (ipmgr,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--image=")]
    return container["image"], ipmgr


class Webhook:
    """The chart's webhook Deployment, run from its image in the host's network
    namespace; only the listen addresses differ from what Helm rendered."""

    def __init__(self, kubelet, workdir, docs):
        """`docs`: the chart as `render_chart` rendered it."""
        self.configuration = one(docs, "MutatingWebhookConfiguration")
        pod_spec = one(docs, "Deployment")["spec"]["template"]["spec"]
        (container,) = pod_spec["containers"]
        self.image, self.ipmgr_image = chart_images(docs)
        self.chart_args = list(container["args"])
        self.port, self.admin_port = free_port(), free_port()
        container["args"] = [self._listen(a) for a in self.chart_args]
        # The Secret volume cert-manager's certificate lands in, laid out as kubelet does.
        self.ca = trustme.CA()
        secret = KubeletSecretDir(pathlib.Path(workdir) / "webhook-tls")
        cert = self.ca.issue_cert("ipmgmt-webhook.ipmgmt-system.svc", "127.0.0.1")
        secret.publish(b"".join(b.bytes() for b in cert.cert_chain_pems), cert.private_key_pem.bytes())
        kubelet_secret_modes(secret.root, pod_spec)
        (tls,) = [v for v in pod_spec["volumes"] if "secret" in v]
        tls.pop("secret")
        tls["hostPathForTests"] = str(secret.root)
        manifest = {"metadata": {"name": "ipmgmt-webhook-0", "namespace": "ipmgmt-system"}, "spec": pod_spec}
        self.container = kubelet.start_container(manifest, container, "host")
        self.wait_ready()

    def _listen(self, arg):
        if arg.startswith("--listen="):
            return f"--listen=127.0.0.1:{self.port}"
        if arg.startswith("--admin-listen="):
            return f"--admin-listen=127.0.0.1:{self.admin_port}"
        return arg

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise Fail(f"the webhook never became ready: {self.container.logs()[-2000:]}")

    def review(self, pod):
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        ctx.check_hostname = False  # the certificate names the Service; the apiserver dials the Service
        body = json.dumps(review_of(pod)).encode()
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}/mutate", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return json.load(resp)

    def stop(self):
        self.container.stop(10)
        self.container.remove()


def kubelet_secret_modes(root, pod_spec):
    """A Secret volume's files: the volume's defaultMode, group fsGroup."""
    (tls,) = [v for v in pod_spec["volumes"] if "secret" in v]
    mode = tls["secret"].get("defaultMode", 0o644)
    group = pod_spec.get("securityContext", {}).get("fsGroup", 0)
    for path in pathlib.Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chown(path, 0, group)
            path.chmod(mode)
        elif path.is_dir() and not path.is_symlink():
            os.chown(path, 0, group)
            path.chmod(0o755)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Admitted:
    def __init__(self, pod, response, patch):
        self.pod, self.response, self.patch = pod, response, patch


class Apiserver:
    """The apiserver's part of pod creation: admission through the webhook (patch
    applied twice, by independent libraries that must agree), strict validation, a
    generated name, and the scheduler's choice of node."""

    def __init__(self, webhook):
        self.webhook = webhook
        self.go_apply = apply_patch_tool()

    def create(self, pod):
        answer = self.webhook.review(pod)
        response = answer["response"]
        if not response.get("allowed"):
            raise Fail(f"the webhook denied {pod['metadata'].get('generateName')}: "
                       f"{response.get('status', {}).get('message')}")
        patch = decode_patch(response) if response.get("patch") else []
        patched = jsonpatch.apply_patch(pod, patch)
        with tempfile.NamedTemporaryFile("w", suffix=".json") as original:
            json.dump(pod, original)
            original.flush()
            go = run([self.go_apply, original.name], input=json.dumps(answer))
        if json.loads(go.stdout) != patched:
            raise Fail("evanphx/json-patch and jsonpatch disagree on the webhook's patch")
        kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
        meta = patched["metadata"]
        if not meta.get("name"):
            meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        meta["uid"] = str(uuid.uuid4())
        return Admitted(patched, response, patch)


def schedule(pod, node):
    selector = pod["spec"].get("nodeSelector", {})
    for key, value in selector.items():
        if node.labels.get(key) != value:
            raise Fail(f"{pod['metadata']['name']} does not fit {node.name}: nodeSelector {key}={value}")
    pod["spec"]["nodeName"] = node.name
