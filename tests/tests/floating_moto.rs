//! The calls that move an Elastic IP and routes with a floating address, against
//! moto_server: a check that the SDK's requests, built as the IP manager builds its
//! client, and moto's answers in EC2's wire format agree (DescribeAddresses by id and
//! by tag, AssociateAddress with PrivateIpAddress, DisassociateAddress,
//! DescribeRouteTables by id and by tag, CreateRoute, ReplaceRoute, an ENI's
//! source/destination check). moto ignores PrivateIpAddress on AssociateAddress, so
//! what the association points at is the fake EC2's to model
//! (`tests/tests/floating_pair.rs`); this is the format. moto_server comes from the
//! Python environment `./scripts/setup` makes.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::Region;
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::types::{DomainType, ResourceType, Tag, TagSpecification};
use ipmgmt_common::floating::{ElasticIp, RouteTables, Selector};
use ipmgr::ec2::SdkEc2;
use ipmgr::floating::ec2::{FloatingEc2, host_route};

struct Moto(Child, SocketAddr);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto() -> Moto {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    assert!(
        bin.exists(),
        "{} is missing: ./scripts/setup installs it",
        bin.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < until, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto(child, addr)
}

async fn client(at: SocketAddr) -> aws_sdk_ec2::Client {
    let sdk = ipmgr::aws::loader(ipmgr::aws::Retries {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
    })
    .region(Region::new("us-west-2"))
    .endpoint_url(format!("http://{at}"))
    .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
    .load()
    .await;
    ipmgr::aws::ec2_client(&sdk, &ipmgr::aws::Attempts::default())
}

fn tagged(kind: ResourceType) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .tags(
            Tag::builder()
                .key("ipmgmt.aws/floating")
                .value("true")
                .build(),
        )
        .build()
}

#[tokio::test]
async fn the_floating_calls_speak_ec2s_wire_format() {
    let moto = moto();
    let raw = client(moto.1).await;
    let ec2 = SdkEc2::new(client(moto.1).await);

    // The world, made with the SDK: a VPC, a subnet, two ENIs, an EIP, two tables.
    let vpc = raw
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
    let subnet = (raw.create_subnet())
        .vpc_id(&vpc)
        .cidr_block("10.0.1.0/24")
        .send()
        .await
        .unwrap();
    let subnet = subnet.subnet().unwrap().subnet_id().unwrap().to_owned();
    let mut enis = Vec::new();
    for address in ["10.0.1.10", "10.0.1.20"] {
        let made = (raw.create_network_interface())
            .subnet_id(&subnet)
            .private_ip_address(address)
            .send()
            .await
            .unwrap();
        let eni = made.network_interface().unwrap();
        enis.push(eni.network_interface_id().unwrap().to_owned());
    }
    let eip = (raw.allocate_address())
        .domain(DomainType::Vpc)
        .tag_specifications(tagged(ResourceType::ElasticIp))
        .send()
        .await
        .unwrap();
    let allocation = eip.allocation_id().unwrap().to_owned();
    let mut tables = Vec::new();
    for _ in 0..2 {
        let made = (raw.create_route_table())
            .vpc_id(&vpc)
            .tag_specifications(tagged(ResourceType::RouteTable))
            .send()
            .await
            .unwrap();
        tables.push(
            made.route_table()
                .unwrap()
                .route_table_id()
                .unwrap()
                .to_owned(),
        );
    }

    // The EIP, by allocation id and by tag, unassociated.
    let by_id = ElasticIp::Allocation(allocation.clone());
    let found = ec2.eips(&by_id).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].allocation_id, allocation);
    assert!(!found[0].public_ip.is_empty() && found[0].association.is_none());
    let pool = ElasticIp::Pool(Selector {
        key: "ipmgmt.aws/floating".into(),
        value: "true".into(),
    });
    assert_eq!(ec2.eips(&pool).await.unwrap(), found);

    // Associated with the first ENI's address, then reassociated with the second's.
    for (eni, address) in [(&enis[0], "10.0.1.10"), (&enis[1], "10.0.1.20")] {
        ec2.associate(&allocation, eni, address.parse().unwrap(), true)
            .await
            .unwrap();
        let association = ec2.eips(&by_id).await.unwrap()[0]
            .association
            .clone()
            .expect("associated");
        assert_eq!(association.eni.as_deref(), Some(eni.as_str()));
        assert!(association.id.starts_with("eipassoc-"), "{association:?}");
    }
    let association = ec2.eips(&by_id).await.unwrap()[0]
        .association
        .clone()
        .unwrap();
    ec2.disassociate(&association.id).await.unwrap();
    assert!(ec2.eips(&by_id).await.unwrap()[0].association.is_none());
    let gone = ec2.disassociate(&association.id).await.unwrap_err();
    assert!(gone.to_string().contains("DisassociateAddress"), "{gone}");

    // The route to a VIP outside the VPC: created, then replaced, in both tables.
    let vip = host_route("192.168.100.1".parse().unwrap());
    let ids = RouteTables::Ids(tables.clone());
    for (eni, exists) in [(&enis[0], false), (&enis[1], true)] {
        for table in &tables {
            ec2.route(table, vip, eni, exists).await.unwrap();
        }
        let read = ec2.route_tables(&ids).await.unwrap();
        assert_eq!(read.len(), 2);
        for table in &read {
            assert_eq!(table.route(vip), Some(Some(eni.as_str())), "{table:?}");
        }
    }
    let by_tag = RouteTables::Tagged(Selector {
        key: "ipmgmt.aws/floating".into(),
        value: "true".into(),
    });
    let mut tagged_ids: Vec<String> = (ec2.route_tables(&by_tag).await.unwrap())
        .into_iter()
        .map(|t| t.id)
        .collect();
    tagged_ids.sort();
    let mut want = tables.clone();
    want.sort();
    assert_eq!(tagged_ids, want);
    let missing = RouteTables::Ids(vec!["rtb-0deadbeef".into()]);
    let err = ec2.route_tables(&missing).await.unwrap_err();
    assert_eq!(
        err.code.as_deref(),
        Some("InvalidRouteTableID.NotFound"),
        "{err}"
    );
    assert!(
        err.to_string().contains("check ipmgmt.aws/route-tables"),
        "{err}"
    );

    // The source/destination check, on by default, then off.
    assert!(ec2.source_dest_check(&enis[0]).await.unwrap());
    (raw.modify_network_interface_attribute())
        .network_interface_id(&enis[0])
        .source_dest_check(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(false)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(!ec2.source_dest_check(&enis[0]).await.unwrap());
}
