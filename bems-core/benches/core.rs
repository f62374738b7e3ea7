//! Per-core throughput of what every event goes through before routing:
//! validation of the invoice event, decoding of the three body shapes a
//! consumer receives, and partition hashing.
//!
//! `cargo bench -p bems-core --bench core`. Single-threaded: events per
//! second per core is the inverse of the time per event (Criterion prints
//! it as `thrpt`). BENCHMARKS.md has the table.

use std::hint::black_box;

use bems_core::Validator;
use bems_core::envelope::decode_body;
use bems_core::fields::InvoiceId;
use bems_core::partition::{Partition, PartitionCount, stable_hash};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A fixture made compact, as it travels.
fn compact(text: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(text).expect("fixture");
    serde_json::to_string(&value).expect("serializes")
}

fn bench(c: &mut Criterion) {
    let validator = Validator::default();
    let event = compact(include_str!("../fixtures/example-invoice-event.json"));
    assert!(validator.parse(event.as_bytes()).is_ok(), "the fixture must be valid");

    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("invoice event ({} bytes)", event.len()), |b| {
        b.iter(|| validator.parse(black_box(event.as_bytes())));
    });
    // The fixture is a test case: the event is its `event` member.
    let case: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/invalid/many-problems-at-once.json")).expect("fixture");
    let invalid = serde_json::to_string(&case["event"]).expect("serializes");
    let problems = validator.parse(invalid.as_bytes()).err().map_or(0, |v| v.as_slice().len());
    assert!(problems > 1, "the fixture's event must have several problems");
    group.bench_function(format!("invalid event, all {problems} problems reported ({} bytes)", invalid.len()), |b| {
        b.iter(|| validator.parse(black_box(invalid.as_bytes())));
    });
    group.finish();

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    for (shape, text) in [
        ("bare event", event.clone()),
        ("EventBridge event", compact(include_str!("../fixtures/example-eventbridge-event-invoice.json"))),
        (
            "SNS notification of an EventBridge event",
            compact(include_str!("../fixtures/example-sns-notification-eventbridge.json")),
        ),
    ] {
        assert!(decode_body(&text, &validator).is_ok(), "{shape} must decode");
        group.bench_function(format!("{shape} ({} bytes)", text.len()), |b| {
            b.iter(|| decode_body(black_box(&text), &validator));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("partition");
    group.throughput(Throughput::Elements(1));
    let invoice = InvoiceId::new("INV-2026-000123").expect("id");
    let count = PartitionCount::new(16).expect("count");
    group.bench_function("partition of an invoice (16 partitions)", |b| {
        b.iter(|| Partition::for_invoice(black_box(&invoice), count));
    });
    group.bench_function("stable_hash of 15 bytes", |b| {
        b.iter(|| stable_hash(black_box(b"INV-2026-000123")));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
