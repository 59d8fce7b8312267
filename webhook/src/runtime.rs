//! The tokio runtime, sized from the container's CPU limit.
//!
//! A worker thread per node CPU is wrong in a container with a CPU limit: the threads
//! share the limit's quota, spend it early in each CFS period and are throttled for
//! the rest of it, and a review that arrives then waits. The limit's whole CPUs,
//! rounded down (at least one), never exceed the quota. That is what
//! `std::thread::available_parallelism` returns on Linux: the CPUs the process may run
//! on, capped by its cgroup's quota (v2 `cpu.max`, or v1 `cpu.cfs_quota_us` over
//! `cpu.cfs_period_us`) divided by the period and rounded down, as Go's automaxprocs
//! does. Rounding up would give a 1.5-CPU limit two threads that can be throttled for
//! a quarter of every period. `--worker-threads` overrides it.
//!
//! One worker thread is a current-thread runtime: the connections' tasks then run on
//! the thread that polls the sockets, where a multi-thread runtime of one worker hands
//! each wake-up through its shared queues and parks through its idle-worker
//! bookkeeping.

use tracing::info;

/// Worker threads: `requested` when not 0, else the CPUs the process may use
/// (`available`), never fewer than 1.
pub fn worker_threads(requested: usize, available: usize) -> usize {
    if requested > 0 {
        requested
    } else {
        available.max(1)
    }
}

/// The runtime `run` is driven by, with `requested` worker threads (0: from the CPU
/// limit). Logging must be installed first: the choice is logged.
pub fn build(requested: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = worker_threads(requested, available);
    if requested > 0 {
        info!(threads, "worker threads as --worker-threads asks");
    } else {
        info!(
            threads,
            "worker threads: the whole CPUs of the CPU limit, or every CPU this process may run on"
        );
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
    fn the_flag_wins_and_there_is_always_one() {
        assert_eq!(worker_threads(3, 8), 3);
        assert_eq!(worker_threads(0, 2), 2);
        assert_eq!(worker_threads(0, 0), 1);
    }
}
