//! Criterion benchmark of the event log's append, one event per transaction (as the
//! VM agent appends) and in batches of 64, on a SQLite file in a temporary directory.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use sam_benches::events::event;
use sam_store::{EventLog, RetentionConfig};

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = rt
        .block_on(EventLog::new(&RetentionConfig::new(
            dir.path().join("events.db"),
        )))
        .expect("the event log");
    let mut n = 0;
    c.bench_function("event_append", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(log.append(&event(n))).expect("append")
        })
    });
    c.bench_function("event_append_batch_64", |b| {
        b.iter_batched(
            || {
                n += 64;
                (n..n + 64).map(event).collect::<Vec<_>>()
            },
            |events| rt.block_on(log.append_batch(&events)).expect("append"),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, append);
criterion_main!(benches);
