"""The whole path on the real control plane, with real images run by podman: the
scenes of ./scripts/demo, asserted on what the apiserver and EC2 hold (whole_path.py,
cluster/). Needs root: without it every test here fails, saying so."""

import ipaddress
import json

import pytest

import cluster as k
import whole_path as scenes


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = k.Cluster(tmp_path_factory.mktemp("whole-path"))
    try:
        scenes.apply_samples(c)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def init_scene(cl):
    return scenes.scene_init_deployment(cl)


@pytest.fixture(scope="module")
def floating_scene(cl, init_scene):
    return scenes.scene_floating_ip(cl)


@pytest.fixture(scope="module")
def permission_scene(cl, floating_scene):
    return scenes.scene_missing_permission(cl)


def test_images_follow_the_released_dockerfile(cl, init_scene):
    stages = k.dockerfile_stages()
    assert set(stages) == {"webhook", "ipmgr", "reclaimer"}
    for name, (tag, _) in cl.images.items():
        stage = stages[name]
        config = json.loads(cl.podman("image", "inspect", tag).stdout)[0]["Config"]
        assert config["User"] == stage["user"] == "65532:65532"
        assert config["Entrypoint"] == stage["entrypoint"] == [stage["copy"][0][1]]
        assert sorted(config.get("ExposedPorts", {})) == sorted(f"{p}/tcp" for p in stage["expose"])
        # The shared libraries made it in: the binary starts.
        version = cl.podman("run", "--rm", "--pull", "never", "--network", "none", tag, "--version")
        assert version.stdout.strip(), name
    # The manager the webhook injects is the binary the ipmgr image holds.
    manager = init_scene[0]["stored"]["spec"]["initContainers"][0]
    assert manager["image"] == cl.images["ipmgr"][0]
    assert manager["command"][0] == stages["ipmgr"]["copy"][0][1]


def test_a_changed_base_image_is_caught():
    stage = dict(k.dockerfile_stages()["ipmgr"], **{"from": "gcr.io/distroless/static-debian12:nonroot"})
    with pytest.raises(k.Fail, match="update cluster.build_image"):
        k.build_image(None, stage, k.TARGET / "debug" / "ipmgr", "unused")


def test_webhook_pods_run_the_deployments_own_container(cl):
    """The chart's webhook pods, from its image with its args unchanged, behind the
    chart's Service: the EndpointSlice controller lists each pod's address."""
    deployment = cl.cp.get("/apis/apps/v1/namespaces/ipmgmt-system/deployments/ipmgmt")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    pods = cl.workers("ipmgmt-system", k.selector(deployment))
    assert len(pods) == deployment["spec"]["replicas"] == 2
    # The chart's topology spread, on nodes labelled as EKS labels them.
    assert len({p["spec"]["nodeName"] for p, _ in pods}) == 2, "spread over both nodes"
    endpoints = set(cl.wait_for_webhook())
    for stored, worker in pods:
        running = worker.pod.container("webhook").inspect()
        assert running["Args"] == container["args"]
        assert running["ImageName"] == container["image"] == cl.images["webhook"][0]
        assert stored["status"]["podIP"] in endpoints
        assert k.is_ready(stored)


def test_the_apiserver_called_the_webhook_for_the_samples(init_scene):
    for step in init_scene:
        stored = step["stored"]
        assert stored["metadata"]["annotations"]["ipmgmt.aws/injected"]
        (owner,) = stored["metadata"]["ownerReferences"]
        assert owner["kind"] == "ReplicaSet" and owner["name"].startswith("multus-app-")
        assert [c["name"] for c in stored["spec"]["initContainers"]] == ["aws-ip-mgmt"]


def test_kubelet_reports_what_ran(init_scene):
    for step in init_scene:
        status = step["stored"]["status"]
        ((init,),) = [status["initContainerStatuses"]]
        assert init["state"]["terminated"]["exitCode"] == 0 and init["name"] == "aws-ip-mgmt"
        assert status["phase"] == "Running" and status["podIP"] == step["pod"].sandbox.pod_ip
        assert status["containerStatuses"][0]["ready"] is True
        network_status = json.loads(step["stored"]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"])
        assert [n["interface"] for n in network_status] == ["eth0", "net1", "net2"]


def test_init_pods_have_their_addresses_on_their_own_nodes_enis_before_the_app(init_scene):
    assert len(init_scene) == 2
    assert len({step["node"].name for step in init_scene}) == 2
    for step in init_scene:
        pod = step["pod"]
        ((name, code, _, message),) = pod.init_results
        assert (name, code, message) == ("aws-ip-mgmt", 0, "")
        assert pod.phase == "Running" and pod.app_started is not None
        for address in step["placed"]:
            assert f" {address}/" in step["app_log"], f"the app's `ip addr` does not show {address}"
        assert len(step["placed"]) == 3
        for address, (eni, holders) in step["placed"].items():
            assert holders == [eni.id], f"{address} is held by {holders}, not by {eni.id}"
            assert eni in step["node"].enis.values()


def test_imds_is_unreachable_from_the_pods_as_on_eks(init_scene):
    pod = init_scene[0]["pod"]
    out = pod.exec("app", "sh", "-c", "wget -q -T 2 -O- http://169.254.169.254/latest/meta-data/ 2>&1 || echo unreachable")
    assert out.strip().endswith("unreachable"), out


def test_dual_stack_addresses_both_land_on_the_second_multus_eni(init_scene):
    for step in init_scene:
        eth2 = step["node"].enis[2]
        on_eth2 = {ipaddress.ip_address(a).version for a, (eni, holders) in step["placed"].items()
                   if eni is eth2 and holders == [eth2.id]}
        assert on_eth2 == {4, 6}


def test_floating_ip_follows_the_pod_that_holds_it(floating_scene):
    s = floating_scene
    assert s["to_a"] >= 0 and s["failover"] >= 0
    a, b = s["pods"]
    assert a.node is not b.node, "the sample's anti-affinity puts the pair on two nodes"
    assert s["pods_after_a"] == [b.name], "the scale-down took the pod with the lower deletion cost"
    assert s["stop_a"] == {"app": 0, "aws-ip-mgmt": 0}
    assert s["after_a"] == {"vip": [s["eni_b"].id], "own": []}, "the VIP stays with the new holder"


def test_a_sidecar_stopped_while_holding_the_vip_releases_it(floating_scene):
    assert floating_scene["stop_b"] == {"app": 0, "aws-ip-mgmt": 0}
    assert floating_scene["after_b"] == {"vip": [], "own": []}


def test_the_sidecar_runs_as_the_patched_pod_says(floating_scene):
    host_config = floating_scene["sidecar"]["HostConfig"]
    assert floating_scene["sidecar"]["Config"]["User"] == "65532:65532"
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["NetworkMode"].startswith("ns:/run/netns/ipmgmt-wp-")
    status = floating_scene["sidecar_process"]
    assert status["Uid"].split() == ["65532"] * 4 and status["Gid"].split() == ["65532"] * 4
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2", "RuntimeDefault seccomp filter"


def test_a_missing_permission_is_one_line_in_the_termination_message(permission_scene):
    stored = permission_scene["stored"]
    ((status,),) = [stored["status"]["initContainerStatuses"]]
    terminated = status["state"]["terminated"]
    assert stored["status"]["phase"] == "Pending" and permission_scene["pod"].app_started is None
    assert permission_scene["status_column"] == "Init:Error"
    assert (status["name"], terminated["exitCode"]) == ("aws-ip-mgmt", 1)
    message = terminated["message"]
    assert len(message.splitlines()) == 1
    assert "UnauthorizedOperation" in message and "ec2:AssignPrivateIpAddresses" in message
    # Scaled back, the ReplicaSet took the pod that never became ready.
    assert permission_scene["kept"] == permission_scene["before"]
    for address, holders in permission_scene["held"].items():
        if ipaddress.ip_address(address).version == 4:
            assert holders == [], f"{address} was assigned although the role may not"
