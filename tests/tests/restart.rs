//! Killing the Timestream writer mid-batch and starting it again loses
//! nothing and writes nothing twice.
//!
//! "Twice" as Timestream counts it: a record with the same dimensions, time
//! and version as a stored one is a no-op there. moto keeps every write as
//! sent, so the test groups moto's records by that key and requires each
//! group to be one record, or copies identical in every measure (which
//! Timestream would store once).

use std::sync::Arc;
use std::time::Duration;

use bems_core::{Stage, Status};
use bems_e2e::{Cell, environment, event, stored_rows, timestream_table};
use bems_lambda::sqs::{EventSource, RunnerOptions, SqsDeadLetter};
use bems_lambda::writer::{SinkError, StatusSink, StatusWriter, Written};
use bems_ops::provision::ProvisionOptions;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_writer_mid_batch_and_restarting_it_loses_nothing_and_writes_nothing_twice() {
    let Some(env) = environment().await else { return };
    let Some(moto) = bems_e2e::moto_url() else {
        eprintln!("skipped: needs moto (BEMS_MOTO_URL) next to LocalStack");
        return;
    };
    let cell =
        Cell::create(&env, 4, ProvisionOptions { visibility_timeout_secs: 3, ..ProvisionOptions::default() }).await;
    let table = timestream_table(&moto, &cell.spec).await;
    const EVENTS: usize = 150;
    let events: Vec<_> =
        (0..EVENTS).map(|i| event(&format!("INV-KILL-{i:04}"), Stage::Ingestion, Status::Submitted, None, 0)).collect();
    assert!(cell.publisher().publish(events).await.iter().all(|o| o.is_accepted()));

    let queue = cell.queue_url(&cell.spec.status_queue_name()).await;
    let dlq = cell.queue_url(&cell.spec.status_dlq_name()).await;
    let written = Arc::new(Notify::new());
    let writer = || {
        StatusWriter::new(
            Announcing { inner: table.clone(), written: written.clone() },
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

    // Until every event is stored (or 90 s passed).
    stored_rows(&moto, &table, EVENTS, Duration::from_secs(90)).await;
    // Let redeliveries of killed batches come back and be written again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rows, merged) = stored_rows(&moto, &table, EVENTS, Duration::from_secs(1)).await;
    let _ = stop.send(());
    let _ = last.await;

    // Repeated writes must be identical records (checked while merging).
    assert_eq!(rows.len(), EVENTS, "every event stored once ({merged:?})");
    eprintln!("{EVENTS} events, {} repeated identical writes", merged.repeated);
    assert!(merged.repeated > 0, "the kills interrupted written-but-undeleted batches, so some writes repeat");
    assert_eq!((merged.rewritten, merged.changed), (0, 0), "no event was written with two versions");
    assert!(cell.drain(&cell.spec.status_queue_name(), 0, Duration::from_secs(1)).await.is_empty(), "queue left over");
    assert!(cell.drain(&cell.spec.status_dlq_name(), 0, Duration::from_secs(1)).await.is_empty(), "DLQ not empty");
}
