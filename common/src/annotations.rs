//! The pod annotations of ipmgmt's contract with its users, and Multus's that it reads.

/// `init` or `sidecar`: a pod with it gets the IP manager; the reclaimer treats its
/// addresses as ipmgmt's.
pub const MODE: &str = "ipmgmt.aws/mode";
/// The IAM role the manager runs as, instead of the chart's.
pub const ROLE_ARN: &str = "ipmgmt.aws/role-arn";
/// `"false"` keeps an address from being taken from another ENI.
pub const ALLOW_REASSIGNMENT: &str = "ipmgmt.aws/allow-reassignment";
/// The interfaces to manage, comma-separated.
pub const INTERFACES: &str = "ipmgmt.aws/interfaces";
/// The manager's requests and limits, instead of the chart's.
pub const RESOURCES: &str = "ipmgmt.aws/resources";
/// Set by the webhook on what it injected into: the container and the mode.
pub const INJECTED: &str = "ipmgmt.aws/injected";

/// The networks a pod asks Multus for.
pub const MULTUS_NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
/// What Multus reports it attached.
pub const MULTUS_NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
