//! The AWS SDK's configuration, shared with the reclaimer: `ipmgmt_common::aws`.

pub use ipmgmt_common::aws::{Attempts, Retries, cause, ec2_client, loader};
