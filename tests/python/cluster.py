"""A cluster on one machine, for the whole path from an annotated workload to a routed
address: every part that can be real is real, and each stand-in does what its part
of Kubernetes or AWS does.

- **Images**: both released images, built `FROM scratch` with buildah from the
  workspace's binaries and what the Dockerfile's distroless base holds (the shared
  libraries, CA certificates, a passwd entry for 65532). No registry.
- **The webhook**: its Deployment as Helm renders it, run from its image by podman
  with the chart's own arguments; only the listen addresses change.
- **The apiserver's part** (played here): a ReplicaSet's pod from a sample template,
  sent over TLS as an AdmissionReview; the base64 patch applied with Python's
  `jsonpatch` and with evanphx/json-patch in Go (the apiserver's own library), which
  must agree; the patched pod validated strictly; the scheduler's `nodeName`.
- **The node and the VPC**: a network namespace per pod, with `eth0` reaching the
  fake EC2 (the VPC endpoint) and a Multus-style `net1`/`net2`, a macvlan carrying
  the node ENI's MAC (this kernel has no ipvlan), addressed from the attachment's
  whereabouts range. IMDS is unreachable, as from pods on EKS with hop limit 1.
- **kubelet's part**: the patched pod's containers that have an image here run with
  podman as kubelet would run them: command, args, env (downward API resolved), user
  and group, read-only root, dropped capabilities, no-new-privileges, seccomp,
  emptyDir volumes, the termination-message file; init containers in order, native
  sidecars gated by their startup probe, SIGTERM then SIGKILL after the grace period.

Needs root (network namespaces, containers). Everything podman keeps lives under
`.podman/` in the checkout.
"""

import ipaddress
import json
import os
import pathlib
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid

import jsonpatch
import kubernetes_validate
import trustme

from deploy_harness import SAMPLES, cni_config, load_yaml_docs, ranges, render, one
from webhook_harness import ROOT, TARGET, KubeletSecretDir, decode_patch, review_of

K8S_VERSION = "1.33.0"
PODMAN_HOME = ROOT / ".podman"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
GO_TOOLS = ROOT / "tests" / "go"
SECCOMP_RUNTIME_DEFAULT = pathlib.Path("/usr/share/containers/seccomp.json")
REGION = "us-west-2"
# The pod's IAM identity: on EKS the pod-identity webhook provides one; here the
# fake EC2 accepts any signed request.
POD_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAIPMGMTWHOLEPATH", "AWS_SECRET_ACCESS_KEY": "whole-path-secret"}


class Fail(Exception):
    """A step of the path that did not work, said in one line."""


def need_root():
    if os.geteuid() != 0:
        raise Fail("the whole path needs root, for network namespaces and containers: run it as root")
    for tool in ("podman", "buildah", "runc", "ip", "objcopy", "go"):
        if shutil.which(tool) is None:
            raise Fail(f"{tool} is missing: ./scripts/setup installs it (the demo and the tests run it)")


def run(args, check=True, env=None, timeout=120, input=None):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout,
                          input=input)
    if check and proc.returncode != 0:
        raise Fail(f"{' '.join(str(a) for a in args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


# --- podman and the images -------------------------------------------------------------

class Podman:
    """podman and buildah with a storage and configuration of the project's own: runc
    (crun refuses this machine's hybrid cgroups), explicit ulimits, no network of its
    own (containers join a pod's namespace or the host's)."""

    def __init__(self, home=PODMAN_HOME):
        self.home = pathlib.Path(home)
        for sub in ("storage", "run", "tmp", "cni", "volumes"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (self.home / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.home}/storage"\nrunroot = "{self.home}/run"\n')
        (self.home / "containers.conf").write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            'netns = "none"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.home}/events.log"\n'
            f'tmp_dir = "{self.home}/tmp"\n'
            f'volume_path = "{self.home}/volumes"\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{self.home}/cni"\n'
            'default_network = "none"\n')
        (self.home / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.env = {**os.environ,
                    "CONTAINERS_CONF": str(self.home / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(self.home / "storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(self.home / "registries.conf")}

    def __call__(self, *args, check=True, timeout=120):
        return run(["podman", *args], check=check, env=self.env, timeout=timeout)

    def buildah(self, *args, check=True):
        return run(["buildah", *args], check=check, env=self.env)


def dockerfile_stages(text=None):
    """The final stages of deploy/Dockerfile: name -> base, the binary copied in, user,
    entrypoint and ports. The local images are built from what this reads, so the two
    cannot drift apart silently."""
    text = text if text is not None else DOCKERFILE.read_text()
    stages, current = {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = rest.split()
            name = parts[parts.index("AS") + 1] if "AS" in parts else None
            current = {"from": [p for p in parts if not p.startswith("--")][0], "copy": [], "expose": []}
            if name:
                stages[name] = current
        elif current is None:
            continue
        elif word == "COPY" and "--from=build" in rest:
            src, dst = rest.replace("--from=build", "").split()
            current["copy"].append((src, dst))
        elif word == "USER":
            current["user"] = rest.strip()
        elif word == "ENTRYPOINT":
            current["entrypoint"] = json.loads(rest)
        elif word == "EXPOSE":
            current["expose"] += rest.split()
    return {k: v for k, v in stages.items() if k in ("webhook", "ipmgr")}


# What gcr.io/distroless/cc-debian12:nonroot holds besides glibc and libgcc.
DISTROLESS_PASSWD = ("root:x:0:0:root:/root:/sbin/nologin\n"
                     "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
                     "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
DISTROLESS_GROUP = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
DISTROLESS_BASE = "gcr.io/distroless/cc-debian12:nonroot"


def build_image(podman, stage, binary, tag):
    """Builds one released image FROM scratch: the binary without its debug sections,
    the shared libraries `ldd` lists, CA certificates, passwd and group entries, and
    the Dockerfile stage's user, entrypoint and ports. Returns its size in bytes."""
    if stage["from"] != DISTROLESS_BASE:
        raise Fail(f"deploy/Dockerfile now builds on {stage['from']}; the local image stands in for "
                   f"{DISTROLESS_BASE}: update cluster.build_image")
    ((_, dest),) = stage["copy"]
    with tempfile.TemporaryDirectory(prefix="ipmgmt-image-") as tmp:
        rootfs = pathlib.Path(tmp)
        target = rootfs / dest.lstrip("/")
        target.parent.mkdir(parents=True)
        run(["objcopy", "--strip-debug", binary, target])
        target.chmod(0o755)
        for lib in ldd(target):
            copy = rootfs / lib.lstrip("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(lib), copy)
        certs = rootfs / "etc/ssl/certs"
        certs.mkdir(parents=True)
        shutil.copy2("/etc/ssl/certs/ca-certificates.crt", certs / "ca-certificates.crt")
        (rootfs / "etc/passwd").write_text(DISTROLESS_PASSWD)
        (rootfs / "etc/group").write_text(DISTROLESS_GROUP)
        (rootfs / "home/nonroot").mkdir(parents=True)
        os.chown(rootfs / "home/nonroot", 65532, 65532)
        (rootfs / "tmp").mkdir(mode=0o1777)
        (rootfs / "tmp").chmod(0o1777)
        container = podman.buildah("from", "--quiet", "scratch").stdout.strip()
        try:
            podman.buildah("copy", "--quiet", container, str(rootfs), "/")
            config = ["config", "--user", stage["user"], "--entrypoint", json.dumps(stage["entrypoint"])]
            for port in stage["expose"]:
                # EXPOSE's protocol defaults to tcp, as docker records it.
                config += ["--port", port if "/" in port else f"{port}/tcp"]
            podman.buildah(*config, container)
            podman.buildah("commit", "--quiet", "--rm", container, tag)
        except Exception:
            podman.buildah("rm", container, check=False)
            raise
    return int(json.loads(podman("image", "inspect", tag).stdout)[0]["Size"])


def ldd(binary):
    out = run(["ldd", binary]).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1 and parts[parts.index("=>") + 1].startswith("/"):
            libs.append(parts[parts.index("=>") + 1])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def apply_patch_tool():
    """evanphx/json-patch's apply, built in GOPATH mode against Debian's package."""
    out = TARGET / "go" / "apply-patch"
    source = GO_TOOLS / "src" / "apply-patch" / "main.go"
    if not out.exists() or out.stat().st_mtime < source.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOPATH": f"{GO_TOOLS}:/usr/share/gocode", "GO111MODULE": "off",
               "GOCACHE": str(TARGET / "go" / "cache")}
        proc = subprocess.run(["go", "build", "-o", str(out), "apply-patch"], capture_output=True, text=True,
                              env=env)
        if proc.returncode != 0:
            raise Fail(f"building the Go patch tool failed (golang-go and golang-github-evanphx-json-patch-dev "
                       f"are installed by ./scripts/setup): {proc.stderr.strip()}")
    return out


# --- the VPC ---------------------------------------------------------------------------

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
        self.labels = {"kubernetes.io/hostname": self.name, "example.com/multus-ready": "true"}
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


def world_of(nodes):
    enis = []
    for node in nodes:
        for index, eni in node.enis.items():
            primary = f"10.0.0.{10 * node.n}" if index == 0 else f"10.0.{3 + index}.{10 * node.n}"
            enis.append({"id": eni.id, "instance_id": node.instance_id, "device_index": index, "mac": eni.mac,
                         "subnet_id": eni.subnet, "ipv4": [primary], "ipv6": [],
                         "tags": [] if index == 0 else [NO_MANAGE]})
    instances = [{"id": n.instance_id, "instance_type": "m5.large", "private_dns_name": n.name} for n in nodes]
    return {"instances": instances, "enis": enis, "subnets": SUBNETS}


class Vpc:
    """The fake EC2 (`fake-vpc`) in the host namespace; pods reach it over `eth0`."""

    def __init__(self, nodes, workdir):
        binary = TARGET / "debug" / "fake-vpc"
        if not binary.exists():
            raise Fail(f"{binary} is missing: build the workspace first (cargo build --workspace)")
        world = pathlib.Path(workdir) / "world.json"
        world.write_text(json.dumps(world_of(nodes)))
        self.proc = subprocess.Popen([binary, "--world", world, "--listen", "0.0.0.0:0"], stdout=subprocess.PIPE,
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


class Whereabouts:
    """Cluster-wide IPAM of the sample attachments: the lowest free address of each
    range, as whereabouts hands them out."""

    def __init__(self):
        self.nads = {(d["metadata"]["namespace"], d["metadata"]["name"]): cni_config(d)
                     for f in sorted(SAMPLES.glob("*.yaml")) for d in load_yaml_docs(f)
                     if d["kind"] == "NetworkAttachmentDefinition"}
        self.taken = set()

    def allocate(self, namespace, name):
        """The attachment's master (eth1, eth2) and one address with prefix per range."""
        config = self.nads.get((namespace, name))
        if config is None:
            raise Fail(f"no NetworkAttachmentDefinition {namespace}/{name} in deploy/samples")
        out = []
        for network, first, last in ranges(config["ipam"]):
            address = first
            while address in self.taken:
                address += 1
            if address > last:
                raise Fail(f"range {first}-{last} of {name} is exhausted")
            self.taken.add(address)
            out.append(f"{address}/{network.prefixlen}")
        return config["master"], out

    def free(self, cidrs):
        for cidr in cidrs:
            self.taken.discard(ipaddress.ip_interface(cidr).ip)


# --- pods ------------------------------------------------------------------------------

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
        ip("-n", self.ns, "addr", "add", f"198.18.1.{4 * n + 2}/30", "dev", "eth0")
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


def pod_from_template(deployment):
    """The pod a ReplicaSet creates from a Deployment's template, as admission sees it:
    a generateName, no name yet, no node yet."""
    template = deployment["spec"]["template"]
    meta = deployment["metadata"]
    pod_hash = "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=10))
    labels = {**template["metadata"].get("labels", {}), "pod-template-hash": pod_hash}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{meta['name']}-{pod_hash}-",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": dict(template["metadata"].get("annotations", {})),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{meta['name']}-{pod_hash}",
                                 "uid": str(uuid.uuid4()), "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": json.loads(json.dumps(template["spec"])),
    }


def sample(name):
    for f in sorted(SAMPLES.glob("*.yaml")):
        for doc in load_yaml_docs(f):
            if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name:
                return doc
    raise Fail(f"no sample Deployment {name} in deploy/samples")


class Container:
    """One container of a running pod, by its podman name."""

    def __init__(self, podman, name, spec, termination_file):
        self.podman, self.name, self.spec, self.termination_file = podman, name, spec, termination_file
        self.started = time.monotonic()

    def wait(self, timeout=120):
        code = self.podman("wait", self.name, timeout=timeout).stdout.strip().splitlines()[-1]
        return int(code)

    def logs(self):
        proc = self.podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def termination_message(self, exit_code):
        """What kubelet puts in the container's status: the file, or with
        FallbackToLogsOnError and an empty file after a failure, the log's tail."""
        text = self.termination_file.read_text() if self.termination_file.exists() else ""
        if not text and exit_code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            text = "\n".join(self.logs().splitlines()[-80:])[-2048:]
        return text.strip()

    def inspect(self):
        return json.loads(self.podman("inspect", self.name).stdout)[0]

    def process_status(self):
        """/proc/PID/status of the container's process, as fields."""
        pid = self.inspect()["State"]["Pid"]
        lines = pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
        return dict(line.split(":\t", 1) for line in lines if ":\t" in line)

    def exec(self, command, timeout=10):
        return self.podman("exec", self.name, *command, check=False, timeout=timeout)

    def stop(self, grace):
        self.podman("stop", "--time", str(grace), self.name, check=False, timeout=grace + 30)
        return self.wait()

    def remove(self):
        self.podman("rm", "--force", self.name, check=False)


class Pod:
    def __init__(self, manifest, node, sandbox, interfaces):
        self.manifest, self.node, self.sandbox, self.interfaces = manifest, node, sandbox, interfaces
        self.name = manifest["metadata"]["name"]
        self.containers = []
        self.init_results = []  # (name, exit code, seconds, termination message)
        self.app_started = None
        self.phase = "Pending"

    @property
    def addresses(self):
        return [(iface, cidr) for iface, cidrs in self.interfaces.items() for cidr in cidrs]


class Kubelet:
    """Runs a pod's containers with podman as kubelet would. Containers whose image is
    not here (the workloads' own apps) are not run: the pod records when they would
    start."""

    def __init__(self, podman, workdir, extra_env=None):
        self.podman, self.workdir = podman, pathlib.Path(workdir)
        self.extra_env = extra_env or (lambda pod: {})
        self.local_images = set()

    def env_of(self, pod_manifest, container):
        env = {}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            field = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            values = {"spec.nodeName": pod_manifest["spec"].get("nodeName"),
                      "metadata.name": pod_manifest["metadata"].get("name"),
                      "metadata.namespace": pod_manifest["metadata"].get("namespace"),
                      "spec.serviceAccountName": pod_manifest["spec"].get("serviceAccountName", "default")}
            if field not in values or values[field] is None:
                raise Fail(f"container {container['name']}: env {var['name']} from {var.get('valueFrom')} is not "
                           f"resolved here")
            env[var["name"]] = values[field]
        return env

    def podman_args(self, pod_manifest, container, name, network, extra_env):
        spec = pod_manifest["spec"]
        pod_sc = spec.get("securityContext", {})
        sc = container.get("securityContext", {})
        args = ["run", "--detach", "--name", name, "--pull", "never", "--network", network,
                "--hostname", pod_manifest["metadata"]["name"][:63]]
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
        if user is not None:
            args += ["--user", f"{user}:{group if group is not None else 0}"]
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and user in (None, 0):
            raise Fail(f"container {container['name']}: runAsNonRoot with no non-root user")
        if pod_sc.get("fsGroup") is not None:
            args += ["--group-add", str(pod_sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        caps = sc.get("capabilities", {})
        for cap in caps.get("drop", []):
            args += ["--cap-drop", cap]
        for cap in caps.get("add", []):
            args += ["--cap-add", cap]
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp in ("RuntimeDefault", None):
            args += ["--security-opt", f"seccomp={SECCOMP_RUNTIME_DEFAULT}"]
        elif seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        else:
            raise Fail(f"container {container['name']}: seccomp profile {seccomp} is not supported here")
        limits = container.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(limits["memory"]))]
        for key, value in {**self.env_of(pod_manifest, container), **extra_env}.items():
            args += ["--env", f"{key}={value}"]
        # Volumes: emptyDir and Secret volumes as kubelet lays them out.
        pod_dir = self.workdir / "pods" / pod_manifest["metadata"]["name"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            if volume is None:
                raise Fail(f"container {container['name']} mounts {mount['name']}, which the pod does not define")
            if "emptyDir" in volume:
                host = pod_dir / "volumes" / mount["name"]
                host.mkdir(parents=True, exist_ok=True)
                host.chmod(0o777)
            elif "hostPathForTests" in volume:
                host = pathlib.Path(volume["hostPathForTests"])
            else:
                raise Fail(f"volume {mount['name']} of {container['name']}: only emptyDir volumes run here")
            suffix = ":ro" if mount.get("readOnly") else ""
            args += ["--volume", f"{host}:{mount['mountPath']}{suffix}"]
        termination = pod_dir / "termination" / container["name"]
        termination.parent.mkdir(parents=True, exist_ok=True)
        termination.write_text("")
        termination.chmod(0o666)
        args += ["--volume", f"{termination}:{container.get('terminationMessagePath', '/dev/termination-log')}"]
        if "command" in container:
            args += ["--entrypoint", json.dumps(container["command"])]
        args.append(container["image"])
        args += container.get("args", [])
        return args, termination

    def start_container(self, pod_manifest, container, network, extra_env=None):
        name = f"{pod_manifest['metadata']['name']}-{container['name']}"
        self.podman("rm", "--force", name, check=False)
        args, termination = self.podman_args(pod_manifest, container, name, network, extra_env or {})
        self.podman(*args)
        return Container(self.podman, name, container, termination)

    def probe(self, container, probe, what):
        """An exec probe as kubelet runs it; returns the seconds until it passed."""
        start = time.monotonic()
        time.sleep(probe.get("initialDelaySeconds", 0))
        failures = 0
        while True:
            proc = container.exec(probe["exec"]["command"], timeout=probe.get("timeoutSeconds", 1) + 10)
            if proc.returncode == 0:
                return time.monotonic() - start
            failures += 1
            if failures >= probe.get("failureThreshold", 3):
                raise Fail(f"{what} of {container.spec['name']} failed {failures} times: {container.logs()[-1500:]}")
            time.sleep(probe.get("periodSeconds", 10))

    def run_pod(self, pod, network):
        """Init containers in order (a native sidecar once its startup probe passes),
        then the regular containers that have an image here."""
        manifest = pod.manifest
        extra = self.extra_env(pod)
        for container in manifest["spec"].get("initContainers", []):
            if container["image"] not in self.local_images:
                raise Fail(f"init container {container['name']} uses {container['image']}, which is not here")
            started = time.monotonic()
            running = self.start_container(manifest, container, network, extra)
            if container.get("restartPolicy") == "Always":
                pod.containers.append(running)
                if "startupProbe" in container:
                    self.probe(running, container["startupProbe"], "startup probe")
                pod.init_results.append((container["name"], None, time.monotonic() - started, ""))
                continue
            code = running.wait()
            message = running.termination_message(code)
            pod.init_results.append((container["name"], code, time.monotonic() - started, message))
            running.remove()
            if code != 0:
                pod.phase = "Init:Error"
                return pod
        for container in manifest["spec"]["containers"]:
            if container["image"] in self.local_images:
                pod.containers.append(self.start_container(manifest, container, network, extra))
        pod.app_started = time.monotonic()
        pod.phase = "Running"
        return pod

    def stop_pod(self, pod):
        """SIGTERM, then SIGKILL after the grace period: regular containers first, then
        native sidecars in reverse order. Returns {container: exit code}."""
        grace = pod.manifest["spec"].get("terminationGracePeriodSeconds", 30)
        sidecars = {c["name"] for c in pod.manifest["spec"].get("initContainers", [])}
        order = [c for c in pod.containers if c.spec["name"] not in sidecars]
        order += [c for c in reversed(pod.containers) if c.spec["name"] in sidecars]
        codes = {}
        for container in order:
            codes[container.spec["name"]] = container.stop(grace)
            container.remove()
        pod.containers = []
        pod.phase = "Terminated"
        return codes


def quantity_bytes(text):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


# --- the apiserver's part --------------------------------------------------------------

class Webhook:
    """The chart's webhook Deployment, run from its image in the host's network
    namespace; only the listen addresses differ from what Helm rendered."""

    def __init__(self, kubelet, workdir, values=()):
        docs = render(sets=[f"aws.region={REGION}", *values])
        deployment = [d for d in docs if d["kind"] == "Deployment"][0]
        self.configuration = one(docs, "MutatingWebhookConfiguration")
        pod_spec = deployment["spec"]["template"]["spec"]
        (container,) = pod_spec["containers"]
        self.image = container["image"]
        self.chart_args = list(container["args"])
        self.ipmgr_image = [a.split("=", 1)[1] for a in self.chart_args if a.startswith("--image=")][0]
        self.port, self.admin_port = free_port(), free_port()
        container["args"] = [self._listen(a) for a in self.chart_args]
        # The Secret volume cert-manager's certificate lands in, laid out as kubelet does.
        self.ca = trustme.CA()
        secret = KubeletSecretDir(pathlib.Path(workdir) / "webhook-tls")
        cert = self.ca.issue_cert("ipmgmt-webhook.ipmgmt-system.svc", "127.0.0.1")
        secret.publish(b"".join(b.bytes() for b in cert.cert_chain_pems), cert.private_key_pem.bytes())
        kubelet_secret_modes(secret.root, pod_spec)
        (tls,) = [v for v in pod_spec["volumes"] if "secret" in v]
        tls.pop("secret")
        tls["hostPathForTests"] = str(secret.root)
        manifest = {"metadata": {"name": "ipmgmt-webhook-0", "namespace": "ipmgmt-system"}, "spec": pod_spec}
        self.container = kubelet.start_container(manifest, container, "host")
        self.wait_ready()

    def _listen(self, arg):
        if arg.startswith("--listen="):
            return f"--listen=127.0.0.1:{self.port}"
        if arg.startswith("--admin-listen="):
            return f"--admin-listen=127.0.0.1:{self.admin_port}"
        return arg

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise Fail(f"the webhook never became ready: {self.container.logs()[-2000:]}")

    def review(self, pod):
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        ctx.check_hostname = False  # the certificate names the Service; the apiserver dials the Service
        body = json.dumps(review_of(pod)).encode()
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}/mutate", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return json.load(resp)

    def stop(self):
        self.container.stop(10)
        self.container.remove()


def kubelet_secret_modes(root, pod_spec):
    """A Secret volume's files: the volume's defaultMode, group fsGroup."""
    (tls,) = [v for v in pod_spec["volumes"] if "secret" in v]
    mode = tls["secret"].get("defaultMode", 0o644)
    group = pod_spec.get("securityContext", {}).get("fsGroup", 0)
    for path in pathlib.Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chown(path, 0, group)
            path.chmod(mode)
        elif path.is_dir() and not path.is_symlink():
            os.chown(path, 0, group)
            path.chmod(0o755)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Admitted:
    def __init__(self, pod, response, patch):
        self.pod, self.response, self.patch = pod, response, patch


class Apiserver:
    """The apiserver's part of pod creation: admission through the webhook (patch
    applied twice, by independent libraries that must agree), strict validation, a
    generated name, and the scheduler's choice of node."""

    def __init__(self, webhook):
        self.webhook = webhook
        self.go_apply = apply_patch_tool()

    def create(self, pod):
        answer = self.webhook.review(pod)
        response = answer["response"]
        if not response.get("allowed"):
            raise Fail(f"the webhook denied {pod['metadata'].get('generateName')}: "
                       f"{response.get('status', {}).get('message')}")
        patch = decode_patch(response) if response.get("patch") else []
        patched = jsonpatch.apply_patch(pod, patch)
        with tempfile.NamedTemporaryFile("w", suffix=".json") as original:
            json.dump(pod, original)
            original.flush()
            go = run([self.go_apply, original.name], input=json.dumps(answer))
        if json.loads(go.stdout) != patched:
            raise Fail("evanphx/json-patch and jsonpatch disagree on the webhook's patch")
        kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
        meta = patched["metadata"]
        if not meta.get("name"):
            meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        meta["uid"] = str(uuid.uuid4())
        return Admitted(patched, response, patch)


def schedule(pod, node):
    selector = pod["spec"].get("nodeSelector", {})
    for key, value in selector.items():
        if node.labels.get(key) != value:
            raise Fail(f"{pod['metadata']['name']} does not fit {node.name}: nodeSelector {key}={value}")
    pod["spec"]["nodeName"] = node.name


# --- the cluster -----------------------------------------------------------------------

class Cluster:
    """Two nodes, the fake EC2, the webhook from its image, and the images kubelet
    runs. `start(pod_manifest, node)` takes an admitted pod to Running (or Init:Error)."""

    def __init__(self, workdir, nodes=2, progress=lambda *a: None):
        need_root()
        self.workdir = pathlib.Path(workdir)
        self.progress = progress
        self.podman = Podman()
        self.timings = {}
        started = time.monotonic()
        self.kubelet = Kubelet(self.podman, self.workdir, extra_env=self._pod_env)
        self.images = {}
        stages = dockerfile_stages()
        self.nodes = [Node(n + 1) for n in range(nodes)]
        self.vpc = Vpc(self.nodes, self.workdir)
        self.webhook = None
        try:
            # Tags as the chart names the images, so the patched pods resolve them here.
            webhook_tag = render(sets=[f"aws.region={REGION}"])
            deployment = [d for d in webhook_tag if d["kind"] == "Deployment"][0]
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            ipmgr_tag = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--image=")][0]
            for stage, binary, tag in (("webhook", "ipmgmt-webhook", container["image"]),
                                       ("ipmgr", "ipmgr", ipmgr_tag)):
                path = TARGET / "debug" / binary
                if not path.exists():
                    raise Fail(f"{path} is missing: build the workspace first (cargo build --workspace)")
                self.images[stage] = (tag, build_image(self.podman, stages[stage], path, tag))
                self.kubelet.local_images.add(tag)
            self.timings["images"] = time.monotonic() - started
            started = time.monotonic()
            self.webhook = Webhook(self.kubelet, self.workdir)
            self.timings["webhook"] = time.monotonic() - started
            self.apiserver = Apiserver(self.webhook)
        except BaseException:
            self.close()
            raise
        self.whereabouts = Whereabouts()
        self.pods = []

    def _pod_env(self, pod):
        return {"AWS_ENDPOINT_URL_EC2": f"http://{pod.sandbox.host_ip}:{self.vpc.port}", **POD_CREDENTIALS}

    def create(self, pod_manifest):
        return self.apiserver.create(pod_manifest)

    def start(self, manifest, node):
        """Schedules an admitted pod on `node`, gives it its Multus interfaces, and runs it."""
        schedule(manifest, node)
        sandbox = Sandbox()
        interfaces = {}
        try:
            wanted = manifest["metadata"]["annotations"].get("k8s.v1.cni.cncf.io/networks", "")
            for i, name in enumerate(n.strip() for n in wanted.split(",") if n.strip()):
                master, cidrs = self.whereabouts.allocate(manifest["metadata"]["namespace"], name)
                iface = f"net{i + 1}"
                sandbox.add_interface(iface, node.enis[int(master[3:])].mac)
                for cidr in cidrs:
                    sandbox.add_address(iface, cidr)
                interfaces[iface] = cidrs
            pod = Pod(manifest, node, sandbox, interfaces)
            self.pods.append(pod)
            return self.kubelet.run_pod(pod, f"ns:/run/netns/{sandbox.ns}")
        except BaseException:
            sandbox.delete()
            raise

    def stop(self, pod):
        codes = self.kubelet.stop_pod(pod)
        self.delete(pod)
        return codes

    def delete(self, pod):
        for container in pod.containers:
            container.remove()
        pod.containers = []
        pod.sandbox.delete()
        self.whereabouts.free(cidr for _, cidr in pod.addresses)
        if pod in self.pods:
            self.pods.remove(pod)

    def eni_of(self, node, iface, pod):
        """The node ENI a pod's interface rides on."""
        mac = pod_mac(pod, iface)
        return [e for e in node.enis.values() if e.mac == mac][0]

    def close(self):
        for pod in list(getattr(self, "pods", [])):
            for container in pod.containers:
                container.remove()
            pod.sandbox.delete()
        if self.webhook is not None:
            self.webhook.stop()
        self.vpc.stop()


def pod_mac(pod, iface):
    out = run(["ip", "-n", pod.sandbox.ns, "-j", "link", "show", iface]).stdout
    return json.loads(out)[0]["address"]


def ec2_calls(log, since=0):
    """Calls by action, from the fake's log."""
    counts = {}
    for entry in log[since:]:
        counts[entry["action"]] = counts.get(entry["action"], 0) + 1
    return counts


def host(cidr):
    return str(ipaddress.ip_interface(cidr).ip)

