//! The properties `cargo fuzz` checks on the review path (`fuzz/`), here so that the
//! corpus replay test (`tests/fuzz_corpus.rs`) checks the same ones on stable Rust.
//!
//! For any request body, under the flags of the golden fixtures and under those of
//! `fixtures/full-config` (another manager name, a role, classic sidecars):
//! - `review` never panics; a body it cannot read is refused, which is an answer too;
//! - a patch in the answer applies to the request's pod as RFC 6902 says (checked
//!   with the independent `json-patch` crate, not with our own writer);
//! - the patched pod holds exactly one manager container, across `initContainers`
//!   and `containers`;
//! - the patched pod, reviewed again, is allowed without a patch;
//! - the hand-written JSON reader and serde's derive on the same views (the reference)
//!   refuse the same bodies and read the same views from the rest.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::config::from_flags;
use crate::inject::Injector;
use crate::review::{envelope, read_agrees, review};

/// The injectors every body is reviewed with, and the manager name of each.
fn injectors() -> &'static [(Injector, String)] {
    static INJECTORS: OnceLock<Vec<(Injector, String)>> = OnceLock::new();
    INJECTORS.get_or_init(|| {
        let base = flags(include_str!("../fixtures/flags"));
        let full = flags(include_str!("../fixtures/full-config/flags"));
        [base.clone(), merged(base, full)]
            .into_iter()
            .map(|flags| {
                let cfg = from_flags(&flags).expect("the fixtures' flags are valid");
                let manager = cfg.container_name.clone();
                (Injector::new(cfg), manager)
            })
            .collect()
    })
}

/// A fixture flags file: one argument per line; blank lines and `#` comments left out.
fn flags(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// `base` with `case` added, a flag of the same name in `case` replacing the base one,
/// as the fixture tests combine them.
fn merged(mut base: Vec<String>, case: Vec<String>) -> Vec<String> {
    let name = |flag: &str| flag.split_once('=').map_or(flag, |(n, _)| n).to_owned();
    base.retain(|b| !case.iter().any(|c| name(c) == name(b)));
    base.extend(case);
    base
}

/// Reviews `body` and panics, saying which, if a property does not hold.
pub fn check(body: &[u8]) {
    if let Err(diff) = read_agrees(body) {
        panic!("the reader and serde's derive differ:\n{diff}");
    }
    for (injector, manager) in injectors() {
        check_with(body, injector, manager);
    }
}

fn check_with(body: &[u8], injector: &Injector, manager: &str) {
    let Ok(answer) = review(body, injector) else {
        return;
    };
    let out: Value = serde_json::from_slice(&answer.body).expect("the answer is JSON");
    let response = &out["response"];
    let Some(patch) = response.get("patch") else {
        return;
    };
    assert_eq!(response["allowed"], true, "a patch in a refusal: {out}");
    assert_eq!(response["patchType"], "JSONPatch", "{out}");
    let patch = STANDARD
        .decode(patch.as_str().expect("the patch is a string"))
        .expect("the patch is base64");
    let ops: json_patch::Patch = serde_json::from_slice(&patch).unwrap_or_else(|e| {
        panic!(
            "the patch is not JSON Patch ({e}): {}",
            String::from_utf8_lossy(&patch)
        )
    });

    // The review reads only the fields it uses, so it can answer a body that serde_json
    // cannot read whole (nesting past its depth limit in a field it skips). The
    // apiserver never sends one, and there is no pod document to apply the patch to.
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let mut pod = request["request"]["object"].clone();
    if let Err(e) = json_patch::patch(&mut pod, &ops) {
        panic!(
            "the patch does not apply ({e}):\npatch: {}\npod: {}",
            String::from_utf8_lossy(&patch),
            request["request"]["object"]
        );
    }

    let managers = ["initContainers", "containers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .filter(|c| c["name"] == manager)
        .count();
    assert_eq!(
        managers, 1,
        "the patched pod holds {managers} containers named {manager:?}: {pod}"
    );

    let again = serde_json::to_vec(&envelope(pod)).expect("a pod serializes");
    let answer = review(&again, injector).expect("the patched pod's review is readable");
    let out: Value = serde_json::from_slice(&answer.body).expect("the answer is JSON");
    assert!(
        out["response"]["allowed"] == true && out["response"].get("patch").is_none(),
        "the patched pod, reviewed again, is not left alone: {out}\nrequest: {}",
        String::from_utf8_lossy(&again)
    );
}
