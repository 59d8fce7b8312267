//! Fakes and helpers shared by the integration tests and load tools.

pub mod fake_ec2;
