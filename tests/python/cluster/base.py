"""What every part of the local cluster shares: settings, one-line failures, and
running a command."""

import ipaddress
import os
import shutil
import subprocess

from webhook_harness import ROOT

PODMAN_HOME = ROOT / ".podman"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IAM_POLICY = ROOT / "deploy" / "iam-policy.json"
REGION = "us-west-2"
# The cargo profile whose binaries go into the images: `debug` for the demo and the
# tests, `release` for the figures in docs/benchmarks.md.
PROFILE = os.environ.get("IPMGMT_PROFILE", "debug")
# The pod's IAM identity: on EKS the pod-identity webhook provides one; here the
# fake EC2 accepts any signed request.
POD_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAIPMGMTWHOLEPATH", "AWS_SECRET_ACCESS_KEY": "whole-path-secret"}
# The controller's own role, with deploy/reclaimer-iam-policy.json in the fake EC2.
CONTROLLER_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIARECLAIMERWHOLEPATH",
                          "AWS_SECRET_ACCESS_KEY": "whole-path-reclaimer-secret"}
RECLAIMER_IAM_POLICY = ROOT / "deploy" / "reclaimer-iam-policy.json"


class Fail(Exception):
    """A step of the path that did not work, said in one line."""


def need_root():
    if os.geteuid() != 0:
        raise Fail("the whole path needs root, for network namespaces and containers: run it as root")
    for tool in ("podman", "buildah", "runc", "ip", "objcopy", "nsenter", "iptables", "pkill"):
        if shutil.which(tool) is None:
            raise Fail(f"{tool} is missing: ./scripts/setup installs it (the demo and the tests run it)")


def run(args, check=True, env=None, timeout=120, input=None):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout,
                          input=input)
    if check and proc.returncode != 0:
        raise Fail(f"{' '.join(str(a) for a in args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def ec2_calls(log, since=0):
    """Calls by action, from the fake's log."""
    counts = {}
    for entry in log[since:]:
        counts[entry["action"]] = counts.get(entry["action"], 0) + 1
    return counts


def host(cidr):
    return str(ipaddress.ip_interface(cidr).ip)

