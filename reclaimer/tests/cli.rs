//! The command line: the README's settings table is `--help`, flag for flag, and a
//! setting that cannot work is refused before anything starts.

use std::process::Command;

fn reclaimer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ipmgmt-reclaimer"))
}

#[test]
fn the_readme_lists_every_flag_with_its_environment_and_default() {
    let help = String::from_utf8(reclaimer().arg("--help").output().unwrap().stdout).unwrap();
    let readme = include_str!("../../README.md");
    let table = readme
        .split("## Running the reclaimer")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has a reclaimer section");
    let mut flags = 0;
    for line in help.lines().map(str::trim).filter(|l| l.starts_with("--")) {
        let flag = line.split([' ', '=']).next().unwrap();
        if matches!(flag, "--help" | "--version") {
            continue;
        }
        flags += 1;
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| `{flag}` |")))
            .unwrap_or_else(|| panic!("README has no row for {flag}"));
        let rest = help.split(line).nth(1).unwrap_or("");
        let block: String = std::iter::once(line)
            .chain(
                rest.lines()
                    .take_while(|l| !l.trim_start().starts_with("--")),
            )
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(env) = block
            .split("[env: ")
            .nth(1)
            .and_then(|s| s.split('=').next())
        {
            assert!(
                row.contains(&format!("`{env}`")),
                "{flag}: README row lacks {env}: {row}"
            );
        }
        if let Some(default) = block
            .split("[default: ")
            .nth(1)
            .and_then(|s| s.split(']').next())
        {
            assert!(
                row.contains(&format!("`{default}`")),
                "{flag}: README row lacks default {default}: {row}"
            );
        }
    }
    assert!(flags >= 14, "read {flags} flags from --help:\n{help}");
    let rows = table.lines().filter(|l| l.starts_with("| `--")).count();
    assert_eq!(rows, flags, "the README lists a flag --help does not know");
}

#[test]
fn lease_timings_that_cannot_work_are_refused() {
    let out = reclaimer()
        .args([
            "--namespace",
            "n",
            "--identity",
            "i",
            "--renew-deadline",
            "20s",
        ])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("must be shorter than --lease-duration"),
        "{stderr}"
    );
}
