//! The command line: `ipmgr ready`, the probe the webhook wires into the sidecar's
//! startupProbe (and the classic sidecar's postStart hook), and `--help`.

use std::process::Command;
use std::time::{Duration, Instant};

fn ipmgr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ipmgr"))
}

#[test]
fn ready_answers_from_the_ready_file() {
    let dir = std::env::temp_dir().join(format!("ipmgr-ready-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ready");
    let _ = std::fs::remove_file(&file);

    let out = ipmgr()
        .arg("ready")
        .env("IPMGR_READY_FILE", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not ready"),
        "{out:?}"
    );

    std::fs::write(&file, "ready\n").unwrap();
    let out = ipmgr()
        .arg("ready")
        .env("IPMGR_READY_FILE", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn ready_wait_returns_when_the_file_appears() {
    let dir = std::env::temp_dir().join(format!("ipmgr-wait-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ready");
    let _ = std::fs::remove_file(&file);
    let mut child = ipmgr()
        .args(["ready", "--wait", "10"])
        .env("IPMGR_READY_FILE", &file)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "returned before the file existed"
    );
    let started = Instant::now();
    std::fs::write(&file, "ready\n").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn unknown_subcommand_is_refused() {
    let out = ipmgr().arg("assign").output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn text_logs_carry_no_colour_codes_off_a_terminal() {
    // `kubectl logs` reads the container's stderr from a file: escape codes would show.
    let dir = std::env::temp_dir().join(format!("ipmgr-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = ipmgr()
        .arg("init")
        .env("IPMGR_LOG_FORMAT", "text")
        .env("IPMGR_INTERFACES", "ipmgm-none0")
        .env("IPMGR_ADDRESS_WAIT_SECONDS", "0")
        .env("IPMGR_TERMINATION_LOG", dir.join("termination-log"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ERROR") && stderr.contains("no address on a secondary interface"),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "colour codes in {stderr:?}");
    let termination = std::fs::read_to_string(dir.join("termination-log")).unwrap();
    assert!(termination.starts_with("no address on a secondary interface"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every setting `ipmgr --help` lists is in the README's list of settings.
#[test]
fn the_readme_lists_every_setting() {
    let out = ipmgr().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let readme = include_str!("../../README.md");
    let names: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next())
        .collect();
    assert!(names.len() > 10, "{help}");
    for name in names {
        assert!(readme.contains(name), "README does not mention {name}");
    }
}
