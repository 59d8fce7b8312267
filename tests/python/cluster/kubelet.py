"""kubelet's part: a pod's containers run with podman as kubelet would run them."""

import json
import pathlib
import time
import urllib.request

from .base import SECCOMP_RUNTIME_DEFAULT, Fail

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
        self.init_started = time.monotonic()
        self.app_started = None
        self.phase = "Pending"

    @property
    def addresses(self):
        return [(iface, cidr) for iface, cidrs in self.interfaces.items() for cidr in cidrs]

    def container(self, name):
        (found,) = [c for c in self.containers if c.spec["name"] == name]
        return found

    def exec(self, container, *command):
        """`kubectl exec POD -c CONTAINER -- COMMAND`; raises unless it succeeds."""
        proc = self.container(container).exec(list(command))
        if proc.returncode != 0:
            raise Fail(f"{' '.join(command)} in {self.name}/{container} exited {proc.returncode}: {proc.stderr}")
        return proc.stdout


class Kubelet:
    """Runs a pod's containers with podman as kubelet would. Every image a pod names
    must be here."""

    def __init__(self, podman, workdir, extra_env=None):
        self.podman, self.workdir = podman, pathlib.Path(workdir)
        # (pod, container) -> variables a cluster adds (credentials, endpoints).
        self.extra_env = extra_env or (lambda pod, container: {})
        self.local_images = set()

    def env_of(self, pod_manifest, container):
        """The container's env as kubelet resolves it: values, and the downward API's
        fields of the pod."""
        env = {}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            field = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            values = {"spec.nodeName": pod_manifest["spec"].get("nodeName"),
                      "metadata.name": pod_manifest["metadata"].get("name"),
                      "metadata.namespace": pod_manifest["metadata"].get("namespace"),
                      "spec.serviceAccountName": pod_manifest["spec"].get("serviceAccountName", "default"),
                      "metadata.uid": pod_manifest["metadata"].get("uid"),
                      "status.podIP": pod_manifest.get("status", {}).get("podIP"),
                      "status.hostIP": pod_manifest.get("status", {}).get("hostIP")}
            if field not in values or values[field] is None:
                raise Fail(f"container {container['name']}: env {var['name']} from {var.get('valueFrom')} is not "
                           f"resolved here")
            env[var["name"]] = values[field]
        return env

    def podman_args(self, pod_manifest, container, name, network, extra_env, volumes):
        """`volumes`: {volume name: the host directory kubelet laid it out in}."""
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
        # The cgroup limits kubelet sets: CFS quota from the CPU limit, shares from
        # the CPU request, the memory limit.
        resources = container.get("resources", {})
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(limits["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", f"{millicpu(limits['cpu']) / 1000:.3f}"]
        cpu_request = requests.get("cpu", limits.get("cpu"))
        if cpu_request is not None:
            args += ["--cpu-shares", str(max(2, millicpu(cpu_request) * 1024 // 1000))]
        for key, value in {**self.env_of(pod_manifest, container), **extra_env}.items():
            args += ["--env", f"{key}={value}"]
        pod_dir = self.workdir / "pods" / pod_manifest["metadata"]["name"]
        for mount in container.get("volumeMounts", []):
            host = volumes.get(mount["name"])
            if host is None:
                raise Fail(f"container {container['name']} mounts {mount['name']}, which the pod does not define")
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

    def start_container(self, pod_manifest, container, network, extra_env=None, volumes=None):
        name = f"{pod_manifest['metadata']['name']}-{container['name']}"
        self.podman("rm", "--force", name, check=False)
        args, termination = self.podman_args(pod_manifest, container, name, network, extra_env or {}, volumes or {})
        self.podman(*args)
        return Container(self.podman, name, container, termination)

    def probe_once(self, container, probe, pod_ip):
        """One try of an exec or httpGet probe; whether it passed."""
        timeout = probe.get("timeoutSeconds", 1)
        if "exec" in probe:
            return container.exec(probe["exec"]["command"], timeout=timeout + 10).returncode == 0
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = get["port"]
            if isinstance(port, str):
                (port,) = [p["containerPort"] for p in container.spec.get("ports", []) if p.get("name") == port]
            try:
                url = f"{get.get('scheme', 'HTTP').lower()}://{pod_ip}:{port}{get.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return 200 <= resp.status < 400
            except OSError:
                return False
        raise Fail(f"a probe of {container.spec['name']} is neither exec nor httpGet: {probe}")

    def probe(self, container, probe, what, pod_ip=None):
        """A startup probe as kubelet runs it, until it passes; the seconds that took.
        Fails after failureThreshold tries."""
        start = time.monotonic()
        time.sleep(probe.get("initialDelaySeconds", 0))
        failures = 0
        while not self.probe_once(container, probe, pod_ip):
            failures += 1
            if failures >= probe.get("failureThreshold", 3):
                raise Fail(f"{what} of {container.spec['name']} failed {failures} times: {container.logs()[-1500:]}")
            time.sleep(probe.get("periodSeconds", 10))
        return time.monotonic() - start

    def stop_pod(self, pod, grace=None):
        """SIGTERM, then SIGKILL after the grace period (`grace`, else the pod's):
        regular containers first, then native sidecars in reverse order. Returns
        {container: exit code}."""
        if grace is None:
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


def millicpu(text):
    text = str(text)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def quantity_bytes(text):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)
