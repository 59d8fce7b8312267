"""Both released images, built FROM scratch with buildah from the workspace's
binaries, and podman with a storage and configuration of the project's own."""

import json
import os
import pathlib
import shutil
import tempfile

from .base import DOCKERFILE, PODMAN_HOME, Fail, run


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
    return {k: v for k, v in stages.items() if k in ("webhook", "ipmgr", "reclaimer")}


# What gcr.io/distroless/cc-debian12:nonroot holds besides glibc and libgcc.
DISTROLESS_PASSWD = ("root:x:0:0:root:/root:/sbin/nologin\n"
                     "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
                     "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
DISTROLESS_GROUP = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
DISTROLESS_BASE = "gcr.io/distroless/cc-debian12:nonroot"


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


BUSYBOX = pathlib.Path("/bin/busybox")


def build_app_image(podman, tag):
    """The samples' app image (busybox), FROM scratch from Debian's static busybox: a
    shell, `ip` and `sleep`, so the sample apps run their own commands."""
    if not BUSYBOX.exists() or "not a dynamic executable" not in run(["ldd", BUSYBOX], check=False).stderr:
        raise Fail(f"{BUSYBOX} is missing or not static: ./scripts/setup installs busybox-static")
    with tempfile.TemporaryDirectory(prefix="ipmgmt-image-") as tmp:
        rootfs = pathlib.Path(tmp)
        (rootfs / "bin").mkdir()
        shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
        for applet in run([BUSYBOX, "--list"]).stdout.split():
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "etc").mkdir()
        (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "tmp").mkdir(mode=0o1777)
        (rootfs / "tmp").chmod(0o1777)
        container = podman.buildah("from", "--quiet", "scratch").stdout.strip()
        try:
            podman.buildah("copy", "--quiet", container, str(rootfs), "/")
            podman.buildah("config", "--cmd", '["sh"]', container)
            podman.buildah("commit", "--quiet", "--rm", container, tag)
        except Exception:
            podman.buildah("rm", container, check=False)
            raise


def build_pause_image(podman, tag):
    """The pod sandbox's image: the project's static pause program (scripts/cluster-tools
    builds it) FROM scratch, as registry.k8s.io/pause is built."""
    from cluster_tools import tool
    with tempfile.TemporaryDirectory(prefix="ipmgmt-image-") as tmp:
        rootfs = pathlib.Path(tmp)
        shutil.copy2(tool("pause"), rootfs / "pause")
        container = podman.buildah("from", "--quiet", "scratch").stdout.strip()
        try:
            podman.buildah("copy", "--quiet", container, str(rootfs), "/")
            podman.buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
            podman.buildah("commit", "--quiet", "--rm", container, tag)
        except Exception:
            podman.buildah("rm", container, check=False)
            raise


def oci_archive(podman, tag, path):
    """Image `tag` as an OCI archive, which containerd imports (`ctr images import`)."""
    path.unlink(missing_ok=True)
    podman("save", "--format", "oci-archive", "-o", str(path), tag, timeout=300)
    return path
