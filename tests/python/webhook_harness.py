"""Runs the real ipmgmt-webhook binary and plays the kube-apiserver against it."""

import base64
import http.client
import json
import os
import pathlib
import shutil
import signal
import ssl
import subprocess
import threading
import time
import uuid

import trustme

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "webhook" / "fixtures"
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
WEBHOOK_BIN = pathlib.Path(os.environ.get("IPMGMT_WEBHOOK_BIN", TARGET / "debug" / "ipmgmt-webhook"))



def _read_flags(path):
    """One argument per line; blank lines and `#` lines left out (webhook/tests/common)."""
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _flag_name(flag):
    return flag.split("=", 1)[0]


def fixture_flags(case=None):
    """The flags a golden fixture is decided with: webhook/fixtures/flags, with the
    case's own `flags` replacing base flags of the same name, as the Rust test does."""
    extra = _read_flags(FIXTURES / case / "flags") if case else []
    names = {_flag_name(f) for f in extra}
    return [f for f in _read_flags(FIXTURES / "flags") if _flag_name(f) not in names] + extra


# The fixtures' base configuration.
FIXTURE_FLAGS = fixture_flags()


def review_of(pod, uid=None, operation="CREATE"):
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod.get("metadata", {}).get("name", ""),
            "namespace": pod.get("metadata", {}).get("namespace", "default"),
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def decode_patch(response):
    assert response.get("patchType") == "JSONPatch", response
    assert isinstance(response["patch"], str), "patch must be a base64 string, not %r" % type(response["patch"])
    return json.loads(base64.b64decode(response["patch"], validate=True))


class KubeletSecretDir:
    """A Secret volume as kubelet lays it out: files behind a `..data` symlink that is
    swapped atomically on update."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.generation = 0

    def publish(self, cert_pem: bytes, key_pem: bytes):
        self.generation += 1
        stamp = self.root / ("..2026_11_22_00_00_%02d.%d" % (self.generation, os.getpid()))
        stamp.mkdir()
        (stamp / "tls.crt").write_bytes(cert_pem)
        (stamp / "tls.key").write_bytes(key_pem)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(stamp.name, tmp)
        os.replace(tmp, self.root / "..data")
        for name in ("tls.crt", "tls.key"):
            if not (self.root / name).is_symlink():
                os.symlink("..data/" + name, self.root / name)
        if old:
            shutil.rmtree(self.root / old)

    @property
    def cert(self):
        return self.root / "tls.crt"

    @property
    def key(self):
        return self.root / "tls.key"


def issue(ca):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    return chain, cert.private_key_pem.bytes()


class Webhook:
    """One ipmgmt-webhook process on loopback ports it picks itself."""

    def __init__(self, tmp_path, extra_args=(), cas=None, reload_seconds=1, flags=FIXTURE_FLAGS, issue_pair=None,
                 env=None):
        """`flags` are the injection settings; `issue_pair(ca)` makes the first
        (certificate chain, key) pair; `env` adds environment variables (flag twins)."""
        assert WEBHOOK_BIN.exists(), f"{WEBHOOK_BIN} is missing: build the workspace first (cargo build --workspace)"
        self.ca = trustme.CA()
        self.secret = KubeletSecretDir(tmp_path / "tls")
        self.secret.publish(*(issue_pair or issue)(self.ca))
        self.trusted = [self.ca] + list(cas or [])
        args = [
            str(WEBHOOK_BIN),
            "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0",
            "--tls-cert", str(self.secret.cert),
            "--tls-key", str(self.secret.key),
            "--tls-reload-seconds", str(reload_seconds),
            "--header-read-timeout-seconds", "2",
            "--log-format", "json",
            *flags,
            *extra_args,
        ]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env={**os.environ, **(env or {})})
        self.logs = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_logs, daemon=True)
        self._reader.start()
        self.address = self.wait_for_log(lambda e: "HTTPS" in e.get("message", ""))["address"]
        self.admin = self.wait_for_log(lambda e: "/healthz" in e.get("message", ""))["address"]
        self.port = int(self.address.rsplit(":", 1)[1])
        self.admin_port = int(self.admin.rsplit(":", 1)[1])

    def _read_logs(self):
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"message": line.rstrip()}
            with self._lock:
                self.logs.append(entry)

    def wait_for_log(self, match, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for entry in self.logs:
                    if match(entry):
                        return entry
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        with self._lock:
            raise AssertionError("log line not seen; logs so far: %r (exit %r)" % (self.logs, self.proc.poll()))

    def context(self, cas=None):
        ctx = ssl.create_default_context()
        for ca in cas or self.trusted:
            ca.configure_trust(ctx)
        return ctx

    def connect(self, cas=None):
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(cas), timeout=10)

    def post(self, body, conn=None, path="/mutate"):
        """POSTs a review (dict) or raw bytes; returns (status, parsed JSON or text)."""
        own = conn is None
        conn = conn or self.connect()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            if own:
                conn.close()
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return resp.status, json.loads(raw)
        return resp.status, raw.decode(errors="replace")

    def admin_get(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def served_certificate(self):
        """The DER certificate a new connection is served."""
        ctx = self.context()
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
                return tls.getpeercert(binary_form=True)

    def terminate(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self):
        self.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
