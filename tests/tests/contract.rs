//! The webhook and the IP manager agree on their contract, checked from both ends:
//! every mode the webhook injects runs `ipmgr <mode>`, which ipmgr must accept; every
//! `IPMGR_*` variable the webhook can set on the manager is one ipmgr reads, with a
//! value ipmgr parses; and the shared list of those variables (`ipmgmt_common`) is
//! exactly what ipmgr's flags read. A name changed at one end fails here, not in a pod.

use std::collections::BTreeSet;
use std::time::Duration;

use clap::{CommandFactory, Parser, ValueEnum};
use ipmgmt_common::{floating, ipmgr_env};
use ipmgmt_webhook::config::from_flags;
use ipmgmt_webhook::inject::{Decision, Injector, Mode, Pod};
use ipmgr::config::{Cli, Command};
use serde_json::{Value, json};

#[test]
fn every_webhook_mode_is_an_ipmgr_subcommand() {
    for mode in Mode::value_variants() {
        let cli = Cli::try_parse_from(["ipmgr", mode.as_str()])
            .unwrap_or_else(|e| panic!("ipmgr does not accept `{}`: {e}", mode.as_str()));
        assert!(
            !matches!(cli.command, Command::Ready { .. }),
            "`{}` must run a mode, not the probe",
            mode.as_str()
        );
    }
}

/// (environment variable, long flag) of every ipmgr setting with an environment twin.
fn ipmgr_reads() -> Vec<(String, String)> {
    Cli::command()
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            Some((env, arg.get_long()?.to_owned()))
        })
        .collect()
}

#[test]
fn the_shared_list_is_what_ipmgr_reads() {
    let read: BTreeSet<String> = ipmgr_reads()
        .into_iter()
        .map(|(env, _)| env)
        .filter(|env| env.starts_with("IPMGR_"))
        .collect();
    let listed: BTreeSet<String> = ipmgr_env::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(read, listed);
    let cli = Cli::try_parse_from(["ipmgr", "sidecar"]).unwrap();
    assert_eq!(
        cli.settings.release_timeout,
        Duration::from_secs(ipmgr_env::DEFAULT_RELEASE_TIMEOUT_SECONDS.into()),
        "ipmgr's default release timeout is the one the webhook computes delays from"
    );
}

/// The manager container the webhook injects into `pod` with `flags`.
fn manager(flags: &[&str], pod: &Value) -> Value {
    let cfg = from_flags(["--image", "ipmgr:test"].iter().chain(flags)).unwrap();
    let text = pod.to_string();
    let view: Pod = serde_json::from_str(&text).unwrap();
    let Decision::Inject { patch, .. } = Injector::new(cfg).decide(&view) else {
        panic!("expected an injection");
    };
    let ops: json_patch::Patch = serde_json::from_slice(&patch.to_bytes()).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &ops).unwrap();
    let all = [&doc["spec"]["initContainers"], &doc["spec"]["containers"]];
    all.iter()
        .filter_map(|list| list.as_array())
        .flatten()
        .find(|c| c["name"] == "aws-ip-mgmt")
        .cloned()
        .unwrap()
}

#[test]
fn every_ipmgr_variable_the_webhook_sets_is_read_and_parses() {
    let reads = ipmgr_reads();
    let pod = |mode: &str, floating: bool| {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "annotations": {
                   ipmgmt_common::annotations::MODE: mode,
                   ipmgmt_common::annotations::ALLOW_REASSIGNMENT: "false",
                   ipmgmt_common::annotations::INTERFACES: "net1,net2"}},
               "spec": {"terminationGracePeriodSeconds": 45,
                        "containers": [{"name": "app", "image": "app:1"}]}});
        if floating {
            let annotations = &mut pod["metadata"]["annotations"];
            annotations[floating::FLOATING_IPS] = json!("10.0.4.100,2001:db8::100");
            annotations[floating::ELASTIC_IP] = json!("eipalloc-0123abcd");
            annotations[floating::ROUTE_TABLES] = json!("rtb-0123abcd,rtb-4567cdef");
        }
        pod
    };
    let chart = [
        "--ipmgr-env=IPMGR_LOG_LEVEL=info,aws_config=warn",
        "--ipmgr-env=IPMGR_LOG_FORMAT=json",
        "--ipmgr-env=IPMGR_CLUSTER_TAG=kubernetes.io/cluster/demo=owned",
        "--ipmgr-release-timeout-seconds=8",
        "--ipmgr-env=IPMGR_LEASE_DURATION_SECONDS=4",
        "--ipmgr-env=IPMGR_LEASE_RENEW_DEADLINE_MS=2500",
        "--ipmgr-env=IPMGR_LEASE_RETRY_MS=400",
    ];
    let mut seen = BTreeSet::new();
    for (mode, extra, floating) in [
        ("init", None, false),
        ("sidecar", None, false),
        ("sidecar", Some("--classic-sidecar"), false),
        ("sidecar", None, true),
    ] {
        let flags: Vec<&str> = chart.iter().copied().chain(extra).collect();
        let container = manager(&flags, &pod(mode, floating));
        let mut args = vec!["ipmgr".to_owned(), mode.to_owned()];
        for var in container["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                // The downward API's: each one the webhook sets is one ipmgr reads, and
                // its field's path stands in for the value kubelet will give it.
                let (_, long) = (reads.iter())
                    .find(|(env, _)| env == name)
                    .unwrap_or_else(|| {
                        panic!("the webhook sets {name}, which ipmgr does not read")
                    });
                args.push(format!("--{long}={path}"));
                continue;
            }
            if !name.starts_with("IPMGR_") {
                continue;
            }
            let (_, long) = reads
                .iter()
                .find(|(env, _)| env == name)
                .unwrap_or_else(|| panic!("the webhook sets {name}, which ipmgr does not read"));
            args.push(format!("--{long}={}", var["value"].as_str().unwrap()));
            seen.insert(name.to_owned());
        }
        let cli = Cli::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("ipmgr refuses what the webhook set ({args:?}): {e}"));
        cli.settings
            .check_floating(cli.command)
            .unwrap_or_else(|e| panic!("ipmgr refuses what the webhook set ({args:?}): {e}"));
        if floating {
            let ips = &cli.settings.floating_ips.as_ref().unwrap().0;
            assert_eq!(ips.len(), 2);
        }
        if mode == "sidecar" {
            assert_eq!(cli.settings.release_timeout, Duration::from_secs(8));
        }
        if extra.is_some() {
            // 45 s of grace: the release starts with 8 + 5 s left.
            assert_eq!(cli.settings.release_delay, Duration::from_secs(20));
        }
    }
    for name in [
        ipmgr_env::ALLOW_REASSIGNMENT,
        ipmgr_env::INTERFACES,
        ipmgr_env::READY_FILE,
        ipmgr_env::RELEASE_DELAY_SECONDS,
        ipmgr_env::RELEASE_TIMEOUT_SECONDS,
        ipmgr_env::LOG_LEVEL,
        ipmgr_env::CLUSTER_TAG,
        ipmgr_env::FLOATING_IPS,
        ipmgr_env::ELASTIC_IP,
        ipmgr_env::ROUTE_TABLES,
        ipmgr_env::LEASE_DURATION_SECONDS,
    ] {
        assert!(seen.contains(name), "no form set {name}");
    }
}

#[test]
fn a_misspelt_or_owned_ipmgr_variable_is_refused_at_startup() {
    let refused = |flag: &str| {
        from_flags(["--image", "ipmgr:test", flag])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let misspelt = refused("--ipmgr-env=IPMGR_RESYNC_SECOND=30");
    assert!(
        misspelt.contains("ipmgr reads no IPMGR_RESYNC_SECOND")
            && misspelt.contains(ipmgr_env::RESYNC_SECONDS),
        "{misspelt}"
    );
    let owned = refused("--ipmgr-env=IPMGR_RELEASE_TIMEOUT_SECONDS=15");
    assert!(owned.contains("--ipmgr-release-timeout-seconds"), "{owned}");
    let per_pod = refused("--ipmgr-env=IPMGR_FLOATING_IPS=10.0.4.100");
    assert!(
        per_pod.contains("ipmgmt.aws/floating-ips annotation"),
        "{per_pod}"
    );
    // Not ipmgr's: passed on as the user wrote it.
    assert!(
        from_flags([
            "--image",
            "ipmgr:test",
            "--ipmgr-env=HTTPS_PROXY=http://proxy:3128"
        ])
        .is_ok()
    );
}
