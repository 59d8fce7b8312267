//! The fuzz target's properties (`ipmgmt_webhook::fuzzing::check`) on stable Rust,
//! without the fuzzer: over the checked-in corpus `fuzz/corpus-min/review/`, and over
//! the review of every golden fixture's pod, which seeds the fuzzer.
//!
//! `FUZZ_SEEDS=<dir> cargo test -p ipmgmt-webhook --test fuzz_corpus` also writes
//! those reviews to `<dir>`, one file per fixture (see docs/fuzzing.md).

// Only `cases` is used here.
#[allow(dead_code)]
mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ipmgmt_webhook::fuzzing::check;
use ipmgmt_webhook::review::envelope;
use serde_json::Value;

/// Checks every body, and names each one that breaks a property.
fn replay(bodies: &[(String, Vec<u8>)]) {
    let failures: Vec<String> = bodies
        .iter()
        .filter_map(|(name, body)| {
            let result = catch_unwind(AssertUnwindSafe(|| check(body)));
            result.err().map(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(not a string)");
                format!("{name}: {why}")
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} bodies break a property:\n{}",
        failures.len(),
        bodies.len(),
        failures.join("\n")
    );
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus-min/review")
}

#[test]
fn checked_in_corpus_keeps_every_property() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap_or_else(|e| panic!("{}: {e}", corpus_dir().display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the corpus went missing: {files:?}");
    let bodies: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(f).unwrap())
        })
        .collect();
    replay(&bodies);
}

#[test]
fn fixture_reviews_keep_every_property() {
    let bodies: Vec<(String, Vec<u8>)> = common::cases()
        .iter()
        .map(|case| {
            let name = case.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(case.join("pod.json")).unwrap();
            let pod: Value = serde_json::from_str(&text).unwrap();
            (name, serde_json::to_vec(&envelope(pod)).unwrap())
        })
        .collect();
    if let Some(dir) = std::env::var_os("FUZZ_SEEDS") {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, body) in &bodies {
            std::fs::write(Path::new(&dir).join(name), body).unwrap();
        }
    }
    replay(&bodies);
}
