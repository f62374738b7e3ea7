//! Months moved out of the database, to files an auditor can still read.
//!
//! The store keeps a few months hot; older ones go to an object store
//! (S3, through `bems-ops`; or a directory, [`Directory`]) as gzipped CSV
//! or JSON lines, one file per month and row table, laid out for Athena's
//! partition projection (`<schema>/<table>/month=YYYY-MM/…`, [`key`]),
//! with its manifest apart ([`manifest_key`]). [`archive_month`]:
//!
//! 1. exports both row tables of the month in one snapshot (a `REPEATABLE
//!    READ` transaction, [`super::export`]) straight into the target, and
//!    writes each manifest;
//! 2. asks the target what it stored and compares its size (and SHA-256,
//!    where the target reports one) with what was sent;
//! 3. in one transaction, under the schema's advisory lock and with both
//!    partitions locked against writers (`SHARE`), counts the partitions
//!    again, records the month in `archives`, then detaches and drops
//!    them.
//!
//! One run of a schema's archive at a time: a run holds an advisory lock
//! of its own (not the schema's, which the daily partitions take) from its
//! snapshot to its drop, so when two overlap, the file at a key is the
//! later run's, and the earlier one's recount sees what the later one
//! exported or stops.
//!
//! Step 3 counts both partitions: the versions table is append-only (the
//! writer may not update or delete there, [`super::roles`]) and every
//! write, a correction too, appends a version; so an unchanged count means
//! nothing was written to the month since the snapshot, and the files hold
//! exactly what is dropped. Otherwise nothing is dropped and the error says
//! to run again. A run that stops anywhere before step 3's commit leaves
//! the partitions in place; running again writes the same keys over.
//!
//! A status change that arrives for an archived month afterwards lands in
//! the default partition (`bems store check` reports it); history
//! ([`crate::query::Queries::archived`]) names the archived months an
//! invoice's rows may be in.

use std::io::{Read, Write};
use std::path::PathBuf;

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::export::{self, Encoding, ExportError, Manifest, Output};
use super::migrate::{hex, lock_key};
use super::partitions::{TABLES, month_of, next_month, partition_name, start};
use super::sql::{Param, Transaction, Transactional, single_int, table_exists};
use super::{Schema, StoreError};

/// Where archived files go.
pub trait Target: Send + Sync {
    /// A file being written.
    type Upload: Upload;

    /// Where `key` is, as people read it (`s3://bucket/prefix/key`, a
    /// path) and `archives` records it.
    fn location(&self, key: &str) -> String;

    /// Starts writing the file at `key`; it appears whole at
    /// [`Upload::finish`], or not at all.
    fn create(&self, key: &str) -> impl Future<Output = std::io::Result<Self::Upload>> + Send;

    /// Writes a small file whole.
    fn put(&self, key: &str, body: Vec<u8>) -> impl Future<Output = std::io::Result<()>> + Send;

    /// What is stored at `key`, as the target itself reports it.
    fn stored(&self, key: &str) -> impl Future<Output = std::io::Result<Stored>> + Send;
}

/// A file being written to a [`Target`].
pub trait Upload: Output {
    /// Makes the file whole at its key; its receipt, when the target gives
    /// each write one ([`Stored::receipt`]).
    fn finish(self) -> impl Future<Output = std::io::Result<Option<String>>> + Send;

    /// Gives it up: nothing appears at its key.
    fn abort(self) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// What a target says it holds at a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its size.
    pub bytes: u64,
    /// The SHA-256 of its bytes, hex, when the target computes one over
    /// the whole file (S3 does for a file sent in one part).
    pub sha256: Option<String>,
    /// What identifies the write that put it there (S3: the version id in
    /// a versioned bucket, else the ETag), when the target has one: equal
    /// to [`Upload::finish`]'s, it is this run's file, not another's.
    pub receipt: Option<String>,
}

/// One archived file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ArchivedFile {
    /// The table it holds.
    pub table: String,
    /// Where it is.
    pub location: String,
    /// Where its manifest is.
    pub manifest: String,
    /// Rows in it.
    pub rows: u64,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// What [`archive_month`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Archived {
    /// The month (its first day).
    pub month: NaiveDate,
    /// Its files, one per row table.
    pub files: Vec<ArchivedFile>,
}

/// Why archiving failed. Nothing was dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The export failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The target failed.
    #[error("archive: writing {location}")]
    Target {
        /// Where.
        location: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Asking the target what it holds failed.
    #[error("archive: reading what is at {location}")]
    Reading {
        /// Where.
        location: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The target holds something other than what was sent.
    #[error(
        "archive: {location} holds {found_bytes} bytes (SHA-256 {found_sha256}) but {sent_bytes} were sent (SHA-256 {sent_sha256}); nothing dropped"
    )]
    NotStored {
        /// Where.
        location: String,
        /// Bytes sent.
        sent_bytes: u64,
        /// Bytes found.
        found_bytes: u64,
        /// SHA-256 sent.
        sent_sha256: String,
        /// SHA-256 found (`unknown` when the target reports none).
        found_sha256: String,
    },
    /// Rows were written to the month since its export.
    #[error(
        "archive: {partition} holds {now} rows but {exported} were exported: the month changed since; nothing dropped, run the archive again"
    )]
    Changed {
        /// The partition.
        partition: String,
        /// Rows exported.
        exported: u64,
        /// Rows now.
        now: i64,
    },
    /// The file at a key is no longer the one this run wrote (another run
    /// wrote it since).
    #[error("archive: {location} was written again since this run wrote it; nothing dropped, run the archive again")]
    Replaced {
        /// Where.
        location: String,
    },
    /// The month has no partition (never made, or archived already).
    #[error("archive: {schema} has no partition for {month} (never made, or archived already)")]
    NoPartition {
        /// The schema.
        schema: String,
        /// The month.
        month: NaiveDate,
    },
    /// Fewer than one month would stay hot.
    #[error("archive: --keep-months must be at least 1 (the current month stays), not {0}")]
    KeepTooFew(u32),
}

impl ArchiveError {
    fn target(location: String) -> impl FnOnce(std::io::Error) -> ArchiveError {
        move |source| ArchiveError::Target { location, source }
    }

    fn reading(location: String) -> impl FnOnce(std::io::Error) -> ArchiveError {
        move |source| ArchiveError::Reading { location, source }
    }
}

/// A file this run wrote.
struct Sent {
    key: String,
    receipt: Option<String>,
    file: ArchivedFile,
    manifest: Manifest,
}

/// The key of `table`'s file for `month`:
/// `<schema>/<table>/month=YYYY-MM/<table>_YYYY_MM.csv.gz`: a folder per
/// table and month, as Athena's partition projection reads them.
pub fn key(schema: &Schema, table: &str, month: NaiveDate, encoding: Encoding) -> String {
    format!("{schema}/{}", relative(table, month, encoding))
}

/// The key of its manifest: under `<schema>/manifests/`, apart from the
/// data, because Athena reads every file under a table's location.
pub fn manifest_key(schema: &Schema, table: &str, month: NaiveDate, encoding: Encoding) -> String {
    format!("{schema}/manifests/{}.manifest.json", relative(table, month, encoding))
}

fn relative(table: &str, month: NaiveDate, encoding: Encoding) -> String {
    format!(
        "{table}/month={:04}-{:02}/{}.{}{}",
        month.year(),
        month.month(),
        partition_name(table, month),
        encoding.format.extension(),
        encoding.compression.extension()
    )
}

/// The months of `schema` that have partitions and are older than the
/// `keep` months up to `now`'s (which counts as one), oldest first.
pub async fn months(
    session: &mut impl Transactional,
    schema: &Schema,
    keep: u32,
    now: DateTime<Utc>,
) -> Result<Vec<NaiveDate>, ArchiveError> {
    if keep == 0 {
        return Err(ArchiveError::KeepTooFew(keep));
    }
    let step = "archive: months";
    let cutoff = month_of(now).checked_sub_months(Months::new(keep - 1)).unwrap_or(NaiveDate::MIN);
    let tx = session.begin(step).await?;
    let rows = tx
        .rows(
            step,
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = $1::text::regclass ORDER BY 1",
            &[Param::Text(schema.table(TABLES[0]))],
        )
        .await?;
    tx.commit().await?;
    let prefix = format!("{}_", TABLES[0]);
    let mut out = Vec::new();
    for row in rows {
        let name = row.text(0).map_err(|e| StoreError::answer(step, e))?;
        let Some(month) =
            name.strip_prefix(&prefix).and_then(|ym| NaiveDate::parse_from_str(&format!("{ym}_01"), "%Y_%m_%d").ok())
        else {
            continue; // the default partition
        };
        if month < cutoff {
            out.push(month);
        }
    }
    Ok(out)
}

/// Archives `schema`'s `month` to `target` (the module's three steps).
pub async fn archive_month<S: Transactional, T: Target>(
    session: &mut S,
    schema: &Schema,
    month: NaiveDate,
    target: &T,
    encoding: Encoding,
) -> Result<Archived, ArchiveError> {
    let month = month_of(start(month));
    let (from, to) = (start(month), start(next_month(month)));
    let step = "archive";

    // 1 and 2: the files, from one snapshot, one run of the schema's
    // archive at a time (so the file at a key is the last run's, and that
    // run's recount decides).
    let tx = export::snapshot(session, step).await?;
    if let Err(e) = tx.execute(step, "SELECT pg_advisory_xact_lock($1)", &[Param::Int(run_lock_key(schema))]).await {
        let _ = tx.rollback().await;
        return Err(e.into());
    }
    let mut sent = Vec::new();
    for table in TABLES {
        let partition = partition_name(table, month);
        if !table_exists(&tx, step, schema, &partition).await? {
            let _ = tx.rollback().await;
            return Err(ArchiveError::NoPartition { schema: schema.to_string(), month });
        }
        match export_file(&tx, schema, table, month, (from, to), target, encoding).await {
            Ok(file) => sent.push((partition, file)),
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        }
    }
    tx.commit().await?;

    // 3: record and drop, if nothing changed.
    let tx = session.begin(step).await?;
    match record_and_drop(&tx, schema, month, encoding, &sent, target).await {
        Ok(()) => tx.commit().await?,
        Err(e) => {
            let _ = tx.rollback().await;
            return Err(e);
        }
    }
    Ok(Archived { month, files: sent.into_iter().map(|(_, sent)| sent.file).collect() })
}

/// Exports `table`'s month to `target` and checks what it stored.
async fn export_file<T: Target>(
    tx: &impl Transaction,
    schema: &Schema,
    table: &str,
    month: NaiveDate,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    target: &T,
    encoding: Encoding,
) -> Result<Sent, ArchiveError> {
    let key = key(schema, table, month, encoding);
    let location = target.location(&key);
    let mut upload = target.create(&key).await.map_err(ArchiveError::target(location.clone()))?;
    let manifest = match export::export_table(tx, schema, table, from, to, encoding, &mut upload).await {
        Ok(manifest) => manifest,
        Err(e) => {
            let _ = upload.abort().await;
            return Err(e.into());
        }
    };
    let receipt = upload.finish().await.map_err(ArchiveError::target(location.clone()))?;
    let manifest_key = manifest_key(schema, table, month, encoding);
    let manifest_location = target.location(&manifest_key);
    let body = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other);
    let body = body.map_err(ArchiveError::target(manifest_location.clone()))?;
    target.put(&manifest_key, body).await.map_err(ArchiveError::target(manifest_location.clone()))?;

    let stored = target.stored(&key).await.map_err(ArchiveError::reading(location.clone()))?;
    if receipt.is_some() && stored.receipt != receipt {
        return Err(ArchiveError::Replaced { location });
    }
    let sha_differs = stored.sha256.as_ref().is_some_and(|found| *found != manifest.sha256);
    if stored.bytes != manifest.bytes || sha_differs {
        return Err(ArchiveError::NotStored {
            location,
            sent_bytes: manifest.bytes,
            found_bytes: stored.bytes,
            sent_sha256: manifest.sha256.clone(),
            found_sha256: stored.sha256.unwrap_or_else(|| "unknown".to_owned()),
        });
    }
    let file = ArchivedFile {
        table: table.to_owned(),
        location,
        manifest: manifest_location,
        rows: manifest.rows,
        bytes: manifest.bytes,
        sha256: manifest.sha256.clone(),
    };
    Ok(Sent { key, receipt, file, manifest })
}

/// The advisory lock one archive run of `schema` holds from its snapshot
/// to its drop: not the schema's own ([`lock_key`]), which the daily
/// partitions take and which a long export must not hold.
fn run_lock_key(schema: &Schema) -> i64 {
    lock_key(schema) ^ 0x6172_6368_6976_6573 // b"archives"
}

/// How long step 3 waits for a table lock before giving up (writers
/// holding the month's rows, readers of the parent table), so that it
/// never queues the writers behind it for long.
const LOCK_TIMEOUT: &str = "30s";

/// Step 3, in `tx`.
async fn record_and_drop(
    tx: &impl Transaction,
    schema: &Schema,
    month: NaiveDate,
    encoding: Encoding,
    sent: &[(String, Sent)],
    target: &impl Target,
) -> Result<(), ArchiveError> {
    let step = "archive: drop";
    // Each statement sees what committed before it, the writers' last rows
    // included (whatever the server's default isolation).
    tx.script(step, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
    for key in [run_lock_key(schema), lock_key(schema)] {
        tx.execute(step, "SELECT pg_advisory_xact_lock($1)", &[Param::Int(key)]).await?;
    }
    tx.script(step, &format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")).await?;
    for (partition, sent) in sent {
        if !table_exists(tx, step, schema, partition).await? {
            return Err(ArchiveError::NoPartition { schema: schema.to_string(), month });
        }
        // No other run can write now (the run lock): the file must still
        // be this run's.
        if sent.receipt.is_some() {
            let location = sent.file.location.clone();
            let stored = target.stored(&sent.key).await.map_err(ArchiveError::reading(location.clone()))?;
            if stored.receipt != sent.receipt {
                return Err(ArchiveError::Replaced { location });
            }
        }
    }
    let partitions: Vec<String> = sent.iter().map(|(p, _)| schema.table(p)).collect();
    // Writers to the month wait from here to the commit; everything is
    // counted before anything is detached.
    tx.script(step, &format!("LOCK TABLE {} IN SHARE MODE", partitions.join(", "))).await?;
    for (partition, Sent { manifest, .. }) in sent {
        let exported = manifest.partitions.iter().find(|(p, _)| p == partition).map(|(_, n)| *n);
        let now = single_int(tx, step, &format!("SELECT count(*) FROM {}", schema.table(partition)), &[]).await?;
        if exported.is_none() || u64::try_from(now).ok() != exported {
            return Err(ArchiveError::Changed { partition: partition.clone(), exported: exported.unwrap_or(0), now });
        }
    }
    // Detaching and dropping lock each parent table (readers and writers
    // of every month wait): a moment, at the end.
    for (partition, Sent { file, .. }) in sent {
        tx.execute(
            step,
            &format!(
                "INSERT INTO {} (month, table_name, location, manifest_location, format, compression, rows, bytes, sha256) \
                 VALUES ($1::text::date, $2, $3, $4, $5, $6, $7, $8, $9)",
                schema.table("archives")
            ),
            &[
                Param::Text(month.to_string()),
                Param::Text(file.table.clone()),
                Param::Text(file.location.clone()),
                Param::Text(file.manifest.clone()),
                Param::Text(encoding.format.extension().to_owned()),
                Param::Text(encoding.compression.as_str().to_owned()),
                Param::Int(i64::try_from(file.rows).unwrap_or(i64::MAX)),
                Param::Int(i64::try_from(file.bytes).unwrap_or(i64::MAX)),
                Param::Text(file.sha256.clone()),
            ],
        )
        .await?;
        tx.script(
            step,
            &format!(
                "ALTER TABLE {} DETACH PARTITION {}; DROP TABLE {};",
                schema.table(&file.table),
                schema.table(partition),
                schema.table(partition)
            ),
        )
        .await?;
    }
    Ok(())
}

/// Files under a directory (a mounted volume, or a test's): each appears
/// under its final name only once written and synced.
#[derive(Debug, Clone)]
pub struct Directory {
    root: PathBuf,
}

impl Directory {
    /// Files under `root` (made when needed).
    pub fn new(root: impl Into<PathBuf>) -> Directory {
        Directory { root: root.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

/// A file being written under a [`Directory`], under a temporary name.
#[derive(Debug)]
pub struct DirectoryUpload {
    file: std::io::BufWriter<std::fs::File>,
    partial: PathBuf,
    path: PathBuf,
}

fn partial(path: &std::path::Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

impl Output for DirectoryUpload {
    async fn write(&mut self, chunk: Vec<u8>) -> std::io::Result<()> {
        self.file.write_all(&chunk)
    }
}

impl Upload for DirectoryUpload {
    async fn finish(self) -> std::io::Result<Option<String>> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.partial, &self.path)?;
        // The rename itself survives a crash once its directory is synced.
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(None)
    }

    async fn abort(self) -> std::io::Result<()> {
        drop(self.file);
        std::fs::remove_file(&self.partial)
    }
}

impl Target for Directory {
    type Upload = DirectoryUpload;

    fn location(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    async fn create(&self, key: &str) -> std::io::Result<DirectoryUpload> {
        let path = self.path(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let partial = partial(&path);
        let file = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        Ok(DirectoryUpload { file, partial, path })
    }

    async fn put(&self, key: &str, body: Vec<u8>) -> std::io::Result<()> {
        let mut upload = self.create(key).await?;
        upload.write(body).await?;
        upload.finish().await.map(drop)
    }

    async fn stored(&self, key: &str) -> std::io::Result<Stored> {
        let mut file = std::fs::File::open(self.path(key))?;
        let (mut hash, mut bytes, mut buffer) = (Sha256::new(), 0_u64, vec![0; 1 << 16]);
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hash.update(&buffer[..n]);
            bytes += n as u64;
        }
        Ok(Stored { bytes, sha256: Some(hex(&hash.finalize())), receipt: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::export::{Compression, Format};

    #[test]
    fn keys_follow_athena_s_month_partitions() {
        let schema = Schema::new("cell_eu_1").expect("schema");
        let month = NaiveDate::from_ymd_opt(2026, 3, 1).expect("date");
        let gz = Encoding { format: Format::Csv, compression: Compression::Gzip };
        assert_eq!(
            key(&schema, "status_changes", month, gz),
            "cell_eu_1/status_changes/month=2026-03/status_changes_2026_03.csv.gz"
        );
        let plain = Encoding { format: Format::Jsonl, compression: Compression::None };
        assert_eq!(
            key(&schema, "status_change_versions", month, plain),
            "cell_eu_1/status_change_versions/month=2026-03/status_change_versions_2026_03.jsonl"
        );
        assert_eq!(
            manifest_key(&schema, "status_changes", month, gz),
            "cell_eu_1/manifests/status_changes/month=2026-03/status_changes_2026_03.csv.gz.manifest.json"
        );
    }
}
