//! The mutation from request bytes to response bytes, for a typical pod (a Deployment's
//! pod of about 3 KB of JSON, as the apiserver sends it).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipmgmt_webhook::inject::{Config, Injector};
use ipmgmt_webhook::review::{Outcome, review};
use serde_json::{Value, json};

fn review_bytes(pod: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "core5g",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    }))
    .unwrap()
}

fn fixture(case: &str) -> Value {
    let path = format!("{}/fixtures/{case}/pod.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let injector = Injector::new(Config {
        image: "public.ecr.aws/ipmgmt/ipmgr:0.1.0".into(),
        region: Some("us-west-2".into()),
        ..Config::default()
    });
    let mut group = c.benchmark_group("review");
    for (name, case, outcome) in [
        ("inject_sidecar", "sidecar-native", "injected"),
        ("inject_init", "init-existing-init-containers", "injected"),
        ("skip_unannotated", "not-requested", "skipped"),
    ] {
        let body = review_bytes(fixture(case));
        let answer = review(&body, &injector).unwrap();
        assert_eq!(answer.outcome.label(), outcome, "{case}");
        if let Outcome::Injected(_) = answer.outcome {
            assert!(answer.body.len() > 1000);
        }
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name}_{}B", body.len()), |b| {
            b.iter(|| review(black_box(&body), &injector).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
