//! `ipmgmt check`'s IAM section: each action the IP manager and the controller call,
//! tried with the role's own credentials (a named AWS profile) against a Multus ENI,
//! so that a missing permission shows here and not in a pod's `Init:Error`.
//!
//! EC2 decides whether the caller may act before it looks at what is asked. The
//! describe calls take `DryRun`: EC2 answers `DryRunOperation` when the caller is
//! allowed and `UnauthorizedOperation` when not. The four address calls take no
//! `DryRun`, so each asks for something EC2 refuses once it has let the caller in: an
//! address outside the ENI's subnet to assign, the ENI's own primary address (or an
//! address outside its subnet) to unassign. Either way nothing changes.

use std::net::{Ipv4Addr, Ipv6Addr};

use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use ipmgmt_common::aws::{Action, cause};
use ipnet::IpNet;

use super::Section;
use crate::ec2::MultusEni;

/// Whose permissions are tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Manager,
    Controller,
}

impl Role {
    /// What the role's component calls.
    pub fn actions(self) -> &'static [Action] {
        match self {
            Role::Manager => &Action::MANAGER,
            Role::Controller => &Action::CONTROLLER,
        }
    }

    /// The policy that grants `action` to the role: its own, or the opt-in one.
    pub fn policy_for(self, action: Action) -> &'static str {
        match (self, action.opt_in_policy()) {
            (Role::Manager, _) => "deploy/iam-policy.json",
            (Role::Controller, None) => "deploy/reclaimer-iam-policy.json",
            (Role::Controller, Some(policy)) => policy,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Manager => "the IP manager's role",
            Role::Controller => "the controller's role",
        }
    }
}

/// `manager=PROFILE` or `controller=PROFILE`, as `--iam-profile` takes it.
pub fn role_profile(arg: &str) -> Result<(Role, String), String> {
    let (role, profile) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not ROLE=PROFILE (manager=… or controller=…)"))?;
    let role = match role {
        "manager" => Role::Manager,
        "controller" => Role::Controller,
        other => return Err(format!("unknown role {other:?}: manager or controller")),
    };
    match profile.is_empty() {
        true => Err(format!("{arg:?} names no profile")),
        false => Ok((role, profile.to_owned())),
    }
}

/// Where the address calls are tried: a Multus ENI, and addresses EC2 refuses for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub eni: String,
    pub subnet: String,
    /// The instance the ENI is attached to, and the attachment.
    instance: String,
    attachment: Option<String>,
    delete_on_termination: bool,
    /// The ENI's primary IPv4 address, which EC2 never unassigns.
    primary: Option<Ipv4Addr>,
    /// Addresses outside the ENI's subnet, which EC2 never assigns to it.
    outside_v4: Ipv4Addr,
    outside_v6: Ipv6Addr,
}

impl Target {
    /// `eni`, whose subnet has `cidrs`.
    pub fn new(eni: &MultusEni, cidrs: &[IpNet]) -> Target {
        let primary = eni.own.iter().find_map(|a| match a {
            std::net::IpAddr::V4(v4) => Some(*v4),
            std::net::IpAddr::V6(_) => None,
        });
        let outside_v4 = match cidrs.iter().find_map(|c| match c {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        }) {
            // The first address past the subnet, or the last before it at the top
            // of the address space.
            Some(n) => match u32::from(n.broadcast()).checked_add(1) {
                Some(after) => Ipv4Addr::from(after),
                None => Ipv4Addr::from(u32::from(n.network()) - 1),
            },
            None => Ipv4Addr::new(192, 0, 2, 1),
        };
        let outside_v6 = match cidrs.iter().find_map(|c| match c {
            IpNet::V6(n) => Some(*n),
            IpNet::V4(_) => None,
        }) {
            // The first address of the next block of the subnet's size.
            Some(n) => {
                let size = 1u128
                    .checked_shl(128 - u32::from(n.prefix_len()))
                    .unwrap_or(0);
                let base = u128::from(n.network());
                Ipv6Addr::from(base.checked_add(size).unwrap_or(base.wrapping_sub(size)) | 1)
            }
            // A subnet without IPv6 takes no IPv6 address at all.
            None => "2001:db8::1".parse().expect("an IPv6 address"),
        };
        Target {
            eni: eni.id.clone(),
            subnet: eni.subnet.clone(),
            instance: eni.instance.clone(),
            attachment: eni.attachment.clone(),
            delete_on_termination: eni.delete_on_termination,
            primary,
            outside_v4,
            outside_v6,
        }
    }
}

/// What EC2 said to one try.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Allowed,
    /// EC2's message.
    Denied(String),
    /// The profile's credentials were refused, or none were found: no action can be
    /// tried with them.
    Unusable(String),
    /// No verdict: throttled, unreachable, or an answer the try did not expect.
    Unknown(String),
}

/// What one answer means. `refused_is_allowed`: the try asked for something EC2
/// refuses after authorizing, so any refusal but an authorization one says "allowed".
fn answer<T, E>(result: Result<T, SdkError<E>>, refused_is_allowed: bool) -> Answer
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let err = match result {
        Ok(_) => return Answer::Allowed,
        Err(err) => err,
    };
    let SdkError::ServiceError(service) = &err else {
        // No answer from EC2: the credentials could not be had, or EC2 could not be
        // reached; only the first makes every other try of the role pointless.
        let credentials = ipmgmt_common::aws::is_credentials_failure(&err);
        return match credentials {
            true => Answer::Unusable(cause(&err)),
            false => Answer::Unknown(cause(&err)),
        };
    };
    let code = service.err().code().unwrap_or("no code");
    let message = service.err().message().unwrap_or("no message");
    match code {
        "DryRunOperation" => Answer::Allowed,
        "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" => {
            Answer::Denied(format!("{code}: {message}"))
        }
        "AuthFailure"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "ExpiredToken"
        | "RequestExpired" => Answer::Unusable(format!("{code}: {message}")),
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "InternalError"
        | "Unavailable" => Answer::Unknown(format!("{code}: {message}")),
        // Not the ENI or the subnet the probe named (another region, say): IAM never
        // looked at the resource, so nothing is known.
        c if c.ends_with(".NotFound") || c.ends_with(".Malformed") => {
            Answer::Unknown(format!("{code}: {message}"))
        }
        _ if refused_is_allowed => Answer::Allowed,
        _ => Answer::Unknown(format!("{code}: {message}")),
    }
}

/// Tries `action` with `client`; `None` when it needs a target and there is none.
async fn try_action(
    client: &aws_sdk_ec2::Client,
    action: Action,
    target: Option<&Target>,
) -> Option<Answer> {
    Some(match action {
        Action::DescribeInstances => answer(
            client.describe_instances().dry_run(true).send().await,
            false,
        ),
        Action::DescribeInstanceTypes => answer(
            client.describe_instance_types().dry_run(true).send().await,
            false,
        ),
        Action::DescribeNetworkInterfaces => answer(
            client
                .describe_network_interfaces()
                .dry_run(true)
                .send()
                .await,
            false,
        ),
        Action::DescribeSubnets => {
            answer(client.describe_subnets().dry_run(true).send().await, false)
        }
        Action::DescribeVpcs => answer(client.describe_vpcs().dry_run(true).send().await, false),
        Action::DescribeAddresses => answer(
            client.describe_addresses().dry_run(true).send().await,
            false,
        ),
        Action::DescribeRouteTables => answer(
            client.describe_route_tables().dry_run(true).send().await,
            false,
        ),
        // A floating address's EIP and route tables are the workload's, which the check
        // does not know.
        Action::AssociateAddress
        | Action::DisassociateAddress
        | Action::CreateRoute
        | Action::ReplaceRoute => return None,
        Action::GetSubnetCidrReservations => answer(
            (client.get_subnet_cidr_reservations())
                .subnet_id(&target?.subnet)
                .dry_run(true)
                .send()
                .await,
            false,
        ),
        Action::CreateSubnetCidrReservation => {
            let t = target?;
            answer(
                (client.create_subnet_cidr_reservation())
                    .subnet_id(&t.subnet)
                    .cidr(format!("{}/32", t.outside_v4))
                    .reservation_type(aws_sdk_ec2::types::SubnetCidrReservationType::Explicit)
                    .dry_run(true)
                    .send()
                    .await,
                false,
            )
        }
        // The node-attachment calls with DryRun, as the controller sends them: a new
        // Multus ENI tagged at creation (which IAM also checks as ec2:CreateTags), an
        // attachment of the Multus ENI, its DeleteOnTermination.
        Action::CreateNetworkInterface => {
            let t = target?;
            let tag = aws_sdk_ec2::types::Tag::builder()
                .key(ipmgmt_common::aws::NO_MANAGE_TAG)
                .value("true")
                .build();
            let spec = aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::NetworkInterface)
                .tags(tag)
                .build();
            answer(
                (client.create_network_interface())
                    .subnet_id(&t.subnet)
                    .tag_specifications(spec)
                    .dry_run(true)
                    .send()
                    .await,
                false,
            )
        }
        Action::AttachNetworkInterface => {
            let t = target?;
            answer(
                (client.attach_network_interface())
                    .network_interface_id(&t.eni)
                    .instance_id(&t.instance)
                    .device_index(1)
                    .dry_run(true)
                    .send()
                    .await,
                false,
            )
        }
        Action::DeleteNetworkInterface => {
            let t = target?;
            answer(
                (client.delete_network_interface())
                    .network_interface_id(&t.eni)
                    .dry_run(true)
                    .send()
                    .await,
                false,
            )
        }
        Action::ModifyNetworkInterfaceAttribute => {
            let t = target?;
            // The Multus ENI's own attachment, left as it is: a dry run.
            let change = aws_sdk_ec2::types::NetworkInterfaceAttachmentChanges::builder()
                .set_attachment_id(t.attachment.clone())
                .delete_on_termination(t.delete_on_termination)
                .build();
            answer(
                (client.modify_network_interface_attribute())
                    .network_interface_id(&t.eni)
                    .attachment(change)
                    .dry_run(true)
                    .send()
                    .await,
                false,
            )
        }
        Action::AssignPrivateIpAddresses => {
            let t = target?;
            answer(
                (client.assign_private_ip_addresses())
                    .network_interface_id(&t.eni)
                    .private_ip_addresses(t.outside_v4.to_string())
                    .send()
                    .await,
                true,
            )
        }
        Action::UnassignPrivateIpAddresses => {
            let t = target?;
            let address = t.primary.unwrap_or(t.outside_v4);
            answer(
                (client.unassign_private_ip_addresses())
                    .network_interface_id(&t.eni)
                    .private_ip_addresses(address.to_string())
                    .send()
                    .await,
                true,
            )
        }
        Action::AssignIpv6Addresses => {
            let t = target?;
            answer(
                (client.assign_ipv6_addresses())
                    .network_interface_id(&t.eni)
                    .ipv6_addresses(t.outside_v6.to_string())
                    .send()
                    .await,
                true,
            )
        }
        Action::UnassignIpv6Addresses => {
            let t = target?;
            answer(
                (client.unassign_ipv6_addresses())
                    .network_interface_id(&t.eni)
                    .ipv6_addresses(t.outside_v6.to_string())
                    .send()
                    .await,
                true,
            )
        }
    })
}

/// An EC2 client with only `profile`'s credentials, built as the check's own.
async fn client_for(profile: &str, region: Option<&Region>) -> aws_sdk_ec2::Client {
    let mut loader =
        ipmgmt_common::aws::with_profile(ipmgmt_common::aws::loader(super::RETRIES), profile);
    // The check's own region, where the ENI it tries against is, whatever the
    // profile's says.
    if let Some(region) = region {
        loader = loader.region(region.clone());
    }
    let sdk = loader.load().await;
    ipmgmt_common::aws::ec2_client(&sdk, &ipmgmt_common::aws::Attempts::default())
}

/// Each role's actions tried with its profile's credentials, the address calls on
/// `target`; an opt-in action only when the controller runs with its flag
/// (`opted_in`).
pub async fn judge(
    profiles: &[(Role, String)],
    target: Option<&Target>,
    opted_in: &[Action],
    region: Option<&Region>,
    section: &mut Section,
) {
    if profiles.is_empty() {
        section.skip(
            "not tried: pass --iam-profile manager=PROFILE and --iam-profile controller=PROFILE, \
             AWS profiles whose credentials are those roles'",
        );
        return;
    }
    for (role, profile) in profiles {
        let who = format!("{} (profile {profile})", role.name());
        let client = client_for(profile, region).await;
        let (mut allowed, mut untried) = (Vec::new(), Vec::new());
        let off: Vec<&str> = (role.actions().iter())
            .filter(|a| a.opt_in().is_some() && !opted_in.contains(a))
            .map(|a| a.name())
            .collect();
        for &action in role.actions() {
            if off.contains(&action.name()) {
                continue;
            }
            let on = match (action.changes_an_eni(), target) {
                (true, Some(t)) => format!(" on {}", t.eni),
                _ => String::new(),
            };
            match try_action(&client, action, target).await {
                None => untried.push(action.name()),
                Some(Answer::Allowed) => allowed.push(action.name()),
                Some(Answer::Denied(why)) => {
                    let scope = match action {
                        Action::CreateNetworkInterface => {
                            "with the request tag node.k8s.amazonaws.com/no_manage=true (and ec2:CreateTags \
                             at creation)"
                        }
                        Action::AttachNetworkInterface
                        | Action::ModifyNetworkInterfaceAttribute
                        | Action::DeleteNetworkInterface => {
                            "on network interfaces tagged node.k8s.amazonaws.com/no_manage=true and on instances"
                        }
                        a if a.changes_an_eni() => {
                            "on network interfaces tagged node.k8s.amazonaws.com/no_manage=true"
                        }
                        _ => "on *",
                    };
                    section.fail(
                        format!("{who} may not call ec2:{action}{on} ({why})"),
                        format!(
                            "grant ec2:{action} {scope}, as {} does",
                            role.policy_for(action)
                        ),
                    );
                }
                Some(Answer::Unusable(why)) => {
                    section.fail(
                        format!("{who}: its credentials do not work: {why}"),
                        "check the profile in your AWS config (AWS_CONFIG_FILE, \
                         AWS_SHARED_CREDENTIALS_FILE): it names the role's credentials or its role_arn",
                    );
                    allowed.clear();
                    untried.clear();
                    break;
                }
                Some(Answer::Unknown(why)) => section.fail(
                    format!("{who}: ec2:{action} could not be tried: {why}"),
                    "run the check again; a lasting error names what EC2 refused",
                ),
            }
        }
        if !allowed.is_empty() {
            let on = match target {
                Some(t) if role.actions().iter().any(|a| a.changes_an_eni()) => {
                    format!(" (the address calls on {})", t.eni)
                }
                _ => String::new(),
            };
            section.pass(format!("{who} may call {}{on}", allowed.join(", ")));
        }
        if !untried.is_empty() {
            section.skip(format!(
                "{who}: {} not tried: no Multus ENI to try them on",
                untried.join(", ")
            ));
        }
        if !off.is_empty() {
            section.skip(format!(
                "{who}: {} not tried: the controller does not run with {}",
                off.join(", "),
                (role.actions().iter())
                    .filter_map(|a| a.opt_in().filter(|_| off.contains(&a.name())))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_name_their_policies() {
        assert_eq!(
            role_profile("manager=ipmgmt-manager"),
            Ok((Role::Manager, "ipmgmt-manager".to_owned()))
        );
        assert_eq!(
            role_profile("controller=x").map(|(r, _)| r.policy_for(Action::DescribeSubnets)),
            Ok("deploy/reclaimer-iam-policy.json")
        );
        assert_eq!(
            Role::Controller.policy_for(Action::CreateSubnetCidrReservation),
            "deploy/reclaimer-reserve-iam-policy.json"
        );
        assert!(
            role_profile("manager")
                .unwrap_err()
                .contains("ROLE=PROFILE")
        );
        assert!(
            role_profile("webhook=x")
                .unwrap_err()
                .contains("unknown role")
        );
        assert!(role_profile("manager=").is_err());
    }

    #[test]
    fn the_probe_addresses_are_never_the_enis_to_take() {
        let eni = MultusEni {
            id: "eni-1".into(),
            mac: String::new(),
            instance: "i-1".into(),
            device_index: 1,
            subnet: "subnet-1".into(),
            own: vec![
                "10.0.4.10".parse().unwrap(),
                "2600:1f14::10".parse().unwrap(),
            ],
            ipv4: vec![],
            ipv6: vec![],
            attachment: Some("eni-attach-1".into()),
            delete_on_termination: false,
            attached_by_controller: false,
        };
        let cidrs: Vec<IpNet> = vec![
            "10.0.4.0/24".parse().unwrap(),
            "2600:1f14::/64".parse().unwrap(),
        ];
        let t = Target::new(&eni, &cidrs);
        assert_eq!(t.primary, Some("10.0.4.10".parse().unwrap()));
        assert_eq!(t.outside_v4, "10.0.5.0".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            t.outside_v6,
            "2600:1f14:0:1::1".parse::<Ipv6Addr>().unwrap()
        );
        for cidr in &cidrs {
            assert!(!cidr.contains(&std::net::IpAddr::V4(t.outside_v4)));
            assert!(!cidr.contains(&std::net::IpAddr::V6(t.outside_v6)));
        }
        // At the top of the space, the address before the subnet.
        let top = Target::new(&eni, &["255.255.255.0/24".parse().unwrap()]);
        assert_eq!(
            top.outside_v4,
            "255.255.254.255".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(top.outside_v6, "2001:db8::1".parse::<Ipv6Addr>().unwrap());
    }
}
