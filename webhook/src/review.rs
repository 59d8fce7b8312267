//! AdmissionReview in, AdmissionReview out: request bytes to response bytes.
//!
//! The request is read with kube-core's types. The response is written here, because
//! kube-core serializes `patch` as an array of numbers (kube-rs#1781) where the API
//! wants the base64 string that Go's `[]byte` encodes to.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde::Serialize;

use crate::inject::{self, Config, Decision, Mode, Skip};

/// What happened to one review, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected(Mode),
    Skipped,
    Denied,
    /// The review was read, but the pod in it was not one we could work on.
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Injected(_) => "injected",
            Outcome::Skipped => "skipped",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// The body could not be read as an AdmissionReview at all: HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview apiVersion is {0:?}; this webhook speaks admission.k8s.io/v1 only")]
    Version(String),
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

pub fn review(body: &[u8], cfg: &Config) -> Result<Answer, BadReview> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    if review.types.api_version != "admission.k8s.io/v1" {
        return Err(BadReview::Version(review.types.api_version));
    }
    let request: AdmissionRequest<DynamicObject> = review.try_into().map_err(|_| BadReview::NoRequest)?;
    let subject = subject(&request);
    let mut response = Response::allow(&request.uid);
    let (outcome, message) = match (&request.operation, &request.object) {
        (Operation::Create, Some(pod)) if request.kind.kind == "Pod" && request.sub_resource.is_none() => {
            match inject::decide(pod, cfg) {
                Decision::Skip(Skip::NotRequested | Skip::AlreadyInjected) => (Outcome::Skipped, None),
                Decision::Inject { mode, patch, warnings } => {
                    let json = serde_json::to_vec(&patch).expect("a JSON patch always serializes");
                    response.patch = Some(STANDARD.encode(json));
                    response.patch_type = Some("JSONPatch");
                    response.warnings = warnings;
                    (Outcome::Injected(mode), None)
                }
                Decision::Deny(message) => {
                    response.deny(403, "Forbidden", &message);
                    (Outcome::Denied, Some(message))
                }
            }
        }
        (Operation::Create, None) => {
            let message = "pod CREATE review carries no object".to_owned();
            response.deny(400, "BadRequest", &message);
            (Outcome::Error, Some(message))
        }
        // Only pod CREATE is registered; anything else passes untouched.
        _ => (Outcome::Skipped, None),
    };
    let body = serde_json::to_vec(&ReviewOut {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response,
    })
    .expect("an admission response always serializes");
    Ok(Answer { subject, outcome, body, message })
}

fn subject(request: &AdmissionRequest<DynamicObject>) -> Subject {
    let meta = request.object.as_ref().map(|o| &o.metadata);
    // On CREATE a pod from a controller has only generateName yet.
    let name = match (&request.name, meta.and_then(|m| m.generate_name.as_ref())) {
        (name, _) if !name.is_empty() => name.clone(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => String::new(),
    };
    Subject {
        uid: request.uid.clone(),
        namespace: request.namespace.clone().unwrap_or_default(),
        name,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
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
        Response { uid, allowed: true, status: None, patch: None, patch_type: None, warnings: Vec::new() }
    }

    fn deny(&mut self, code: u16, reason: &'static str, message: &str) {
        self.allowed = false;
        self.status = Some(Status { code, reason, message: message.to_owned() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn review_of(pod: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "", "namespace": "net",
                "operation": "CREATE",
                "userInfo": {"username": "admin"},
                "object": pod,
                "dryRun": false,
            }
        }))
        .unwrap()
    }

    fn cfg() -> Config {
        Config { image: "ipmgr:test".into(), ..Config::default() }
    }

    fn response(answer: &Answer) -> Value {
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        out["response"].clone()
    }

    #[test]
    fn patch_is_a_base64_string() {
        let body = review_of(json!({
            "metadata": {"generateName": "web-", "annotations": {"ipmgmt.aws/mode": "init"}},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
        }));
        let answer = review(&body, &cfg()).unwrap();
        assert_eq!(answer.outcome, Outcome::Injected(Mode::Init));
        assert_eq!(answer.subject.name, "web-*");
        let r = response(&answer);
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch = STANDARD.decode(r["patch"].as_str().expect("patch is a string")).unwrap();
        let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
        assert!(ops.iter().all(|op| op["op"] == "add"), "{ops:?}");
    }

    #[test]
    fn denial_carries_code_and_message() {
        let body = review_of(json!({
            "metadata": {"name": "p", "annotations": {"ipmgmt.aws/mode": "always"}},
            "spec": {"containers": []},
        }));
        let answer = review(&body, &cfg()).unwrap();
        assert_eq!(answer.outcome, Outcome::Denied);
        let r = response(&answer);
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 403);
        assert!(r["status"]["message"].as_str().unwrap().contains("\"always\""));
        assert!(r.get("patch").is_none());
    }

    #[test]
    fn unannotated_pod_is_allowed_without_patch() {
        let body = review_of(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        let answer = review(&body, &cfg()).unwrap();
        assert_eq!(answer.outcome, Outcome::Skipped);
        let r = response(&answer);
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none() && r.get("patchType").is_none() && r.get("status").is_none());
    }

    #[test]
    fn unreadable_bodies_are_bad_reviews() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
            b"{\"apiVersion\":\"admission.k8s.io/v1beta1\",\"kind\":\"AdmissionReview\",\"request\":{}}",
            b"\xff\xfe",
        ] {
            assert!(review(body, &cfg()).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn create_without_object_is_an_error_answer() {
        let mut body: Value = serde_json::from_slice(&review_of(json!({}))).unwrap();
        body["request"].as_object_mut().unwrap().remove("object");
        let answer = review(&serde_json::to_vec(&body).unwrap(), &cfg()).unwrap();
        assert_eq!(answer.outcome, Outcome::Error);
        assert_eq!(response(&answer)["allowed"], false);
    }
}
