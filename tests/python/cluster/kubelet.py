"""kubelet's part: a pod's containers run with podman as kubelet would run them."""

import json
import pathlib
import time

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
        then the regular containers, each after the previous one's postStart hook."""
        manifest = pod.manifest
        for container in manifest["spec"].get("initContainers", []):
            if container["image"] not in self.local_images:
                raise Fail(f"init container {container['name']} uses {container['image']}, which is not here")
            started = time.monotonic()
            running = self.start_container(manifest, container, network, self.extra_env(pod, container))
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
            if container["image"] not in self.local_images:
                raise Fail(f"container {container['name']} uses {container['image']}, which is not here")
            running = self.start_container(manifest, container, network, self.extra_env(pod, container))
            pod.containers.append(running)
            # kubelet starts the next container only once a postStart hook has returned.
            hook = container.get("lifecycle", {}).get("postStart", {}).get("exec")
            if hook is not None:
                proc = running.exec(hook["command"], timeout=120)
                if proc.returncode != 0:
                    raise Fail(f"postStart hook of {container['name']} exited {proc.returncode}: "
                               f"{running.logs()[-1500:]}")
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


def millicpu(text):
    text = str(text)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def quantity_bytes(text):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)
