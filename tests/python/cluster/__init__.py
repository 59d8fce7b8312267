"""A cluster on one machine, for the whole path from an annotated workload to a routed
address: every part that can be real is real, and each stand-in does what its part
of Kubernetes or AWS does.

- **Images**: both released images, built `FROM scratch` with buildah from the
  workspace's binaries and what the Dockerfile's distroless base holds (the shared
  libraries, CA certificates, a passwd entry for 65532). No registry.
- **The webhook**: its Deployment as Helm renders it, run from its image by podman
  with the chart's own arguments; only the listen addresses change.
- **The apiserver's part** (played here): a ReplicaSet's pod from a sample template,
  sent over TLS as an AdmissionReview; the base64 patch applied with Python's
  `jsonpatch` and with evanphx/json-patch in Go (the apiserver's own library), which
  must agree; the patched pod validated strictly; the scheduler's `nodeName`.
- **The node and the VPC**: a network namespace per pod, with `eth0` reaching the
  fake EC2 (the VPC endpoint) and a Multus-style `net1`/`net2`, a macvlan carrying
  the node ENI's MAC (this kernel has no ipvlan), addressed from the attachment's
  whereabouts range. IMDS is unreachable, as from pods on EKS with hop limit 1.
- **kubelet's part**: the patched pod's containers that have an image here run with
  podman as kubelet would run them: command, args, env (downward API resolved), user
  and group, read-only root, dropped capabilities, no-new-privileges, seccomp,
  emptyDir volumes, the termination-message file; init containers in order, native
  sidecars gated by their startup probe, SIGTERM then SIGKILL after the grace period.

Needs root (network namespaces, containers). Everything podman keeps lives under
`.podman/` in the checkout.

Parts: `base` (settings, failures), `images` (buildah, podman), `vpc` (fake EC2, nodes,
whereabouts, pod namespaces), `apiserver` (admission, the webhook), `kubelet`
(containers, probes, stop), and `Cluster` here, which joins them.
"""

import pathlib
import time

from webhook_harness import TARGET

from .apiserver import (Apiserver, Webhook, app_images, chart_images, pod_from_template, render_chart, sample,
                        schedule)
from .base import POD_CREDENTIALS, PROFILE, Fail, ec2_calls, host, need_root
from .images import Podman, build_app_image, build_image, dockerfile_stages
from .kubelet import Kubelet, Pod
from .vpc import Node, Sandbox, Vpc, Whereabouts, pod_mac

__all__ = ["Cluster", "Fail", "build_image", "dockerfile_stages", "ec2_calls", "host", "pod_from_template", "sample",
           "PROFILE", "TARGET"]


class Cluster:
    """Two nodes, the fake EC2, the webhook from its image, and the images kubelet
    runs. `start(pod_manifest, node)` takes an admitted pod to Running (or Init:Error)."""

    def __init__(self, workdir, nodes=2, progress=lambda *a: None):
        need_root()
        self.workdir = pathlib.Path(workdir)
        self.progress = progress
        self.podman = Podman()
        self.timings = {}
        started = time.monotonic()
        self.kubelet = Kubelet(self.podman, self.workdir, extra_env=self._pod_env)
        self.images = {}
        stages = dockerfile_stages()
        self.nodes = [Node(n + 1) for n in range(nodes)]
        self.vpc = Vpc(self.nodes, self.workdir)
        self.webhook = None
        try:
            # Tags as the chart names the images, so the patched pods resolve them here.
            chart = render_chart()
            webhook_tag, ipmgr_tag = chart_images(chart)
            for stage, binary, tag in (("webhook", "ipmgmt-webhook", webhook_tag),
                                       ("ipmgr", "ipmgr", ipmgr_tag)):
                path = TARGET / PROFILE / binary
                if not path.exists():
                    raise Fail(f"{path} is missing: build the workspace first (cargo build --workspace"
                               f"{' --release' if PROFILE == 'release' else ''})")
                self.images[stage] = (tag, build_image(self.podman, stages[stage], path, tag))
                self.kubelet.local_images.add(tag)
            for app in app_images():
                build_app_image(self.podman, app)
                self.kubelet.local_images.add(app)
            self.timings["images"] = time.monotonic() - started
            started = time.monotonic()
            self.webhook = Webhook(self.kubelet, self.workdir, chart)
            self.timings["webhook"] = time.monotonic() - started
            self.apiserver = Apiserver(self.webhook)
        except BaseException:
            self.close()
            raise
        self.whereabouts = Whereabouts()
        self.pods = []

    def _pod_env(self, pod, container):
        """What the manager gets besides the patched pod's env: the VPC endpoint (the
        fake EC2, over the pod's eth0) and the credentials of its IAM role."""
        if container["image"] != self.images["ipmgr"][0]:
            return {}
        return {"AWS_ENDPOINT_URL_EC2": f"http://{pod.sandbox.host_ip}:{self.vpc.port}", **POD_CREDENTIALS}

    def create(self, pod_manifest):
        return self.apiserver.create(pod_manifest)

    def start(self, manifest, node):
        """Schedules an admitted pod on `node`, gives it its Multus interfaces, and runs it."""
        schedule(manifest, node)
        sandbox = Sandbox()
        interfaces = {}
        try:
            wanted = manifest["metadata"]["annotations"].get("k8s.v1.cni.cncf.io/networks", "")
            for i, name in enumerate(n.strip() for n in wanted.split(",") if n.strip()):
                master, cidrs = self.whereabouts.allocate(manifest["metadata"]["namespace"], name)
                iface = f"net{i + 1}"
                sandbox.add_interface(iface, node.enis[int(master[3:])].mac)
                for cidr in cidrs:
                    sandbox.add_address(iface, cidr)
                interfaces[iface] = cidrs
            pod = Pod(manifest, node, sandbox, interfaces)
            self.pods.append(pod)
            return self.kubelet.run_pod(pod, f"ns:/run/netns/{sandbox.ns}")
        except BaseException:
            sandbox.delete()
            raise

    def stop(self, pod):
        codes = self.kubelet.stop_pod(pod)
        self.delete(pod)
        return codes

    def delete(self, pod):
        for container in pod.containers:
            container.remove()
        pod.containers = []
        pod.sandbox.delete()
        self.whereabouts.free(cidr for _, cidr in pod.addresses)
        if pod in self.pods:
            self.pods.remove(pod)

    def eni_of(self, node, iface, pod):
        """The node ENI a pod's interface rides on."""
        mac = pod_mac(pod, iface)
        return [e for e in node.enis.values() if e.mac == mac][0]

    def close(self):
        for pod in list(getattr(self, "pods", [])):
            for container in pod.containers:
                container.remove()
            pod.sandbox.delete()
        if self.webhook is not None:
            self.webhook.stop()
        self.vpc.stop()
