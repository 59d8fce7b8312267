//! Fakes and helpers shared by the integration tests and load tools.

pub mod fake_ec2;
pub mod fake_imds;
pub mod netns;
pub mod scenario;
