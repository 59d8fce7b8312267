//! EC2's XML: the response envelope, error bodies, and the items the describe
//! actions answer with. Elements are built by `el` and `text` so that every value is
//! escaped and no line holds a whole document.

use std::fmt::Display;

use super::{Eni, Instance, Subnet};

const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

pub(super) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `<name>children</name>`, the children already XML.
pub(super) fn el(name: &str, children: impl Display) -> String {
    format!("<{name}>{children}</{name}>")
}

/// `<name>value</name>`, the value escaped.
pub(super) fn text(name: &str, value: impl Display) -> String {
    el(name, escape(&value.to_string()))
}

/// `<item>…</item>` for each element.
pub(super) fn items<T>(list: impl IntoIterator<Item = T>, item: impl Fn(T) -> String) -> String {
    list.into_iter().map(|x| el("item", item(x))).collect()
}

/// The answer to a successful `action`.
pub(super) fn response(action: &str, request_id: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{XMLNS}\">{}{body}</{action}Response>",
        text("requestId", request_id)
    )
}

/// An error answer, as EC2 gives it for every action.
pub(super) fn error(code: &str, message: &str, request_id: &str) -> String {
    let error = el("Error", text("Code", code) + &text("Message", message));
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}",
        el(
            "Response",
            el("Errors", error) + &text("RequestID", request_id)
        )
    )
}

/// An attached ENI's attachment, named after the ENI.
pub(super) fn attachment_id(eni: &Eni) -> String {
    format!("eni-attach-{}", &eni.id[4..])
}

pub(super) fn eni(eni: &Eni) -> String {
    let primary = eni
        .ipv4
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let v4 = items(eni.ipv4.iter().enumerate(), |(i, ip)| {
        text("privateIpAddress", ip) + &text("primary", i == 0)
    });
    let v6 = items(&eni.ipv6, |ip| {
        text("ipv6Address", ip) + &text("isPrimaryIpv6", eni.primary_ipv6 == Some(*ip))
    });
    let tags = items(&eni.tags, |(k, v)| text("key", k) + &text("value", v));
    let attachment = match &eni.instance_id {
        Some(instance) => el(
            "attachment",
            [
                text("attachmentId", attachment_id(eni)),
                text("instanceId", instance),
                text("instanceOwnerId", "111122223333"),
                text("deviceIndex", eni.device_index),
                text("status", "attached"),
                text("deleteOnTermination", eni.delete_on_termination),
            ]
            .concat(),
        ),
        None => String::new(),
    };
    let status = if eni.instance_id.is_some() {
        "in-use"
    } else {
        "available"
    };
    [
        text("networkInterfaceId", &eni.id),
        text("subnetId", &eni.subnet_id),
        text("vpcId", super::VPC_ID),
        text("availabilityZone", "us-west-2a"),
        text("ownerId", "111122223333"),
        text("requesterManaged", false),
        text("status", status),
        text("macAddress", &eni.mac),
        text("privateIpAddress", primary),
        text("sourceDestCheck", eni.source_dest_check),
        text("interfaceType", "interface"),
        attachment,
        el("privateIpAddressesSet", v4),
        el("ipv6AddressesSet", v6),
        el("tagSet", tags),
    ]
    .concat()
}

/// An Elastic IP, with its association when it has one.
pub(super) fn address(eip: &super::ElasticIp) -> String {
    let tags = items(&eip.tags, |(k, v)| text("key", k) + &text("value", v));
    let association = match &eip.association {
        Some(a) => [
            text("associationId", &a.association_id),
            text("networkInterfaceId", &a.eni),
            text("networkInterfaceOwnerId", "111122223333"),
            text("privateIpAddress", a.private_ip),
        ]
        .concat(),
        None => String::new(),
    };
    [
        text("publicIp", eip.public_ip),
        text("allocationId", &eip.allocation_id),
        text("domain", "vpc"),
        association,
        el("tagSet", tags),
    ]
    .concat()
}

/// A route table and its routes; a route to an ENI that is gone or detached is a
/// blackhole.
pub(super) fn route_table(table: &super::RouteTable, enis: &[Eni]) -> String {
    let routes = items(&table.routes, |r| {
        let destination = match r.destination {
            ipnet::IpNet::V4(_) => text("destinationCidrBlock", r.destination),
            ipnet::IpNet::V6(_) => text("destinationIpv6CidrBlock", r.destination),
        };
        let (target, state) = match (&r.eni, &r.gateway) {
            (Some(id), _) => {
                let eni = enis.iter().find(|e| &e.id == id);
                let instance = eni.and_then(|e| e.instance_id.as_ref());
                let target = text("networkInterfaceId", id)
                    + &instance.map(|i| text("instanceId", i)).unwrap_or_default();
                (
                    target,
                    if instance.is_some() {
                        "active"
                    } else {
                        "blackhole"
                    },
                )
            }
            (None, Some(gateway)) => (text("gatewayId", gateway), "active"),
            (None, None) => (text("gatewayId", "local"), "active"),
        };
        let origin = if r.eni.is_some() {
            "CreateRoute"
        } else {
            "CreateRouteTable"
        };
        destination + &target + &text("state", state) + &text("origin", origin)
    });
    let tags = items(&table.tags, |(k, v)| text("key", k) + &text("value", v));
    [
        text("routeTableId", &table.id),
        text("vpcId", super::VPC_ID),
        text("ownerId", "111122223333"),
        el("routeSet", routes),
        el("associationSet", ""),
        el("tagSet", tags),
    ]
    .concat()
}

/// A VPC with these CIDR blocks, all associated; the first IPv4 one is its primary.
pub(super) fn vpc(id: &str, cidrs: &[ipnet::IpNet]) -> String {
    let (v4, v6): (Vec<&ipnet::IpNet>, Vec<&ipnet::IpNet>) =
        cidrs.iter().partition(|c| matches!(c, ipnet::IpNet::V4(_)));
    let v4_items = items(v4.iter().enumerate(), |(i, net)| {
        text("cidrBlock", net)
            + &text("associationId", format!("vpc-cidr-assoc-{i}"))
            + &el("cidrBlockState", text("state", "associated"))
    });
    let v6_items = items(v6.iter().enumerate(), |(i, net)| {
        text("ipv6CidrBlock", net)
            + &text("associationId", format!("vpc-cidr-assoc-6-{i}"))
            + &el("ipv6CidrBlockState", text("state", "associated"))
            + &text("networkBorderGroup", "us-west-2")
            + &text("ipv6Pool", "Amazon")
    });
    [
        text("vpcId", id),
        text("ownerId", "111122223333"),
        text("state", "available"),
        v4.first()
            .map_or_else(String::new, |c| text("cidrBlock", c)),
        el("cidrBlockAssociationSet", v4_items),
        el("ipv6CidrBlockAssociationSet", v6_items),
        text("dhcpOptionsId", "dopt-0fake"),
        text("instanceTenancy", "default"),
        text("isDefault", false),
    ]
    .concat()
}

pub(super) fn cidr_reservation(i: usize, r: &super::Reservation) -> String {
    [
        text("subnetCidrReservationId", format!("scr-{i:017x}")),
        text("subnetId", &r.subnet),
        text("cidr", r.cidr),
        text("reservationType", &r.kind),
        text("ownerId", "111122223333"),
        text("description", &r.description),
    ]
    .concat()
}

pub(super) fn subnet(s: &Subnet) -> String {
    let v6 = items(s.ipv6.iter().enumerate(), |(i, net)| {
        text("ipv6CidrBlock", net)
            + &text("associationId", format!("subnet-cidr-assoc-{i}"))
            + &el("ipv6CidrBlockState", text("state", "associated"))
    });
    [
        text("subnetId", &s.id),
        text("state", "available"),
        text("vpcId", super::VPC_ID),
        text("cidrBlock", s.ipv4),
        el("ipv6CidrBlockAssociationSet", v6),
        text("availableIpAddressCount", 250),
        text("availabilityZone", "us-west-2a"),
    ]
    .concat()
}

/// A reservation holding one instance, with the ENIs attached to it.
pub(super) fn reservation<'a>(i: &Instance, enis: impl Iterator<Item = &'a Eni>) -> String {
    let attached: String = enis.map(|e| el("item", eni(e))).collect();
    let instance = [
        text("instanceId", &i.id),
        text("instanceType", &i.instance_type),
        text("privateDnsName", &i.private_dns_name),
        el("instanceState", text("code", 16) + &text("name", "running")),
        el("networkInterfaceSet", attached),
    ]
    .concat();
    [
        text("reservationId", format!("r-{}", &i.id[2..])),
        text("ownerId", "111122223333"),
        el("instancesSet", el("item", instance)),
    ]
    .concat()
}
