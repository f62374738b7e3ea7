//! The PostgreSQL writer on a cell's status queue, against a server of the
//! test's own that it crashes, stops and restarts:
//!
//! - crashed mid-run (`pg_ctl stop -m immediate`) and restarted: nothing
//!   lost, nothing doubled, no half-written batch;
//! - an outage shorter than (maxReceiveCount − 1) × the visibility timeout
//!   dead-letters nothing;
//! - a longer one dead-letters with the reason "store unavailable", and
//!   `bems redrive` restores every row.
//!
//! After each, the rollups equal the rows.

use std::time::{Duration, Instant};

use bems_core::{Stage, Status};
use bems_e2e::postgres::{PrivateServer, cell_store, count, rollup_mismatches, wait_for_count};
use bems_e2e::{Cell, environment, event};
use bems_lambda::postgres::PostgresSink;
use bems_lambda::sqs::{EventSource, RunnerOptions, SqsDeadLetter};
use bems_lambda::writer::StatusWriter;
use bems_ops::provision::ProvisionOptions;
use bems_store::postgres::Postgres;
use tokio::sync::watch;

/// A cell whose status queue has `visibility` seconds and `receives`
/// receives, its store on a private server, and `n` submissions published
/// (each reaches the status queue; no processor runs).
async fn setup(
    env: &bems_e2e::Env,
    visibility: u32,
    receives: u32,
    n: usize,
    name: &str,
) -> (Cell, PrivateServer, Postgres) {
    let cell =
        Cell::create(env, 4, ProvisionOptions { visibility_timeout_secs: visibility, max_receive_count: receives })
            .await;
    let server = PrivateServer::start();
    let pg = cell_store(&server.url(), &cell.spec).await;
    let events: Vec<_> =
        (0..n).map(|i| event(&format!("INV-{name}-{i:04}"), Stage::Ingestion, Status::Submitted, None, 0)).collect();
    for chunk in events.chunks(100) {
        let outcomes = cell.publisher().publish(chunk.to_vec()).await;
        assert!(outcomes.iter().all(|o| o.is_accepted()), "published");
    }
    (cell, server, pg)
}

/// Runs the PostgreSQL writer on the cell's status queue until `stop`.
async fn start_writer(cell: &Cell, pg: &Postgres, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    let queue = cell.queue_url(&cell.spec.status_queue_name()).await;
    let dlq = cell.queue_url(&cell.spec.status_dlq_name()).await;
    let writer = StatusWriter::new(
        PostgresSink::new(bems_store::postgres::write::Writer::new(pg.clone())),
        SqsDeadLetter::new(cell.clients.sqs.clone(), dlq),
    )
    .in_cell(cell.spec.partitions())
    .with_max_receive_count(cell.options.max_receive_count);
    let source = EventSource::connect(cell.clients.sqs.clone(), queue, RunnerOptions::default()).await.expect("queue");
    let mut stop = stop;
    tokio::spawn(async move {
        source
            .run(writer, Duration::from_millis(50), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    })
}

/// Messages in a queue: visible and in flight.
async fn depth(cell: &Cell, name: &str) -> (usize, usize) {
    let q = bems_ops::stuck::queue_depth(&cell.clients.sqs, name).await.expect("queue depth");
    (usize::try_from(q.waiting).unwrap_or(0), usize::try_from(q.in_flight).unwrap_or(0))
}

/// Every check after a fault: `n` rows, one version each, one invoice row
/// each, nothing in the default partition, the rollups equal to the rows,
/// and the status queue and its DLQ empty.
async fn assert_whole(cell: &Cell, pg: &Postgres, n: usize) {
    let t = |name: &str| format!("SELECT 1 FROM {}.{name}", pg.schema());
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    assert_eq!(count(pg, &t("status_changes")).await, n, "rows");
    assert_eq!(count(pg, &t("status_change_versions")).await, n, "one version per row: nothing written twice");
    assert_eq!(count(pg, &t("invoices")).await, n, "invoices");
    assert_eq!(count(pg, &t("status_changes_default")).await, 0, "nothing in the default partition");
    let mismatches = rollup_mismatches(pg).await;
    assert!(mismatches.is_empty(), "the rollups differ from the rows: {mismatches:#?}");
    // Idle: every message handled and deleted.
    let started = Instant::now();
    while depth(cell, &cell.spec.status_queue_name()).await != (0, 0) {
        assert!(started.elapsed() < Duration::from_secs(60), "the status queue never emptied");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(depth(cell, &cell.spec.status_dlq_name()).await, (0, 0), "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_crashing_mid_batch_and_restarting_loses_nothing_and_doubles_nothing() {
    let Some(env) = environment().await else { return };
    const N: usize = 600;
    let (cell, server, pg) = setup(&env, 2, 5, N, "CRASH").await;
    let (stop, stopped) = watch::channel(false);
    let writer = start_writer(&cell, &pg, stopped).await;
    let rows = format!("SELECT 1 FROM {}.status_changes", pg.schema());
    // Crash once some batches are in: others are in flight.
    let reached = wait_for_count(&pg, &rows, 100, Duration::from_secs(60)).await;
    assert!(reached >= 100, "the writer stored {reached} rows before the crash");
    server.crash();
    let at_crash = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart();
    eprintln!("down for {:.1} s", at_crash.elapsed().as_secs_f64());
    let n = wait_for_count(&pg, &rows, i64::try_from(N).unwrap_or(i64::MAX), Duration::from_secs(120)).await;
    assert_eq!(n, i64::try_from(N).unwrap_or(i64::MAX), "every row after the restart");
    assert_whole(&cell, &pg, N).await;
    let _ = stop.send(true);
    let _ = writer.await;
}

/// (maxReceiveCount − 1) × visibility = 4 × 2 s = 8 s: a 4-s outage is
/// survived by redelivery alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shorter_than_the_redeliveries_dead_letters_nothing() {
    let Some(env) = environment().await else { return };
    const N: usize = 300;
    let (cell, server, pg) = setup(&env, 2, 5, N, "SHORT").await;
    server.stop();
    let (stop, stopped) = watch::channel(false);
    let writer = start_writer(&cell, &pg, stopped).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.restart();
    let rows = format!("SELECT 1 FROM {}.status_changes", pg.schema());
    let n = wait_for_count(&pg, &rows, i64::try_from(N).unwrap_or(i64::MAX), Duration::from_secs(120)).await;
    assert_eq!(n, i64::try_from(N).unwrap_or(i64::MAX));
    assert_whole(&cell, &pg, N).await;
    let _ = stop.send(true);
    let _ = writer.await;
}

/// (maxReceiveCount − 1) × visibility = 2 × 2 s = 4 s: a 15-s outage
/// dead-letters every record, with the reason; redrive restores them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_outage_dead_letters_as_store_unavailable_and_redrive_restores_every_row() {
    let Some(env) = environment().await else { return };
    const N: usize = 200;
    let (cell, server, pg) = setup(&env, 2, 3, N, "LONG").await;
    server.stop();
    let (stop, stopped) = watch::channel(false);
    let writer = start_writer(&cell, &pg, stopped).await;
    let dlq = cell.spec.status_dlq_name();
    let started = Instant::now();
    while depth(&cell, &dlq).await.0 < N {
        assert!(started.elapsed() < Duration::from_secs(90), "dead-lettered: {:?}", depth(&cell, &dlq).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(depth(&cell, &cell.spec.status_queue_name()).await, (0, 0), "all of them dead-lettered");
    // (A look at a FIFO DLQ shows at most ten messages of each group.)
    let stuck = bems_ops::stuck::dead_lettered(&cell.clients.sqs, &cell.spec).await.expect("dead letters");
    assert!(stuck.len() >= 10, "{}", stuck.len());
    for s in &stuck {
        assert!(s.reason.starts_with("postgres: store unavailable at receive 3: "), "{}", s.reason);
    }
    eprintln!("reason: {}", stuck[0].reason);

    server.restart();
    let (dlq_url, source_url) = bems_ops::redrive::queues_named(&cell.spec, "status").expect("status queues");
    let (dlq_url, source_url) = (cell.queue_url(&dlq_url).await, cell.queue_url(&source_url).await);
    let moved = bems_ops::redrive::redrive_fifo(&cell.clients.sqs, &dlq_url, &source_url).await.expect("redrive");
    assert_eq!(moved.message_ids.len(), N);
    let rows = format!("SELECT 1 FROM {}.status_changes", pg.schema());
    let n = wait_for_count(&pg, &rows, i64::try_from(N).unwrap_or(i64::MAX), Duration::from_secs(120)).await;
    assert_eq!(n, i64::try_from(N).unwrap_or(i64::MAX), "every row after the redrive");
    assert_whole(&cell, &pg, N).await;
    let _ = stop.send(true);
    let _ = writer.await;
}
