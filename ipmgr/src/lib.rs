//! ipmgr: makes the VPC route a pod's Multus secondary-interface addresses by making
//! each a secondary private IP of the node ENI its interface rides on.
//!
//! `eni` and `plan` are pure; `discover` (netlink) and `ec2` (aws-sdk-ec2) are the
//! edges; `manager` runs a pass; `run` is init and sidecar mode; `floating` holds a
//! workload's floating addresses while its replica holds their Lease.

pub mod aws;
pub mod config;
pub mod discover;
pub mod ec2;
pub mod eni;
pub mod floating;
pub mod identity;
pub mod manager;
pub mod metrics;
pub mod plan;
pub mod run;
