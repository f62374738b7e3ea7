//! All four stage processors on LocalStack, run by the local event-source
//! runner, and the Timestream writer on the status-change queue writing to
//! moto: submitted invoices come out posted, every status change is stored
//! exactly once (read back from moto's stored records, not by counting
//! calls), and nothing is left behind in any queue or DLQ.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bems_cli::provision::ProvisionOptions;
use bems_core::envelope::PutEventsEntry;
use bems_core::fields::InvoiceId;
use bems_core::publish::{BusError, EntryResult, EventBus, Publisher, RetryPolicy};
use bems_core::{Stage, Status};
use bems_e2e::{Cell, dimension, environment, event, measure, stored_records, timestream_table};
use bems_lambda::batch::BatchProcessor;
use bems_lambda::processor::StageProcessor;
use bems_lambda::sqs::{ProcessorFunction, RunnerOptions, SqsDeadLetter, run};
use bems_lambda::stages::{Approvals, PurchaseOrders, Rules};
use bems_lambda::timestream::{Record, RecordSink, SinkError, TimestreamWriter, Written};
use rust_decimal::Decimal;
use tokio::sync::watch;

/// Every invoice has an order for exactly its amount.
#[derive(Clone)]
struct Orders(HashMap<String, Decimal>);

impl PurchaseOrders for Orders {
    fn expected_amount(&self, invoice: &bems_core::InvoiceEvent) -> Option<Decimal> {
        self.0.get(invoice.invoice_id.as_str()).copied()
    }
}

/// Everything above the automatic limit is approved.
#[derive(Clone)]
struct AllApproved;

impl Approvals for AllApproved {
    fn approved(&self, _: &InvoiceId) -> bool {
        true
    }
}

/// Fails every `every`-th call with a transient error (throttling), and
/// counts how many it failed.
#[derive(Clone)]
struct Throttled<T> {
    inner: T,
    every: usize,
    calls: Arc<AtomicUsize>,
    injected: Arc<AtomicUsize>,
}

impl<T> Throttled<T> {
    fn new(inner: T, every: usize, injected: Arc<AtomicUsize>) -> Throttled<T> {
        Throttled { inner, every, calls: Arc::new(AtomicUsize::new(0)), injected }
    }

    /// Whether this call is one to fail.
    fn throttle(&self) -> bool {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let hit = self.every > 0 && n.is_multiple_of(self.every);
        if hit {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
}

impl<B: EventBus + Sync> EventBus for Throttled<B> {
    async fn put_events(&self, entries: &[PutEventsEntry]) -> Result<Vec<EntryResult>, BusError> {
        if self.throttle() {
            return Err(BusError::Transient("injected: ThrottlingException".into()));
        }
        self.inner.put_events(entries).await
    }
}

impl<S: RecordSink + Sync> RecordSink for Throttled<S> {
    async fn write(&self, records: &[Record]) -> Result<Vec<Written>, SinkError> {
        if self.throttle() {
            return Err(SinkError::Transient("injected: ThrottlingException".into()));
        }
        self.inner.write(records).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_flow_through_all_four_stages_once_each() {
    let Some(env) = environment().await else { return };
    let injected = pipeline(&env, 100, 0).await;
    assert_eq!(injected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_every_third_call_to_the_bus_and_the_store_loses_nothing() {
    let Some(env) = environment().await else { return };
    let injected = pipeline(&env, 40, 3).await;
    assert!(injected > 10, "the faults really happened: {injected}");
}

/// Runs `invoice_count` invoices through the four processors and the
/// writer, with every `throttle_every`-th call of each processor's bus client
/// and of the writer's store failing (0: none), and checks that nothing is
/// lost or doubled. Returns how many calls failed.
async fn pipeline(env: &bems_e2e::Env, invoice_count: usize, throttle_every: usize) -> usize {
    let injected = Arc::new(AtomicUsize::new(0));
    let cell =
        Cell::create(env, 4, ProvisionOptions { visibility_timeout_secs: 5, ..ProvisionOptions::default() }).await;
    let events: Vec<_> = (0..invoice_count)
        .map(|i| event(&format!("INV-FLOW-{i:04}"), Stage::Ingestion, Status::Submitted, None, 0))
        .collect();
    let orders = Orders(events.iter().map(|e| (e.invoice_id.to_string(), e.amount.value())).collect());

    let (stop, stopped) = watch::channel(false);
    for stage in Stage::ALL {
        let queue = cell.queue_url(&cell.spec.queue_name(stage)).await;
        let dlq = cell.queue_url(&cell.spec.dlq_name(stage)).await;
        let function = ProcessorFunction {
            processor: BatchProcessor::new()
                .with_dead_letter(SqsDeadLetter::new(cell.clients.sqs.clone(), dlq))
                .with_max_receive_count(cell.options.max_receive_count),
            handler: StageProcessor::new(
                stage,
                Rules::default(),
                Publisher::new(
                    Throttled::new(cell.clients.events.clone(), throttle_every, injected.clone()),
                    cell.target(),
                )
                .with_retry(RetryPolicy { base: Duration::from_millis(20), ..RetryPolicy::default() }),
                orders.clone(),
                AllApproved,
            ),
        };
        let mut stopped = stopped.clone();
        tokio::spawn(run(
            cell.clients.sqs.clone(),
            queue,
            RunnerOptions { batch_size: 10, wait_seconds: 1 },
            function,
            Duration::from_millis(100),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
    }

    // The Timestream writer on the status-change queue, writing to moto.
    let moto = std::env::var("BEMS_MOTO_URL").ok().filter(|_| env.localstack.is_some());
    let table = match &moto {
        Some(url) => Some(timestream_table(url, &cell.spec.cell_id().to_string()).await),
        None => None,
    };
    if let Some(table) = &table {
        let status_dlq = cell.queue_url(&cell.spec.status_dlq_name()).await;
        let sink = Throttled::new(table.clone(), throttle_every, injected.clone());
        let writer = TimestreamWriter::new(sink, SqsDeadLetter::new(cell.clients.sqs.clone(), status_dlq));
        let mut stopped = stopped.clone();
        tokio::spawn(run(
            cell.clients.sqs.clone(),
            cell.queue_url(&cell.spec.status_queue_name()).await,
            RunnerOptions { batch_size: 10, wait_seconds: 1 },
            writer,
            Duration::from_millis(100),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
    }

    let outcomes = cell.publisher().publish(events.clone()).await;
    assert!(outcomes.iter().all(|o| o.is_accepted()), "{:?}", outcomes.iter().find(|o| !o.is_accepted()));
    let changes: Vec<(String, String)> = match (&moto, &table) {
        (Some(url), Some(table)) => stored_records(url, table, invoice_count * 5, Duration::from_secs(90))
            .await
            .iter()
            .map(|r| (dimension(r, "invoice_id"), measure(r, "status")))
            .collect(),
        _ => cell
            .drain(&cell.spec.status_queue_name(), invoice_count * 5, Duration::from_secs(60))
            .await
            .iter()
            .map(|c| {
                (
                    c["detail"]["invoiceId"].as_str().unwrap_or_default().to_owned(),
                    c["detail"]["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
    };
    let _ = stop.send(true);

    let mut per_invoice: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (invoice, status) in &changes {
        per_invoice.entry(invoice.clone()).or_default().push(status.clone());
    }
    assert_eq!(per_invoice.len(), invoice_count, "every invoice reached the status queue");
    let want: BTreeSet<&str> = ["submitted", "ingested", "reconciled", "authorized", "posted"].into();
    for (invoice, statuses) in &per_invoice {
        assert_eq!(statuses.len(), 5, "{invoice}: {statuses:?}");
        assert_eq!(statuses.iter().map(String::as_str).collect::<BTreeSet<_>>(), want, "{invoice}: once each");
    }
    assert_eq!(changes.len(), invoice_count * 5, "no duplicates");
    if table.is_some() {
        assert!(
            cell.drain(&cell.spec.status_queue_name(), 0, Duration::from_secs(1)).await.is_empty(),
            "status queue left over"
        );
        assert!(
            cell.drain(&cell.spec.status_dlq_name(), 0, Duration::from_secs(1)).await.is_empty(),
            "status DLQ not empty"
        );
    }
    for stage in Stage::ALL {
        assert!(
            cell.drain(&cell.spec.queue_name(stage), 0, Duration::from_secs(1)).await.is_empty(),
            "{stage} queue left over"
        );
        assert!(
            cell.drain(&cell.spec.dlq_name(stage), 0, Duration::from_secs(1)).await.is_empty(),
            "{stage} DLQ not empty"
        );
    }
    injected.load(Ordering::SeqCst)
}
