"""A cluster on one machine for the whole path, from an annotated workload to a routed
address: the real control plane (`control_plane.py`), real nodes with kubelet,
containerd, kube-proxy, Multus and whereabouts (`real_node.py`), the chart installed by
Helm with cert-manager (`installed.py`), and the fake EC2 (`vpc.py`); `real.py` puts them
together. This module holds what they share: the images the chart and the samples
name, and how a pod's state reads.

Needs root (network namespaces, cgroups, mounts, containers).
"""

from deploy_harness import SAMPLES, load_yaml_docs, render
from webhook_harness import TARGET

from .base import PROFILE, REGION, Fail, ec2_calls, host
from .images import build_image, dockerfile_stages

__all__ = ["Fail", "app_images", "build_image", "chart_images", "dockerfile_stages", "ec2_calls", "host", "selector",
           "PROFILE", "TARGET"]


def app_images():
    """The images the sample workloads' own containers use."""
    images = {c["image"] for f in sorted(SAMPLES.glob("*.yaml")) for d in load_yaml_docs(f)
              if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]}
    for image in images:
        if "/busybox:" not in image:
            raise Fail(f"a sample runs {image}; only busybox apps run here (cluster.images.build_app_image)")
    return sorted(images)


def chart_images():
    """The images as the chart names them, by Dockerfile stage: the webhook's, the
    manager's (the webhook's `--image`) and the reclaimer's (when enabled)."""
    docs = render(sets=[f"aws.region={REGION}", "reclaimer.enabled=true"])
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    (webhook,) = [d for name, d in deployments.items() if not name.endswith("-reclaimer")]
    (reclaimer,) = [d for name, d in deployments.items() if name.endswith("-reclaimer")]
    (container,) = webhook["spec"]["template"]["spec"]["containers"]
    (ipmgr,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--image=")]
    (reclaimer_container,) = reclaimer["spec"]["template"]["spec"]["containers"]
    return {"webhook": container["image"], "ipmgr": ipmgr, "reclaimer": reclaimer_container["image"]}


def selector(deployment):
    return ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
