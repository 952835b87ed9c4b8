//! Criterion benchmarks of the hot pure paths: reservation resolve, fallback plan,
//! both error classifiers on the recorded bodies, placement over 100, 1,000 and 10,000
//! nodes (indexed and by linear scan), the cloud-init render, and redaction of an
//! event line with 100 registered secrets.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sam_benches::cases;
use sam_benches::fleet::{NaiveFleet, Placer, Rng, Workload, index, nodes, request};
use sam_cloudinit::NodeBoot;
use sam_core::{
    FallbackPlan, Layer, PlanRequest, ProviderKind, RequirementLayers, ResourceRequirements,
    Secret, SizeDescent, VmSize, classify_agent_error, resolve_reservation,
};
use sam_providers::classify_http_error;

fn reservation(c: &mut Criterion) {
    let layers = RequirementLayers {
        task: ResourceRequirements {
            min_vcpu: Some(2.0),
            ..ResourceRequirements::default()
        },
        project: ResourceRequirements {
            min_memory_gb: Some(6.0),
            exclusive_node: Some(false),
            ..ResourceRequirements::default()
        },
        ..RequirementLayers::default()
    };
    c.bench_function("reservation_resolve", |b| {
        b.iter(|| resolve_reservation(black_box(&layers)))
    });
}

fn fallback(c: &mut Criterion) {
    let catalog = sam_providers::catalog(ProviderKind::Hetzner, &[]);
    let reservation = resolve_reservation(&RequirementLayers::default()).expect("defaults");
    let request = PlanRequest {
        catalog: &catalog,
        size: VmSize::Large,
        size_source: Layer::Platform,
        location: None,
        location_source: Layer::Platform,
        reservation: &reservation,
        descent: SizeDescent::Allowed,
    };
    c.bench_function("fallback_plan", |b| {
        b.iter(|| FallbackPlan::new(black_box(&request)))
    });
}

fn classify(c: &mut Criterion) {
    let bodies = cases::provider_errors().expect("shared/cases/provider-errors.json");
    c.bench_function("classify_http_error_all_cases", |b| {
        b.iter(|| {
            for e in &bodies {
                black_box(classify_http_error(
                    e.provider,
                    e.status,
                    black_box(&e.body),
                ));
            }
        })
    });
    c.bench_function("classify_agent_error_all_cases", |b| {
        b.iter(|| {
            for e in &bodies {
                black_box(classify_agent_error(black_box(&e.body)));
            }
        })
    });
}

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement");
    for size in [100usize, 1_000, 10_000] {
        let fleet = nodes(size, 7);
        let mut indexed = index(fleet.clone());
        let mut naive = NaiveFleet::new(fleet);
        // Fill both to about one workspace per node, then time single decisions.
        Workload::new(7, size).run(&mut indexed, size as u64);
        Workload::new(7, size).run(&mut naive, size as u64);
        let mut rng = Rng::new(11);
        let requests: Vec<_> = (0..256).map(|n| request(&mut rng, n)).collect();
        group.bench_with_input(BenchmarkId::new("index", size), &requests, |b, rs| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % rs.len();
                indexed.choose(black_box(&rs[i]))
            })
        });
        group.bench_with_input(BenchmarkId::new("scan", size), &requests, |b, rs| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % rs.len();
                naive.choose(black_box(&rs[i]))
            })
        });
    }
    group.finish();
}

fn cloud_init(c: &mut Criterion) {
    let boot = NodeBoot::new(
        "node-000001",
        "https://sam.example.com",
        Secret::new("a-callback-token-of-some-length"),
        "0".repeat(64),
    );
    c.bench_function("cloud_init_render", |b| {
        b.iter(|| black_box(&boot).render())
    });
}

fn redaction(c: &mut Criterion) {
    for i in 0..100 {
        sam_core::secret::register(&format!("registered-secret-{i:04}-value"));
    }
    // An agent's message of about 1 KB: prose, a path, JSON, a quoted value.
    let clean = "The agent edited src/main.rs and ran `cargo test`: 42 passed. ".repeat(12)
        + r#"{"tool": "bash", "input_tokens": 1234, "note": "a bearer token is required"}"#;
    let dirty = format!(
        "{clean} HCLOUD_TOKEN=\"abc def\" registered-secret-0042-value -----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----"
    );
    c.bench_function("redact_clean_line", |b| {
        b.iter(|| sam_core::redact(black_box(&clean)).len())
    });
    c.bench_function("redact_line_with_secrets", |b| {
        b.iter(|| sam_core::redact(black_box(&dirty)).len())
    });
}

criterion_group!(
    benches,
    reservation,
    fallback,
    classify,
    placement,
    cloud_init,
    redaction
);
criterion_main!(benches);
