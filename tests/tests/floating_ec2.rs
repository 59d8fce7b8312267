//! The fake EC2's floating-address resources, through the SDK client as production
//! builds it: Elastic IPs associated with an ENI's private address (and following it
//! when it is reassigned), route tables whose routes point at ENIs, an ENI's
//! source/destination check, and IAM scoped by the EIP's and the route table's tags.
//! What the floating-address manager will stand on; its own scenes come with it.

mod controller;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use ipmgmt_tests::fake_ec2::iam::Policy;
use ipmgmt_tests::fake_ec2::{ElasticIp, FakeEc2, Route, RouteTable, World};
use ipmgmt_tests::scenario;

fn world() -> World {
    let mut w = scenario::world();
    w.addresses = vec![
        ElasticIp {
            allocation_id: "eipalloc-0vip".into(),
            public_ip: "203.0.113.10".parse().unwrap(),
            association: None,
            tags: vec![("ipmgmt.aws/floating".into(), "true".into())],
        },
        ElasticIp {
            allocation_id: "eipalloc-0other".into(),
            public_ip: "203.0.113.11".parse().unwrap(),
            association: None,
            tags: vec![],
        },
    ];
    w.route_tables = vec![RouteTable {
        id: "rtb-0a".into(),
        routes: vec![Route {
            destination: "10.0.0.0/16".parse().unwrap(),
            eni: None,
            gateway: None,
        }],
        tags: vec![("ipmgmt.aws/floating".into(), "true".into())],
    }];
    w
}

async fn client(fake: &FakeEc2) -> Client {
    controller::sdk_client(fake).await
}

fn code<E: ProvideErrorMetadata>(e: &aws_sdk_ec2::error::SdkError<E>) -> String {
    e.as_service_error()
        .and_then(|s| s.code())
        .unwrap_or("no code")
        .to_owned()
}

async fn association(ec2: &Client, allocation: &str) -> Option<(String, String)> {
    let out = (ec2.describe_addresses())
        .allocation_ids(allocation)
        .send()
        .await
        .unwrap();
    let a = out.addresses().first()?;
    Some((
        a.network_interface_id()?.to_owned(),
        a.private_ip_address()?.to_owned(),
    ))
}

#[tokio::test]
async fn an_eip_is_on_one_private_address_and_follows_it_when_it_moves() {
    let fake = FakeEc2::new(world());
    let ec2 = client(&fake).await;
    // The floating IP 10.0.1.99 is on node 2's eni-2n3.
    (ec2.associate_address())
        .allocation_id("eipalloc-0vip")
        .network_interface_id("eni-2n3")
        .private_ip_address("10.0.1.99")
        .send()
        .await
        .unwrap();
    assert_eq!(
        association(&ec2, "eipalloc-0vip").await,
        Some(("eni-2n3".into(), "10.0.1.99".into()))
    );
    // Not an address the ENI holds.
    let not_held = (ec2.associate_address())
        .allocation_id("eipalloc-0other")
        .network_interface_id("eni-1n3")
        .private_ip_address("10.0.1.99")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&not_held), "InvalidParameterValue");
    // Elsewhere without AllowReassociation: refused; with it, moved.
    let held = (ec2.associate_address())
        .allocation_id("eipalloc-0vip")
        .network_interface_id("eni-1n3")
        .private_ip_address("10.0.1.10")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&held), "Resource.AlreadyAssociated");

    // The private address reassigned to node 1's ENI takes the EIP along.
    (ec2.assign_private_ip_addresses())
        .network_interface_id("eni-1n3")
        .private_ip_addresses("10.0.1.99")
        .allow_reassignment(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        association(&ec2, "eipalloc-0vip").await,
        Some(("eni-1n3".into(), "10.0.1.99".into()))
    );
    // Unassigned, it loses it.
    (ec2.unassign_private_ip_addresses())
        .network_interface_id("eni-1n3")
        .private_ip_addresses("10.0.1.99")
        .send()
        .await
        .unwrap();
    assert_eq!(association(&ec2, "eipalloc-0vip").await, None);

    let out = (ec2.associate_address())
        .allocation_id("eipalloc-0vip")
        .network_interface_id("eni-1n3")
        .send()
        .await
        .unwrap();
    // No private address named: the ENI's primary.
    assert_eq!(
        association(&ec2, "eipalloc-0vip").await,
        Some(("eni-1n3".into(), "10.0.1.10".into()))
    );
    (ec2.disassociate_address())
        .association_id(out.association_id().unwrap())
        .send()
        .await
        .unwrap();
    let gone = (ec2.disassociate_address())
        .association_id(out.association_id().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&gone), "InvalidAssociationID.NotFound");
}

#[tokio::test]
async fn a_route_points_at_one_eni_and_a_detached_one_is_a_blackhole() {
    let fake = FakeEc2::new(world());
    let ec2 = client(&fake).await;
    let vip = "192.168.10.100/32";
    let replace = |eni: &str| {
        (ec2.replace_route())
            .route_table_id("rtb-0a")
            .destination_cidr_block(vip)
            .network_interface_id(eni)
            .send()
    };
    assert_eq!(
        code(&replace("eni-1n3").await.unwrap_err()),
        "InvalidRoute.NotFound"
    );
    let create = || {
        (ec2.create_route())
            .route_table_id("rtb-0a")
            .destination_cidr_block(vip)
            .network_interface_id("eni-1n3")
            .send()
    };
    create().await.unwrap();
    assert_eq!(code(&create().await.unwrap_err()), "RouteAlreadyExists");
    replace("eni-2n3").await.unwrap();
    let routes = |ec2: Client| async move {
        let out = (ec2.describe_route_tables())
            .route_table_ids("rtb-0a")
            .send()
            .await
            .unwrap();
        let table = out.route_tables().first().unwrap().clone();
        (table.routes().iter())
            .filter(|r| r.destination_cidr_block() == Some(vip))
            .map(|r| {
                (
                    r.network_interface_id().unwrap_or_default().to_owned(),
                    r.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        routes(ec2.clone()).await,
        [("eni-2n3".into(), "active".into())]
    );
    // Its ENI detached (the node gone): the route stays, a blackhole.
    let mut w = fake.world();
    w.enis
        .iter_mut()
        .find(|e| e.id == "eni-2n3")
        .unwrap()
        .instance_id = None;
    fake.set_world(w);
    assert_eq!(
        routes(ec2.clone()).await,
        [("eni-2n3".into(), "blackhole".into())]
    );
    let missing = (ec2.describe_route_tables())
        .route_table_ids("rtb-0gone")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&missing), "InvalidRouteTableID.NotFound");
}

#[tokio::test]
async fn the_source_destination_check_is_on_until_turned_off() {
    let fake = FakeEc2::new(world());
    let ec2 = client(&fake).await;
    let check = |ec2: Client| async move {
        let out = (ec2.describe_network_interfaces())
            .network_interface_ids("eni-1n3")
            .send()
            .await
            .unwrap();
        out.network_interfaces()[0].source_dest_check()
    };
    assert_eq!(check(ec2.clone()).await, Some(true));
    (ec2.modify_network_interface_attribute())
        .network_interface_id("eni-1n3")
        .source_dest_check(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(false)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(check(ec2.clone()).await, Some(false));
}

/// The IP manager's policy and the floating-address policy it will need, as shipped:
/// only EIPs and route tables tagged `ipmgmt.aws/floating=true`, EIP associations
/// only on Multus ENIs.
#[tokio::test]
async fn the_shipped_policy_scopes_eips_and_route_tables_by_their_tags() {
    let fake = FakeEc2::new(world());
    let ec2 = client(&fake).await;
    let mut policy: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/iam-policy.json")).unwrap();
    let floating: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/floating-iam-policy.json")).unwrap();
    (policy["Statement"].as_array_mut().unwrap())
        .extend(floating["Statement"].as_array().unwrap().iter().cloned());
    fake.set_policy(Some(Policy::parse(&policy)));
    let associate = |allocation: &'static str, eni: &'static str| {
        (ec2.associate_address())
            .allocation_id(allocation)
            .network_interface_id(eni)
            .send()
    };
    let made = associate("eipalloc-0vip", "eni-1n3").await.unwrap();
    assert_eq!(
        code(&associate("eipalloc-0other", "eni-1n3").await.unwrap_err()),
        "UnauthorizedOperation",
        "an EIP without the tag"
    );
    // The node's own ENI (device index 0) carries no no_manage tag.
    assert_eq!(
        code(
            &associate("eipalloc-0vip", "eni-1primary")
                .await
                .unwrap_err()
        ),
        "UnauthorizedOperation"
    );
    (ec2.disassociate_address())
        .association_id(made.association_id().unwrap())
        .send()
        .await
        .unwrap();
    (ec2.create_route())
        .route_table_id("rtb-0a")
        .destination_cidr_block("192.168.10.100/32")
        .network_interface_id("eni-1n3")
        .send()
        .await
        .unwrap();
    let mut w = fake.world();
    w.route_tables[0].tags.clear();
    fake.set_world(w);
    let untagged = (ec2.replace_route())
        .route_table_id("rtb-0a")
        .destination_cidr_block("192.168.10.100/32")
        .network_interface_id("eni-2n3")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code(&untagged),
        "UnauthorizedOperation",
        "a route table without the tag"
    );
    (ec2.describe_addresses()).send().await.unwrap();
    (ec2.describe_route_tables()).send().await.unwrap();
}
