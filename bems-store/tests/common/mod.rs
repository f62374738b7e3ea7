//! A fresh schema on the test server (`BEMS_POSTGRES_URL`, which
//! `scripts/test` sets after `scripts/postgres up`), and rows to write.

#![allow(dead_code, unreachable_pub)]

use bems_core::fields::InvoiceId;
use bems_core::{InvoiceEvent, Stage, Status};
use bems_store::StatusRow;
use bems_store::postgres::{Postgres, Schema, migrate, partitions};
use chrono::{DateTime, Utc};

/// A migrated schema of its own on the test server, with partitions from
/// two months back to three ahead; `None` (the test skips) without a
/// server unless `BEMS_REQUIRE_POSTGRES=1`.
pub async fn store() -> Option<(Postgres, tokio_postgres::Client)> {
    let Ok(url) = std::env::var("BEMS_POSTGRES_URL") else {
        assert!(
            std::env::var("BEMS_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "BEMS_REQUIRE_POSTGRES=1 but BEMS_POSTGRES_URL is not set"
        );
        eprintln!("skipped: no PostgreSQL (BEMS_POSTGRES_URL; scripts/postgres up)");
        return None;
    };
    let schema = Schema::new(format!("t_{:016x}", fastrand::u64(..))).expect("schema");
    let pg = Postgres::new(&url, schema).expect("url");
    let mut client = pg.connect().await.expect("connect to the test server");
    migrate::migrate(&mut client, pg.schema()).await.expect("migrate");
    partitions::ensure(&mut client, pg.schema(), Utc::now() - chrono::Duration::days(62), 5).await.expect("partitions");
    Some((pg, client))
}

/// Drops the test's schema.
pub async fn drop_schema(client: &tokio_postgres::Client, pg: &Postgres) {
    client.batch_execute(&format!("DROP SCHEMA {} CASCADE", pg.schema())).await.expect("drop schema");
}

/// The fixture event as `invoice`'s `status` change at `stage`, at `at`.
pub fn event(invoice: &str, stage: Stage, status: Status, at: DateTime<Utc>) -> InvoiceEvent {
    let mut e: InvoiceEvent = bems_core::Validator::new(bems_core::ValidationOptions {
        max_future_skew: None,
        ..bems_core::ValidationOptions::default()
    })
    .parse(include_bytes!("../../../bems-core/fixtures/example-invoice-event.json"))
    .expect("fixture");
    e.invoice_id = InvoiceId::new(invoice).expect("invoice id");
    e.stage = stage;
    e.status = status;
    e.previous_status = None;
    e.previous_occurred_at = None;
    e.submitted_at = None;
    e.occurred_at = at;
    e.event_id = bems_core::fields::EventId::random();
    e
}

/// The row of `invoice`'s `status` change at `stage`, at `at`, version `at` + 1 s.
pub fn row(invoice: &str, stage: Stage, status: Status, at: DateTime<Utc>) -> StatusRow {
    StatusRow::new(&event(invoice, stage, status, at), at + chrono::Duration::seconds(1))
}

/// The rollups agree with the rows (of the last 70 days).
pub async fn assert_rollups_match(client: &tokio_postgres::Client, pg: &Postgres) {
    let now = Utc::now();
    let mismatches = bems_store::postgres::check::rollup_mismatches(
        client,
        pg.schema(),
        now - chrono::Duration::days(70),
        now + chrono::Duration::days(1),
    )
    .await
    .expect("rollup check");
    assert!(mismatches.is_empty(), "rollups differ from the rows: {mismatches:#?}");
}

/// Rows in a table of the test's schema.
pub async fn count(client: &tokio_postgres::Client, pg: &Postgres, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {}.{table}", pg.schema()), &[]).await.expect("count").get(0)
}
