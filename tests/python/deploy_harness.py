"""Renders the Helm chart with the real Helm 4 and checks manifests the way the
apiserver would: built-in kinds with kubernetes-validate (strict), custom resources
with the schemas of their CRDs, CEL with cel-python."""

import ipaddress
import json
import os
import pathlib
import subprocess

import celpy
import jsonschema
import kubernetes_validate
import yaml

from cluster_tools import tool
from webhook_harness import ROOT

CHART = ROOT / "deploy" / "charts" / "ipmgmt"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
SAMPLES = ROOT / "deploy" / "samples"
SCHEMAS = pathlib.Path(__file__).resolve().parent / "schemas"

# Custom resources: apiVersion -> schema file. Anything else must be a built-in kind
# that kubernetes-validate knows; an unknown kind fails the test.
CRD_SCHEMAS = {
    "cert-manager.io/v1": SCHEMAS / "cert-manager.io-v1.json",
    "k8s.cni.cncf.io/v1": SCHEMAS / "k8s.cni.cncf.io-v1.json",
}


def helm(*args, check=True):
    """Helm 4 as scripts/cluster-tools builds it from helm.sh/helm/v4 ($HELM overrides)."""
    binary = os.environ.get("HELM") or tool("helm")
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}"
    return proc


def template_args(values=(), sets=(), kube_version="1.33.0", release="ipmgmt", namespace="ipmgmt-system"):
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", kube_version]
    for f in values:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    return args


def render(values=(), sets=(), kube_version="1.33.0", release="ipmgmt", namespace="ipmgmt-system"):
    """The chart's manifests as a list of dicts."""
    out = helm(*template_args(values, sets, kube_version, release, namespace)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def notes(values=(), sets=()):
    """NOTES.txt as `helm install` prints it (for the Kubernetes version Helm was built
    against: `helm install` has no --kube-version)."""
    args = ["install", "ipmgmt", str(CHART), "--dry-run=client", "--namespace", "ipmgmt-system"]
    for f in values:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    out = helm(*args).stdout
    assert "NOTES:" in out, out
    return out.split("NOTES:", 1)[1]


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kinds(docs):
    return sorted(d["kind"] for d in docs)


def validate(doc, kube_version):
    """Raises if the apiserver would refuse the object under strict field validation."""
    schema_file = CRD_SCHEMAS.get(doc.get("apiVersion"))
    if schema_file is None:
        kubernetes_validate.validate(doc, kube_version, strict=True)
        return
    schemas = json.loads(schema_file.read_text())
    assert doc["kind"] in schemas, f"no schema for {doc['apiVersion']} {doc['kind']}"
    jsonschema.validate(doc, schemas[doc["kind"]])


def load_yaml_docs(path):
    return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]


def selector_matches(selector, labels):
    """metav1.LabelSelector semantics, as the apiserver applies namespace and object
    selectors."""
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


class Cel:
    """One compiled CEL expression over `object`, as admission evaluates it."""

    def __init__(self, expression):
        env = celpy.Environment()
        self.program = env.program(env.compile(expression))

    def __call__(self, obj):
        result = self.program.evaluate({"object": celpy.json_to_cel(obj)})
        assert isinstance(result, celpy.celtypes.BoolType), f"CEL gave {result!r}, not a bool"
        return bool(result)


def cni_config(nad):
    return json.loads(nad["spec"]["config"])


def ranges(ipam):
    """(network, first, last) of each whereabouts range."""
    specs = ipam.get("ipRanges") or [ipam]
    out = []
    for spec in specs:
        text = spec["range"]
        if "-" in text.split("/")[0]:
            span, prefix = text.split("/")
            first, last = span.split("-")
            network = ipaddress.ip_network(f"{first}/{prefix}", strict=False)
        else:
            network = ipaddress.ip_network(text)
            first = spec.get("range_start", str(network[1]))
            last = spec.get("range_end", str(network[-1]))
        out.append((network, ipaddress.ip_address(first), ipaddress.ip_address(last)))
    return out
