//! The tokio runtime, sized from the container's CPU limit.
//!
//! A worker thread per node CPU is wrong in a container with a CPU limit: the threads
//! share the limit's quota, spend it early in each CFS period and are throttled for
//! the rest of it, and a review that arrives then waits. The limit's whole CPUs,
//! rounded down (at least one), never exceed the quota; Go's automaxprocs and Rust's
//! `available_parallelism` round the same way. Rounding up would give a 1.5-CPU limit
//! two threads that can be throttled for a quarter of every period.
//!
//! One worker thread is a current-thread runtime: the connections' tasks then run on
//! the thread that polls the sockets, where a multi-thread runtime of one worker hands
//! each wake-up through its shared queues and parks through its idle-worker
//! bookkeeping.
//!
//! The limit is read from the cgroup files (v2 `cpu.max`, else v1
//! `cpu.cfs_quota_us` / `cpu.cfs_period_us`) so that the log can say where the number
//! came from; `--worker-threads` overrides it.

use std::path::{Path, PathBuf};

use tracing::info;

/// A CPU limit: `quota` microseconds of CPU time in every `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuLimit {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuLimit {
    /// Whole CPUs of the limit, rounded down, at least 1.
    pub fn whole_cpus(&self) -> usize {
        usize::try_from(self.quota_us / self.period_us.max(1))
            .unwrap_or(usize::MAX)
            .max(1)
    }
}

impl std::fmt::Display for CpuLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let millicpus = self.quota_us.saturating_mul(1000) / self.period_us.max(1);
        write!(f, "{millicpus}m")
    }
}

/// cgroup v2 `cpu.max`: `$MAX $PERIOD`, where `$MAX` is `max` for no limit.
pub fn parse_cpu_max(text: &str) -> Option<CpuLimit> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period = fields.next().map_or(Some(100_000), |p| p.parse().ok())?;
    limit(quota.parse().ok()?, period)
}

/// cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`; a quota of -1 is no limit.
pub fn parse_cfs(quota: &str, period: &str) -> Option<CpuLimit> {
    let quota: i64 = quota.trim().parse().ok()?;
    limit(u64::try_from(quota).ok()?, period.trim().parse().ok()?)
}

fn limit(quota_us: u64, period_us: u64) -> Option<CpuLimit> {
    (quota_us > 0 && period_us > 0).then_some(CpuLimit {
        quota_us,
        period_us,
    })
}

/// The process's cgroup paths from `/proc/self/cgroup`: the v2 one (`0::PATH`) and the
/// v1 one of the `cpu` controller.
pub fn own_cgroups(proc_self_cgroup: &str) -> (Option<&str>, Option<&str>) {
    let (mut v2, mut v1_cpu) = (None, None);
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1_cpu = Some(path);
        }
    }
    (v2, v1_cpu)
}

/// Where the limit was found, for the start-up log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub limit: CpuLimit,
    pub file: PathBuf,
}

/// The CPU limit of this process's cgroup, if it has one. In a container the cgroup is
/// the root of its own mount (cgroup namespaces); outside one, the path from
/// `/proc/self/cgroup` under the mount.
pub fn cpu_limit(root: &Path) -> Option<Found> {
    let own = std::fs::read_to_string(root.join("proc/self/cgroup")).unwrap_or_default();
    let (v2, v1) = own_cgroups(&own);
    let fs = root.join("sys/fs/cgroup");
    let dirs = |mount: PathBuf, path: Option<&str>| {
        let mut dirs = Vec::new();
        if let Some(path) = path
            .map(|p| p.trim_start_matches('/'))
            .filter(|p| !p.is_empty())
        {
            dirs.push(mount.join(path));
        }
        dirs.push(mount);
        dirs
    };
    for dir in dirs(fs.clone(), v2) {
        let file = dir.join("cpu.max");
        if let Ok(text) = std::fs::read_to_string(&file) {
            return parse_cpu_max(&text).map(|limit| Found { limit, file });
        }
    }
    for mount in ["cpu", "cpu,cpuacct"] {
        for dir in dirs(fs.join(mount), v1) {
            let file = dir.join("cpu.cfs_quota_us");
            if let (Ok(quota), Ok(period)) = (
                std::fs::read_to_string(&file),
                std::fs::read_to_string(dir.join("cpu.cfs_period_us")),
            ) {
                return parse_cfs(&quota, &period).map(|limit| Found { limit, file });
            }
        }
    }
    None
}

/// Worker threads: `requested` when not 0, else the limit's whole CPUs; never more than
/// the CPUs the process may run on (`available`), never fewer than 1.
pub fn worker_threads(requested: usize, limit: Option<CpuLimit>, available: usize) -> usize {
    let available = available.max(1);
    if requested > 0 {
        return requested;
    }
    limit.map_or(available, |l| l.whole_cpus().min(available))
}

/// The runtime `run` is driven by, with `requested` worker threads (0: from the CPU
/// limit). Logging must be installed first: the choice is logged.
pub fn build(requested: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let found = cpu_limit(Path::new("/"));
    let threads = worker_threads(requested, found.as_ref().map(|f| f.limit), available);
    match (&found, requested) {
        (_, 1..) => info!(threads, "worker threads as --worker-threads asks"),
        (Some(f), _) => info!(
            threads,
            cpu_limit = %f.limit,
            file = %f.file.display(),
            "worker threads from the CPU limit"
        ),
        (None, _) => info!(
            threads,
            "worker threads: no CPU limit, one per available CPU"
        ),
    }
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_is_quota_and_period_or_max() {
        assert_eq!(
            parse_cpu_max("150000 100000\n"),
            Some(CpuLimit {
                quota_us: 150_000,
                period_us: 100_000
            })
        );
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("max\n"), None);
        // The period is optional when written; the kernel always prints it.
        assert_eq!(parse_cpu_max("50000").map(|l| l.period_us), Some(100_000));
        for bad in ["", "0 100000", "100000 0", "ten 100000", "100000 x"] {
            assert_eq!(parse_cpu_max(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cfs_quota_of_minus_one_is_no_limit() {
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(
            parse_cfs("250000\n", "100000\n"),
            Some(CpuLimit {
                quota_us: 250_000,
                period_us: 100_000
            })
        );
        assert_eq!(parse_cfs("50000", "0"), None);
        assert_eq!(parse_cfs("", "100000"), None);
    }

    #[test]
    fn threads_are_whole_cpus_of_the_limit_within_what_is_available() {
        let cpus = |quota_us| {
            Some(CpuLimit {
                quota_us,
                period_us: 100_000,
            })
        };
        assert_eq!(worker_threads(0, None, 8), 8);
        assert_eq!(worker_threads(0, cpus(50_000), 8), 1, "500m");
        assert_eq!(worker_threads(0, cpus(100_000), 8), 1, "1");
        assert_eq!(
            worker_threads(0, cpus(150_000), 8),
            1,
            "1500m: never above the quota"
        );
        assert_eq!(worker_threads(0, cpus(200_000), 8), 2, "2");
        assert_eq!(worker_threads(0, cpus(1_600_000), 8), 8, "16 on 8 CPUs");
        assert_eq!(worker_threads(0, None, 0), 1);
        assert_eq!(worker_threads(3, cpus(100_000), 8), 3, "the flag wins");
        assert_eq!(
            CpuLimit {
                quota_us: 150_000,
                period_us: 100_000
            }
            .to_string(),
            "1500m"
        );
    }

    #[test]
    fn own_cgroups_of_v2_hybrid_and_v1() {
        assert_eq!(own_cgroups("0::/\n"), (Some("/"), None));
        let hybrid =
            "12:cpu,cpuacct:/kubepods/pod1/c1\n4:memory:/kubepods/pod1/c1\n0::/kubepods/pod1/c1\n";
        assert_eq!(
            own_cgroups(hybrid),
            (Some("/kubepods/pod1/c1"), Some("/kubepods/pod1/c1"))
        );
        assert_eq!(own_cgroups("2:cpuacct:/\n1:cpu:/a\n"), (None, Some("/a")));
        assert_eq!(own_cgroups("garbage\n"), (None, None));
    }

    /// A file tree laid out as /proc and /sys/fs/cgroup are.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    #[test]
    fn limit_of_a_container_on_cgroup_v2() {
        let root = tree(&[
            ("proc/self/cgroup", "0::/\n"),
            ("sys/fs/cgroup/cpu.max", "200000 100000\n"),
        ]);
        let found = cpu_limit(root.path()).unwrap();
        assert_eq!(found.limit.whole_cpus(), 2);
        assert!(found.file.ends_with("sys/fs/cgroup/cpu.max"));
    }

    #[test]
    fn limit_of_a_process_in_a_nested_cgroup_v2() {
        let root = tree(&[
            ("proc/self/cgroup", "0::/bench/webhook\n"),
            ("sys/fs/cgroup/bench/webhook/cpu.max", "100000 100000\n"),
        ]);
        assert_eq!(cpu_limit(root.path()).unwrap().limit.whole_cpus(), 1);
    }

    #[test]
    fn limit_on_cgroup_v1_when_v2_has_no_cpu_controller() {
        let root = tree(&[
            (
                "proc/self/cgroup",
                "3:cpu,cpuacct:/kubepods/c1\n0::/kubepods/c1\n",
            ),
            // The container's own cgroup, mounted as the root of its cpu hierarchy.
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "300000\n"),
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
        ]);
        let found = cpu_limit(root.path()).unwrap();
        assert_eq!(found.limit.whole_cpus(), 3);
        assert!(found.file.ends_with("cpu,cpuacct/cpu.cfs_quota_us"));
    }

    #[test]
    fn no_limit_where_nothing_is_set_or_readable() {
        let root = tree(&[
            ("proc/self/cgroup", "1:cpu:/\n0::/\n"),
            ("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n"),
            ("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(cpu_limit(root.path()), None);
        assert_eq!(cpu_limit(tree(&[]).path()), None);
        let unlimited = tree(&[("sys/fs/cgroup/cpu.max", "max 100000\n")]);
        assert_eq!(cpu_limit(unlimited.path()), None);
    }
}
