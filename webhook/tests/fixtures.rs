//! Golden fixtures: `fixtures/<case>/pod.json` (+ optional `config.json`, overrides of
//! the base configuration) → `expected.json`. `UPDATE_FIXTURES=1 cargo test` rewrites
//! the expectations; review them as diffs.

use std::path::{Path, PathBuf};

use ipmgmt_webhook::inject::{Config, Decision, Injector, Pod, Skip};
use serde_json::{Value, json};

fn base_config() -> Config {
    Config {
        image: "public.ecr.aws/ipmgmt/ipmgr:0.1.0".into(),
        region: Some("us-west-2".into()),
        ..Config::default()
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn config_for(case: &Path) -> Config {
    let mut cfg = serde_json::to_value(base_config()).unwrap();
    let overrides = case.join("config.json");
    if overrides.exists() {
        let Value::Object(fields) = read_json(&overrides) else {
            panic!("{}: not an object", overrides.display())
        };
        for (k, v) in fields {
            cfg[k] = v;
        }
    }
    serde_json::from_value(cfg).unwrap_or_else(|e| panic!("{}/config.json: {e}", case.display()))
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
        Decision::Inject {
            mode,
            patch,
            warnings,
        } => json!({
            "decision": "inject", "mode": mode, "warnings": warnings,
            "patch": serde_json::from_slice::<Value>(&patch.to_bytes()).expect("patch is JSON"),
        }),
    }
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("pod.json").exists())
        .collect();
    cases.sort();
    cases
}

#[test]
fn golden_fixtures() {
    let update = std::env::var_os("UPDATE_FIXTURES").is_some();
    let mut failures = Vec::new();
    let cases = cases();
    assert!(cases.len() >= 10, "fixture cases went missing: {cases:?}");
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(case.join("pod.json")).unwrap();
        let pod: Pod = serde_json::from_str(&text).unwrap();
        let injector = Injector::new(config_for(case));
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
        if let Decision::Inject { patch, .. } = &decision {
            let mut patched = read_json(&case.join("pod.json"));
            let ops: json_patch::Patch = serde_json::from_slice(&patch.to_bytes()).unwrap();
            if let Err(e) = json_patch::patch(&mut patched, &ops) {
                failures.push(format!("{name}: patch does not apply: {e}"));
                continue;
            }
            let patched_text = patched.to_string();
            let again: Pod = serde_json::from_str(&patched_text).unwrap();
            if !matches!(
                injector.decide(&again),
                Decision::Skip(Skip::AlreadyInjected)
            ) {
                failures.push(format!(
                    "{name}: the patched pod is not recognised as injected"
                ));
            }
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
