//! The AWS SDK as ipmgr and the reclaimer use it, configured in one place: the EC2
//! client with its timeouts, retries, attempt counting and retry pacing (`client`),
//! the actions by name (`action`), ENIs as EC2 describes them (`eni`) and their tags
//! (`tag`), and a failed call as one line with the AWS error code and what to do
//! (`error`), the remedy in each binary's own words.

mod action;
mod client;
mod eni;
mod error;
mod tag;

pub use action::Action;
pub use client::{Attempts, Retries, ec2_client, jittered, loader, with_profile};
pub use eni::{Eni, to_eni};
pub use error::{
    Ec2Error, NoCredentials, Remedy, cause, is_credentials_failure, sdk_error, strings,
};
pub use tag::{NO_MANAGE_TAG, Tag};
