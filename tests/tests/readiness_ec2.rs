//! What node readiness writes to EC2 when it attaches a node's missing Multus ENI,
//! through the controller's client as production builds it, against the fake EC2
//! under the controller's policies: nothing without the attachment policy; with it,
//! an ENI created tagged, attached, deleted with the instance; a try that failed
//! halfway finished by the next one without a second ENI; an ENI from a pool.

mod controller;

use controller::{ATTACH, BASE, controller_ec2, deny, policy};
use ipmgmt_reclaimer::ec2::{ATTACHED_FOR_TAG, Ec2, EniSource, POOL_TAG};
use ipmgmt_tests::fake_ec2::{FakeEc2, Faults};
use ipmgmt_tests::scenario;

const NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";

fn create() -> EniSource {
    EniSource::Create {
        subnet: "subnet-b".into(),
        security_groups: vec!["sg-0multus".into()],
    }
}

#[tokio::test]
async fn a_missing_eni_is_created_tagged_attached_and_deleted_with_the_instance() {
    let fake = FakeEc2::new(scenario::world());
    let ec2 = controller_ec2(&fake, &[BASE]).await;
    let enis = fake.world().enis.len();

    // The controller's policy alone: refused, one line naming the policy to attach,
    // and nothing made.
    let line = (ec2.attach_multus_eni("i-0002", 2, &create()).await)
        .unwrap_err()
        .to_string();
    assert!(
        line.starts_with(
            "CreateNetworkInterface i-0002 at device index 2: UnauthorizedOperation: "
        ),
        "{line}"
    );
    assert!(
        line.contains("deploy/reclaimer-attach-iam-policy.json"),
        "{line}"
    );
    assert_eq!(fake.world().enis.len(), enis);

    fake.set_policy(Some(policy(&[BASE, ATTACH])));
    let id = ec2.attach_multus_eni("i-0002", 2, &create()).await.unwrap();
    let world = fake.world();
    let eni = world.enis.iter().find(|e| e.id == id).unwrap();
    assert_eq!(
        (
            eni.instance_id.as_deref(),
            eni.device_index,
            eni.subnet_id.as_str()
        ),
        (Some("i-0002"), 2, "subnet-b")
    );
    assert!(
        eni.delete_on_termination,
        "created for the instance, deleted with it"
    );
    let tags: Vec<(&str, &str)> = (eni.tags.iter())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(tags, [(NO_MANAGE, "true"), (ATTACHED_FOR_TAG, "i-0002/2")]);
    // Its primary address is EC2's pick, after AWS's four.
    assert_eq!(eni.ipv4[0].to_string(), "10.0.1.4");
    // Readiness sees it as a Multus ENI of the node.
    let multus = ec2.multus_enis(&["i-0002".into()]).await.unwrap();
    assert!(
        multus.iter().any(|m| m.id == id && m.device_index == 2),
        "{multus:?}"
    );
}

#[tokio::test]
async fn a_try_that_failed_after_creating_is_finished_without_a_second_eni() {
    let fake = FakeEc2::new(scenario::world());
    let ec2 = controller_ec2(&fake, &[BASE, ATTACH]).await;
    deny(&fake, "AttachNetworkInterface");
    let line = (ec2.attach_multus_eni("i-0002", 2, &create()).await)
        .unwrap_err()
        .to_string();
    assert!(line.starts_with("AttachNetworkInterface eni-"), "{line}");
    let made: Vec<String> = (fake.world().enis.iter())
        .filter(|e| e.tags.iter().any(|(k, _)| k == ATTACHED_FOR_TAG))
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(made.len(), 1, "made, left available");

    fake.set_faults(Faults::default());
    let id = ec2.attach_multus_eni("i-0002", 2, &create()).await.unwrap();
    assert_eq!(id, made[0], "the same ENI, found by its tag");
    let creates = (fake.log().iter())
        .filter(|e| e.action == "CreateNetworkInterface")
        .count();
    assert_eq!(creates, 1);
}

/// A create sent again for the same node and index (the SDK retrying one whose answer
/// was lost, or a describe that does not show the new ENI yet) carries the same client
/// token, and EC2 answers with the ENI it made.
#[tokio::test]
async fn a_create_sent_again_makes_no_second_eni() {
    let fake = FakeEc2::new(scenario::world());
    let ec2 = controller_ec2(&fake, &[BASE, ATTACH]).await;
    deny(&fake, "AttachNetworkInterface");
    let _ = ec2.attach_multus_eni("i-0002", 2, &create()).await;
    // The describe misses it this time (its tag not visible yet).
    let mut world = fake.world();
    let made = world.enis.last_mut().unwrap();
    let id = made.id.clone();
    made.tags.retain(|(k, _)| k != ATTACHED_FOR_TAG);
    fake.set_world(world);
    fake.set_faults(Faults::default());
    assert_eq!(
        ec2.attach_multus_eni("i-0002", 2, &create()).await.unwrap(),
        id
    );
    assert_eq!(fake.world().enis.len(), scenario::world().enis.len() + 1);
}

/// DeleteOnTermination refused after the attachment: the attach says so, and the ENI,
/// attached, reads as the controller's without it, which the next pass sets.
#[tokio::test]
async fn delete_on_termination_refused_is_set_by_the_next_pass() {
    let fake = FakeEc2::new(scenario::world());
    let ec2 = controller_ec2(&fake, &[BASE, ATTACH]).await;
    deny(&fake, "ModifyNetworkInterfaceAttribute");
    let line = (ec2.attach_multus_eni("i-0002", 2, &create()).await)
        .unwrap_err()
        .to_string();
    assert!(
        line.starts_with("ModifyNetworkInterfaceAttribute eni-"),
        "{line}"
    );
    let multus = ec2.multus_enis(&["i-0002".into()]).await.unwrap();
    let eni = multus.iter().find(|m| m.device_index == 2).unwrap();
    assert!(
        eni.attached_by_controller && !eni.delete_on_termination,
        "{eni:?}"
    );
    fake.set_faults(Faults::default());
    ec2.keep_with_instance(&eni.id, eni.attachment.as_deref().unwrap())
        .await
        .unwrap();
    let world = fake.world();
    assert!(
        world
            .enis
            .iter()
            .find(|e| e.id == eni.id)
            .unwrap()
            .delete_on_termination
    );
}

#[tokio::test]
async fn a_pool_gives_an_available_tagged_eni_and_never_an_untagged_one() {
    let mut world = scenario::world();
    let pooled = |id: &str, tags: &[(&str, &str)]| {
        let mut eni = scenario::eni(
            id,
            "i-none",
            0,
            "0a:00:00:00:22:01",
            "subnet-b",
            &["10.0.1.50"],
        );
        eni.instance_id = None;
        eni.tags = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        eni
    };
    // Untagged for Multus, or in another pool: never taken.
    world
        .enis
        .push(pooled("eni-untagged", &[(POOL_TAG, "upf")]));
    world.enis.push(pooled(
        "eni-other",
        &[(NO_MANAGE, "true"), (POOL_TAG, "smf")],
    ));
    let fake = FakeEc2::new(world);
    let ec2 = controller_ec2(&fake, &[BASE, ATTACH]).await;
    let pool = EniSource::Pool {
        name: "upf".into(),
        subnet: Some("subnet-b".into()),
        zone: None,
    };
    let empty = (ec2.attach_multus_eni("i-0002", 2, &pool).await)
        .unwrap_err()
        .to_string();
    assert!(
        empty.contains("no available ENI tagged ipmgmt.aws/pool=upf and node.k8s.amazonaws.com/no_manage=true in subnet-b"),
        "{empty}"
    );

    let mut world = fake.world();
    world
        .enis
        .push(pooled("eni-upf", &[(NO_MANAGE, "true"), (POOL_TAG, "upf")]));
    fake.set_world(world);
    assert_eq!(
        ec2.attach_multus_eni("i-0002", 2, &pool).await.unwrap(),
        "eni-upf"
    );
    // Without a subnet, the node's zone: none of the pool's ENIs is in us-west-2b.
    let elsewhere = EniSource::Pool {
        name: "upf".into(),
        subnet: None,
        zone: Some("us-west-2b".into()),
    };
    let none_there = (ec2.attach_multus_eni("i-0001", 3, &elsewhere).await)
        .unwrap_err()
        .to_string();
    assert!(none_there.contains("=true in us-west-2b"), "{none_there}");
    let world = fake.world();
    let eni = world.enis.iter().find(|e| e.id == "eni-upf").unwrap();
    assert_eq!(
        (eni.instance_id.as_deref(), eni.device_index),
        (Some("i-0002"), 2)
    );
    assert!(
        !eni.delete_on_termination,
        "a pool's ENI outlives the instance"
    );
    let untouched = world.enis.iter().find(|e| e.id == "eni-untagged").unwrap();
    assert_eq!(untouched.instance_id, None);
}

/// An ENI the controller made for an instance that is no node any more, left
/// unattached, is deleted; one made for a live node, an attached one, and one without
/// the controller's tag are not.
#[tokio::test]
async fn an_eni_made_for_a_node_that_went_is_deleted() {
    let fake = FakeEc2::new(scenario::world());
    let ec2 = controller_ec2(&fake, &[BASE, ATTACH]).await;
    deny(&fake, "AttachNetworkInterface");
    // Made for i-0002 and i-0001, neither attached.
    let _ = ec2.attach_multus_eni("i-0002", 2, &create()).await;
    let _ = ec2.attach_multus_eni("i-0001", 3, &create()).await;
    fake.set_faults(Faults::default());
    let mut world = fake.world();
    let mut untagged = scenario::eni(
        "eni-users",
        "i-none",
        0,
        "0a:00:00:00:33:01",
        "subnet-b",
        &["10.0.1.60"],
    );
    untagged.instance_id = None;
    world.enis.push(untagged);
    fake.set_world(world);
    let made = |w: &ipmgmt_tests::fake_ec2::World, instance: &str| {
        (w.enis.iter())
            .find(|e| {
                e.tags
                    .iter()
                    .any(|(k, v)| k == ATTACHED_FOR_TAG && v.starts_with(instance))
            })
            .map(|e| e.id.clone())
    };
    let gone = made(&fake.world(), "i-0002").unwrap();
    // i-0002 is no node any more; i-0001 is.
    let deleted = ec2.delete_orphans(&["i-0001".into()]).await.unwrap();
    assert_eq!(deleted, [gone]);
    let world = fake.world();
    assert!(made(&world, "i-0002").is_none());
    assert!(made(&world, "i-0001").is_some(), "made for a live node");
    assert!(
        world.enis.iter().any(|e| e.id == "eni-users"),
        "not the controller's"
    );
    assert!(world.enis.iter().any(|e| e.id == "eni-1n3"), "attached");
    // Under the controller's policy alone, the delete is refused and says which policy.
    let plain = FakeEc2::new(fake.world());
    let ec2 = controller_ec2(&plain, &[BASE]).await;
    let mut world = plain.world();
    world.enis.iter_mut().for_each(|e| {
        if e.tags.iter().any(|(k, _)| k == ATTACHED_FOR_TAG) {
            e.tags.retain(|(k, _)| k != ATTACHED_FOR_TAG);
            e.tags.push((ATTACHED_FOR_TAG.into(), "i-0009/1".into()));
        }
    });
    plain.set_world(world);
    let line = ec2.delete_orphans(&[]).await.unwrap_err().to_string();
    assert!(
        line.starts_with("DeleteNetworkInterface eni-")
            && line.contains("reclaimer-attach-iam-policy.json"),
        "{line}"
    );
}
