//! One failed EC2 call as one line: the action, what it was about, the AWS error
//! code and message, and what to do, in words each binary chooses (`Remedy`).

use std::error::Error;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use super::Action;

/// One failed EC2 call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{action} {target}: {}{detail}; {hint}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct Ec2Error {
    pub action: Action,
    /// What the call was about: an ENI, addresses, an instance.
    pub target: String,
    /// The AWS error code, when EC2 answered.
    pub code: Option<String>,
    pub detail: String,
    pub hint: String,
}

impl Ec2Error {
    /// Errors that no retry within this run can fix: stop and say so.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some(
                "UnauthorizedOperation"
                    | "AuthFailure"
                    | "AccessDenied"
                    | "AccessDeniedException"
                    | "PrivateIpAddressLimitExceeded"
                    | "InvalidParameterValue"
                    | "InvalidParameterCombination"
                    | "InvalidIPAddress.InUse"
                    | "InvalidNetworkInterfaceID.NotFound"
                    | "InvalidNetworkInterfaceID.Malformed"
            )
        )
    }

    /// EC2 throttled the call past the SDK's retries.
    pub fn is_throttling(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some("RequestLimitExceeded" | "Throttling" | "ThrottlingException")
        )
    }

    /// An error whose hint comes from `remedy`: each binary says what its own operator
    /// should do.
    pub fn with_remedy(
        action: Action,
        target: impl Into<String>,
        code: Option<&str>,
        detail: impl Into<String>,
        remedy: &Remedy,
    ) -> Self {
        let hint = (remedy.refused)(action, code);
        Ec2Error {
            action,
            target: target.into(),
            code: code.map(str::to_owned),
            detail: detail.into(),
            hint,
        }
    }
}

/// What a binary tells its operator to do, in its own words: each binary's error
/// lines name its own role, chart values and policy.
#[derive(Clone, Copy, Debug)]
pub struct Remedy {
    /// About EC2's refusal with this code (none: no answer came), as one clause.
    pub refused: fn(Action, Option<&str>) -> String,
    /// About credentials the SDK could not get.
    pub credentials: fn(NoCredentials) -> &'static str,
}

/// Why the SDK had no credentials to sign a call with, as STS said it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoCredentials {
    /// STS refused the web identity token as expired.
    Expired,
    /// STS refused to let the service account assume the role.
    Untrusted,
    /// No provider in the chain had any.
    Missing,
}

impl NoCredentials {
    fn of(detail: &str) -> NoCredentials {
        if detail.contains("ExpiredToken") {
            NoCredentials::Expired
        } else if detail.contains("InvalidIdentityToken") || detail.contains("AccessDenied") {
            NoCredentials::Untrusted
        } else {
            NoCredentials::Missing
        }
    }
}

/// One line for a failed SDK call: EC2's code and message, what the credential
/// provider ran into, or why no answer came; with `remedy`'s hint for it.
pub fn sdk_error<E>(
    action: Action,
    target: impl Into<String>,
    err: SdkError<E>,
    remedy: &Remedy,
) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            Ec2Error::with_remedy(
                action,
                target,
                e.code(),
                e.message().unwrap_or("no message"),
                remedy,
            )
        }
        _ => match credentials_error(&err) {
            Some(failure) => {
                let detail = cause(failure);
                let hint = (remedy.credentials)(NoCredentials::of(&detail)).into();
                Ec2Error {
                    action,
                    target: target.into(),
                    code: None,
                    detail,
                    hint,
                }
            }
            None => Ec2Error::with_remedy(action, target, None, cause(&err), remedy),
        },
    }
}

/// Whether a call failed for want of credentials (none found, or STS refused).
pub fn is_credentials_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    credentials_error(err).is_some()
}

/// The credentials failure behind a call that never left the pod, if that is
/// why it failed.
fn credentials_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |&e| e.source()).find(|e| e.is::<CredentialsError>())
}

/// An error and its sources as one readable line: `a: b: c`, each cause once, and
/// none of the Debug dumps the SDK's own `DisplayErrorContext` appends.
pub fn cause(err: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        next = e.source();
        let text = e.to_string();
        // hyper and the SDK often repeat their source's words in their own.
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// Addresses as the SDK's request builders take them.
pub fn strings<T: ToString>(ips: &[T]) -> Vec<String> {
    ips.iter().map(ToString::to_string).collect()
}
