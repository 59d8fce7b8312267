"""The whole path on real nodes: the control plane, two real nodes (kubelet, containerd,
Multus, whereabouts; `real_node.py`), the fake EC2 with each node's ENIs, and the chart
installed with Helm and cert-manager, its webhook pods run by kubelet.

Nothing plays kubelet or Multus here. What stands in: EC2 (the fake, `vpc.py`), and
ipvlan, which this kernel lacks (`cni/ipvlan`). The manager reaches the fake EC2 as a
VPC endpoint, through the chart's own `injection.extraEnv` (AWS_ENDPOINT_URL_EC2 and the
test's static credentials, where EKS would give the pod an IRSA role).
"""

import ipaddress
import json
import pathlib
import time

from deploy_harness import SAMPLES, load_yaml_docs
from webhook_harness import TARGET

from . import app_images, chart_images, selector
from .base import CONTROLLER_CREDENTIALS, POD_CREDENTIALS, PROFILE, RECLAIMER_IAM_POLICY, Fail, need_root, run
from .control_plane import ControlPlane, endpoint_address
from .images import Podman, build_app_image, build_image, build_pause_image, dockerfile_stages, oci_archive
from .installed import NAMESPACE, RELEASE, create_restricted_namespace, install_with_cert_manager
from .real_node import PAUSE_IMAGE, Multus, RealNode
from .vpc import SAMPLE_RESERVATIONS, Node, Vpc


class RealCluster:
    def __init__(self, workdir, nodes=2, vpc_args=None, sets=()):
        """`sets`: more chart values (`--set`)."""
        need_root()
        self.workdir = pathlib.Path(workdir)
        self.podman = Podman()
        self.timings = {}
        self.nodes = [Node(n + 1) for n in range(nodes)]
        self.vpc, self.cp, self.real = None, None, []
        try:
            started = time.monotonic()
            images = self._images()
            self.timings["images"] = time.monotonic() - started

            started = time.monotonic()
            # The samples' ranges reserved in their subnets, as the samples ask.
            # and each role its own policy: the managers' the default, the controller's by
            # its credentials.
            self.vpc = Vpc(self.nodes, self.workdir, **{
                "reservations": SAMPLE_RESERVATIONS,
                "policies_by_key": [(CONTROLLER_CREDENTIALS["AWS_ACCESS_KEY_ID"], RECLAIMER_IAM_POLICY)],
                **(vpc_args or {})})
            self.cp = ControlPlane(self.workdir / "cluster", nodes=[n.name for n in self.nodes], kubelets=True)
            self.multus = Multus(self.cp, self.workdir)
            for index, node in enumerate(self.nodes, start=1):
                labels = {k: v for k, v in node.labels.items() if k != "kubernetes.io/hostname"}
                enis = [(f"eth{i}", eni.mac) for i, eni in node.enis.items() if i > 0]
                self.real.append(RealNode(self.cp, node.name, index, self.workdir, images, node.provider_id,
                                          labels=labels, enis=enis, multus=self.multus))
            for node in self.real:
                node.wait_ready()
            self.timings["control plane and nodes"] = time.monotonic() - started

            started = time.monotonic()
            create_restricted_namespace(self.cp, NAMESPACE)
            endpoint = f"http://{endpoint_address()}:{self.vpc.port}"
            managers = {"AWS_ENDPOINT_URL_EC2": endpoint, **POD_CREDENTIALS}
            controller = {"AWS_ENDPOINT_URL_EC2": endpoint, **CONTROLLER_CREDENTIALS}
            install_with_cert_manager(self.cp, [
                *[f"injection.extraEnv.{k}={v}" for k, v in managers.items()],
                *[f"reclaimer.extraEnv.{k}={v}" for k, v in controller.items()], *sets])
            self.wait_for_webhook()
            self.timings["install"] = time.monotonic() - started
        except BaseException:
            self.close()
            raise

    def _images(self):
        """The released images, the samples' app image and the pause image, as OCI
        archives each node's containerd imports."""
        stages = dockerfile_stages()
        # stage -> tag, of the released images
        self.images = {}
        tags = []
        binaries = {"webhook": "ipmgmt-webhook", "ipmgr": "ipmgr", "reclaimer": "ipmgmt-reclaimer"}
        for stage, tag in chart_images().items():
            path = TARGET / PROFILE / binaries[stage]
            if not path.exists():
                raise Fail(f"{path} is missing: build the workspace first (cargo build --workspace)")
            build_image(self.podman, stages[stage], path, tag)
            self.images[stage] = tag
            tags.append(tag)
        for app in app_images():
            build_app_image(self.podman, app)
            tags.append(app)
        build_pause_image(self.podman, PAUSE_IMAGE)
        tags.append(PAUSE_IMAGE)
        archives = self.workdir / "images"
        archives.mkdir(parents=True, exist_ok=True)
        return {tag: oci_archive(self.podman, tag, archives / f"{i}.tar") for i, tag in enumerate(tags)}

    # -- what the scenes use -------------------------------------------------------------

    def kubectl(self, *args, **kw):
        return self.cp.kubectl(*args, **kw)

    def check(self):
        for node in self.real:
            node.check()

    def apply_samples(self):
        """The samples' namespace and NADs, as the user guide applies them; the NADs'
        whereabouts IPAM reads this cluster's flat file (`Multus.nad`)."""
        self.kubectl("apply", "-f", SAMPLES / "namespace.yaml")
        for name in ("nad-ipvlan-whereabouts.yaml", "nad-dual-stack.yaml"):
            for doc in load_yaml_docs(SAMPLES / name):
                self.kubectl("apply", "-f", "-", input=json.dumps(self.multus.nad(doc)))

    def pods(self, namespace, label_selector):
        return self.cp.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=label_selector)["items"]

    def wait_for_pods(self, namespace, label_selector, count, settled, timeout=120):
        def check():
            self.check()
            found = [p for p in self.pods(namespace, label_selector) if not p["metadata"].get("deletionTimestamp")]
            if len(found) == count and all(settled(p) for p in found):
                return sorted(found, key=lambda p: p["spec"]["nodeName"])
            return None
        try:
            return self.cp.wait_for(f"{count} pods {label_selector} in {namespace}", check, timeout=timeout)
        except Fail as e:
            raise Fail(f"{e}; pods: {self.kubectl('get', 'pods', '-A', '-o', 'wide').stdout}; "
                       f"events: {self.kubectl('get', 'events', '-A').stdout[-3000:]}") from None

    def wait_for_webhook(self, timeout=120):
        deployment = self.cp.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{RELEASE}")
        replicas = deployment["spec"]["replicas"]
        self.wait_for_pods(NAMESPACE, selector(deployment), replicas, is_ready, timeout=timeout)

        def ready_endpoints():
            slices = self.cp.get(f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices",
                                 labelSelector=f"kubernetes.io/service-name={RELEASE}")["items"]
            ready = [a for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")
                     for a in e["addresses"]]
            return len(ready) >= replicas and ready
        return self.cp.wait_for("the webhook's Service with a ready endpoint per replica", ready_endpoints,
                                timeout=timeout)

    def pid(self, pod, container):
        """The host PID of a running container's main process, as containerd knows it."""
        statuses = pod["status"].get("initContainerStatuses", []) + pod["status"].get("containerStatuses", [])
        (status,) = [s for s in statuses if s["name"] == container]
        container_id = status["containerID"].split("://", 1)[1]
        node = next(n for n in self.real if n.name == pod["spec"]["nodeName"])
        tasks = node.containerd.ctr("tasks", "ls").stdout.splitlines()[1:]
        (pid,) = [int(line.split()[1]) for line in tasks if line.split()[0] == container_id]
        return pid

    def in_pod_netns(self, pod, container, *command):
        """A command of this machine's in the pod's network namespace (no exec into the
        container: what its kernel sees, at once)."""
        return run(["nsenter", f"--net=/proc/{self.pid(pod, container)}/ns/net", *command])

    def process(self, pod, container):
        """A running container's main process as the node's runtime started it: its
        command line and its /proc status fields (uid, capabilities, seccomp, ...)."""
        pid = self.pid(pod, container)
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
        lines = pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
        return cmdline, dict(line.split(":\t", 1) for line in lines if ":\t" in line)

    def gone(self, namespace, name, timeout=90):
        """Until kubelet has stopped the pod and sent its final DELETE."""
        self.cp.wait_for(f"pod {name} gone", lambda: self.check() or self.cp.get(
            f"/api/v1/namespaces/{namespace}/pods/{name}", raw=True).status_code == 404, timeout=timeout)

    def placed(self, pod):
        """Each of the pod's secondary addresses (what Multus reports) -> (the node ENI its
        interface rides on, by MAC; the ENIs EC2 says hold it)."""
        node = self.node(pod["spec"]["nodeName"])
        holders = self.vpc.holders()
        out = {}
        for attachment in network_status(pod):
            if attachment["interface"] == "eth0":
                continue
            (eni,) = [e for e in node.enis.values() if e.mac == attachment["mac"]]
            for address in attachment["ips"]:
                address = str(ipaddress.ip_address(address))
                out[address] = (eni, holders.get(address, []))
        return out

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    def close(self):
        """The nodes first, so that kubelet stops every pod (the sidecars release to the
        VPC, still running); then the control plane and the VPC."""
        for node in self.real:
            node.close()
        if self.cp is not None:
            self.cp.stop()
        if self.vpc is not None:
            self.vpc.stop()


def is_ready(pod):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def init_failed(pod):
    """An init container exited non-zero, now or before kubelet's restart of it."""
    return any(s.get(key, {}).get("terminated", {}).get("exitCode", 0) != 0
               for s in pod.get("status", {}).get("initContainerStatuses", []) for key in ("state", "lastState"))


def network_status(pod):
    """What Multus wrote: the pod's attachments, eth0 first."""
    return json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"])
