//! The EC2 calls the reclaimer makes, behind a narrow trait: one filtered describe
//! for the nodes' Multus ENIs, the two unassign actions, the two assign actions that
//! put back an address a pod claimed while its release was in flight, and, for the
//! address-range guard, the subnets' CIDRs and explicit CIDR reservations.
//!
//! The SDK client comes from `ipmgmt_common::aws`, the one place that sets timeouts and
//! retries. The describe keeps the SDK's retries. The changes make one attempt each
//! (`single_attempt`): the sweeper retries them itself, and reads the node's pods
//! again before every attempt, which no retry inside the SDK could do.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aws_sdk_ec2::types::{InstanceType, SubnetCidrReservationType};
use ipnet::IpNet;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::types::Filter;
use ipmgmt_common::aws::{Action, Ec2Error, NoCredentials, Remedy, sdk_error, strings};
use ipmgmt_common::aws::{NO_MANAGE_TAG, Tag};

use crate::guard::verdict::Subnet;

/// Where the reclaimer's policy lives, for error messages.
pub const IAM_POLICY: &str = "deploy/reclaimer-iam-policy.json";

/// Every EC2 action the controller calls (`Action::CONTROLLER`);
/// `deploy/reclaimer-iam-policy.json` allows exactly these (checked by a test).
pub const ACTIONS: [Action; 12] = Action::CONTROLLER;

/// The tag on an ENI the controller created for a node: `INSTANCE/DEVICE_INDEX`. An
/// ENI left unattached by a try that failed halfway is found by it and attached, not
/// made again.
pub const ATTACHED_FOR_TAG: &str = "ipmgmt.aws/attached-for";
/// The tag on ENIs a user made ahead for the controller to attach: the pool's name.
pub const POOL_TAG: &str = "ipmgmt.aws/pool";

/// Where a node's missing Multus ENI comes from (`--readiness-attach`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EniSource {
    /// Made in `subnet` with `security_groups` (none: the VPC's default group),
    /// tagged, and deleted with the instance.
    Create {
        subnet: String,
        security_groups: Vec<String>,
    },
    /// An `available` ENI tagged `ipmgmt.aws/pool=NAME` and `no_manage` (and the
    /// cluster tag), in `subnet` when one is named, else in the node's `zone` (an ENI
    /// attaches only in its own zone); it outlives the instance and returns to the
    /// pool.
    Pool {
        name: String,
        subnet: Option<String>,
        zone: Option<String>,
    },
}

/// EC2 accepts at most this many values in one filter.
const FILTER_VALUES: usize = 200;

/// A Multus ENI: tagged no_manage, attached to one of the cluster's instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultusEni {
    pub id: String,
    /// Lower case, as the pod's interface (an ipvlan slave) carries it.
    pub mac: String,
    pub instance: String,
    pub device_index: i32,
    pub subnet: String,
    /// The ENI's own addresses: its primary IPv4 address and primary IPv6 address.
    pub own: Vec<IpAddr>,
    /// Secondary private IPv4 addresses (the primary is the ENI's own).
    pub ipv4: Vec<Ipv4Addr>,
    /// IPv6 addresses but the ENI's primary IPv6 address, which stays with the ENI
    /// until it is detached.
    pub ipv6: Vec<Ipv6Addr>,
    /// Its attachment, and whether terminating the instance deletes it.
    pub attachment: Option<String>,
    pub delete_on_termination: bool,
    /// Made by node readiness for its instance (tagged `ipmgmt.aws/attached-for`).
    pub attached_by_controller: bool,
}

impl MultusEni {
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4
            .iter()
            .map(|v4| IpAddr::V4(*v4))
            .chain(self.ipv6.iter().map(|v6| IpAddr::V6(*v6)))
    }
}

/// The changes are one attempt each: no retry inside the SDK.
pub trait Ec2: Send + Sync {
    /// The ENIs tagged no_manage attached to these instances, device index 1 or more.
    fn multus_enis(
        &self,
        instances: &[String],
    ) -> impl Future<Output = Result<Vec<MultusEni>, Ec2Error>> + Send;
    /// Without reassignment: an address another ENI holds now is that ENI's.
    fn assign_ipv4(
        &self,
        eni: &str,
        ips: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn assign_ipv6(
        &self,
        eni: &str,
        ips: &[Ipv6Addr],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn unassign_ipv4(
        &self,
        eni: &str,
        ips: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn unassign_ipv6(
        &self,
        eni: &str,
        ips: &[Ipv6Addr],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// These subnets' CIDRs (IPv4 and associated IPv6) and explicit CIDR reservations;
    /// the ENIs' own addresses are left for the caller, who has the ENIs.
    fn subnets(&self, ids: &[String])
    -> impl Future<Output = Result<Vec<Subnet>, Ec2Error>> + Send;
    /// A Multus ENI from `source` attached to `instance` at `device_index`; its id.
    fn attach_multus_eni(
        &self,
        instance: &str,
        device_index: i32,
        source: &EniSource,
    ) -> impl Future<Output = Result<String, Ec2Error>> + Send;
    /// Deletes the ENIs the controller made (tagged `ipmgmt.aws/attached-for`) that
    /// are still unattached and were made for an instance none of `live` is: a try
    /// whose node went before the attachment. Returns their ids.
    fn delete_orphans(
        &self,
        live: &[String],
    ) -> impl Future<Output = Result<Vec<String>, Ec2Error>> + Send;
    /// Sets DeleteOnTermination on an ENI's attachment: one the controller made goes
    /// with its instance.
    fn keep_with_instance(
        &self,
        eni: &str,
        attachment: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// An explicit subnet CIDR reservation of `cidr` in `subnet`, described.
    fn reserve(
        &self,
        subnet: &str,
        cidr: IpNet,
        description: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}

#[derive(Clone, Debug)]
pub struct SdkEc2 {
    client: aws_sdk_ec2::Client,
    /// The cluster's tag, which its Multus ENIs also carry.
    cluster_tag: Option<Tag>,
    /// What a failed call's line tells its reader to do: the controller's operator,
    /// or the user running `ipmgmt check`.
    remedy: &'static Remedy,
}

/// The client's settings for one attempt of a change: the sweeper retries.
fn single_attempt() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default().retry_config(RetryConfig::disabled())
}

impl SdkEc2 {
    pub fn new(client: aws_sdk_ec2::Client) -> Self {
        SdkEc2 {
            client,
            cluster_tag: None,
            remedy: &REMEDY,
        }
    }

    /// Failed calls worded for `ipmgmt check`'s user, whose own identity makes them.
    pub fn for_check(mut self) -> Self {
        self.remedy = &CHECK_REMEDY;
        self
    }

    /// Only ENIs that also carry `tag`.
    pub fn only_tagged(mut self, tag: Option<Tag>) -> Self {
        self.cluster_tag = tag;
        self
    }

    /// How many IPv4 addresses (the primary among them) one ENI of each of these
    /// instance types may hold, by type (`ipmgmt check`'s free slots; the controller
    /// does not call it).
    pub async fn ipv4_per_interface(
        &self,
        types: &[String],
    ) -> Result<std::collections::BTreeMap<String, usize>, Ec2Error> {
        let mut out = std::collections::BTreeMap::new();
        for chunk in types.chunks(100) {
            let wanted = chunk.iter().map(|t| InstanceType::from(t.as_str()));
            let page = (self.client.describe_instance_types())
                .set_instance_types(Some(wanted.collect()))
                .send()
                .await
                .map_err(|e| {
                    let target = format!("of {}", chunk.join(", "));
                    sdk_error(Action::DescribeInstanceTypes, target, e, self.remedy)
                })?;
            for info in page.instance_types() {
                let (Some(ty), Some(n)) = (
                    info.instance_type(),
                    info.network_info()
                        .and_then(|n| n.ipv4_addresses_per_interface()),
                ) else {
                    continue;
                };
                out.insert(ty.as_str().to_owned(), usize::try_from(n).unwrap_or(0));
            }
        }
        Ok(out)
    }
}

fn filter(name: &str, values: Vec<String>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values))
        .build()
}

impl Ec2 for SdkEc2 {
    async fn multus_enis(&self, instances: &[String]) -> Result<Vec<MultusEni>, Ec2Error> {
        let mut out = Vec::new();
        for chunk in instances.chunks(FILTER_VALUES) {
            let mut token = None;
            loop {
                let page = (self.describe_multus_enis())
                    .filters(filter("attachment.instance-id", chunk.to_vec()))
                    .max_results(1000)
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            Action::DescribeNetworkInterfaces,
                            format!("of {} instances", chunk.len()),
                            e,
                            self.remedy,
                        )
                    })?;
                out.extend(page.network_interfaces().iter().filter_map(multus_eni));
                token = page.next_token().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn assign_ipv4(&self, eni: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        self.client
            .assign_private_ip_addresses()
            .network_interface_id(eni)
            .set_private_ip_addresses(Some(strings(ips)))
            .allow_reassignment(false)
            .customize()
            .config_override(single_attempt())
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk_error(Action::AssignPrivateIpAddresses, eni, e, self.remedy))
    }

    async fn assign_ipv6(&self, eni: &str, ips: &[Ipv6Addr]) -> Result<(), Ec2Error> {
        self.client
            .assign_ipv6_addresses()
            .network_interface_id(eni)
            .set_ipv6_addresses(Some(strings(ips)))
            .customize()
            .config_override(single_attempt())
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk_error(Action::AssignIpv6Addresses, eni, e, self.remedy))
    }

    async fn unassign_ipv4(&self, eni: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        self.client
            .unassign_private_ip_addresses()
            .network_interface_id(eni)
            .set_private_ip_addresses(Some(strings(ips)))
            .customize()
            .config_override(single_attempt())
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk_error(Action::UnassignPrivateIpAddresses, eni, e, self.remedy))
    }

    async fn unassign_ipv6(&self, eni: &str, ips: &[Ipv6Addr]) -> Result<(), Ec2Error> {
        self.client
            .unassign_ipv6_addresses()
            .network_interface_id(eni)
            .set_ipv6_addresses(Some(strings(ips)))
            .customize()
            .config_override(single_attempt())
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk_error(Action::UnassignIpv6Addresses, eni, e, self.remedy))
    }

    async fn attach_multus_eni(
        &self,
        instance: &str,
        device_index: i32,
        source: &EniSource,
    ) -> Result<String, Ec2Error> {
        let target = format!("{instance} at device index {device_index}");
        let attached_for = format!("{instance}/{device_index}");
        let request = self.describe_multus_enis();
        let request = match source {
            EniSource::Create { .. } => {
                let tag = format!("tag:{ATTACHED_FOR_TAG}");
                request.filters(filter(&tag, vec![attached_for.clone()]))
            }
            EniSource::Pool { name, subnet, zone } => {
                let tag = format!("tag:{POOL_TAG}");
                let request = request.filters(filter(&tag, vec![name.clone()]));
                match (subnet, zone) {
                    (Some(subnet), _) => request.filters(filter("subnet-id", vec![subnet.clone()])),
                    (None, Some(zone)) => {
                        request.filters(filter("availability-zone", vec![zone.clone()]))
                    }
                    (None, None) => request,
                }
            }
        };
        let found = (request.send().await)
            .map_err(|e| sdk_error(Action::DescribeNetworkInterfaces, &target, e, self.remedy))?;
        // Only an unattached one (filtered here: not every EC2 endpoint filters by status).
        let available = Some(&aws_sdk_ec2::types::NetworkInterfaceStatus::Available);
        let waiting = (found.network_interfaces().iter())
            .filter(|ni| ni.status() == available)
            .find_map(|ni| ni.network_interface_id());
        let eni = match (waiting, source) {
            (Some(id), _) => id.to_owned(),
            (None, EniSource::Pool { name, subnet, zone }) => {
                let cluster = (self.cluster_tag.as_ref())
                    .map(|t| format!(" and {}={}", t.key, t.value))
                    .unwrap_or_default();
                let place = match (subnet, zone) {
                    (Some(s), _) => format!(" in {s}"),
                    (None, Some(z)) => format!(" in {z}"),
                    (None, None) => String::new(),
                };
                return Err(Ec2Error {
                    action: Action::DescribeNetworkInterfaces,
                    target,
                    code: None,
                    detail: format!(
                        "no available ENI tagged {POOL_TAG}={name} and {NO_MANAGE_TAG}=true{cluster}{place}"
                    ),
                    hint: "add ENIs to the pool (aws ec2 create-network-interface, tagged so) or let the \
                           controller create them (subnets instead of pool)"
                        .into(),
                });
            }
            (
                None,
                EniSource::Create {
                    subnet,
                    security_groups,
                },
            ) => {
                self.create_multus_eni(instance, device_index, subnet, security_groups)
                    .await?
            }
        };
        let attachment = (self.client.attach_network_interface())
            .network_interface_id(&eni)
            .instance_id(instance)
            .device_index(device_index)
            .send()
            .await
            .map_err(|e| {
                let target = format!("{eni} to {target}");
                sdk_error(Action::AttachNetworkInterface, target, e, self.remedy)
            })?;
        // Should this fail, the next pass sees an attached ENI of the controller's
        // without it, and sets it then.
        if let (EniSource::Create { .. }, Some(id)) = (source, attachment.attachment_id()) {
            self.keep_with_instance(&eni, id).await?;
        }
        Ok(eni)
    }

    async fn delete_orphans(&self, live: &[String]) -> Result<Vec<String>, Ec2Error> {
        let request =
            (self.describe_multus_enis()).filters(filter("tag-key", vec![ATTACHED_FOR_TAG.into()]));
        let found = (request.send().await).map_err(|e| {
            sdk_error(
                Action::DescribeNetworkInterfaces,
                "made by the controller",
                e,
                self.remedy,
            )
        })?;
        let available = Some(&aws_sdk_ec2::types::NetworkInterfaceStatus::Available);
        let mut deleted = Vec::new();
        for ni in found.network_interfaces() {
            let made_for = (ni.tag_set().iter())
                .find(|t| t.key() == Some(ATTACHED_FOR_TAG))
                .and_then(|t| t.value())
                .and_then(|v| v.split('/').next());
            let (Some(id), Some(instance)) = (ni.network_interface_id(), made_for) else {
                continue;
            };
            if ni.status() != available || live.iter().any(|l| l == instance) {
                continue;
            }
            (self.client.delete_network_interface())
                .network_interface_id(id)
                .send()
                .await
                .map_err(|e| sdk_error(Action::DeleteNetworkInterface, id, e, self.remedy))?;
            deleted.push(id.to_owned());
        }
        Ok(deleted)
    }

    async fn keep_with_instance(&self, eni: &str, attachment: &str) -> Result<(), Ec2Error> {
        let change = aws_sdk_ec2::types::NetworkInterfaceAttachmentChanges::builder()
            .attachment_id(attachment)
            .delete_on_termination(true)
            .build();
        (self.client.modify_network_interface_attribute())
            .network_interface_id(eni)
            .attachment(change)
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk_error(Action::ModifyNetworkInterfaceAttribute, eni, e, self.remedy))
    }

    async fn reserve(&self, subnet: &str, cidr: IpNet, description: &str) -> Result<(), Ec2Error> {
        (self.client.create_subnet_cidr_reservation())
            .subnet_id(subnet)
            .cidr(cidr.to_string())
            .reservation_type(SubnetCidrReservationType::Explicit)
            .description(description)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                sdk_error(
                    Action::CreateSubnetCidrReservation,
                    format!("{cidr} in {subnet}"),
                    e,
                    self.remedy,
                )
            })
    }

    async fn subnets(&self, ids: &[String]) -> Result<Vec<Subnet>, Ec2Error> {
        let mut out = Vec::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let page = (self.client.describe_subnets())
                .set_subnet_ids(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| {
                    let target = format!("of {} subnets", chunk.len());
                    sdk_error(Action::DescribeSubnets, target, e, self.remedy)
                })?;
            for subnet in page.subnets() {
                let Some(id) = subnet.subnet_id() else {
                    continue;
                };
                let v6 = (subnet.ipv6_cidr_block_association_set().iter())
                    .filter(|a| {
                        a.ipv6_cidr_block_state()
                            .and_then(|s| s.state())
                            .map(|s| s.as_str())
                            == Some("associated")
                    })
                    .filter_map(|a| a.ipv6_cidr_block());
                let cidrs = subnet
                    .cidr_block()
                    .into_iter()
                    .chain(v6)
                    .filter_map(|c| c.parse().ok());
                let (explicit, prefix) = self.reservations(id).await?;
                out.push(Subnet {
                    id: id.to_owned(),
                    cidrs: cidrs.collect(),
                    reservations: explicit,
                    eni_addresses: Vec::new(),
                    prefix_reservations: prefix,
                });
            }
        }
        Ok(out)
    }
}

impl SdkEc2 {
    /// A describe of the ENIs this client may touch: tagged `no_manage`, and the
    /// cluster's tag when it has one.
    fn describe_multus_enis(
        &self,
    ) -> aws_sdk_ec2::operation::describe_network_interfaces::builders::DescribeNetworkInterfacesFluentBuilder
    {
        let request = (self.client.describe_network_interfaces())
            .filters(filter(&format!("tag:{NO_MANAGE_TAG}"), vec!["true".into()]));
        match &self.cluster_tag {
            Some(tag) => {
                request.filters(filter(&format!("tag:{}", tag.key), vec![tag.value.clone()]))
            }
            None => request,
        }
    }

    /// A new Multus ENI for `instance` at `device_index`, tagged at creation. The
    /// same client token for the same node and index: a create the SDK retries after
    /// it succeeded (a timeout, say) returns the same ENI, not a second.
    async fn create_multus_eni(
        &self,
        instance: &str,
        device_index: i32,
        subnet: &str,
        security_groups: &[String],
    ) -> Result<String, Ec2Error> {
        let target = format!("{instance} at device index {device_index}");
        let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
        let mut tags = vec![
            tag(NO_MANAGE_TAG, "true"),
            tag(ATTACHED_FOR_TAG, &format!("{instance}/{device_index}")),
        ];
        if let Some(cluster) = &self.cluster_tag {
            tags.push(tag(&cluster.key, &cluster.value));
        }
        let spec = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::NetworkInterface)
            .set_tags(Some(tags))
            .build();
        let made = (self.client.create_network_interface())
            .client_token(format!("ipmgmt-{instance}-{device_index}"))
            .subnet_id(subnet)
            .set_groups((!security_groups.is_empty()).then(|| security_groups.to_vec()))
            .description(format!(
                "ipmgmt: Multus ENI of {instance} at device index {device_index}"
            ))
            .tag_specifications(spec)
            .send()
            .await
            .map_err(|e| sdk_error(Action::CreateNetworkInterface, &target, e, self.remedy))?;
        (made
            .network_interface()
            .and_then(|n| n.network_interface_id()))
        .map(str::to_owned)
        .ok_or_else(|| Ec2Error {
            action: Action::CreateNetworkInterface,
            target,
            code: None,
            detail: "EC2 answered without the new ENI's id".into(),
            hint: "the next pass finds it by its tag".into(),
        })
    }

    /// A subnet's CIDR reservations: the explicit ones (what keeps the VPC CNI out of
    /// a range), and the prefix ones (prefix delegation's, which an explicit one may
    /// not overlap).
    async fn reservations(&self, subnet: &str) -> Result<(Vec<IpNet>, Vec<IpNet>), Ec2Error> {
        let (mut explicit, mut prefix) = (Vec::new(), Vec::new());
        let mut token = None;
        loop {
            let page = (self.client.get_subnet_cidr_reservations())
                .subnet_id(subnet)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| {
                    sdk_error(Action::GetSubnetCidrReservations, subnet, e, self.remedy)
                })?;
            let all = page
                .subnet_ipv4_cidr_reservations()
                .iter()
                .chain(page.subnet_ipv6_cidr_reservations());
            for r in all {
                let Some(cidr) = r.cidr().and_then(|c| c.parse::<IpNet>().ok()) else {
                    continue;
                };
                match r.reservation_type() {
                    Some(SubnetCidrReservationType::Explicit) => explicit.push(cidr),
                    _ => prefix.push(cidr),
                }
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok((explicit, prefix));
            }
        }
    }
}

/// Device index 0 is the node's own ENI, whatever its tags say: never a candidate,
/// nor is any ENI's primary address, IPv4 or IPv6. Read as the IP manager reads ENIs.
fn multus_eni(ni: &aws_sdk_ec2::types::NetworkInterface) -> Option<MultusEni> {
    let eni = ipmgmt_common::aws::to_eni(ni)?;
    if eni.device_index < 1 || !eni.no_manage() {
        return None;
    }
    let primary = eni.primary_ipv4;
    let own = (primary.map(IpAddr::V4).into_iter())
        .chain(eni.primary_ipv6.map(IpAddr::V6))
        .collect();
    let attachment = ni.attachment();
    let attached_by_controller = (ni.tag_set().iter()).any(|t| t.key() == Some(ATTACHED_FOR_TAG));
    Some(MultusEni {
        attachment: attachment
            .and_then(|a| a.attachment_id())
            .map(str::to_owned),
        delete_on_termination: attachment
            .and_then(|a| a.delete_on_termination())
            .unwrap_or(false),
        attached_by_controller,
        mac: eni.mac.clone(),
        instance: eni.instance_id?,
        device_index: eni.device_index,
        subnet: eni.subnet_id.clone(),
        own,
        ipv4: eni
            .ipv4
            .into_iter()
            .filter(|v4| Some(*v4) != primary)
            .collect(),
        ipv6: eni
            .ipv6
            .into_iter()
            .filter(|v6| Some(*v6) != eni.primary_ipv6)
            .collect(),
        id: eni.id,
    })
}

/// What `ipmgmt check`'s user should do: their identity made the call.
const CHECK_REMEDY: Remedy = Remedy {
    refused: check_hint,
    credentials: check_credentials,
};

fn check_hint(action: Action, code: Option<&str>) -> String {
    match code {
        Some("UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException") => format!(
            "the AWS identity you run the check as lacks ec2:{action}: attach deploy/check-iam-policy.json \
             to it, or run the check with a profile that has it (AWS_PROFILE)"
        ),
        Some("AuthFailure" | "InvalidClientTokenId" | "ExpiredToken" | "RequestExpired") => {
            "AWS refused your credentials: refresh them (aws sso login, a new session) or pick another \
             profile (AWS_PROFILE)"
                .into()
        }
        Some(_) => "see the EC2 API reference for this error code".into(),
        None => "EC2 could not be reached: check AWS_REGION and your network (or AWS_ENDPOINT_URL_EC2)".into(),
    }
}

fn check_credentials(_: NoCredentials) -> &'static str {
    "the SDK found no AWS credentials: set AWS_PROFILE, or the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
     of an identity with deploy/check-iam-policy.json"
}

/// The reclaimer's remedies.
const REMEDY: Remedy = Remedy {
    refused: hint,
    credentials,
};

/// What to do about credentials the reclaimer could not get, by what STS said.
fn credentials(why: NoCredentials) -> &'static str {
    match why {
        NoCredentials::Expired => {
            "STS refused the reclaimer's web identity token as expired: kubelet renews the projected \
             token long before it expires, so check the node's clock"
        }
        NoCredentials::Untrusted => {
            "STS refused to let the reclaimer's service account assume its role: check that role's trust \
             policy for this cluster's OIDC provider and the chart's reclaimer service account"
        }
        NoCredentials::Missing => {
            "the SDK found no AWS credentials: set the chart's reclaimer.roleArn to a role with \
             deploy/reclaimer-iam-policy.json (IRSA), or give the node's role that policy and let pods \
             reach IMDS (hop limit 2)"
        }
    }
}

fn hint(action: Action, code: Option<&str>) -> String {
    match code {
        Some("UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException")
            if action.opt_in().is_some() =>
        {
            format!(
                "the reclaimer's IAM role lacks ec2:{action}, which {} needs: attach the policy in \
                 {} to the role, or turn the option off",
                action.opt_in().unwrap_or_default(),
                action.opt_in_policy().unwrap_or_default()
            )
        }
        Some("UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException") => format!(
            "the reclaimer's IAM role lacks ec2:{action} (unassign is allowed only on ENIs tagged \
             {NO_MANAGE_TAG}=true): attach the policy in {IAM_POLICY} to the role"
        ),
        Some("AuthFailure" | "InvalidClientTokenId" | "ExpiredToken") => {
            "AWS rejected the credentials: check the reclaimer's role ARN and its trust policy (IRSA) \
             or the Pod Identity association"
                .into()
        }
        Some("RequestLimitExceeded" | "Throttling" | "ThrottlingException") => {
            "EC2 throttled the account past the retry budget: the next sweep goes on where this one stopped"
                .into()
        }
        Some("InvalidNetworkInterfaceID.NotFound") => {
            "the ENI is gone (its node was terminated): nothing to release".into()
        }
        Some("InvalidParameterValue" | "InvalidIPAddress.NotFound") => match action {
            Action::CreateSubnetCidrReservation => {
                "EC2 refused the reservation (one overlapping it, made meanwhile, or the subnet's limit): \
                 the guard asks again after its interval; or reserve the range by hand"
                    .into()
            }
            Action::AssignPrivateIpAddresses | Action::AssignIpv6Addresses => {
                "EC2 refused the address on that ENI: check the ENI's subnet and its address limit".into()
            }
            _ => "the address is no longer on that ENI: another ENI took it, or it was released already"
                .into(),
        },
        Some("InvalidIPAddress.InUse") => {
            "another ENI holds the address now, which makes it that ENI's: nothing to put back".into()
        }
        Some("PrivateIpAddressLimitExceeded" | "Ipv6AddressLimitExceeded") => {
            "the ENI is full: free an address on it, then the pod's own IP manager assigns it again".into()
        }
        Some(_) => "see the EC2 API reference for this error code".into(),
        None => "EC2 could not be reached or did not answer: check the reclaimer's egress to the EC2 \
                 endpoint and AWS_ENDPOINT_URL_EC2"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{
        NetworkInterface, NetworkInterfaceAttachment, NetworkInterfaceIpv6Address,
        NetworkInterfacePrivateIpAddress, Tag,
    };

    fn ni(device_index: i32, tagged: bool) -> NetworkInterface {
        let mut b = NetworkInterface::builder()
            .network_interface_id("eni-1")
            .attachment(
                NetworkInterfaceAttachment::builder()
                    .device_index(device_index)
                    .instance_id("i-1")
                    .build(),
            )
            .private_ip_addresses(
                NetworkInterfacePrivateIpAddress::builder()
                    .private_ip_address("10.0.4.10")
                    .primary(true)
                    .build(),
            )
            .private_ip_addresses(
                NetworkInterfacePrivateIpAddress::builder()
                    .private_ip_address("10.0.4.66")
                    .primary(false)
                    .build(),
            )
            .ipv6_addresses(
                NetworkInterfaceIpv6Address::builder()
                    .ipv6_address("2001:db8::10")
                    .is_primary_ipv6(true)
                    .build(),
            )
            .ipv6_addresses(
                NetworkInterfaceIpv6Address::builder()
                    .ipv6_address("2001:db8::100")
                    .build(),
            );
        if tagged {
            b = b.tag_set(Tag::builder().key(NO_MANAGE_TAG).value("true").build());
        }
        b.build()
    }

    /// A client whose endpoint refuses connections, with the given credentials.
    fn unreachable(
        credentials: impl aws_credential_types::provider::ProvideCredentials + 'static,
    ) -> SdkEc2 {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("eu-west-1"))
            .endpoint_url("http://127.0.0.1:9")
            .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
            .credentials_provider(credentials)
            .build();
        SdkEc2::new(aws_sdk_ec2::Client::from_conf(config))
    }

    #[derive(Debug)]
    struct NoCredentials;

    impl aws_credential_types::provider::ProvideCredentials for NoCredentials {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let none = aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            );
            aws_credential_types::provider::future::ProvideCredentials::ready(Err(none))
        }
    }

    /// Each of the five calls, failed.
    async fn failures(ec2: &SdkEc2) -> [Ec2Error; 5] {
        let (v4, v6) = (
            "10.0.4.66".parse().unwrap(),
            "2001:db8::100".parse().unwrap(),
        );
        [
            ec2.multus_enis(&["i-1".into()]).await.unwrap_err(),
            ec2.unassign_ipv4("eni-1", &[v4]).await.unwrap_err(),
            ec2.unassign_ipv6("eni-1", &[v6]).await.unwrap_err(),
            ec2.assign_ipv4("eni-1", &[v4]).await.unwrap_err(),
            ec2.assign_ipv6("eni-1", &[v6]).await.unwrap_err(),
        ]
    }

    #[tokio::test]
    async fn no_answer_and_missing_credentials_each_get_their_own_remedy() {
        let keys = aws_credential_types::Credentials::new("AKIDTEST", "secret", None, None, "t");
        for e in failures(&unreachable(keys)).await {
            assert_eq!(e.code, None);
            assert!(e.hint.contains("the reclaimer's egress"), "{e}");
        }
        for e in failures(&unreachable(NoCredentials)).await {
            assert!(e.to_string().contains("found no AWS credentials"), "{e}");
            assert!(!e.hint.contains("egress"), "{e}");
            // The reclaimer's own role and chart value, not the IP manager's.
            assert!(e.hint.contains("reclaimer.roleArn"), "{e}");
            assert!(!e.hint.contains("ipmgmt.aws/role-arn"), "{e}");
        }
    }

    #[test]
    fn the_primary_addresses_and_the_primary_eni_are_never_candidates() {
        let eni = multus_eni(&ni(1, true)).unwrap();
        assert_eq!(eni.ipv4, ["10.0.4.66".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(
            eni.ipv6,
            ["2001:db8::100".parse::<Ipv6Addr>().unwrap()],
            "the primary IPv6 address stays with its ENI"
        );
        assert_eq!(eni.instance, "i-1");
        let own: Vec<IpAddr> = ["10.0.4.10", "2001:db8::10"]
            .map(|a| a.parse().unwrap())
            .into();
        assert_eq!(eni.own, own, "the guard keeps ranges off them");
        assert_eq!(multus_eni(&ni(0, true)), None);
        assert_eq!(multus_eni(&ni(1, false)), None);
    }

    fn actions_of(policy: &str) -> Vec<(String, serde_json::Value)> {
        let policy: serde_json::Value = serde_json::from_str(policy).unwrap();
        let mut allowed = Vec::new();
        for statement in policy["Statement"].as_array().unwrap() {
            let actions: Vec<String> = match &statement["Action"] {
                serde_json::Value::String(a) => vec![a.clone()],
                list => serde_json::from_value(list.clone()).unwrap(),
            };
            allowed.extend(actions.into_iter().map(|a| (a, statement.clone())));
        }
        allowed
    }

    #[test]
    fn the_policies_allow_exactly_the_calls_made_and_change_only_multus_enis() {
        let base = actions_of(include_str!("../../deploy/reclaimer-iam-policy.json"));
        let mut opt_in = actions_of(include_str!(
            "../../deploy/reclaimer-reserve-iam-policy.json"
        ));
        opt_in.extend(actions_of(include_str!(
            "../../deploy/reclaimer-attach-iam-policy.json"
        )));
        // Tags asked for at creation are authorized as ec2:CreateTags, which the
        // controller never calls by itself: allowed only for the creating call.
        opt_in.retain(|(a, statement)| {
            a != "ec2:CreateTags"
                || statement["Condition"]["StringEquals"]["ec2:CreateAction"]
                    != "CreateNetworkInterface"
        });
        for (a, statement) in &base {
            let action = ACTIONS
                .iter()
                .find(|x| format!("ec2:{x}") == *a)
                .unwrap_or_else(|| panic!("{a} is allowed but never called"));
            assert_eq!(action.opt_in(), None, "{a} belongs in its opt-in policy");
            if action.changes_an_eni() {
                assert_eq!(
                    statement["Condition"]["StringEquals"]
                        [format!("ec2:ResourceTag/{NO_MANAGE_TAG}")],
                    "true",
                    "{a} must be limited to ENIs tagged {NO_MANAGE_TAG}"
                );
            }
        }
        for (a, statement) in &opt_in {
            let action = ACTIONS.iter().find(|x| format!("ec2:{x}") == *a);
            assert!(
                action.is_some_and(|x| x.opt_in().is_some()),
                "{a} is in an opt-in policy but is no opt-in call"
            );
            // What changes an ENI or makes one is for Multus ENIs only.
            let on_enis = statement["Resource"] == "arn:aws:ec2:*:*:network-interface/*";
            if on_enis && a != "ec2:CreateSubnetCidrReservation" {
                let condition = &statement["Condition"]["StringEquals"];
                let tag = NO_MANAGE_TAG;
                assert!(
                    condition[format!("ec2:ResourceTag/{tag}")] == "true"
                        || condition[format!("aws:RequestTag/{tag}")] == "true",
                    "{a} on network interfaces must be limited to ENIs tagged {tag}"
                );
            }
        }
        let mut allowed: Vec<String> = base.into_iter().chain(opt_in).map(|(a, _)| a).collect();
        allowed.sort();
        allowed.dedup();
        let mut called: Vec<String> = ACTIONS.iter().map(|a| format!("ec2:{a}")).collect();
        called.sort();
        assert_eq!(allowed, called);
    }

    #[test]
    fn a_refusal_names_the_permission_and_the_policy() {
        let line = Ec2Error {
            action: Action::UnassignPrivateIpAddresses,
            target: "eni-1".into(),
            code: Some("UnauthorizedOperation".into()),
            detail: "You are not authorized".into(),
            hint: hint(
                Action::UnassignPrivateIpAddresses,
                Some("UnauthorizedOperation"),
            ),
        }
        .to_string();
        assert!(
            line.starts_with("UnassignPrivateIpAddresses eni-1: UnauthorizedOperation: "),
            "{line}"
        );
        assert!(
            line.contains("ec2:UnassignPrivateIpAddresses") && line.contains(IAM_POLICY),
            "{line}"
        );
    }
}
