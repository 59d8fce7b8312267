//! The golden fixtures and the webhook flags they are decided with: `fixtures/flags`,
//! then the case's own `flags` file, parsed by clap as the binary parses them. One
//! argument per line; blank lines and lines starting with `#` are left out. A case's
//! `--name=value` replaces the base flag of that name.

use std::path::{Path, PathBuf};

use ipmgmt_webhook::config::from_flags;
use ipmgmt_webhook::inject::Config;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every case directory (one with a `pod.json`), in order.
pub fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("pod.json").exists())
        .collect();
    cases.sort();
    cases
}

fn read_flags(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn name(flag: &str) -> &str {
    flag.split_once('=').map_or(flag, |(name, _)| name)
}

/// The base flags, with `extra` added as a case's flags are.
pub fn flags_with(extra: &[String]) -> Vec<String> {
    let mut flags = read_flags(&fixtures().join("flags"));
    flags.retain(|base| !extra.iter().any(|flag| name(flag) == name(base)));
    flags.extend_from_slice(extra);
    flags
}

/// The configuration `case` is decided with.
pub fn config(case: &Path) -> Config {
    let flags = flags_with(&read_flags(&case.join("flags")));
    from_flags(&flags).unwrap_or_else(|e| panic!("{}/flags: {e}", case.display()))
}
