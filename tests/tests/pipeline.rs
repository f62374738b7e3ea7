//! All four stage processors on LocalStack, run by the local event-source
//! runner, and the status writer on the status-change queue writing to
//! PostgreSQL (or, in the tests of Timestream's behaviours, to moto's
//! Timestream): submitted invoices come out posted, every status change is
//! stored exactly once (read back with SQL, or from moto's stored records,
//! not by counting calls), the rollups equal the rows, and nothing is left
//! behind in any queue or DLQ.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bems_batch::BatchProcessor;
use bems_batch::function::ProcessorFunction;
use bems_core::envelope::PutEventsEntry;
use bems_core::fields::InvoiceId;
use bems_core::publish::{BusError, EntryResult, EventBus, Publisher};
use bems_core::retry::RetryPolicy;
use bems_core::{Stage, Status};
use bems_e2e::postgres::{cell_store, postgres_url, rollup_mismatches, wait_for_count};
use bems_e2e::{
    Cell, Merged, Outage, Throttle, dimension, environment, event, idempotency_table, measure, moto_config,
    stored_rows, timestream_table,
};
use bems_lambda::idempotency::DynamoDbStore;
use bems_lambda::postgres::PostgresSink;
use bems_lambda::processor::StageProcessor;
use bems_lambda::sqs::{EventSource, RunnerOptions, SqsDeadLetter};
use bems_lambda::stages::{Approvals, PurchaseOrders, Rules};
use bems_lambda::writer::{SinkError, StatusSink, StatusWriter, Written};
use bems_ops::provision::ProvisionOptions;
use rust_decimal::Decimal;
use tokio::sync::{Notify, watch};

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

impl<S: StatusSink + Sync> StatusSink for Throttled<S> {
    type Record = S::Record;

    async fn write(&self, records: &[S::Record]) -> Result<Vec<Written>, SinkError> {
        if self.throttle() {
            return Err(SinkError::Transient("injected: ThrottlingException".into()));
        }
        self.inner.write(records).await
    }
}

/// Lets the first successful call through and then never returns, so the
/// runner is stuck after its batch's effect and before its deletes: where a
/// crash hurts most. The test then kills the runner.
#[derive(Clone)]
struct StallAfterSuccess<T> {
    inner: T,
    stalled: Option<Arc<Notify>>,
}

impl<B: EventBus + Sync> EventBus for StallAfterSuccess<B> {
    async fn put_events(&self, entries: &[PutEventsEntry]) -> Result<Vec<EntryResult>, BusError> {
        let result = self.inner.put_events(entries).await;
        if let (Some(stalled), Ok(results)) = (&self.stalled, &result)
            && results.iter().any(|r| matches!(r, EntryResult::Accepted(_)))
        {
            stalled.notify_one();
            std::future::pending::<()>().await;
        }
        result
    }
}

/// What a pipeline run is asked to survive.
#[derive(Debug, Clone, Copy)]
struct Plan {
    invoices: usize,
    partitions: u32,
    /// Every n-th call of each processor's bus client and of the writer's
    /// store fails with throttling (0: none), in our code, below the SDK's
    /// retries.
    throttle_every: usize,
    /// The share (0–1) of all requests to LocalStack and moto, from every
    /// client of the functions, the forwarder and the producer, answered
    /// with the service's throttling error by a [`Throttle`] proxy.
    throttle_share: f64,
    /// How many times each stage processor's runner is killed between
    /// publishing a batch's next events and deleting the batch.
    kills: usize,
    /// Whether the processors claim their next events in a DynamoDB
    /// idempotency table (in moto).
    idempotency: bool,
    /// Where the writer stores: moto's Timestream (true) or PostgreSQL.
    timestream: bool,
    /// Whether LocalStack goes dark for a while under load: the producer,
    /// the processors and the writer reach it through an [`Outage`] proxy
    /// that cuts every connection and refuses new ones for eight seconds.
    outage: bool,
    /// Whether, once everything is stored, every submission is replayed
    /// from the archive after the FIFO deduplication window: its
    /// EventBridge event, with a `replay-name`, delivered again to the
    /// ingestion queue and the status queue.
    replay: bool,
}

impl Plan {
    /// 40 invoices over 4 partitions, no faults.
    const SMALL: Plan = Plan {
        invoices: 40,
        partitions: 4,
        throttle_every: 0,
        throttle_share: 0.0,
        kills: 0,
        idempotency: false,
        timestream: false,
        outage: false,
        replay: false,
    };
}

const OUTAGE: Duration = Duration::from_secs(8);

/// 5,000 invoices through all four stages into PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_invoices_flow_through_all_four_stages_once_each() {
    let Some(env) = environment().await else { return };
    // BEMS_PIPELINE_INVOICES makes a quicker local run; CI runs the 5,000.
    let invoices = std::env::var("BEMS_PIPELINE_INVOICES").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let done = pipeline(&env, Plan { invoices, partitions: 8, ..Plan::SMALL }).await;
    assert_eq!(done.injected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_every_third_call_to_the_bus_and_the_store_loses_nothing() {
    let Some(env) = environment().await else { return };
    let done = pipeline(&env, Plan { throttle_every: 3, ..Plan::SMALL }).await;
    assert!(done.injected > 10, "the faults really happened: {}", done.injected);
}

/// The Timestream writer through the whole pipeline: 40 invoices into
/// moto's Timestream, read back with Timestream's row rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_flow_into_timestream_once_each() {
    let Some(env) = environment().await else { return };
    let done = pipeline(&env, Plan { timestream: true, ..Plan::SMALL }).await;
    assert_eq!(done.merged.rewritten, 0);
}

/// Throttling where AWS does it, in front of the services: a third of all
/// requests from the functions, the forwarder and the producer to SQS, SNS,
/// EventBridge, Timestream and DynamoDB are refused with the service's
/// throttling error. Most are retried by the SDK; the calls that exhaust
/// its retries reach our code as transient errors. (Timestream, behind the
/// proxy in front of moto: PostgreSQL has no throttling to answer with.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_a_third_of_the_requests_to_every_service_loses_nothing_and_doubles_nothing() {
    let Some(env) = environment().await else { return };
    let plan = Plan { invoices: 100, throttle_share: 0.33, idempotency: true, timestream: true, ..Plan::SMALL };
    let done = pipeline(&env, plan).await;
    eprintln!("throttled requests by service: {:?}", done.throttled);
    let services: BTreeSet<&str> = done.throttled.keys().map(String::as_str).collect();
    for service in ["dynamodb", "events", "sns", "sqs", "timestream"] {
        assert!(services.contains(service), "{service} was never throttled: {:?}", done.throttled);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_each_stage_processor_mid_batch_loses_nothing_and_doubles_nothing() {
    // With the idempotency table, as a deployment that wants exactly-once
    // beyond the FIFO window runs.
    let Some(env) = environment().await else { return };
    let done = pipeline(&env, Plan { invoices: 200, kills: 2, idempotency: true, ..Plan::SMALL }).await;
    assert_eq!(done.kills, 8, "every processor was killed twice after publishing and before deleting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localstack_going_dark_under_load_loses_nothing_and_doubles_nothing() {
    // The producer keeps submitting through the outage, resubmitting what
    // the bus did not accept, as a producer using the SDK does.
    let Some(env) = environment().await else { return };
    let done = pipeline(&env, Plan { invoices: 200, outage: true, ..Plan::SMALL }).await;
    assert!(done.cut > 0, "the outage really cut connections");
}

/// An archive replay of every processed submission, delivered as it
/// would be after the FIFO deduplication window (fresh deduplication ids,
/// a `replay-name`), to the ingestion queue and the status queue: no new
/// row, no dead letter, every queue idle, and the writer's second write of
/// each submission (received later: a higher version) replaces the row
/// with the same content, kept as a second version.
///
/// What keeps the rest of the lifecycle single here: the ingestion stage's
/// next event has the id it had the first time (derived from the
/// submission's), so the stage topic's deduplication drops it. With the
/// store, as here, it is also byte for byte the first one, which is what
/// keeps a replay single once the topic's window has passed too; that part
/// is shown at the processor level in `tests/idempotency.rs` (with a
/// control), as the emulator's five-minute window cannot be waited out here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_processed_events_after_the_deduplication_window_doubles_nothing() {
    let Some(env) = environment().await else { return };
    let done = pipeline(&env, Plan { invoices: 100, idempotency: true, replay: true, ..Plan::SMALL }).await;
    assert_eq!(done.replayed, 200, "every submission replayed into both queues");
    assert_eq!(done.merged.rewritten, 100, "the writer wrote each replayed submission again, as it was");
    assert_eq!(done.merged.changed, 0);
}

/// How long `invoice_count` invoices may take to be stored: generous for
/// a loaded two-core machine, a failure rather than a hang beyond it. The
/// three runs here share one LocalStack two at a time: a 40-invoice run
/// beside the 5,000-invoice one once missed 64 s (one message group of the
/// status queue still retrying its throttled writes), hence the floor of
/// three minutes. A passing run returns as soon as every record is there.
fn patience(invoice_count: usize) -> Duration {
    Duration::from_secs(180)
        + Duration::from_millis(100).saturating_mul(u32::try_from(invoice_count).unwrap_or(u32::MAX))
}

/// One stored status change.
#[derive(Debug)]
struct Change {
    invoice: String,
    status: String,
    /// Record time (the event's `occurredAt`), ms.
    time: i64,
    /// Record version (EventBridge's receipt time), ms.
    version: i64,
    stage_latency: Option<i64>,
    end_to_end: Option<i64>,
}

/// What a run did.
struct Done {
    /// Calls failed on purpose.
    injected: usize,
    /// Runners killed.
    kills: usize,
    /// Connections cut or refused by the outage.
    cut: usize,
    /// Requests answered with a throttling error by the proxies, by service.
    throttled: BTreeMap<String, usize>,
    /// Replayed deliveries.
    replayed: usize,
    /// Writes merged into rows: moto's writes, or PostgreSQL's versions
    /// beyond the first.
    merged: Merged,
}

/// Delivers every submission again as an archive replay does once the
/// FIFO deduplication window has passed: the EventBridge event, now with a
/// `replay-name`, to the ingestion queue and the status queue, each in the
/// message group the routing gives it and with a fresh deduplication id.
/// Returns when those queues are idle again (the replays handled).
async fn replay_submissions(cell: &Cell, events: &[bems_core::InvoiceEvent]) -> usize {
    use bems_core::envelope::{DETAIL_TYPE, EVENT_SOURCE, EventBridgeEvent};
    use bems_core::partition::{Partition, message_group_id};
    let queues = [
        cell.queue_url(&cell.spec.queue_name(Stage::Ingestion)).await,
        cell.queue_url(&cell.spec.status_queue_name()).await,
    ];
    let publisher = cell.publisher();
    let mut sent = 0;
    for event in events {
        // As the bus got it: placed in the cell by the publisher.
        let mut event = event.clone();
        publisher.place(&mut event);
        let replay = EventBridgeEvent {
            version: "0".into(),
            id: uuid::Uuid::new_v4().to_string(),
            detail_type: DETAIL_TYPE.into(),
            source: EVENT_SOURCE.into(),
            account: cell.env.account.clone(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            region: cell.env.region.clone(),
            resources: Vec::new(),
            replay_name: Some("e2e-replay".into()),
            detail: &event,
        };
        let group =
            message_group_id(Stage::Ingestion, Partition::for_invoice(&event.invoice_id, cell.spec.partitions()));
        for queue in &queues {
            cell.clients
                .sqs
                .send_message()
                .queue_url(queue)
                .message_body(serde_json::to_string(&replay).expect("an envelope serialises"))
                .message_group_id(&group)
                .message_deduplication_id(uuid::Uuid::new_v4().to_string())
                .send()
                .await
                .expect("replay into the queue");
            sent += 1;
        }
    }
    // Until they are all handled.
    let mut all = vec![queues[1].clone()];
    for stage in Stage::ALL {
        all.push(cell.queue_url(&cell.spec.queue_name(stage)).await);
    }
    until_idle(cell, &all).await;
    sent
}

/// Waits (up to two minutes) until nothing is visible or in flight in any
/// of `queues` for two looks in a row: every message handled and deleted,
/// including one whose delete failed and that comes back after its
/// visibility timeout to be handled again.
async fn until_idle(cell: &Cell, queues: &[String]) {
    let started = std::time::Instant::now();
    let mut quiet = 0;
    while quiet < 2 && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut busy = 0;
        for queue in queues {
            let attributes = cell
                .clients
                .sqs
                .get_queue_attributes()
                .queue_url(queue)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .expect("queue attributes");
            busy += attributes
                .attributes()
                .into_iter()
                .flatten()
                .filter_map(|(_, v)| v.parse::<usize>().ok())
                .sum::<usize>();
        }
        quiet = if busy == 0 { quiet + 1 } else { 0 };
    }
}

/// PostgreSQL's versions beyond each row's first, as [`Merged`] counts
/// moto's writes: the same content again (`rewritten`) or other content
/// (`changed`).
async fn versions_merged(pg: &bems_store::postgres::Postgres) -> Merged {
    let client = pg.connect().await.expect("connect");
    let content = "status, previous_status, event_id, amount, currency, submitted_at, previous_occurred_at, \
                   issue_date, due_date, net_days, vendor_id, vendor_country, reason, stage_latency_ms, \
                   end_to_end_latency_ms, producer, cell_id, region, partition";
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE same), count(*) FILTER (WHERE NOT same) FROM ( \
                   SELECT ({content}) IS NOT DISTINCT FROM lag(({content})) OVER w AS same, row_number() OVER w AS n \
                   FROM {}.status_change_versions WINDOW w AS (PARTITION BY invoice_id, stage, occurred_at ORDER BY version) \
                 ) v WHERE n > 1",
                pg.schema()
            ),
            &[],
        )
        .await
        .expect("versions");
    let n = |i: usize| usize::try_from(row.get::<_, i64>(i)).unwrap_or(usize::MAX);
    Merged { repeated: 0, rewritten: n(0), changed: n(1) }
}

/// Runs `plan.invoices` invoices through the four processors and the
/// writer, with the faults the plan asks for, and checks that every invoice
/// has exactly one record per status, in lifecycle order, and that no queue
/// or DLQ holds anything.
async fn pipeline(env: &bems_e2e::Env, plan: Plan) -> Done {
    let injected = Arc::new(AtomicUsize::new(0));
    let kills = Arc::new(AtomicUsize::new(0));
    let mut cell = Cell::create(
        env,
        plan.partitions,
        ProvisionOptions { visibility_timeout_secs: 5, ..ProvisionOptions::default() },
    )
    .await;
    let events: Vec<_> = (0..plan.invoices)
        .map(|i| event(&format!("INV-FLOW-{i:05}"), Stage::Ingestion, Status::Submitted, None, 0))
        .collect();
    let orders = Orders(events.iter().map(|e| (e.invoice_id.to_string(), e.amount.value())).collect());

    let moto = bems_e2e::moto_url();
    let store_table = match (&moto, plan.idempotency) {
        (Some(url), true) => Some(idempotency_table(url, &cell.spec.cell_id().to_string()).await),
        _ => None,
    };
    let outage = if plan.outage { Some(Outage::start(&env.localstack).await) } else { None };
    // One throttling proxy in front of each emulator.
    let throttles = match &moto {
        Some(moto) if plan.throttle_share > 0.0 => Some((
            Throttle::start(&env.localstack, plan.throttle_share).await,
            Throttle::start(moto, plan.throttle_share).await,
        )),
        _ => None,
    };
    // The clients of the functions, the forwarder and the producer: through
    // the fault proxy when there is one.
    let through = match (&outage, &throttles) {
        (Some(o), _) => o.config(&env.config),
        (None, Some((localstack, _))) => localstack.config(&env.config),
        (None, None) => env.config.clone(),
    };
    if throttles.is_some() {
        cell.restart_forwarder(&through);
    }
    // The store and the table are made directly; the functions reach moto
    // through its throttling proxy.
    let moto_through = match (&moto, &throttles) {
        (Some(url), Some((_, proxy))) => Some(proxy.config(&moto_config(url).await)),
        _ => None,
    };
    let store = store_table.map(|(client, table)| {
        let client = moto_through.as_ref().map_or(client, aws_sdk_dynamodb::Client::new);
        DynamoDbStore::new(client, table, Duration::from_secs(3600))
    });
    let (sqs, bus) = (aws_sdk_sqs::Client::new(&through), aws_sdk_eventbridge::Client::new(&through));
    let (stop, stopped) = watch::channel(false);
    for stage in Stage::ALL {
        let queue = cell.queue_url(&cell.spec.queue_name(stage)).await;
        let dlq = cell.queue_url(&cell.spec.dlq_name(stage)).await;
        // A fresh function per (re)start, like a new Lambda instance.
        let function = {
            let (sqs, events, target, orders, injected) =
                (sqs.clone(), bus.clone(), cell.target(), orders.clone(), injected.clone());
            let (max_receive_count, store) = (cell.options.max_receive_count, store.clone());
            move |stalled: Option<Arc<Notify>>| ProcessorFunction {
                processor: BatchProcessor::new()
                    .with_dead_letter(SqsDeadLetter::new(sqs.clone(), dlq.clone()))
                    .with_max_receive_count(max_receive_count),
                handler: StageProcessor::new(
                    stage,
                    Rules::default(),
                    Publisher::new(
                        StallAfterSuccess {
                            inner: Throttled::new(events.clone(), plan.throttle_every, injected.clone()),
                            stalled,
                        },
                        target.clone(),
                    )
                    .with_retry(RetryPolicy { base: Duration::from_millis(20), ..RetryPolicy::default() }),
                    orders.clone(),
                    AllApproved,
                )
                .with_store(store.clone()),
            }
        };
        let mut stopped = stopped.clone();
        let source = EventSource::connect(sqs.clone(), queue, RunnerOptions::default()).await.expect("queue");
        let kills = kills.clone();
        tokio::spawn(async move {
            for _ in 0..plan.kills {
                let stalled = Arc::new(Notify::new());
                let (source, function) = (source.clone(), function(Some(stalled.clone())));
                let runner = tokio::spawn(async move {
                    source.run(function, Duration::from_millis(100), std::future::pending()).await;
                });
                stalled.notified().await;
                runner.abort();
                let _ = runner.await;
                kills.fetch_add(1, Ordering::SeqCst);
            }
            source
                .run(function(None), Duration::from_millis(100), async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
    }

    // The status writer on the status-change queue: into PostgreSQL, or
    // into moto's Timestream.
    let table = match (&moto, plan.timestream) {
        (Some(url), true) => Some(timestream_table(url, &cell.spec).await),
        _ => None,
    };
    let pg = match plan.timestream {
        false => match postgres_url() {
            Some(url) => Some(cell_store(&url, &cell.spec).await),
            None => None,
        },
        true => None,
    };
    let status_dlq = cell.queue_url(&cell.spec.status_dlq_name()).await;
    let status_queue = cell.queue_url(&cell.spec.status_queue_name()).await;
    let dead_letter = SqsDeadLetter::new(sqs.clone(), status_dlq);
    let source = EventSource::connect(sqs.clone(), status_queue, RunnerOptions::default()).await.expect("queue");
    let until = {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    if let Some(table) = &table {
        let mut table = table.clone();
        if let Some(config) = &moto_through {
            table.client = aws_sdk_timestreamwrite::Client::new(config);
        }
        let sink = Throttled::new(table, plan.throttle_every, injected.clone());
        let writer = StatusWriter::new(sink, dead_letter).in_cell(cell.spec.partitions());
        tokio::spawn(async move { source.run(writer, Duration::from_millis(100), until).await });
    } else if let Some(pg) = &pg {
        let sink = Throttled::new(
            PostgresSink::new(bems_store::postgres::write::Writer::new(pg.clone())),
            plan.throttle_every,
            injected.clone(),
        );
        let writer = StatusWriter::new(sink, dead_letter).in_cell(cell.spec.partitions());
        tokio::spawn(async move { source.run(writer, Duration::from_millis(100), until).await });
    }
    let stored = table.is_some() || pg.is_some();
    let rows_sql = pg.as_ref().map(|pg| format!("SELECT * FROM {}.status_changes", pg.schema()));

    let invoice_count = plan.invoices;
    // The producer resubmits what the bus did not accept, as a producer
    // using the SDK does. With an outage: submissions in chunks over about
    // twelve seconds; two seconds in, LocalStack goes dark for eight.
    let publisher = Publisher::new(bus.clone(), cell.target())
        .with_retry(RetryPolicy { deadline: Duration::from_secs(2), ..RetryPolicy::default() });
    let chunk = if outage.is_some() { events.len().div_ceil(20) } else { events.len() };
    let produce = async {
        for chunk in events.chunks(chunk.max(1)) {
            let mut pending = chunk.to_vec();
            while !pending.is_empty() {
                let outcomes = publisher.publish(pending.clone()).await;
                pending =
                    pending.into_iter().zip(&outcomes).filter(|(_, o)| !o.is_accepted()).map(|(e, _)| e).collect();
                if !pending.is_empty() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            if outage.is_some() {
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
        }
    };
    let dark = async {
        if let Some(outage) = &outage {
            tokio::time::sleep(Duration::from_secs(2)).await;
            outage.set_down(true);
            tokio::time::sleep(OUTAGE).await;
            outage.set_down(false);
        }
    };
    tokio::join!(dark, produce);
    let replayed = if plan.replay {
        // Once the first pass is stored, the replays, then until every
        // queue they reach is idle.
        if let (Some(url), Some(table)) = (&moto, &table) {
            stored_rows(url, table, invoice_count * 5, patience(invoice_count)).await;
        }
        if let (Some(pg), Some(sql)) = (&pg, &rows_sql) {
            wait_for_count(pg, sql, i64::try_from(invoice_count * 5).unwrap_or(i64::MAX), patience(invoice_count))
                .await;
        }
        replay_submissions(&cell, &events).await
    } else {
        0
    };
    // PostgreSQL's rows, moto's records, or the status queue's messages.
    let mut merged = Merged::default();
    let changes: Vec<Change> = if let (Some(pg), Some(sql)) = (&pg, &rows_sql) {
        let expected = i64::try_from(invoice_count * 5).unwrap_or(i64::MAX);
        let n = wait_for_count(pg, sql, expected, patience(invoice_count)).await;
        eprintln!("{n} rows in PostgreSQL");
        merged = versions_merged(pg).await;
        eprintln!("versions beyond the first: {merged:?}");
        assert_eq!(merged.changed, 0, "status changes stored with two contents");
        if !plan.replay {
            assert_eq!(merged.rewritten, 0, "status changes through the bus twice without a replay");
        }
        let client = pg.connect().await.expect("connect");
        client
            .query(
                &format!(
                    "SELECT invoice_id, status, occurred_at, version, stage_latency_ms, end_to_end_latency_ms \
                     FROM {}.status_changes",
                    pg.schema()
                ),
                &[],
            )
            .await
            .expect("rows")
            .iter()
            .map(|r| Change {
                invoice: r.get(0),
                status: r.get(1),
                time: r.get::<_, chrono::DateTime<chrono::Utc>>(2).timestamp_millis(),
                version: r.get::<_, chrono::DateTime<chrono::Utc>>(3).timestamp_millis(),
                stage_latency: r.get(4),
                end_to_end: r.get(5),
            })
            .collect()
    } else {
        match (&moto, &table) {
            (Some(url), Some(table)) => {
                let (rows, writes) = stored_rows(url, table, invoice_count * 5, patience(invoice_count)).await;
                merged = writes;
                // A status change written again as it was (its message
                // redelivered after the delete failed) is one row in
                // Timestream; one that went through the bus twice would have
                // a second version.
                eprintln!("{} rows; merged writes: {merged:?}", rows.len());
                assert_eq!(merged.changed, 0, "status changes stored with two contents");
                if !plan.replay {
                    assert_eq!(merged.rewritten, 0, "status changes through the bus twice without a replay");
                }
                rows
            }
            .iter()
            .map(|r| {
                let number = |v: &serde_json::Value| v.as_str().and_then(|t| t.parse().ok()).or(v.as_i64());
                Change {
                    invoice: dimension(r, "invoice_id"),
                    status: measure(r, "status"),
                    time: number(&r["Time"]).unwrap_or(-1),
                    version: number(&r["Version"]).unwrap_or(-1),
                    stage_latency: measure(r, "stage_latency_ms").parse().ok(),
                    end_to_end: measure(r, "end_to_end_latency_ms").parse().ok(),
                }
            })
            .collect(),
            _ => cell
                .drain(&cell.spec.status_queue_name(), invoice_count * 5, Duration::from_secs(60))
                .await
                .iter()
                .map(|c| {
                    let e: bems_core::InvoiceEvent =
                        serde_json::from_value(c["detail"].clone()).expect("an invoice event");
                    Change {
                        invoice: e.invoice_id.to_string(),
                        status: e.status.to_string(),
                        time: e.occurred_at.timestamp_millis(),
                        version: 0,
                        stage_latency: e.stage_latency().map(|d| d.num_milliseconds()),
                        end_to_end: e.end_to_end_latency().map(|d| d.num_milliseconds()),
                    }
                })
                .collect(),
        }
    };
    // The runners stop once every queue is idle: a record whose delete was
    // throttled after its effect was stored comes back and is deleted then.
    let mut all = Vec::new();
    for stage in Stage::ALL {
        all.push(cell.queue_url(&cell.spec.queue_name(stage)).await);
    }
    if stored {
        all.push(cell.queue_url(&cell.spec.status_queue_name()).await);
    }
    until_idle(&cell, &all).await;
    let _ = stop.send(true);

    // Exactly one record per invoice and status: the 5,000 submissions and
    // 5,000 x 4 status changes made by the stages, nothing twice.
    let lifecycle = ["submitted", "ingested", "reconciled", "authorized", "posted"];
    for status in lifecycle {
        let n = changes.iter().filter(|c| c.status == status).count();
        assert_eq!(n, invoice_count, "{status} records (moto holds {} in all)", changes.len());
    }
    assert_eq!(changes.len(), invoice_count * 5, "no other records");
    // Per invoice, in time order, the statuses follow the lifecycle, and
    // EventBridge received them in that order too (versions). Each record's
    // latencies are the differences of the invoice's own record times.
    let mut per_invoice: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
    for c in &changes {
        per_invoice.entry(&c.invoice).or_default().push(c);
    }
    assert_eq!(per_invoice.len(), invoice_count, "every invoice stored");
    for (invoice, mut records) in per_invoice {
        records.sort_by_key(|c| (c.time, c.version));
        let statuses: Vec<&str> = records.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(statuses, lifecycle, "{invoice}: order");
        // (A replayed row carries the replay's receipt time as its version.)
        assert!(
            plan.replay || records.windows(2).all(|w| w[0].version <= w[1].version),
            "{invoice}: versions out of order"
        );
        let submitted = records[0].time;
        assert_eq!((records[0].stage_latency, records[0].end_to_end), (None, Some(0)), "{invoice}: submission");
        for w in records.windows(2) {
            assert_eq!(w[1].stage_latency, Some(w[1].time - w[0].time), "{invoice} {}: stage latency", w[1].status);
            assert_eq!(w[1].end_to_end, Some(w[1].time - submitted), "{invoice} {}: end-to-end latency", w[1].status);
        }
    }
    if let Some(pg) = &pg {
        let mismatches = rollup_mismatches(pg).await;
        assert!(mismatches.is_empty(), "the rollups differ from the rows: {mismatches:#?}");
    }
    if stored {
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
    Done {
        injected: injected.load(Ordering::SeqCst),
        kills: kills.load(Ordering::SeqCst),
        cut: outage.map_or(0, |o| o.cut.load(Ordering::SeqCst)),
        replayed,
        merged,
        throttled: throttles
            .map(|(localstack, moto)| localstack.throttled().into_iter().chain(moto.throttled()).collect())
            .unwrap_or_default(),
    }
}
