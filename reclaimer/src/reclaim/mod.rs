//! The reclaim loop: gives back the Multus ENI addresses of pods that are gone.
//!
//! - `claims`: what a pod claims, and the evidence that IPAM handed an address out
//!   (its `network-status`);
//! - `whereabouts`: whereabouts' own allocation records, more evidence;
//! - `sweep`: pure: which of the addresses EC2 shows are stale, and since when;
//! - `run`: the `Sweeper` that releases them without ever leaving a claimed address
//!   unassigned, and its loop while this replica leads.

pub mod claims;
pub mod run;
pub mod sweep;
pub mod whereabouts;
