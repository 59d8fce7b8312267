//! The seed script's calls at a pod start, as a model to compare ipmgr with: one
//! DescribeInstances for the node's ENIs, one DescribeSubnets per ENI for its CIDR,
//! then one AssignPrivateIpAddresses (AllowReassignment) per subnet that holds some of
//! the pod's addresses. No confirmation, no IPv6, nothing skipped when an address is
//! already in place. It exits 0 once every Assign was accepted.
//!
//! It runs as a process in the pod, as the script ran in the init container, reading
//! the pod's addresses over netlink and calling EC2 with ipmgr's SDK settings
//! (`ipmgr::aws::loader`: the same retries and timeouts), so that only the pattern of
//! calls differs. The script found its instance through IMDS, which pods on EKS
//! cannot reach; the model asks DescribeInstances by the node's private DNS name
//! instead: the same one call.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, bail};
use aws_sdk_ec2::types::Filter;
use ipmgr::aws::{self, Attempts, Retries};
use ipmgr::discover::{Addresses, Netlink};
use ipnet::Ipv4Net;

/// One pod start; the termination message on failure is the error.
pub async fn pod_start() -> anyhow::Result<()> {
    let node = std::env::var("NODE_NAME").context("NODE_NAME")?;
    // ipmgr's settings from the same environment, for its retry settings.
    let args = <ipmgr::config::Cli as clap::Parser>::try_parse_from(["ipmgr", "init"])?.settings;
    let sdk = aws::loader(Retries {
        max_attempts: args.retry_max_attempts,
        initial_backoff: args.retry_initial_backoff,
    })
    .load()
    .await;
    let ec2 = aws::ec2_client(&sdk, &Attempts::default());
    let local = Netlink::new(&args.primary_interface, &[])?
        .snapshot()
        .await?;
    let v4: Vec<Ipv4Addr> = (local.addresses.iter())
        .filter_map(|l| match l.ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect();

    let reservations = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("private-dns-name")
                .values(&node)
                .build(),
        )
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("DescribeInstances: {}", aws::cause(&e)))?;
    let enis: Vec<(String, String)> = (reservations.reservations().iter())
        .flat_map(|r| r.instances())
        .flat_map(|i| i.network_interfaces())
        .filter_map(|n| Some((n.network_interface_id()?.into(), n.subnet_id()?.into())))
        .collect();
    if enis.is_empty() {
        bail!("no ENIs for node {node}");
    }
    for (eni, subnet) in &enis {
        let described = ec2
            .describe_subnets()
            .subnet_ids(subnet)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("DescribeSubnets: {}", aws::cause(&e)))?;
        let cidr: Option<Ipv4Net> = (described.subnets().first())
            .and_then(|s| s.cidr_block())
            .and_then(|c| c.parse().ok());
        let Some(cidr) = cidr else { continue };
        let mine: Vec<String> = (v4.iter())
            .filter(|ip| cidr.contains(*ip))
            .map(ToString::to_string)
            .collect();
        if mine.is_empty() {
            continue;
        }
        ec2.assign_private_ip_addresses()
            .network_interface_id(eni)
            .set_private_ip_addresses(Some(mine))
            .allow_reassignment(true)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("AssignPrivateIpAddresses: {}", aws::cause(&e)))?;
    }
    Ok(())
}
