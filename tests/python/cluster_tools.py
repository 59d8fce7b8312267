"""The Go programs scripts/cluster-tools builds (etcd, the Kubernetes control plane,
kubectl, Helm 4, cert-manager, apply-patch; for real nodes kubelet, containerd, the CNI
plugins, Multus, whereabouts and pause), at the versions in tests/cluster/versions.env."""

from webhook_harness import ROOT

VERSIONS_FILE = ROOT / "tests" / "cluster" / "versions.env"
TOOLS = ROOT / ".tools" / "cluster"


def versions():
    """tests/cluster/versions.env as a dict: plain KEY=value lines."""
    out = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def tool(component, binary=None):
    """The path of a binary scripts/cluster-tools built; a clear failure if it did not."""
    v = versions()
    version = {
        "etcd": v["ETCD_VERSION"],
        "helm": v["HELM_VERSION"],
        "cert-manager": v["CERT_MANAGER_VERSION"],
        "apply-patch": v["JSON_PATCH_VERSION"],
        "containerd": v["CONTAINERD_VERSION"],
        "cni-plugins": v["CNI_PLUGINS_VERSION"],
        "multus": v["MULTUS_VERSION"],
        "whereabouts": v["WHEREABOUTS_VERSION"],
        "pause": v["PAUSE_VERSION"],
    }.get(component, v["KUBERNETES_VERSION"])
    path = TOOLS / f"{component}-{version}" / "bin" / (binary or component)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: scripts/cluster-tools builds it (./scripts/test runs it)")
    return path
