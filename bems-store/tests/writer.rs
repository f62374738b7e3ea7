//! The writer on a real PostgreSQL server: Timestream's idempotency
//! contract row by row, versions kept, one bad row refused alone, the
//! default partition, and after each the rollups equal to the rows.

mod common;

use bems_core::{Stage, Status};
use bems_store::postgres::write::{RowOutcome, Writer};
use bems_store::postgres::{ErrorClass, migrate, partitions};
use bems_store::query::Queries;
use chrono::{DateTime, Duration, Utc};
use common::{assert_rollups_match, count, drop_schema, row, store};

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("time")
}

#[tokio::test]
async fn redeliveries_change_nothing_and_corrections_replace_with_every_version_kept() {
    let Some((pg, client)) = store().await else { return };
    let writer = Writer::new(pg.clone());
    let t = Utc::now() - Duration::minutes(30);
    let rows: Vec<_> = (0..10).map(|i| row(&format!("INV-DUP-{i}"), Stage::Ingestion, Status::Submitted, t)).collect();
    let first = writer.write(&rows).await.expect("write");
    assert!(first.iter().all(|o| *o == RowOutcome::Inserted), "{first:?}");
    let stored_at: DateTime<Utc> = client
        .query_one(&format!("SELECT stored_at FROM {}.status_changes WHERE invoice_id = 'INV-DUP-3'", pg.schema()), &[])
        .await
        .expect("row")
        .get(0);

    // The same batch again (a redelivery): nothing changes.
    let again = writer.write(&rows).await.expect("write again");
    assert!(again.iter().all(|o| *o == RowOutcome::Duplicate), "{again:?}");
    assert_eq!(count(&client, &pg, "status_changes").await, 10);
    assert_eq!(count(&client, &pg, "status_change_versions").await, 10);
    assert_rollups_match(&client, &pg).await;

    // A correction: the same key, a higher version, another amount.
    let mut corrected = rows[3].clone();
    corrected.version += Duration::seconds(30);
    corrected.amount = "990.00".parse().expect("amount");
    let out = writer.write(std::slice::from_ref(&corrected)).await.expect("correct");
    assert_eq!(out, [RowOutcome::Replaced { previous: rows[3].version }]);
    let history = bems_store::postgres::PgQueries::new(pg.clone()).history("INV-DUP-3").await.expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].amount.map(|a| a.to_string()).as_deref(), Some("990.00"), "scale kept");
    assert_eq!(history[0].stored_at, Some(stored_at), "stored_at is the first insert's");
    let versions = bems_store::postgres::PgQueries::new(pg.clone()).versions("INV-DUP-3").await.expect("versions");
    assert_eq!(
        versions.iter().map(|v| v.amount.map(|a| a.to_string()).unwrap_or_default()).collect::<Vec<_>>(),
        ["1250.50", "990.00"]
    );
    assert_rollups_match(&client, &pg).await;

    // The stale copy arriving after the correction: done, nothing changes.
    let out = writer.write(&rows[3..4]).await.expect("stale");
    assert_eq!(out, [RowOutcome::Stale { stored: corrected.version }]);
    assert_eq!(count(&client, &pg, "status_change_versions").await, 11);

    // The same version with other content: a conflict naming the fields.
    let mut conflicting = corrected.clone();
    conflicting.vendor_id = "V-OTHER".into();
    let out = writer.write(std::slice::from_ref(&conflicting)).await.expect("conflict");
    assert_eq!(out, [RowOutcome::Conflict { fields: vec!["vendor_id"] }]);
    assert!(out[0].reason().is_some_and(|r| r.contains("vendor_id")));
    let history = bems_store::postgres::PgQueries::new(pg.clone()).history("INV-DUP-3").await.expect("history");
    assert_eq!(history[0].amount.map(|a| a.to_string()).as_deref(), Some("990.00"), "unchanged by the conflict");
    assert_rollups_match(&client, &pg).await;
    drop_schema(&client, &pg).await;
}

#[tokio::test]
async fn one_bad_row_is_refused_with_its_sqlstate_and_the_others_are_stored() {
    let Some((pg, client)) = store().await else { return };
    let writer = Writer::new(pg.clone());
    let t = Utc::now() - Duration::minutes(20);
    let mut rows: Vec<_> =
        (0..10).map(|i| row(&format!("INV-BAD-{i}"), Stage::Reconciliation, Status::Ingested, t)).collect();
    // A negative latency breaks the table's CHECK (class 23).
    rows[4].stage_latency_ms = Some(-5);
    let out = writer.write(&rows).await.expect("write");
    for (i, o) in out.iter().enumerate() {
        if i == 4 {
            assert!(
                matches!(o, RowOutcome::Invalid { sqlstate: Some(code), .. } if code == "23514"),
                "the bad row: {o:?}"
            );
            assert!(o.reason().is_some_and(|r| r.contains("23514")), "{o:?}");
        } else {
            assert_eq!(*o, RowOutcome::Inserted, "row {i}");
        }
    }
    assert_eq!(count(&client, &pg, "status_changes").await, 9);
    assert_eq!(count(&client, &pg, "invoices").await, 9, "nothing of the bad row anywhere");
    assert_eq!(count(&client, &pg, "status_change_versions").await, 9);
    assert_rollups_match(&client, &pg).await;
    drop_schema(&client, &pg).await;
}

#[tokio::test]
async fn a_key_twice_in_one_batch_is_written_then_compared() {
    let Some((pg, client)) = store().await else { return };
    let writer = Writer::new(pg.clone());
    let t = Utc::now() - Duration::minutes(10);
    let a = row("INV-TWICE-1", Stage::Posting, Status::Authorized, t);
    let mut newer = a.clone();
    newer.version += Duration::seconds(1);
    newer.reason = None;
    newer.amount = "1.00".parse().expect("amount");
    let out = writer.write(&[a.clone(), a.clone(), newer.clone(), a.clone()]).await.expect("write");
    assert_eq!(
        out,
        [
            RowOutcome::Inserted,
            RowOutcome::Duplicate,
            RowOutcome::Replaced { previous: a.version },
            RowOutcome::Stale { stored: newer.version }
        ]
    );
    assert_eq!(count(&client, &pg, "status_change_versions").await, 2);
    assert_rollups_match(&client, &pg).await;
    drop_schema(&client, &pg).await;
}

#[tokio::test]
async fn a_row_of_a_month_without_partition_lands_in_the_default_and_moves_out_when_it_is_made() {
    let Some((pg, mut client)) = store().await else { return };
    let writer = Writer::new(pg.clone());
    // Two years ahead: no partition there.
    let far = at("2029-03-15T10:00:00Z");
    let out = writer.write(&[row("INV-FAR-1", Stage::Ingestion, Status::Submitted, far)]).await.expect("write");
    assert_eq!(out, [RowOutcome::Inserted]);
    let (n, oldest, _) = partitions::in_default(&client, pg.schema()).await.expect("default");
    assert_eq!((n, oldest), (1, Some(far)));
    // The template's daily check fails, naming the count.
    let check = partitions::check_default_sql(pg.schema());
    let e = client.query_one(&check, &[]).await.expect_err("rows in the default partition");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "P0001");
    assert!(db.message().contains("1 status change(s)") && db.message().contains("bems store partitions"), "{db}");
    let made = partitions::ensure(&mut client, pg.schema(), far, 0).await.expect("partitions");
    assert_eq!(made.created, ["status_changes_2029_03", "status_change_versions_2029_03"]);
    assert_eq!(made.moved, 2, "the row and its first version");
    assert_eq!(partitions::in_default(&client, pg.schema()).await.expect("default").0, 0);
    let history = bems_store::postgres::PgQueries::new(pg.clone()).history("INV-FAR-1").await.expect("history");
    assert_eq!(history.len(), 1);
    let n: i64 = client.query_one(&check, &[]).await.expect("the check passes").get(0);
    assert_eq!(n, 0);
    // Idempotent: a second run creates nothing.
    let again = partitions::ensure(&mut client, pg.schema(), far, 0).await.expect("partitions");
    assert!(again.created.is_empty());
    assert_eq!(again.existing, ["status_changes_2029_03", "status_change_versions_2029_03"]);
    // Months ahead are bounded, and the function's lock is the commands'.
    let e = partitions::ensure(&mut client, pg.schema(), far, 121).await.expect_err("121 months");
    assert!(e.to_string().contains("months ahead must be 0 to 120"), "{e}");
    let key: i64 =
        client.query_one(&format!("SELECT {}.upkeep_lock_key()", pg.schema()), &[]).await.expect("lock key").get(0);
    assert_eq!(key, migrate::lock_key(pg.schema()));
    assert_rollups_match(&client, &pg).await;
    drop_schema(&client, &pg).await;
}

#[tokio::test]
async fn migrations_apply_once_and_a_changed_one_is_refused() {
    let Some((pg, mut client)) = store().await else { return };
    let again = migrate::migrate(&mut client, pg.schema()).await.expect("again");
    assert!(again.applied.is_empty());
    assert_eq!(again.already, [1, 2, 3]);
    // A store migrated by the previous release gains only the new one.
    client
        .batch_execute(&format!(
            "DROP TABLE {0}.archives; DROP FUNCTION {0}.ensure_partitions, {0}.check_default_partition, {0}.upkeep_lock_key; \
             DELETE FROM {0}.schema_migrations WHERE version IN (2, 3)",
            pg.schema()
        ))
        .await
        .expect("back to version 1");
    let upgraded = migrate::migrate(&mut client, pg.schema()).await.expect("upgrade");
    assert_eq!((upgraded.applied, upgraded.already), (vec![2, 3], vec![1]));
    client
        .execute(&format!("UPDATE {}.schema_migrations SET checksum = 'edited' WHERE version = 1", pg.schema()), &[])
        .await
        .expect("tamper");
    let e = migrate::migrate(&mut client, pg.schema()).await.expect_err("changed");
    assert!(matches!(e, migrate::MigrateError::Changed { version: 1, .. }), "{e}");
    drop_schema(&client, &pg).await;
}

#[tokio::test]
async fn a_store_without_its_tables_refuses_rather_than_loses() {
    let Some((pg, client)) = store().await else { return };
    drop_schema(&client, &pg).await;
    let writer = Writer::new(pg.clone());
    let t = Utc::now();
    let e = writer.write(&[row("INV-NONE", Stage::Ingestion, Status::Submitted, t)]).await.expect_err("no table");
    assert_eq!(e.class, ErrorClass::Refused, "{e}");
    assert_eq!(e.sqlstate.as_deref(), Some("42P01"), "{e}");
}
