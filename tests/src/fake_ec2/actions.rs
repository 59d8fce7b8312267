//! The actions, with EC2's documented semantics (see the module's overview).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::query::Query;
use super::{Eni, Fail, Inner, Remap, Subnet, VPC_ID, addresses_per_eni, fail, request_id, xml};
use ipnet::IpNet;

impl Inner {
    fn random(&mut self) -> f64 {
        // xorshift: deterministic across runs, good enough for fault injection.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1_000_000) as f64 / 1_000_000.0
    }

    pub(super) fn apply_remaps(&mut self) {
        let now = Instant::now();
        let (due, pending): (Vec<Remap>, Vec<Remap>) =
            self.remaps.drain(..).partition(|r| r.visible_at <= now);
        self.remaps = pending;
        for r in due {
            for eni in &mut self.world.enis {
                eni.ipv4.retain(|ip| *ip != r.ip);
            }
            if let Some(eni) = self.world.enis.iter_mut().find(|e| e.id == r.to) {
                eni.ipv4.push(r.ip);
            }
            self.eip_follows(r.ip, Some(&r.to));
        }
    }

    pub(super) fn dispatch(
        &mut self,
        action: &str,
        q: &Query,
        caller: Option<&str>,
    ) -> Result<String, Fail> {
        if self.faults.deny.contains(action) {
            return Err(Fail {
                status: StatusCode::FORBIDDEN,
                code: "UnauthorizedOperation",
                message: "You are not authorized to perform this operation.".into(),
            });
        }
        let throttled = self.random() < self.faults.throttle_fraction
            || (self.faults.rate_limits && !self.buckets.take(action, q));
        if throttled {
            return Err(super::throttled());
        }
        if self.random() < self.faults.server_error_fraction {
            return Err(Fail {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "InternalError",
                message: "An internal error has occurred.".into(),
            });
        }
        // Every request counts against the rate limits, authorized or not.
        let policy =
            (caller.and_then(|key| self.policies_by_key.get(key))).or(self.policy.as_ref());
        if let Some(policy) = policy {
            let id = q.get("NetworkInterfaceId");
            let eni = id.and_then(|id| self.world.enis.iter().find(|e| e.id == id));
            let request_tags = q.tags_for("network-interface");
            let mut context = super::iam::Context {
                request_tags: &request_tags,
                ..Default::default()
            };
            // A route names its target ENI, but IAM authorizes only the route table.
            let routing = matches!(action, "CreateRoute" | "ReplaceRoute" | "DeleteRoute");
            if let Some(eni) = eni.filter(|_| !routing) {
                context.resources.push(super::iam::Resource {
                    kind: "network-interface",
                    tags: Some(&eni.tags),
                });
            }
            let eip = (q
                .get("AllocationId")
                .map(|id| (self.world.addresses.iter()).find(|a| a.allocation_id == id)))
            .or_else(|| {
                q.get("AssociationId").map(|id| {
                    (self.world.addresses.iter()).find(|a| {
                        a.association
                            .as_ref()
                            .is_some_and(|x| x.association_id == id)
                    })
                })
            })
            .flatten();
            if let Some(eip) = eip {
                context.resources.push(super::iam::Resource {
                    kind: "elastic-ip",
                    tags: Some(&eip.tags),
                });
                // Disassociating also touches the ENI the association is on.
                let on = (eip.association.as_ref())
                    .filter(|_| q.get("NetworkInterfaceId").is_none())
                    .and_then(|a| self.world.enis.iter().find(|e| e.id == a.eni));
                if let Some(on) = on {
                    context.resources.push(super::iam::Resource {
                        kind: "network-interface",
                        tags: Some(&on.tags),
                    });
                }
            }
            let table = (q.get("RouteTableId"))
                .and_then(|id| self.world.route_tables.iter().find(|t| t.id == id));
            if let Some(table) = table {
                context.resources.push(super::iam::Resource {
                    kind: "route-table",
                    tags: Some(&table.tags),
                });
            }
            if action == "AttachNetworkInterface" {
                context.resources.push(super::iam::Resource {
                    kind: "instance",
                    tags: Some(&[]),
                });
            }
            let creating = action == "CreateNetworkInterface";
            if creating {
                let subnet = q.get("SubnetId").and_then(|id| self.subnet(id));
                context.resources.push(super::iam::Resource {
                    kind: "network-interface",
                    tags: None,
                });
                context.resources.push(super::iam::Resource {
                    kind: "subnet",
                    tags: Some(subnet.map_or(&[][..], |s| &s.tags[..])),
                });
                for _ in q.list("SecurityGroupId") {
                    context.resources.push(super::iam::Resource {
                        kind: "security-group",
                        tags: Some(&[]),
                    });
                }
            }
            // Tags asked for at creation need CreateTags on what is created, with the
            // creating action as ec2:CreateAction.
            let tagging = super::iam::Context {
                resources: vec![super::iam::Resource {
                    kind: "network-interface",
                    tags: None,
                }],
                request_tags: &request_tags,
                create_action: Some(action),
            };
            let denied = match !policy.allows(action, &context) {
                true => Some(action),
                false
                    if creating
                        && !request_tags.is_empty()
                        && !policy.allows("CreateTags", &tagging) =>
                {
                    Some("CreateTags")
                }
                false => None,
            };
            if let Some(denied) = denied {
                let resource = match id {
                    Some(id) => {
                        format!("arn:aws:ec2:us-west-2:111122223333:network-interface/{id}")
                    }
                    None => "*".into(),
                };
                return Err(Fail {
                    status: StatusCode::FORBIDDEN,
                    code: "UnauthorizedOperation",
                    message: format!(
                        "You are not authorized to perform this operation. User: \
                         arn:aws:sts::111122223333:assumed-role/ipmgmt-ipmgr/pod is not authorized to \
                         perform: ec2:{denied} on resource: {resource} because no identity-based policy \
                         allows the ec2:{denied} action. Encoded authorization failure message: fake"
                    ),
                });
            }
        }
        // EC2 answers a dry run once it has authorized the caller, before it reads
        // the request's parameters, with HTTP 412.
        if q.get("DryRun") == Some("true") {
            return Err(Fail {
                status: StatusCode::PRECONDITION_FAILED,
                code: "DryRunOperation",
                message: "Request would have succeeded, but DryRun flag is set.".into(),
            });
        }
        let body = match action {
            "DescribeNetworkInterfaces" => self.describe_network_interfaces(q)?,
            "DescribeSubnets" => self.describe_subnets(q)?,
            "DescribeVpcs" => self.describe_vpcs(q)?,
            "GetSubnetCidrReservations" => self.get_subnet_cidr_reservations(q)?,
            "CreateSubnetCidrReservation" => self.create_subnet_cidr_reservation(q)?,
            "DescribeInstances" => self.describe_instances(q)?,
            "DescribeInstanceTypes" => self.describe_instance_types(q)?,
            "CreateNetworkInterface" => self.create_network_interface(q)?,
            "DescribeAddresses" => self.describe_addresses(q)?,
            "AssociateAddress" => self.associate_address(q)?,
            "DisassociateAddress" => self.disassociate_address(q)?,
            "DescribeRouteTables" => self.describe_route_tables(q)?,
            "CreateRoute" => self.put_route(q, false)?,
            "ReplaceRoute" => self.put_route(q, true)?,
            "DeleteRoute" => self.delete_route(q)?,
            "AttachNetworkInterface" => self.attach_network_interface(q)?,
            "ModifyNetworkInterfaceAttribute" => self.modify_network_interface_attribute(q)?,
            "DeleteNetworkInterface" => self.delete_network_interface(q)?,
            "AssignPrivateIpAddresses" => self.assign_private(q)?,
            "UnassignPrivateIpAddresses" => self.unassign_private(q)?,
            "AssignIpv6Addresses" => self.assign_ipv6(q)?,
            "UnassignIpv6Addresses" => self.unassign_ipv6(q)?,
            other => {
                return Err(fail(
                    "InvalidAction",
                    format!("The action {other} is not valid for this web service."),
                ));
            }
        };
        Ok(xml::response(action, &request_id(), &body))
    }

    fn eni_index(&self, q: &Query) -> Result<usize, Fail> {
        let id = q.get("NetworkInterfaceId").ok_or_else(|| {
            fail(
                "MissingParameter",
                "The request must contain the parameter networkInterfaceId",
            )
        })?;
        self.world
            .enis
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| {
                fail(
                    "InvalidNetworkInterfaceID.NotFound",
                    format!("The networkInterface ID '{id}' does not exist"),
                )
            })
    }

    fn limit_of(&self, eni: &Eni) -> usize {
        let ty = eni
            .instance_id
            .as_ref()
            .and_then(|i| self.world.instances.iter().find(|x| x.id == *i))
            .map_or("m5.large", |i| i.instance_type.as_str());
        addresses_per_eni(ty)
    }

    fn subnet(&self, id: &str) -> Option<&Subnet> {
        self.world.subnets.iter().find(|s| s.id == id)
    }

    fn describe_network_interfaces(&self, q: &Query) -> Result<String, Fail> {
        let ids = q.list("NetworkInterfaceId");
        let filters = q.filters();
        let mut items = String::new();
        for eni in &self.world.enis {
            if !ids.is_empty() && !ids.contains(&eni.id) {
                continue;
            }
            let mut keep = true;
            for (name, values) in &filters {
                let matches = match name.as_str() {
                    "attachment.instance-id" => {
                        eni.instance_id.as_ref().is_some_and(|i| values.contains(i))
                    }
                    "attachment.device-index" => values.contains(&eni.device_index.to_string()),
                    "mac-address" => values.iter().any(|v| v.eq_ignore_ascii_case(&eni.mac)),
                    "subnet-id" => values.contains(&eni.subnet_id),
                    // The fake's one zone.
                    "availability-zone" => values.iter().any(|v| v == "us-west-2a"),
                    tag if tag.starts_with("tag:") => eni
                        .tags
                        .iter()
                        .any(|(k, v)| k == &tag[4..] && values.contains(v)),
                    "network-interface-id" => values.contains(&eni.id),
                    "tag-key" => eni.tags.iter().any(|(k, _)| values.contains(k)),
                    "status" => values.iter().any(|v| {
                        v == if eni.instance_id.is_some() {
                            "in-use"
                        } else {
                            "available"
                        }
                    }),
                    "addresses.private-ip-address" => {
                        eni.ipv4.iter().any(|ip| values.contains(&ip.to_string()))
                    }
                    "ipv6-addresses.ipv6-address" => eni.ipv6.iter().any(|ip| {
                        values
                            .iter()
                            .any(|v| v.parse::<Ipv6Addr>().is_ok_and(|x| x == *ip))
                    }),
                    other => {
                        return Err(fail(
                            "InvalidParameterValue",
                            format!("The filter '{other}' is invalid"),
                        ));
                    }
                };
                keep &= matches;
            }
            if keep {
                items.push_str(&xml::el("item", xml::eni(eni)));
            }
        }
        Ok(xml::el("networkInterfaceSet", items))
    }

    fn describe_subnets(&self, q: &Query) -> Result<String, Fail> {
        let ids = q.list("SubnetId");
        let mut items = String::new();
        for id in &ids {
            if self.subnet(id).is_none() {
                return Err(fail(
                    "InvalidSubnetID.NotFound",
                    format!("The subnet ID '{id}' does not exist"),
                ));
            }
        }
        for s in self
            .world
            .subnets
            .iter()
            .filter(|s| ids.is_empty() || ids.contains(&s.id))
        {
            items.push_str(&xml::el("item", xml::subnet(s)));
        }
        Ok(xml::el("subnetSet", items))
    }

    /// One subnet's reservations (`SubnetId` is required), IPv4 and IPv6 in their own
    /// sets, as EC2 answers; the `reservationType` filter is applied, others ignored.
    fn get_subnet_cidr_reservations(&self, q: &Query) -> Result<String, Fail> {
        let id = (q.get("SubnetId")).ok_or_else(|| {
            fail(
                "MissingParameter",
                "The request must contain the parameter SubnetId",
            )
        })?;
        if self.subnet(id).is_none() {
            return Err(fail(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{id}' does not exist"),
            ));
        }
        let kinds: Vec<String> = (q.filters().into_iter())
            .filter(|(name, _)| name == "reservationType")
            .flat_map(|(_, values)| values)
            .collect();
        let (mut v4, mut v6) = (String::new(), String::new());
        for (i, r) in self.world.reservations.iter().enumerate() {
            if r.subnet != id || !(kinds.is_empty() || kinds.contains(&r.kind)) {
                continue;
            }
            let item = xml::el("item", xml::cidr_reservation(i, r));
            match r.cidr {
                ipnet::IpNet::V4(_) => v4.push_str(&item),
                ipnet::IpNet::V6(_) => v6.push_str(&item),
            }
        }
        Ok(xml::el("subnetIpv4CidrReservationSet", v4)
            + &xml::el("subnetIpv6CidrReservationSet", v6))
    }

    fn create_subnet_cidr_reservation(&mut self, q: &Query) -> Result<String, Fail> {
        let param = |name: &str| {
            q.get(name).ok_or_else(|| {
                fail(
                    "MissingParameter",
                    format!("The request must contain the parameter {name}"),
                )
            })
        };
        let (id, cidr, kind) = (
            param("SubnetId")?,
            param("Cidr")?,
            param("ReservationType")?,
        );
        let subnet = self.subnet(id).cloned().ok_or_else(|| {
            fail(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{id}' does not exist"),
            )
        })?;
        if kind != "prefix" && kind != "explicit" {
            return Err(fail(
                "InvalidParameterValue",
                format!("Value ({kind}) for parameter reservationType is invalid"),
            ));
        }
        let cidr: IpNet = (cidr.parse().ok())
            .filter(|c: &IpNet| c.network() == c.addr())
            .ok_or_else(|| {
                fail(
                    "InvalidParameterValue",
                    format!("The CIDR '{cidr}' is invalid"),
                )
            })?;
        let inside = std::iter::once(IpNet::V4(subnet.ipv4))
            .chain(subnet.ipv6.iter().map(|n| IpNet::V6(*n)))
            .any(|net| net.contains(&cidr));
        if !inside {
            return Err(fail(
                "InvalidParameterValue",
                format!("The CIDR '{cidr}' is not within the CIDR ranges of subnet '{id}'"),
            ));
        }
        let overlapping = (self.world.reservations.iter())
            .any(|r| r.subnet == id && (r.cidr.contains(&cidr) || cidr.contains(&r.cidr)));
        if overlapping {
            return Err(fail(
                "InvalidParameterValue",
                format!("The CIDR '{cidr}' overlaps an existing reservation in subnet '{id}'"),
            ));
        }
        let reservation = super::Reservation {
            subnet: id.to_owned(),
            cidr,
            kind: kind.to_owned(),
            description: q.get("Description").unwrap_or_default().to_owned(),
        };
        self.world.reservations.push(reservation);
        let i = self.world.reservations.len() - 1;
        Ok(xml::el(
            "subnetCidrReservation",
            xml::cidr_reservation(i, &self.world.reservations[i]),
        ))
    }

    /// A new ENI in the subnet, unattached (`available`), with the tags asked for and
    /// a primary address EC2 picks: the first free one after AWS's four, outside the
    /// subnet's explicit reservations (which keep EC2's own picks out).
    fn create_network_interface(&mut self, q: &Query) -> Result<String, Fail> {
        // Idempotent by client token, as EC2's creates are.
        let token = q.get("ClientToken").map(str::to_owned);
        if let Some(made) = (token.as_ref()).and_then(|t| self.tokens.get(t))
            && let Some(eni) = self.world.enis.iter().find(|e| &e.id == made)
        {
            return Ok(xml::el("networkInterface", xml::eni(eni)));
        }
        let id = q.get("SubnetId").ok_or_else(|| {
            fail(
                "MissingParameter",
                "The request must contain the parameter SubnetId",
            )
        })?;
        let subnet = self.subnet(id).cloned().ok_or_else(|| {
            fail(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{id}' does not exist"),
            )
        })?;
        let held: Vec<Ipv4Addr> = (self.world.enis.iter())
            .flat_map(|e| e.ipv4.iter().copied())
            .collect();
        let reserved = |ip: &Ipv4Addr| {
            (self.world.reservations.iter()).any(|r| {
                r.subnet == id && r.kind == "explicit" && r.cidr.contains(&IpAddr::from(*ip))
            })
        };
        let primary = (subnet.ipv4.hosts().skip(3))
            .take_while(|ip| *ip != subnet.ipv4.broadcast())
            .find(|ip| !held.contains(ip) && !reserved(ip))
            .ok_or_else(|| {
                fail(
                    "InsufficientFreeAddressesInSubnet",
                    format!("There are not enough free addresses in subnet '{id}' to satisfy the requested number of instances."),
                )
            })?;
        self.created += 1;
        let n = self.created;
        let eni = Eni {
            id: format!("eni-{n:017x}"),
            instance_id: None,
            device_index: 0,
            mac: format!("02:1e:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
            subnet_id: id.to_owned(),
            ipv4: vec![primary],
            ipv6: Vec::new(),
            primary_ipv6: None,
            tags: q.tags_for("network-interface"),
            delete_on_termination: false,
            source_dest_check: true,
        };
        let body = xml::el("networkInterface", xml::eni(&eni));
        if let Some(token) = token {
            self.tokens.insert(token, eni.id.clone());
        }
        self.world.enis.push(eni);
        Ok(body)
    }

    /// Attaches an `available` ENI at a free device index of an instance that has
    /// room for another interface.
    fn attach_network_interface(&mut self, q: &Query) -> Result<String, Fail> {
        let idx = self.eni_index(q)?;
        let instance = q.get("InstanceId").unwrap_or_default().to_owned();
        let Some(ty) = (self.world.instances.iter())
            .find(|i| i.id == instance)
            .map(|i| i.instance_type.clone())
        else {
            return Err(fail(
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{instance}' does not exist"),
            ));
        };
        let index: i32 = (q.get("DeviceIndex").and_then(|d| d.parse().ok())).ok_or_else(|| {
            fail(
                "MissingParameter",
                "The request must contain the parameter deviceIndex",
            )
        })?;
        let eni = &self.world.enis[idx];
        if eni.instance_id.is_some() {
            return Err(fail(
                "InvalidNetworkInterface.InUse",
                format!("Interface: [{}] in use.", eni.id),
            ));
        }
        let attached: Vec<i32> = (self.world.enis.iter())
            .filter(|e| e.instance_id.as_deref() == Some(instance.as_str()))
            .map(|e| e.device_index)
            .collect();
        if attached.contains(&index) {
            return Err(fail(
                "InvalidParameterValue",
                format!(
                    "Instance '{instance}' already has an interface attached at device index '{index}'."
                ),
            ));
        }
        let limit = network_limits(&ty).map_or(2, |(_, interfaces)| interfaces);
        if attached.len() >= limit {
            return Err(fail(
                "AttachmentLimitExceeded",
                format!(
                    "Interface count {} exceeds the limit for {ty}",
                    attached.len() + 1
                ),
            ));
        }
        let eni = &mut self.world.enis[idx];
        eni.instance_id = Some(instance);
        eni.device_index = index;
        eni.delete_on_termination = false;
        Ok(xml::text("attachmentId", xml::attachment_id(eni)) + &xml::text("networkCardIndex", 0))
    }

    /// Only an unattached ENI (`InvalidNetworkInterface.InUse`).
    fn delete_network_interface(&mut self, q: &Query) -> Result<String, Fail> {
        let idx = self.eni_index(q)?;
        let eni = &self.world.enis[idx];
        if eni.instance_id.is_some() {
            return Err(fail(
                "InvalidNetworkInterface.InUse",
                format!("The network interface '{}' is currently in use.", eni.id),
            ));
        }
        self.world.enis.remove(idx);
        Ok("<return>true</return>".into())
    }

    /// The attachment's DeleteOnTermination, or the source/destination check.
    fn modify_network_interface_attribute(&mut self, q: &Query) -> Result<String, Fail> {
        let idx = self.eni_index(q)?;
        let eni = &mut self.world.enis[idx];
        if let Some(check) = q.get("SourceDestCheck.Value") {
            eni.source_dest_check = check == "true";
            return Ok("<return>true</return>".into());
        }
        let (Some(attachment), Some(delete)) = (
            q.get("Attachment.AttachmentId"),
            q.get("Attachment.DeleteOnTermination"),
        ) else {
            return Err(fail(
                "InvalidParameterCombination",
                "The fake models only Attachment.DeleteOnTermination and SourceDestCheck",
            ));
        };
        if eni.instance_id.is_none() || attachment != xml::attachment_id(eni) {
            return Err(fail(
                "InvalidAttachmentID.NotFound",
                format!("The attachment ID '{attachment}' does not exist"),
            ));
        }
        eni.delete_on_termination = delete == "true";
        Ok("<return>true</return>".into())
    }

    fn describe_vpcs(&self, q: &Query) -> Result<String, Fail> {
        let ids = q.list("VpcId");
        if let Some(id) = ids.iter().find(|id| *id != VPC_ID) {
            return Err(fail(
                "InvalidVpcID.NotFound",
                format!("The vpc ID '{id}' does not exist"),
            ));
        }
        let cidrs: Vec<IpNet> = match self.world.vpc_cidrs.is_empty() {
            false => self.world.vpc_cidrs.clone(),
            true => (self.world.subnets.iter())
                .flat_map(|s| {
                    std::iter::once(IpNet::V4(s.ipv4)).chain(s.ipv6.iter().map(|n| IpNet::V6(*n)))
                })
                .collect(),
        };
        Ok(xml::el("vpcSet", xml::el("item", xml::vpc(VPC_ID, &cidrs))))
    }

    /// The named types' network limits (`InstanceType.N`), from the fake's table; a
    /// type it does not know is refused, as EC2 refuses one that does not exist.
    fn describe_instance_types(&self, q: &Query) -> Result<String, Fail> {
        let mut items = String::new();
        for ty in q.list("InstanceType") {
            let Some((ipv4, interfaces)) = network_limits(&ty) else {
                return Err(fail(
                    "InvalidInstanceType",
                    format!("The following supplied instance types do not exist: [{ty}]"),
                ));
            };
            let info = format!(
                "<instanceType>{ty}</instanceType><networkInfo><maximumNetworkInterfaces>{interfaces}\
                 </maximumNetworkInterfaces><ipv4AddressesPerInterface>{ipv4}</ipv4AddressesPerInterface>\
                 <ipv6AddressesPerInterface>{ipv4}</ipv6AddressesPerInterface><ipv6Supported>true\
                 </ipv6Supported></networkInfo>"
            );
            items.push_str(&xml::el("item", info));
        }
        Ok(xml::el("instanceTypeSet", items))
    }

    fn describe_instances(&self, q: &Query) -> Result<String, Fail> {
        let ids = q.list("InstanceId");
        let filters = q.filters();
        let mut items = String::new();
        for i in &self.world.instances {
            if !ids.is_empty() && !ids.contains(&i.id) {
                continue;
            }
            let mut keep = true;
            for (name, values) in &filters {
                keep &= match name.as_str() {
                    "private-dns-name" => values.contains(&i.private_dns_name),
                    "instance-id" => values.contains(&i.id),
                    other => {
                        return Err(fail(
                            "InvalidParameterValue",
                            format!("The filter '{other}' is invalid"),
                        ));
                    }
                };
            }
            if keep {
                let attached = (self.world.enis.iter())
                    .filter(|e| e.instance_id.as_deref() == Some(i.id.as_str()));
                items.push_str(&xml::el("item", xml::reservation(i, attached)));
            }
        }
        Ok(xml::el("reservationSet", items))
    }

    fn assign_private(&mut self, q: &Query) -> Result<String, Fail> {
        let idx = self.eni_index(q)?;
        let ips: Vec<Ipv4Addr> = q.addresses("PrivateIpAddress")?;
        if ips.is_empty() {
            return Err(fail(
                "MissingParameter",
                "Either PrivateIpAddresses or SecondaryPrivateIpAddressCount must be given",
            ));
        }
        let allow = q.get("AllowReassignment") == Some("true");
        let eni = self.world.enis[idx].clone();
        let subnet = self.subnet(&eni.subnet_id).cloned();
        let mut new = Vec::new();
        for ip in &ips {
            if !subnet.as_ref().is_some_and(|s| s.ipv4.contains(ip)) {
                return Err(fail(
                    "InvalidParameterValue",
                    format!("Address {ip} does not fall within the subnet's address range"),
                ));
            }
            if eni.ipv4.contains(ip) || self.remaps.iter().any(|r| r.ip == *ip && r.to == eni.id) {
                continue;
            }
            if let Some(other) = self
                .world
                .enis
                .iter()
                .find(|e| e.id != eni.id && e.ipv4.contains(ip))
            {
                if other.ipv4.first() == Some(ip) {
                    return Err(fail(
                        "InvalidIPAddress.InUse",
                        format!(
                            "Address {ip} is in use as the primary address of {}",
                            other.id
                        ),
                    ));
                }
                if !allow {
                    return Err(fail(
                        "InvalidIPAddress.InUse",
                        format!("Address {ip} is in use."),
                    ));
                }
            }
            new.push(*ip);
        }
        if eni.ipv4.len() + new.len() > self.limit_of(&eni) {
            return Err(fail(
                "PrivateIpAddressLimitExceeded",
                "Number of private addresses will exceed limit.",
            ));
        }
        let delay = Duration::from_millis(self.faults.remap_delay_ms);
        for ip in &new {
            let moving = self
                .world
                .enis
                .iter()
                .any(|e| e.id != eni.id && e.ipv4.contains(ip));
            if moving && !delay.is_zero() {
                self.remaps.push(Remap {
                    ip: *ip,
                    to: eni.id.clone(),
                    visible_at: Instant::now() + delay,
                });
            } else {
                for other in &mut self.world.enis {
                    other.ipv4.retain(|x| x != ip);
                }
                self.world.enis[idx].ipv4.push(*ip);
                let to = self.world.enis[idx].id.clone();
                self.eip_follows(*ip, Some(&to));
            }
        }
        let assigned = xml::items(&ips, |ip| xml::text("privateIpAddress", ip));
        Ok(xml::text("networkInterfaceId", &eni.id)
            + &xml::el("assignedPrivateIpAddressesSet", assigned)
            + &xml::text("return", true))
    }

    fn unassign_private(&mut self, q: &Query) -> Result<String, Fail> {
        let idx = self.eni_index(q)?;
        let ips: Vec<Ipv4Addr> = q.addresses("PrivateIpAddress")?;
        let eni = &mut self.world.enis[idx];
        for ip in &ips {
            if eni.ipv4.first() == Some(ip) {
                return Err(fail(
                    "InvalidParameterValue",
                    format!("The primary address {ip} cannot be unassigned"),
                ));
            }
            if !eni.ipv4.contains(ip) {
                return Err(fail(
                    "InvalidParameterValue",
                    format!(
                        "Some of the specified addresses are not assigned to interface {}",
                        eni.id
                    ),
                ));
            }
        }
        eni.ipv4.retain(|ip| !ips.contains(ip));
        for ip in ips {
            self.eip_follows(ip, None);
        }
        Ok("<return>true</return>".into())
    }

    /// An EIP associated with `ip` moves with it to the ENI `to`, or is disassociated
    /// when `ip` is unassigned (`None`).
    fn eip_follows(&mut self, ip: Ipv4Addr, to: Option<&str>) {
        for eip in &mut self.world.addresses {
            let Some(assoc) = &mut eip.association else {
                continue;
            };
            if assoc.private_ip != ip {
                continue;
            }
            match to {
                Some(eni) => assoc.eni = eni.to_owned(),
                None => eip.association = None,
            }
        }
    }

    fn describe_addresses(&self, q: &Query) -> Result<String, Fail> {
        let ids = q.list("AllocationId");
        if let Some(id) = ids
            .iter()
            .find(|id| !self.world.addresses.iter().any(|a| a.allocation_id == **id))
        {
            return Err(fail(
                "InvalidAllocationID.NotFound",
                format!("The allocation ID '{id}' does not exist"),
            ));
        }
        let filters = q.filters();
        let mut out = String::new();
        for eip in &self.world.addresses {
            if !ids.is_empty() && !ids.contains(&eip.allocation_id) {
                continue;
            }
            let keep = filters.iter().all(|(name, values)| match name.as_str() {
                "association-id" => eip
                    .association
                    .as_ref()
                    .is_some_and(|a| values.contains(&a.association_id)),
                "network-interface-id" => eip
                    .association
                    .as_ref()
                    .is_some_and(|a| values.contains(&a.eni)),
                "private-ip-address" => eip
                    .association
                    .as_ref()
                    .is_some_and(|a| values.contains(&a.private_ip.to_string())),
                tag if tag.starts_with("tag:") => eip
                    .tags
                    .iter()
                    .any(|(k, v)| k == &tag[4..] && values.contains(v)),
                _ => true,
            });
            if keep {
                out.push_str(&xml::el("item", xml::address(eip)));
            }
        }
        Ok(xml::el("addressesSet", out))
    }

    fn associate_address(&mut self, q: &Query) -> Result<String, Fail> {
        let id = q.get("AllocationId").ok_or_else(|| {
            fail(
                "MissingParameter",
                "The request must contain the parameter AllocationId",
            )
        })?;
        let at = (self.world.addresses.iter())
            .position(|a| a.allocation_id == id)
            .ok_or_else(|| {
                fail(
                    "InvalidAllocationID.NotFound",
                    format!("The allocation ID '{id}' does not exist"),
                )
            })?;
        let idx = self.eni_index(q)?;
        let eni = &self.world.enis[idx];
        let private: Ipv4Addr = match q.get("PrivateIpAddress") {
            Some(ip) => ip.parse().map_err(|_| {
                fail(
                    "InvalidParameterValue",
                    format!("Invalid value '{ip}' for PrivateIpAddress"),
                )
            })?,
            None => *eni
                .ipv4
                .first()
                .ok_or_else(|| fail("InvalidParameterValue", "The ENI has no address"))?,
        };
        if !eni.ipv4.contains(&private) {
            return Err(fail(
                "InvalidParameterValue",
                format!(
                    "The private IP address {private} is not assigned to the network interface {}",
                    eni.id
                ),
            ));
        }
        let eni_id = eni.id.clone();
        let reassociate = q.get("AllowReassociation") == Some("true");
        if let Some(current) = &self.world.addresses[at].association
            && !reassociate
            && (current.eni != eni_id || current.private_ip != private)
        {
            return Err(fail(
                "Resource.AlreadyAssociated",
                format!(
                    "resource {id} is already associated with associate-id {}",
                    current.association_id
                ),
            ));
        }
        self.created += 1;
        let association_id = format!("eipassoc-{:017x}", self.created);
        self.world.addresses[at].association = Some(super::EipAssociation {
            association_id: association_id.clone(),
            eni: eni_id,
            private_ip: private,
        });
        Ok(xml::text("return", true) + &xml::text("associationId", association_id))
    }

    fn disassociate_address(&mut self, q: &Query) -> Result<String, Fail> {
        let id = q.get("AssociationId").unwrap_or_default();
        let eip = (self.world.addresses.iter_mut())
            .find(|a| {
                a.association
                    .as_ref()
                    .is_some_and(|x| x.association_id == id)
            })
            .ok_or_else(|| {
                fail(
                    "InvalidAssociationID.NotFound",
                    format!("The association ID '{id}' does not exist"),
                )
            })?;
        eip.association = None;
        Ok("<return>true</return>".into())
    }

    fn route_table_index(&self, q: &Query) -> Result<usize, Fail> {
        let id = q.get("RouteTableId").unwrap_or_default();
        (self.world.route_tables.iter())
            .position(|t| t.id == id)
            .ok_or_else(|| {
                fail(
                    "InvalidRouteTableID.NotFound",
                    format!("The routeTable ID '{id}' does not exist"),
                )
            })
    }

    fn destination(q: &Query) -> Result<IpNet, Fail> {
        let text = (q
            .get("DestinationCidrBlock")
            .or_else(|| q.get("DestinationIpv6CidrBlock")))
        .ok_or_else(|| {
            fail(
                "MissingParameter",
                "The request must contain the parameter destinationCidrBlock",
            )
        })?;
        text.parse().map_err(|_| {
            fail(
                "InvalidParameterValue",
                format!("Value ({text}) for parameter destinationCidrBlock is invalid"),
            )
        })
    }

    fn describe_route_tables(&self, q: &Query) -> Result<String, Fail> {
        let ids = q.list("RouteTableId");
        if let Some(id) = ids
            .iter()
            .find(|id| !self.world.route_tables.iter().any(|t| t.id == **id))
        {
            return Err(fail(
                "InvalidRouteTableID.NotFound",
                format!("The routeTable ID '{id}' does not exist"),
            ));
        }
        let mut out = String::new();
        for table in &self.world.route_tables {
            if !ids.is_empty() && !ids.contains(&table.id) {
                continue;
            }
            out.push_str(&xml::el("item", xml::route_table(table, &self.world.enis)));
        }
        Ok(xml::el("routeTableSet", out))
    }

    /// CreateRoute (`replace` false) or ReplaceRoute, to an ENI.
    fn put_route(&mut self, q: &Query, replace: bool) -> Result<String, Fail> {
        let at = self.route_table_index(q)?;
        let destination = Self::destination(q)?;
        let idx = self.eni_index(q)?;
        let eni = self.world.enis[idx].id.clone();
        let table = &mut self.world.route_tables[at];
        let existing = table
            .routes
            .iter()
            .position(|r| r.destination == destination);
        let route = super::Route {
            destination,
            eni: Some(eni),
            gateway: None,
        };
        match (existing, replace) {
            (Some(_), false) => Err(fail(
                "RouteAlreadyExists",
                format!("The route identified by {destination} already exists."),
            )),
            (None, true) => Err(fail(
                "InvalidRoute.NotFound",
                format!(
                    "no route with destination-cidr-block {destination} in route table {}",
                    table.id
                ),
            )),
            (Some(i), true) => {
                table.routes[i] = route;
                Ok("<return>true</return>".into())
            }
            (None, false) => {
                table.routes.push(route);
                Ok("<return>true</return>".into())
            }
        }
    }

    fn delete_route(&mut self, q: &Query) -> Result<String, Fail> {
        let at = self.route_table_index(q)?;
        let destination = Self::destination(q)?;
        let table = &mut self.world.route_tables[at];
        let before = table.routes.len();
        table.routes.retain(|r| r.destination != destination);
        if table.routes.len() == before {
            return Err(fail(
                "InvalidRoute.NotFound",
                format!(
                    "no route with destination-cidr-block {destination} in route table {}",
                    table.id
                ),
            ));
        }
        Ok("<return>true</return>".into())
    }

    fn assign_ipv6(&mut self, q: &Query) -> Result<String, Fail> {
        let idx = self.eni_index(q)?;
        let ips: Vec<Ipv6Addr> = q.addresses("Ipv6Addresses")?;
        let eni = self.world.enis[idx].clone();
        let subnet = self.subnet(&eni.subnet_id).cloned();
        let mut new = Vec::new();
        for ip in &ips {
            if !subnet
                .as_ref()
                .is_some_and(|s| s.ipv6.iter().any(|n| n.contains(ip)))
            {
                return Err(fail(
                    "InvalidParameterValue",
                    format!("Address {ip} does not fall within the subnet's IPv6 ranges"),
                ));
            }
            if eni.ipv6.contains(ip) {
                continue;
            }
            if self
                .world
                .enis
                .iter()
                .any(|e| e.id != eni.id && e.ipv6.contains(ip))
            {
                return Err(fail(
                    "InvalidIPAddress.InUse",
                    format!("Address {ip} is in use."),
                ));
            }
            new.push(*ip);
        }
        if eni.ipv6.len() + new.len() > self.limit_of(&eni) {
            return Err(fail(
                "Ipv6AddressLimitExceeded",
                "Number of IPv6 addresses will exceed limit.",
            ));
        }
        self.world.enis[idx].ipv6.extend(new);
        let assigned: String = ips.iter().map(|ip| xml::text("item", ip)).collect();
        Ok(xml::el("assignedIpv6Addresses", assigned) + &xml::text("networkInterfaceId", &eni.id))
    }

    fn unassign_ipv6(&mut self, q: &Query) -> Result<String, Fail> {
        let idx = self.eni_index(q)?;
        let ips: Vec<Ipv6Addr> = q.addresses("Ipv6Addresses")?;
        let eni = &mut self.world.enis[idx];
        if let Some(ip) = ips.iter().find(|ip| !eni.ipv6.contains(ip)) {
            return Err(fail(
                "InvalidParameterValue",
                format!("Address {ip} is not assigned to interface {}", eni.id),
            ));
        }
        if let Some(ip) = ips.iter().find(|ip| eni.primary_ipv6 == Some(**ip)) {
            return Err(fail(
                "InvalidParameterValue",
                format!(
                    "The primary IPv6 address {ip} of interface {} cannot be unassigned",
                    eni.id
                ),
            ));
        }
        eni.ipv6.retain(|ip| !ips.contains(ip));
        let unassigned: String = ips.iter().map(|ip| xml::text("item", ip)).collect();
        Ok(xml::text("networkInterfaceId", &eni.id)
            + &xml::el("unassignedIpv6Addresses", unassigned))
    }
}

/// IPv4 addresses per ENI (the primary among them) and ENIs per instance, as EC2
/// publishes them for the types the tests name.
fn network_limits(instance_type: &str) -> Option<(usize, usize)> {
    let interfaces = match instance_type {
        "t3.medium" | "m5.large" | "c5.large" | "r5.large" => 3,
        "m5.xlarge" | "c5.xlarge" => 4,
        "m5.24xlarge" | "c5.24xlarge" => 15,
        _ => return None,
    };
    Some((addresses_per_eni(instance_type), interfaces))
}
