"""The Helm chart, rendered by Helm 4 and checked as the apiserver would check it."""

import copy
import json
import os
import re
import subprocess

import jsonpatch
import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from deploy_harness import (
    CHART,
    CI_VALUES,
    Cel,
    helm,
    kinds,
    load_yaml_docs,
    notes,
    one,
    render,
    selector_matches,
    template_args,
    validate,
)
from webhook_harness import ROOT, WEBHOOK_BIN, Webhook, decode_patch, review_of

ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
WITHOUT_CERT_MANAGER = CHART / "ci" / "without-cert-manager-values.yaml"
RECLAIMER = CHART / "ci" / "reclaimer-values.yaml"
WITHOUT_GUARD = CHART / "ci" / "reclaimer-without-guard-values.yaml"

# (values files, Kubernetes version): together they reach every branch of the templates.
CASES = {
    "defaults-1.33": ((), "1.33.0"),
    "defaults-1.29": ((), "1.29.0"),
    "defaults-1.37": ((), "1.37.0"),
    "all-options-1.35": ((ALL_OPTIONS,), "1.35.0"),
    "all-options-1.28": ((ALL_OPTIONS,), "1.28.0"),
    "without-cert-manager-1.30": ((WITHOUT_CERT_MANAGER,), "1.30.0"),
    "reclaimer-1.33": ((RECLAIMER,), "1.33.0"),
    "reclaimer-without-guard-1.33": ((WITHOUT_GUARD,), "1.33.0"),
}

ANNOTATED = "has(object.metadata.annotations) && 'ipmgmt.aws/mode' in object.metadata.annotations"


def webhook_of(docs):
    config = one(docs, "MutatingWebhookConfiguration")
    assert len(config["webhooks"]) == 1
    return config, config["webhooks"][0]


def component(docs, name):
    return [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == name]


def container_of(docs):
    deployment = one(component(docs, "webhook"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def flag(args, name):
    values = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    assert len(values) <= 1, f"{name} given {len(values)} times"
    return values[0] if values else None


def test_helm_is_version_4():
    assert helm("version", "--short").stdout.startswith("v4."), "the chart tests run Helm 4"


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_lint_strict(values):
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    out = helm(*args).stdout
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_rendered_manifest_is_valid(case):
    values, version = CASES[case]
    docs = render(values, kube_version=version)
    assert docs
    for doc in docs:
        validate(doc, version)


def test_default_objects():
    # The ClusterRole: a floating address's Lease, bound in the workload's namespace.
    assert kinds(render()) == sorted([
        "Certificate", "Certificate", "ClusterRole", "Deployment", "Issuer", "Issuer",
        "MutatingWebhookConfiguration", "PodDisruptionBudget", "Service", "ServiceAccount",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    ])


def test_floating_lease_role_and_bindings():
    role = one(render(), "ClusterRole")
    assert role["metadata"]["name"] == "ipmgmt-floating"
    # Exactly what ipmgmt_common::lease calls: get, create, replace.
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    assert role["metadata"]["labels"]["app.kubernetes.io/component"] == "ip-manager"
    docs = render((ALL_OPTIONS,))
    assert one(docs, "ClusterRole")["metadata"]["name"] == "ipmgmt-floating-leases"
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert [(b["metadata"]["namespace"], b["subjects"]) for b in bindings] == [
        ("upf", [{"kind": "ServiceAccount", "name": "upf", "namespace": "upf"}]),
        ("sip", [{"kind": "ServiceAccount", "name": "proxy", "namespace": "sip"}]),
    ]
    assert all(b["roleRef"]["name"] == "ipmgmt-floating-leases" for b in bindings)


def test_no_rbac_because_the_webhook_calls_no_api():
    for values, version in CASES.values():
        docs = render(values, kube_version=version)
        assert not {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} & set(kinds(component(docs, "webhook")))
        deployment, _ = container_of(docs)
        assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_webhook_configuration_defaults():
    docs = render()
    config, hook = webhook_of(docs)
    assert hook["rules"] == [{
        "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
        "scope": "Namespaced",
    }]
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["timeoutSeconds"] == 5
    assert hook["failurePolicy"] == "Fail"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["matchConditions"] == [{"name": "annotated-with-ipmgmt-mode", "expression": ANNOTATED}]
    assert "caBundle" not in hook["clientConfig"], "cainjector fills the caBundle"
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "ipmgmt-system/ipmgmt"


def test_webhook_reaches_the_service_and_the_https_port():
    docs = render(values=[ALL_OPTIONS])
    _, hook = webhook_of(docs)
    service = one(docs, "Service")
    _, container = container_of(docs)
    ref = hook["clientConfig"]["service"]
    assert (ref["name"], ref["namespace"], ref["path"]) == (service["metadata"]["name"], "ipmgmt-system", "/mutate")
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]]
    (target,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert flag(container["args"], "--listen") == f"0.0.0.0:{target['containerPort']}" == "0.0.0.0:9443"
    assert selector_matches({"matchLabels": service["spec"]["selector"]},
                            one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"])


def test_match_condition_selects_only_annotated_pods():
    _, hook = webhook_of(render())
    (condition,) = hook["matchConditions"]
    matches = Cel(condition["expression"])
    assert matches({"metadata": {"annotations": {"ipmgmt.aws/mode": "init"}}})
    assert matches({"metadata": {"annotations": {"ipmgmt.aws/mode": ""}}})
    assert not matches({"metadata": {"annotations": {"ipmgmt.aws/role-arn": "x"}}})
    assert not matches({"metadata": {"annotations": {}}})
    assert not matches({"metadata": {"name": "plain"}})


def test_namespace_selector_leaves_out_system_and_own_namespaces():
    _, hook = webhook_of(render(values=[ALL_OPTIONS]))
    selector = hook["namespaceSelector"]

    def reaches(name, labels=None):
        return selector_matches(selector, {"kubernetes.io/metadata.name": name, **(labels or {})})

    for name in ("kube-system", "kube-node-lease", "ipmgmt-system", "monitoring"):
        assert not reaches(name, {"ipmgmt.aws/enabled": "true"}), name
    assert reaches("telco", {"ipmgmt.aws/enabled": "true"})
    # all-options adds a namespaceSelector expression: unlabelled namespaces are out.
    assert not reaches("telco")
    values = selector["matchExpressions"][0]["values"]
    assert len(values) == len(set(values)), "kube-system listed twice"


def test_object_selector_leaves_out_the_webhooks_own_pods():
    docs = render()
    _, hook = webhook_of(docs)
    own = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not selector_matches(hook["objectSelector"], own)
    assert selector_matches(hook["objectSelector"], {"app": "multus-app"})


@pytest.mark.parametrize("values, version", [((), "1.29.0"), ((WITHOUT_CERT_MANAGER,), "1.33.0")],
                         ids=["before-1.30", "switched-off"])
def test_without_match_conditions_pods_opt_in_by_label(values, version):
    docs = render(values, kube_version=version)
    _, hook = webhook_of(docs)
    assert "matchConditions" not in hook
    label = "example.com/ipmgmt" if values else "ipmgmt.aws/inject"
    assert not selector_matches(hook["objectSelector"], {"app": "x"})
    assert selector_matches(hook["objectSelector"], {"app": "x", label: "true"})
    if values:
        assert label in notes(values)


def test_match_conditions_can_be_forced_on():
    _, hook = webhook_of(render(values=[ALL_OPTIONS], kube_version="1.28.0"))
    assert hook["matchConditions"][0]["expression"] == ANNOTATED


def test_failure_policy_and_timeout_are_settings():
    _, hook = webhook_of(render(values=[ALL_OPTIONS]))
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Ignore", 10)
    _, hook = webhook_of(render(sets=["webhook.timeoutSeconds=3"]))
    assert hook["timeoutSeconds"] == 3


def test_validating_policy_only_where_the_cluster_has_it():
    assert "ValidatingAdmissionPolicy" not in kinds(render(kube_version="1.29.0"))
    assert "ValidatingAdmissionPolicy" not in kinds(render(values=[WITHOUT_CERT_MANAGER]))
    docs = render(kube_version="1.30.0")
    policy = one(docs, "ValidatingAdmissionPolicy")
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    _, hook = webhook_of(docs)
    # The same pods as the webhook: a pod the webhook never sees is never rejected.
    assert policy["spec"]["matchConstraints"]["namespaceSelector"] == hook["namespaceSelector"]
    assert policy["spec"]["matchConstraints"]["objectSelector"] == hook["objectSelector"]
    assert policy["spec"]["matchConditions"] == hook["matchConditions"]


@pytest.fixture(scope="module")
def sample_pod():
    deployment = one(load_yaml_docs(ROOT / "deploy" / "samples" / "deployment-init.yaml"), "Deployment")
    template = deployment["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**template["metadata"], "name": "multus-app-1", "namespace": "multus-demo"},
            "spec": template["spec"]}


@pytest.mark.parametrize("values", [(), (ALL_OPTIONS,)], ids=["defaults", "all-options"])
def test_validating_policy_rejects_annotated_pods_without_the_manager(values, sample_pod, tmp_path):
    docs = render(values, kube_version="1.33.0")
    policy = one(docs, "ValidatingAdmissionPolicy")
    (validation,) = policy["spec"]["validations"]
    has_manager = Cel(validation["expression"])
    assert not has_manager(sample_pod), "an annotated pod the webhook missed must be rejected"
    assert "has no" in validation["message"]

    # The same pod after the real webhook, run with the chart's own flags, is admitted.
    with chart_webhook(docs, tmp_path) as hook:
        status, body = hook.post(review_of(sample_pod))
    assert status == 200 and body["response"]["allowed"], body
    patched = jsonpatch.apply_patch(sample_pod, decode_patch(body["response"]))
    assert has_manager(patched)


def test_deployment_is_highly_available_and_restricted():
    docs = render()
    deployment, container = container_of(docs)
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for c in pod["topologySpreadConstraints"]:
        assert selector_matches(c["labelSelector"], spec["template"]["metadata"]["labels"])
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert selector_matches(pdb["spec"]["selector"], spec["template"]["metadata"]["labels"])
    assert "priorityClassName" not in pod

    # The restricted Pod Security Standard.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert sc["readOnlyRootFilesystem"] is True
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert key not in pod
    assert all("hostPort" not in p for p in container["ports"])
    assert all(set(v) - {"name"} <= {"secret", "configMap", "emptyDir", "projected"} for v in pod["volumes"])

    # Probes on the admin port, not the TLS one.
    admin = [p for p in container["ports"] if p["name"] == "admin"][0]["containerPort"]
    assert flag(container["args"], "--admin-listen") == f"0.0.0.0:{admin}"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > int(flag(container["args"], "--shutdown-delay-seconds")) + int(
        flag(container["args"], "--drain-timeout-seconds"))


def test_optional_pod_settings():
    docs = render(values=[ALL_OPTIONS])
    deployment, container = container_of(docs)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "ecr-pull"}]
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["affinity"]["nodeAffinity"]
    assert pod["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    assert [c["whenUnsatisfiable"] for c in pod["topologySpreadConstraints"]] == ["DoNotSchedule"]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"] == "ipmgmt-webhook"
    assert one(docs, "ServiceAccount")["metadata"]["annotations"] == {"example.com/owner": "platform"}
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert deployment["spec"]["replicas"] == 3

    docs = render(values=[WITHOUT_CERT_MANAGER])
    deployment, container = container_of(docs)
    pod = deployment["spec"]["template"]["spec"]
    assert "ServiceAccount" not in kinds(docs) and pod["serviceAccountName"] == "default"
    assert "PodDisruptionBudget" not in kinds(docs)
    assert "resources" not in container and "nodeSelector" not in pod


def test_serving_certificate_chain_and_secret_mount():
    docs = render()
    config, _ = webhook_of(docs)
    deployment, container = container_of(docs)
    certificates = {c["metadata"]["name"]: c for c in docs if c["kind"] == "Certificate"}
    issuers = {i["metadata"]["name"]: i for i in docs if i["kind"] == "Issuer"}

    ns, name = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    serving = certificates[name]
    assert ns == "ipmgmt-system"
    service = one(docs, "Service")["metadata"]["name"]
    assert f"{service}.ipmgmt-system.svc" in serving["spec"]["dnsNames"]
    assert "server auth" in serving["spec"]["usages"]
    # serving <- CA Issuer <- CA Certificate <- self-signed Issuer
    ca_issuer = issuers[serving["spec"]["issuerRef"]["name"]]
    ca_cert = [c for c in certificates.values() if c["spec"]["secretName"] == ca_issuer["spec"]["ca"]["secretName"]]
    assert len(ca_cert) == 1 and ca_cert[0]["spec"]["isCA"] is True
    assert ca_cert[0]["spec"]["privateKey"]["rotationPolicy"] == "Never"
    assert "selfSigned" in issuers[ca_cert[0]["spec"]["issuerRef"]["name"]]["spec"]

    # The Secret cert-manager writes is what the webhook reads.
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == serving["spec"]["secretName"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert "subPath" not in mount, "subPath mounts never see a renewed certificate"
    assert flag(container["args"], "--tls-cert") == mount["mountPath"] + "/tls.crt"
    assert flag(container["args"], "--tls-key") == mount["mountPath"] + "/tls.key"


def test_existing_issuer_replaces_the_self_signed_chain():
    docs = render(values=[ALL_OPTIONS])
    assert "Issuer" not in kinds(docs)
    serving = one(docs, "Certificate")
    assert serving["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}


def test_bring_your_own_certificate():
    docs = render(values=[WITHOUT_CERT_MANAGER])
    config, hook = webhook_of(docs)
    assert "Certificate" not in kinds(docs)
    assert "cert-manager.io/inject-ca-from" not in (config["metadata"].get("annotations") or {})
    assert hook["clientConfig"]["caBundle"] == yaml.safe_load(WITHOUT_CERT_MANAGER.read_text())["tls"]["caBundle"]
    deployment, _ = container_of(docs)
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "ipmgmt-serving-cert"

    for given, missing in (("tls.caBundle=Zm9v", "tls.secretName"), ("tls.secretName=mine", "tls.caBundle")):
        proc = helm(*template_args(sets=["certManager.enabled=false", given]), check=False)
        assert proc.returncode != 0 and f"{missing} is required" in proc.stderr, proc.stderr


@pytest.mark.parametrize("setting, path", [
    ("webhok.timeoutSeconds=3", "additional properties 'webhok'"),
    ("webhook.timeoutSecond=3", "additional properties 'timeoutSecond'"),
    ("injection.defaultMode=Sidecar", "/injection/defaultMode"),
    ("webhook.failurePolicy=fail", "/webhook/failurePolicy"),
    ("webhook.timeoutSeconds=31", "/webhook/timeoutSeconds"),
    ("aws.roleArn=my-role", "/aws/roleArn"),
    ("image.ipmgr.pullPolicy=sometimes", "/image/ipmgr/pullPolicy"),
    ("injection.resources.requests.memory=lots", "/injection/resources/requests/memory"),
    ("injection.extraEnv.BAD-NAME=1", "'BAD-NAME' does not match"),
    ("injection.logLevel=info\\,IPMGR_X=1", "/injection/logLevel"),
    ("injection.extraEnv.NO_PROXY=10.0.0.0/8\\,IPMGR_X=1", "/injection/extraEnv/NO_PROXY"),
    ("certManager.issuerRef.kind=Issuer", "/certManager/issuerRef"),
    ("webhook.bodyBufferMiB=3", "/webhook/bodyBufferMiB"),
    ("webhook.maxConcurrentStreams=0", "/webhook/maxConcurrentStreams"),
    ("networkPolicy.apiserverCIDRs={10.0.0.0}", "/networkPolicy/apiserverCIDRs/0"),
    ("networkPolicy.webhookFrom=10.0.0.0/16", "/networkPolicy/webhookFrom"),
    # What the apiserver refuses in a label selector (test_control_plane.py shows it).
    ("webhook.namespaceSelectorExpressions[0].key=team,webhook.namespaceSelectorExpressions[0].operator=In",
     "/webhook/namespaceSelectorExpressions/0"),
    ("webhook.namespaceSelectorExpressions[0].key=team,webhook.namespaceSelectorExpressions[0].operator=Exists,"
     "webhook.namespaceSelectorExpressions[0].values={a}", "/webhook/namespaceSelectorExpressions/0/values"),
])
def test_schema_rejects_typos_and_bad_values(setting, path):
    proc = helm(*template_args(sets=[setting]), check=False)
    assert proc.returncode != 0, f"--set {setting} was accepted"
    assert path in proc.stderr, proc.stderr


def test_images_default_to_the_app_version_and_digests_win():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    deployment, container = container_of(render())
    assert container["image"] == f"public.ecr.aws/ipmgmt/webhook:{chart['appVersion']}"
    assert flag(container["args"], "--image") == f"public.ecr.aws/ipmgmt/ipmgr:{chart['appVersion']}"
    deployment, container = container_of(render(values=[ALL_OPTIONS]))
    assert container["image"].endswith("/ipmgmt/webhook@sha256:" + "0123456789abcdef" * 4)
    assert flag(container["args"], "--image").endswith("/ipmgmt/ipmgr:0.1.0-rc.1")


def test_values_become_webhook_flags():
    _, container = container_of(render(values=[ALL_OPTIONS]))
    args = container["args"]
    assert flag(args, "--default-mode") == "sidecar"
    assert "--classic-sidecar" in args and "--imds-disabled" in args
    assert flag(args, "--region") == "eu-west-1"
    assert flag(args, "--role-arn") == "arn:aws:iam::111122223333:role/ipmgmt-ipmgr"
    assert flag(args, "--imds-endpoint-mode") == "IPv6"
    assert flag(args, "--container-name") == "ip-manager"
    assert flag(args, "--worker-threads") == "2"
    # The body deadline is the apiserver's own timeout.
    assert flag(args, "--body-read-timeout-seconds") == "10"
    assert flag(args, "--body-buffer-mib") == "48"
    assert flag(args, "--max-concurrent-streams") == "64"
    env = [a.split("=", 1)[1] for a in args if a.startswith("--ipmgr-env=")]
    assert "IPMGR_LOG_LEVEL=debug,aws_config=warn" in env and "IPMGR_RESYNC_SECONDS=120" in env

    _, container = container_of(render())
    args = container["args"]
    for absent in ("--classic-sidecar", "--imds-disabled", "--region", "--role-arn", "--imds-endpoint"):
        assert not any(a == absent or a.startswith(absent + "=") for a in args), absent


def network_policy(values=(), sets=()):
    docs = render(values, sets=sets)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    return docs, (policies[0] if policies else None)


def test_network_policy_is_off_by_default():
    assert network_policy()[1] is None


def test_network_policy_lets_in_the_apiserver_and_scrapes_only():
    docs, policy = network_policy(values=[ALL_OPTIONS])
    validate(policy, "1.35.0")
    deployment, container = container_of(docs)
    assert selector_matches(policy["spec"]["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    webhook_rule, admin_rule = policy["spec"]["ingress"]
    # The pod's ports, which the policy applies to: not the Service's 443.
    assert webhook_rule["ports"] == [{"port": ports["https"], "protocol": "TCP"}] and ports["https"] == 9443
    assert admin_rule["ports"] == [{"port": ports["admin"], "protocol": "TCP"}]
    assert webhook_rule["from"] == [
        {"ipBlock": {"cidr": "10.0.0.0/16"}},
        {"ipBlock": {"cidr": "2600:1f14:abc:de00::/56"}},
        {"ipBlock": {"cidr": "100.64.0.0/16"}},
    ]
    (scraper,) = admin_rule["from"]
    assert scraper["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}

    # Only CIDRs, and any scraper: the admin rule names no peer, which lets all in.
    _, policy = network_policy(sets=["networkPolicy.enabled=true", "networkPolicy.apiserverCIDRs={192.168.0.0/20}"])
    validate(policy, "1.33.0")
    webhook_rule, admin_rule = policy["spec"]["ingress"]
    assert webhook_rule["from"] == [{"ipBlock": {"cidr": "192.168.0.0/20"}}]
    assert webhook_rule["ports"] == [{"port": 8443, "protocol": "TCP"}]
    assert "from" not in admin_rule and admin_rule["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_webhook_runs_without_transparent_huge_pages():
    """The environment the slow-client test runs the webhook with is the chart's."""
    from test_webhook_limits import CHART_ENV

    for values in [(), (ALL_OPTIONS,)]:
        _, container = container_of(render(values))
        assert container["env"] == [{"name": k, "value": v} for k, v in CHART_ENV.items()]


def test_network_policy_that_lets_no_apiserver_in_is_refused():
    """Ingress rules with no peer would be default-deny: under failurePolicy Fail every
    annotated pod would be rejected."""
    proc = helm(*template_args(sets=["networkPolicy.enabled=true"]), check=False)
    assert proc.returncode != 0
    assert "networkPolicy.apiserverCIDRs or networkPolicy.webhookFrom" in proc.stderr, proc.stderr


def clap_help():
    """Every long flag of the webhook with its default (None: none) and its possible
    values, from clap's own `--help`, which prints what its attributes say."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPMGMT_")}
    text = subprocess.run([str(WEBHOOK_BIN), "--help"], capture_output=True, text=True, check=True,
                          env=env).stdout
    flags, current = {}, None
    for line in text.splitlines():
        if start := re.match(r"^\s+(?:-\w, )?--([a-z0-9-]+)", line):
            current = flags["--" + start.group(1)] = {"default": None, "values": []}
        elif current is None:
            continue
        elif default := re.match(r"^\s+\[default: (.*)\]$", line):
            current["default"] = default.group(1)
        elif listed := re.match(r"^\s+\[possible values: (.*)\]$", line):
            current["values"] = listed.group(1).split(", ")
        elif item := re.match(r"^\s+- ([^:\s]+):", line):
            current["values"].append(item.group(1))
    assert {"--listen", "--image", "--default-mode", "--ipmgr-env"} <= set(flags), text
    assert flags["--default-mode"]["values"] and flags["--log-format"]["values"], text
    return flags


def clap_flags():
    """Every long flag of the webhook and its default (None: none)."""
    return {name: flag["default"] for name, flag in clap_help().items()}


def rendered_flags(values=()):
    """The chart's webhook flags: {name: [values]}, True for a bare flag."""
    _, container = container_of(render(values))
    flags = {}
    for arg in container["args"]:
        name, _, value = arg.partition("=")
        flags.setdefault(name, []).append(value if "=" in arg else True)
    return flags


# Where the chart's defaults deliberately differ from clap's, or clap has none.
CHART_DIFFERS_FROM_CLAP = {
    "--tls-cert": "the file of cert-manager's Secret; clap has no default",
    "--tls-key": "the same Secret's key; clap has no default",
    "--image": "the chart's own ipmgr image; clap has no default",
    "--shutdown-delay-seconds": "5: endpoints drop the pod before it stops accepting; a local run needs no delay",
    "--log-format": "json for log collectors; clap's text reads best on a terminal",
    "--ipmgr-env": "injection.logLevel and injection.logFormat reach ipmgr through it; clap adds nothing",
    "--body-read-timeout-seconds": "webhook.timeoutSeconds (5): the apiserver stops waiting then; clap's 10 is "
                                   "the apiserver's default timeoutSeconds",
}

# Flags the chart never passes.
NOT_IN_CHART = {
    "--help": "clap's own",
    "--version": "clap's own",
    "--self-signed": "local runs; the chart serves cert-manager's certificate",
    "--self-signed-names": "only with --self-signed",
    "--header-read-timeout-seconds": "cuts off stalled clients; the apiserver sends its headers at once",
    "--ipmgr-path": "where deploy/Dockerfile puts ipmgr in the image, not a setting",
}


def test_chart_defaults_are_clap_defaults():
    clap = clap_flags()
    rendered = rendered_flags()
    differ = {}
    for name, values in rendered.items():
        assert name in clap, f"the chart passes {name}, which the webhook does not have"
        # A flag clap has no default for (or a switch, off unless given) always differs.
        if values != [clap[name]]:
            differ[name] = values
    unexplained = {n: v for n, v in differ.items() if n not in CHART_DIFFERS_FROM_CLAP}
    assert not unexplained, (f"chart defaults differ from clap's {({n: clap[n] for n in unexplained})}: "
                             f"{unexplained}; make them equal, or say why in CHART_DIFFERS_FROM_CLAP")
    stale = set(CHART_DIFFERS_FROM_CLAP) - set(differ)
    assert not stale, f"{stale} no longer differ from clap's defaults: drop them from CHART_DIFFERS_FROM_CLAP"


# The chart value behind each webhook flag that takes one of a closed set of values.
CHART_ENUMS = {
    "--default-mode": ("injection", "defaultMode"),
    "--image-pull-policy": ("image", "ipmgr", "pullPolicy"),
    "--imds-endpoint-mode": ("aws", "imds", "endpointMode"),
    "--log-format": ("webhook", "logFormat"),
}


def test_chart_schema_allows_what_the_webhook_allows():
    schema = json.loads((CHART / "values.schema.json").read_text())
    closed = {name for name, flag in clap_help().items() if flag["values"]}
    assert closed - set(NOT_IN_CHART) == set(CHART_ENUMS), "name the chart value of each closed-set flag"
    for name, path in CHART_ENUMS.items():
        node = schema
        for key in path:
            node = node["properties"][key]
        # An empty string leaves an optional flag out.
        allowed = [v for v in node["enum"] if v != ""]
        assert sorted(allowed) == sorted(clap_help()[name]["values"]), f"{'.'.join(path)} and {name}"


def test_every_webhook_flag_is_a_chart_setting():
    clap = clap_flags()
    passed = set()
    for values in [(), *((f,) for f in CI_VALUES)]:
        passed |= set(rendered_flags(values))
    missing = set(clap) - passed - set(NOT_IN_CHART)
    assert not missing, f"{missing}: give them a chart value and template, or say why not in NOT_IN_CHART"
    assert not set(NOT_IN_CHART) & passed, "NOT_IN_CHART lists a flag the chart passes"
    assert set(NOT_IN_CHART) <= set(clap), "NOT_IN_CHART lists a flag the webhook does not have"


class chart_webhook:
    """The real webhook binary started with the flags the chart's Deployment gives it:
    only addresses and certificate paths are replaced by local ones."""

    def __init__(self, docs, tmp_path):
        _, container = container_of(docs)
        keep = [a for a in container["args"]
                if not a.startswith(("--listen=", "--admin-listen=", "--tls-cert=", "--tls-key=",
                                     "--tls-reload-seconds=", "--log-format="))]
        self.webhook = Webhook(tmp_path, flags=keep, issue_pair=cert_manager_style_pair)

    def __enter__(self):
        return self.webhook

    def __exit__(self, *exc):
        self.webhook.stop()


def cert_manager_style_pair(ca):
    """An ECDSA P-256 pair with the key in SEC1 ("EC PRIVATE KEY"): what cert-manager
    writes for the chart's Certificate (privateKey ECDSA, default PKCS1 encoding)."""
    cert = ca.issue_cert("localhost", "127.0.0.1")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    sec1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    assert sec1.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    return chain, sec1


@pytest.mark.parametrize("values", [(), (ALL_OPTIONS,)], ids=["defaults", "all-options"])
def test_the_webhook_accepts_every_flag_the_chart_passes(values, sample_pod, tmp_path):
    docs = render(values)
    _, container = container_of(docs)
    pod = copy.deepcopy(sample_pod)
    pod["metadata"]["annotations"]["ipmgmt.aws/mode"] = ""
    with chart_webhook(docs, tmp_path) as hook:
        status, body = hook.post(review_of(pod))
        assert hook.admin_get("/readyz")[0] == 200
    assert status == 200 and body["response"]["allowed"], body
    patched = jsonpatch.apply_patch(pod, decode_patch(body["response"]))
    injected = patched["spec"].get("initContainers", []) + patched["spec"]["containers"]
    (manager,) = [c for c in injected if c["name"] == flag(container["args"], "--container-name")]
    assert manager["image"] == flag(container["args"], "--image")
    mode = flag(container["args"], "--default-mode")
    assert manager["command"][-1] == mode, "an empty annotation takes injection.defaultMode"
    # Log filters and lists keep their commas all the way to the manager.
    values_file = yaml.safe_load(values[0].read_text()) if values else {}
    injection = values_file.get("injection", {})
    env = {e["name"]: e.get("value") for e in manager["env"]}
    assert env["IPMGR_LOG_LEVEL"] == injection.get("logLevel", "info")
    for name, value in injection.get("extraEnv", {}).items():
        assert env[name] == str(value), name
    if values:
        assert env["IPMGR_LOG_LEVEL"] == "debug,aws_config=warn"
        assert env["NO_PROXY"] == "169.254.169.254,10.0.0.0/8"


def test_notes_say_what_to_do_next():
    text = notes()
    assert "rollout status deployment/ipmgmt" in text
    assert "ipmgmt.aws/mode: init" in text
    assert "aws.region is empty" in text
    assert "ipmgmt.aws/inject" not in text, "matchConditions need no opt-in label"
    text = notes(values=[ALL_OPTIONS])
    assert "aws.region is empty" not in text and "instance role" not in text
    assert "logs <pod> -c ip-manager" in text
    assert "replicas is below 2" in notes(values=[WITHOUT_CERT_MANAGER])


def test_certs_directory_matches_what_the_chart_renders():
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in render()
                if d["apiVersion"].startswith("cert-manager.io/")}
    standalone = {(d["kind"], d["metadata"]["name"]): d for d in load_yaml_docs(ROOT / "certs" / "cert-manager.yaml")}
    assert sorted(standalone) == sorted(rendered)
    for key, doc in rendered.items():
        expected = copy.deepcopy(doc)
        expected["metadata"].pop("labels")
        expected["metadata"]["namespace"] = "ipmgmt-system"
        assert standalone[key] == expected, f"certs/cert-manager.yaml differs from the chart in {key}"
        validate(standalone[key], "1.33.0")


def test_templates_have_no_unreached_branch():
    """Every `if`/`with`/`range` in the templates names a value; each such value is
    set away from its default by some case above."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    ci = [yaml.safe_load(f.read_text()) for f in CI_VALUES]
    referenced = set()
    for template in (CHART / "templates").glob("*"):
        text = template.read_text()
        # `$w := .Values.webhook` and the like: branches often read values through them.
        aliases = {"$.Values": "", ".Values": ""}
        for alias, path in re.findall(r"(\$\w+)\s*:=\s*\.Values\.([A-Za-z0-9_.]+)\s*-?\}\}", text):
            aliases[alias] = path + "."
        roots = "|".join(re.escape(a) for a in aliases)
        for action in re.findall(r"\{\{-?\s*(?:if|else if|with|range)\b([^}]*)\}\}", text):
            for root, rest in re.findall(rf"({roots})\.([A-Za-z0-9_.]+)", action):
                referenced.add(aliases[root] + rest)
    assert {"webhook.podLabels", "aws.imds.disabled", "certManager.issuerRef"} <= referenced, referenced

    def lookup(tree, dotted):
        for part in dotted.split("."):
            if not isinstance(tree, dict) or part not in tree:
                return KeyError
            tree = tree[part]
        return tree

    for dotted in sorted(referenced):
        default = lookup(defaults, dotted)
        assert default is not KeyError, f".Values.{dotted} is not in values.yaml"
        varied = [lookup(v, dotted) for v in ci]
        assert any(v is not KeyError and v != default for v in varied), (
            f".Values.{dotted} steers a template branch but no file in ci/ changes it"
        )


def test_values_schema_is_well_formed_and_covers_values_yaml():
    schema = json.loads((CHART / "values.schema.json").read_text())

    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)
    def merged(defaults, given):
        # As Helm checks the schema: the file over values.yaml, maps merged key by key,
        # and keys set to null deleted.
        if isinstance(defaults, dict) and isinstance(given, dict):
            out = dict(defaults)
            for k, v in given.items():
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = merged(defaults.get(k), v)
            return out
        return given

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in CI_VALUES:
        jsonschema.validate(merged(defaults, yaml.safe_load(f.read_text())), schema)


def reclaimer_objects(values=(RECLAIMER,), sets=()):
    docs = component(render(values, sets=sets), "reclaimer")
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    return by_kind


def test_reclaimer_is_off_by_default():
    assert component(render(), "reclaimer") == []


def test_reclaimer_rbac_is_only_what_it_uses():
    objects = reclaimer_objects(values=(), sets=("reclaimer.enabled=true",))
    assert sorted(objects) == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Role", "RoleBinding",
                               "ServiceAccount"]
    (cluster_role,) = objects["ClusterRole"]
    rules = {(g, r): sorted(rule["verbs"]) for rule in cluster_role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {("", "pods"): ["list", "watch"], ("", "nodes"): ["list", "watch"],
                     ("", "namespaces"): ["list", "watch"],
                     ("whereabouts.cni.cncf.io", "ippools"): ["list", "watch"],
                     # The guard (on by default): the NADs it judges, an Event on each.
                     ("k8s.cni.cncf.io", "network-attachment-definitions"): ["list", "watch"],
                     ("events.k8s.io", "events"): ["create"]}
    (deployment,) = objects["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    lease = flag(container["args"], "--lease-name")
    roles = {r["metadata"]["namespace"]: r for r in objects["Role"]}
    assert set(roles) == {"ipmgmt-system", "default"}
    own_rules = roles["ipmgmt-system"]["rules"]
    lease_rules = [r for r in own_rules if r["resources"] == ["leases"]]
    assert {(tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in lease_rules} == {
        (("create",), ()), (("get", "update"), (lease,))}
    assert all(r["apiGroups"] == ["coordination.k8s.io"] for r in lease_rules)
    # The guard's ConfigMap for the webhook: its own name only, beyond create.
    guard_map = flag(container["args"], "--guard-configmap")
    map_rules = [r for r in own_rules if r["resources"] == ["configmaps"]]
    assert {(tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in map_rules} == {
        (("create",), ()), (("get", "patch"), (guard_map,))}
    assert len(lease_rules) + len(map_rules) == len(own_rules)
    # Events about Nodes land in the default namespace.
    assert roles["default"]["rules"] == [
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}]
    account = objects["ServiceAccount"][0]["metadata"]["name"]
    for binding in objects["ClusterRoleBinding"] + objects["RoleBinding"]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ipmgmt-system"}]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account


def test_without_the_guard_the_reclaimer_reads_no_nads_and_writes_events_only_on_nodes():
    objects = reclaimer_objects(values=(WITHOUT_GUARD,))
    (cluster_role,) = objects["ClusterRole"]
    groups = {g for rule in cluster_role["rules"] for g in rule["apiGroups"]}
    assert groups == {"", "whereabouts.cni.cncf.io"}, cluster_role["rules"]
    assert all(set(rule["verbs"]) <= {"list", "watch"} for rule in cluster_role["rules"])
    (container,) = objects["Deployment"][0]["spec"]["template"]["spec"]["containers"]
    assert flag(container["args"], "--guard") == "false"


def test_the_webhook_reads_the_findings_the_guard_publishes():
    """The webhook's pods mount the ConfigMap the reclaimer's guard writes (optional:
    it exists after the guard's first pass) and read findings.json from it; without
    the guard, neither."""
    docs = render((RECLAIMER,))
    (deployment,) = [d for d in component(docs, "webhook") if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    (webhook,) = spec["containers"]
    (reclaimer,) = reclaimer_objects()["Deployment"][0]["spec"]["template"]["spec"]["containers"]
    name = flag(reclaimer["args"], "--guard-configmap")
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    assert volume["configMap"] == {"name": name, "optional": True}
    (mount,) = [m for m in webhook["volumeMounts"] if m["name"] == volume["name"]]
    assert flag(webhook["args"], "--guard-findings") == mount["mountPath"] + "/findings.json"
    assert "--guard-deny" in webhook["args"]
    for values in ((), (WITHOUT_GUARD,)):
        (deployment,) = [d for d in component(render(values), "webhook") if d["kind"] == "Deployment"]
        spec = deployment["spec"]["template"]["spec"]
        assert not [v for v in spec["volumes"] if "configMap" in v]
        assert flag(spec["containers"][0]["args"], "--guard-findings") is None
        assert "--guard-deny" not in spec["containers"][0]["args"]


def test_node_readiness_is_off_until_a_node_selector_names_the_nodes():
    (container,) = reclaimer_objects(values=(), sets=("reclaimer.enabled=true",))["Deployment"][0]["spec"][
        "template"]["spec"]["containers"]
    assert not [a for a in container["args"] if a.startswith("--readiness-")]
    objects = reclaimer_objects()
    (container,) = objects["Deployment"][0]["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if a.startswith("--readiness-") and "attach" not in a] == [
        "--readiness-node-label=example.com/multus=true", "--readiness-device-index=1",
        "--readiness-device-index=2", "--readiness-interval=1m"]
    (cluster_role,) = objects["ClusterRole"]
    assert {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]} in cluster_role["rules"]


def test_reclaimer_deployment_is_restricted_probed_and_told_who_it_is():
    objects = reclaimer_objects(values=(), sets=("reclaimer.enabled=true",))
    (deployment,) = objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert selector_matches(deployment["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    webhook, _ = container_of(render(sets=("reclaimer.enabled=true",)))
    assert not selector_matches(webhook["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    admin = container["ports"][0]["containerPort"]
    assert flag(container["args"], "--admin-listen") == f"0.0.0.0:{admin}"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    assert flag(container["args"], "--dry-run") == "false"
    assert flag(container["args"], "--grace") == "5m"


def test_reclaimer_options():
    objects = reclaimer_objects()
    account = objects["ServiceAccount"][0]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/ipmgmt-reclaimer")
    (deployment,) = objects["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert flag(container["args"], "--dry-run") == "true"
    assert flag(container["args"], "--grace") == "10m"
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in container["env"]
    assert flag(container["args"], "--guard") == "true"
    assert flag(container["args"], "--guard-interval") == "5m"
    assert [a for a in container["args"] if a.startswith("--guard-master=")] == [
        "--guard-master=ens6=1", "--guard-master=ens7=2"]
    assert flag(container["args"], "--guard-reserve-ranges") == "true"
    attach = [json.loads(a.split("=", 1)[1]) for a in container["args"] if a.startswith("--readiness-attach=")]
    assert attach == [
        {"deviceIndex": 1, "subnets": {"us-west-2a": "subnet-0a1", "us-west-2b": "subnet-0b1"},
         "securityGroups": ["sg-0c1"]},
        {"deviceIndex": 2, "pool": "upf-n6"}]


def test_the_guard_reserves_ranges_only_when_asked_and_only_with_the_guard_on():
    def args(*sets):
        (deployment,) = reclaimer_objects(sets=sets)["Deployment"]
        return deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    # Off unless asked for: it writes to EC2.
    assert flag(args("reclaimer.guard.reserveRanges=false"), "--guard-reserve-ranges") is None
    off = args("reclaimer.guard.enabled=false")
    assert flag(off, "--guard-reserve-ranges") is None and flag(off, "--guard") == "false"


def selector_string_matches(selector, labels):
    """A label selector string, as the apiserver reads one, against a label map."""
    terms, depth, start = [], 0, 0
    for i, c in enumerate(selector):
        depth += (c == "(") - (c == ")")
        if c == "," and depth == 0:
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    for term in (t.strip() for t in terms if t.strip()):
        m = re.fullmatch(r"(\S+) (in|notin) \((.*)\)", term)
        if m:
            key, op, values = m.group(1), m.group(2), [v.strip() for v in m.group(3).split(",")]
            if (labels.get(key) in values) != (op == "in"):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@pytest.mark.parametrize("expressions", [
    [],
    [{"key": "team", "operator": "In", "values": ["core", "edge"]}],
    [{"key": "ipmgmt.aws/enabled", "operator": "Exists"}, {"key": "legacy", "operator": "DoesNotExist"}],
], ids=["defaults", "in", "exists"])
def test_the_reclaimer_serves_exactly_the_webhooks_namespaces(expressions, tmp_path):
    """The reclaimer's --namespace-selector is the webhook's namespaceSelector, so what
    it may release was handed out in a namespace the webhook serves, and no other."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"reclaimer": {"enabled": True}, "webhook": {
        "excludeNamespaces": ["legacy-nf"], "namespaceSelectorExpressions": expressions}}))
    docs = render((values,))
    (hook,) = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    webhook_selector = hook["webhooks"][0]["namespaceSelector"]
    (deployment,) = reclaimer_objects(values=(values,))["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    selector = flag(container["args"], "--namespace-selector")
    label_sets = [{"kubernetes.io/metadata.name": n} for n in
                  ("multus-demo", "kube-system", "kube-node-lease", "ipmgmt-system", "legacy-nf")]
    label_sets += [dict(l, team=t) for l in label_sets for t in ("core", "edge", "other")]
    label_sets += [dict(l, **{"ipmgmt.aws/enabled": "x"}) for l in label_sets]
    label_sets += [dict(l, legacy="1") for l in label_sets]
    for labels in label_sets:
        assert selector_string_matches(selector, labels) == selector_matches(webhook_selector, labels), (
            selector, labels)


@pytest.mark.parametrize("values", [(), (RECLAIMER,), (WITHOUT_GUARD,)],
                         ids=["defaults", "reclaimer-values", "without-guard"])
def test_the_reclaimer_accepts_every_flag_the_chart_passes(values):
    """The chart's arguments parse: the binary gets past its flags and stops only at
    the missing cluster (exit 1), where a bad flag would be a usage error (exit 2)."""
    objects = reclaimer_objects(values=values, sets=("reclaimer.enabled=true",))
    (container,) = objects["Deployment"][0]["spec"]["template"]["spec"]["containers"]
    binary = ROOT / "target" / "debug" / "ipmgmt-reclaimer"
    env = {"POD_NAME": "r-0", "POD_NAMESPACE": "ipmgmt-system", "KUBECONFIG": "/nonexistent",
           "PATH": os.environ["PATH"]}
    proc = subprocess.run([str(binary), *container["args"]], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert "usage" not in proc.stderr.lower(), proc.stderr
