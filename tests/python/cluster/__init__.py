"""A cluster on one machine, for the whole path from an annotated workload to a routed
address: every part that can be real is real, and each stand-in does what its part
of Kubernetes or AWS does.

- **The control plane** (real): etcd, kube-apiserver with its whole admission chain,
  the controller-manager and the scheduler (`control_plane.py`), with two Nodes.
  The chart is installed by Helm 4, its serving certificate issued by cert-manager;
  the samples go in with `kubectl apply`. Deployments make ReplicaSets, ReplicaSets
  make pods, the apiserver calls the webhook through the chart's Service and applies
  its patch, the scheduler binds, the EndpointSlice controller follows Ready pods.
- **Images**: both released images, built `FROM scratch` with buildah from the
  workspace's binaries and what the Dockerfile's distroless base holds (the shared
  libraries, CA certificates, a passwd entry for 65532). No registry.
- **kubelet** (stand-in, `node.py` and `kubelet.py`): one per node, calling in as
  `system:node:<name>`, runs the pods bound to its node with podman, lays out their
  volumes and PATCHes their status; the chart's webhook pods among them.
- **Multus and whereabouts** (stand-in, `multus.py`): interfaces and addresses from the
  NetworkAttachmentDefinitions the apiserver holds, and the network-status annotation.
- **The VPC** (stand-in, `vpc.py`): the fake EC2 with each node's ENIs; a network
  namespace per pod, `eth0` reaching the fake EC2 (the VPC endpoint), the Multus
  interfaces macvlans carrying the node ENI's MAC (this kernel has no ipvlan). IMDS is
  unreachable, as from pods on EKS with hop limit 1.

Needs root (network namespaces, containers). Everything podman keeps lives under
`.podman/` in the checkout.
"""

import pathlib
import time

from deploy_harness import SAMPLES, load_yaml_docs, one, render
from webhook_harness import ROOT, TARGET

from .base import POD_CREDENTIALS, PROFILE, REGION, Fail, ec2_calls, host, need_root
from .control_plane import ControlPlane
from .images import Podman, build_app_image, build_image, dockerfile_stages
from .installed import NAMESPACE, RELEASE, create_restricted_namespace, install_with_cert_manager
from .kubelet import Kubelet
from .multus import Multus
from .node import NodeAgent
from .vpc import Node, Vpc, pod_mac

__all__ = ["Cluster", "Fail", "build_image", "dockerfile_stages", "ec2_calls", "host", "init_failed", "is_ready",
           "selector", "PROFILE", "TARGET"]

NAD_CRD = ROOT / "tests" / "cluster" / "network-attachment-definition.crd.yaml"


def app_images():
    """The images the sample workloads' own containers use."""
    images = {c["image"] for f in sorted(SAMPLES.glob("*.yaml")) for d in load_yaml_docs(f)
              if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]}
    for image in images:
        if "/busybox:" not in image:
            raise Fail(f"a sample runs {image}; only busybox apps run here (cluster.images.build_app_image)")
    return sorted(images)


def chart_images():
    """The webhook's image and the manager's (`--image`), as the chart names them."""
    (container,) = one(render(sets=[f"aws.region={REGION}"]), "Deployment")["spec"]["template"]["spec"]["containers"]
    (ipmgr,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--image=")]
    return container["image"], ipmgr


class Cluster:
    """The control plane, two nodes run by the kubelet stand-in, the fake EC2, the
    chart installed, and the images the pods run."""

    def __init__(self, workdir, nodes=2):
        need_root()
        self.workdir = pathlib.Path(workdir)
        self.podman = Podman()
        self.timings = {}
        self.kubelet = Kubelet(self.podman, self.workdir, extra_env=self._pod_env)
        self.images = {}
        self.nodes = [Node(n + 1) for n in range(nodes)]
        self.vpc, self.cp, self.agents = None, None, []
        try:
            started = time.monotonic()
            stages = dockerfile_stages()
            webhook_tag, ipmgr_tag = chart_images()
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
            self.vpc = Vpc(self.nodes, self.workdir)
            self.cp = ControlPlane(self.workdir / "cluster", nodes=[n.name for n in self.nodes])
            for node in self.nodes:
                self.cp.add_node(node.name, node.provider_id, labels=node.labels)
            self.multus = Multus(self.cp)
            self.agents = [NodeAgent(self.cp, node, self.kubelet, self.multus, self._pod_env) for node in self.nodes]
            self.cp.kubectl("apply", "--server-side", "-f", NAD_CRD)
            self.cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            "crd/network-attachment-definitions.k8s.cni.cncf.io")
            self.timings["control plane"] = time.monotonic() - started

            started = time.monotonic()
            create_restricted_namespace(self.cp, NAMESPACE)
            install_with_cert_manager(self.cp, [])
            self.wait_for_webhook()
            self.timings["install"] = time.monotonic() - started
        except BaseException:
            self.close()
            raise

    def _pod_env(self, pod, container):
        """What the manager gets besides the patched pod's env: the VPC endpoint (the
        fake EC2, over the pod's eth0) and the credentials of its IAM role."""
        if container["image"] != self.images["ipmgr"][0]:
            return {}
        return {"AWS_ENDPOINT_URL_EC2": f"http://{pod.sandbox.host_ip}:{self.vpc.port}", **POD_CREDENTIALS}

    # -- what the scenes use -------------------------------------------------------------

    def kubectl(self, *args, **kw):
        return self.cp.kubectl(*args, **kw)

    def wait_for_webhook(self, timeout=120):
        """Until the chart's Service has a ready endpoint for each webhook replica: the
        EndpointSlice controller's, from the pods' Ready condition."""
        deployment = self.cp.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{RELEASE}")
        replicas = deployment["spec"]["replicas"]
        self.wait_for_pods(NAMESPACE, selector(deployment), replicas, timeout=timeout)

        def ready_endpoints():
            slices = self.cp.get(f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices",
                                 labelSelector=f"kubernetes.io/service-name={RELEASE}")["items"]
            ready = [a for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")
                     for a in e["addresses"]]
            return len(ready) >= replicas and ready
        return self.cp.wait_for("the webhook's Service with a ready endpoint per replica", ready_endpoints,
                                timeout=timeout)

    def workers(self, namespace, label_selector):
        """(the pod as the apiserver holds it, its kubelet worker) for each pod."""
        pods = self.cp.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=label_selector)["items"]
        out = []
        for pod in pods:
            agent = self.agent_of(pod["spec"].get("nodeName"))
            worker = agent.workers.get(pod["metadata"]["uid"]) if agent else None
            out.append((pod, worker))
        return out

    def agent_of(self, node_name):
        for agent in self.agents:
            if agent.node.name == node_name:
                return agent
        return None

    def wait_for_pods(self, namespace, label_selector, count, settled=None, timeout=120):
        """Until `count` pods match, each settled (by default: Ready; or the init
        containers done with one failed). Returns [(pod, worker)], by node."""
        settled = settled or is_ready

        def check():
            found = [(p, w) for p, w in self.workers(namespace, label_selector)
                     if not p["metadata"].get("deletionTimestamp")]
            for _, worker in found:
                if worker is not None and worker.error:
                    raise Fail(f"pod {worker.name}: {worker.error}")
            if len(found) == count and all(settled(p) for p, _ in found):
                return sorted(found, key=lambda pw: pw[0]["spec"]["nodeName"])
            return None
        try:
            return self.cp.wait_for(f"{count} pods {label_selector} in {namespace}", check, timeout=timeout)
        except Fail as e:
            raise Fail(f"{e}; kubelet: {'; '.join(self.errors()[-3:]) or 'no errors'}; pods: "
                       f"{self.kubectl('get', 'pods', '-A', '-o', 'wide').stdout}") from None

    def wait_gone(self, worker, timeout=120):
        """Until kubelet has stopped the pod's containers and its object is gone."""
        self.cp.wait_for(f"pod {worker.name} gone", lambda: not worker.is_alive() and
                         self.cp.get(worker.path, raw=True).status_code == 404, timeout=timeout)

    def errors(self):
        return [e for agent in self.agents for e in agent.errors]

    def eni_of(self, node, iface, pod):
        """The node ENI a pod's interface rides on."""
        mac = pod_mac(pod, iface)
        return [e for e in node.enis.values() if e.mac == mac][0]

    def close(self):
        """The control plane first, so that the webhook pods have no apiserver
        connections to drain; then every pod, all nodes at once; then the VPC, which
        the sidecars release their addresses to."""
        for agent in self.agents:
            agent.stop_watch()
        if self.cp is not None:
            self.cp.stop()
        for worker in [w for agent in self.agents for w in agent.stop_pods()]:
            worker.join(timeout=90)
        if self.vpc is not None:
            self.vpc.stop()


def selector(deployment):
    return ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())


def is_ready(pod):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def init_failed(pod):
    return any("terminated" in s.get("state", {}) and s["state"]["terminated"]["exitCode"] != 0
               for s in pod.get("status", {}).get("initContainerStatuses", []))
