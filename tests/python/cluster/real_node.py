"""A real Kubernetes node on this machine: kubelet and containerd 2 (its CRI plugin,
runc, the CNI plugins), each node in a network namespace of its own, several nodes side
by side under one control plane.

The layout, per node `N` (index `i`):
- **Network**: the namespace `ipmgmt-N` holds the node's uplink `eth0`
  (10.250.i.2/30, a veth whose host end `ipmgmt-ni` has 10.250.i.1) and its Multus
  ENIs as bridges `eth1`, `eth2`, ... each carrying its ENI's MAC. Pods get `eth0`
  from Multus's cluster network (ptp) out of 10.244.i.0/24; the host routes that range
  to the node, which forwards. Anything on the host is reachable from pods and nodes at
  any host address (the fake EC2, the apiserver at `ControlPlane.node_url`).
- **containerd** and **kube-proxy** run inside the node's namespace, so the CNI
  plugins containerd runs (Multus, whereabouts, the `ipvlan` stand-in) and hostNetwork
  pods see the node's interfaces; containerd's root and state are under the node's
  directory, its sockets under `/run/ipmgmt-ni`; overlayfs snapshotter, runc with
  cgroupfs.
- **kubelet** runs on the host (it reaches the API server on loopback and must own the
  address it reports, 10.250.i.1), as `system:node:N` with the node's token, its own
  root directory and cgroup root (`/ipmgmt-N`, so two kubelets never clean up each
  other's pods), serving on 10.250.i.1:10250 with a certificate from the cluster CA.
  cgroups here are v1 beside a unified hierarchy: kubelet 1.35+ refuses v1 unless
  `failCgroupV1: false`, and the driver is cgroupfs (no systemd runs).
- **Images**: containerd imports the project's OCI archives (`ctr images import`); the
  pod sandbox is the project's own pause image. Nothing is pulled.
"""

import json
import os
import pathlib
import shutil
import sys
import tarfile
import time

from cluster_tools import tool

from .base import Fail, run
from .control_plane import Process

# Debian's runc (./scripts/setup installs it).
RUNC = "/usr/bin/runc"
IPVLAN_STAND_IN = pathlib.Path(__file__).parent / "cni" / "ipvlan"
# The pod sandbox's image, built FROM scratch from the project's pause program.
PAUSE_IMAGE = "localhost/ipmgmt/pause:v1"
# kubelet's port, on each node's own address (so every node can use it).
KUBELET_PORT = 10250


def node_subnet(index):
    return f"10.250.{index}"


def pod_cidr(index):
    return f"10.244.{index}.0/24"


def ip(*args, ns=None):
    prefix = ["ip", "-n", ns] if ns else ["ip"]
    return run([*prefix, *args])


class NodeNetwork:
    """The node's network namespace, its uplink to the host, and its Multus ENIs."""

    def __init__(self, name, index, enis=()):
        """`enis`: (interface name, MAC) of each Multus ENI, e.g. ("eth1", "02:..")."""
        self.ns = f"ipmgmt-{name}"
        self.host_link = f"ipmgmt-n{index}"
        base = node_subnet(index)
        self.host_address, self.node_address = f"{base}.1", f"{base}.2"
        self.pod_cidr = pod_cidr(index)
        self.close()
        run(["ip", "netns", "add", self.ns])
        ip("link", "add", self.host_link, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
        ip("link", "set", self.host_link, "up")
        ip("addr", "add", f"{self.node_address}/30", "dev", "eth0", ns=self.ns)
        ip("link", "set", "eth0", "up", ns=self.ns)
        ip("link", "set", "lo", "up", ns=self.ns)
        ip("route", "add", "default", "via", self.host_address, ns=self.ns)
        ip("route", "add", self.pod_cidr, "via", self.node_address)
        run(["ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for iface, mac in enis:
            ip("link", "add", iface, "address", mac, "type", "bridge", ns=self.ns)
            ip("link", "set", iface, "up", ns=self.ns)

    def close(self):
        run(["ip", "route", "del", self.pod_cidr], check=False)
        run(["ip", "link", "del", self.host_link], check=False)
        run(["ip", "netns", "del", self.ns], check=False)


CGROUP_V1 = pathlib.Path("/sys/fs/cgroup")


class CgroupRoot:
    """The node's own cgroup (`/ipmgmt-N`) in every v1 hierarchy, which kubelet needs to
    exist before it puts its `kubepods` tree under it."""

    def __init__(self, name):
        self.name = f"ipmgmt-{name}"
        # What an interrupted run left.
        self.kill_all()
        self.close()
        for hierarchy in self.hierarchies():
            path = hierarchy / self.name
            path.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                # A v1 cpuset takes no task until it is given CPUs and memory nodes.
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (path / f).write_text((hierarchy / f).read_text())

    @staticmethod
    def hierarchies():
        return [h for h in sorted(CGROUP_V1.iterdir()) if h.is_dir() and h.name != "unified"]

    def kill_all(self):
        """SIGKILL to every process in the node's cgroups, until none is left."""
        pids = CGROUP_V1 / "pids" / self.name
        deadline = time.monotonic() + 10
        while pids.exists() and time.monotonic() < deadline:
            procs = set()
            # kubelet and the runtime may be removing cgroups under the walk: a
            # directory or file gone mid-walk holds no process any more.
            for d, _, files in os.walk(pids):
                if "cgroup.procs" in files:
                    try:
                        procs.update(int(p) for p in pathlib.Path(d, "cgroup.procs").read_text().split())
                    except OSError:
                        # ENOENT, or ENODEV from a cgroup removed while it was read.
                        pass
            if not procs:
                return
            for pid in procs:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def close(self):
        """Removes the node's cgroups, deepest first (only empty ones can go)."""
        for hierarchy in self.hierarchies():
            top = hierarchy / self.name
            # Bottom-up, so each directory's children are gone before it; one that
            # vanished on its own is not an error.
            for d, _, _ in os.walk(top, topdown=False):
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass


def unmount_under(directory):
    """Lazily unmounts every mount at or under `directory`, deepest first."""
    prefix = str(directory.resolve())
    points = []
    for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        run(["umount", "-l", point], check=False)


class Containerd:
    """containerd 2 with its CRI plugin, inside the node's network namespace."""

    def __init__(self, workdir, netns, cni_conf_dir, cni_bin_dirs, stream_address, socket_dir):
        """`stream_address`: where kubelet, on the host, reaches the streaming server
        (exec, attach, port-forward): an address of the node's, not its loopback.
        `socket_dir`: a short path (a unix socket's is at most 104 bytes)."""
        self.dir = workdir
        socket_dir.mkdir(parents=True, exist_ok=True)
        self.socket = socket_dir / "containerd.sock"
        root, state = workdir / "root", workdir / "state"
        for d in (root, state, cni_conf_dir):
            d.mkdir(parents=True, exist_ok=True)
        bins = ", ".join(f"'{d}'" for d in cni_bin_dirs)
        config = workdir / "config.toml"
        config.write_text(f"""version = 4
root = '{root}'
state = '{state}'
# Nothing outside the node's own directory: no /etc/containerd/conf.d imports.
imports = []

[plugins]
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '{stream_address}'
  [plugins.'io.containerd.server.v1.grpc']
    address = '{self.socket}'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '{self.socket}.ttrpc'
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{PAUSE_IMAGE}'
  [plugins.'io.containerd.cri.v1.runtime']
    # This machine drops CAP_SYS_RESOURCE, so no process may lower its oom_score_adj
    # (kubelet asks -998 for the sandbox, -997 for Guaranteed containers): runc's init
    # fails with "failed to update /proc/self/oom_score_adj: Permission denied" unless
    # containerd keeps every score at or above its own.
    restrict_oom_score_adj = true
    # Pod network namespaces under the node's state, not /run/netns, so that a node's
    # teardown finds them with its other mounts.
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{RUNC}'
          Root = '{state}/runc'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [{bins}]
      conf_dir = '{cni_conf_dir}'
      max_conf_num = 1
""")
        env_path = f"{tool('containerd').parent}:/usr/sbin:/usr/bin:/sbin:/bin"
        self.proc = Process(f"containerd-{workdir.parent.name}",
                            # nsenter, not `ip netns exec`: that also remounts /sys for
                            # the namespace, which hides the cgroup mounts runc needs.
                            ["nsenter", f"--net=/run/netns/{netns}", "env", f"PATH={env_path}",
                             tool("containerd"), "--config", config], workdir)
        deadline = time.monotonic() + 30
        while not self.ctr("version", check=False).returncode == 0:
            self.proc.check()
            if time.monotonic() > deadline:
                raise Fail(f"containerd did not answer on {self.socket}: {self.proc.tail()}")
            time.sleep(0.2)

    def ctr(self, *args, check=True, timeout=120):
        return run([tool("containerd", "ctr"), "--address", self.socket, "--namespace", "k8s.io", *args],
                   check=check, timeout=timeout)

    def import_image(self, archive, name):
        """An OCI archive as image `name`, unpacked for the CRI plugin's snapshotter. The
        archive names its image (podman writes the tag as the manifest's ref name);
        another name is a tag of it."""
        with tarfile.open(archive) as tar:
            index = json.load(tar.extractfile("index.json"))
        (saved,) = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
        self.ctr("images", "import", "--snapshotter", "overlayfs", archive, timeout=300)
        if saved != name:
            self.ctr("images", "tag", "--force", saved, name)

    def stop(self):
        self.proc.stop()


class Kubelet:
    """kubelet, on the host, for one node."""

    def __init__(self, control_plane, name, index, workdir, containerd, provider_id, labels, root):
        """`root`: kubelet's root directory, on a short path: kubelet makes unix sockets
        in it (104 bytes at most)."""
        self.name = name
        root.mkdir(parents=True, exist_ok=True)
        address = f"{node_subnet(index)}.1"
        cert = control_plane.ca.issue_cert(address, name)
        cert.private_key_pem.write_to_path(str(workdir / "kubelet.key"))
        (workdir / "kubelet.crt").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        kubeconfig = workdir / "kubelet.kubeconfig"
        control_plane.write_kubeconfig(kubeconfig, control_plane.node_tokens[name], f"system:node:{name}")
        (workdir / "resolv.conf").write_text("")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine's cgroups are v1 beside a unified hierarchy.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/ipmgmt-{name}",
            "containerRuntimeEndpoint": f"unix://{containerd.socket}",
            "address": address,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": address,
            "healthzPort": 10248,
            "tlsCertFile": str(workdir / "kubelet.crt"),
            "tlsPrivateKeyFile": str(workdir / "kubelet.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(control_plane.dir / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "providerID": provider_id,
            "resolvConf": str(workdir / "resolv.conf"),
            "failSwapOn": False,
            # A test machine's disk is shared and often fuller than a node's: never evict.
            "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%",
                             "nodefs.inodesFree": "0%", "imagefs.inodesFree": "0%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "localStorageCapacityIsolation": False,
            "serializeImagePulls": False,
            "registerNode": True,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "shutdownGracePeriod": "0s",
        }
        (workdir / "kubelet.yaml").write_text(json.dumps(config, indent=2))
        node_labels = ",".join(f"{k}={v}" for k, v in labels.items())
        self.proc = Process(f"kubelet-{name}", [
            tool("kubelet"), "--config", workdir / "kubelet.yaml", "--kubeconfig", kubeconfig,
            "--root-dir", root, "--hostname-override", name, "--node-ip", address,
            "--node-labels", node_labels, "--v", "2",
        ], workdir)

    def stop(self):
        self.proc.stop()


class KubeProxy:
    """kube-proxy (iptables mode) in the node's network namespace, as its DaemonSet
    runs it on the host network: Services' cluster IPs, the `kubernetes` Service among
    them, reach their endpoints from pods and from the node. Its identity is the
    `kube-proxy` ServiceAccount bound to `system:node-proxier`."""

    def __init__(self, control_plane, name, workdir, netns, kubeconfig, node_address):
        self.proc = Process(f"kube-proxy-{name}", [
            "nsenter", f"--net=/run/netns/{netns}", tool("kube-proxy"),
            "--kubeconfig", kubeconfig, "--hostname-override", name, "--proxy-mode", "iptables",
            "--cluster-cidr", "10.244.0.0/16",
            "--metrics-bind-address", f"{node_address}:10249", "--healthz-bind-address", f"{node_address}:10256",
            # Leave the host's conntrack table as it is: it is the machine's, not the node's.
            "--conntrack-max-per-core", "0", "--conntrack-tcp-timeout-established", "0",
            "--conntrack-tcp-timeout-close-wait", "0",
        ], workdir)

    def stop(self):
        self.proc.stop()


class Multus:
    """Multus (thin plugin) and whereabouts as their installs set them up: their own
    CRDs and ClusterRoles from their module sources (`scripts/cluster-tools`), a
    ServiceAccount each bound to its role, and a kubeconfig with its token that the
    plugins, run by containerd in a node's namespace, use to reach the apiserver."""

    def __init__(self, control_plane, workdir):
        self.dir = workdir / "multus"
        self.dir.mkdir(parents=True, exist_ok=True)
        for component in ("multus", "whereabouts"):
            manifests = tool(component).parent.parent / "manifests.yaml"
            control_plane.kubectl("apply", "--server-side", "-f", manifests)
        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                              "crd/network-attachment-definitions.k8s.cni.cncf.io",
                              "crd/ippools.whereabouts.cni.cncf.io",
                              "crd/overlappingrangeipreservations.whereabouts.cni.cncf.io")
        self.kubeconfig = control_plane.service_account_kubeconfig(
            self.dir / "multus.kubeconfig", "kube-system", "multus", ["multus"], server=control_plane.node_url)
        # kube-proxy's, which every node's kube-proxy shares as its DaemonSet's pods would.
        self.kube_proxy_kubeconfig = control_plane.service_account_kubeconfig(
            self.dir / "kube-proxy.kubeconfig", "kube-system", "kube-proxy", ["system:node-proxier"],
            server=control_plane.node_url)
        self.whereabouts_kubeconfig = control_plane.service_account_kubeconfig(
            self.dir / "whereabouts.kubeconfig", "kube-system", "whereabouts", ["whereabouts-cni"],
            server=control_plane.node_url)
        # The flat file whereabouts' DaemonSet writes on every node
        # (/etc/cni/net.d/whereabouts.d/whereabouts.conf): whereabouts refuses to run
        # without one. Here it lives in the test's directory, named by the NAD.
        self.whereabouts_conf = self.dir / "whereabouts.conf"
        self.whereabouts_conf.write_text(json.dumps({
            "datastore": "kubernetes", "kubernetes": {"kubeconfig": str(self.whereabouts_kubeconfig)},
            "log_file": str(self.dir / "whereabouts.log"), "log_level": "verbose"}))

    def nad(self, doc):
        """A NetworkAttachmentDefinition as this cluster serves it: the same, its
        whereabouts IPAM reading this install's flat file."""
        config = json.loads(doc["spec"]["config"])
        if config.get("ipam", {}).get("type") == "whereabouts":
            config["ipam"]["configuration_path"] = str(self.whereabouts_conf)
        return {**doc, "spec": {**doc["spec"], "config": json.dumps(config)}}

    def ipam(self, **config):
        """whereabouts IPAM for a NetworkAttachmentDefinition, reading this install's
        flat file (where a node's whereabouts.conf would be)."""
        return {"type": "whereabouts", "configuration_path": str(self.whereabouts_conf), **config}


class RealNode:
    """One node: its network, containerd and kubelet, and the images its pods run."""

    def __init__(self, control_plane, name, index, workdir, images, provider_id, labels=None, enis=(),
                 multus=None):
        """`images`: image name -> OCI archive, imported before kubelet starts.
        `multus`: a `Multus` install; then pods' networks go through Multus, with eth0
        its cluster network."""
        self.multus = multus
        self.control_plane = control_plane
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.enis = list(enis)
        # Sockets and kubelet's root on a short path of the node's own.
        self.sockets = pathlib.Path(f"/run/ipmgmt-n{index}")
        unmount_under(self.sockets)
        shutil.rmtree(self.sockets, ignore_errors=True)
        self.network = NodeNetwork(name, index, enis)
        self.containerd = self.kubelet = self.cgroup = self.kube_proxy = None
        try:
            self.cgroup = CgroupRoot(name)
            conf_dir = self.dir / "net.d"
            conf_dir.mkdir(exist_ok=True)
            self._write_pod_network(conf_dir)
            self.containerd = Containerd(self.dir / "containerd", self.network.ns, conf_dir,
                                         [self._cni_bin()], self.network.node_address, self.sockets)
            for image, archive in images.items():
                self.containerd.import_image(archive, image)
            self.kubelet = Kubelet(control_plane, name, index, self.dir, self.containerd, provider_id,
                                   labels or {}, self.sockets / "kubelet")
            if multus is not None:
                self.kube_proxy = KubeProxy(control_plane, name, self.dir, self.network.ns,
                                            multus.kube_proxy_kubeconfig, self.network.node_address)
        except BaseException:
            self.close()
            raise

    def _cni_bin(self):
        """The node's CNI plugin directory, as /opt/cni/bin is on a node: every plugin
        in one place, where containerd and Multus both look."""
        bin_dir = self.dir / "cni-bin"
        bin_dir.mkdir(exist_ok=True)
        plugins = [*tool("cni-plugins", "loopback").parent.iterdir(), tool("multus"), tool("whereabouts")]
        for plugin in plugins:
            link = bin_dir / plugin.name
            link.unlink(missing_ok=True)
            link.symlink_to(plugin)
        # This kernel has no ipvlan: the stand-in (cni/ipvlan says what it keeps), run by
        # the tests' own Python, not whatever python3 the machine has.
        ipvlan = bin_dir / "ipvlan"
        ipvlan.unlink(missing_ok=True)
        ipvlan.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{IPVLAN_STAND_IN}" "$@"\n')
        ipvlan.chmod(0o755)
        return bin_dir

    def _write_pod_network(self, conf_dir):
        pods = {
            "cniVersion": "1.0.0", "name": "pods",
            "plugins": [{"type": "ptp", "ipMasq": False,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": self.network.pod_cidr}]],
                                  "routes": [{"dst": "0.0.0.0/0"}],
                                  "dataDir": str(self.dir / "ipam")}}],
        }
        if self.multus is None:
            (conf_dir / "10-pods.conflist").write_text(json.dumps(pods, indent=2))
            return
        # Multus's thin plugin as the node's one network: eth0 from its delegate, the
        # pod's `k8s.v1.cni.cncf.io/networks` from the NetworkAttachmentDefinitions.
        (conf_dir / "00-multus.conf").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "multus-cni-network", "type": "multus",
            "kubeconfig": str(self.multus.kubeconfig),
            "cniDir": str(self.dir / "multus"), "binDir": str(self.dir / "cni-bin"),
            "logFile": str(self.dir / "multus.log"), "logLevel": "verbose",
            "delegates": [pods],
        }, indent=2))

    def registered(self):
        """The Node object once kubelet has registered it Ready and the node lifecycle
        controller has lifted its taints; `None` before."""
        r = self.control_plane.get(f"/api/v1/nodes/{self.name}", raw=True)
        if r.status_code != 200:
            return None
        node = r.json()
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        return node if conditions.get("Ready") == "True" and not node["spec"].get("taints") else None

    def wait_ready(self, timeout=120):
        return self.control_plane.wait_for(f"node {self.name} Ready", lambda: self.check() or self.registered(),
                                           timeout=timeout)

    def check(self):
        for part in (self.containerd, self.kubelet, self.kube_proxy):
            if part:
                part.proc.check()

    def close(self):
        """Stops the node and leaves nothing of it behind: its pods' processes (which
        outlive containerd, under their shims), the shims, the mounts under its
        directory (rootfs overlays, sandbox /dev/shm, kubelet's tmpfs volumes), its
        cgroups and its network namespace."""
        if self.kube_proxy:
            self.kube_proxy.stop()
        if self.kubelet:
            self.kubelet.stop()
        if self.cgroup:
            self.cgroup.kill_all()
        if self.containerd:
            self.containerd.stop()
            run(["pkill", "-KILL", "-f", f"-address {self.containerd.socket}"], check=False)
        unmount_under(self.dir)
        unmount_under(self.sockets)
        shutil.rmtree(self.sockets, ignore_errors=True)
        if self.cgroup:
            self.cgroup.close()
        self.network.close()
