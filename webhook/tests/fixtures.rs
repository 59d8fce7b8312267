//! Golden fixtures: `fixtures/<case>/pod.json` (+ optional `flags`, the webhook's
//! command-line flags besides `fixtures/flags`; see `common`) → `expected.json`.
//! `UPDATE_FIXTURES=1 cargo test` rewrites the expectations; review them as diffs.
//!
//! Every patch is also applied, and the result reviewed again as `reinvocationPolicy:
//! IfNeeded` would: as it is (no patch), and after another webhook put a container in
//! front of the manager (one `move` back).

mod common;

use std::path::Path;

use ipmgmt_webhook::inject::{Decision, Injector, Pod, Skip};
use ipmgmt_webhook::patch::Patch;
use serde_json::{Value, json};

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn describe(decision: &Decision) -> Value {
    match decision {
        Decision::Skip(Skip::NotRequested) => {
            json!({"decision": "skip", "reason": "not requested"})
        }
        Decision::Skip(Skip::AlreadyInjected) => {
            json!({"decision": "skip", "reason": "already injected"})
        }
        Decision::Deny(message) => json!({"decision": "deny", "message": message}),
        Decision::Reorder { patch } => json!({
            "decision": "reorder",
            "patch": serde_json::from_slice::<Value>(&patch.to_bytes()).expect("patch is JSON"),
        }),
        Decision::Inject {
            mode,
            patch,
            warnings,
        } => json!({
            "decision": "inject", "mode": mode.as_str(), "warnings": warnings,
            "patch": serde_json::from_slice::<Value>(&patch.to_bytes()).expect("patch is JSON"),
        }),
    }
}

fn apply(doc: &mut Value, patch: &Patch) -> Result<(), String> {
    let ops: json_patch::Patch = serde_json::from_slice(&patch.to_bytes()).unwrap();
    json_patch::patch(doc, &ops).map_err(|e| e.to_string())
}

fn decide(injector: &Injector, pod: &Value) -> Decision {
    let text = pod.to_string();
    injector.decide(&serde_json::from_str::<Pod>(&text).unwrap())
}

/// The patched pod sent again: left alone; and once another webhook has put a
/// container ahead of the manager, moved back with one operation and then left alone.
fn reinvoked(injector: &Injector, manager: &str, patched: &Value) -> Result<(), String> {
    let again = decide(injector, patched);
    if !matches!(again, Decision::Skip(Skip::AlreadyInjected)) {
        return Err(format!(
            "the patched pod is not recognised as injected: {again:?}"
        ));
    }
    let holds = |list: &str| {
        patched["spec"][list]
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["name"] == manager))
    };
    let list = if holds("initContainers") {
        "initContainers"
    } else {
        "containers"
    };
    let mut behind = patched.clone();
    behind["spec"][list]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"name": "added-later", "image": "busybox"}));
    let Decision::Reorder { patch } = decide(injector, &behind) else {
        return Err(format!(
            "a manager behind another {list} entry is not moved back"
        ));
    };
    let ops: Value = serde_json::from_slice(&patch.to_bytes()).unwrap();
    let expected = json!([{"op": "move", "from": format!("/spec/{list}/1"), "path": format!("/spec/{list}/0")}]);
    if ops != expected {
        return Err(format!("reorder patch {ops} is not {expected}"));
    }
    apply(&mut behind, &patch)?;
    let mut want = patched.clone();
    want["spec"][list]
        .as_array_mut()
        .unwrap()
        .insert(1, json!({"name": "added-later", "image": "busybox"}));
    if behind != want {
        return Err("moving the manager back changed more than its place".into());
    }
    match decide(injector, &behind) {
        Decision::Skip(Skip::AlreadyInjected) => Ok(()),
        other => Err(format!("after the move: {other:?}")),
    }
}

#[test]
fn golden_fixtures() {
    let update = std::env::var_os("UPDATE_FIXTURES").is_some();
    let mut failures = Vec::new();
    let cases = common::cases();
    assert!(cases.len() >= 10, "fixture cases went missing: {cases:?}");
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        for file in std::fs::read_dir(case).unwrap() {
            let file = file.unwrap().file_name();
            if !["pod.json", "expected.json", "flags"].contains(&&*file.to_string_lossy()) {
                failures.push(format!("{name}: {file:?} is not a fixture file"));
            }
        }
        let text = std::fs::read_to_string(case.join("pod.json")).unwrap();
        let pod: Pod = serde_json::from_str(&text).unwrap();
        let config = common::config(case);
        let manager = config.container_name.clone();
        let injector = Injector::new(config);
        let decision = injector.decide(&pod);
        let actual = describe(&decision);
        let expected_path = case.join("expected.json");
        if update {
            std::fs::write(
                &expected_path,
                serde_json::to_string_pretty(&actual).unwrap() + "\n",
            )
            .unwrap();
        } else if !expected_path.exists() {
            failures.push(format!(
                "{name}: no expected.json (run with UPDATE_FIXTURES=1)"
            ));
        } else if read_json(&expected_path) != actual {
            failures.push(format!(
                "{name}: decision differs from expected.json:\n{}",
                serde_json::to_string_pretty(&actual).unwrap()
            ));
        }
        let patch = match &decision {
            Decision::Inject { patch, .. } | Decision::Reorder { patch } => patch,
            Decision::Skip(_) | Decision::Deny(_) => continue,
        };
        let mut patched = read_json(&case.join("pod.json"));
        if let Err(e) = apply(&mut patched, patch) {
            failures.push(format!("{name}: patch does not apply: {e}"));
            continue;
        }
        if let Err(why) = reinvoked(&injector, &manager, &patched) {
            failures.push(format!("{name}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
