//! What a NetworkAttachmentDefinition hands out, read from its CNI configuration as
//! the IPAM plugins themselves read it: whereabouts (v0.9), host-local and static.
//!
//! A pool is an inclusive span of addresses inside a network, less excluded CIDRs.
//! Each plugin's defaults are its own: whereabouts never hands out the network's
//! first and last address and ignores a `range_start`/`range_end` outside them;
//! host-local starts after the network address, ends before an IPv4 broadcast
//! address, and skips its gateway (the network's first host when none is given).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

/// One NAD's attachment: the interface it rides on and the addresses it hands out.
#[derive(Clone, Debug, PartialEq)]
pub struct Attachment {
    /// The plugin's `master` (ipvlan, macvlan): the node interface, so the Multus ENI.
    pub master: Option<String>,
    pub ipam: Ipam,
    pub pools: Vec<Pool>,
}

/// The IPAM plugins the guard reads; any other (dhcp, a plugin of the user's) is
/// named and left unchecked.
#[derive(Clone, Debug, PartialEq)]
pub enum Ipam {
    /// `overlap_guarded`: whereabouts' `enable_overlapping_ranges` (on unless set
    /// false), under which it keeps one cluster-wide record per address, so two of its
    /// ranges may overlap without handing one address out twice.
    Whereabouts {
        overlap_guarded: bool,
    },
    HostLocal,
    Static,
    Unchecked(String),
}

impl Ipam {
    pub fn name(&self) -> &str {
        match self {
            Ipam::Whereabouts { .. } => "whereabouts",
            Ipam::HostLocal => "host-local",
            Ipam::Static => "static",
            Ipam::Unchecked(name) => name,
        }
    }
}

/// Addresses `first..=last` inside `net`, less `exclude`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub net: IpNet,
    pub first: IpAddr,
    pub last: IpAddr,
    pub exclude: Vec<IpNet>,
}

impl Pool {
    /// Whether the pool may hand `ip` out.
    pub fn holds(&self, ip: IpAddr) -> bool {
        same_family(ip, self.first)
            && (num(self.first)..=num(self.last)).contains(&num(ip))
            && !self.exclude.iter().any(|e| e.contains(&ip))
    }

    /// The spans the pool hands out, as numbers, in order: `first..=last` cut by the
    /// exclusions.
    pub fn spans(&self) -> Vec<(u128, u128)> {
        let (first, last) = (num(self.first), num(self.last));
        let mut cuts: Vec<(u128, u128)> = (self.exclude.iter())
            .filter(|e| same_family(e.addr(), self.first))
            .map(|e| (num(e.network()), num(e.broadcast())))
            .collect();
        cuts.sort();
        let mut spans = Vec::new();
        let mut at = first;
        for (lo, hi) in cuts {
            if hi < at || lo > last {
                continue;
            }
            if lo > at {
                spans.push((at, lo - 1));
            }
            match hi.checked_add(1) {
                Some(next) => at = next,
                None => return spans,
            }
            if at > last {
                return spans;
            }
        }
        spans.push((at, last));
        spans
    }
}

/// Why a NAD's configuration cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReadError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("it names no IPAM plugin")]
    NoIpam,
    #[error("{plugin} {field} {value:?} is not {what}")]
    Field {
        plugin: &'static str,
        field: &'static str,
        value: String,
        what: &'static str,
    },
}

/// Reads a NAD's `spec.config`: one plugin, or a list (`plugins`) whose first plugin
/// with an `ipam` section is the attachment.
pub fn read(config: &str) -> Result<Attachment, ReadError> {
    let root: Value = serde_json::from_str(config).map_err(|e| ReadError::Json(e.to_string()))?;
    let plugin = match root.get("plugins").and_then(Value::as_array) {
        Some(list) => list.iter().find(|p| p.get("ipam").is_some()),
        None => Some(&root),
    };
    let plugin = plugin.ok_or(ReadError::NoIpam)?;
    let ipam = plugin.get("ipam").ok_or(ReadError::NoIpam)?;
    let master = plugin
        .get("master")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let kind = ipam
        .get("type")
        .and_then(Value::as_str)
        .ok_or(ReadError::NoIpam)?;
    let (ipam_kind, pools) = match kind {
        "whereabouts" => whereabouts(ipam)?,
        "host-local" => (Ipam::HostLocal, host_local(ipam)?),
        "static" => (Ipam::Static, static_addresses(ipam)?),
        other => (Ipam::Unchecked(other.to_owned()), Vec::new()),
    };
    Ok(Attachment {
        master,
        ipam: ipam_kind,
        pools,
    })
}

fn whereabouts(ipam: &Value) -> Result<(Ipam, Vec<Pool>), ReadError> {
    let guarded = (ipam.get("enable_overlapping_ranges"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    // The top-level range comes first, with the top-level exclusions, as whereabouts
    // merges it into `ipRanges`.
    let mut ranges: Vec<&Value> = Vec::new();
    if ipam
        .get("range")
        .and_then(Value::as_str)
        .is_some_and(|r| !r.is_empty())
    {
        ranges.push(ipam);
    }
    if let Some(list) = ipam.get("ipRanges").and_then(Value::as_array) {
        ranges.extend(list);
    }
    let pools = ranges
        .into_iter()
        .map(whereabouts_range)
        .collect::<Result<_, _>>()?;
    Ok((
        Ipam::Whereabouts {
            overlap_guarded: guarded,
        },
        pools,
    ))
}

fn whereabouts_range(range: &Value) -> Result<Pool, ReadError> {
    const PLUGIN: &str = "whereabouts";
    let text = str_field(range, "range").unwrap_or_default();
    let bad = |what| ReadError::Field {
        plugin: PLUGIN,
        field: "range",
        value: text.to_owned(),
        what,
    };
    // `FIRST-LAST/PREFIX` gives both ends, over any `range_start`/`range_end` (as
    // whereabouts overwrites them); `CIDR` takes them from those fields.
    let (net, start, end) = match text.split_once('-') {
        Some((first, last)) => {
            let last: IpNet = last.parse().map_err(|_| bad("FIRST-LAST/PREFIX"))?;
            let first: IpAddr = first.parse().map_err(|_| bad("FIRST-LAST/PREFIX"))?;
            if !last.trunc().contains(&first) {
                return Err(bad("a range whose first address is in its network"));
            }
            (last.trunc(), Some(first), Some(last.addr()))
        }
        None => {
            let net: IpNet = text.parse().map_err(|_| bad("a CIDR"))?;
            let start = ip_field(range, PLUGIN, "range_start")?;
            (net.trunc(), start, ip_field(range, PLUGIN, "range_end")?)
        }
    };
    let (usable_first, usable_last) =
        usable(net).ok_or_else(|| bad("a network with usable addresses"))?;
    let within = |ip: IpAddr, lo: IpAddr, hi: IpAddr| num(ip) >= num(lo) && num(ip) <= num(hi);
    // Ends outside the usable span are ignored, as whereabouts ignores them.
    let first = start
        .filter(|s| within(*s, usable_first, usable_last))
        .unwrap_or(usable_first);
    let last = end
        .filter(|e| within(*e, first, usable_last))
        .unwrap_or(usable_last);
    let exclude = (range.get("exclude").and_then(Value::as_array))
        .into_iter()
        .flatten()
        .map(|e| {
            let text = e.as_str().unwrap_or_default();
            text.parse::<IpNet>().map_err(|_| ReadError::Field {
                plugin: PLUGIN,
                field: "exclude",
                value: text.to_owned(),
                what: "a CIDR",
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Pool {
        net,
        first,
        last,
        exclude,
    })
}

fn host_local(ipam: &Value) -> Result<Vec<Pool>, ReadError> {
    // The old single range sits in `ipam` itself and comes first.
    let mut ranges: Vec<&Value> = Vec::new();
    if ipam.get("subnet").is_some() {
        ranges.push(ipam);
    }
    for set in ipam
        .get("ranges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        ranges.extend(set.as_array().into_iter().flatten());
    }
    ranges.into_iter().map(host_local_range).collect()
}

fn host_local_range(range: &Value) -> Result<Pool, ReadError> {
    const PLUGIN: &str = "host-local";
    let text = str_field(range, "subnet").unwrap_or_default();
    let net: IpNet = text.parse().map_err(|_| ReadError::Field {
        plugin: PLUGIN,
        field: "subnet",
        value: text.to_owned(),
        what: "a CIDR",
    })?;
    let net = net.trunc();
    let first_host = step(net.network(), 1);
    let mut last = net.broadcast();
    if net.addr().is_ipv4() {
        last = step(last, -1);
    }
    let first = ip_field(range, PLUGIN, "rangeStart")?.unwrap_or(first_host);
    let last = ip_field(range, PLUGIN, "rangeEnd")?.unwrap_or(last);
    let gateway = ip_field(range, PLUGIN, "gateway")?.unwrap_or(first_host);
    Ok(Pool {
        net,
        first,
        last,
        exclude: vec![IpNet::from(gateway)],
    })
}

fn static_addresses(ipam: &Value) -> Result<Vec<Pool>, ReadError> {
    (ipam
        .get("addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten())
    .map(|a| {
        let text = str_field(a, "address").unwrap_or_default();
        let net: IpNet = text.parse().map_err(|_| ReadError::Field {
            plugin: "static",
            field: "address",
            value: text.to_owned(),
            what: "an ADDRESS/PREFIX",
        })?;
        Ok(Pool {
            net: net.trunc(),
            first: net.addr(),
            last: net.addr(),
            exclude: Vec::new(),
        })
    })
    .collect()
}

fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

fn ip_field(
    v: &Value,
    plugin: &'static str,
    field: &'static str,
) -> Result<Option<IpAddr>, ReadError> {
    match str_field(v, field).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| ReadError::Field {
            plugin,
            field,
            value: text.to_owned(),
            what: "an IP address",
        }),
    }
}

/// The network's addresses less its first and last, as whereabouts counts them.
fn usable(net: IpNet) -> Option<(IpAddr, IpAddr)> {
    let width = if net.addr().is_ipv4() { 32 } else { 128 };
    (net.prefix_len() + 2 <= width).then(|| (step(net.network(), 1), step(net.broadcast(), -1)))
}

/// An address as a number, IPv4 in the low 32 bits.
pub fn num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// `ip` moved by `by` addresses, saturating at the family's ends.
pub fn step(ip: IpAddr, by: i8) -> IpAddr {
    from_num(ip, num(ip).saturating_add_signed(by.into()))
}

/// The number `n` as an address of `like`'s family, saturating at its last address.
pub fn from_num(like: IpAddr, n: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into()),
        IpAddr::V6(_) => IpAddr::V6(n.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_whereabouts_cidr_skips_the_networks_ends() {
        let a = read(
            r#"{"cniVersion":"0.3.1","type":"ipvlan","master":"eth1","mode":"l2",
                "ipam":{"type":"whereabouts","range":"10.0.4.0/24","exclude":["10.0.4.0/28"]}}"#,
        )
        .unwrap();
        assert_eq!(a.master.as_deref(), Some("eth1"));
        assert_eq!(
            a.ipam,
            Ipam::Whereabouts {
                overlap_guarded: true
            }
        );
        let pool = &a.pools[0];
        assert_eq!((pool.first, pool.last), (ip("10.0.4.1"), ip("10.0.4.254")));
        assert!(!pool.holds(ip("10.0.4.15")), "excluded");
        assert!(pool.holds(ip("10.0.4.16")));
        assert!(!pool.holds(ip("10.0.4.255")));
        assert_eq!(
            pool.spans(),
            [(
                u32::from_be_bytes([10, 0, 4, 16]) as u128,
                u32::from_be_bytes([10, 0, 4, 254]) as u128
            )]
        );
    }

    #[test]
    fn whereabouts_ranges_dashes_ends_and_ip_ranges_read_as_whereabouts_reads_them() {
        let a = read(
            r#"{"type":"macvlan","master":"eth2","ipam":{"type":"whereabouts",
                "range":"10.0.4.50-10.0.4.60/24","range_start":"10.0.4.2","enable_overlapping_ranges":false,
                "ipRanges":[{"range":"2600:1f14::/64","range_start":"2600:1f14::10","range_end":"2600:1f14::20"},
                            {"range":"10.0.5.0/24","range_start":"10.0.6.1"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            a.ipam,
            Ipam::Whereabouts {
                overlap_guarded: false
            }
        );
        let ends: Vec<_> = a.pools.iter().map(|p| (p.first, p.last)).collect();
        assert_eq!(
            ends,
            [
                (ip("10.0.4.50"), ip("10.0.4.60")),
                (ip("2600:1f14::10"), ip("2600:1f14::20")),
                // A start outside the network is ignored, as whereabouts ignores it.
                (ip("10.0.5.1"), ip("10.0.5.254")),
            ]
        );
    }

    #[test]
    fn host_local_defaults_and_its_gateway() {
        let a = read(
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ipvlan","master":"eth1",
                "ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.4.0/24","rangeStart":"10.0.4.100"}],
                                                      [{"subnet":"2600:1f14::/64"}]]}},
                {"type":"tuning"}]}"#,
        )
        .unwrap();
        assert_eq!(a.ipam, Ipam::HostLocal);
        assert_eq!(
            (a.pools[0].first, a.pools[0].last),
            (ip("10.0.4.100"), ip("10.0.4.254"))
        );
        let v6 = &a.pools[1];
        assert_eq!(
            (v6.first, v6.last),
            (ip("2600:1f14::1"), ip("2600:1f14::ffff:ffff:ffff:ffff"))
        );
        assert!(!v6.holds(ip("2600:1f14::1")), "the default gateway");
        let old = read(r#"{"type":"ipvlan","ipam":{"type":"host-local","subnet":"10.0.4.0/28","gateway":"10.0.4.14"}}"#).unwrap();
        assert_eq!(
            (old.pools[0].first, old.pools[0].last),
            (ip("10.0.4.1"), ip("10.0.4.14"))
        );
        assert!(!old.pools[0].holds(ip("10.0.4.14")));
    }

    #[test]
    fn static_addresses_and_other_plugins() {
        let a = read(r#"{"type":"ipvlan","master":"eth1","ipam":{"type":"static","addresses":[{"address":"10.0.4.7/24"}]}}"#).unwrap();
        assert_eq!(
            (a.pools[0].first, a.pools[0].last),
            (ip("10.0.4.7"), ip("10.0.4.7"))
        );
        assert_eq!(a.pools[0].net, "10.0.4.0/24".parse().unwrap());
        let d = read(r#"{"type":"macvlan","ipam":{"type":"dhcp"}}"#).unwrap();
        assert_eq!((d.ipam, d.pools.len()), (Ipam::Unchecked("dhcp".into()), 0));
    }

    #[test]
    fn unreadable_configs_name_what_is_wrong() {
        assert!(matches!(read("{"), Err(ReadError::Json(_))));
        assert_eq!(read(r#"{"type":"ipvlan"}"#), Err(ReadError::NoIpam));
        let e = read(r#"{"type":"ipvlan","ipam":{"type":"whereabouts","range":"10.0.4/24"}}"#)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"whereabouts range "10.0.4/24" is not a CIDR"#
        );
        let e = read(r#"{"type":"ipvlan","ipam":{"type":"host-local","subnet":"10.0.4.0/24","rangeEnd":"x"}}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"host-local rangeEnd "x" is not an IP address"#
        );
    }
}
