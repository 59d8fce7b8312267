"""A real Kubernetes control plane on this machine: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler as processes, built from their Go modules by
scripts/cluster-tools at the versions in tests/cluster/versions.env, plus kubectl and
Helm 4 pointed at it.

What it is and is not: the apiserver runs its whole admission chain (mutating webhooks
with matchConditions, ValidatingAdmissionPolicy, the built-in plugins), RBAC, and the
controllers and scheduler reconcile as in any cluster. No kubelet runs here: the
Nodes are objects, and what runs their pods is the caller's (the kubelet stand-in of
`node.py` for the whole path; for the control-plane scenes, a webhook process on this
machine that an EndpointSlice of the test's points the chart's Service at, at the host
end of a veth pair). The apiserver resolves webhook Services through EndpointSlices,
as `--enable-aggregator-routing` makes it."""

import base64
import json
import os
import pathlib
import secrets
import socket
import subprocess
import time

import requests
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cluster_tools import tool

from .base import Fail

SERVICE_CIDR = "10.96.0.0/16"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENDPOINT_LINK = ("ipmgmt-cp0", "ipmgmt-cp1")
ENDPOINT_ADDRESS = "10.250.0.1"


def endpoint_address():
    """An address of this machine that an EndpointSlice may name (not loopback): the
    host end of a veth pair of the tests' own, made on first use (root needed)."""
    here, peer = ENDPOINT_LINK
    if subprocess.run(["ip", "link", "show", here], capture_output=True).returncode != 0:
        for args in (["link", "add", here, "type", "veth", "peer", "name", peer],
                     ["addr", "add", f"{ENDPOINT_ADDRESS}/30", "dev", here],
                     ["link", "set", peer, "up"], ["link", "set", here, "up"]):
            proc = subprocess.run(["ip", *args], capture_output=True, text=True)
            if proc.returncode != 0:
                raise Fail(f"ip {' '.join(args)}: {proc.stderr.strip()} (the control-plane tests need root)")
    return ENDPOINT_ADDRESS


class Process:
    """A component's process, its output in a log file, stopped with SIGTERM."""

    def __init__(self, name, args, logdir):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        # Appended: a restarted component keeps its earlier lines.
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([str(a) for a in args], stdout=self.log, stderr=subprocess.STDOUT)

    def check(self):
        if self.proc.poll() is not None:
            raise Fail(f"{self.name} exited {self.proc.returncode}: {self.tail()}")

    def tail(self, lines=15):
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class ControlPlane:
    def __init__(self, workdir: pathlib.Path, port=None, nodes=(), kubelets=False):
        """`port`: the apiserver's secure port (default: a free one). `nodes`: names of
        the nodes whose kubelets will call in; each gets a token of its own in
        `node_tokens`, for the identity `system:node:<name>` in `system:nodes`, which
        the Node authorizer and NodeRestriction judge as they judge a kubelet.
        `kubelets`: real kubelets (`real_node.py`) will renew the nodes' Leases, so the
        node lifecycle controller runs too."""
        self.dir = workdir
        self.kubelets = kubelets
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = []
        self.token = secrets.token_hex(16)
        self.node_tokens = {name: secrets.token_hex(16) for name in nodes}
        self.ca = trustme.CA(organization_name="ipmgmt tests cluster CA")
        self.port = port or free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        # Where what runs in a real node's network namespace (Multus, whereabouts, pods)
        # reaches the apiserver: a host address, routed from every node.
        self.node_url = f"https://{endpoint_address()}:{self.port}" if kubelets else None
        try:
            self._write_credentials()
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._start_controllers()
        except BaseException:
            self.stop()
            raise

    # -- setup ---------------------------------------------------------------------

    def _write_credentials(self):
        d = self.dir
        node_side = [endpoint_address()] if self.kubelets else []
        cert = self.ca.issue_cert("127.0.0.1", *node_side, "localhost", "kubernetes", "kubernetes.default",
                                  "kubernetes.default.svc", "10.96.0.1")
        cert.private_key_pem.write_to_path(str(d / "apiserver.key"))
        (d / "apiserver.crt").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        self.ca.cert_pem.write_to_path(str(d / "ca.crt"))
        # The apiserver's client certificate towards kubelets (logs, exec), as kubeadm's
        # apiserver-kubelet-client: in system:masters, which kubelet's webhook
        # authorization lets through.
        client = self.ca.issue_cert("kube-apiserver-kubelet-client",
                                    common_name="kube-apiserver-kubelet-client",
                                    organization_name="system:masters")
        client.private_key_pem.write_to_path(str(d / "kubelet-client.key"))
        (d / "kubelet-client.crt").write_bytes(b"".join(b.bytes() for b in client.cert_chain_pems))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (d / "sa.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.TraditionalOpenSSL,
                                                     serialization.NoEncryption()))
        (d / "sa.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
        # One static token: the test's admin, and the controllers' identity, in
        # system:masters (what kubeadm's admin.conf carries).
        lines = [f'{self.token},admin,admin,"system:masters"']
        lines += [f'{token},system:node:{name},node-{name},"system:nodes"' for name, token in self.node_tokens.items()]
        (d / "tokens.csv").write_text("\n".join(lines) + "\n")

    def _start_etcd(self):
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        etcd = Process("etcd", [
            tool("etcd"), "--data-dir", self.dir / "etcd", "--name", "ipmgmt-tests",
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"ipmgmt-tests=http://127.0.0.1:{peer}",
            # A test cluster's data need not survive a power cut.
            "--unsafe-no-fsync", "--log-level", "warn",
        ], self.dir)
        self.procs.append(etcd)
        self._wait(lambda: requests.get(f"{self.etcd_url}/health", timeout=1).json().get("health") == "true",
                   "etcd healthy", etcd)

    def _start_apiserver(self):
        d = self.dir
        self._apiserver_args = [
            tool("kube-apiserver"),
            "--etcd-servers", self.etcd_url,
            "--bind-address", "0.0.0.0" if self.kubelets else "127.0.0.1",
            "--advertise-address", endpoint_address() if self.kubelets else "127.0.0.1",
            "--secure-port", self.port,
            "--tls-cert-file", d / "apiserver.crt", "--tls-private-key-file", d / "apiserver.key",
            "--client-ca-file", d / "ca.crt",
            "--token-auth-file", d / "tokens.csv",
            "--authorization-mode", "Node,RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", d / "sa.pub",
            "--service-account-signing-key-file", d / "sa.key",
            "--service-cluster-ip-range", SERVICE_CIDR,
            # Webhook Services resolve to their EndpointSlices' addresses, not to a
            # cluster IP that no kube-proxy serves here.
            "--enable-aggregator-routing=true",
            # With real nodes the `kubernetes` Service's endpoint is the host address
            # pods reach (kube-proxy on each node routes the Service to it). Without,
            # it would be 127.0.0.1, which an EndpointSlice may not name, and nothing
            # reaches the apiserver through it.
            "--endpoint-reconciler-type=" + ("lease" if self.kubelets else "none"),
            "--allow-privileged=true",
            # Kubelets are reached at the address they report, by their own CA's
            # certificate, with the apiserver's client certificate (as kubeadm sets up).
            "--kubelet-preferred-address-types=InternalIP",
            "--kubelet-certificate-authority", d / "ca.crt",
            "--kubelet-client-certificate", d / "kubelet-client.crt",
            "--kubelet-client-key", d / "kubelet-client.key",
            # What a managed cluster enables besides the defaults (EKS adds NodeRestriction;
            # the webhooks, ValidatingAdmissionPolicy, PodSecurity and ServiceAccount are
            # on by default, and named here so that a release turning one off fails).
            "--enable-admission-plugins=NodeRestriction,PodSecurity,ServiceAccount,MutatingAdmissionWebhook,"
            "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
        ]
        self._run_apiserver()

    def _run_apiserver(self):
        api = Process("kube-apiserver", self._apiserver_args, self.dir)
        self.procs.insert(1, api)
        self._wait(lambda: self.get("/readyz", raw=True).status_code == 200, "kube-apiserver ready", api,
                   timeout=90)

    def compact_and_restart_apiserver(self):
        """Compacts etcd's history up to now and restarts the apiserver, as an upgrade
        or a crash does: every watch is cut, and one resumed from before the
        compaction gets `410 Gone` and must list again."""
        head = requests.post(f"{self.etcd_url}/v3/kv/range", json={"key": base64.b64encode(b"/").decode()},
                             timeout=10).json()["header"]["revision"]
        requests.post(f"{self.etcd_url}/v3/kv/compaction", json={"revision": head, "physical": True},
                      timeout=30).raise_for_status()
        (api,) = [p for p in self.procs if p.name == "kube-apiserver"]
        api.stop()
        self.procs.remove(api)
        self._run_apiserver()
        return int(head)

    def _write_kubeconfig(self):
        self.kubeconfig = self.write_kubeconfig(self.dir / "kubeconfig", self.token, "admin")

    def write_kubeconfig(self, path, token, user, server=None):
        """A kubeconfig for this cluster that authenticates with `token`; `server`: the
        apiserver's URL as the user reaches it (default: loopback)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "ipmgmt-tests",
            "clusters": [{"name": "ipmgmt-tests", "cluster": {
                "server": server or self.url, "certificate-authority": str(self.dir / "ca.crt")}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "ipmgmt-tests", "context": {"cluster": "ipmgmt-tests", "user": user}}],
        }))
        return path

    def _start_controllers(self):
        d = self.dir
        common = ["--kubeconfig", self.kubeconfig, "--leader-elect=false",
                  "--bind-address", "127.0.0.1", "--secure-port", "0"]
        self.procs.append(Process("kube-controller-manager", [
            tool("kube-controller-manager"), *common,
            "--service-account-private-key-file", d / "sa.key",
            "--root-ca-file", d / "ca.crt",
            "--use-service-account-credentials=false",
            "--service-cluster-ip-range", SERVICE_CIDR,
            # Nodes without a real kubelet renew no Lease: the node lifecycle controller
            # would taint them unreachable after 40 s. With real kubelets it runs, and
            # lifts the not-ready taint a new Node is registered with.
            "--controllers", "*" if self.kubelets else "*,-node-lifecycle-controller",
        ], d))
        self.procs.append(Process("kube-scheduler", [tool("kube-scheduler"), *common], d))
        # The controller-manager is up once it has made the default ServiceAccount.
        self._wait(lambda: self.get("/api/v1/namespaces/default/serviceaccounts/default", raw=True).status_code == 200,
                   "kube-controller-manager's default ServiceAccount", self.procs[-2], timeout=60)

    def start_cert_manager(self):
        """cert-manager's controller and cainjector, with its CRDs, as cert-manager's
        own chart runs them (its webhook, which only validates cert-manager's own
        resources, is not run: nothing registers it)."""
        crds = tool("cert-manager", "cert-manager-controller").parent.parent / "cert-manager.crds.yaml"
        self.kubectl("create", "namespace", "cert-manager")
        self.kubectl("apply", "--server-side", "-f", crds)
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     "crd/certificates.cert-manager.io", "crd/issuers.cert-manager.io",
                     "crd/certificaterequests.cert-manager.io")
        self.procs.append(Process("cert-manager-controller", [
            tool("cert-manager", "cert-manager-controller"), "--kubeconfig", self.kubeconfig,
            "--leader-elect=false", "--cluster-resource-namespace=cert-manager",
            f"--metrics-listen-address=127.0.0.1:{free_port()}",
        ], self.dir))
        self.procs.append(Process("cert-manager-cainjector", [
            tool("cert-manager", "cert-manager-cainjector"), "--kubeconfig", self.kubeconfig,
            "--leader-elect=false",
        ], self.dir))

    def _wait(self, ready, what, proc, timeout=30):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            proc.check()
            try:
                if ready():
                    return
            except (requests.RequestException, ValueError) as e:
                last = e
            time.sleep(0.2)
        raise Fail(f"{what}: not within {timeout} s ({last}); {proc.name} said:\n{proc.tail()}")

    # -- use -------------------------------------------------------------------------

    def request(self, method, path, body=None, raw=False, content_type="application/json", token=None, **params):
        """One API call, as the admin or as whoever `token` is; the decoded answer, or
        with `raw` the response itself."""
        r = requests.request(method, self.url + path, params=params or None,
                             data=None if body is None else (body if isinstance(body, (str, bytes)) else json.dumps(body)),
                             headers={"Authorization": f"Bearer {token or self.token}", "Content-Type": content_type},
                             verify=str(self.dir / "ca.crt"), timeout=30)
        if raw:
            return r
        if r.status_code >= 300:
            raise Fail(f"{method} {path}: HTTP {r.status_code}: {r.text[:1000]}")
        return r.json()

    def get(self, path, raw=False, **params):
        return self.request("GET", path, raw=raw, **params)

    def create(self, path, obj):
        return self.request("POST", path, obj)

    def kubectl(self, *args, check=True, input=None):
        proc = subprocess.run([str(tool("kubectl")), "--kubeconfig", str(self.kubeconfig), *map(str, args)],
                              capture_output=True, text=True, input=input, timeout=120)
        if check and proc.returncode != 0:
            raise Fail(f"kubectl {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def helm(self, *args, check=True):
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HELM_CACHE_HOME": str(self.dir / "helm-cache"),
               "HELM_CONFIG_HOME": str(self.dir / "helm-config"), "HELM_DATA_HOME": str(self.dir / "helm-data")}
        proc = subprocess.run([str(tool("helm")), *map(str, args)], capture_output=True, text=True, env=env,
                              timeout=300)
        if check and proc.returncode != 0:
            raise Fail(f"helm {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def add_node(self, name, provider_id, labels=None):
        """A Node object the scheduler may bind pods to: Ready, with room for pods.
        What runs its pods is the caller's."""
        self.create("/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  **(labels or {})}},
            "spec": {"providerID": provider_id},
        })
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {"status": {
            "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        }}
        self.request("PATCH", f"/api/v1/nodes/{name}/status", status, content_type="application/merge-patch+json")
        # The TaintNodesByCondition admission plugin taints a new Node not-ready; the node
        # lifecycle controller, which would lift it once Ready, is off (no heartbeats).
        self.request("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": None}},
                     content_type="application/merge-patch+json")

    def service_account_kubeconfig(self, path, namespace, name, cluster_roles=(), server=None):
        """A ServiceAccount bound to `cluster_roles`, and a kubeconfig with a token of
        its (TokenRequest, a day long): the identity a DaemonSet's pod would have."""
        self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                     {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
        for role in cluster_roles:
            self.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": f"{name}-{role}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            })
        return self.token_kubeconfig(path, namespace, name, server=server)

    def token_kubeconfig(self, path, namespace, name, expiration=86400, server=None):
        """A kubeconfig with a token of ServiceAccount `name` (TokenRequest, `expiration`
        seconds long), as a pod of that account would hold one."""
        token = self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                             {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                              "spec": {"expirationSeconds": expiration}})["status"]["token"]
        return self.write_kubeconfig(path, token, f"system:serviceaccount:{namespace}:{name}", server=server)

    def wait_for(self, what, fetch, timeout=30):
        """Polls `fetch()` until it returns something truthy; that value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                p.check()
            value = fetch()
            if value:
                return value
            time.sleep(0.2)
        raise Fail(f"never: {what} within {timeout} s")

    def stop(self):
        for p in reversed(self.procs):
            p.stop()
        self.procs = []


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
