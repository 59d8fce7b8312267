//! The address-range guard: whether the addresses a NetworkAttachmentDefinition hands
//! out can be routed to the Multus ENIs it rides on without colliding with anything
//! else in their subnets. `ipam` reads a NAD's configuration as its IPAM plugin does;
//! `verdict` judges its pools against one subnet; `judge`, here, puts the cluster
//! together: each NAD's master names a device index, the Multus ENIs at that index
//! (one subnet per Availability Zone) are where its pools must fit, and NADs that
//! share a subnet must not share addresses. `judge` is pure; `pass` brings the ENIs
//! and subnets from EC2; `run` is the controller's loop that brings the NADs from the
//! API server and reports what changed in their findings.

pub mod ipam;
#[cfg(test)]
mod properties;
pub mod run;
pub mod verdict;

use std::collections::BTreeMap;

use ipmgmt_common::aws::Ec2Error;

use ipnet::IpNet;

use crate::ec2::{Ec2, MultusEni};
use ipam::{Attachment, ReadError};
use verdict::Subnet;

/// Multus's NetworkAttachmentDefinition (`k8s.cni.cncf.io/v1`).
pub fn nad_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

/// A NAD in scope, as read from its `spec.config`.
#[derive(Debug)]
pub struct Nad {
    /// `namespace/name`.
    pub name: String,
    pub read: Result<Attachment, ReadError>,
}

/// The device index a NAD's `master` names: `names` first (nodes whose interfaces
/// have predictable names, `ens6`…), else `ethN` for index N, as Amazon Linux 2 and
/// Bottlerocket name the ENI at device index N.
pub fn device_index(master: &str, names: &BTreeMap<String, i32>) -> Option<i32> {
    if let Some(index) = names.get(master) {
        return Some(*index);
    }
    let n = master.strip_prefix("eth")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok())?
}

/// A NAD's range in one subnet that no explicit reservation covers, where that is the
/// NAD's only finding anywhere: what the guard reserves when it may
/// (`--guard-reserve-ranges`). A range with any other mistake is never reserved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservable {
    /// `namespace/name`.
    pub nad: String,
    pub subnet: String,
    pub cidrs: Vec<IpNet>,
}

/// What a pass found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdicts {
    /// Every NAD's findings as lines, by NAD name; a NAD without findings is absent.
    pub findings: BTreeMap<String, Vec<String>>,
    pub reservable: Vec<Reservable>,
}

/// Every NAD judged. NADs whose master is no Multus ENI's interface (none, the pod's
/// own `eth0`) and IPAM plugins the guard does not read are out of scope.
pub fn judge(
    nads: &[Nad],
    enis: &[MultusEni],
    subnets: &[Subnet],
    names: &BTreeMap<String, i32>,
) -> Verdicts {
    let mut findings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut reservable = Vec::new();
    // Findings per NAD that a reservation would fix.
    let mut unreserved: BTreeMap<String, usize> = BTreeMap::new();
    // subnet id -> the NADs riding on it, for the overlap check.
    let mut riders: BTreeMap<&str, Vec<(String, Attachment)>> = BTreeMap::new();
    for nad in nads {
        let attachment = match &nad.read {
            Ok(a) => a,
            Err(e) => {
                findings
                    .entry(nad.name.clone())
                    .or_default()
                    .push(format!("cannot read its config: {e}"));
                continue;
            }
        };
        let Some(master) = attachment.master.as_deref() else {
            continue;
        };
        let Some(index) = device_index(master, names).filter(|i| *i >= 1) else {
            continue;
        };
        if attachment.pools.is_empty() {
            continue;
        }
        let at_index: Vec<&MultusEni> = enis.iter().filter(|e| e.device_index == index).collect();
        if at_index.is_empty() {
            findings.entry(nad.name.clone()).or_default().push(format!(
                "no node has a Multus ENI at device index {index} (master {master}): pods using it get \
                 addresses the VPC routes nowhere; attach and tag the ENI, or fix the master"
            ));
            continue;
        }
        let mut ids: Vec<&str> = at_index.iter().map(|e| e.subnet.as_str()).collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            let Some(subnet) = subnets.iter().find(|s| s.id == id) else {
                continue;
            };
            let mut subnet = subnet.clone();
            subnet.eni_addresses = (enis.iter())
                .filter(|e| e.subnet == id)
                .flat_map(|e| e.own.iter().copied())
                .collect();
            let found = verdict::check(attachment, &subnet);
            let gaps = (found.iter())
                .filter(|f| matches!(f, verdict::Finding::Unreserved { .. }))
                .count();
            if gaps > 0 {
                *unreserved.entry(nad.name.clone()).or_default() += gaps;
                reservable.push(Reservable {
                    nad: nad.name.clone(),
                    subnet: id.to_owned(),
                    cidrs: verdict::unreserved(attachment, &subnet),
                });
            }
            let lines = found.iter().map(ToString::to_string).collect::<Vec<_>>();
            if !lines.is_empty() {
                findings.entry(nad.name.clone()).or_default().extend(lines);
            }
            riders
                .entry(id)
                .or_default()
                .push((nad.name.clone(), attachment.clone()));
        }
    }
    for (id, on) in &riders {
        let Some(subnet) = subnets.iter().find(|s| s.id == *id) else {
            continue;
        };
        for (i, finding) in verdict::overlaps(on, subnet) {
            findings
                .entry(on[i].0.clone())
                .or_default()
                .push(finding.to_string());
        }
    }
    reservable.retain(|r| findings.get(&r.nad).map(Vec::len) == unreserved.get(&r.nad).copied());
    Verdicts {
        findings,
        reservable,
    }
}

/// One pass of the guard over what EC2 shows now: the Multus ENIs of `instances`
/// (the cluster's nodes), the subnets (with explicit reservations) of those at a
/// device index some NAD's master names, and `judge`. No call when no NAD's master
/// names a Multus ENI's device index.
pub async fn pass<E: Ec2>(
    ec2: &E,
    nads: &[Nad],
    instances: &[String],
    names: &BTreeMap<String, i32>,
) -> Result<Verdicts, Ec2Error> {
    let named: Vec<i32> = (nads.iter())
        .filter_map(|n| n.read.as_ref().ok()?.master.as_deref())
        .filter_map(|m| device_index(m, names))
        .filter(|i| *i >= 1)
        .collect();
    if named.is_empty() {
        // No NAD rides on a Multus ENI: nothing to ask EC2.
        return Ok(judge(nads, &[], &[], names));
    }
    let enis = ec2.multus_enis(instances).await?;
    let mut ids: Vec<String> = (enis.iter())
        .filter(|e| named.contains(&e.device_index))
        .map(|e| e.subnet.clone())
        .collect();
    ids.sort();
    ids.dedup();
    let subnets = match ids.is_empty() {
        true => Vec::new(),
        false => ec2.subnets(&ids).await?,
    };
    Ok(judge(nads, &enis, &subnets, names))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn eni(id: &str, instance: &str, index: i32, subnet: &str, own: &str) -> MultusEni {
        MultusEni {
            id: id.into(),
            mac: String::new(),
            instance: instance.into(),
            device_index: index,
            subnet: subnet.into(),
            own: vec![own.parse::<IpAddr>().unwrap()],
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            attachment: None,
            delete_on_termination: false,
            attached_by_controller: false,
        }
    }

    fn subnet(id: &str, cidr: &str, reserved: &str) -> Subnet {
        Subnet {
            id: id.into(),
            cidrs: vec![cidr.parse().unwrap()],
            reservations: vec![reserved.parse().unwrap()],
            eni_addresses: Vec::new(),
            prefix_reservations: Vec::new(),
        }
    }

    fn nad(name: &str, master: &str, range: &str) -> Nad {
        Nad {
            name: name.into(),
            read: ipam::read(&format!(
                r#"{{"type":"ipvlan","master":"{master}","ipam":{{"type":"host-local","subnet":"{range}",
                    "rangeStart":"{}","rangeEnd":"{}"}}}}"#,
                range.replace(".0/24", ".64"),
                range.replace(".0/24", ".127"),
            )),
        }
    }

    #[test]
    fn masters_name_device_indexes() {
        let names = BTreeMap::from([("ens6".to_owned(), 1)]);
        assert_eq!(device_index("eth2", &names), Some(2));
        assert_eq!(device_index("ens6", &names), Some(1));
        assert_eq!(device_index("eth", &names), None);
        assert_eq!(device_index("ethx", &names), None);
        assert_eq!(device_index("bond0", &names), None);
    }

    #[test]
    fn each_nad_is_judged_in_every_zone_its_enis_are_in() {
        // eth1 rides on subnet-a in one zone and subnet-b in another; a range can fit
        // only one of them.
        let enis = [
            eni("eni-1", "i-1", 1, "subnet-a", "10.0.4.10"),
            eni("eni-2", "i-2", 1, "subnet-b", "10.0.5.10"),
            eni("eni-3", "i-1", 2, "subnet-a", "10.0.4.11"),
        ];
        let subnets = [
            subnet("subnet-a", "10.0.4.0/24", "10.0.4.64/26"),
            subnet("subnet-b", "10.0.5.0/24", "10.0.5.64/26"),
        ];
        let nads = [
            nad("apps/a", "eth1", "10.0.4.0/24"),
            nad("apps/b", "eth2", "10.0.4.0/24"),
            nad("apps/c", "eth3", "10.0.4.0/24"),
            nad("apps/d", "eth0", "10.0.9.0/24"),
            Nad {
                name: "apps/e".into(),
                read: ipam::read("{"),
            },
        ];
        let Verdicts {
            findings: found,
            reservable,
        } = judge(&nads, &enis, &subnets, &BTreeMap::new());
        // Every NAD here has a mistake besides a missing reservation, or none.
        assert_eq!(reservable, []);
        let names: Vec<&str> = found.keys().map(String::as_str).collect();
        // d rides on the pod's own eth0: out of scope.
        assert_eq!(names, ["apps/a", "apps/b", "apps/c", "apps/e"]);
        assert_eq!(found["apps/a"].len(), 2, "{:?}", found["apps/a"]);
        assert!(
            found["apps/a"][0].contains("is not inside subnet-b (10.0.5.0/24)"),
            "{:?}",
            found["apps/a"]
        );
        assert!(
            found["apps/a"][1].contains("overlaps apps/b's range"),
            "{:?}",
            found["apps/a"]
        );
        assert_eq!(found["apps/b"].len(), 1);
        assert!(
            found["apps/c"][0]
                .starts_with("no node has a Multus ENI at device index 3 (master eth3)")
        );
        assert!(found["apps/e"][0].starts_with("cannot read its config: not JSON: "));
    }

    #[test]
    fn only_a_range_whose_one_mistake_is_its_missing_reservation_is_reservable() {
        let enis = [
            eni("eni-1", "i-1", 1, "subnet-a", "10.0.4.10"),
            eni("eni-2", "i-2", 1, "subnet-b", "10.0.5.10"),
            eni("eni-3", "i-1", 2, "subnet-a", "10.0.4.11"),
        ];
        let subnets = [
            subnet("subnet-a", "10.0.4.0/24", "10.0.4.64/27"),
            subnet("subnet-b", "10.0.5.0/24", "10.0.5.64/27"),
        ];
        // eth2 rides on subnet-a only: .64-.127, half reserved. eth1 rides on both
        // zones' subnets: a subnet-b range is unreserved in subnet-b and outside
        // subnet-a, so it is not reserved anywhere.
        let nads = [
            nad("apps/half", "eth2", "10.0.4.0/24"),
            nad("apps/zones", "eth1", "10.0.5.0/24"),
        ];
        let verdicts = judge(&nads, &enis, &subnets, &BTreeMap::new());
        assert_eq!(
            verdicts.reservable,
            [Reservable {
                nad: "apps/half".into(),
                subnet: "subnet-a".into(),
                cidrs: vec!["10.0.4.96/27".parse().unwrap()],
            }]
        );
        let zones = &verdicts.findings["apps/zones"];
        assert_eq!(zones.len(), 2, "{zones:?}");
        assert!(
            zones[0].contains("is not inside subnet-a")
                && zones[1].contains("no explicit CIDR reservation of subnet-b"),
            "{zones:?}"
        );
    }
}
