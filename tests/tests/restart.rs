//! Killing the status writer mid-batch (after its store committed, before
//! the messages were deleted from the queue) and starting it again loses
//! nothing and writes nothing twice: in PostgreSQL, and in Timestream.
//!
//! "Twice" as each store counts it. PostgreSQL: the redelivered batch is
//! answered `Duplicate` row by row, and the versions table holds one
//! version per row. Timestream: a record with the same dimensions, time
//! and version as a stored one is a no-op there; moto keeps every write
//! as sent, so the test groups moto's records by that key and requires
//! each group to be one record, or copies identical in every measure.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bems_core::{Stage, Status};
use bems_e2e::postgres::{cell_store, count, postgres_url, rollup_mismatches, wait_for_count};
use bems_e2e::{Cell, environment, event, stored_rows, timestream_table};
use bems_lambda::sqs::{EventSource, RunnerOptions, SqsDeadLetter};
use bems_lambda::writer::{SinkError, StatusSink, StatusWriter, Written};
use bems_ops::provision::ProvisionOptions;
use bems_store::StatusRow;
use bems_store::postgres::write::{RowOutcome, Writer};
use tokio::sync::Notify;

/// Announces each completed write and then lingers, so the test can kill
/// the writer at the worst moment: records stored, messages not yet deleted.
#[derive(Clone)]
struct Announcing<S> {
    inner: S,
    written: Arc<Notify>,
}

impl<S: StatusSink + Sync> StatusSink for Announcing<S> {
    type Record = S::Record;

    async fn write(&self, records: &[S::Record]) -> Result<Vec<Written>, SinkError> {
        let written = self.inner.write(records).await;
        self.written.notify_one();
        tokio::time::sleep(Duration::from_millis(500)).await;
        written
    }
}

/// The PostgreSQL sink, counting the rows it found already stored.
#[derive(Clone)]
struct CountingDuplicates {
    writer: Arc<Writer>,
    duplicates: Arc<AtomicUsize>,
}

impl StatusSink for CountingDuplicates {
    type Record = StatusRow;

    async fn write(&self, records: &[StatusRow]) -> Result<Vec<Written>, SinkError> {
        let outcomes = self.writer.write(records).await.map_err(|e| SinkError::Transient(e.to_string()))?;
        let again = outcomes.iter().filter(|o| **o == RowOutcome::Duplicate).count();
        self.duplicates.fetch_add(again, Ordering::SeqCst);
        Ok(outcomes.iter().map(bems_lambda::postgres::written).collect())
    }
}

const EVENTS: usize = 150;

/// Publishes the submissions, then runs `sink`'s writer three times, each
/// killed right after a batch was written, then once to the end, which
/// comes when `all_stored` returns.
async fn kill_three_times<S, F>(cell: &Cell, sink: S, all_stored: F)
where
    S: StatusSink + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = ()>,
{
    let events: Vec<_> =
        (0..EVENTS).map(|i| event(&format!("INV-KILL-{i:04}"), Stage::Ingestion, Status::Submitted, None, 0)).collect();
    assert!(cell.publisher().publish(events).await.iter().all(|o| o.is_accepted()));
    let queue = cell.queue_url(&cell.spec.status_queue_name()).await;
    let dlq = cell.queue_url(&cell.spec.status_dlq_name()).await;
    let written = Arc::new(Notify::new());
    let writer = || {
        StatusWriter::new(
            Announcing { inner: sink.clone(), written: written.clone() },
            SqsDeadLetter::new(cell.clients.sqs.clone(), dlq.clone()),
        )
    };
    let source =
        EventSource::connect(cell.clients.sqs.clone(), queue.clone(), RunnerOptions::default()).await.expect("queue");
    // Three kills, each right after a batch was written and before its
    // messages were deleted: the batch comes back and is written again.
    for _ in 0..3 {
        let (source, writer) = (source.clone(), writer());
        let task =
            tokio::spawn(async move { source.run(writer, Duration::from_millis(50), std::future::pending()).await });
        tokio::time::timeout(Duration::from_secs(20), written.notified()).await.expect("a batch was written");
        task.abort();
        let _ = task.await;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let writer = writer();
    let last = tokio::spawn(async move {
        source
            .run(writer, Duration::from_millis(50), async move {
                let _ = stopped.await;
            })
            .await;
    });
    all_stored.await;
    // Let redeliveries of killed batches come back and be written again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop.send(());
    let _ = last.await;
    assert!(cell.drain(&cell.spec.status_queue_name(), 0, Duration::from_secs(1)).await.is_empty(), "queue left over");
    assert!(cell.drain(&cell.spec.status_dlq_name(), 0, Duration::from_secs(1)).await.is_empty(), "DLQ not empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_postgres_writer_after_commit_and_before_the_delete_writes_nothing_twice() {
    let Some(env) = environment().await else { return };
    let Some(url) = postgres_url() else {
        eprintln!("skipped: needs PostgreSQL (BEMS_POSTGRES_URL)");
        return;
    };
    let cell =
        Cell::create(&env, 4, ProvisionOptions { visibility_timeout_secs: 3, ..ProvisionOptions::default() }).await;
    let pg = cell_store(&url, &cell.spec).await;
    let duplicates = Arc::new(AtomicUsize::new(0));
    let sink = CountingDuplicates { writer: Arc::new(Writer::new(pg.clone())), duplicates: duplicates.clone() };
    let rows = format!("SELECT 1 FROM {}.status_changes", pg.schema());
    let expected = i64::try_from(EVENTS).unwrap_or(i64::MAX);
    kill_three_times(&cell, sink, async {
        wait_for_count(&pg, &rows, expected, Duration::from_secs(90)).await;
    })
    .await;
    assert_eq!(count(&pg, &rows).await, expected, "every event stored once");
    let versions = format!("SELECT 1 FROM {}.status_change_versions", pg.schema());
    assert_eq!(count(&pg, &versions).await, expected, "one version each: no row written twice");
    let again = duplicates.load(Ordering::SeqCst);
    eprintln!("{EVENTS} events, {again} rows found already stored on redelivery");
    assert!(again > 0, "the kills interrupted committed-but-undeleted batches, so some rows came again");
    let mismatches = rollup_mismatches(&pg).await;
    assert!(mismatches.is_empty(), "the rollups differ from the rows: {mismatches:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_timestream_writer_mid_batch_and_restarting_it_writes_nothing_twice() {
    let Some(env) = environment().await else { return };
    let Some(moto) = bems_e2e::moto_url() else {
        eprintln!("skipped: needs moto (BEMS_MOTO_URL) next to LocalStack");
        return;
    };
    let cell =
        Cell::create(&env, 4, ProvisionOptions { visibility_timeout_secs: 3, ..ProvisionOptions::default() }).await;
    let table = timestream_table(&moto, &cell.spec).await;
    kill_three_times(&cell, table.clone(), async {
        stored_rows(&moto, &table, EVENTS, Duration::from_secs(90)).await;
    })
    .await;
    let (rows, merged) = stored_rows(&moto, &table, EVENTS, Duration::from_secs(1)).await;
    // Repeated writes must be identical records (checked while merging).
    assert_eq!(rows.len(), EVENTS, "every event stored once ({merged:?})");
    eprintln!("{EVENTS} events, {} repeated identical writes", merged.repeated);
    assert!(merged.repeated > 0, "the kills interrupted written-but-undeleted batches, so some writes repeat");
    assert_eq!((merged.rewritten, merged.changed), (0, 0), "no event was written with two versions");
}
