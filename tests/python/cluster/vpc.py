"""The VPC and the nodes: the fake EC2 as a process, the nodes' ENIs, and each pod's
network namespace with its Multus interfaces."""

import ipaddress
import json
import os
import pathlib
import subprocess
import time
import urllib.request

from webhook_harness import TARGET

from .base import IAM_POLICY, PROFILE, REGION, Fail, run

class Eni:
    def __init__(self, eni_id, mac, subnet, index):
        self.id, self.mac, self.subnet, self.index = eni_id, mac, subnet, index


class Node:
    """A node with its primary ENI and two Multus ENIs (eth1, eth2), each tagged
    `no_manage` as the user guide asks."""

    def __init__(self, n):
        self.n = n
        self.name = f"ip-10-0-0-{10 * n}.{REGION}.compute.internal"
        self.instance_id = f"i-0{n:015x}"
        self.address = f"10.0.0.{10 * n}"
        self.provider_id = f"aws:///{REGION}a/{self.instance_id}"
        # What EKS labels a node with, besides the user's own label for Multus nodes.
        self.labels = {"kubernetes.io/hostname": self.name, "topology.kubernetes.io/region": REGION,
                       "topology.kubernetes.io/zone": f"{REGION}a", "example.com/multus-ready": "true"}
        self.enis = {
            0: Eni(f"eni-0{n:03x}0primary", f"0a:00:00:00:{n:02x}:00", "subnet-nodes", 0),
            1: Eni(f"eni-0{n:03x}1eth1", f"0a:00:00:00:{n:02x}:01", "subnet-net1", 1),
            2: Eni(f"eni-0{n:03x}2eth2", f"0a:00:00:00:{n:02x}:02", "subnet-net2", 2),
        }


NO_MANAGE = ["node.k8s.amazonaws.com/no_manage", "true"]
SUBNETS = [
    {"id": "subnet-nodes", "ipv4": "10.0.0.0/24", "ipv6": []},
    {"id": "subnet-net1", "ipv4": "10.0.4.0/24", "ipv6": []},
    {"id": "subnet-net2", "ipv4": "10.0.5.0/24", "ipv6": ["2001:db8:0:5::/64"]},
]


# The explicit subnet CIDR reservations the samples ask users to make for their NADs'
# ranges (deploy/samples/nad-*.yaml), so that the VPC CNI never hands them out.
SAMPLE_RESERVATIONS = [("subnet-net1", "10.0.4.64/27"), ("subnet-net2", "10.0.5.64/27"),
                       ("subnet-net2", "2001:db8:0:5::100/120")]


def world_of(nodes):
    enis = []
    for node in nodes:
        for index, eni in node.enis.items():
            primary = node.address if index == 0 else f"10.0.{3 + index}.{10 * node.n}"
            enis.append({"id": eni.id, "instance_id": node.instance_id, "device_index": index, "mac": eni.mac,
                         "subnet_id": eni.subnet, "ipv4": [primary], "ipv6": [],
                         "tags": [] if index == 0 else [NO_MANAGE]})
    instances = [{"id": n.instance_id, "instance_type": "m5.large", "private_dns_name": n.name} for n in nodes]
    return {"instances": instances, "enis": enis, "subnets": SUBNETS}


class Vpc:
    """The fake EC2 (`fake-vpc`) in the host namespace; pods reach it over `eth0`."""

    def __init__(self, nodes, workdir, iam_policy=IAM_POLICY, held=(), tags=(), primary_ipv6=(), reservations=(),
                 policies_by_key=()):
        """`iam_policy`: the caller's role's policy, enforced on every call (the
        manager's by default). `held`: (ENI id, address) pairs assigned before start.
        `tags`: (ENI id, key, value) tags besides `no_manage`. `primary_ipv6`: (ENI id,
        address) primary IPv6 addresses, which EC2 never unassigns. `reservations`:
        (subnet id, CIDR) explicit subnet CIDR reservations. `policies_by_key`: (access
        key id, policy path): that role's credentials get that role's policy."""
        binary = TARGET / PROFILE / "fake-vpc"
        if not binary.exists():
            raise Fail(f"{binary} is missing: build the workspace first (cargo build --workspace)")
        world = pathlib.Path(workdir) / "world.json"
        state = world_of(nodes)
        enis = {e["id"]: e for e in state["enis"]}
        for eni_id, address in held:
            enis[eni_id]["ipv6" if ":" in address else "ipv4"].append(address)
        for eni_id, key, value in tags:
            enis[eni_id]["tags"].append([key, value])
        for eni_id, address in primary_ipv6:
            enis[eni_id]["ipv6"].append(address)
            enis[eni_id]["primary_ipv6"] = address
        state["reservations"] = [{"subnet": subnet, "cidr": cidr, "kind": "explicit"} for subnet, cidr in reservations]
        world.write_text(json.dumps(state))
        by_key = [a for key, path in policies_by_key for a in ("--iam-policy-for", f"{key}={path}")]
        self.proc = subprocess.Popen([binary, "--world", world, "--iam-policy", iam_policy, *by_key,
                                      "--listen", "0.0.0.0:0"],
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise Fail(f"fake-vpc exited {self.proc.wait()} before listening")
        self.port = int(json.loads(line)["listening"].rsplit(":", 1)[1])

    def _get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
            return json.load(resp)

    def world(self):
        return self._get("/_fake/world")

    def log(self):
        return self._get("/_fake/log")

    def set_world(self, world):
        """Replaces the account's resources, as a change made outside the callers (an
        ENI attached by an operator, say)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/_fake/world", json.dumps(world).encode(),
                                     method="PUT")
        urllib.request.urlopen(req, timeout=10).close()

    def set_faults(self, **faults):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/_fake/faults", json.dumps(faults).encode(),
                                     method="PUT")
        urllib.request.urlopen(req, timeout=10).close()

    def holders(self):
        """address -> the ENIs that hold it."""
        out = {}
        for eni in self.world()["enis"]:
            for ip in eni["ipv4"] + eni["ipv6"]:
                out.setdefault(str(ipaddress.ip_address(ip)), []).append(eni["id"])
        return out

    def wait_for(self, predicate, timeout=30, poll=0.01):
        """Polls the world until `predicate(holders)` holds; returns the seconds it took."""
        start = time.monotonic()
        while True:
            if predicate(self.holders()):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise Fail(f"EC2 never reached the expected state in {timeout} s; it holds {self.holders()}")
            time.sleep(poll)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def ip(*args):
    run(["ip", *args])


class Sandbox:
    """A pod's network namespace: `eth0` on a /30 to the host, where the fake EC2
    listens, and no default route (so no IMDS); secondary interfaces are macvlans with
    their ENI's MAC, each on a host-side veth of its own."""

    counter = 0

    def __init__(self):
        n = Sandbox.counter = Sandbox.counter + 1
        if n >= 64:
            raise Fail("too many pods in one run")
        tag = f"{os.getpid() % 1000}w{n}"
        self.ns = f"ipmgmt-wp-{tag}"
        self.links = []
        self.host_ip = f"198.18.1.{4 * n + 1}"
        self.pod_ip = f"198.18.1.{4 * n + 2}"
        self.tag, self.n = tag, n
        run(["ip", "netns", "del", self.ns], check=False)
        ip("netns", "add", self.ns)
        ip("-n", self.ns, "link", "set", "lo", "up")
        host, peer = f"wph{tag}", f"wpp{tag}"
        ip("link", "add", host, "type", "veth", "peer", "name", peer)
        self.links.append(host)
        ip("link", "set", peer, "netns", self.ns)
        ip("-n", self.ns, "link", "set", peer, "name", "eth0")
        ip("addr", "add", f"{self.host_ip}/30", "dev", host)
        ip("link", "set", host, "up")
        ip("-n", self.ns, "addr", "add", f"{self.pod_ip}/30", "dev", "eth0")
        ip("-n", self.ns, "link", "set", "eth0", "up")
        self._wait_up(host)

    def _wait_up(self, host):
        deadline = time.monotonic() + 10
        while pathlib.Path(f"/sys/class/net/{host}/operstate").read_text().strip() != "up":
            if time.monotonic() > deadline:
                raise Fail(f"{host} never came up")
            time.sleep(0.01)

    def add_interface(self, name, mac):
        parent, peer, tmp = f"wpx{self.tag}{name[-1]}", f"wpy{self.tag}{name[-1]}", f"wpm{self.tag}{name[-1]}"
        ip("link", "add", parent, "type", "veth", "peer", "name", peer)
        self.links.append(parent)
        ip("link", "set", parent, "up")
        ip("link", "set", peer, "up")
        ip("link", "add", "link", parent, "name", tmp, "address", mac, "type", "macvlan", "mode", "bridge")
        ip("link", "set", tmp, "netns", self.ns)
        ip("-n", self.ns, "link", "set", tmp, "name", name)
        ip("-n", self.ns, "link", "set", name, "up")

    def add_address(self, iface, cidr):
        ip("-n", self.ns, "addr", "add", cidr, "dev", iface, *(["nodad"] if ":" in cidr else []))

    def del_address(self, iface, cidr):
        ip("-n", self.ns, "addr", "del", cidr, "dev", iface)

    def delete(self):
        run(["ip", "netns", "del", self.ns], check=False)
        for link in self.links:
            run(["ip", "link", "del", link], check=False)
