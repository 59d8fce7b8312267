//! AdmissionReview in, AdmissionReview out: request bytes to response bytes.
//!
//! The request is read into borrowed views of just the fields used, with kube-core's
//! `Operation`. kube-core's generic `AdmissionReview<DynamicObject>` parses every
//! field of the pod into a tree, through two `#[serde(flatten)]` buffers; on a typical
//! 3 KB pod that alone took longer than the whole budget for a review. The body is
//! checked as UTF-8 once, whole, then read by `json::Reader` (that module says why
//! not serde_json); serde's derive on the same views stays as the reference the
//! reader is checked against (`read_agrees`).
//! The response is written here too: kube-core serializes `patch` as an array of
//! numbers (kube-rs#1781) where the API wants the base64 string of Go's `[]byte`.
//! It is written by hand into one buffer, the patch base64'd straight into it (SIMD):
//! through serde the base64 text was built apart, then copied and checked for escapes
//! byte by byte, a fifth of a review's instructions under callgrind. (In tests,
//! `ReviewOut`'s derive is the reference the writer is checked against.)
//! `envelope` is the review the apiserver would send for a pod, for tests and tools.

use std::borrow::Cow;

use kube_core::admission::Operation;
use serde::de::IntoDeserializer;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use ipmgmt_common::annotations::MULTUS_NETWORKS;

use crate::guard::Judged;
use crate::inject::{Decision, Injector, Mode, Pod, Skip};
use crate::json::{self, Reader};
#[cfg(any(test, feature = "fuzzing", feature = "sonic"))]
use crate::view::Via;
use crate::view::{Field, view};

view! {
    struct ReviewIn<'a> {
        api_version: Cow<'a, str> = "apiVersion",
        kind: Cow<'a, str> = "kind",
        request: Option<RequestIn<'a>> = "request" or default,
    }
}

view! {
    struct RequestIn<'a> {
        uid: Cow<'a, str> = "uid",
        kind: Kind<'a> = "kind",
        operation: Operation = "operation",
        sub_resource: Option<Cow<'a, str>> = "subResource" or default,
        name: Option<Cow<'a, str>> = "name" or default,
        namespace: Option<Cow<'a, str>> = "namespace" or default,
        object: Option<Pod<'a>> = "object" or default,
    }
}

view! {
    /// kube-core's `GroupVersionKind`, borrowed.
    struct Kind<'a> {
        _group: Cow<'a, str> = "group",
        _version: Cow<'a, str> = "version",
        kind: Cow<'a, str> = "kind",
    }
}

/// kube-core's `Operation` from its name only (its derive also takes `{"CREATE":null}`).
impl<'de> Field<'de> for Operation {
    fn read(r: &mut Reader<'de>) -> json::Result<Self> {
        let name = r.string("a string")?;
        Ok(match &*name {
            "CREATE" => Operation::Create,
            "UPDATE" => Operation::Update,
            "DELETE" => Operation::Delete,
            "CONNECT" => Operation::Connect,
            _ => {
                return Err(r.error(&format!(
                    "unknown variant `{name}`, expected one of \
                     `CREATE`, `UPDATE`, `DELETE`, `CONNECT`"
                )));
            }
        })
    }

    fn reference<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = Cow::<str>::deserialize(d)?;
        Operation::deserialize(name.as_ref().into_deserializer())
    }
}

impl<'a> ReviewIn<'a> {
    /// The whole body: one review, then only whitespace.
    fn read_body(text: &'a str) -> json::Result<Self> {
        let mut r = Reader::new(text);
        let review = <Self as Field>::read(&mut r)?;
        r.end()?;
        Ok(review)
    }
}

/// Whether the hand-written reader and serde's derive, the reference, agree on `body`:
/// both refuse it, or both read the same views. `Err` says how they differ.
#[cfg(any(test, feature = "fuzzing"))]
pub fn read_agrees(body: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Ok(());
    };
    let hand = ReviewIn::read_body(text);
    let derive = serde_json::from_str::<Via<ReviewIn>>(text).map(|v| v.0);
    match (hand, derive) {
        (Ok(hand), Ok(derive)) if hand == derive => Ok(()),
        (Err(_), Err(_)) => Ok(()),
        (hand, derive) => Err(format!(
            "hand-written: {hand:?}\nserde's derive: {derive:?}"
        )),
    }
}

/// What happened to one review, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected(Mode),
    /// Reinvoked after another webhook put containers ahead of the manager: moved back.
    Reordered,
    Skipped,
    Denied,
    /// The review was read, but the pod in it was not one we could work on.
    Error,
}

/// The body could not be read as an AdmissionReview at all: HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Json(#[from] json::Error),
    #[error("request body is not UTF-8, so not JSON: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview apiVersion is {0:?}; this webhook speaks admission.k8s.io/v1 only")]
    Version(String),
    #[error("kind is {0:?}, not AdmissionReview")]
    Kind(String),
    #[cfg(feature = "sonic")]
    #[error("request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Sonic(String),
}

/// Who the review is about, for the per-review span.
#[derive(Debug, Default)]
pub struct Subject {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug)]
pub struct Answer {
    pub subject: Subject,
    pub outcome: Outcome,
    pub body: Vec<u8>,
    /// The denial or error message, for the log line.
    pub message: Option<String>,
}

pub fn review(body: &[u8], injector: &Injector) -> Result<Answer, BadReview> {
    answer(ReviewIn::read_body(std::str::from_utf8(body)?)?, injector)
}

/// `review` with the body read by sonic-rs through the views' serde derive: the
/// library alternative to `json::Reader`, for the benchmark that compares them.
#[cfg(feature = "sonic")]
pub fn review_sonic(body: &[u8], injector: &Injector) -> Result<Answer, BadReview> {
    let text = std::str::from_utf8(body)?;
    let review =
        sonic_rs::from_str::<Via<ReviewIn>>(text).map_err(|e| BadReview::Sonic(e.to_string()))?;
    answer(review.0, injector)
}

fn answer(review: ReviewIn<'_>, injector: &Injector) -> Result<Answer, BadReview> {
    if review.api_version != "admission.k8s.io/v1" {
        return Err(BadReview::Version(review.api_version.into_owned()));
    }
    if review.kind != "AdmissionReview" {
        return Err(BadReview::Kind(review.kind.into_owned()));
    }
    let request = review.request.ok_or(BadReview::NoRequest)?;
    let subject = subject(&request);
    let mut response = Response::allow(&request.uid);
    let (outcome, message) = match (&request.operation, &request.object) {
        (Operation::Create, Some(pod))
            if request.kind.kind == "Pod" && request.sub_resource.is_none() =>
        {
            match injector.decide(pod) {
                Decision::Skip(Skip::NotRequested | Skip::AlreadyInjected) => {
                    (Outcome::Skipped, None)
                }
                Decision::Inject {
                    mode,
                    patch,
                    mut warnings,
                } => {
                    let networks = || {
                        (pod.metadata.annotations.as_ref())
                            .and_then(|a| a.get(MULTUS_NETWORKS))
                            .map(|n| n.as_ref())
                    };
                    let namespace = request.namespace.as_deref().unwrap_or_default();
                    match injector.guard().judge(namespace, networks) {
                        Judged::Deny(message) => {
                            response.deny(403, "Forbidden", &message);
                            (Outcome::Denied, Some(message))
                        }
                        judged => {
                            if let Judged::Warn(more) = judged {
                                warnings.extend(more);
                            }
                            response.patch = Some(patch.to_bytes());
                            response.patch_type = Some("JSONPatch");
                            response.warnings = warnings;
                            (Outcome::Injected(mode), None)
                        }
                    }
                }
                Decision::Reorder { patch } => {
                    response.patch = Some(patch.to_bytes());
                    response.patch_type = Some("JSONPatch");
                    (Outcome::Reordered, None)
                }
                Decision::Deny(message) => {
                    response.deny(403, "Forbidden", &message);
                    (Outcome::Denied, Some(message))
                }
            }
        }
        (Operation::Create, None) if request.kind.kind == "Pod" => {
            let message = "pod CREATE review carries no object".to_owned();
            response.deny(400, "BadRequest", &message);
            (Outcome::Error, Some(message))
        }
        // Only pod CREATE is registered; anything else passes untouched.
        _ => (Outcome::Skipped, None),
    };
    let body = response.to_review();
    Ok(Answer {
        subject,
        outcome,
        body,
        message,
    })
}

fn subject(request: &RequestIn<'_>) -> Subject {
    let meta = request.object.as_ref().map(|o| &o.metadata);
    // On CREATE a pod from a controller has only generateName yet.
    let name = match (
        request.name.as_deref(),
        meta.and_then(|m| m.generate_name.as_deref()),
    ) {
        (Some(name), _) if !name.is_empty() => name.to_owned(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => String::new(),
    };
    Subject {
        uid: request.uid.clone().into_owned(),
        namespace: request.namespace.as_deref().unwrap_or_default().to_owned(),
        name,
    }
}

#[cfg(test)]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

#[cfg_attr(test, derive(Serialize))]
#[cfg_attr(test, serde(rename_all = "camelCase"))]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    status: Option<Status>,
    /// The JSON Patch, before base64.
    #[cfg_attr(
        test,
        serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "tests::base64_string"
        )
    )]
    patch: Option<Vec<u8>>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    patch_type: Option<&'static str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Vec::is_empty"))]
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct Status {
    code: u16,
    reason: &'static str,
    message: String,
}

impl<'a> Response<'a> {
    fn allow(uid: &'a str) -> Self {
        Response {
            uid,
            allowed: true,
            status: None,
            patch: None,
            patch_type: None,
            warnings: Vec::new(),
        }
    }

    fn deny(&mut self, code: u16, reason: &'static str, message: &str) {
        self.allowed = false;
        self.status = Some(Status {
            code,
            reason,
            message: message.to_owned(),
        });
    }

    /// The AdmissionReview around this response, the bytes `ReviewOut`'s derive writes.
    fn to_review(&self) -> Vec<u8> {
        let b64 = base64_simd::STANDARD;
        let patch_len = self
            .patch
            .as_ref()
            .map_or(0, |p| b64.encoded_length(p.len()));
        let mut out = Vec::with_capacity(160 + self.uid.len() + patch_len);
        out.extend_from_slice(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"#,
        );
        json(&mut out, &self.uid);
        out.extend_from_slice(if self.allowed {
            br#","allowed":true"#
        } else {
            br#","allowed":false"#
        });
        if let Some(status) = &self.status {
            out.extend_from_slice(br#","status":"#);
            json(&mut out, status);
        }
        if let Some(patch) = &self.patch {
            // Base64 needs no JSON escaping.
            out.extend_from_slice(br#","patch":""#);
            b64.encode_append(patch, &mut out);
            out.push(b'"');
        }
        if let Some(patch_type) = self.patch_type {
            out.extend_from_slice(br#","patchType":"#);
            json(&mut out, &patch_type);
        }
        if !self.warnings.is_empty() {
            out.extend_from_slice(br#","warnings":"#);
            json(&mut out, &self.warnings);
        }
        out.extend_from_slice(b"}}");
        out
    }
}

fn json(out: &mut Vec<u8>, value: &impl Serialize) {
    serde_json::to_writer(out, value).expect("writing to a Vec cannot fail");
}

/// The `uid` of every `envelope`.
pub const ENVELOPE_UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

/// The AdmissionReview the apiserver sends when a ReplicaSet creates `pod`, with the
/// pod's name and namespace: the one envelope of every Rust test, benchmark and load
/// tool. Python's, `webhook_harness.review_of`, is the same review.
pub fn envelope(pod: Value) -> Value {
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let pods = json!({"group": "", "version": "v1", "resource": "pods"});
    let kind = json!({"group": "", "version": "v1", "kind": "Pod"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": ENVELOPE_UID,
            "kind": kind,
            "resource": pods,
            "requestKind": kind,
            "requestResource": pods,
            "name": name,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

#[cfg(test)]
mod tests;
