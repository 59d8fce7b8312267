//! Tests of `review`.

use super::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub(super) fn base64_string<S: serde::Serializer>(
    patch: &Option<Vec<u8>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(patch.as_deref().unwrap_or_default()))
}

/// The writer against serde's derive, on every field it writes.
#[test]
fn written_review_is_what_the_derive_writes() {
    let mut denied = Response::allow("u\"1");
    denied.deny(403, "Forbidden", "no \"x\"\n");
    let mut patched = Response::allow("u");
    patched.patch = Some(b"[{\"op\":\"add\"}]".to_vec());
    patched.patch_type = Some("JSONPatch");
    patched.warnings = vec!["w\u{1}".into(), "v".into()];
    let mut empty_patch = Response::allow("u");
    empty_patch.patch = Some(Vec::new());
    for response in [Response::allow(""), denied, patched, empty_patch] {
        let written = response.to_review();
        let derived = serde_json::to_vec(&ReviewOut {
            api_version: "admission.k8s.io/v1",
            kind: "AdmissionReview",
            response,
        })
        .unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            String::from_utf8(derived).unwrap()
        );
    }
}

fn review_of(pod: Value) -> Vec<u8> {
    serde_json::to_vec(&envelope(pod)).unwrap()
}

fn cfg() -> Injector {
    Injector::new(crate::config::from_flags(["--image", "ipmgr:test"]).unwrap())
}

fn response(answer: &Answer) -> Value {
    let out: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["uid"], ENVELOPE_UID);
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
    let patch = STANDARD
        .decode(r["patch"].as_str().expect("patch is a string"))
        .unwrap();
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
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("\"always\"")
    );
    assert!(r.get("patch").is_none());
}

/// serde's derive would read these arrays into the pod's structs by position and
/// build a patch for a shape that is not there; they are bad reviews instead.
#[test]
fn arrays_where_the_pod_has_objects_are_bad_reviews() {
    for pod in [
        json!({"metadata": [null, {"ipmgmt.aws/mode": "init"}], "spec": {"containers": []}}),
        json!({"metadata": {"annotations": {"ipmgmt.aws/mode": "init"}}, "spec": [[{"name": "app"}]]}),
        json!({"metadata": {"annotations": {"ipmgmt.aws/mode": "init"}},
               "spec": {"initContainers": [{"name": "a"}, ["aws-ip-mgmt"]], "containers": []}}),
        json!({"metadata": {"annotations": {"ipmgmt.aws/mode": "init"}},
               "spec": {"containers": [{"name": "app", "resources": [{"cpu": "1"}]}]}}),
    ] {
        let body = review_of(pod.clone());
        assert!(review(&body, &cfg()).is_err(), "{pod}");
    }
}

#[test]
fn a_second_container_with_the_managers_name_is_denied() {
    let body = review_of(json!({
        "metadata": {"name": "p", "annotations": {"ipmgmt.aws/mode": "init"}},
        "spec": {
            "initContainers": [{"name": "setup"}, {"name": "aws-ip-mgmt"}],
            "containers": [{"name": "aws-ip-mgmt"}],
        },
    }));
    let answer = review(&body, &cfg()).unwrap();
    assert_eq!(answer.outcome, Outcome::Denied);
    let r = response(&answer);
    assert!(r.get("patch").is_none());
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("2 containers named aws-ip-mgmt"),
        "{message}"
    );
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
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"Pod\",\"request\":{}}",
        b"\xff\xfe",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{}}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
    ] {
        assert!(review(body, &cfg()).is_err(), "{:?}", String::from_utf8_lossy(body));
    }
}

#[test]
fn deep_nesting_in_a_skipped_field_is_no_stack_overflow() {
    for depth in [200, 100_000] {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        pod["spec"]["x"] = json!(null);
        let body = serde_json::to_vec(&envelope(pod)).unwrap();
        let text = String::from_utf8(body).unwrap();
        let deep = "[".repeat(depth) + &"]".repeat(depth);
        let body = text.replace(r#""x":null"#, &format!(r#""x":{deep}"#));
        // serde_json skips without recursion: answered, and the thread is still here.
        assert!(review(body.as_bytes(), &cfg()).is_ok(), "depth {depth}");
    }
}

#[test]
fn corrupted_reviews_never_panic() {
    // Every single-byte corruption and truncation of a real review: each is either
    // answered or refused as unreadable, and nothing panics.
    let body = review_of(json!({
        "metadata": {"name": "p", "annotations": {"ipmgmt.aws/mode": "sidecar", "ipmgmt.aws/role-arn": "x"}},
        "spec": {"containers": [{"name": "app"}], "volumes": [{"name": "v"}]},
    }));
    let injector = cfg();
    for i in 0..body.len() {
        for byte in [b'"', b'{', b']', b'\\', 0xff, b'0'] {
            let mut bad = body.clone();
            bad[i] = byte;
            let _ = review(&bad, &injector);
        }
        let _ = review(&body[..i], &injector);
    }
}

fn assert_agrees(body: &[u8]) {
    if let Err(diff) = read_agrees(body) {
        panic!("{diff}\nbody: {}", String::from_utf8_lossy(body));
    }
}

/// The hand-written reader against serde's derive on the same views, on every
/// golden fixture's review (compact and pretty) and on every single-byte
/// corruption, deletion and truncation of one: the same bodies refused, the same
/// views read from the rest.
#[test]
fn the_reader_agrees_with_serdes_derive() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut read = 0;
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let path = entry.unwrap().path().join("pod.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let review = envelope(serde_json::from_str(&text).unwrap());
        for body in [
            serde_json::to_vec(&review).unwrap(),
            serde_json::to_vec_pretty(&review).unwrap(),
        ] {
            assert!(ReviewIn::read_body(std::str::from_utf8(&body).unwrap()).is_ok());
            assert_agrees(&body);
        }
        read += 1;
    }
    assert!(read >= 10, "only {read} fixtures found");

    let body = review_of(json!({
        "metadata": {"generateName": "p-", "annotations": {"ipmgmt.aws/mode": "sidecar", "x": "a\"b\u{e9}"}},
        "spec": {"containers": [{"name": "app", "resources": {"limits": {"cpu": 1.5, "memory": "1Gi"}}}],
                 "initContainers": null, "volumes": [{"name": "v"}], "hostNetwork": false,
                 "terminationGracePeriodSeconds": 30, "x": [1, -0.5e-3, true, null, {"a": []}]},
    }));
    for i in 0..body.len() {
        for byte in [
            b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', b'0', b'-', b'e', b'n', b' ', b'\n',
            0x01,
        ] {
            let mut bad = body.clone();
            bad[i] = byte;
            assert_agrees(&bad);
        }
        let mut cut = body.clone();
        cut.remove(i);
        assert_agrees(&cut);
        assert_agrees(&body[..i]);
    }
}

/// What the two readers might read differently, each case by hand.
#[test]
fn the_reader_agrees_on_the_edges_of_json() {
    let pod = |spec: &str| {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"","version":"v1","kind":"Pod"}},"operation":"CREATE","object":{{"metadata":{{"annotations":{{"ipmgmt.aws/mode":"init"}}}},"spec":{spec}}}}}}}"#
        )
    };
    let cases = [
        // Escapes: unescaped where read, checked where skipped.
        (
            pod(r#"{"contain\u0065rs":[{"name":"a\/b\u00e9\ud83d\ude00"}]}"#),
            true,
        ),
        (pod(r#"{"containers":[{"name":"\ud83d"}]}"#), false),
        (pod(r#"{"containers":[{"name":"\ude00"}]}"#), false),
        (pod(r#"{"containers":[{"name":"\ud83d\u0041"}]}"#), false),
        (pod(r#"{"x":"\ud83d","y":"\ude00"}"#), true),
        (pod(r#"{"x":"\x"}"#), false),
        (pod(r#"{"x":"\u12G4"}"#), false),
        (pod("{\"x\":\"a\tb\"}"), false),
        // Numbers: the grammar where skipped, the range where read.
        (pod(r#"{"x":[1e400,-0,0.5E+3,-1.0e-9]}"#), true),
        (pod(r#"{"x":01}"#), false),
        (pod(r#"{"x":1.}"#), false),
        (pod(r#"{"x":-}"#), false),
        (pod(r#"{"x":.5}"#), false),
        (pod(r#"{"x":1e}"#), false),
        (
            pod(r#"{"terminationGracePeriodSeconds":-9223372036854775808}"#),
            true,
        ),
        (
            pod(r#"{"terminationGracePeriodSeconds":9223372036854775807}"#),
            true,
        ),
        (
            pod(r#"{"terminationGracePeriodSeconds":9223372036854775808}"#),
            false,
        ),
        (pod(r#"{"terminationGracePeriodSeconds":-0}"#), false),
        (pod(r#"{"terminationGracePeriodSeconds":30.0}"#), false),
        (pod(r#"{"terminationGracePeriodSeconds":3e1}"#), false),
        (
            pod(r#"{"containers":[{"resources":{"limits":{"cpu":1e3,"memory":-0}}}]}"#),
            true,
        ),
        (
            pod(r#"{"containers":[{"resources":{"limits":{"cpu":1e400}}}]}"#),
            false,
        ),
        (
            pod(r#"{"containers":[{"resources":{"limits":{"cpu":true}}}]}"#),
            false,
        ),
        (
            pod(r#"{"containers":[{"resources":{"limits":{"cpu":null}}}]}"#),
            true,
        ),
        // Duplicates: refused where read, the last kept where a map.
        (pod(r#"{"hostNetwork":null,"hostNetwork":true}"#), false),
        (pod(r#"{"x":1,"x":2}"#), true),
        (pod(r#"{"volumes":[{"name":"a","name":"b"}]}"#), false),
        // Shapes.
        (pod(r#"{"containers":[null]}"#), false),
        (pod(r#"{"containers":{}}"#), false),
        (pod(r#"{"containers":[],}"#), false),
        (pod(r#"{"containers":[1,]}"#), false),
        (
            pod(" \t\r\n{ \"containers\" : [ { \"name\" : \"a\" } ] } "),
            true,
        ),
        (pod(r#"{"x":tru}"#), false),
        (pod(r#"{"x":nul}"#), false),
        (pod(r#"{"x":{1:2}}"#), false),
        (pod(r#"{"x":[}"#), false),
        (pod(r#"{"x":{]}"#), false),
    ];
    for (body, readable) in &cases {
        assert_agrees(body.as_bytes());
        let text = body.as_str();
        assert_eq!(ReviewIn::read_body(text).is_ok(), *readable, "{text}");
    }
    let annotations = |a: &str| pod("{}").replace(r#"{"ipmgmt.aws/mode":"init"}"#, a);
    let operation = |o: &str| pod("{}").replace(r#""CREATE""#, o);
    for (body, readable) in [
        (annotations(r#"{"a":"1","a":"2"}"#), true),
        (annotations(r#"{"a":1}"#), false),
        (operation(r#"{"CREATE":null}"#), false),
        (operation(r#""PATCH""#), false),
        (operation(r#""CONNECT""#), true),
        (pod("{}") + " ", true),
        (pod("{}") + " x", false),
        (pod("{}").replacen('{', "[", 1), false),
        (
            pod("{}").replace(
                r#"{"group":"","version":"v1","kind":"Pod"}"#,
                r#"["","v1","Pod"]"#,
            ),
            false,
        ),
        (pod("{}").replace(r#""uid":"u","#, ""), false),
        (
            pod("{}").replace(r#""uid":"u","#, r#""uid":"u","uid":"v","#),
            false,
        ),
    ] {
        assert_agrees(body.as_bytes());
        assert_eq!(ReviewIn::read_body(&body).is_ok(), readable, "{body}");
    }
    // Nested past serde_json's depth limit in a skipped field: serde_json skips it
    // without recursion too, and so does the reader, on a bit stack.
    for depth in [63, 64, 65, 129, 5_000] {
        let nested = "[{\"a\":".repeat(depth) + "1" + &"}]".repeat(depth);
        let body = pod(&format!(r#"{{"x":{nested}}}"#));
        assert_agrees(body.as_bytes());
        assert!(ReviewIn::read_body(&body).is_ok(), "depth {depth}");
        let unclosed = pod(&format!(r#"{{"x":{}}}"#, &nested[..nested.len() - 1]));
        assert!(ReviewIn::read_body(&unclosed).is_err(), "depth {depth}");
    }
}

#[test]
fn reinvocation_with_the_manager_behind_another_container_moves_it() {
    let body = review_of(json!({
        "metadata": {"name": "p", "annotations": {"ipmgmt.aws/mode": "init"}},
        "spec": {"initContainers": [{"name": "late-webhook"}, {"name": "aws-ip-mgmt"}],
                 "containers": [{"name": "app"}]},
    }));
    let answer = review(&body, &cfg()).unwrap();
    assert_eq!(answer.outcome, Outcome::Reordered);
    let r = response(&answer);
    assert_eq!(r["allowed"], true);
    assert!(r.get("warnings").is_none());
    let patch = STANDARD.decode(r["patch"].as_str().unwrap()).unwrap();
    let ops: Value = serde_json::from_slice(&patch).unwrap();
    assert_eq!(
        ops,
        json!([{"op": "move", "from": "/spec/initContainers/1", "path": "/spec/initContainers/0"}])
    );
}

#[test]
fn create_without_object_is_an_error_answer() {
    let mut body: Value = serde_json::from_slice(&review_of(json!({}))).unwrap();
    body["request"].as_object_mut().unwrap().remove("object");
    let answer = review(&serde_json::to_vec(&body).unwrap(), &cfg()).unwrap();
    assert_eq!(answer.outcome, Outcome::Error);
    assert_eq!(response(&answer)["allowed"], false);
}

#[test]
fn a_pod_asking_for_a_nad_the_guard_found_problems_with_is_warned_or_denied() {
    use std::collections::HashMap;
    use std::sync::Arc;

    use crate::guard::Findings;

    let found = |deny| {
        Arc::new(Findings::fixed(
            HashMap::from([(
                "telco/ipvlan-net1".to_owned(),
                vec!["range 10.0.6.1-10.0.6.254 is not inside subnet-a".to_owned()],
            )]),
            deny,
        ))
    };
    let pod = |networks: &str| {
        review_of(json!({
            "metadata": {"generateName": "upf-", "namespace": "telco", "annotations": {
                "ipmgmt.aws/mode": "init", "k8s.v1.cni.cncf.io/networks": networks}},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
        }))
    };
    let warned = review(&pod("ipvlan-net1"), &cfg().with_guard(found(false))).unwrap();
    assert!(matches!(warned.outcome, Outcome::Injected(_)));
    let r = response(&warned);
    assert_eq!(r["allowed"], true);
    assert!(r["patch"].is_string(), "injected as ever");
    let warnings: Vec<&str> = (r["warnings"].as_array().unwrap().iter())
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "NetworkAttachmentDefinition telco/ipvlan-net1 has 1 address-range finding"
        )),
        "{warnings:?}"
    );
    // Another NAD: nothing to say.
    let clean = review(&pod("ipvlan-net2"), &cfg().with_guard(found(false))).unwrap();
    assert!(response(&clean).get("warnings").is_none());

    let denied = review(&pod("ipvlan-net1"), &cfg().with_guard(found(true))).unwrap();
    assert_eq!(denied.outcome, Outcome::Denied);
    let r = response(&denied);
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("telco/ipvlan-net1: range 10.0.6.1-10.0.6.254 is not inside subnet-a"),
        "{message}"
    );
    assert!(r.get("patch").is_none());
}
