"""The whole path with real images run by podman: the scenes of ./scripts/demo,
asserted on what EC2 holds, exit codes and termination messages (whole_path.py,
cluster.py). Needs root: without it every test here fails, saying so."""

import ipaddress
import json

import pytest

import cluster as k
import whole_path as scenes


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = k.Cluster(tmp_path_factory.mktemp("whole-path"))
    yield c
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
    assert set(stages) == {"webhook", "ipmgr"}
    for name, stage in stages.items():
        tag, _ = cl.images[name]
        config = json.loads(cl.podman("image", "inspect", tag).stdout)[0]["Config"]
        assert config["User"] == stage["user"] == "65532:65532"
        assert config["Entrypoint"] == stage["entrypoint"] == [stage["copy"][0][1]]
        assert sorted(config.get("ExposedPorts", {})) == sorted(f"{p}/tcp" for p in stage["expose"])
        # The shared libraries made it in: the binary starts.
        version = cl.podman("run", "--rm", "--pull", "never", "--network", "none", tag, "--version")
        assert version.stdout.strip(), name
    # The manager the webhook injects is the binary the ipmgr image holds.
    manager = init_scene[0]["admitted"].pod["spec"]["initContainers"][0]
    assert manager["image"] == cl.images["ipmgr"][0]
    assert manager["command"][0] == stages["ipmgr"]["copy"][0][1]


def test_a_changed_base_image_is_caught():
    stage = dict(k.dockerfile_stages()["ipmgr"], **{"from": "gcr.io/distroless/static-debian12:nonroot"})
    with pytest.raises(k.Fail, match="update cluster.build_image"):
        k.build_image(None, stage, k.TARGET / "debug" / "ipmgr", "unused")


def test_webhook_runs_with_the_charts_arguments(cl):
    args = cl.webhook.container.inspect()["Args"]
    listen = ("--listen=", "--admin-listen=")
    assert [a for a in args if not a.startswith(listen)] == [a for a in cl.webhook.chart_args
                                                              if not a.startswith(listen)]
    assert f"--listen=127.0.0.1:{cl.webhook.port}" in args


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
    pod = permission_scene["pod"]
    ((name, code, _, message),) = pod.init_results
    assert pod.phase == "Init:Error" and pod.app_started is None
    assert (name, code) == ("aws-ip-mgmt", 1)
    assert len(message.splitlines()) == 1
    assert "UnauthorizedOperation" in message and "ec2:AssignPrivateIpAddresses" in message
    for address, holders in permission_scene["held"].items():
        if ipaddress.ip_address(address).version == 4:
            assert holders == [], f"{address} was assigned although the role may not"
