"""Everything in deploy/ besides the chart: samples, IAM documents and the Dockerfile."""

import ipaddress
import json
import re
import shlex
import subprocess

import jsonpatch
import kubernetes_validate
import pytest

from deploy_harness import SAMPLES, cni_config, load_yaml_docs, ranges, validate
from webhook_harness import ROOT, Webhook, decode_patch, review_of

K8S_VERSION = "1.33.0"
SAMPLE_FILES = sorted(SAMPLES.glob("*.yaml"))
SAMPLE_DOCS = [(f.name, doc) for f in SAMPLE_FILES for doc in load_yaml_docs(f)]
VENV_BIN = ROOT / ".venv" / "bin"


def samples_of(kind):
    return [doc for _, doc in SAMPLE_DOCS if doc["kind"] == kind]


@pytest.mark.parametrize("name, doc", SAMPLE_DOCS, ids=lambda x: x if isinstance(x, str) else x["kind"])
def test_every_sample_is_valid(name, doc):
    validate(doc, K8S_VERSION)


def test_samples_cover_what_users_need():
    nads = {n["metadata"]["name"]: cni_config(n) for n in samples_of("NetworkAttachmentDefinition")}
    modes = {d["spec"]["template"]["metadata"]["annotations"]["ipmgmt.aws/mode"] for d in samples_of("Deployment")}
    assert modes == {"init", "sidecar"}
    families = {net.version for cfg in nads.values() for net, _, _ in ranges(cfg["ipam"])}
    assert families == {4, 6}, "an IPv4 and a dual-stack attachment"


@pytest.mark.parametrize("nad", samples_of("NetworkAttachmentDefinition"), ids=lambda n: n["metadata"]["name"])
def test_attachments_are_ipvlan_with_whereabouts_in_one_subnet(nad):
    cfg = cni_config(nad)
    assert cfg["type"] == "ipvlan" and cfg["mode"] in ("l2", "l3", "l3s")
    assert re.fullmatch(r"eth[1-9]", cfg["master"]), "the master is a secondary ENI, never eth0"
    ipam = cfg["ipam"]
    assert ipam["type"] == "whereabouts"
    for network, first, last in ranges(ipam):
        assert first in network and last in network and first <= last
        # EC2 reserves the first four addresses and the last one of every subnet.
        if network.version == 4:
            assert first >= network[4] and last < network[-1], f"{first}-{last} overlaps EC2's reserved addresses"
    if "gateway" in ipam:
        assert any(ipaddress.ip_address(ipam["gateway"]) in net for net, _, _ in ranges(ipam))


def test_workloads_reference_attachments_that_exist_in_their_namespace():
    nads = {(n["metadata"]["namespace"], n["metadata"]["name"]) for n in samples_of("NetworkAttachmentDefinition")}
    namespaces = {n["metadata"]["name"] for n in samples_of("Namespace")}
    for deployment in samples_of("Deployment"):
        ns = deployment["metadata"]["namespace"]
        assert ns in namespaces
        wanted = deployment["spec"]["template"]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]
        for name in (w.strip() for w in wanted.split(",")):
            assert (ns, name) in nads, f"{deployment['metadata']['name']} asks for {name}, which no sample defines"


def test_floating_ip_lies_in_the_subnet_but_outside_the_pool():
    (pair,) = [d for d in samples_of("Deployment") if d["metadata"]["name"] == "floating-ip-pair"]
    text = (SAMPLES / "deployment-sidecar-floating-ip.yaml").read_text()
    (vip,) = set(re.findall(r"ip addr add (\S+) dev net1", text))
    vip = ipaddress.ip_interface(vip)
    nad = [n for n in samples_of("NetworkAttachmentDefinition")
           if n["metadata"]["name"] == pair["spec"]["template"]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]]
    ((network, first, last),) = ranges(cni_config(nad[0])["ipam"])
    assert vip.ip in network and vip.network == network
    assert not first <= vip.ip <= last, "whereabouts would hand the floating IP to another pod"


@pytest.fixture(scope="module")
def webhook(tmp_path_factory):
    hook = Webhook(tmp_path_factory.mktemp("deploy-webhook"))
    yield hook
    hook.stop()


@pytest.mark.parametrize("deployment", samples_of("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_sample_pods_after_the_webhook_are_valid(webhook, deployment):
    template = deployment["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {**template["metadata"], "name": deployment["metadata"]["name"] + "-x1",
                        "namespace": deployment["metadata"]["namespace"]},
           "spec": template["spec"]}
    status, body = webhook.post(review_of(pod))
    assert status == 200 and body["response"]["allowed"], body
    assert not body["response"].get("warnings"), body["response"].get("warnings")
    patched = jsonpatch.apply_patch(pod, decode_patch(body["response"]))
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    first = patched["spec"]["initContainers"][0]
    assert first["name"] == "aws-ip-mgmt"
    mode = template["metadata"]["annotations"]["ipmgmt.aws/mode"]
    assert first["command"][-1] == mode
    assert (first.get("restartPolicy") == "Always") == (mode == "sidecar")


def test_iam_policy_is_least_privilege():
    policy = json.loads((ROOT / "deploy" / "iam-policy.json").read_text())
    actions = [a for s in policy["Statement"] for a in s["Action"]]
    # Exactly the actions the manager calls: the Rust test of the policy compares both sets.
    assert len(actions) == len(set(actions))
    # DescribeVpcs tells an address outside the VPC (left alone) from a wrong pool.
    assert "ec2:DescribeVpcs" in actions
    assert not {"ec2:ModifyNetworkInterfaceAttribute", "ec2:ModifyInstanceMetadataOptions"} & set(actions)
    assert all(not a.endswith("*") for a in actions)
    for statement in policy["Statement"]:
        mutating = [a for a in statement["Action"] if not a.startswith("ec2:Describe")]
        if mutating:
            # Assign/Unassign act on network interfaces only, and only on the ones
            # tagged for Multus: never a node's primary ENI or another team's.
            assert statement["Resource"] == "arn:aws:ec2:*:*:network-interface/*"
            assert statement["Condition"] == {
                "StringEquals": {"ec2:ResourceTag/node.k8s.amazonaws.com/no_manage": "true"}}


def test_reclaimer_policy_changes_multus_enis_only():
    """The reclaimer unassigns, and puts back an address claimed while its release was in
    flight: both only on ENIs tagged for Multus. It reads subnets and their CIDR
    reservations for the address-range guard."""
    policy = json.loads((ROOT / "deploy" / "reclaimer-iam-policy.json").read_text())
    actions = sorted(a for st in policy["Statement"]
                     for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"]))
    assert actions == ["ec2:AssignIpv6Addresses", "ec2:AssignPrivateIpAddresses",
                       "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
                       "ec2:GetSubnetCidrReservations", "ec2:UnassignIpv6Addresses",
                       "ec2:UnassignPrivateIpAddresses"]
    for statement in policy["Statement"]:
        if "assign" in json.dumps(statement["Action"]):
            assert statement["Resource"] == "arn:aws:ec2:*:*:network-interface/*"
            assert statement["Condition"] == {
                "StringEquals": {"ec2:ResourceTag/node.k8s.amazonaws.com/no_manage": "true"}}
    assert parliament_findings(policy) == []


def test_the_opt_in_attachment_policy_makes_and_attaches_only_multus_enis():
    """Node readiness attaching ENIs (reclaimer.readiness.attach) has a policy of its
    own: it may create an ENI only with the no_manage tag asked for at creation, tag
    only while creating, and attach, modify or delete only ENIs that carry the tag; parliament
    checks every key against AWS's definitions."""
    policy = json.loads((ROOT / "deploy" / "reclaimer-attach-iam-policy.json").read_text())
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["ReclaimerCreateOnlyMultusEnis"]["Condition"] == {
        "StringEquals": {"aws:RequestTag/node.k8s.amazonaws.com/no_manage": "true"}}
    assert by_sid["ReclaimerTagOnlyAtCreation"]["Condition"] == {
        "StringEquals": {"ec2:CreateAction": "CreateNetworkInterface"}}
    assert by_sid["ReclaimerAttachOnlyMultusEnis"]["Condition"] == {
        "StringEquals": {"ec2:ResourceTag/node.k8s.amazonaws.com/no_manage": "true"}}
    for statement in policy["Statement"]:
        if statement["Resource"] == "arn:aws:ec2:*:*:network-interface/*":
            assert "Condition" in statement, statement
    real = lambda findings: split_statement_findings_dropped(policy, findings)  # noqa: E731
    assert real(parliament_findings(policy)) == []
    # The check can fail: a condition key the action's resource does not define, and
    # a required type covered nowhere.
    wrong = json.loads(json.dumps(policy).replace("ec2:ResourceTag/", "ec2:InstanceTag/"))
    assert {issue for issue, _ in real(parliament_findings(wrong))} == {"UNKNOWN_CONDITION_FOR_ACTION"}
    policy["Statement"] = [st for st in policy["Statement"] if st["Sid"] != "ReclaimerAttachToInstances"]
    assert real(parliament_findings(policy)), "attaching needs the instance resource too"


def test_the_opt_in_reservation_policy_is_its_own_and_valid():
    """Creating subnet CIDR reservations (reclaimer.guard.reserveRanges) is in a policy
    of its own, attached only with the opt-in: EC2 defines no resource for
    CreateSubnetCidrReservation, so no tag can scope it, and parliament, with AWS's
    definitions, refuses any Resource but `*`."""
    policy = json.loads((ROOT / "deploy" / "reclaimer-reserve-iam-policy.json").read_text())
    (statement,) = policy["Statement"]
    assert statement["Action"] == ["ec2:CreateSubnetCidrReservation"] and statement["Resource"] == "*"
    assert parliament_findings(policy) == []
    scoped = json.loads(json.dumps(policy).replace('"*"', '"arn:aws:ec2:*:*:subnet/*"'))
    assert [issue for issue, _ in parliament_findings(scoped)] == ["RESOURCE_MISMATCH"]


def split_statement_findings_dropped(policy, findings):
    """parliament wants every resource type an action requires in each statement that
    names it; where tag conditions hold for one resource type only, the types are split
    over statements, as AWS's own examples do. Its RESOURCE_MISMATCH is dropped where
    another statement of the policy covers the type; every other finding stays."""
    def covered(detail):
        kind = detail["required_format"].rsplit(":", 1)[1]
        return any(detail["action"] in st["Action"]
                   and any(r.endswith(":" + kind) for r in ([st["Resource"]] if isinstance(st["Resource"], str)
                                                            else st["Resource"]))
                   for st in policy["Statement"])

    return [(issue, detail) for issue, detail in findings
            if not (issue == "RESOURCE_MISMATCH" and all(covered(d) for d in detail))]


def test_the_floating_address_policy_touches_only_tagged_eips_route_tables_and_multus_enis():
    """What the IP manager of a floating address will call beyond its base policy
    (issue 26): EIPs and route tables only where tagged ipmgmt.aws/floating=true, and
    EIP associations only on Multus ENIs; parliament checks every key against AWS's
    definitions (CreateRoute authorizes only the route table)."""
    policy = json.loads((ROOT / "deploy" / "floating-iam-policy.json").read_text())
    for statement in policy["Statement"]:
        if statement["Resource"] != "*":
            (key,) = statement["Condition"]["StringEquals"]
            assert key in ("ec2:ResourceTag/ipmgmt.aws/floating", "ec2:ResourceTag/node.k8s.amazonaws.com/no_manage")
    assert split_statement_findings_dropped(policy, parliament_findings(policy)) == []
    wrong = json.loads(json.dumps(policy).replace("ec2:ResourceTag/", "ec2:InstanceTag/"))
    assert {i for i, _ in split_statement_findings_dropped(wrong, parliament_findings(wrong))} == {
        "UNKNOWN_CONDITION_FOR_ACTION"}


def parliament_findings(policy):
    import parliament

    return [(f.issue, f.detail) for f in parliament.analyze_policy_string(json.dumps(policy)).findings]


def test_iam_policy_is_valid_for_aws_own_definitions():
    """parliament carries AWS's IAM definitions: every action exists, and every
    condition key applies to the actions it is used with."""
    policy = json.loads((ROOT / "deploy" / "iam-policy.json").read_text())
    assert parliament_findings(policy) == []
    # The check can fail: a condition key EC2 does not define for these actions.
    wrong = json.loads(json.dumps(policy).replace("ec2:ResourceTag/", "ec2:InstanceTag/"))
    findings = parliament_findings(wrong)
    assert findings and all(issue == "UNKNOWN_CONDITION_FOR_ACTION" for issue, _ in findings), findings


def test_the_guides_cluster_tag_condition_is_valid_in_both_policies():
    """The user guide's condition for one cluster's ENIs (chart value aws.clusterTag),
    put into each shipped policy's mutating statement, passes AWS's definitions."""
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    (fragment,) = [b for b in re.findall(r"```json\n(.*?)```", guide, re.S) if "kubernetes.io/cluster/" in b]
    condition = json.loads("{" + fragment.strip() + "}")["Condition"]
    assert condition["StringEquals"]["ec2:ResourceTag/node.k8s.amazonaws.com/no_manage"] == "true"
    for name in ("iam-policy.json", "reclaimer-iam-policy.json"):
        policy = json.loads((ROOT / "deploy" / name).read_text())
        scoped = [st for st in policy["Statement"] if "Condition" in st]
        assert scoped, name
        for statement in scoped:
            statement["Condition"] = condition
        assert parliament_findings(policy) == [], name


def test_irsa_trust_policy_matches_what_the_webhook_injects():
    trust = json.loads((ROOT / "deploy" / "irsa-trust-policy.json").read_text())
    (statement,) = trust["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    provider = statement["Principal"]["Federated"].split(":oidc-provider/", 1)[1]
    conditions = {**statement["Condition"]["StringEquals"], **statement["Condition"]["StringLike"]}
    # The projected token's audience is the chart's aws.tokenAudience default.
    assert conditions[f"{provider}:aud"] == "sts.amazonaws.com"
    subjects = conditions[f"{provider}:sub"]
    sample_ns = {d["metadata"]["namespace"] for d in samples_of("Deployment")}
    for ns in sample_ns:
        assert any(re.fullmatch(s.replace("*", ".*"), f"system:serviceaccount:{ns}:default") for s in subjects)


def dockerfile_run_commands(text):
    joined = re.sub(r"\\\n", " ", text)
    return [line for line in joined.splitlines() if line.startswith("RUN ")]


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([str(VENV_BIN / "hadolint"), str(ROOT / "deploy" / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_builds_with_the_tests_cargo_command():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    test_script = (ROOT / "scripts" / "test").read_text()
    (tested,) = re.findall(r"^cargo test (.*)$", test_script, re.M)
    builds = [re.search(r"cargo build ([^;&]*)", run).group(1) for run in dockerfile_run_commands(text)
              if "cargo build" in run]
    assert len(builds) == 1
    built = shlex.split(builds[0])
    assert set(shlex.split(tested)) <= set(built), f"image built with {built}, tests ran {tested}"
    assert "--release" in built


def test_dockerfile_images_are_minimal_non_root_and_where_the_webhook_looks():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    finals = re.split(r"^FROM ", text, flags=re.M)[1:]
    by_name = {block.split("\n")[0].split(" AS ")[1].strip(): block for block in finals}
    assert set(by_name) == {"build", "webhook", "ipmgr", "reclaimer"}
    for name in ("webhook", "ipmgr", "reclaimer"):
        block = by_name[name]
        assert "distroless" in block.split()[0] and ":nonroot" in block.split()[0]
        assert re.search(r"^USER 65532:65532$", block, re.M)
        assert "RUN " not in block, "nothing runs in the final stage: it has no shell"
    (ipmgr_path,) = re.findall(r"COPY --from=build /out/ipmgr (\S+)", by_name["ipmgr"])
    webhook_help = subprocess.run([str(ROOT / "target" / "debug" / "ipmgmt-webhook"), "--help"],
                                  capture_output=True, text=True).stdout
    assert f"[default: {ipmgr_path}]" in webhook_help, "--ipmgr-path must name the binary in the ipmgr image"
    # The injected container's default user is the image's user.
    assert "[default: 65532]" in webhook_help.split("--run-as-user", 1)[1].split("--", 1)[0]
    assert "--platform=$BUILDPLATFORM" in by_name["build"].split("\n")[0]
    for arch in ("amd64", "arm64"):
        assert f"{arch})" in by_name["build"], f"the build stage cannot target {arch}"
