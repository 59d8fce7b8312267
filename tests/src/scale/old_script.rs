//! The seed script's calls at a pod start, as a model to compare ipmgr with: one
//! DescribeInstances for the node's ENIs, one DescribeSubnets per ENI for its CIDR,
//! then one AssignPrivateIpAddresses (AllowReassignment) per subnet that holds some of
//! the pod's addresses. No confirmation, no IPv6, nothing skipped when an address is
//! already in place. It exits 0 once every Assign was accepted.
//!
//! `follow` is the script's sidecar loop, to compare the time from an address change to
//! EC2 holding it.
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

/// The script's view of the node, found once at its start: each ENI of the instance
/// with its subnet's IPv4 CIDR.
struct Node {
    ec2: aws_sdk_ec2::Client,
    enis: Vec<(String, Ipv4Net)>,
}

impl Node {
    async fn find() -> anyhow::Result<(Node, Netlink)> {
        let node = std::env::var("NODE_NAME").context("NODE_NAME")?;
        // ipmgr's settings from the same environment, for its retry settings.
        let args =
            <ipmgr::config::Cli as clap::Parser>::try_parse_from(["ipmgr", "init"])?.settings;
        let sdk = aws::loader(Retries {
            max_attempts: args.retry_max_attempts,
            initial_backoff: args.retry_initial_backoff,
        })
        .load()
        .await;
        let ec2 = aws::ec2_client(&sdk, &Attempts::default());
        let local = Netlink::new(&args.primary_interface, &[])?;
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
        let attached: Vec<(String, String)> = (reservations.reservations().iter())
            .flat_map(|r| r.instances())
            .flat_map(|i| i.network_interfaces())
            .filter_map(|n| Some((n.network_interface_id()?.into(), n.subnet_id()?.into())))
            .collect();
        if attached.is_empty() {
            bail!("no ENIs for node {node}");
        }
        let mut enis = Vec::new();
        for (eni, subnet) in attached {
            let described = ec2
                .describe_subnets()
                .subnet_ids(subnet)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("DescribeSubnets: {}", aws::cause(&e)))?;
            let cidr: Option<Ipv4Net> = (described.subnets().first())
                .and_then(|s| s.cidr_block())
                .and_then(|c| c.parse().ok());
            enis.extend(cidr.map(|cidr| (eni, cidr)));
        }
        Ok((Node { ec2, enis }, local))
    }

    /// One Assign (AllowReassignment) per ENI whose subnet holds some of `v4`: the first
    /// such ENI, as the script picked, even when two share a subnet.
    async fn assign(&self, v4: &[Ipv4Addr]) -> anyhow::Result<()> {
        let mut by_eni: Vec<(&str, Vec<String>)> = Vec::new();
        for ip in v4 {
            let Some((eni, _)) = self.enis.iter().find(|(_, cidr)| cidr.contains(ip)) else {
                continue;
            };
            match by_eni.iter_mut().find(|(e, _)| e == eni) {
                Some((_, ips)) => ips.push(ip.to_string()),
                None => by_eni.push((eni, vec![ip.to_string()])),
            }
        }
        for (eni, mine) in by_eni {
            self.ec2
                .assign_private_ip_addresses()
                .network_interface_id(eni)
                .set_private_ip_addresses(Some(mine))
                .allow_reassignment(true)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("AssignPrivateIpAddresses: {}", aws::cause(&e)))?;
        }
        Ok(())
    }
}

fn ipv4(addresses: &[ipmgr::eni::Local]) -> Vec<Ipv4Addr> {
    (addresses.iter())
        .filter_map(|l| match l.ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// One pod start; the termination message on failure is the error.
pub async fn pod_start() -> anyhow::Result<()> {
    let (node, local) = Node::find().await?;
    node.assign(&ipv4(&local.snapshot().await?.addresses)).await
}

/// The script's sidecar loop: the pod's addresses every 500 ms (it ran `ip a`), and
/// one Assign for what appeared since the last look. It never releases and runs until
/// killed; a failed call is printed and the loop goes on, as the script swallowed it.
pub async fn follow() -> anyhow::Result<()> {
    let (node, local) = Node::find().await?;
    let mut known = ipv4(&local.snapshot().await?.addresses);
    node.assign(&known).await?;
    if let Some(path) = std::env::var_os("IPMGR_READY_FILE") {
        std::fs::write(path, "")?;
    }
    let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        every.tick().await;
        let now = ipv4(&local.snapshot().await?.addresses);
        let new: Vec<Ipv4Addr> = now
            .iter()
            .filter(|ip| !known.contains(ip))
            .copied()
            .collect();
        if !new.is_empty()
            && let Err(e) = node.assign(&new).await
        {
            eprintln!("{e:#}");
        }
        known = now;
    }
}
