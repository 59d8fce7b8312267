//! An ENI as EC2 describes it, read from the SDK's answer.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{NO_MANAGE_TAG, Tag};

/// An ENI as EC2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    /// Lower case, `0a:1b:…`, as EC2 reports it.
    pub mac: String,
    pub device_index: i32,
    pub subnet_id: String,
    pub primary_ipv4: Option<Ipv4Addr>,
    /// Every private IPv4 address, the primary included.
    pub ipv4: Vec<Ipv4Addr>,
    /// The primary IPv6 address of an ENI that has one (EnablePrimaryIpv6): it stays
    /// with the ENI until it is detached, like the primary IPv4 address.
    pub primary_ipv6: Option<Ipv6Addr>,
    /// Every IPv6 address, the primary included.
    pub ipv6: Vec<Ipv6Addr>,
    /// Every tag, by key.
    pub tags: BTreeMap<String, String>,
    /// The instance it is attached to.
    pub instance_id: Option<String>,
}

impl Eni {
    pub fn holds(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.ipv4.contains(&v4),
            IpAddr::V6(v6) => self.ipv6.contains(&v6),
        }
    }

    /// One of the ENI's primary addresses, which EC2 never moves or unassigns.
    pub fn is_primary(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.primary_ipv4 == Some(v4),
            IpAddr::V6(v6) => self.primary_ipv6 == Some(v6),
        }
    }
}

impl Eni {
    pub fn has(&self, tag: &Tag) -> bool {
        self.tags.get(&tag.key) == Some(&tag.value)
    }

    /// Tagged `node.k8s.amazonaws.com/no_manage=true`: the VPC CNI leaves it alone.
    pub fn no_manage(&self) -> bool {
        self.tags.get(NO_MANAGE_TAG).map(String::as_str) == Some("true")
    }
}

/// An ENI as DescribeNetworkInterfaces shows it; `None` without an ID.
pub fn to_eni(ni: &aws_sdk_ec2::types::NetworkInterface) -> Option<Eni> {
    let ipv4 = ni
        .private_ip_addresses()
        .iter()
        .filter_map(|a| a.private_ip_address()?.parse().ok())
        .collect();
    let primary_ipv4 = ni
        .private_ip_addresses()
        .iter()
        .find(|a| a.primary() == Some(true))
        .and_then(|a| a.private_ip_address()?.parse().ok());
    Some(Eni {
        id: ni.network_interface_id()?.to_owned(),
        mac: ni.mac_address().unwrap_or_default().to_ascii_lowercase(),
        device_index: ni.attachment().and_then(|a| a.device_index()).unwrap_or(-1),
        subnet_id: ni.subnet_id().unwrap_or_default().to_owned(),
        tags: (ni.tag_set().iter())
            .filter_map(|t| {
                Some((
                    t.key()?.to_owned(),
                    t.value().unwrap_or_default().to_owned(),
                ))
            })
            .collect(),
        instance_id: (ni.attachment())
            .and_then(|a| a.instance_id())
            .map(str::to_owned),
        primary_ipv4,
        ipv4,
        primary_ipv6: ni
            .ipv6_addresses()
            .iter()
            .find(|a| a.is_primary_ipv6() == Some(true))
            .and_then(|a| a.ipv6_address()?.parse().ok()),
        ipv6: ni
            .ipv6_addresses()
            .iter()
            .filter_map(|a| a.ipv6_address()?.parse().ok())
            .collect(),
    })
}
