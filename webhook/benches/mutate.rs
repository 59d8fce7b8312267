//! The mutation from request bytes to response bytes, for a typical pod (a Deployment's
//! pod of about 3 KB of JSON, as the apiserver sends it).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipmgmt_webhook::config::from_flags;
use ipmgmt_webhook::inject::Injector;
use ipmgmt_webhook::review::{Outcome, envelope, review};
use serde_json::Value;

/// The binary's allocator (`src/main.rs`), so that the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixture(case: &str) -> Value {
    let path = format!("{}/fixtures/{case}/pod.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let injector = Injector::new(
        from_flags([
            "--image",
            "public.ecr.aws/ipmgmt/ipmgr:0.1.0",
            "--region",
            "us-west-2",
        ])
        .unwrap(),
    );
    let mut group = c.benchmark_group("review");
    for (name, case, injects) in [
        ("inject_sidecar", "sidecar-native", true),
        ("inject_init", "init-existing-init-containers", true),
        ("skip_unannotated", "not-requested", false),
    ] {
        // Compact and newline-terminated, as the apiserver's encoder writes it.
        let mut body = serde_json::to_vec(&envelope(fixture(case))).unwrap();
        body.push(b'\n');
        let answer = review(&body, &injector).unwrap();
        match answer.outcome {
            Outcome::Injected(_) => assert!(injects && answer.body.len() > 1000, "{case}"),
            other => assert!(!injects && other == Outcome::Skipped, "{case}: {other:?}"),
        }
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name}_{}B", body.len()), |b| {
            b.iter(|| review(black_box(&body), &injector).unwrap())
        });
        // The same review read by sonic-rs through the views' serde derive, with the
        // same answer.
        #[cfg(feature = "sonic")]
        {
            let sonic = ipmgmt_webhook::review::review_sonic(&body, &injector).unwrap();
            assert_eq!(
                sonic.body, answer.body,
                "{case}: sonic-rs answers otherwise"
            );
            group.bench_function(format!("{name}_{}B_sonic_rs", body.len()), |b| {
                b.iter(|| {
                    ipmgmt_webhook::review::review_sonic(black_box(&body), &injector).unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
