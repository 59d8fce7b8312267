"""kubelet's side of the API, played per node on the real control plane: a watch on
the pods bound to this node (`spec.nodeName`), each run by podman (`kubelet.py`) in a
network namespace of its own with its Multus interfaces (`multus.py`), its volumes
laid out from the apiserver (Secret, ConfigMap, projected service-account token,
downward API, emptyDir), and its status PATCHed back as it goes: podIP, init container
states with their termination messages, startup and readiness probes, Ready. A
graceful delete stops the containers (SIGTERM, the grace period, SIGKILL) and ends
with kubelet's own final DELETE; a force delete stops them too.

Each node calls in as `system:node:<name>`: the Node authorizer and NodeRestriction
judge every call as they judge a kubelet's (its own pods only, the Secrets and tokens
they name). Multus writes the network-status annotation as the admin, as its own
ServiceAccount would.

What this stand-in does not do, and the real kubelet would: restart exited containers
(an init container that fails stays failed: kubectl shows Init:Error, not
Init:CrashLoopBackOff), liveness probes, readiness after the first pass, preStop
hooks, the service environment variables, image pulls (every image must already be in
podman's store; one that is not leaves the container waiting with ErrImageNeverPull)."""

import base64
import json
import os
import pathlib
import threading
import time
import traceback

import requests

from .base import Fail
from .kubelet import Pod
from .vpc import Sandbox

GONE = object()


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class NodeAgent:
    """One node's kubelet stand-in: watches its pods and runs each in a thread."""

    def __init__(self, cp, node, kubelet, multus, extra_env):
        self.cp, self.node, self.kubelet, self.multus = cp, node, kubelet, multus
        self.token = cp.node_tokens[node.name]
        self.extra_env = extra_env
        self.workers = {}  # uid -> PodWorker
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.response = None
        self.thread = threading.Thread(target=self._watch, name=f"kubelet {node.name}", daemon=True)
        self.thread.start()

    def api(self, method, path, body=None, content_type="application/json", **params):
        return self.cp.request(method, path, body, content_type=content_type, token=self.token, **params)

    # -- the watch ---------------------------------------------------------------------

    def _watch(self):
        selector = f"spec.nodeName={self.node.name}"
        while not self.stopping.is_set():
            try:
                listed = self.api("GET", "/api/v1/pods", fieldSelector=selector)
                present = {p["metadata"]["uid"] for p in listed["items"]}
                for uid, worker in list(self.workers.items()):
                    if uid not in present:
                        worker.observe(GONE)
                for pod in listed["items"]:
                    self._observe(pod)
                version = listed["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    version = self._watch_from(selector, version)
            except Exception as e:  # noqa: BLE001 - a watch that breaks lists again, as kubelet's reflector does
                if not self.stopping.is_set():
                    self.errors.append(f"{type(e).__name__}: {e}")
                    time.sleep(0.5)

    def _watch_from(self, selector, version):
        params = {"fieldSelector": selector, "watch": "1", "resourceVersion": version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": "30"}
        with requests.get(self.cp.url + "/api/v1/pods", params=params, stream=True, timeout=60,
                          headers={"Authorization": f"Bearer {self.token}"},
                          verify=str(self.cp.dir / "ca.crt")) as r:
            self.response = r
            if r.status_code != 200:
                raise Fail(f"watch of pods on {self.node.name}: HTTP {r.status_code}: {r.text[:300]}")
            for line in r.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    raise Fail(f"watch of pods on {self.node.name}: {event['object'].get('message')}")
                version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] == "DELETED":
                    worker = self.workers.get(event["object"]["metadata"]["uid"])
                    if worker:
                        worker.observe(GONE)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    self._observe(event["object"])
        return version

    def _observe(self, pod):
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return
                worker = self.workers[uid] = PodWorker(self, pod)
                worker.start()
        worker.observe(pod)

    def stop_watch(self):
        self.stopping.set()
        if self.response is not None:
            self.response.close()
        self.thread.join(timeout=5)

    def stop_pods(self):
        """Stops every pod still running here (containers and network), as a node
        going away does: without telling the apiserver. Returns the workers to join."""
        workers = list(self.workers.values())
        for worker in workers:
            worker.observe(GONE)
        return workers


class PodWorker(threading.Thread):
    """One pod, from its sandbox to kubelet's final DELETE."""

    def __init__(self, agent, manifest):
        meta = manifest["metadata"]
        super().__init__(name=f"pod {meta['namespace']}/{meta['name']}", daemon=True)
        self.agent, self.manifest = agent, manifest
        self.cp, self.kubelet = agent.cp, agent.kubelet
        self.pod = None
        self.error = None
        self.deleting = threading.Event()
        self.grace = None
        self.gone = False
        self.exit_codes = None
        self.statuses = {}  # container name -> status
        self.sandbox = None

    @property
    def path(self):
        meta = self.manifest["metadata"]
        return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"

    def observe(self, pod):
        """A newer version of the pod, or GONE once its object is deleted."""
        if pod is GONE:
            self.gone = True
            self.deleting.set()
            return
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            self.grace = meta.get("deletionGracePeriodSeconds")
            self.deleting.set()

    # -- the pod's life --------------------------------------------------------------------

    def run(self):
        try:
            self._set_up()
            if not self.deleting.is_set():
                self._run_containers()
        except Exception as e:  # noqa: BLE001 - said in the pod's status and kept for the test
            self.error = f"{e}"
            self.agent.errors.append(f"{self.name}: {e}\n{traceback.format_exc()}")
        try:
            self.deleting.wait()
            self._shut_down()
        except Exception as e:  # noqa: BLE001
            self.agent.errors.append(f"{self.name} stopping: {e}\n{traceback.format_exc()}")
        finally:
            self._clean_up()

    def _set_up(self):
        self.sandbox = Sandbox()
        status = self.manifest.setdefault("status", {})
        status.update({"podIP": self.sandbox.pod_ip, "hostIP": self.agent.node.address})
        interfaces = self.agent.multus.attach(self.manifest, self.agent.node, self.sandbox)
        self.pod = Pod(self.manifest, self.agent.node, self.sandbox, interfaces)
        self.volumes = self._volumes()
        spec = self.manifest["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            self.statuses[c["name"]] = container_status(c, {"waiting": {"reason": "PodInitializing"}})
        self._status("Pending", ready_to_start=True, initialized=not spec.get("initContainers"))

    def _run_containers(self):
        spec = self.manifest["spec"]
        network = f"ns:/run/netns/{self.sandbox.ns}"
        for c in spec.get("initContainers", []):
            running = self._run_container(c, network)
            if running is None:
                return
            started = time.monotonic()
            if c.get("restartPolicy") == "Always":
                self.pod.containers.append(running)
                self.statuses[c["name"]] = container_status(c, {"running": {"startedAt": now()}}, started=False)
                self._status("Pending", ready_to_start=True, initialized=False)
                if "startupProbe" in c:
                    self.kubelet.probe(running, c["startupProbe"], "startup probe", self.sandbox.pod_ip)
                self.statuses[c["name"]] = container_status(c, {"running": {"startedAt": now()}}, started=True,
                                                            ready="readinessProbe" not in c)
                self.pod.init_results.append((c["name"], None, time.monotonic() - started, ""))
                continue
            code = running.wait()
            message = running.termination_message(code)
            self.pod.init_results.append((c["name"], code, time.monotonic() - started, message))
            running.remove()
            self.statuses[c["name"]] = container_status(c, {"terminated": terminated(code, message)})
            if code != 0:
                self.pod.phase = "Init:Error"
                self._status("Pending", ready_to_start=True, initialized=False)
                return
        for c in spec["containers"]:
            running = self._run_container(c, network)
            if running is None:
                return
            self.pod.containers.append(running)
            hook = c.get("lifecycle", {}).get("postStart", {}).get("exec")
            if hook is not None:
                proc = running.exec(hook["command"], timeout=120)
                if proc.returncode != 0:
                    raise Fail(f"postStart hook of {c['name']} exited {proc.returncode}: {running.logs()[-1500:]}")
            self.statuses[c["name"]] = container_status(c, {"running": {"startedAt": now()}}, started=True,
                                                        ready="readinessProbe" not in c)
        self.pod.app_started = time.monotonic()
        self.pod.phase = "Running"
        self._status("Running", ready_to_start=True, initialized=True)
        # Readiness: probed until it first passes.
        for running in self.pod.containers:
            probe = running.spec.get("readinessProbe")
            if probe is None:
                continue
            while not self.deleting.is_set():
                if self.kubelet.probe_once(running, probe, self.sandbox.pod_ip):
                    break
                self.deleting.wait(min(probe.get("periodSeconds", 10), 1))
            self.statuses[running.spec["name"]]["ready"] = True
        if not self.deleting.is_set():
            self._status("Running", ready_to_start=True, initialized=True)

    def _run_container(self, c, network):
        if c["image"] not in self.kubelet.local_images:
            self.statuses[c["name"]] = container_status(c, {"waiting": {
                "reason": "ErrImageNeverPull", "message": f"{c['image']} is not in this node's image store"}})
            self._status("Pending", ready_to_start=True, initialized=False)
            return None
        return self.kubelet.start_container(self.manifest, c, network, self.agent.extra_env(self.pod, c),
                                            self.volumes)

    def _shut_down(self):
        if self.pod is not None:
            self.exit_codes = self.kubelet.stop_pod(self.pod, self.grace)
            for name, code in self.exit_codes.items():
                self.statuses[name] = container_status(
                    self._spec_of(name), {"terminated": terminated(code, "")})
        if self.gone:
            return
        failed = self.pod is None or self.pod.phase == "Init:Error" or any((self.exit_codes or {}).values())
        phase = "Failed" if failed else "Succeeded"
        self._status(phase, ready_to_start=False, initialized=True)
        # kubelet's final word: the object goes once the containers have stopped.
        self.agent.api("DELETE", self.path, {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                             "preconditions": {"uid": self.manifest["metadata"]["uid"]}})

    def _clean_up(self):
        if self.pod is not None:
            for container in self.pod.containers:
                container.remove()
            self.pod.containers = []
            self.agent.multus.free(cidr for _, cidr in self.pod.addresses)
        if self.sandbox is not None:
            self.sandbox.delete()

    def _spec_of(self, name):
        spec = self.manifest["spec"]
        (found,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
        return found

    # -- the status ------------------------------------------------------------------------

    def _status(self, phase, ready_to_start, initialized):
        spec = self.manifest["spec"]
        inits = [self.statuses[c["name"]] for c in spec.get("initContainers", [])]
        regular = [self.statuses[c["name"]] for c in spec["containers"]]
        sidecars = [self.statuses[c["name"]] for c in spec.get("initContainers", [])
                    if c.get("restartPolicy") == "Always"]
        ready = phase == "Running" and all(s["ready"] for s in regular + sidecars)

        def condition(kind, value):
            return {"type": kind, "status": "True" if value else "False", "lastTransitionTime": now()}

        body = {"status": {
            "phase": phase,
            "podIP": self.sandbox.pod_ip, "podIPs": [{"ip": self.sandbox.pod_ip}],
            "hostIP": self.agent.node.address, "hostIPs": [{"ip": self.agent.node.address}],
            "startTime": self.manifest.get("status", {}).get("startTime") or now(),
            "conditions": [condition("PodReadyToStartContainers", ready_to_start),
                           condition("Initialized", initialized),
                           condition("ContainersReady", ready), condition("Ready", ready)],
            "initContainerStatuses": inits,
            "containerStatuses": regular,
        }}
        self.manifest["status"]["startTime"] = body["status"]["startTime"]
        self.agent.api("PATCH", f"{self.path}/status", body, content_type="application/strategic-merge-patch+json")

    # -- volumes ----------------------------------------------------------------------------

    def _volumes(self):
        """Each volume of the pod laid out on this machine, as kubelet does: {name: dir}."""
        spec, meta = self.manifest["spec"], self.manifest["metadata"]
        root = self.kubelet.workdir / "pods" / meta["uid"] / "volumes"
        group = spec.get("securityContext", {}).get("fsGroup")
        out = {}
        for volume in spec.get("volumes", []):
            where = root / volume["name"]
            if "emptyDir" in volume:
                where.mkdir(parents=True, exist_ok=True)
                where.chmod(0o777)
            elif "secret" in volume:
                source = volume["secret"]
                data = self._object("secrets", source["secretName"], source.get("optional"))
                files = project(data, source.get("items"), decode=True)
                write_atomic(where, files, source.get("defaultMode", 0o644), group)
            elif "configMap" in volume:
                source = volume["configMap"]
                data = self._object("configmaps", source["name"], source.get("optional"))
                write_atomic(where, project(data, source.get("items")), source.get("defaultMode", 0o644), group)
            elif "projected" in volume:
                files = {}
                for source in volume["projected"]["sources"]:
                    files.update(self._projected(source))
                write_atomic(where, files, volume["projected"].get("defaultMode", 0o644), group)
            else:
                raise Fail(f"volume {volume['name']} of {meta['name']}: only emptyDir, Secret, ConfigMap and "
                           f"projected volumes run here")
            out[volume["name"]] = where
        return out

    def _object(self, kind, name, optional, timeout=60):
        """A Secret's or ConfigMap's data as this node may read it; waits for it, as
        kubelet leaves the pod in ContainerCreating until it exists."""
        namespace = self.manifest["metadata"]["namespace"]
        deadline = time.monotonic() + timeout
        while True:
            r = self.cp.request("GET", f"/api/v1/namespaces/{namespace}/{kind}/{name}", raw=True,
                                token=self.agent.token)
            if r.status_code == 200:
                body = r.json()
                return {**body.get("data", {}), **body.get("binaryData", {})}
            if r.status_code == 404 and optional:
                return {}
            # 403 too: the Node authorizer learns of the pod's references a moment
            # after the pod is bound, and kubelet retries.
            if r.status_code not in (403, 404) or time.monotonic() > deadline or self.deleting.is_set():
                raise Fail(f"{kind[:-1]} {namespace}/{name} for {self.manifest['metadata']['name']}: "
                           f"HTTP {r.status_code}: {r.text[:300]}")
            time.sleep(0.5)

    def _projected(self, source):
        meta, spec = self.manifest["metadata"], self.manifest["spec"]
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
                "expirationSeconds": token.get("expirationSeconds", 3600),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}}
            if token.get("audience"):
                request["spec"]["audiences"] = [token["audience"]]
            account = spec.get("serviceAccountName", "default")
            answer = self.agent.api("POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token",
                                    request)
            return {token["path"]: answer["status"]["token"].encode()}
        if "configMap" in source:
            cm = source["configMap"]
            return project(self._object("configmaps", cm["name"], cm.get("optional")), cm.get("items"))
        if "secret" in source:
            secret = source["secret"]
            return project(self._object("secrets", secret["name"], secret.get("optional")), secret.get("items"),
                           decode=True)
        if "downwardAPI" in source:
            files = {}
            for item in source["downwardAPI"]["items"]:
                field = item["fieldRef"]["fieldPath"]
                values = {"metadata.namespace": meta["namespace"], "metadata.name": meta["name"],
                          "metadata.uid": meta["uid"]}
                if field not in values:
                    raise Fail(f"downward API field {field} of {meta['name']} is not laid out here")
                files[item["path"]] = values[field].encode()
            return files
        raise Fail(f"a projected source of {meta['name']} is not laid out here: {sorted(source)}")


def project(data, items, decode=False):
    """A Secret's or ConfigMap's keys as files: all of them, or the `items` asked for."""

    def value(key):
        raw = data[key]
        return base64.b64decode(raw) if decode else raw.encode()

    if items:
        return {item["path"]: value(item["key"]) for item in items}
    return {key: value(key) for key in data}


def write_atomic(root, files, mode, group):
    """Files behind a `..data` symlink, as kubelet's atomic writer lays out Secret,
    ConfigMap and projected volumes: mode `mode`, group `group` (the pod's fsGroup)."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{os.getpid()}"
    stamp.mkdir()
    for path, content in files.items():
        target = stamp / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        os.chown(target, 0, group or 0)
        target.chmod(mode)
    for d in [stamp, root]:
        os.chown(d, 0, group or 0)
        d.chmod(0o755)
    os.symlink(stamp.name, root / "..data")
    for top in {pathlib.Path(p).parts[0] for p in files}:
        os.symlink(f"..data/{top}", root / top)


def container_status(spec, state, started=None, ready=False):
    status = {"name": spec["name"], "image": spec["image"], "imageID": "", "ready": ready, "restartCount": 0,
              "state": state}
    if started is not None:
        status["started"] = started
    return status


def terminated(code, message):
    out = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": now(), "finishedAt": now()}
    if message:
        out["message"] = message
    return out
