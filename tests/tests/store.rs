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
//!
//! And how the writer reaches a store on AWS, against a server that takes
//! TLS connections only (as RDS with `rds.force_ssl=1`): the certificate
//! verified against the given CA and the server's name; an RDS IAM token
//! (SigV4, signed locally) as each new connection's password, a broken
//! connection opened again within the batch with a new token; the writer
//! and reader roles allowed exactly their statements.

use std::time::{Duration, Instant};

use bems_core::{Stage, Status};
use bems_e2e::postgres::{PrivateServer, cell_store, count, postgres_url, rollup_mismatches, wait_for_count};
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

/// A server of the machine's binaries is there to start (`scripts/test`
/// started the shared one); otherwise the test skips.
fn servers_here() -> bool {
    postgres_url().is_some()
}

#[tokio::test]
async fn tls_is_verified_against_the_given_ca_and_the_server_s_name_and_required() {
    if !servers_here() {
        return;
    }
    let server = PrivateServer::start_tls();
    let schema = bems_store::postgres::Schema::new("tls_check").expect("schema");
    let url = |host: &str, params: &str| format!("postgres://bems:bems@{host}:{}/bems?{params}", server.port());
    let ca = format!("sslrootcert={}", server.ca_file().display());

    let pg = Postgres::new(&url("localhost", &format!("sslmode=verify-full&{ca}")), schema.clone()).expect("url");
    let client = pg.connect().await.expect("a verified TLS connection");
    let row = client
        .query_one("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .expect("pg_stat_ssl");
    let (ssl, version): (bool, String) = (row.get(0), row.get(1));
    assert!(ssl, "the connection is encrypted");
    eprintln!("TLS {version}");

    // The platform's roots do not hold the server's CA.
    let error = Postgres::new(&url("localhost", "sslmode=require"), schema.clone())
        .expect("url")
        .connect()
        .await
        .expect_err("a CA nobody gave");
    assert!(error.message.contains("certificate"), "{error}");
    // The certificate names localhost, not 127.0.0.1.
    let error = Postgres::new(&url("127.0.0.1", &format!("sslmode=verify-full&{ca}")), schema.clone())
        .expect("url")
        .connect()
        .await
        .expect_err("another name");
    assert!(error.message.contains("certificate"), "{error}");
    // In the clear, the server refuses (pg_hba: hostnossl reject).
    let error = Postgres::new(&url("localhost", "sslmode=disable"), schema.clone())
        .expect("url")
        .connect()
        .await
        .expect_err("in the clear");
    assert_eq!(error.sqlstate.as_deref(), Some("28000"), "{error}");
    // `prefer` is verified too: it never falls back to an unverified server.
    let error =
        Postgres::new(&url("localhost", ""), schema).expect("url").connect().await.expect_err("prefer, unknown CA");
    assert!(error.message.contains("certificate"), "{error}");
}

/// The clock the IAM tokens are signed at: moved by the test.
static TOKEN_TIME: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_796_644_800);

fn token_clock() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(TOKEN_TIME.load(std::sync::atomic::Ordering::SeqCst))
}

#[tokio::test]
async fn the_writer_logs_in_with_a_new_iam_token_per_connection_and_may_only_write() {
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use bems_core::contract::{DB_API_READER, DB_READER, DB_WRITER};
    use bems_store::postgres::iam::{RdsIamAuth, auth_token};
    use bems_store::postgres::{Schema, migrate, partitions, roles};
    use std::sync::atomic::Ordering;

    if !servers_here() {
        return;
    }
    let server = PrivateServer::start_tls();
    let owner = Postgres::new(&server.url(), Schema::new("bems_iam").expect("schema")).expect("url");
    let mut admin = owner.connect().await.expect("owner");
    migrate::migrate(&mut admin, owner.schema()).await.expect("migrate");
    partitions::ensure(&mut admin, owner.schema(), chrono::Utc::now() - chrono::Duration::days(31), 2)
        .await
        .expect("partitions");
    roles::grant(&mut admin, owner.schema()).await.expect("roles");
    roles::grant(&mut admin, owner.schema()).await.expect("roles again: idempotent");

    // The server cannot check a SigV4 signature; RDS does. Here the role's
    // password is set to the token the writer must present, so a login
    // proves the writer sent exactly that token, over verified TLS.
    let credentials = Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None, None, "test");
    let token = |user: &str| {
        auth_token("localhost", server.port(), user, "eu-west-1", &credentials, token_clock()).expect("token")
    };
    let set_password = |user: &str| format!("ALTER ROLE {user} PASSWORD '{}'", token(user));
    admin.batch_execute(&set_password(DB_WRITER)).await.expect("writer's password");
    let tokens =
        RdsIamAuth::new(SharedCredentialsProvider::new(credentials.clone()), "eu-west-1").with_clock(token_clock);
    let as_writer = Postgres::new(&server.url_as(DB_WRITER), owner.schema().clone())
        .expect("url")
        .with_password_source(std::sync::Arc::new(tokens.clone()))
        .expect("TLS required");
    // Without TLS required, no token is sent.
    let plain = format!("postgres://{DB_WRITER}@localhost:{}/bems", server.port());
    let refused =
        Postgres::new(&plain, owner.schema().clone()).expect("url").with_password_source(std::sync::Arc::new(tokens));
    assert!(refused.expect_err("prefer").to_string().contains("only over TLS"));

    let at = chrono::Utc::now() - chrono::Duration::minutes(5);
    let rows = |from: usize| -> Vec<bems_store::StatusRow> {
        (from..from + 10)
            .map(|i| {
                let e = event(&format!("INV-IAM-{i:04}"), Stage::Ingestion, Status::Submitted, None, 0);
                let mut e = e;
                e.occurred_at = at;
                bems_store::StatusRow::new(&e, at + chrono::Duration::seconds(1))
            })
            .collect()
    };
    let writer = bems_store::postgres::write::Writer::new(as_writer.clone());
    let outcomes = writer.write(&rows(0)).await.expect("written with the first token");
    assert!(outcomes.iter().all(|o| o.is_done()), "{outcomes:?}");

    // A thaw after the token's 15 minutes: the connection is gone (cut
    // here), the clock moved on, and only the new token logs in. The
    // writer reconnects once within the batch, signing a new token.
    // (A role may end its own sessions: a second writer connection cuts
    // the first.)
    let killer = as_writer.connect().await.expect("a second connection");
    TOKEN_TIME.fetch_add(16 * 60, Ordering::SeqCst);
    admin.batch_execute(&set_password(DB_WRITER)).await.expect("writer's next password");
    let cut: i64 = killer
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
            &[&DB_WRITER],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(cut, 1, "the writer's one connection");
    drop(killer);
    let outcomes = writer.write(&rows(10)).await.expect("written after reconnecting with a new token");
    assert!(outcomes.iter().all(|o| o.is_done()), "{outcomes:?}");
    let stored: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {}.status_changes", owner.schema()), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 20);

    // The writer may not delete, truncate or change the schema.
    let client = as_writer.connect().await.expect("writer");
    for sql in [
        format!("DELETE FROM {}.status_changes", owner.schema()),
        format!("TRUNCATE {}.status_change_versions", owner.schema()),
        format!("UPDATE {}.status_change_versions SET producer = 'x'", owner.schema()),
        format!("CREATE TABLE {}.x (a int)", owner.schema()),
    ] {
        let error = client.batch_execute(&sql).await.expect_err(&sql);
        assert_eq!(error.code().map(|c| c.code()), Some("42501"), "{sql}: {error}");
    }
    // The reader may only select.
    admin.batch_execute(&format!("ALTER ROLE {DB_READER} PASSWORD 'reader'")).await.expect("reader's password");
    let reader = Postgres::new(&server.url_as(&format!("{DB_READER}:reader")), owner.schema().clone())
        .expect("url")
        .connect()
        .await
        .expect("reader");
    let n: i64 = reader
        .query_one(&format!("SELECT count(*) FROM {}.invoices", owner.schema()), &[])
        .await
        .expect("select")
        .get(0);
    assert_eq!(n, 20);
    let error = reader
        .batch_execute(&format!("UPDATE {}.invoices SET producer = 'x'", owner.schema()))
        .await
        .expect_err("reader update");
    assert_eq!(error.code().map(|c| c.code()), Some("42501"));
    // The Data API reader: its password set (as a SCRAM verifier: the
    // server never sees the password), a login that may only select.
    let api_password = "a-reader-password-from-its-secret";
    roles::set_password(&mut admin, api_password).await.expect("the Data API reader's password");
    let api_reader = Postgres::new(&server.url_as(&format!("{DB_API_READER}:{api_password}")), owner.schema().clone())
        .expect("url")
        .connect()
        .await
        .expect("the Data API reader logs in");
    let n: i64 = api_reader
        .query_one(&format!("SELECT count(*) FROM {}.status_changes", owner.schema()), &[])
        .await
        .expect("select")
        .get(0);
    assert!(n > 0);
    let error = api_reader
        .batch_execute(&format!("DELETE FROM {}.invoices", owner.schema()))
        .await
        .expect_err("the Data API reader deletes");
    assert_eq!(error.code().map(|c| c.code()), Some("42501"));
    let wrong = Postgres::new(&server.url_as(&format!("{DB_API_READER}:not-its-password")), owner.schema().clone())
        .expect("url")
        .connect()
        .await;
    assert!(wrong.is_err(), "a wrong password is refused");
    let superuser: bool = reader
        .query_one(
            "SELECT bool_or(rolsuper OR rolcreaterole OR rolcreatedb) FROM pg_roles WHERE rolname = ANY($1)",
            &[&vec![DB_WRITER, DB_READER, DB_API_READER]],
        )
        .await
        .expect("roles")
        .get(0);
    assert!(!superuser, "neither role is a superuser or may create roles or databases");
}
