//! STS's AssumeRoleWithWebIdentity on the same endpoint, for IRSA: the SDK trades the
//! pod's projected token for credentials here. A token reading `expired` is refused
//! as STS refuses an expired one (`ExpiredTokenException`); any other token gets
//! temporary credentials.

use axum::http::StatusCode;

use super::query::Query;
use super::xml::{el, text};
use super::{Fail, fail};

const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// The answer to `AssumeRoleWithWebIdentity`.
pub(super) fn assume_role_with_web_identity(q: &Query, request_id: &str) -> Result<String, Fail> {
    let token = q
        .get("WebIdentityToken")
        .ok_or_else(|| fail("MissingParameter", "WebIdentityToken is required"))?;
    let role = q
        .get("RoleArn")
        .ok_or_else(|| fail("MissingParameter", "RoleArn is required"))?;
    if token.trim() == "expired" {
        return Err(Fail {
            status: StatusCode::BAD_REQUEST,
            code: "ExpiredTokenException",
            message: "Token expired: current date/time 1764633600 must be before the expiration \
                      date/time 1764547200"
                .into(),
        });
    }
    let session = q.get("RoleSessionName").unwrap_or("session");
    let role_name = role.rsplit('/').next().unwrap_or(role);
    let credentials = [
        text("AccessKeyId", "ASIAFAKESTSCREDENTIAL"),
        text("SecretAccessKey", "fake-sts-secret"),
        text("SessionToken", "fake-sts-session-token"),
        text("Expiration", "2099-01-01T00:00:00Z"),
    ]
    .concat();
    let user = text(
        "Arn",
        format!("arn:aws:sts::111122223333:assumed-role/{role_name}/{session}"),
    ) + &text("AssumedRoleId", format!("AROAFAKE:{session}"));
    let result = el("Credentials", credentials) + &el("AssumedRoleUser", user);
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AssumeRoleWithWebIdentityResponse xmlns=\"{XMLNS}\">{}{}</AssumeRoleWithWebIdentityResponse>",
        el("AssumeRoleWithWebIdentityResult", result),
        el("ResponseMetadata", text("RequestId", request_id))
    ))
}

/// STS's error answer (its own format, not EC2's).
pub(super) fn error(code: &str, message: &str, request_id: &str) -> String {
    let error = text("Type", "Sender") + &text("Code", code) + &text("Message", message);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ErrorResponse xmlns=\"{XMLNS}\">{}{}</ErrorResponse>",
        el("Error", error),
        text("RequestId", request_id)
    )
}
