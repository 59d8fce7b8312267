//! A pod that already has the manager: left alone, or the manager moved back in front.

use serde_json::json;

use super::*;

#[test]
fn reinjection_is_a_no_op() {
    for mode in ["init", "sidecar"] {
        let doc = applied(&annotated(mode), &cfg());
        assert!(
            matches!(decide(&doc, &cfg()), Decision::Skip(Skip::AlreadyInjected)),
            "{mode}"
        );
    }
    let doc = applied(&annotated("sidecar"), &classic());
    assert!(matches!(
        decide(&doc, &classic()),
        Decision::Skip(Skip::AlreadyInjected)
    ));
}

#[test]
fn reinvocation_moves_the_manager_back_to_the_front_and_changes_nothing_else() {
    let late = json!({"name": "late", "image": "late:1", "restartPolicy": "Always"});
    for (mode, cfg, list) in [
        ("init", cfg(), "initContainers"),
        ("sidecar", cfg(), "initContainers"),
        ("sidecar", classic(), "containers"),
    ] {
        let mut doc = applied(&annotated(mode), &cfg);
        // Another webhook, after ours, puts two containers in front.
        let items = doc["spec"][list].as_array_mut().unwrap();
        items.insert(0, late.clone());
        items.insert(1, json!({"name": "later"}));
        let Decision::Reorder { patch } = decide(&doc, &cfg) else {
            panic!("{mode} {list}: expected a reorder")
        };
        let ops: Value = serde_json::from_slice(&patch.to_bytes()).unwrap();
        assert_eq!(
            ops,
            json!([{"op": "move", "from": format!("/spec/{list}/2"), "path": format!("/spec/{list}/0")}]),
            "{mode} {list}"
        );
        let moved = applied(&doc, &cfg);
        let names: Vec<_> = moved["spec"][list]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(
            names[..3],
            [json!("aws-ip-mgmt"), json!("late"), json!("later")],
            "{mode} {list}"
        );
        let mut expected = doc.clone();
        let items = expected["spec"][list].as_array_mut().unwrap();
        let m = items.remove(2);
        items.insert(0, m);
        assert_eq!(moved, expected, "only the order changes");
        assert!(matches!(
            decide(&moved, &cfg),
            Decision::Skip(Skip::AlreadyInjected)
        ));
    }
}
