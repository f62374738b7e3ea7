//! Routing throughput: one ~1 KB invoice event, given as JSON text (parsing
//! included, as event-ruler's `rulesForJSONEvent` measures it), against 5
//! rules of each operator kind and against 1,000 rules.
//!
//! `cargo bench -p bems-core --bench routing`. Criterion reports time per
//! event; events per second per core is its inverse (the benchmark is
//! single-threaded). BENCHMARKS.md has the table and event-ruler's figures.

use std::hint::black_box;
use std::time::Duration;

use bems_core::routing::{EventPattern, RuleSet};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The EventBridge event fixture, made compact as EventBridge delivers it.
fn event() -> Vec<u8> {
    let value: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/example-eventbridge-event-invoice.json")).expect("fixture");
    serde_json::to_vec(&value).expect("serializes")
}

/// Five rules of one operator kind on the event's detail fields; one of
/// them matches, as in event-ruler's benchmark.
fn rules(kind: &str) -> Vec<(String, EventPattern)> {
    let bodies: Vec<String> = match kind {
        "exact" => ["INV-2026-000123", "INV-1", "INV-2", "INV-3", "INV-4"]
            .iter()
            .map(|v| format!(r#"{{"detail": {{"invoiceId": ["{v}"]}}}}"#))
            .collect(),
        "prefix" => ["INV-2026", "PO-", "CN-", "DN-", "X-"]
            .iter()
            .map(|v| format!(r#"{{"detail": {{"invoiceId": [{{"prefix": "{v}"}}]}}}}"#))
            .collect(),
        "suffix" => ["000123", "999", "998", "997", "996"]
            .iter()
            .map(|v| format!(r#"{{"detail": {{"invoiceId": [{{"suffix": "{v}"}}]}}}}"#))
            .collect(),
        "equals-ignore-case" => ["acme industriebedarf gmbh", "a", "b", "c", "d"]
            .iter()
            .map(|v| format!(r#"{{"detail": {{"vendor": {{"name": [{{"equals-ignore-case": "{v}"}}]}}}}}}"#))
            .collect(),
        "wildcard" => ["INV-*-000123", "INV-*-9*", "PO-*", "*-x", "CN*1"]
            .iter()
            .map(|v| format!(r#"{{"detail": {{"invoiceId": [{{"wildcard": "{v}"}}]}}}}"#))
            .collect(),
        "anything-but" => ["USD", "JPY", "GBP", "CHF", "SEK"]
            .iter()
            .map(|v| format!(r#"{{"detail": {{"currency": [{{"anything-but": ["{v}"]}}]}}}}"#))
            .collect(),
        "numeric" => [(1000, 2000), (0, 10), (10, 20), (20, 30), (30, 40)]
            .iter()
            .map(|(lo, hi)| format!(r#"{{"detail": {{"amount": [{{"numeric": [">", {lo}, "<=", {hi}]}}]}}}}"#))
            .collect(),
        "exists" => ["taxId", "a", "b", "c", "d"]
            .iter()
            .map(|v| format!(r#"{{"detail": {{"vendor": {{"{v}": [{{"exists": true}}]}}}}}}"#))
            .collect(),
        other => unreachable!("{other}"),
    };
    bodies
        .iter()
        .enumerate()
        .map(|(i, b)| (format!("{kind}-{i}"), EventPattern::from_json(b).expect("valid")))
        .collect()
}

/// 1,000 rules shaped like a large cell's: source, detail type, stage,
/// cell and partition, plus an amount band; the event matches one.
fn thousand_rules() -> Vec<(String, EventPattern)> {
    let stages = ["ingestion", "reconciliation", "authorization", "posting"];
    (0..1000)
        .map(|i| {
            let stage = stages[i % 4];
            let cell = format!("cell-{}", i / 400);
            let partition = (i / 4) % 100 + 1;
            let json = format!(
                r#"{{"source": ["bems.invoices"], "detail-type": ["Invoice Status Changed"], "detail": {{"stage": ["{stage}"], "metadata": {{"cellId": ["{cell}"], "partition": [{partition}]}}, "amount": [{{"numeric": [">", 0]}}]}}}}"#
            );
            (format!("r{i}"), EventPattern::from_json(&json).expect("valid"))
        })
        .chain(std::iter::once((
            "the-one".to_owned(),
            EventPattern::from_json(
                r#"{"source": ["bems.invoices"], "detail": {"stage": ["reconciliation"], "metadata": {"cellId": ["prod-eu-1"], "partition": [7]}}}"#,
            )
            .expect("valid"),
        )))
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let event = event();
    let bytes = event.as_slice();
    println!("event: {} bytes of compact JSON", bytes.len());
    group.bench_function("floor: serde_json skips the whole event (IgnoredAny)", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(bytes)))
    });
    for kind in ["exact", "prefix", "suffix", "equals-ignore-case", "wildcard", "anything-but", "numeric", "exists"] {
        let set = RuleSet::new(rules(kind)).expect("unique names");
        assert!(!set.matching_json(bytes).expect("json").is_empty(), "{kind}: a rule must match");
        group.bench_function(format!("5 {kind} rules, raw JSON"), |b| b.iter(|| set.matching_json(black_box(bytes))));
    }
    // 1,000 prefix rules, one matching: anchored on prefixes, the cost
    // stays near five rules' instead of growing with the rule count.
    let prefixes = (0..1000).map(|i| {
        let prefix = if i == 500 { "INV-2026-000".to_owned() } else { format!("INV-{i:04}-") };
        (
            format!("p{i}"),
            EventPattern::from_json(&format!(r#"{{"detail": {{"invoiceId": [{{"prefix": "{prefix}"}}]}}}}"#))
                .expect("valid"),
        )
    });
    let set = RuleSet::new(prefixes).expect("unique names");
    assert_eq!(set.matching_json(bytes).expect("json"), vec!["p500"]);
    group.bench_function("1000 prefix rules, raw JSON", |b| b.iter(|| set.matching_json(black_box(bytes))));

    let set = RuleSet::new(thousand_rules()).expect("unique names");
    assert_eq!(set.matching_json(bytes).expect("json"), vec!["the-one"]);
    group.bench_function("1000 rules, raw JSON", |b| b.iter(|| set.matching_json(black_box(bytes))));
    group.bench_function("1000 rules, full serde_json::Value parse", |b| {
        b.iter(|| set.matching(&serde_json::from_slice::<serde_json::Value>(black_box(bytes)).expect("json")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
