//! What the EC2 scenes of the controller (and of the floating addresses) share: the
//! SDK client as production builds it, against a fake EC2 under the controller's
//! policies. Each scene file uses part of
//! it.
#![allow(dead_code)]

use aws_config::Region;
use aws_sdk_ec2::config::Credentials;
use ipmgmt_reclaimer::ec2::SdkEc2;
use ipmgmt_tests::fake_ec2::iam::Policy;
use ipmgmt_tests::fake_ec2::{FakeEc2, Faults};

pub const BASE: &str = include_str!("../../../deploy/reclaimer-iam-policy.json");
pub const RESERVE: &str = include_str!("../../../deploy/reclaimer-reserve-iam-policy.json");
pub const ATTACH: &str = include_str!("../../../deploy/reclaimer-attach-iam-policy.json");

/// The policies' statements as one policy, as attaching them all to one role does.
pub fn policy(files: &[&str]) -> Policy {
    let mut all = serde_json::json!({"Version": "2012-10-17", "Statement": []});
    for text in files {
        let one: serde_json::Value = serde_json::from_str(text).unwrap();
        (all["Statement"].as_array_mut().unwrap())
            .extend(one["Statement"].as_array().unwrap().iter().cloned());
    }
    Policy::parse(&all)
}

/// `fake` served, and the SDK client as production builds it for it: one attempt per
/// call, so a refusal is seen at once.
pub async fn sdk_client(fake: &FakeEc2) -> aws_sdk_ec2::Client {
    let addr = fake.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let sdk = ipmgmt_common::aws::loader(ipmgmt_common::aws::Retries {
        max_attempts: 1,
        initial_backoff: std::time::Duration::from_millis(5),
    })
    .region(Region::new("us-west-2"))
    .endpoint_url(format!("http://{addr}"))
    .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
    .load()
    .await;
    ipmgmt_common::aws::ec2_client(&sdk, &ipmgmt_common::aws::Attempts::default())
}

/// `fake` served under `files`' policies, and the controller's client for it.
pub async fn controller_ec2(fake: &FakeEc2, files: &[&str]) -> SdkEc2 {
    fake.set_policy(Some(policy(files)));
    SdkEc2::new(sdk_client(fake).await)
}

/// EC2 refuses `action` from now on (`UnauthorizedOperation`), and nothing else.
pub fn deny(fake: &FakeEc2, action: &str) {
    fake.set_faults(Faults {
        deny: [action.to_owned()].into(),
        ..Faults::default()
    });
}
