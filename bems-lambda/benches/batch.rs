//! The batch-processing core on the batch a stage processor receives: ten
//! SQS FIFO records in three message groups, each body an ~850-byte
//! EventBridge event (`fifo-batch-10.json`, next to this file), decoded and
//! validated, no I/O. The same batch, the same work (`json.loads` of each
//! body), through Powertools for AWS Lambda (Python)'s
//! `SqsFifoPartialProcessor` is `powertools_fifo.py`; `scripts/bench-batch`
//! runs both in one go and prints the ratio.
//!
//! Also here: a whole stage processor (decode, validate, the stage's rules,
//! the next events built and published in one `PutEvents` per batch) on the
//! same batch with an in-memory bus, which is what our code sustains per
//! core with the emulators (and AWS) out of the loop; and building the
//! Timestream record of a status change.
//!
//! `cargo bench -p bems-lambda --bench batch`

use std::borrow::Cow;
use std::hint::black_box;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use bems_batch::{BatchProcessor, RecordError, RecordHandler, consumer_validator, decode};
use bems_core::Validator;
use bems_core::envelope::PutEventsEntry;
use bems_core::publish::{BusError, CellTarget, EntryResult, EventBus, Publisher};
use bems_lambda::processor::StageProcessor;
use bems_lambda::stages::Rules;
use bems_lambda::stages::{NoApprovals, NoPurchaseOrderSystem};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// A bus that accepts everything at once, counting the entries.
struct MemoryBus;

impl EventBus for MemoryBus {
    async fn put_events(&self, entries: &[PutEventsEntry]) -> Result<Vec<EntryResult>, BusError> {
        Ok(entries.iter().map(|e| EntryResult::Accepted(black_box(e).size().to_string())).collect())
    }
}

/// Decodes and validates each record, as a stage processor does before its
/// rules; keeps nothing.
struct DecodeOnly {
    validator: Validator,
    handled: usize,
}

impl RecordHandler for DecodeOnly {
    async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
        let delivery = decode(record, &self.validator)?;
        black_box(&delivery);
        self.handled += 1;
        Ok(())
    }
}

/// Parses each body into a `serde_json::Value` and validates nothing: the
/// same work as the Python side's `json.loads`.
struct ParseOnly;

impl RecordHandler for ParseOnly {
    async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
        let body = record.body.as_deref().unwrap_or_default();
        let value: serde_json::Value = serde_json::from_str(body).map_err(|e| RecordError::poison(e.to_string()))?;
        black_box(value);
        Ok(())
    }
}

/// The floor under any decoder of these bodies with `serde_json`: one
/// typed pass into borrowed fields, envelope and event, checking nothing
/// (no formats, no ranges, no cross-field rules, nothing owned). Compare
/// with the Python side: it is the cost of reading the JSON at all.
struct TypedParseOnly;

#[derive(serde::Deserialize)]
#[allow(dead_code, reason = "read to be parsed, never used")]
struct Envelope<'a> {
    #[serde(borrow)]
    version: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "detail-type", borrow)]
    detail_type: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    account: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    region: Cow<'a, str>,
    #[serde(borrow)]
    resources: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    detail: Detail<'a>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code, reason = "read to be parsed, never used")]
#[serde(rename_all = "camelCase")]
struct Detail<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    invoice_id: Cow<'a, str>,
    #[serde(borrow)]
    stage: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow)]
    previous_status: Option<Cow<'a, str>>,
    #[serde(borrow)]
    amount: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    currency: Cow<'a, str>,
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
    #[serde(borrow)]
    issue_date: Cow<'a, str>,
    #[serde(borrow)]
    vendor: Vendor<'a>,
    #[serde(borrow)]
    payment_terms: Terms<'a>,
    #[serde(borrow)]
    metadata: Meta<'a>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code, reason = "read to be parsed, never used")]
#[serde(rename_all = "camelCase")]
struct Vendor<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    country: Cow<'a, str>,
    #[serde(borrow)]
    tax_id: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code, reason = "read to be parsed, never used")]
#[serde(rename_all = "camelCase")]
struct Terms<'a> {
    net_days: u16,
    #[serde(borrow)]
    due_date: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[allow(dead_code, reason = "read to be parsed, never used")]
#[serde(rename_all = "camelCase")]
struct Meta<'a> {
    schema_version: u32,
    #[serde(borrow)]
    region: Cow<'a, str>,
    #[serde(borrow)]
    account_id: Cow<'a, str>,
    #[serde(borrow)]
    cell_id: Cow<'a, str>,
    partition: u32,
    #[serde(borrow)]
    correlation_id: Cow<'a, str>,
    #[serde(borrow)]
    producer: Cow<'a, str>,
}

impl RecordHandler for TypedParseOnly {
    async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
        let body = record.body.as_deref().unwrap_or_default();
        let envelope: Envelope<'_> = serde_json::from_str(body).map_err(|e| RecordError::poison(e.to_string()))?;
        black_box(envelope);
        Ok(())
    }
}

fn batch() -> SqsEvent {
    serde_json::from_str(include_str!("fifo-batch-10.json")).expect("the batch fixture")
}

fn bench(c: &mut Criterion) {
    let event = batch();
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let processor = BatchProcessor::new();
    let mut handler = DecodeOnly { validator: consumer_validator(), handled: 0 };
    // The fixture must be a batch of valid records, or the benchmark would time failures.
    let response = runtime.block_on(processor.process(&event, &mut handler));
    assert!(response.batch_item_failures.is_empty(), "the fixture's records must all be valid");
    assert_eq!(handler.handled, 10);

    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(event.records.len() as u64));
    group.bench_function("fifo 10 records, decode + validate", |b| {
        b.iter(|| runtime.block_on(processor.process(black_box(&event), &mut handler)));
    });
    group.bench_function("fifo 10 records, JSON parse only (as json.loads)", |b| {
        b.iter(|| runtime.block_on(processor.process(black_box(&event), &mut ParseOnly)));
    });
    let response = runtime.block_on(processor.process(&event, &mut TypedParseOnly));
    assert!(response.batch_item_failures.is_empty(), "the typed floor must read every record");
    group.bench_function("fifo 10 records, typed parse only, nothing checked (floor)", |b| {
        b.iter(|| runtime.block_on(processor.process(black_box(&event), &mut TypedParseOnly)));
    });
    group.finish();

    // The whole reconciliation processor. A new one per batch: a processor
    // remembers the events it handled and would skip them the second time.
    let first = decode(&event.records[0], &consumer_validator()).expect("valid").event;
    let target = CellTarget {
        bus: "bems-prod-eu-1".into(),
        cell_id: first.metadata.cell_id.clone(),
        region: first.metadata.region.clone(),
        account_id: first.metadata.account_id.clone(),
        partitions: bems_core::partition::PartitionCount::new(8).expect("partitions"),
    };
    let stage_processor = || {
        StageProcessor::new(
            bems_core::Stage::Reconciliation,
            Rules::default(),
            Publisher::new(MemoryBus, target.clone()),
            NoPurchaseOrderSystem,
            NoApprovals,
        )
    };
    let mut once = stage_processor();
    let response = runtime.block_on(processor.process(&event, &mut once));
    assert!(response.batch_item_failures.is_empty(), "the reconciliation stage must take the whole batch");
    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Elements(event.records.len() as u64));
    group.bench_function("reconciliation processor, 10 records, in-memory bus", |b| {
        b.iter_batched(
            stage_processor,
            |mut handler| runtime.block_on(processor.process(black_box(&event), &mut handler)),
            BatchSize::SmallInput,
        );
    });
    group.finish();

    let record = &event.records[0];
    let validator = consumer_validator();
    let delivery = decode(record, &validator).expect("valid");
    let mut group = c.benchmark_group("timestream");
    group.throughput(Throughput::Elements(1));
    group.bench_function("record of one status change", |b| {
        let received = bems_lambda::writer::received_at(&delivery);
        b.iter(|| bems_lambda::timestream::record(black_box(&delivery.event), received));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
