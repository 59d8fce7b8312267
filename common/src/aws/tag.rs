//! ENI tags as the binaries are configured with them.

use std::fmt;
use std::str::FromStr;

/// The tag that keeps the VPC CNI away from an ENI.
pub const NO_MANAGE_TAG: &str = "node.k8s.amazonaws.com/no_manage";

/// A tag as `KEY=VALUE`, split at the first `=`: the cluster's tag, which its Multus
/// ENIs carry (`IPMGR_CLUSTER_TAG`), so that a role shared by several clusters in an
/// account, or a pod that names the wrong network, never touches another's ENI.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl FromStr for Tag {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok(Tag {
                key: key.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!(
                "{s:?} is not a tag: write KEY=VALUE, e.g. kubernetes.io/cluster/prod=owned"
            )),
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}
