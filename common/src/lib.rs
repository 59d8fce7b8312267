//! What ipmgmt's three binaries agree on, written once: the annotations users put on
//! their pods (which the webhook reads, and the reclaimer too), the environment
//! variables the webhook sets on the manager container (which ipmgr reads), and how a
//! metric's label values are written. Each
//! binary names these constants instead of typing the strings, so a rename is one edit,
//! and `tests/tests/contract.rs` checks the two ends against each other.

pub mod annotations;
#[cfg(feature = "aws")]
pub mod aws;
pub mod ipmgr_env;
pub mod metrics;
