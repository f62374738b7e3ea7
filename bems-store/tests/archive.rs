//! Archiving old months on a real PostgreSQL server, to a directory: the
//! files hold every row (both tables, gzipped, hashes as the manifests
//! say), the partitions go, history names the archive; a month written to
//! during its export, or a file the target did not store whole, keeps its
//! partitions.

mod common;

use std::io::Read;

use bems_core::{Stage, Status};
use bems_store::postgres::archive::{self, ArchiveError, Directory, Stored, Target};
use bems_store::postgres::export::{Compression, Encoding, Format};
use bems_store::postgres::partitions::{self, month_of, partition_name};
use bems_store::postgres::write::Writer;
use bems_store::postgres::{PgQueries, Postgres};
use bems_store::query::Queries;
use chrono::{Duration, Months, NaiveDate, Utc};
use common::{count, drop_schema, row, store};
use sha2::Digest;

const GZIP_CSV: Encoding = Encoding { format: Format::Csv, compression: Compression::Gzip };

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bems-archive-{name}-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn gunzip(path: &str) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("file")).read_to_string(&mut text).expect("gzip");
    text
}

fn sha256_of(path: &str) -> String {
    sha2::Sha256::digest(std::fs::read(path).expect("file")).iter().map(|b| format!("{b:02x}")).collect()
}

async fn exists(client: &tokio_postgres::Client, pg: &Postgres, table: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("{}.{table}", pg.schema())])
        .await
        .expect("to_regclass")
        .get(0)
}

/// Four months ago: old enough to archive while keeping three.
fn old_month() -> NaiveDate {
    month_of(Utc::now()).checked_sub_months(Months::new(4)).expect("month")
}

#[tokio::test]
async fn old_months_go_to_files_that_hold_every_row_and_history_says_where() {
    let Some((pg, mut client)) = store().await else { return };
    partitions::ensure(&mut client, pg.schema(), Utc::now() - Duration::days(160), 6).await.expect("partitions");
    let writer = Writer::new(pg.clone());
    let month = old_month();
    let t = chrono::TimeZone::from_utc_datetime(&Utc, &month.and_hms_opt(0, 0, 0).expect("time")) + Duration::days(3);
    // Three changes of an old invoice, one of them corrected; a new one.
    let old = [
        row("INV-OLD-1", Stage::Ingestion, Status::Submitted, t),
        row("INV-OLD-1", Stage::Reconciliation, Status::Ingested, t + Duration::hours(1)),
        row("INV-OLD-1", Stage::Authorization, Status::Reconciled, t + Duration::hours(2)),
    ];
    writer.write(&old).await.expect("write");
    let mut corrected = old[0].clone();
    corrected.version += Duration::minutes(5);
    corrected.amount = "990.00".parse().expect("amount");
    writer.write(&[corrected]).await.expect("correct");
    writer.write(&[row("INV-NEW-1", Stage::Ingestion, Status::Submitted, Utc::now())]).await.expect("write");

    let months = archive::months(&mut client, pg.schema(), 3, Utc::now()).await.expect("months");
    assert!(months.contains(&month), "{month} is older than three months: {months:?}");
    let hot = month_of(Utc::now()).checked_sub_months(Months::new(2)).expect("month");
    assert!(months.iter().all(|m| *m < hot), "the three newest months stay: {months:?}");
    let e = archive::months(&mut client, pg.schema(), 0, Utc::now()).await.expect_err("keep 0");
    assert!(e.to_string().contains("--keep-months must be at least 1"), "{e}");

    let dir = scratch("ok");
    let target = Directory::new(&dir);
    for m in &months {
        let done = archive::archive_month(&mut client, pg.schema(), *m, &target, GZIP_CSV).await.expect("archive");
        assert_eq!(done.files.len(), 2, "both row tables");
        for f in &done.files {
            assert_eq!(sha256_of(&f.location), f.sha256, "{}: the recorded hash is the file's", f.location);
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&f.manifest).expect("manifest")).expect("JSON");
            assert_eq!(manifest["sha256"], f.sha256.as_str());
            assert_eq!(manifest["compression"], "gzip");
            let lines = gunzip(&f.location).lines().count() as u64;
            assert_eq!(lines, f.rows + 1, "{}: a header and every row", f.location);
        }
    }
    let done: Vec<(String, i64)> = client
        .query(&format!("SELECT table_name, rows FROM {}.archives WHERE month = $1 ORDER BY 1", pg.schema()), &[&month])
        .await
        .expect("archives")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(done, [("status_change_versions".to_owned(), 4), ("status_changes".to_owned(), 3)]);
    let versions_file = dir.join(archive::key(pg.schema(), "status_change_versions", month, GZIP_CSV));
    let text = gunzip(versions_file.to_str().expect("path"));
    assert!(text.contains(",1250.50,") && text.contains(",990.00,"), "both versions of the corrected row:\n{text}");
    for table in partitions::TABLES {
        assert!(!exists(&client, &pg, &partition_name(table, month)).await, "{table}'s partition is dropped");
    }

    // History: the old invoice's rows are gone, and it says where they went.
    let queries = PgQueries::new(pg.clone());
    assert!(queries.history("INV-OLD-1").await.expect("history").is_empty());
    let archived = queries.archived("INV-OLD-1").await.expect("archived");
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert_eq!(archived[0].month, month);
    assert!(archived[0].changes.ends_with(&archive::key(pg.schema(), "status_changes", month, GZIP_CSV)));
    assert!(archived[0].versions.as_deref().is_some_and(|v| v == versions_file.to_str().expect("path")));
    assert_eq!(queries.history("INV-NEW-1").await.expect("history").len(), 1);
    assert!(queries.archived("INV-NEW-1").await.expect("archived").is_empty());
    assert!(queries.archived("INV-NEVER").await.expect("archived").is_empty());

    // Again: nothing to archive, and the month by name is refused.
    assert!(archive::months(&mut client, pg.schema(), 3, Utc::now()).await.expect("months").is_empty());
    let e = archive::archive_month(&mut client, pg.schema(), month, &target, GZIP_CSV).await.expect_err("again");
    assert!(matches!(e, ArchiveError::NoPartition { .. }), "{e}");

    // A late change for the archived month waits in the default partition.
    writer.write(&[row("INV-OLD-1", Stage::Posting, Status::Authorized, t + Duration::hours(3))]).await.expect("late");
    assert_eq!(count(&client, &pg, "status_changes_default").await, 1);
    let _ = std::fs::remove_dir_all(&dir);
    drop_schema(&client, &pg).await;
}

/// A directory that misbehaves once the file is written: a writer writes
/// to the month (as a late correction would), or the file is reported
/// shorter than sent.
struct Meddling {
    inner: Directory,
    writer: Option<(Writer, bems_store::StatusRow)>,
    short: bool,
}

impl Target for Meddling {
    type Upload = <Directory as Target>::Upload;

    fn location(&self, key: &str) -> String {
        self.inner.location(key)
    }

    async fn create(&self, key: &str) -> std::io::Result<Self::Upload> {
        self.inner.create(key).await
    }

    async fn put(&self, key: &str, body: Vec<u8>) -> std::io::Result<()> {
        self.inner.put(key, body).await
    }

    async fn stored(&self, key: &str) -> std::io::Result<Stored> {
        if let Some((writer, row)) = &self.writer {
            writer.write(std::slice::from_ref(row)).await.map_err(std::io::Error::other)?;
        }
        let mut stored = self.inner.stored(key).await?;
        if self.short {
            stored.bytes -= 1;
        }
        Ok(stored)
    }
}

#[tokio::test]
async fn a_month_changed_during_its_export_or_stored_short_keeps_its_partitions() {
    let Some((pg, mut client)) = store().await else { return };
    partitions::ensure(&mut client, pg.schema(), Utc::now() - Duration::days(160), 6).await.expect("partitions");
    let writer = Writer::new(pg.clone());
    let month = old_month();
    let t = chrono::TimeZone::from_utc_datetime(&Utc, &month.and_hms_opt(0, 0, 0).expect("time")) + Duration::days(9);
    let first = row("INV-LATE-1", Stage::Ingestion, Status::Submitted, t);
    writer.write(std::slice::from_ref(&first)).await.expect("write");
    let mut correction = first.clone();
    correction.version += Duration::minutes(1);
    correction.amount = "10.00".parse().expect("amount");

    let dir = scratch("meddling");
    let changed =
        Meddling { inner: Directory::new(&dir), writer: Some((Writer::new(pg.clone()), correction)), short: false };
    let e = archive::archive_month(&mut client, pg.schema(), month, &changed, GZIP_CSV).await.expect_err("changed");
    assert!(matches!(e, ArchiveError::Changed { exported: 1, now: 2, .. }), "{e}");
    assert!(e.to_string().contains("run the archive again"), "{e}");
    let short = Meddling { inner: Directory::new(&dir), writer: None, short: true };
    let e = archive::archive_month(&mut client, pg.schema(), month, &short, GZIP_CSV).await.expect_err("short");
    assert!(matches!(e, ArchiveError::NotStored { .. }), "{e}");
    for table in partitions::TABLES {
        assert!(exists(&client, &pg, &partition_name(table, month)).await, "{table}'s partition stays");
    }
    assert_eq!(count(&client, &pg, "archives").await, 0);

    // Run again: the correction is in the files.
    let done = archive::archive_month(&mut client, pg.schema(), month, &Directory::new(&dir), GZIP_CSV)
        .await
        .expect("archive");
    let versions = done.files.iter().find(|f| f.table == "status_change_versions").expect("versions file");
    assert_eq!(versions.rows, 2);
    assert!(gunzip(&versions.location).contains(",10.00,"));
    let _ = std::fs::remove_dir_all(&dir);
    drop_schema(&client, &pg).await;
}
