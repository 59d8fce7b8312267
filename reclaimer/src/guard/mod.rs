//! The address-range guard: whether the addresses a NetworkAttachmentDefinition hands
//! out can be routed to the Multus ENI it rides on without colliding with anything
//! else in the subnet. `ipam` reads a NAD's configuration as its IPAM plugin does;
//! `verdict` judges its pools against the subnet, pure, one line per finding.

pub mod ipam;
pub mod verdict;
