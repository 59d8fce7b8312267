//! ipmgr at scale, against the fake EC2 with EC2's token buckets: many nodes in one
//! account and Region, pods as network namespaces running the real `ipmgr` as the
//! webhook injects it, and what that made EC2 do.
//!
//! Parts: `world` (the nodes, their ENIs, the pools, the final check), `pods` (pod
//! namespaces and starting their managers as kubelet would), `rollout` (pods starting
//! in numbers), `storm` (floating IPs moving at once), `soak` (one sidecar following
//! many changes), `old_script` (a model of the seed script's calls, to compare),
//! `report` (calls by action, throttling, the buckets' bound).

pub mod old_script;
pub mod pods;
pub mod report;
pub mod rollout;
pub mod soak;
pub mod storm;
pub mod world;
