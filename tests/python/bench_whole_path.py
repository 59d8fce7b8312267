"""Figures of the whole path for docs/benchmarks.md: the images' sizes, and the
floating-IP failover time (the address added in the network namespace of the pod on
node 2 → EC2 showing it on node 2's ENI) over repeated runs of the demo's scene, on
real nodes. Run by ./scripts/bench-whole-path (as root), with the release binaries by
default."""

import json
import statistics
import sys
import tempfile

import cluster
import whole_path
from cluster.real import RealCluster


def main(runs):
    with tempfile.TemporaryDirectory(prefix="ipmgmt-bench-") as workdir:
        c = RealCluster(workdir)
        try:
            c.apply_samples()
            for stage, tag in sorted(c.images.items()):
                size = int(json.loads(c.podman("image", "inspect", tag).stdout)[0]["Size"])
                print(f"image {stage:<9} {tag:<40} {size / 2**20:6.1f} MiB ({size} bytes)")
            failover, calls = [], []
            for _ in range(runs):
                scene = whole_path.scene_floating_ip(c)
                assert scene["after_b"] == {"vip": [], "own": []}, scene["after_b"]
                failover.append(scene["failover"] * 1000)
                calls.append(sum(scene["failover_calls"].values()))
        finally:
            c.close()
    values = sorted(failover)
    p90 = values[max(0, round(0.9 * len(values)) - 1)]
    print(f"VIP moved to node 2 -> on its ENI: median {statistics.median(values):.1f} ms, p90 {p90:.1f} ms, "
          f"max {values[-1]:.1f} ms (n={len(values)}, binaries: {cluster.PROFILE}, EC2 polled every 1 ms)")
    print(f"EC2 calls during a failover (both sidecars): median {statistics.median(calls):.0f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
