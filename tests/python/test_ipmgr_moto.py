"""ipmgr against moto_server: a check that the SDK's requests and moto's real-format
answers agree where moto is right. moto ignores AllowReassignment, per-ENI limits and
subnet checks, so the semantics are tested against the project's fake EC2
(tests/tests/pod_netns.rs); this is a wire-format check. moto's IMDS stub lacks the
token TTL header, so IMDS is off and the instance comes from NODE_NAME."""

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

import boto3
import pytest

from cluster.vpc import Sandbox

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
IPMGR = pathlib.Path(os.environ.get("IPMGR_BIN", TARGET / "debug" / "ipmgr"))
VENV_BIN = pathlib.Path(__file__).resolve().parents[2] / ".venv" / "bin"



def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pod():
    """The pod's network namespace, as the whole-path tests make it: `eth0` on a /30
    to the host, where moto listens."""
    assert os.geteuid() == 0, "this test needs root for network namespaces (CI runs as root)"
    sandbox = Sandbox()
    yield sandbox
    sandbox.delete()


@pytest.fixture
def moto(pod):
    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", pod.host_ip, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = "http://%s:%d" % (pod.host_ip, port)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((pod.host_ip, port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def ipmgr():
    """A copy uid 65532 can execute: the checkout may sit below a root-only directory."""
    assert IPMGR.exists(), f"{IPMGR} is missing: run cargo test --workspace first"
    folder = tempfile.mkdtemp(prefix="ipmgmt-moto-bin-")
    try:
        os.chmod(folder, 0o755)
        copy = os.path.join(folder, IPMGR.name)
        shutil.copy(IPMGR, copy)
        os.chmod(copy, 0o755)
        yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_ipmgr_init_against_moto(pod, moto, ipmgr):
    ec2 = boto3.client("ec2", endpoint_url=moto, region_name="us-west-2",
                       aws_access_key_id="AKIDTEST", aws_secret_access_key="secret")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="m5.large",
                                 SubnetId=subnet, PrivateIpAddress="10.0.1.5")["Instances"][0]
    # The Multus ENI carries the tag that keeps the VPC CNI away; the second does not.
    no_manage = [{"ResourceType": "network-interface",
                  "Tags": [{"Key": "node.k8s.amazonaws.com/no_manage", "Value": "true"}]}]
    # Fixed primary addresses: moto otherwise picks one at random in the subnet, and it
    # may be the very address the test expects to be assigned, or not.
    eni = ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress="10.0.1.10",
                                       TagSpecifications=no_manage)["NetworkInterface"]
    ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                 InstanceId=instance["InstanceId"], DeviceIndex=1)
    untagged = ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress="10.0.1.11")["NetworkInterface"]
    ec2.attach_network_interface(NetworkInterfaceId=untagged["NetworkInterfaceId"],
                                 InstanceId=instance["InstanceId"], DeviceIndex=2)

    def interface(name, mac, address):
        pod.add_interface(name, mac)
        pod.add_address(name, address)

    interface("net1", eni["MacAddress"], "10.0.1.50/24")

    env = {
        "PATH": os.environ["PATH"],
        "HOME": "/nonexistent",
        "AWS_ENDPOINT_URL_EC2": moto,
        "AWS_REGION": "us-west-2",
        "AWS_ACCESS_KEY_ID": "AKIDTEST",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_EC2_METADATA_DISABLED": "true",
        "NODE_NAME": instance["PrivateDnsName"],
        "IPMGR_ADDRESS_WAIT_SECONDS": "2",
        "IPMGR_DEADLINE_SECONDS": "20",
        "IPMGR_TERMINATION_LOG": "/dev/null",
    }
    # As the injected container runs: uid 65532, no capabilities, no new privileges.
    as_pod = ["ip", "netns", "exec", pod.ns, "setpriv", "--reuid=65532", "--regid=65532", "--clear-groups",
              "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", ipmgr, "init"]
    out = subprocess.run(as_pod, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    described = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni["NetworkInterfaceId"]])
    addresses = [a["PrivateIpAddress"] for a in described["NetworkInterfaces"][0]["PrivateIpAddresses"]]
    assert "10.0.1.50" in addresses, addresses
    # The instance was named by the ENI with the interface's MAC (DescribeNetworkInterfaces
    # on mac-address, over EC2's wire format), not IMDS.
    assert "instance of the ENIs the pod's interfaces ride on" in out.stderr, out.stderr

    # The untagged ENI's tags read over the wire as absent: refused by name.
    interface("net2", untagged["MacAddress"], "10.0.1.60/24")
    out = subprocess.run(as_pod, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert untagged["NetworkInterfaceId"] in out.stderr and "no_manage=true" in out.stderr, out.stderr
    described = ec2.describe_network_interfaces(NetworkInterfaceIds=[untagged["NetworkInterfaceId"]])
    addresses = [a["PrivateIpAddress"] for a in described["NetworkInterfaces"][0]["PrivateIpAddresses"]]
    assert "10.0.1.60" not in addresses, addresses
