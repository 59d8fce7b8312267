//! The address pools of a NetworkAttachmentDefinition: what its IPAM may hand out.
//!
//! The reclaimer releases only addresses inside these pools. A floating IP that HA
//! software adds to an interface comes from no pool, so it is never a candidate.
//! Everything here errs on the side of a smaller pool: a config that cannot be read
//! yields no pool for that plugin, and so no releases, never a wider one.
//!
//! Read from the NAD's `spec.config`, a CNI config or conflist (`plugins`), whose
//! `ipam` is one of:
//! - whereabouts: `range` (`10.0.4.0/24`, or `10.0.4.64-10.0.4.95/24`), optional
//!   `range_start`, `range_end`, `exclude`; or the same per entry of `ipRanges`;
//! - static: `addresses[].address`, each one address;
//! - host-local: `ranges[][]` of `subnet`, `rangeStart`, `rangeEnd`, or `subnet`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

/// One contiguous set of addresses an IPAM plugin hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub net: IpNet,
    pub first: Option<IpAddr>,
    pub last: Option<IpAddr>,
    pub exclude: Vec<IpNet>,
}

impl Pool {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip)
            && self.first.is_none_or(|f| same_family(f, ip) && ip >= f)
            && self.last.is_none_or(|l| same_family(l, ip) && ip <= l)
            && !self.exclude.iter().any(|x| x.contains(&ip))
    }

    fn single(ip: IpAddr) -> Pool {
        Pool {
            net: IpNet::from(ip),
            first: None,
            last: None,
            exclude: Vec::new(),
        }
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// The pools of a NAD's `spec.config`; `Err` says why none could be read.
pub fn pools_of_config(config: &str) -> Result<Vec<Pool>, String> {
    let config: Value =
        serde_json::from_str(config).map_err(|e| format!("spec.config is not JSON: {e}"))?;
    let plugins: Vec<&Value> = match config.get("plugins").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![&config],
    };
    let mut pools = Vec::new();
    for ipam in plugins.iter().filter_map(|p| p.get("ipam")) {
        pools.extend(pools_of_ipam(ipam)?);
    }
    Ok(pools)
}

fn pools_of_ipam(ipam: &Value) -> Result<Vec<Pool>, String> {
    let kind = ipam.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "whereabouts" => {
            let mut pools = Vec::new();
            if ipam.get("range").is_some() {
                pools.push(whereabouts_range(ipam)?);
            }
            for entry in ipam
                .get("ipRanges")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                pools.push(whereabouts_range(entry)?);
            }
            Ok(pools)
        }
        "static" => ipam
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|a| {
                let text = a.get("address").and_then(Value::as_str).unwrap_or("");
                address_of(text)
                    .map(Pool::single)
                    .ok_or_else(|| format!("static address {text:?} is not an address"))
            })
            .collect(),
        "host-local" => {
            let mut pools = Vec::new();
            for set in ipam
                .get("ranges")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for range in set.as_array().into_iter().flatten() {
                    pools.push(host_local_range(range)?);
                }
            }
            if ipam.get("subnet").is_some() {
                pools.push(host_local_range(ipam)?);
            }
            Ok(pools)
        }
        // DHCP, or an IPAM this reader does not know: no pool, so nothing released.
        _ => Ok(Vec::new()),
    }
}

fn whereabouts_range(entry: &Value) -> Result<Pool, String> {
    let text = field(entry, "range")?;
    // `10.0.4.64-10.0.4.95/24`: the first address and the network, then the last.
    let (network, mut first, mut last) = match text.split_once('-') {
        Some((start, rest)) => {
            let (end, prefix) = rest
                .split_once('/')
                .ok_or_else(|| format!("range {text:?} has no prefix length"))?;
            let network = format!("{start}/{prefix}")
                .parse::<IpNet>()
                .map_err(|e| format!("range {text:?}: {e}"))?
                .trunc();
            (network, Some(ip(start, text)?), Some(ip(end, text)?))
        }
        None => (net(text)?, None, None),
    };
    if let Some(start) = optional(entry, "range_start")? {
        first = Some(start);
    }
    if let Some(end) = optional(entry, "range_end")? {
        last = Some(end);
    }
    let exclude = entry
        .get("exclude")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|x| net(x.as_str().unwrap_or("")))
        .collect::<Result<_, _>>()?;
    Ok(Pool {
        net: network,
        first,
        last,
        exclude,
    })
}

fn host_local_range(range: &Value) -> Result<Pool, String> {
    Ok(Pool {
        net: net(field(range, "subnet")?)?,
        first: optional(range, "rangeStart")?,
        last: optional(range, "rangeEnd")?,
        exclude: Vec::new(),
    })
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str, String> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{name} is missing or not a string"))
}

fn optional(v: &Value, name: &str) -> Result<Option<IpAddr>, String> {
    match v.get(name).and_then(Value::as_str) {
        None => Ok(None),
        Some(text) => address_of(text)
            .map(Some)
            .ok_or_else(|| format!("{name} {text:?} is not an address")),
    }
}

fn net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|e| format!("{text:?} is not a CIDR: {e}"))
}

fn ip(text: &str, whole: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("range {whole:?}: {text:?} is not an address"))
}

/// `10.0.4.5` or `10.0.4.5/24`.
fn address_of(text: &str) -> Option<IpAddr> {
    text.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn whereabouts_range_with_embedded_start_and_end() {
        let pools = pools_of_config(
            r#"{"type":"ipvlan","ipam":{"type":"whereabouts","range":"10.0.4.64-10.0.4.95/24"}}"#,
        )
        .unwrap();
        assert_eq!(pools.len(), 1);
        assert!(pools[0].contains(ip("10.0.4.64")));
        assert!(pools[0].contains(ip("10.0.4.95")));
        assert!(!pools[0].contains(ip("10.0.4.63")));
        assert!(
            !pools[0].contains(ip("10.0.4.100")),
            "a floating IP in the subnet"
        );
        assert!(!pools[0].contains(ip("2001:db8::1")));
    }

    #[test]
    fn whereabouts_ip_ranges_dual_stack_with_exclude() {
        let pools = pools_of_config(
            r#"{"cniVersion":"0.3.1","plugins":[{"type":"ipvlan","ipam":{"type":"whereabouts",
              "ipRanges":[{"range":"10.0.5.0/24","exclude":["10.0.5.0/28"]},
                          {"range":"2001:db8:0:5::/64","range_start":"2001:db8:0:5::100","range_end":"2001:db8:0:5::1ff"}]}},
              {"type":"tuning"}]}"#,
        )
        .unwrap();
        assert_eq!(pools.len(), 2);
        let inside = |s| pools.iter().any(|p| p.contains(ip(s)));
        assert!(!inside("10.0.5.3"), "excluded");
        assert!(inside("10.0.5.16"));
        assert!(inside("2001:db8:0:5::100"));
        assert!(!inside("2001:db8:0:5::200"));
    }

    #[test]
    fn static_and_host_local() {
        let pools = pools_of_config(
            r#"{"type":"ipvlan","ipam":{"type":"static","addresses":[{"address":"10.0.6.7/24"}]}}"#,
        )
        .unwrap();
        assert!(pools[0].contains(ip("10.0.6.7")));
        assert!(!pools[0].contains(ip("10.0.6.8")));
        let pools = pools_of_config(
            r#"{"type":"macvlan","ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.7.0/24","rangeStart":"10.0.7.10","rangeEnd":"10.0.7.20"}]]}}"#,
        )
        .unwrap();
        assert!(pools[0].contains(ip("10.0.7.15")));
        assert!(!pools[0].contains(ip("10.0.7.21")));
    }

    #[test]
    fn unknown_ipam_gives_no_pool_and_bad_config_an_error() {
        assert_eq!(
            pools_of_config(r#"{"type":"ipvlan","ipam":{"type":"dhcp"}}"#).unwrap(),
            vec![]
        );
        let err =
            pools_of_config(r#"{"ipam":{"type":"whereabouts","range":"10.0.4.0"}}"#).unwrap_err();
        assert!(err.contains("10.0.4.0"), "{err}");
        assert!(pools_of_config("not json").is_err());
    }
}
