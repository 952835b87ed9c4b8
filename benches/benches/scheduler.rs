//! Criterion benchmark of the scheduler in service: [`DefaultScheduler::place`] over a
//! [`MemoryStore`] holding a fleet of 1,000 and 10,000 running nodes with about one
//! workspace each. Decisions only: the timed loop places and does not reserve (each
//! request's task places again and again, so the view's held-out slots stay bounded);
//! `sam-bench`'s placement scenario times decisions with the reservations between them.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sam_benches::fleet::{Rng, Workload, nodes, request};
use sam_benches::placement::in_service;
use sam_core::{DefaultScheduler, FleetStore, Scheduler, Store};
use sam_store::MemoryStore;

/// A store holding `size` nodes filled to about one workspace per node through the
/// scheduler, and that scheduler.
async fn fleet(size: usize) -> (Arc<MemoryStore>, DefaultScheduler) {
    let store = Arc::new(MemoryStore::new());
    for node in nodes(size, 7) {
        store.put_node(&node).await.expect("put_node");
    }
    let scheduler = DefaultScheduler::new(Arc::clone(&store) as Arc<dyn Store>);
    let mut load = Workload::new(7, size);
    in_service(&scheduler, &store, &mut load, size as u64)
        .await
        .expect("the warm-up places");
    (store, scheduler)
}

fn scheduler(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("scheduler_place");
    for size in [1_000usize, 10_000] {
        let (_store, scheduler) = rt.block_on(fleet(size));
        let mut rng = Rng::new(11);
        let requests: Vec<_> = (0..256).map(|n| request(&mut rng, n)).collect();
        group.bench_with_input(BenchmarkId::new("memory", size), &requests, |b, rs| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % rs.len();
                let mut r = rs[i].clone();
                r.now = chrono::Utc::now();
                rt.block_on(scheduler.place(black_box(&r)))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
