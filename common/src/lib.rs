//! What ipmgmt's three binaries agree on, written once: the annotations users put on
//! their pods (which the webhook reads, and the reclaimer too), the environment
//! variables the webhook sets on the manager container (which ipmgr reads), how a
//! metric's label values are written, and, behind features, the AWS SDK as ipmgr and
//! the reclaimer use it (`aws`), leader election on a Lease (`lease`), and the process
//! shell (`shell`: logging, signals, the metrics page). Each binary names these instead of typing them again, so a rename is
//! one edit, and `tests/tests/contract.rs` checks the webhook's and ipmgr's ends
//! against each other.

pub mod annotations;
#[cfg(feature = "aws")]
pub mod aws;
pub mod floating;
pub mod ipmgr_env;
#[cfg(feature = "lease")]
pub mod lease;
pub mod metrics;
#[cfg(feature = "shell")]
pub mod shell;
