//! The EC2 calls that move an Elastic IP and route-table routes with the floating
//! addresses, behind a trait as the manager's own calls are, each failure one line with
//! the AWS error code and what to do.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};

use aws_sdk_ec2::types::Filter;
use ipmgmt_common::aws::{Action, Ec2Error, sdk_error};
use ipmgmt_common::floating::{ElasticIp, RouteTables, Selector};
use ipnet::IpNet;

use crate::ec2::{REMEDY, SdkEc2, filter};

/// An Elastic IP and where it points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eip {
    pub allocation_id: String,
    pub public_ip: String,
    pub association: Option<Association>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Association {
    pub id: String,
    pub eni: Option<String>,
    pub private_ip: Option<Ipv4Addr>,
}

/// A route table and its routes to ENIs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTable {
    pub id: String,
    /// Destination, and the ENI it points at (None: a gateway, or a blackhole).
    pub routes: Vec<(IpNet, Option<String>)>,
}

impl RouteTable {
    /// Where the route to exactly `destination` points, if there is one.
    pub fn route(&self, destination: IpNet) -> Option<Option<&str>> {
        (self.routes.iter())
            .find(|(d, _)| *d == destination)
            .map(|(_, eni)| eni.as_deref())
    }
}

/// The calls, narrowed to what moving an EIP and routes needs.
pub trait FloatingEc2 {
    fn eips(&self, which: &ElasticIp) -> impl Future<Output = Result<Vec<Eip>, Ec2Error>> + Send;
    fn associate(
        &self,
        allocation_id: &str,
        eni: &str,
        private_ip: Ipv4Addr,
        allow_reassociation: bool,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn disassociate(
        &self,
        association_id: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn route_tables(
        &self,
        which: &RouteTables,
    ) -> impl Future<Output = Result<Vec<RouteTable>, Ec2Error>> + Send;
    /// Points the route to `destination` at `eni`: replaces it, or creates it.
    fn route(
        &self,
        table: &str,
        destination: IpNet,
        eni: &str,
        exists: bool,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// Whether the ENI's source/destination check is on.
    fn source_dest_check(&self, eni: &str) -> impl Future<Output = Result<bool, Ec2Error>> + Send;
}

fn tag_filter(selector: &Selector) -> Filter {
    filter(
        &format!("tag:{}", selector.key),
        vec![selector.value.clone()],
    )
}

/// A `/32` or `/128` to `ip`.
pub fn host_route(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

impl FloatingEc2 for SdkEc2 {
    async fn eips(&self, which: &ElasticIp) -> Result<Vec<Eip>, Ec2Error> {
        let call = self.client().describe_addresses();
        let call = match which {
            ElasticIp::Allocation(id) => call.allocation_ids(id),
            ElasticIp::Pool(s) => call.filters(tag_filter(s)),
        };
        let target = which.to_string();
        let out = call
            .send()
            .await
            .map_err(|e| sdk_error(Action::DescribeAddresses, target, e, &REMEDY))?;
        Ok((out.addresses().iter())
            .filter_map(|a| {
                Some(Eip {
                    allocation_id: a.allocation_id()?.to_owned(),
                    public_ip: a.public_ip().unwrap_or_default().to_owned(),
                    association: a.association_id().map(|id| Association {
                        id: id.to_owned(),
                        eni: a.network_interface_id().map(str::to_owned),
                        private_ip: a.private_ip_address().and_then(|p| p.parse().ok()),
                    }),
                })
            })
            .collect())
    }

    async fn associate(
        &self,
        allocation_id: &str,
        eni: &str,
        private_ip: Ipv4Addr,
        allow_reassociation: bool,
    ) -> Result<(), Ec2Error> {
        (self.client().associate_address())
            .allocation_id(allocation_id)
            .network_interface_id(eni)
            .private_ip_address(private_ip.to_string())
            .allow_reassociation(allow_reassociation)
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                let target = format!("{allocation_id} to {private_ip} on {eni}");
                sdk_error(Action::AssociateAddress, target, e, &REMEDY)
            })
    }

    async fn disassociate(&self, association_id: &str) -> Result<(), Ec2Error> {
        (self.client().disassociate_address())
            .association_id(association_id)
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk_error(Action::DisassociateAddress, association_id, e, &REMEDY))
    }

    async fn route_tables(&self, which: &RouteTables) -> Result<Vec<RouteTable>, Ec2Error> {
        let call = self.client().describe_route_tables();
        let call = match which {
            RouteTables::Ids(ids) => call.set_route_table_ids(Some(ids.clone())),
            RouteTables::Tagged(s) => call.filters(tag_filter(s)),
        };
        let target = which.to_string();
        let out = call
            .send()
            .await
            .map_err(|e| sdk_error(Action::DescribeRouteTables, target, e, &REMEDY))?;
        Ok((out.route_tables().iter())
            .filter_map(|t| {
                let routes = (t.routes().iter())
                    .filter_map(|r| {
                        let dest = (r.destination_cidr_block())
                            .or(r.destination_ipv6_cidr_block())?
                            .parse()
                            .ok()?;
                        let to_eni = r.network_interface_id().map(str::to_owned);
                        Some((dest, to_eni))
                    })
                    .collect();
                Some(RouteTable {
                    id: t.route_table_id()?.to_owned(),
                    routes,
                })
            })
            .collect())
    }

    async fn route(
        &self,
        table: &str,
        destination: IpNet,
        eni: &str,
        exists: bool,
    ) -> Result<(), Ec2Error> {
        let target = format!("{table} {destination} to {eni}");
        let v4 = destination.addr().is_ipv4();
        let dest = destination.to_string();
        if exists {
            let call = (self.client().replace_route())
                .route_table_id(table)
                .network_interface_id(eni);
            let call = match v4 {
                true => call.destination_cidr_block(dest),
                false => call.destination_ipv6_cidr_block(dest),
            };
            call.send()
                .await
                .map(drop)
                .map_err(|e| sdk_error(Action::ReplaceRoute, target, e, &REMEDY))
        } else {
            let call = (self.client().create_route())
                .route_table_id(table)
                .network_interface_id(eni);
            let call = match v4 {
                true => call.destination_cidr_block(dest),
                false => call.destination_ipv6_cidr_block(dest),
            };
            call.send()
                .await
                .map(drop)
                .map_err(|e| sdk_error(Action::CreateRoute, target, e, &REMEDY))
        }
    }

    async fn source_dest_check(&self, eni: &str) -> Result<bool, Ec2Error> {
        let out = (self.client().describe_network_interfaces())
            .network_interface_ids(eni)
            .send()
            .await
            .map_err(|e| sdk_error(Action::DescribeNetworkInterfaces, eni, e, &REMEDY))?;
        Ok((out.network_interfaces().first())
            .and_then(|ni| ni.source_dest_check())
            .unwrap_or(true))
    }
}
