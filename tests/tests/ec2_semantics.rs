//! ipmgr's pass (the real aws-sdk-ec2 client) against the fake EC2 over loopback:
//! what gets assigned where, how many calls it takes, and what each failure says.

use std::net::IpAddr;
use std::time::Duration;

use std::collections::BTreeSet;

use aws_sdk_ec2::config::{Credentials, Region};
use ipmgmt_tests::fake_ec2::iam::Policy as IamPolicy;
use ipmgmt_tests::fake_ec2::{Eni, FakeEc2, Faults, World};
use ipmgmt_tests::scenario::{self, MAC_N3, MAC_N6};
use ipmgr::aws;
use ipmgr::ec2::SdkEc2;
use ipmgr::eni::{Local, Policy};
use ipmgr::manager::{Manager, Outcome, Settings, Take};
use ipmgr::plan::Rules;

const MAC_N3B: &str = "0a:00:00:00:01:02";

/// The shared scenario plus a second ENI of node 1 in subnet-b: two candidates by
/// subnet, the case the hand-written script assigned to the wrong one.
fn world() -> World {
    let mut w = scenario::world();
    w.enis.push(scenario::eni(
        "eni-1n3b",
        "i-0001",
        3,
        MAC_N3B,
        "subnet-b",
        &["10.0.1.11"],
    ));
    w
}

fn eni_mut<'a>(w: &'a mut World, id: &str) -> &'a mut Eni {
    w.enis
        .iter_mut()
        .find(|e| e.id == id)
        .expect("ENI in the scenario")
}

/// The fake, and the SDK client as production builds it (timeouts, retries,
/// interceptor), pointed at the fake with test credentials and quick retries.
/// The IAM policy the project ships, as the fake enforces it.
fn shipped_policy() -> IamPolicy {
    let json = include_str!("../../deploy/iam-policy.json");
    IamPolicy::parse(&serde_json::from_str(json).expect("the policy is JSON"))
}

async fn start(world: World) -> (FakeEc2, SdkEc2) {
    let fake = FakeEc2::new(world);
    fake.set_policy(Some(shipped_policy()));
    let addr = fake.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let retries = aws::Retries {
        max_attempts: 10,
        initial_backoff: Duration::from_millis(5),
    };
    let sdk = aws::loader(retries)
        .region(Region::new("us-west-2"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .load()
        .await;
    let client = aws::ec2_client(&sdk, &aws::Attempts::default());
    (fake, SdkEc2::new(client))
}

fn settings() -> Settings {
    Settings {
        rules: Rules {
            allow_reassignment: true,
        },
        policy: Policy {
            min_device_index: 1,
            require_no_manage: true,
            cluster_tag: None,
        },
        confirm_timeout: Duration::from_secs(5),
    }
}

fn reassignment_off() -> Settings {
    Settings {
        rules: Rules {
            allow_reassignment: false,
        },
        ..settings()
    }
}

/// The shared world with 2600:1f14:aaa:1b00::42 on node i-0002's ENI.
fn ipv6_on_the_other_node() -> World {
    let mut w = world();
    eni_mut(&mut w, "eni-2n3").ipv6 = vec!["2600:1f14:aaa:1b00::42".parse().unwrap()];
    w
}

/// The one failure of a pass, as a user reads it.
fn only_failure(outcome: &Outcome) -> String {
    assert_eq!(outcome.failed.len(), 1, "{:?}", outcome.failed);
    outcome.failed[0].to_string()
}

fn local(ip: &str, iface: &str, mac: &str) -> Local {
    Local {
        ip: ip.parse().unwrap(),
        iface: iface.into(),
        mac: mac.into(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mutating(fake: &FakeEc2) -> Vec<(String, Option<String>)> {
    fake.log()
        .into_iter()
        .filter(|e| !e.action.starts_with("Describe"))
        .map(|e| (e.action, e.eni))
        .collect()
}

#[tokio::test]
async fn assigns_by_mac_batched_per_eni_and_confirms() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let locals = [
        local("10.0.1.50", "net1", MAC_N3B),
        local("10.0.1.51", "net1", MAC_N3B),
        local("100.64.1.7", "net2", MAC_N6),
    ];
    let outcome = mgr.assign(&locals, Take::All).await.unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    assert_eq!(outcome.calls, 2);
    // The MAC decides between the two ENIs in subnet-b.
    assert_eq!(fake.holder(ip("10.0.1.50")).as_deref(), Some("eni-1n3b"));
    assert_eq!(fake.holder(ip("10.0.1.51")).as_deref(), Some("eni-1n3b"));
    assert_eq!(fake.holder(ip("100.64.1.7")).as_deref(), Some("eni-1n6"));
    // Describe, one assign per ENI, one confirming describe.
    assert_eq!(fake.log().len(), 4, "{:?}", fake.log());

    fake.clear_log();
    let again = mgr.assign(&locals, Take::All).await.unwrap();
    assert_eq!(again.calls, 0);
    assert!(
        mutating(&fake).is_empty(),
        "no mutating call for addresses already in place"
    );
}

#[tokio::test]
async fn one_bad_address_is_reported_alone_after_the_others_are_assigned() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let locals = [
        // subnet-b has two ENIs on this node and no MAC decides: no guess.
        local("10.0.1.77", "net1", "0e:00:00:00:00:99"),
        // A node-local bridge: not the VPC's.
        local("192.168.77.5", "br0", "0e:00:00:00:00:98"),
        local("fd00:77::5", "br0", "0e:00:00:00:00:98"),
        // Placed by subnet containment (a secondary VPC CIDR).
        local("100.64.9.9", "net2", "0e:00:00:00:00:97"),
        local("10.0.1.50", "net3", MAC_N3),
    ];
    let outcome = mgr.assign(&locals, Take::All).await.unwrap();
    assert_eq!(fake.holder(ip("100.64.9.9")).as_deref(), Some("eni-1n6"));
    assert_eq!(fake.holder(ip("10.0.1.50")).as_deref(), Some("eni-1n3"));
    assert_eq!(fake.holder(ip("10.0.1.77")), None);
    let skipped: Vec<_> = outcome.skipped.iter().map(|l| l.ip).collect();
    assert_eq!(skipped, [ip("192.168.77.5"), ip("fd00:77::5")]);
    let line = only_failure(&outcome);
    assert!(line.starts_with("10.0.1.77 on net1"), "{line}");
    assert!(line.contains("eni-1n3, eni-1n3b"), "{line}");
    assert!(!outcome.is_complete());
}

#[tokio::test]
async fn enis_the_vpc_cni_manages_are_refused_by_name() {
    let mut w = world();
    eni_mut(&mut w, "eni-1n3").tags.clear();
    let (fake, ec2) = start(w.clone()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let outcome = mgr
        .assign(
            &[
                local("10.0.1.50", "net1", MAC_N3),
                // The MAC of the primary ENI.
                local("10.0.0.50", "net2", "0a:00:00:00:00:01"),
                local("100.64.1.7", "net3", MAC_N6),
            ],
            Take::All,
        )
        .await
        .unwrap();
    assert_eq!(fake.holder(ip("100.64.1.7")).as_deref(), Some("eni-1n6"));
    assert_eq!(fake.holder(ip("10.0.1.50")), None);
    assert_eq!(fake.holder(ip("10.0.0.50")), None);
    let lines: Vec<String> = outcome.failed.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("eni-1n3") && lines[0].contains("node.k8s.amazonaws.com/no_manage=true"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("eni-1primary") && lines[1].contains("primary ENI"),
        "{lines:?}"
    );
    assert!(
        mutating(&fake)
            .iter()
            .all(|(_, eni)| eni.as_deref() == Some("eni-1n6")),
        "{:?}",
        mutating(&fake)
    );

    // With the tag requirement off, the untagged ENI is a target for ipmgr, but the
    // shipped IAM policy refuses it, and the line says what to tag.
    let lax = Settings {
        policy: Policy {
            require_no_manage: false,
            ..settings().policy
        },
        ..settings()
    };
    let (fake, ec2) = start(w.clone()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), lax.clone());
    let outcome = mgr
        .assign(&[local("10.0.1.50", "net1", MAC_N3)], Take::All)
        .await
        .unwrap();
    let line = only_failure(&outcome);
    assert!(
        line.contains("UnauthorizedOperation")
            && line.contains("eni-1n3")
            && line.contains("the ENI is not tagged node.k8s.amazonaws.com/no_manage=true")
            && line.contains("tag the Multus ENI"),
        "{line}"
    );
    assert_eq!(fake.holder(ip("10.0.1.50")), None);

    // Under a policy without that condition, it is assigned; the primary never.
    let (fake, ec2) = start(w).await;
    fake.set_policy(None);
    let mgr = Manager::new(ec2, "i-0001".into(), lax);
    let outcome = mgr
        .assign(&[local("10.0.1.50", "net1", MAC_N3)], Take::All)
        .await
        .unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    assert_eq!(fake.holder(ip("10.0.1.50")).as_deref(), Some("eni-1n3"));
}

/// The shipped policy with the user guide's cluster tag added to the condition of
/// the mutating actions.
fn policy_with_cluster_tag(key: &str, value: &str) -> IamPolicy {
    let mut json: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/iam-policy.json")).unwrap();
    let statements = json["Statement"].as_array_mut().unwrap();
    let mutating = (statements.iter_mut())
        .find(|s| s["Sid"] == "IpmgmtAssignOnMultusEnis")
        .expect("the statement of the mutating actions");
    mutating["Condition"]["StringEquals"][format!("ec2:ResourceTag/{key}")] = value.into();
    IamPolicy::parse(&json)
}

#[tokio::test]
async fn a_cluster_tag_keeps_the_manager_off_another_clusters_enis() {
    const CLUSTER: &str = "kubernetes.io/cluster/prod=owned";
    // Both Multus ENIs are tagged no_manage; only eni-1n3 carries the cluster's tag,
    // and the role's policy requires it.
    let mut w = world();
    let n3 = w.enis.iter_mut().find(|e| e.id == "eni-1n3").unwrap();
    n3.tags
        .push(("kubernetes.io/cluster/prod".into(), "owned".into()));
    let pod = [
        local("10.0.1.50", "net1", MAC_N3),
        local("100.64.0.50", "net2", MAC_N6),
    ];

    // The manager not told the tag: EC2 refuses the untagged ENI, and the line says
    // that the policy may require a cluster tag.
    let (fake, ec2) = start(w.clone()).await;
    fake.set_policy(Some(policy_with_cluster_tag(
        "kubernetes.io/cluster/prod",
        "owned",
    )));
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let outcome = mgr.assign(&pod, Take::All).await.unwrap();
    let line = only_failure(&outcome);
    assert!(
        line.contains("100.64.0.50")
            && line.contains("eni-1n6")
            && line.contains("UnauthorizedOperation")
            && line.contains("if the role's policy also requires a cluster tag, tag the ENI with it and set aws.clusterTag"),
        "{line}"
    );
    assert_eq!(fake.holder(ip("10.0.1.50")).as_deref(), Some("eni-1n3"));
    assert_eq!(fake.holder(ip("100.64.0.50")), None);

    // Told the tag (IPMGR_CLUSTER_TAG): the untagged ENI is refused by name before any
    // call to it.
    let (fake, ec2) = start(w).await;
    fake.set_policy(Some(policy_with_cluster_tag(
        "kubernetes.io/cluster/prod",
        "owned",
    )));
    let tagged = Settings {
        policy: Policy {
            cluster_tag: Some(CLUSTER.parse().unwrap()),
            ..settings().policy
        },
        ..settings()
    };
    let mgr = Manager::new(ec2, "i-0001".into(), tagged);
    let outcome = mgr.assign(&pod, Take::All).await.unwrap();
    let line = only_failure(&outcome);
    assert!(
        line.contains("100.64.0.50")
            && line.contains("eni-1n6")
            && line.contains("not tagged kubernetes.io/cluster/prod=owned")
            && line.contains("IPMGR_CLUSTER_TAG"),
        "{line}"
    );
    assert_eq!(fake.holder(ip("10.0.1.50")).as_deref(), Some("eni-1n3"));
    let calls_to_1n6 = (fake.log().iter())
        .filter(|e| e.eni.as_deref() == Some("eni-1n6"))
        .count();
    assert_eq!(calls_to_1n6, 0, "{:?}", fake.log());
}

#[tokio::test]
async fn floating_ip_moves_from_another_node_and_is_confirmed_after_the_remap() {
    let (fake, ec2) = start(world()).await;
    fake.set_faults(Faults {
        remap_delay_ms: 300,
        ..Faults::default()
    });
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let outcome = mgr
        .assign(&[local("10.0.1.99", "net1", MAC_N3)], Take::All)
        .await
        .unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    assert_eq!(fake.holder(ip("10.0.1.99")).as_deref(), Some("eni-1n3"));
    let describes = fake
        .log()
        .iter()
        .filter(|e| e.action == "DescribeNetworkInterfaces")
        .count();
    assert!(
        describes >= 3,
        "the pass must wait for the remap to show: {describes} describes"
    );
}

#[tokio::test]
async fn a_pass_that_does_not_take_repairs_but_never_steals() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    // The pod still holds 10.0.1.99, which the peer on i-0002 has since taken, and
    // 10.0.1.50, which no ENI holds any more.
    let locals = [
        local("10.0.1.99", "net1", MAC_N3),
        local("10.0.1.50", "net1", MAC_N3),
    ];
    let nothing_new = BTreeSet::new();
    let outcome = mgr.assign(&locals, Take::Only(&nothing_new)).await.unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    assert_eq!(
        outcome.left,
        [(ip("10.0.1.99"), "eni-2n3".to_string())],
        "left with its new owner"
    );
    assert_eq!(fake.holder(ip("10.0.1.99")).as_deref(), Some("eni-2n3"));
    assert_eq!(
        fake.holder(ip("10.0.1.50")).as_deref(),
        Some("eni-1n3"),
        "repaired"
    );

    // The pod takes the address again (a local address event): now it moves.
    let taken = BTreeSet::from([ip("10.0.1.99")]);
    mgr.assign(&locals, Take::Only(&taken)).await.unwrap();
    assert_eq!(fake.holder(ip("10.0.1.99")).as_deref(), Some("eni-1n3"));
}

#[tokio::test]
async fn reassignment_off_refuses_to_take_an_address() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), reassignment_off());
    let outcome = mgr
        .assign(&[local("10.0.1.99", "net1", MAC_N3)], Take::All)
        .await
        .unwrap();
    let line = only_failure(&outcome);
    assert!(
        line.contains("held by eni-2n3") && line.contains("allow-reassignment"),
        "{line}"
    );
    assert!(outcome.failed[0].is_permanent());
    assert!(mutating(&fake).is_empty(), "{:?}", mutating(&fake));
    assert_eq!(fake.holder(ip("10.0.1.99")).as_deref(), Some("eni-2n3"));
}

#[tokio::test]
async fn reassignment_off_never_unassigns_ipv6_from_its_holder() {
    let (fake, ec2) = start(ipv6_on_the_other_node()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), reassignment_off());
    let outcome = mgr
        .assign(
            &[local("2600:1f14:aaa:1b00::42", "net1", MAC_N3)],
            Take::All,
        )
        .await
        .unwrap();
    let line = only_failure(&outcome);
    assert!(line.contains("held by eni-2n3"), "{line}");
    assert!(mutating(&fake).is_empty(), "{:?}", mutating(&fake));
    assert_eq!(
        fake.holder(ip("2600:1f14:aaa:1b00::42")).as_deref(),
        Some("eni-2n3")
    );
}

#[tokio::test]
async fn full_eni_names_the_eni_and_its_count() {
    let mut w = world();
    eni_mut(&mut w, "eni-1n3").ipv4 = (10..20)
        .map(|n| format!("10.0.1.{n}").parse().unwrap())
        .collect();
    let (_fake, ec2) = start(w).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let outcome = mgr
        .assign(&[local("10.0.1.50", "net1", MAC_N3)], Take::All)
        .await
        .unwrap();
    let line = only_failure(&outcome);
    assert!(line.starts_with("10.0.1.50 on net1: "), "{line}");
    assert!(line.contains("PrivateIpAddressLimitExceeded"), "{line}");
    assert!(
        line.contains("ENI eni-1n3 holds 10 IPv4 addresses"),
        "{line}"
    );
    assert!(line.contains("larger instance type"), "{line}");
}

#[tokio::test]
async fn missing_permission_names_the_action_and_the_policy() {
    let (fake, ec2) = start(world()).await;
    fake.set_faults(Faults {
        deny: ["AssignPrivateIpAddresses".to_string()].into(),
        ..Faults::default()
    });
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let outcome = mgr
        .assign(&[local("10.0.1.50", "net1", MAC_N3)], Take::All)
        .await
        .unwrap();
    let line = only_failure(&outcome);
    assert!(line.contains("UnauthorizedOperation"), "{line}");
    assert!(
        line.contains("ec2:AssignPrivateIpAddresses") && line.contains("deploy/iam-policy.json"),
        "{line}"
    );
    // The ENI is tagged, so the role is what lacks the permission.
    assert!(
        line.contains("eni-1n3")
            && line.contains("the ENI is tagged node.k8s.amazonaws.com/no_manage=true, so the IP manager's IAM role lacks ec2:AssignPrivateIpAddresses"),
        "{line}"
    );
    assert!(!line.contains('\n'));
}

#[tokio::test]
async fn ipv6_is_unassigned_from_its_holder_then_assigned_here() {
    let (fake, ec2) = start(ipv6_on_the_other_node()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let outcome = mgr
        .assign(
            &[local("2600:1f14:aaa:1b00::42", "net1", MAC_N3)],
            Take::All,
        )
        .await
        .unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    assert_eq!(
        fake.holder(ip("2600:1f14:aaa:1b00::42")).as_deref(),
        Some("eni-1n3")
    );
    // At a start the assignment is tried first; EC2's InvalidIPAddress.InUse makes the
    // holder known, and only then is it unassigned there.
    assert_eq!(
        answered(&fake),
        [
            call(
                "AssignIpv6Addresses",
                "eni-1n3",
                Some("InvalidIPAddress.InUse")
            ),
            call("UnassignIpv6Addresses", "eni-2n3", None),
            call("AssignIpv6Addresses", "eni-1n3", None),
        ]
    );
}

#[tokio::test]
async fn an_announced_ipv6_address_has_its_holder_looked_up_first() {
    let (fake, ec2) = start(ipv6_on_the_other_node()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let locals = [local("2600:1f14:aaa:1b00::42", "net1", MAC_N3)];
    let announced: BTreeSet<IpAddr> = locals.iter().map(|l| l.ip).collect();
    let outcome = mgr.assign(&locals, Take::Only(&announced)).await.unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    assert_eq!(
        mutating(&fake),
        vec![
            (
                "UnassignIpv6Addresses".to_string(),
                Some("eni-2n3".to_string())
            ),
            (
                "AssignIpv6Addresses".to_string(),
                Some("eni-1n3".to_string())
            ),
        ]
    );
}

#[tokio::test]
async fn a_fresh_ipv6_address_costs_no_holder_lookup() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let locals = [
        local("10.0.1.50", "net1", MAC_N3),
        local("2600:1f14:aaa:1b00::50", "net1", MAC_N3),
    ];
    let outcome = mgr.assign(&locals, Take::All).await.unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    let actions: Vec<String> = fake.log().into_iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            "DescribeNetworkInterfaces",
            "AssignPrivateIpAddresses",
            "AssignIpv6Addresses",
            "DescribeNetworkInterfaces"
        ],
        "the instance's ENIs, one Assign per family, the confirmation"
    );
}

#[tokio::test]
async fn half_the_requests_throttled_still_converges() {
    let (fake, ec2) = start(world()).await;
    fake.set_faults(Faults {
        throttle_fraction: 0.5,
        ..Faults::default()
    });
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let locals = [
        local("10.0.1.50", "net1", MAC_N3),
        local("100.64.1.7", "net2", MAC_N6),
    ];
    let outcome = mgr.assign(&locals, Take::All).await.unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    assert_eq!(fake.holder(ip("10.0.1.50")).as_deref(), Some("eni-1n3"));
    assert_eq!(fake.holder(ip("100.64.1.7")).as_deref(), Some("eni-1n6"));
    let throttled = fake
        .log()
        .iter()
        .filter(|e| e.code.as_deref() == Some("RequestLimitExceeded"))
        .count();
    assert!(throttled > 0, "the fault was not exercised");
}

#[tokio::test]
async fn release_unassigns_only_what_the_pod_still_holds_from_its_own_eni() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let (kept, given_up) = (
        local("10.0.1.50", "net1", MAC_N3),
        local("10.0.1.51", "net1", MAC_N3),
    );
    let vip = local("10.0.1.98", "net1", MAC_N3);
    let outcome = mgr
        .assign(&[kept.clone(), given_up, vip.clone()], Take::All)
        .await
        .unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    // A pod on this node whose interface rides on the other ENI of subnet-b takes the
    // floating IP; this pod has not noticed yet and still holds it.
    fake.move_address(vip.ip, "eni-1n3b");
    // 10.0.1.51 was given up by the pod (and may be another pod's now); 10.0.1.99 is
    // on the other node; 10.0.1.10 is the ENI's primary.
    let calls = mgr
        .release(&[
            kept,
            vip,
            local("10.0.1.99", "net1", MAC_N3),
            local("10.0.1.10", "net1", MAC_N3),
        ])
        .await
        .unwrap();
    // From the ENIs the pass left, 10.0.1.50 and the VIP in one unassign, which EC2
    // refuses since the VIP moved; then, from the ENIs described again, 10.0.1.50.
    assert_eq!(calls, 2);
    let last: Vec<(String, u16)> = (fake.log().iter().rev().take(3).rev())
        .map(|e| (e.action.clone(), e.status))
        .collect();
    assert_eq!(
        last,
        [
            ("UnassignPrivateIpAddresses".to_string(), 400),
            ("DescribeNetworkInterfaces".to_string(), 200),
            ("UnassignPrivateIpAddresses".to_string(), 200)
        ]
    );
    assert_eq!(fake.holder(ip("10.0.1.50")), None);
    assert_eq!(fake.holder(ip("10.0.1.51")).as_deref(), Some("eni-1n3"));
    assert_eq!(
        fake.holder(ip("10.0.1.98")).as_deref(),
        Some("eni-1n3b"),
        "the new owner's ENI is never touched"
    );
    assert_eq!(fake.holder(ip("10.0.1.99")).as_deref(), Some("eni-2n3"));
    assert_eq!(fake.holder(ip("10.0.1.10")).as_deref(), Some("eni-1n3"));
}

#[tokio::test]
async fn rate_limits_follow_ec2s_buckets() {
    use tower::ServiceExt;
    let (fake, _) = start(world()).await;
    // Buckets alone: under the policy, an ENI that does not exist is unauthorized.
    fake.set_policy(None);
    fake.set_faults(Faults {
        rate_limits: true,
        ..Faults::default()
    });
    // Mutating calls: a burst of 100, then throttled (5/s refill).
    let mut codes = Vec::new();
    for _ in 0..101 {
        let body =
            "Action=UnassignPrivateIpAddresses&Version=2016-11-15&NetworkInterfaceId=eni-nope";
        let req = http::Request::post("/")
            .body(axum::body::Body::from(body))
            .unwrap();
        codes.push(fake.router().oneshot(req).await.unwrap().status().as_u16());
    }
    assert!(codes[..100].iter().all(|c| *c == 400), "{codes:?}");
    assert_eq!(codes[100], 503);
    let last = fake.log().pop().unwrap();
    assert_eq!(last.code.as_deref(), Some("RequestLimitExceeded"));
}

/// Mutating calls with the code EC2 answered each.
fn answered(fake: &FakeEc2) -> Vec<(String, String, Option<String>)> {
    (fake.log().into_iter())
        .filter(|e| !e.action.starts_with("Describe"))
        .map(|e| (e.action, e.eni.unwrap_or_default(), e.code))
        .collect()
}

fn call(action: &str, eni: &str, code: Option<&str>) -> (String, String, Option<String>) {
    (action.into(), eni.into(), code.map(str::to_owned))
}

/// The shared world plus a VPC-CNI ENI on node i-0002 in subnet-b (untagged, as the
/// VPC CNI leaves its ENIs), holding 10.0.1.77 and 2600:1f14:aaa:1b00::77 for its pods.
fn vpc_cni_holds_an_address() -> World {
    let mut w = world();
    let mut cni = scenario::eni(
        "eni-2cni",
        "i-0002",
        2,
        "0a:00:00:00:11:02",
        "subnet-b",
        &["10.0.1.21", "10.0.1.77"],
    );
    cni.tags.clear();
    cni.ipv6 = vec!["2600:1f14:aaa:1b00::77".parse().unwrap()];
    w.enis.push(cni);
    w
}

#[tokio::test]
async fn an_address_is_assigned_without_reassignment_until_its_holder_is_known() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    // 10.0.1.99 is a floating IP on the peer's Multus ENI; 10.0.1.50 is free.
    let outcome = mgr
        .assign(
            &[
                local("10.0.1.99", "net1", MAC_N3),
                local("10.0.1.50", "net1", MAC_N3),
            ],
            Take::All,
        )
        .await
        .unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    assert_eq!(outcome.taken, [(ip("10.0.1.99"), "eni-2n3".to_string())]);
    assert_eq!(fake.holder(ip("10.0.1.99")).as_deref(), Some("eni-1n3"));
    assert_eq!(fake.holder(ip("10.0.1.50")).as_deref(), Some("eni-1n3"));
    // The first call asks for no reassignment, so EC2 refuses the whole batch; with the
    // holder known (a Multus ENI of this cluster), the free address goes without
    // reassignment and the held one with it.
    assert_eq!(
        answered(&fake),
        [
            call(
                "AssignPrivateIpAddresses",
                "eni-1n3",
                Some("InvalidIPAddress.InUse")
            ),
            call("AssignPrivateIpAddresses", "eni-1n3", None),
            call("AssignPrivateIpAddresses", "eni-1n3", None),
        ]
    );
}

#[tokio::test]
async fn an_address_a_vpc_cni_eni_holds_is_never_taken_and_the_holder_is_named() {
    for (address, assign) in [
        ("10.0.1.77", "AssignPrivateIpAddresses"),
        ("2600:1f14:aaa:1b00::77", "AssignIpv6Addresses"),
    ] {
        let (fake, ec2) = start(vpc_cni_holds_an_address()).await;
        let mgr = Manager::new(ec2, "i-0001".into(), settings());
        let outcome = mgr
            .assign(&[local(address, "net1", MAC_N3)], Take::All)
            .await
            .unwrap();
        let line = only_failure(&outcome);
        assert!(
            line.starts_with(&format!("{address} on net1 is held by eni-2cni")),
            "{line}"
        );
        assert!(
            line.contains("not tagged node.k8s.amazonaws.com/no_manage=true")
                && line.contains("handed out twice")
                && line.contains("subnet CIDR reservation"),
            "{line}"
        );
        assert!(outcome.failed[0].is_permanent());
        assert_eq!(
            answered(&fake),
            [call(assign, "eni-1n3", Some("InvalidIPAddress.InUse"))],
            "one refused assignment, nothing unassigned from the holder"
        );
        assert_eq!(fake.holder(ip(address)).as_deref(), Some("eni-2cni"));

        // Announced by an address event: the holder is looked up first, and no call made.
        let (fake, ec2) = start(vpc_cni_holds_an_address()).await;
        let mgr = Manager::new(ec2, "i-0001".into(), settings());
        let announced = BTreeSet::from([ip(address)]);
        let outcome = mgr
            .assign(&[local(address, "net1", MAC_N3)], Take::Only(&announced))
            .await
            .unwrap();
        assert!(only_failure(&outcome).contains("held by eni-2cni"));
        assert!(answered(&fake).is_empty(), "{:?}", answered(&fake));
        assert_eq!(fake.holder(ip(address)).as_deref(), Some("eni-2cni"));
    }
}

#[tokio::test]
async fn an_address_outside_the_vpc_on_the_multus_interface_is_left_alone() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    // A VIP that route tables carry across AZs, an IPv6 one, and an ordinary address,
    // all on the interface with the Multus ENI's MAC.
    let locals = [
        local("192.168.50.5", "net1", MAC_N3),
        local("fd00:50::5", "net1", MAC_N3),
        local("10.0.1.50", "net1", MAC_N3),
    ];
    let outcome = mgr.assign(&locals, Take::All).await.unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    let skipped: Vec<IpAddr> = outcome.skipped.iter().map(|l| l.ip).collect();
    assert_eq!(skipped, [ip("192.168.50.5"), ip("fd00:50::5")]);
    assert_eq!(outcome.placed, [(ip("10.0.1.50"), "eni-1n3".to_string())]);
    assert_eq!(fake.holder(ip("10.0.1.50")).as_deref(), Some("eni-1n3"));
    let actions: Vec<String> = fake.log().into_iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            "DescribeNetworkInterfaces",
            "AssignPrivateIpAddresses",
            "AssignIpv6Addresses",
            "DescribeSubnets",
            "DescribeVpcs",
            "AssignPrivateIpAddresses",
            "DescribeNetworkInterfaces",
        ],
        "refused as outside the subnet, the subnet and VPC described once, the rest assigned"
    );

    // The next pass knows: no refused call again.
    let before = fake.log().len();
    let nothing_new = BTreeSet::new();
    let outcome = mgr.assign(&locals, Take::Only(&nothing_new)).await.unwrap();
    assert!(outcome.is_complete(), "{:?}", outcome.failed);
    let again: Vec<String> = (fake.log().into_iter().skip(before))
        .map(|e| e.action)
        .collect();
    assert_eq!(again, ["DescribeNetworkInterfaces"]);
}

#[tokio::test]
async fn an_address_in_the_vpc_but_outside_the_enis_subnet_is_named() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let outcome = mgr
        .assign(&[local("10.0.2.5", "net1", MAC_N3)], Take::All)
        .await
        .unwrap();
    let line = only_failure(&outcome);
    assert_eq!(
        line,
        "10.0.2.5 on net1 rides on eni-1n3 (by MAC), but its subnet subnet-b \
         (10.0.1.0/24, 2600:1f14:aaa:1b00::/64) does not contain it; fix the address pool of that network"
    );
    assert!(outcome.skipped.is_empty());
    assert_eq!(fake.holder(ip("10.0.2.5")), None);
}
