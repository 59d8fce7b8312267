"""Multus and whereabouts, played for the node stand-in: a pod's
`k8s.v1.cni.cncf.io/networks` read against the NetworkAttachmentDefinitions the
apiserver holds, one interface per attachment with an address per whereabouts range,
and the `network-status` annotation Multus writes back (the reclaimer reads it).

What differs from the real plugins, and why: the interfaces are macvlans carrying the
node ENI's MAC (this kernel has no ipvlan); addresses come from the lowest free address
of each range, kept in this process rather than in whereabouts' IPPool objects."""

import ipaddress
import json
import threading

from deploy_harness import cni_config, ranges

from .base import Fail

NETWORKS = "k8s.v1.cni.cncf.io/networks"
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
NAD_PATH = "/apis/k8s.cni.cncf.io/v1/namespaces/{namespace}/network-attachment-definitions/{name}"


class Multus:
    def __init__(self, cp):
        self.cp = cp
        self.taken = set()
        self.lock = threading.Lock()

    def attachment(self, namespace, name):
        """The attachment's CNI config, from the apiserver."""
        r = self.cp.get(NAD_PATH.format(namespace=namespace, name=name), raw=True)
        if r.status_code == 404:
            raise Fail(f"network {namespace}/{name} the pod asks for: no such NetworkAttachmentDefinition")
        if r.status_code != 200:
            raise Fail(f"NetworkAttachmentDefinition {namespace}/{name}: HTTP {r.status_code}: {r.text[:300]}")
        return cni_config(r.json())

    def allocate(self, config, name):
        """One address with its prefix per range of the attachment's IPAM."""
        out = []
        with self.lock:
            for network, first, last in ranges(config["ipam"]):
                address = first
                while address in self.taken:
                    address += 1
                if address > last:
                    raise Fail(f"range {first}-{last} of {name} is exhausted")
                self.taken.add(address)
                out.append(f"{address}/{network.prefixlen}")
        return out

    def free(self, cidrs):
        with self.lock:
            for cidr in cidrs:
                self.taken.discard(ipaddress.ip_interface(cidr).ip)

    def attach(self, pod, node, sandbox):
        """Gives the pod its secondary interfaces and records them in its
        network-status, as Multus does before the pod's containers start. Returns
        {interface: [address/prefix]}."""
        meta = pod["metadata"]
        wanted = meta.get("annotations", {}).get(NETWORKS, "")
        interfaces, status = {}, [{"name": "default", "interface": "eth0", "default": True,
                                   "ips": [sandbox.pod_ip]}]
        for i, name in enumerate(n.strip() for n in wanted.split(",") if n.strip()):
            namespace, _, short = name.rpartition("/")
            namespace = namespace or meta["namespace"]
            config = self.attachment(namespace, short)
            master = config["master"]
            eni = node.enis.get(int(master[3:])) if master.startswith("eth") else None
            if eni is None:
                raise Fail(f"network {namespace}/{short} rides on {master}, which node {node.name} does not have")
            iface = f"net{i + 1}"
            sandbox.add_interface(iface, eni.mac)
            cidrs = self.allocate(config, short)
            interfaces[iface] = cidrs
            for cidr in cidrs:
                sandbox.add_address(iface, cidr)
            status.append({"name": f"{namespace}/{short}", "interface": iface, "mac": eni.mac,
                           "ips": [str(ipaddress.ip_interface(c).ip) for c in cidrs], "dns": {}})
        self.cp.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                        {"metadata": {"annotations": {NETWORK_STATUS: json.dumps(status, indent=1)}}},
                        content_type="application/merge-patch+json")
        return interfaces
