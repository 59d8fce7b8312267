//! Which instance this pod runs on, cheapest source first. The node name the webhook
//! injects: a resource-based name carries the instance ID. With an IP-based name
//! (EKS's default), the ENIs whose MACs the pod's interfaces carry (an ipvlan slave
//! shares its ENI's MAC) say which instance they are attached to, in one describe
//! that the first pass then starts from, so it costs no call. Only then IMDS: pods
//! often cannot reach it (hop limit 1), and then it costs its whole timeout, a second
//! of the pod's start. Last, the node name looked up by private DNS name.

use std::time::Duration;

use aws_config::imds;
use tracing::{debug, info};

use crate::ec2::{Ec2, Ec2Error};
use crate::eni::{Eni, Local};

/// The instance, and the ENIs found on the way when they were.
#[derive(Debug)]
pub struct Found {
    pub instance_id: String,
    /// The ENIs with the MACs of the pod's interfaces, when they named the instance.
    pub enis: Option<Vec<Eni>>,
}

impl Found {
    fn id(instance_id: impl Into<String>) -> Found {
        Found {
            instance_id: instance_id.into(),
            enis: None,
        }
    }
}

/// The interfaces' MACs, each once.
fn macs(locals: &[Local]) -> Vec<String> {
    let mut macs: Vec<String> = (locals.iter())
        .map(|l| l.mac.to_ascii_lowercase())
        .filter(|m| !m.is_empty())
        .collect();
    macs.sort();
    macs.dedup();
    macs
}

/// The one instance every one of these ENIs is attached to; none when there are no
/// ENIs, one is detached, or they are attached to different instances.
pub fn attached_instance(enis: &[Eni]) -> Option<&str> {
    let first = enis.first()?.instance_id.as_deref()?;
    (enis.iter())
        .all(|e| e.instance_id.as_deref() == Some(first))
        .then_some(first)
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cannot tell which instance this pod runs on: no ENI of one instance has the MACs of its interfaces, \
         IMDS gave no instance ID ({imds}) and NODE_NAME is not set; set NODE_NAME from spec.nodeName \
         (the webhook does) or raise the IMDS hop limit to 2"
    )]
    Unknown { imds: String },
    #[error("no EC2 instance has private DNS name {node:?} (NODE_NAME); is this an EKS node?")]
    NotFound { node: String },
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
}

impl IdentityError {
    /// EC2 throttled the lookup past the SDK's retries: a later try will do.
    pub fn is_throttled(&self) -> bool {
        matches!(self, IdentityError::Ec2(e) if e.is_throttling())
    }
}

pub fn imds_disabled() -> bool {
    std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The instance ID from IMDSv2, with short timeouts: an unreachable IMDS must not
/// cost the pod seconds at start-up.
async fn from_imds() -> Result<String, String> {
    if imds_disabled() {
        return Err("AWS_EC2_METADATA_DISABLED is set".into());
    }
    let client = imds::Client::builder()
        .max_attempts(1)
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .build();
    match client.get("/latest/meta-data/instance-id").await {
        Ok(id) => Ok(id.as_ref().trim().to_owned()),
        Err(e) => Err(crate::aws::cause(&e)),
    }
}

/// `i-0123456789abcdef0.us-west-2.compute.internal` → `i-0123456789abcdef0`.
pub fn instance_in_node_name(node: &str) -> Option<&str> {
    let first = node.split('.').next()?;
    let hex = first.strip_prefix("i-")?;
    (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(first)
}

pub async fn instance_id(
    ec2: &impl Ec2,
    node_name: Option<&str>,
    locals: &[Local],
) -> Result<Found, IdentityError> {
    let node = node_name.filter(|n| !n.is_empty());
    if let Some(id) = node.and_then(instance_in_node_name) {
        info!(instance = id, node, "instance from the node name");
        return Ok(Found::id(id));
    }
    let macs = macs(locals);
    if !macs.is_empty() {
        // A failure here is the run's: every pass needs this describe, so credentials,
        // permissions or EC2 out of reach would fail it the same way, and throttling is
        // the caller's to wait out.
        let enis = ec2.enis_by_mac(&macs).await?;
        if let Some(id) = attached_instance(&enis).map(str::to_owned) {
            info!(instance = %id, node, "instance of the ENIs the pod's interfaces ride on");
            return Ok(Found {
                instance_id: id,
                enis: Some(enis),
            });
        }
        debug!(macs = ?macs, "no ENI of one instance has the interfaces' MACs");
    }
    let imds_error = match from_imds().await {
        Ok(id) => {
            info!(instance = %id, "instance from IMDS");
            return Ok(Found::id(id));
        }
        Err(e) => e,
    };
    let Some(node) = node else {
        return Err(IdentityError::Unknown { imds: imds_error });
    };
    let id = ec2
        .instance_by_private_dns(node)
        .await?
        .ok_or_else(|| IdentityError::NotFound {
            node: node.to_owned(),
        })?;
    info!(instance = %id, node, "instance by private DNS name (IMDS: {imds_error})");
    Ok(Found::id(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_based_node_names_carry_the_instance() {
        assert_eq!(
            instance_in_node_name("i-0123456789abcdef0.us-west-2.compute.internal"),
            Some("i-0123456789abcdef0")
        );
        assert_eq!(instance_in_node_name("i-0abc"), Some("i-0abc"));
        assert_eq!(
            instance_in_node_name("ip-10-0-1-5.us-west-2.compute.internal"),
            None
        );
        assert_eq!(instance_in_node_name("i-.x"), None);
        assert_eq!(instance_in_node_name("i-xyz.x"), None);
    }

    #[test]
    fn the_enis_name_their_instance_only_when_they_agree() {
        use crate::eni::tests::eni;
        let (a, mut b) = (
            eni("eni-a", "m1", 1, "s", &["10.0.1.10"]),
            eni("eni-b", "m2", 2, "t", &["10.0.2.10"]),
        );
        assert_eq!(attached_instance(&[a.clone(), b.clone()]), Some("i-1"));
        assert_eq!(attached_instance(&[]), None);
        b.instance_id = Some("i-2".into());
        assert_eq!(attached_instance(&[a.clone(), b.clone()]), None);
        b.instance_id = None;
        assert_eq!(attached_instance(&[a, b]), None, "a detached ENI");
    }
}
