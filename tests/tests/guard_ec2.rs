//! What the address-range guard reads from EC2, through the reclaimer's client as
//! production builds it, against the fake EC2 under the reclaimer's own IAM policy:
//! a subnet's CIDRs and its explicit CIDR reservations, then a NAD judged against
//! them.

mod controller;

use ipmgmt_reclaimer::ec2::{Ec2, SdkEc2};
use ipmgmt_reclaimer::guard::{self, ipam, verdict};
use ipmgmt_tests::fake_ec2::{FakeEc2, Reservation};
use ipmgmt_tests::scenario;

fn reservation(subnet: &str, cidr: &str, kind: &str) -> Reservation {
    Reservation {
        subnet: subnet.into(),
        cidr: cidr.parse().unwrap(),
        kind: kind.into(),
        description: String::new(),
    }
}

async fn reclaimer_ec2(fake: &FakeEc2) -> SdkEc2 {
    controller::controller_ec2(fake, &[controller::BASE]).await
}

#[tokio::test]
async fn the_guard_reads_a_subnets_cidrs_and_explicit_reservations_and_judges_a_nad() {
    let mut world = scenario::world();
    world.reservations = vec![
        reservation("subnet-b", "10.0.1.64/27", "explicit"),
        // Kept for prefix delegation: no explicit reservation, and a range in it is a
        // finding.
        reservation("subnet-b", "10.0.1.96/28", "prefix"),
        reservation("subnet-b", "2600:1f14:aaa:1b00::100/120", "explicit"),
        reservation("subnet-a", "10.0.0.64/26", "explicit"),
    ];
    let fake = FakeEc2::new(world);
    let ec2 = reclaimer_ec2(&fake).await;

    let subnets = ec2.subnets(&["subnet-b".into()]).await.unwrap();
    assert_eq!(subnets.len(), 1);
    let subnet = &subnets[0];
    assert_eq!(subnet.id, "subnet-b");
    let cidrs: Vec<String> = subnet.cidrs.iter().map(ToString::to_string).collect();
    assert_eq!(cidrs, ["10.0.1.0/24", "2600:1f14:aaa:1b00::/64"]);
    let reserved: Vec<String> = subnet
        .reservations
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(reserved, ["10.0.1.64/27", "2600:1f14:aaa:1b00::100/120"]);
    let prefixes: Vec<String> = (subnet.prefix_reservations.iter())
        .map(ToString::to_string)
        .collect();
    assert_eq!(prefixes, ["10.0.1.96/28"]);
    let actions: Vec<String> = fake.log().into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["DescribeSubnets", "GetSubnetCidrReservations"]);

    // A whereabouts range half inside the explicit reservation and half in the prefix
    // reservation: the guard names the prefix reservation and the part the VPC CNI may
    // still hand out.
    let nad = ipam::read(
        r#"{"cniVersion":"0.3.1","type":"ipvlan","master":"eth1","mode":"l2",
            "ipam":{"type":"whereabouts","range":"10.0.1.64-10.0.1.111/24"}}"#,
    )
    .unwrap();
    let findings: Vec<String> = (verdict::check(&nad, subnet).iter())
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        findings,
        [
            "range 10.0.1.64-10.0.1.111 overlaps 10.0.1.96/28, a prefix reservation of subnet-b: prefix \
          delegation hands those addresses to ENIs as whole prefixes; move the range out of it",
            "10.0.1.96-10.0.1.111 of range 10.0.1.64-10.0.1.111 is in no explicit CIDR reservation of \
          subnet-b, so the VPC CNI may give the same addresses to other pods; reserve it: aws ec2 \
          create-subnet-cidr-reservation --subnet-id subnet-b --reservation-type explicit --cidr CIDR"
        ]
    );
}

/// A pass over the scenario's two nodes: eth1 is the ENI at device index 1, in
/// subnet-b on both; one NAD fits it and its reservation, one pokes into AWS's reserved
/// addresses without a reservation, one names an index no node has.
#[tokio::test]
async fn a_pass_judges_each_nad_against_its_enis_subnets() {
    let mut world = scenario::world();
    world.reservations = vec![reservation("subnet-b", "10.0.1.128/26", "explicit")];
    let fake = FakeEc2::new(world);
    let ec2 = reclaimer_ec2(&fake).await;
    let nad = |name: &str, master: &str, range: &str| guard::Nad {
        name: name.into(),
        read: ipam::read(&format!(
            r#"{{"type":"ipvlan","master":"{master}","ipam":{{"type":"whereabouts","range":"{range}"}}}}"#
        )),
    };
    let nads = [
        nad("apps/fits", "eth1", "10.0.1.130-10.0.1.190/24"),
        nad("apps/low", "eth1", "10.0.1.0-10.0.1.9/24"),
        nad("apps/nowhere", "eth4", "10.0.1.200-10.0.1.210/24"),
    ];
    let instances = ["i-0001".to_owned(), "i-0002".to_owned()];
    let found = guard::pass(&ec2, &nads, &instances, &Default::default())
        .await
        .unwrap()
        .findings;
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(names, ["apps/low", "apps/nowhere"], "{found:?}");
    // .1 to .3 are AWS's; whereabouts never hands out .0.
    let reserved = found["apps/low"]
        .iter()
        .filter(|l| l.contains("AWS reserves"))
        .count();
    assert_eq!(reserved, 3, "{:?}", found["apps/low"]);
    assert!(
        found["apps/low"]
            .iter()
            .any(|l| l.starts_with("10.0.1.1-10.0.1.9 of range"))
    );
    assert!(found["apps/nowhere"][0].contains("device index 4 (master eth4)"));
    let actions: Vec<String> = fake.log().into_iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            "DescribeNetworkInterfaces",
            "DescribeSubnets",
            "GetSubnetCidrReservations"
        ]
    );
}

#[tokio::test]
async fn an_unknown_subnet_is_one_line_with_the_code() {
    let fake = FakeEc2::new(scenario::world());
    let ec2 = reclaimer_ec2(&fake).await;
    let line = ec2
        .subnets(&["subnet-gone".into()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        line.starts_with("DescribeSubnets of 1 subnets: InvalidSubnetID.NotFound: "),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
}

/// The opt-in reservation, as the guard asks for it: under the reclaimer's policy and
/// the reservation policy, EC2 records it (described); a second one overlapping it is
/// refused with the code and what to do; under the reclaimer's policy alone the line
/// names the policy file to attach.
#[tokio::test]
async fn the_guard_reserves_a_range_once_and_a_refusal_is_one_line() {
    let fake = FakeEc2::new(scenario::world());
    let ec2 = reclaimer_ec2(&fake).await;
    let cidr: ipnet::IpNet = "10.0.1.192/26".parse().unwrap();

    let denied = ec2
        .reserve(
            "subnet-b",
            cidr,
            "ipmgmt: NetworkAttachmentDefinition apps/a",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        denied.starts_with(
            "CreateSubnetCidrReservation 10.0.1.192/26 in subnet-b: UnauthorizedOperation: "
        ),
        "{denied}"
    );
    assert!(
        denied.contains("deploy/reclaimer-reserve-iam-policy.json")
            && denied.contains("--guard-reserve-ranges"),
        "{denied}"
    );
    assert!(fake.world().reservations.is_empty());

    fake.set_policy(Some(controller::policy(&[
        controller::BASE,
        controller::RESERVE,
    ])));
    ec2.reserve(
        "subnet-b",
        cidr,
        "ipmgmt: NetworkAttachmentDefinition apps/a",
    )
    .await
    .unwrap();
    let made = &fake.world().reservations;
    assert_eq!(made.len(), 1);
    assert_eq!(
        (made[0].subnet.as_str(), made[0].cidr, made[0].kind.as_str()),
        ("subnet-b", cidr, "explicit")
    );
    assert_eq!(
        made[0].description,
        "ipmgmt: NetworkAttachmentDefinition apps/a"
    );
    // What the guard reads back covers it.
    let subnets = ec2.subnets(&["subnet-b".into()]).await.unwrap();
    assert_eq!(subnets[0].reservations, [cidr]);

    let overlap = ec2
        .reserve("subnet-b", "10.0.1.224/27".parse().unwrap(), "again")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        overlap.starts_with(
            "CreateSubnetCidrReservation 10.0.1.224/27 in subnet-b: InvalidParameterValue: "
        ) && overlap.contains("reserve the range by hand"),
        "{overlap}"
    );
    assert_eq!(overlap.lines().count(), 1, "{overlap}");
    assert_eq!(fake.world().reservations.len(), 1);
}
