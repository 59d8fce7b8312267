//! The EC2 calls ipmgr makes, behind a narrow trait, and their errors as one line
//! with the AWS error code and what to do about it.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aws_sdk_ec2::types::{Filter, SubnetCidrBlockStateCode, VpcCidrBlockStateCode};
pub use ipmgmt_common::aws::{Action, Ec2Error, sdk_error, strings, to_eni};
use ipmgmt_common::aws::{NoCredentials, Remedy};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::eni::{Eni, Subnet, Vpc};

/// Where the least-privilege policy lives, for error messages.
pub const IAM_POLICY: &str = "deploy/iam-policy.json";

/// Every EC2 action the manager calls (`Action::MANAGER`, which `ipmgmt check` also
/// reads); `deploy/iam-policy.json` grants exactly these (checked by a test).
pub const ACTIONS: [Action; 8] = Action::MANAGER;

pub trait Ec2 {
    /// The ENIs attached to the instance.
    fn instance_enis(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Vec<Eni>, Ec2Error>> + Send;
    fn subnets(&self, ids: &[String])
    -> impl Future<Output = Result<Vec<Subnet>, Ec2Error>> + Send;
    /// These VPCs' associated CIDR blocks.
    fn vpcs(&self, ids: &[String]) -> impl Future<Output = Result<Vec<Vpc>, Ec2Error>> + Send;
    /// The ENIs, of any instance, with these MAC addresses.
    fn enis_by_mac(
        &self,
        macs: &[String],
    ) -> impl Future<Output = Result<Vec<Eni>, Ec2Error>> + Send;
    /// Which ENIs, of any instance, hold these addresses now.
    fn holders(&self, ips: &[IpAddr]) -> impl Future<Output = Result<Vec<Eni>, Ec2Error>> + Send;
    /// The instance whose private DNS name is `name` (EKS IP-based node names).
    fn instance_by_private_dns(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, Ec2Error>> + Send;
    fn assign_ipv4(
        &self,
        eni: &str,
        ips: &[Ipv4Addr],
        allow_reassignment: bool,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn unassign_ipv4(
        &self,
        eni: &str,
        ips: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn assign_ipv6(
        &self,
        eni: &str,
        ips: &[Ipv6Addr],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn unassign_ipv6(
        &self,
        eni: &str,
        ips: &[Ipv6Addr],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}

/// An error of the IP manager's, with its remedies.
pub fn error(
    action: Action,
    target: impl Into<String>,
    code: Option<&str>,
    detail: impl Into<String>,
) -> Ec2Error {
    Ec2Error::with_remedy(action, target, code, detail, &REMEDY)
}

/// The IP manager's remedies.
pub(crate) const REMEDY: Remedy = Remedy {
    refused: hint,
    credentials,
};

/// What to do about credentials the manager could not get, by what STS said.
fn credentials(why: NoCredentials) -> &'static str {
    match why {
        NoCredentials::Expired => {
            "STS refused the pod's web identity token as expired: kubelet renews the projected token \
             (volume aws-iam-token) long before it expires, so check that the pod mounts the token the \
             webhook injected and that the node's clock is right"
        }
        NoCredentials::Untrusted => {
            "STS refused to let the pod's service account assume the role: check the role's trust policy \
             (deploy/irsa-trust-policy.json) for this cluster's OIDC provider, namespace and service account"
        }
        NoCredentials::Missing => {
            "the SDK found no AWS credentials: give the pod an IRSA role (the chart's aws.roleArn or \
             the annotation ipmgmt.aws/role-arn), or for the node role let pods reach IMDS (hop limit 2)"
        }
    }
}

fn hint(action: Action, code: Option<&str>) -> String {
    if let Some(hint) = (Action::FLOATING.contains(&action))
        .then(|| crate::floating::hint(action, code))
        .flatten()
    {
        return hint;
    }
    match code {
        // On an ENI, the manager, which knows its tags, says which part of the policy
        // refused (`manager::explain_refusal`).
        Some("UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException") => format!(
            "the IP manager's IAM role lacks ec2:{action}: attach the policy in {IAM_POLICY} to it"
        ),
        Some("AuthFailure" | "InvalidClientTokenId" | "ExpiredToken") => {
            "AWS rejected the credentials: check the role ARN and its trust policy (IRSA) or the Pod Identity association"
                .into()
        }
        Some("PrivateIpAddressLimitExceeded") => {
            "the ENI has reached its instance type's per-ENI address limit: free addresses on it or use a larger instance type"
                .into()
        }
        Some("RequestLimitExceeded" | "Throttling" | "ThrottlingException") => {
            "EC2 throttled the account past the retry budget: fewer pods starting at once, or raise the EC2 API rate limits"
                .into()
        }
        Some("InvalidIPAddress.InUse") => {
            "another ENI holds the address, so it is handed out twice: find the holder with \
             `aws ec2 describe-network-interfaces --filters Name=addresses.private-ip-address,Values=<address>` \
             (or ipv6-addresses.ipv6-address), then release it there or take it out of one of the pools"
                .into()
        }
        Some("InvalidParameterValue") => {
            "EC2 refused an address: check that the network's address pool lies in the ENI's subnet".into()
        }
        Some("InvalidNetworkInterfaceID.NotFound") => "the ENI is gone: it was detached or deleted".into(),
        Some(_) => "see the EC2 API reference for this error code".into(),
        None => "EC2 could not be reached or did not answer: check the pod's egress to the EC2 endpoint (VPC endpoint, \
                 network policy, proxy) and AWS_ENDPOINT_URL_EC2"
            .into(),
    }
}

/// EC2 through aws-sdk-ec2.
#[derive(Clone, Debug)]
pub struct SdkEc2 {
    client: aws_sdk_ec2::Client,
}

impl SdkEc2 {
    pub fn new(client: aws_sdk_ec2::Client) -> Self {
        SdkEc2 { client }
    }

    pub(crate) fn client(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }

    async fn describe_enis(
        &self,
        action_target: String,
        filter: Filter,
    ) -> Result<Vec<Eni>, Ec2Error> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .describe_network_interfaces()
                .filters(filter.clone())
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| {
                    sdk_error(
                        Action::DescribeNetworkInterfaces,
                        action_target.clone(),
                        e,
                        &REMEDY,
                    )
                })?;
            out.extend(page.network_interfaces().iter().filter_map(to_eni));
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }
}

pub(crate) fn filter(name: &str, values: Vec<String>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values))
        .build()
}

impl Ec2 for SdkEc2 {
    async fn instance_enis(&self, instance_id: &str) -> Result<Vec<Eni>, Ec2Error> {
        let f = filter("attachment.instance-id", vec![instance_id.to_owned()]);
        self.describe_enis(format!("of instance {instance_id}"), f)
            .await
    }

    async fn enis_by_mac(&self, macs: &[String]) -> Result<Vec<Eni>, Ec2Error> {
        let f = filter("mac-address", macs.to_vec());
        self.describe_enis(format!("with MAC {}", macs.join(",")), f)
            .await
    }

    async fn subnets(&self, ids: &[String]) -> Result<Vec<Subnet>, Ec2Error> {
        let out = self
            .client
            .describe_subnets()
            .set_subnet_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error(Action::DescribeSubnets, ids.join(","), e, &REMEDY))?;
        Ok(out
            .subnets()
            .iter()
            .map(|s| Subnet {
                id: s.subnet_id().unwrap_or_default().to_owned(),
                ipv4: s
                    .cidr_block()
                    .and_then(|c| c.parse::<Ipv4Net>().ok())
                    .into_iter()
                    .collect(),
                ipv6: s
                    .ipv6_cidr_block_association_set()
                    .iter()
                    .filter(|a| {
                        a.ipv6_cidr_block_state().and_then(|st| st.state())
                            == Some(&SubnetCidrBlockStateCode::Associated)
                    })
                    .filter_map(|a| a.ipv6_cidr_block()?.parse::<Ipv6Net>().ok())
                    .collect(),
                vpc_id: s.vpc_id().unwrap_or_default().to_owned(),
                vpc: None,
            })
            .collect())
    }

    async fn vpcs(&self, ids: &[String]) -> Result<Vec<Vpc>, Ec2Error> {
        let out = self
            .client
            .describe_vpcs()
            .set_vpc_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error(Action::DescribeVpcs, ids.join(","), e, &REMEDY))?;
        // A block being disassociated is still listed for a while: only associated ones
        // count.
        Ok(out
            .vpcs()
            .iter()
            .map(|v| Vpc {
                id: v.vpc_id().unwrap_or_default().to_owned(),
                ipv4: v
                    .cidr_block_association_set()
                    .iter()
                    .filter(|a| {
                        a.cidr_block_state().and_then(|st| st.state())
                            == Some(&VpcCidrBlockStateCode::Associated)
                    })
                    .filter_map(|a| a.cidr_block()?.parse::<Ipv4Net>().ok())
                    .collect(),
                ipv6: v
                    .ipv6_cidr_block_association_set()
                    .iter()
                    .filter(|a| {
                        a.ipv6_cidr_block_state().and_then(|st| st.state())
                            == Some(&VpcCidrBlockStateCode::Associated)
                    })
                    .filter_map(|a| a.ipv6_cidr_block()?.parse::<Ipv6Net>().ok())
                    .collect(),
            })
            .collect())
    }

    async fn holders(&self, ips: &[IpAddr]) -> Result<Vec<Eni>, Ec2Error> {
        // Filters of different names are ANDed, so IPv4 and IPv6 take a call each.
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = ips.iter().partition(|ip| ip.is_ipv4());
        let mut out = Vec::new();
        for (name, ips) in [
            ("addresses.private-ip-address", v4),
            ("ipv6-addresses.ipv6-address", v6),
        ] {
            if ips.is_empty() {
                continue;
            }
            let f = filter(name, strings(&ips));
            out.extend(self.describe_enis(strings(&ips).join(","), f).await?);
        }
        Ok(out)
    }

    async fn instance_by_private_dns(&self, name: &str) -> Result<Option<String>, Ec2Error> {
        let out = self
            .client
            .describe_instances()
            .filters(filter("private-dns-name", vec![name.to_owned()]))
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    Action::DescribeInstances,
                    format!("named {name}"),
                    e,
                    &REMEDY,
                )
            })?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.instance_id().map(str::to_owned)))
    }

    async fn assign_ipv4(
        &self,
        eni: &str,
        ips: &[Ipv4Addr],
        allow_reassignment: bool,
    ) -> Result<(), Ec2Error> {
        self.client
            .assign_private_ip_addresses()
            .network_interface_id(eni)
            .set_private_ip_addresses(Some(strings(ips)))
            .allow_reassignment(allow_reassignment)
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk_error(Action::AssignPrivateIpAddresses, eni, e, &REMEDY))
    }

    async fn unassign_ipv4(&self, eni: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        self.client
            .unassign_private_ip_addresses()
            .network_interface_id(eni)
            .set_private_ip_addresses(Some(strings(ips)))
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk_error(Action::UnassignPrivateIpAddresses, eni, e, &REMEDY))
    }

    async fn assign_ipv6(&self, eni: &str, ips: &[Ipv6Addr]) -> Result<(), Ec2Error> {
        self.client
            .assign_ipv6_addresses()
            .network_interface_id(eni)
            .set_ipv6_addresses(Some(strings(ips)))
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk_error(Action::AssignIpv6Addresses, eni, e, &REMEDY))
    }

    async fn unassign_ipv6(&self, eni: &str, ips: &[Ipv6Addr]) -> Result<(), Ec2Error> {
        self.client
            .unassign_ipv6_addresses()
            .network_interface_id(eni)
            .set_ipv6_addresses(Some(strings(ips)))
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk_error(Action::UnassignIpv6Addresses, eni, e, &REMEDY))
    }
}

#[cfg(test)]
mod tests {
    use aws_credential_types::provider::error::CredentialsError;

    use super::*;

    #[test]
    fn messages_carry_code_and_remedy() {
        let e = error(
            Action::AssignPrivateIpAddresses,
            "eni-0ab",
            Some("UnauthorizedOperation"),
            "You are not authorized",
        );
        let line = e.to_string();
        assert!(
            line.starts_with(
                "AssignPrivateIpAddresses eni-0ab: UnauthorizedOperation: You are not authorized; "
            ),
            "{line}"
        );
        assert!(
            line.contains("ec2:AssignPrivateIpAddresses") && line.contains(IAM_POLICY),
            "{line}"
        );
        assert!(e.is_permanent());
        assert!(!line.contains('\n'));

        let e = error(
            Action::AssignPrivateIpAddresses,
            "eni-0ab",
            Some("RequestLimitExceeded"),
            "Request limit exceeded.",
        );
        assert!(!e.is_permanent());
        let e = error(
            Action::DescribeNetworkInterfaces,
            "of instance i-1",
            None,
            "dispatch failure: connection refused",
        );
        assert!(e.to_string().contains("AWS_ENDPOINT_URL_EC2"), "{e}");
    }

    /// A client whose endpoint refuses connections, with the given credentials.
    fn unreachable_client(
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
            aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                CredentialsError::not_loaded("no providers in chain provided credentials"),
            ))
        }
    }

    #[tokio::test]
    async fn missing_credentials_are_named_as_such() {
        let e = unreachable_client(NoCredentials)
            .instance_enis("i-0123456789abcdef0")
            .await
            .expect_err("no credentials");
        let line = e.to_string();
        assert_eq!(e.code, None);
        assert!(line.contains("found no AWS credentials"), "{line}");
        assert!(
            line.contains("aws.roleArn") && line.contains("hop limit"),
            "{line}"
        );
        assert!(!line.contains("could not be reached"), "{line}");
        assert!(
            line.contains("no providers in chain provided credentials"),
            "the provider's own words are kept: {line}"
        );
        assert!(!line.contains("DispatchFailure"), "no debug dump: {line}");
        assert!(!line.contains('\n'));
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_not_blamed_on_credentials() {
        let credentials =
            aws_sdk_ec2::config::Credentials::new("AKID", "secret", None, None, "test");
        let e = unreachable_client(credentials)
            .instance_enis("i-0123456789abcdef0")
            .await
            .expect_err("nothing listens on port 9");
        let line = e.to_string();
        assert!(line.contains("could not be reached"), "{line}");
        assert!(!line.contains("credentials"), "{line}");
        // One readable cause, not the SDK's Debug dump of it.
        assert!(line.contains("Connection refused"), "{line}");
        assert!(
            !line.contains("DispatchFailure") && !line.contains('{'),
            "{line}"
        );
    }
}

#[cfg(test)]
mod policy {
    use std::collections::BTreeSet;

    use super::{ACTIONS, Action};

    /// The policies in deploy/ grant exactly the EC2 actions ipmgr calls: the base
    /// policy every manager's, the floating one what floating addresses add.
    #[test]
    fn iam_policy_grants_exactly_the_actions_called() {
        for (actions, text) in [
            (&ACTIONS[..], include_str!("../../deploy/iam-policy.json")),
            (
                &Action::FLOATING[..],
                include_str!("../../deploy/floating-iam-policy.json"),
            ),
        ] {
            let called: BTreeSet<String> = actions.iter().map(|a| format!("ec2:{a}")).collect();
            assert_eq!(called.len(), actions.len(), "each action is listed once");
            let policy: serde_json::Value = serde_json::from_str(text).expect("policy is JSON");
            let granted: BTreeSet<String> = policy["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| {
                    s["Action"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap().to_owned())
                })
                .collect();
            assert_eq!(called, granted);
        }
    }

    /// The actions that change an ENI are granted only on ENIs tagged no_manage, so a
    /// pod with the role cannot take a node's primary address or another team's VIP.
    #[test]
    fn iam_policy_scopes_the_mutating_actions_to_multus_enis() {
        let policy: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/iam-policy.json"))
                .expect("policy is JSON");
        let tag_key = format!("ec2:ResourceTag/{}", crate::eni::NO_MANAGE_TAG);
        for action in ACTIONS.into_iter().filter(|a| a.changes_an_eni()) {
            let name = format!("ec2:{action}");
            for statement in policy["Statement"].as_array().unwrap() {
                if !statement["Action"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a == &name)
                {
                    continue;
                }
                assert_eq!(
                    statement["Condition"]["StringEquals"][&tag_key], "true",
                    "{name} is granted without the {tag_key} condition"
                );
                assert_ne!(statement["Resource"], "*", "{name} on every resource");
            }
        }
    }
}
