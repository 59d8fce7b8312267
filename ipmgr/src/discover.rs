//! The pod's secondary-interface addresses, read over rtnetlink in the pod's network
//! namespace, and a watch on address changes (no polling). Init and sidecar mode see
//! them through the `Addresses` trait, as they see EC2 through `Ec2`, so the loops can
//! run in-process against a fake.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr};

use crate::eni::Local;

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("netlink {what} dump failed: {source}")]
    Dump {
        what: &'static str,
        source: rtnetlink::Error,
    },
}

/// Where the pod's addresses come from.
pub trait Addresses {
    /// One look at the managed interfaces' addresses.
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, DiscoverError>> + Send;
    /// Waits for an address to be added or removed, then for the burst to settle:
    /// returns once `quiet` passes with no further event. `None` once the source is
    /// gone.
    fn changed(&mut self, quiet: Duration) -> impl Future<Output = Option<Changes>> + Send;
}

/// The pod's addresses over rtnetlink: a dump socket and an event socket.
pub struct Netlink {
    discovery: Discovery,
    watch: Watch,
}

impl Netlink {
    /// `primary` is the pod's own interface (eth0), whose address the VPC CNI manages.
    /// `only`, when not empty, names the interfaces to manage.
    pub fn new(primary: &str, only: &[String]) -> Result<Self, DiscoverError> {
        // The event socket first: a change between the two is then not missed.
        let watch = Watch::new()?;
        Ok(Netlink {
            discovery: Discovery::new(primary, only)?,
            watch,
        })
    }
}

impl Addresses for Netlink {
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, DiscoverError>> + Send {
        self.discovery.snapshot()
    }

    fn changed(&mut self, quiet: Duration) -> impl Future<Output = Option<Changes>> + Send {
        self.watch.changed(quiet)
    }
}

/// What one look at the interfaces found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Addresses on secondary interfaces, sorted.
    pub addresses: Vec<Local>,
    /// Every interface seen, for the "no secondary address" error.
    pub interfaces: Vec<String>,
}

#[derive(Clone, Debug)]
struct Discovery {
    handle: rtnetlink::Handle,
    primary: String,
    /// When not empty, the only interfaces managed.
    only: Vec<String>,
}

impl Discovery {
    fn new(primary: &str, only: &[String]) -> Result<Self, DiscoverError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Discovery {
            handle,
            primary: primary.to_owned(),
            only: only.to_vec(),
        })
    }

    fn manages(&self, link: &Link) -> bool {
        link.managed(&self.primary, &self.only)
    }

    async fn snapshot(&self) -> Result<Snapshot, DiscoverError> {
        let mut links = HashMap::new();
        let mut dump = self.handle.link().get().execute();
        while let Some(msg) = dump.next().await {
            let msg = msg.map_err(|source| DiscoverError::Dump {
                what: "link",
                source,
            })?;
            if let Some(link) = Link::from_message(&msg) {
                links.insert(msg.header.index, link);
            }
        }
        let mut addresses = Vec::new();
        let mut dump = self.handle.address().get().execute();
        while let Some(msg) = dump.next().await {
            let msg = msg.map_err(|source| DiscoverError::Dump {
                what: "address",
                source,
            })?;
            let Some(link) = links.get(&msg.header.index) else {
                continue;
            };
            if !self.manages(link) {
                continue;
            }
            if let Some(ip) = usable_address(&msg) {
                addresses.push(Local {
                    ip,
                    iface: link.name.clone(),
                    mac: link.mac.clone(),
                });
            }
        }
        addresses.sort();
        addresses.dedup();
        let mut interfaces: Vec<String> = links.into_values().map(|l| l.name).collect();
        interfaces.sort();
        Ok(Snapshot {
            addresses,
            interfaces,
        })
    }
}

/// An interface as a link dump describes it (also the floating addresses' holder's).
pub(crate) struct Link {
    pub(crate) name: String,
    mac: String,
    loopback: bool,
}

impl Link {
    /// Whether ipmgr manages this interface: not loopback, not the pod's own
    /// (`primary`), and among `only` when that names any.
    pub(crate) fn managed(&self, primary: &str, only: &[String]) -> bool {
        !self.loopback && self.name != primary && (only.is_empty() || only.contains(&self.name))
    }

    pub(crate) fn from_message(msg: &LinkMessage) -> Option<Link> {
        let mut name = None;
        let mut mac = String::new();
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(bytes) => mac = format_mac(bytes),
                _ => {}
            }
        }
        Some(Link {
            name: name?,
            mac,
            loopback: msg.header.flags.contains(LinkFlags::Loopback),
        })
    }
}

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The address a message carries if it is one the VPC should route: global scope, not
/// link-local, not failed duplicate detection. Tentative IPv6 addresses (still in DAD)
/// count: assigning them early is harmless, and they will settle on this interface.
pub(crate) fn usable_address(msg: &AddressMessage) -> Option<IpAddr> {
    if msg.header.scope != AddressScope::Universe {
        return None;
    }
    let failed = msg.header.flags.contains(AddressHeaderFlags::Dadfailed)
        || (msg.attributes.iter()).any(
            |a| matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Dadfailed)),
        );
    let ip = address_of(msg)?;
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    (!failed && !link_local && !ip.is_loopback() && !ip.is_multicast()).then_some(ip)
}

/// The interface's own address a message carries, whatever its kind: on
/// point-to-point links IFA_ADDRESS is the peer, and IFA_LOCAL is ours.
pub(crate) fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let mut ip = None;
    let mut local = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Address(a) => ip = Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            _ => {}
        }
    }
    local.or(ip)
}

/// Address events from the kernel.
struct Watch {
    events: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
}

impl Watch {
    fn new() -> Result<Self, DiscoverError> {
        let (mut conn, _handle, events) = rtnetlink::new_connection()?;
        let groups = SocketAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR);
        conn.socket_mut().socket_mut().bind(&groups)?;
        tokio::spawn(conn);
        Ok(Watch { events })
    }

    async fn changed(&mut self, quiet: Duration) -> Option<Changes> {
        let mut changes = Changes::default();
        loop {
            let (msg, _) = self.events.next().await?;
            if changes.take_in(&msg) {
                break;
            }
        }
        loop {
            match tokio::time::timeout(quiet, self.events.next()).await {
                Ok(Some((msg, _))) => {
                    changes.take_in(&msg);
                }
                Ok(None) => return None,
                Err(_) => return Some(changes),
            }
        }
    }
}

/// What a burst of address events said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub events: usize,
    /// Addresses the kernel announced as added: the pod has just taken them, even when
    /// a quick remove-and-add leaves the address set as it was.
    pub added: BTreeSet<IpAddr>,
}

impl Changes {
    /// Counts `msg` if it is an address event; whether it was.
    fn take_in(&mut self, msg: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
        match &msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => {
                self.added.extend(usable_address(a));
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(_)) => {}
            _ => return false,
        }
        self.events += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_lower_case_colon_separated() {
        assert_eq!(
            format_mac(&[0x0a, 0xBC, 0, 1, 2, 0xff]),
            "0a:bc:00:01:02:ff"
        );
    }
}
