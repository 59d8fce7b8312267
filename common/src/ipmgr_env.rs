//! The environment variables ipmgr reads its settings from. ipmgr's flags name these
//! constants as their environment twins; the webhook sets some of them per pod and
//! refuses a `--ipmgr-env` name that is not among them (a misspelt name would
//! otherwise be ignored by ipmgr without a word).

macro_rules! settings {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        $($(#[$doc])* pub const $name: &str = concat!("IPMGR_", stringify!($name));)*
        /// Every variable ipmgr reads, in the order above.
        pub const ALL: &[&str] = &[$($name),*];
    };
}

settings! {
    /// The pod's own interface, whose addresses are left alone.
    PRIMARY_INTERFACE,
    /// The interfaces to manage, comma-separated.
    INTERFACES,
    /// The lowest ENI device index ipmgr assigns to.
    MIN_DEVICE_INDEX,
    /// Whether an ENI must carry the `no_manage` tag.
    REQUIRE_NO_MANAGE_TAG,
    /// The tag an ENI must carry, `key` or `key=value`.
    CLUSTER_TAG,
    /// Whether an address may be taken from another ENI.
    ALLOW_REASSIGNMENT,
    /// How long a pass may take.
    DEADLINE_SECONDS,
    /// How long to wait for the interfaces' addresses.
    ADDRESS_WAIT_SECONDS,
    /// How long to wait for EC2 to confirm.
    CONFIRM_SECONDS,
    /// How often a sidecar checks again with nothing changed.
    RESYNC_SECONDS,
    /// How long a sidecar gathers address events into one pass.
    COALESCE_MS,
    /// A classic sidecar's wait after SIGTERM before it releases.
    RELEASE_DELAY_SECONDS,
    /// How long a sidecar's release may take.
    RELEASE_TIMEOUT_SECONDS,
    /// Where a sidecar serves its metrics.
    METRICS_LISTEN,
    /// The file that tells the startup probe every address is assigned.
    READY_FILE,
    /// Where a failure's one line goes for `kubectl describe`.
    TERMINATION_LOG,
    /// EC2 calls: attempts per call.
    RETRY_MAX_ATTEMPTS,
    /// EC2 calls: the first retry's backoff.
    RETRY_INITIAL_BACKOFF_MS,
    /// A tracing filter.
    LOG_LEVEL,
    /// `text` or `json`.
    LOG_FORMAT,
    /// The floating addresses this pod's replicas take turns holding, comma-separated.
    FLOATING_IPS,
    /// The Elastic IP that follows them: `eipalloc-…` or `tag:KEY=VALUE`.
    ELASTIC_IP,
    /// The route tables whose route to each floating address points at the holder.
    ROUTE_TABLES,
    /// How long a floating addresses' Lease lasts unrenewed (whole seconds, as a
    /// Lease records it).
    LEASE_DURATION_SECONDS,
    /// How long the holder may fail to renew before it lets the addresses go.
    LEASE_RENEW_DEADLINE_MS,
    /// How often the holder renews and the others look.
    LEASE_RETRY_MS,
}

/// ipmgr's release timeout when `RELEASE_TIMEOUT_SECONDS` is unset; the webhook
/// computes a classic sidecar's release delay from the timeout it sets.
pub const DEFAULT_RELEASE_TIMEOUT_SECONDS: u32 = 5;

/// Whether ipmgr reads `name`.
pub fn is_known(name: &str) -> bool {
    ALL.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_distinct() {
        assert_eq!(INTERFACES, "IPMGR_INTERFACES");
        let mut seen = std::collections::BTreeSet::new();
        for name in ALL {
            assert!(name.starts_with("IPMGR_"), "{name}");
            assert!(seen.insert(name), "{name} twice");
        }
        assert!(is_known(RELEASE_TIMEOUT_SECONDS) && !is_known("IPMGR_RELEASE_TIMEOUT"));
    }
}
