//! ipmgr's pass (the real aws-sdk-ec2 client) against the fake EC2 over loopback:
//! what gets assigned where, how many calls it takes, and what each failure says.

use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use ipmgmt_tests::fake_ec2::{Eni, FakeEc2, Faults, World};
use ipmgmt_tests::scenario::{self, MAC_N3, MAC_N6};
use ipmgr::ec2::SdkEc2;
use ipmgr::eni::Local;
use ipmgr::manager::{Manager, PassError, Settings};

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

async fn start(world: World) -> (FakeEc2, SdkEc2) {
    let fake = FakeEc2::new(world);
    let addr = fake.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let retry = aws_config::retry::RetryConfig::standard()
        .with_max_attempts(10)
        .with_initial_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(50));
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-west-2"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .retry_config(retry)
        .build();
    (fake, SdkEc2::new(aws_sdk_ec2::Client::from_conf(conf)))
}

fn settings() -> Settings {
    Settings {
        allow_reassignment: true,
        min_device_index: 1,
        confirm_timeout: Duration::from_secs(5),
    }
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
    let outcome = mgr.assign(&locals).await.unwrap();
    assert_eq!(outcome.calls, 2);
    // The MAC decides between the two ENIs in subnet-b.
    assert_eq!(fake.holder(ip("10.0.1.50")).as_deref(), Some("eni-1n3b"));
    assert_eq!(fake.holder(ip("10.0.1.51")).as_deref(), Some("eni-1n3b"));
    assert_eq!(fake.holder(ip("100.64.1.7")).as_deref(), Some("eni-1n6"));
    // Describe, one assign per ENI, one confirming describe.
    assert_eq!(fake.log().len(), 4, "{:?}", fake.log());

    fake.clear_log();
    let again = mgr.assign(&locals).await.unwrap();
    assert_eq!(again.calls, 0);
    assert!(
        mutating(&fake).is_empty(),
        "no mutating call for addresses already in place"
    );
}

#[tokio::test]
async fn subnet_containment_when_no_mac_matches() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    mgr.assign(&[local("100.64.9.9", "net2", "0e:00:00:00:00:99")])
        .await
        .unwrap();
    assert_eq!(fake.holder(ip("100.64.9.9")).as_deref(), Some("eni-1n6"));

    // subnet-b has two ENIs on this node: no guess.
    let err = mgr
        .assign(&[local("10.0.1.77", "net1", "0e:00:00:00:00:99")])
        .await
        .unwrap_err();
    assert!(matches!(err, PassError::Resolve(_)), "{err}");
    assert!(err.to_string().contains("eni-1n3, eni-1n3b"), "{err}");
    assert_eq!(fake.holder(ip("10.0.1.77")), None);
}

#[tokio::test]
async fn floating_ip_moves_from_another_node_and_is_confirmed_after_the_remap() {
    let (fake, ec2) = start(world()).await;
    fake.set_faults(Faults {
        remap_delay_ms: 300,
        ..Faults::default()
    });
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    mgr.assign(&[local("10.0.1.99", "net1", MAC_N3)])
        .await
        .unwrap();
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
async fn reassignment_off_refuses_to_take_an_address() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(
        ec2,
        "i-0001".into(),
        Settings {
            allow_reassignment: false,
            ..settings()
        },
    );
    let err = mgr
        .assign(&[local("10.0.1.99", "net1", MAC_N3)])
        .await
        .unwrap_err();
    let line = err.to_string();
    assert!(
        line.contains("InvalidIPAddress.InUse") && line.contains("allow-reassignment"),
        "{line}"
    );
    assert!(err.is_permanent());
    assert_eq!(fake.holder(ip("10.0.1.99")).as_deref(), Some("eni-2n3"));
}

#[tokio::test]
async fn full_eni_names_the_eni_and_its_count() {
    let mut w = world();
    eni_mut(&mut w, "eni-1n3").ipv4 = (10..20)
        .map(|n| format!("10.0.1.{n}").parse().unwrap())
        .collect();
    let (_fake, ec2) = start(w).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    let err = mgr
        .assign(&[local("10.0.1.50", "net1", MAC_N3)])
        .await
        .unwrap_err();
    let line = err.to_string();
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
    let err = mgr
        .assign(&[local("10.0.1.50", "net1", MAC_N3)])
        .await
        .unwrap_err();
    let line = err.to_string();
    assert!(line.contains("UnauthorizedOperation"), "{line}");
    assert!(
        line.contains("ec2:AssignPrivateIpAddresses") && line.contains("deploy/iam-policy.json"),
        "{line}"
    );
    assert!(!line.contains('\n'));
}

#[tokio::test]
async fn ipv6_is_unassigned_from_its_holder_then_assigned_here() {
    let mut w = world();
    eni_mut(&mut w, "eni-2n3").ipv6 = vec!["2600:1f14:aaa:1b00::42".parse().unwrap()];
    let (fake, ec2) = start(w).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    mgr.assign(&[local("2600:1f14:aaa:1b00::42", "net1", MAC_N3)])
        .await
        .unwrap();
    assert_eq!(
        fake.holder(ip("2600:1f14:aaa:1b00::42")).as_deref(),
        Some("eni-1n3")
    );
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
    mgr.assign(&locals).await.unwrap();
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
async fn release_unassigns_only_what_the_pod_still_holds_here() {
    let (fake, ec2) = start(world()).await;
    let mgr = Manager::new(ec2, "i-0001".into(), settings());
    mgr.assign(&[
        local("10.0.1.50", "net1", MAC_N3),
        local("10.0.1.51", "net1", MAC_N3),
    ])
    .await
    .unwrap();
    // 10.0.1.51 was given up by the pod (and may be another pod's now); 10.0.1.99 is
    // on the other node; 10.0.1.10 is the ENI's primary.
    let calls = mgr
        .release(&[ip("10.0.1.50"), ip("10.0.1.99"), ip("10.0.1.10")])
        .await
        .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(fake.holder(ip("10.0.1.50")), None);
    assert_eq!(fake.holder(ip("10.0.1.51")).as_deref(), Some("eni-1n3"));
    assert_eq!(fake.holder(ip("10.0.1.99")).as_deref(), Some("eni-2n3"));
    assert_eq!(fake.holder(ip("10.0.1.10")).as_deref(), Some("eni-1n3"));
}

#[tokio::test]
async fn rate_limits_follow_ec2s_buckets() {
    use tower::ServiceExt;
    let (fake, _) = start(world()).await;
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
