//! The workspace's shape, as the README draws it: three binaries side by side on one
//! shared floor (`ipmgmt-common`), and no arrow from one binary's crate into another's.
//! A binary that needs another's code moves that code into `common/` instead.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const BINARIES: [&str; 3] = ["ipmgmt-webhook", "ipmgr", "ipmgmt-reclaimer"];
const FLOOR: &str = "ipmgmt-common";

/// Each workspace package's normal and build dependencies (dev-dependencies are the
/// tests' business), by name.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    (packages.iter())
        .map(|p| {
            let deps = (p["dependencies"].as_array().unwrap().iter())
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn the_binaries_stand_on_common_and_not_on_each_other() {
    let deps = dependencies();
    for binary in BINARIES {
        let own = &deps[binary];
        assert!(own.contains(FLOOR), "{binary} does not depend on {FLOOR}");
        let across: Vec<_> = BINARIES.iter().filter(|b| own.contains(**b)).collect();
        assert!(
            across.is_empty(),
            "{binary} depends on {across:?}: move what it needs into common/"
        );
    }
    let floor = &deps[FLOOR];
    let up: Vec<_> = (deps.keys())
        .filter(|p| p.starts_with("ipmgmt") || p.as_str() == "ipmgr")
        .filter(|p| floor.contains(*p))
        .collect();
    assert!(up.is_empty(), "{FLOOR} depends on {up:?}, a crate above it");
}
