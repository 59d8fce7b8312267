//! The floating addresses on the pod's interfaces, over rtnetlink: which interface each
//! goes on, adding them while this replica holds their Lease, and removing them the
//! moment it does not.
//!
//! An address goes on the managed interface that has an address in the same subnet
//! (whereabouts gave it one from the NAD's range). An address in no interface's subnet
//! is routed to the holder by route tables, and goes on the one managed interface
//! there is; with several, nothing says which ENI the routes should name, so it is
//! refused. Each is added as a `/32` or `/128` (an IPv6 one without duplicate address
//! detection, usable at once): the subnet's route is the interface's own address's.
//! Each is added with a lifetime the holder refreshes on every renewal of its Lease.

use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, CacheInfo,
};

use crate::discover::{Link, address_of, usable_address};

/// Where one floating address goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub ip: IpAddr,
    pub iface: String,
    index: u32,
}

/// A managed interface as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    /// Its addresses with their prefix lengths, floating ones excluded.
    pub nets: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("netlink {what} failed: {source}")]
    Netlink {
        what: &'static str,
        source: rtnetlink::Error,
    },
    #[error(
        "cannot add {ip} to {iface}: the kernel refused ({source}); the IP manager needs \
         CAP_NET_ADMIN, which the webhook grants a pod with ipmgmt.aws/floating-ips: check \
         that nothing (a policy engine, a Pod Security admission level below privileged) \
         removed it from the aws-ip-mgmt container"
    )]
    Add {
        ip: IpAddr,
        iface: String,
        source: rtnetlink::Error,
    },
    #[error("{0}")]
    Place(String),
}

/// Where each floating address goes, or why one has nowhere to go. Pure.
pub fn place(ips: &[IpAddr], ifaces: &[Iface], routed: bool) -> Result<Vec<Placed>, String> {
    let describe = || {
        let each: Vec<String> = (ifaces.iter())
            .map(|i| {
                let nets: Vec<String> = i.nets.iter().map(|n| n.trunc().to_string()).collect();
                format!("{} ({})", i.name, nets.join(", "))
            })
            .collect();
        if each.is_empty() {
            "none".to_owned()
        } else {
            each.join(", ")
        }
    };
    let mut placed = Vec::new();
    for &ip in ips {
        let home: Vec<&Iface> = (ifaces.iter())
            .filter(|i| i.nets.iter().any(|n| n.contains(&ip) && n.addr() != ip))
            .collect();
        let iface = match home.as_slice() {
            [one] => *one,
            [] => match ifaces {
                [only] if routed => only,
                _ if routed => {
                    return Err(format!(
                        "floating address {ip} is in the subnet of no secondary interface of \
                         the pod, and there is not exactly one to route it to (interfaces: {}): \
                         name the interface with ipmgmt.aws/interfaces",
                        describe()
                    ));
                }
                // Without routes, an address reaches this pod only as an ENI's, in the
                // subnet of the interface that rides on that ENI.
                _ => {
                    return Err(format!(
                        "floating address {ip} is in the subnet of no secondary interface of \
                         the pod (interfaces: {}), so no ENI of the node can hold it: check \
                         ipmgmt.aws/floating-ips against the pod's networks, or route it \
                         with ipmgmt.aws/route-tables",
                        describe()
                    ));
                }
            },
            [first, ..] => first,
        };
        placed.push(Placed {
            ip,
            iface: iface.name.clone(),
            index: iface.index,
        });
    }
    Ok(placed)
}

/// The pod's managed interfaces, over rtnetlink.
pub struct Interfaces {
    handle: rtnetlink::Handle,
    primary: String,
    only: Vec<String>,
}

impl Interfaces {
    /// The interfaces ipmgr manages: every one but `primary` and loopback, or `only`.
    pub fn new(primary: &str, only: &[String]) -> Result<Self, IfaceError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Interfaces {
            handle,
            primary: primary.to_owned(),
            only: only.to_vec(),
        })
    }

    /// The managed interfaces and their addresses (those discovery would assign),
    /// `floating` left out of them.
    async fn managed(&self, floating: &[IpAddr]) -> Result<Vec<Iface>, IfaceError> {
        let mut ifaces = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links.next().await {
            let msg = msg.map_err(|source| IfaceError::Netlink {
                what: "link dump",
                source,
            })?;
            if let Some(link) = Link::from_message(&msg)
                && link.managed(&self.primary, &self.only)
            {
                ifaces.push(Iface {
                    name: link.name,
                    index: msg.header.index,
                    nets: Vec::new(),
                });
            }
        }
        for msg in self.addresses().await? {
            let Some(ip) = usable_address(&msg).filter(|ip| !floating.contains(ip)) else {
                continue;
            };
            let Some(iface) = ifaces.iter_mut().find(|i| i.index == msg.header.index) else {
                continue;
            };
            if let Ok(net) = IpNet::new(ip, msg.header.prefix_len) {
                iface.nets.push(net);
            }
        }
        Ok(ifaces)
    }

    async fn addresses(&self) -> Result<Vec<AddressMessage>, IfaceError> {
        let mut out = Vec::new();
        let mut dump = self.handle.address().get().execute();
        while let Some(msg) = dump.next().await {
            out.push(msg.map_err(|source| IfaceError::Netlink {
                what: "address dump",
                source,
            })?);
        }
        Ok(out)
    }

    /// Where each floating address goes now; `routed` when route tables reach them.
    pub async fn place(&self, ips: &[IpAddr], routed: bool) -> Result<Vec<Placed>, IfaceError> {
        let ifaces = self.managed(ips).await?;
        place(ips, &ifaces, routed).map_err(IfaceError::Place)
    }

    /// Puts each address where it was placed, or refreshes it there, valid for
    /// `lifetime` whole seconds: the kernel takes it off by itself once that passes
    /// without another refresh, so a holder that dies (SIGKILL, OOM) cannot leave it
    /// answering beside its successor.
    pub async fn hold(&self, placed: &[Placed], lifetime: u32) -> Result<(), IfaceError> {
        for p in placed {
            let prefix = if p.ip.is_ipv4() { 32 } else { 128 };
            let mut add = self.handle.address().add(p.index, p.ip, prefix).replace();
            let msg = add.message_mut();
            if p.ip.is_ipv6() {
                msg.header.flags |= AddressHeaderFlags::Nodad;
            }
            let mut cache = CacheInfo::default();
            cache.ifa_preferred = lifetime;
            cache.ifa_valid = lifetime;
            msg.attributes.push(AddressAttribute::CacheInfo(cache));
            add.execute().await.map_err(|source| IfaceError::Add {
                ip: p.ip,
                iface: p.iface.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes `ips` from every interface they are on; returns how many it removed.
    pub async fn remove(&self, ips: &[IpAddr]) -> Result<usize, IfaceError> {
        let mut removed = 0;
        for msg in self.addresses().await? {
            if !address_of(&msg).is_some_and(|ip| ips.contains(&ip)) {
                continue;
            }
            match self.handle.address().del(msg).execute().await {
                Ok(()) => removed += 1,
                // Gone meanwhile (EADDRNOTAVAIL): what was asked for holds.
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.to_io().kind() == std::io::ErrorKind::AddrNotAvailable => {}
                Err(source) => {
                    return Err(IfaceError::Netlink {
                        what: "address delete",
                        source,
                    });
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, index: u32, nets: &[&str]) -> Iface {
        Iface {
            name: name.into(),
            index,
            nets: nets.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_address_goes_on_the_interface_of_its_subnet() {
        let ifaces = [
            iface("net1", 3, &["10.0.4.66/24", "2001:db8:0:5::66/64"]),
            iface("net2", 4, &["10.0.6.66/24"]),
        ];
        let placed = place(&[ip("10.0.6.100"), ip("2001:db8:0:5::100")], &ifaces, false).unwrap();
        assert_eq!(
            placed
                .iter()
                .map(|p| (p.iface.as_str(), p.index))
                .collect::<Vec<_>>(),
            [("net2", 4), ("net1", 3)]
        );
    }

    #[test]
    fn an_address_in_no_subnet_goes_on_the_one_interface_or_is_refused() {
        // Routed across zones: outside every subnet, on the only interface.
        let one = [iface("net1", 3, &["10.0.4.66/24"])];
        assert_eq!(
            place(&[ip("192.168.100.1")], &one, true).unwrap()[0].iface,
            "net1"
        );
        // Not routed: only an ENI can hold it, and none of the pod's subnets has it.
        let err = place(&[ip("10.0.9.100")], &one, false).unwrap_err();
        assert!(
            err.contains("so no ENI of the node can hold it") && err.contains("net1 (10.0.4.0/24)"),
            "{err}"
        );
        let two = [
            iface("net1", 3, &["10.0.4.66/24"]),
            iface("net2", 4, &["10.0.6.66/24"]),
        ];
        let err = place(&[ip("192.168.100.1")], &two, true).unwrap_err();
        assert!(
            err.contains("192.168.100.1 is in the subnet of no secondary interface")
                && err.contains("net1 (10.0.4.0/24), net2 (10.0.6.0/24)"),
            "{err}"
        );
        let err = place(&[ip("10.0.4.100")], &[], false).unwrap_err();
        assert!(err.contains("(interfaces: none)"), "{err}");
    }
}
