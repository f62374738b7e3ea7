//! An auditor's export of a period: every status change with
//! `occurred_at` in `[from, to)`, as CSV or JSON lines, optionally gzipped,
//! with a manifest that lets the auditor check the file is complete.
//!
//! The export reads one consistent snapshot (a `REPEATABLE READ READ
//! ONLY` transaction), partition by partition in `occurred_at` order, a
//! few thousand rows at a time through a cursor, so its memory does not
//! grow with the period. Within the snapshot it counts the period's rows
//! again and fails if the file holds another number. The manifest
//! ([`Manifest`]) gives the bounds, the row count (per partition too) and
//! the SHA-256 of the file as stored: `sha256sum` and `wc -l` check it.
//!
//! It runs on a connection or through the Data API (the same SQL; the
//! Data API fetches fewer rows at a time, [`Transaction::fetch_rows`]),
//! and writes to any [`Output`]: a file ([`Blocking`]), or an archive's
//! upload ([`super::archive`]).

use std::io::Write;

use chrono::{DateTime, Utc};
use flate2::write::GzEncoder;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::migrate::hex;
use super::partitions::{TABLES, month_of, partition_name};
use super::sql::{Cell, Transaction, Transactional, single_int, single_time, table_exists};
use super::{Schema, StoreError};

/// The exported columns, in file order.
pub const COLUMNS: [&str; 24] = [
    "occurred_at",
    "invoice_id",
    "stage",
    "status",
    "previous_status",
    "event_id",
    "amount",
    "currency",
    "submitted_at",
    "previous_occurred_at",
    "issue_date",
    "due_date",
    "net_days",
    "vendor_id",
    "vendor_country",
    "reason",
    "stage_latency_ms",
    "end_to_end_latency_ms",
    "cell_id",
    "region",
    "partition",
    "producer",
    "version",
    "stored_at",
];

/// The file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 4180 CSV with a header line; values in PostgreSQL's text form
    /// (amounts exact, times `2026-11-26 13:45:00.123+00`), empty for null.
    Csv,
    /// One JSON object per line (PostgreSQL's `row_to_json`: amounts as
    /// exact numbers, times in ISO 8601).
    Jsonl,
}

/// Whether the file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// As written.
    None,
    /// gzip (RFC 1952): `zcat` reads it, and so do Athena and Spark.
    Gzip,
}

impl Compression {
    /// Its name, as the manifest and `archives` give it (`none`, `gzip`).
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
        }
    }

    /// The file name's ending for it (`.gz`, or none).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
        }
    }
}

impl Format {
    /// The file name's ending (`csv`, `jsonl`).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Manifest {
    /// The cell's schema.
    pub schema: String,
    /// The table exported: `status_changes` (each row's latest version),
    /// or `status_change_versions` (every version).
    pub table: String,
    /// Inclusive start of the period.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
    /// The file's format.
    pub format: Format,
    /// Its compression.
    pub compression: Compression,
    /// The columns, in order.
    pub columns: Vec<String>,
    /// Data rows written (CSV: lines after the header).
    pub rows: u64,
    /// Rows per partition read, in order.
    pub partitions: Vec<(String, u64)>,
    /// SHA-256 of the whole file as written (compressed, if it is), hex.
    pub sha256: String,
    /// Bytes written (compressed, if the file is).
    pub bytes: u64,
    /// When the snapshot was taken (the server's clock).
    pub snapshot_at: DateTime<Utc>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the file failed.
    #[error("export: writing the file")]
    Io(#[from] std::io::Error),
    /// No such table to export.
    #[error("export: no table {0} (the row tables are status_changes and status_change_versions)")]
    UnknownTable(String),
    /// `to` is not after `from`.
    #[error("export: the period is empty ({from} is not before {to})")]
    EmptyPeriod {
        /// Start.
        from: DateTime<Utc>,
        /// End.
        to: DateTime<Utc>,
    },
    /// The file does not hold every row of the period (the snapshot's own
    /// count differs): never expected; the file must not be used.
    #[error("export: wrote {written} rows but the period holds {counted}: the file is incomplete")]
    Incomplete {
        /// Rows written.
        written: u64,
        /// Rows counted.
        counted: u64,
    },
}

/// Where an export's bytes go, a chunk at a time.
pub trait Output: Send {
    /// Takes `chunk` (the next bytes of the file).
    fn write(&mut self, chunk: Vec<u8>) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// A [`std::io::Write`] as an [`Output`]: a file written in place (a few
/// hundred kilobytes per fetch; the CLI's export blocks on it).
#[derive(Debug)]
pub struct Blocking<W>(pub W);

impl<W: Write + Send> Output for Blocking<W> {
    async fn write(&mut self, chunk: Vec<u8>) -> std::io::Result<()> {
        self.0.write_all(&chunk)
    }
}

/// Compresses (or not), hashes and counts the file's bytes on their way
/// out.
struct Encoder {
    gzip: Option<GzEncoder<Vec<u8>>>,
    hash: Sha256,
    bytes: u64,
}

impl Encoder {
    fn new(compression: Compression) -> Encoder {
        let gzip = match compression {
            Compression::None => None,
            // Level 6, gzip's own default: most of level 9's ratio at a
            // fraction of its time (BENCHMARKS.md, the archive).
            Compression::Gzip => Some(GzEncoder::new(Vec::new(), flate2::Compression::default())),
        };
        Encoder { gzip, hash: Sha256::new(), bytes: 0 }
    }

    /// `raw` as the file's next bytes.
    fn encode(&mut self, raw: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let out = match &mut self.gzip {
            None => raw,
            Some(gz) => {
                gz.write_all(&raw)?;
                std::mem::take(gz.get_mut())
            }
        };
        Ok(self.seen(out))
    }

    /// The file's last bytes, and its hash.
    fn finish(mut self) -> std::io::Result<(Vec<u8>, String, u64)> {
        let last = match self.gzip.take() {
            None => Vec::new(),
            Some(gz) => gz.finish()?,
        };
        let last = self.seen(last);
        Ok((last, hex(&self.hash.finalize()), self.bytes))
    }

    fn seen(&mut self, out: Vec<u8>) -> Vec<u8> {
        self.hash.update(&out);
        self.bytes += out.len() as u64;
        out
    }
}

/// Rows as the file's text, before compression.
enum Rows {
    Csv(Box<csv::Writer<Vec<u8>>>),
    Jsonl(Vec<u8>),
}

impl Rows {
    /// The text written since last taken.
    fn take(&mut self) -> std::io::Result<Vec<u8>> {
        Ok(match self {
            Rows::Csv(w) => {
                // A writer per fetch: `csv` hands its buffer back only
                // by value.
                let done = std::mem::replace(w, Box::new(csv::Writer::from_writer(Vec::new())));
                done.into_inner().map_err(|e| e.into_error())?
            }
            Rows::Jsonl(buffer) => std::mem::take(buffer),
        })
    }
}

/// How a file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// CSV or JSON lines.
    pub format: Format,
    /// Compressed or not.
    pub compression: Compression,
}

/// Exports `schema`'s status changes of `[from, to)` to `out`, in one
/// snapshot of `session` (a connection, or the Data API).
pub async fn export<W: Write + Send>(
    session: &mut impl Transactional,
    schema: &Schema,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    format: Format,
    out: W,
) -> Result<Manifest, ExportError> {
    let tx = snapshot(session, "export").await?;
    let encoding = Encoding { format, compression: Compression::None };
    let manifest = export_table(&tx, schema, "status_changes", from, to, encoding, &mut Blocking(out)).await?;
    tx.commit().await?;
    Ok(manifest)
}

/// A `REPEATABLE READ READ ONLY` transaction on `session`: one snapshot
/// for every [`export_table`] in it.
pub async fn snapshot<'a, S: Transactional>(session: &'a mut S, step: &'static str) -> Result<S::Tx<'a>, StoreError> {
    let tx = session.begin(step).await?;
    // The first statement of the transaction, so both transports take it;
    // times in the file in UTC whatever the session's zone (a connection
    // sets it, the Data API's follows the cluster's parameters).
    tx.script(step, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL TimeZone = 'UTC'").await?;
    Ok(tx)
}

/// Exports `table`'s rows (a row table: [`TABLES`]) of `[from, to)` in
/// `tx`'s snapshot ([`snapshot`]) to `out`.
pub async fn export_table(
    tx: &impl Transaction,
    schema: &Schema,
    table: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    encoding: Encoding,
    out: &mut impl Output,
) -> Result<Manifest, ExportError> {
    if from >= to {
        return Err(ExportError::EmptyPeriod { from, to });
    }
    if !TABLES.contains(&table) {
        return Err(ExportError::UnknownTable(table.to_owned()));
    }
    let step = "export";
    let answer = |e| StoreError::answer(step, e);
    let snapshot_at = single_time(tx, step, "SELECT now()").await?;
    // The months the period touches, then the default partition.
    let mut tables = Vec::new();
    let mut month = month_of(from);
    while month <= month_of(to - chrono::Duration::microseconds(1)) {
        tables.push(partition_name(table, month));
        month = month.checked_add_months(chrono::Months::new(1)).unwrap_or(chrono::NaiveDate::MAX);
    }
    tables.push(format!("{table}_default"));

    let mut encoder = Encoder::new(encoding.compression);
    let mut rows = match encoding.format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(COLUMNS).map_err(std::io::Error::other)?;
            Rows::Csv(Box::new(w))
        }
        Format::Jsonl => Rows::Jsonl(Vec::new()),
    };
    let columns = COLUMNS.join(", ");
    let fetch = format!("FETCH {} FROM bems_export", tx.fetch_rows().max(1));
    let mut written = 0_u64;
    let mut partitions = Vec::new();
    for name in tables {
        if !table_exists(tx, step, schema, &name).await? {
            continue;
        }
        let select = match encoding.format {
            Format::Csv => {
                format!("SELECT {} FROM {}", COLUMNS.map(|c| format!("{c}::text")).join(", "), schema.table(&name))
            }
            Format::Jsonl => {
                format!("SELECT row_to_json(t)::text FROM (SELECT {columns} FROM {}", schema.table(&name))
            }
        };
        let close = if encoding.format == Format::Jsonl { ") t" } else { "" };
        // Bounds as literals: a cursor declaration takes no parameters.
        // (The version orders a key's rows in the versions table; the
        // key is unique in the other.)
        let sql = format!(
            "DECLARE bems_export NO SCROLL CURSOR FOR {select} WHERE occurred_at >= '{}' AND occurred_at < '{}' \
             ORDER BY occurred_at, invoice_id, stage, version{close}",
            from.to_rfc3339(),
            to.to_rfc3339(),
        );
        tx.script(step, &sql).await?;
        let mut in_table = 0_u64;
        loop {
            let fetched = tx.rows(step, &fetch, &[]).await?;
            for row in &fetched {
                match &mut rows {
                    Rows::Csv(w) => {
                        let values = row.cells().iter().map(|cell| match cell {
                            Cell::Text(text) => text.as_bytes(),
                            _ => b"",
                        });
                        w.write_record(values).map_err(std::io::Error::other)?;
                    }
                    Rows::Jsonl(buffer) => {
                        buffer.extend_from_slice(row.text(0).map_err(answer)?.as_bytes());
                        buffer.push(b'\n');
                    }
                }
            }
            in_table += fetched.len() as u64;
            out.write(encoder.encode(rows.take()?)?).await?;
            if (fetched.len() as u64) < u64::from(tx.fetch_rows().max(1)) {
                break;
            }
        }
        tx.script(step, "CLOSE bems_export").await?;
        written += in_table;
        partitions.push((name, in_table));
    }
    let (last, sha256, bytes) = encoder.finish()?;
    out.write(last).await?;
    let counted = single_int(
        tx,
        step,
        &format!("SELECT count(*) FROM {} WHERE occurred_at >= $1 AND occurred_at < $2", schema.table(table)),
        &[super::sql::Param::Time(from), super::sql::Param::Time(to)],
    )
    .await?;
    let counted = u64::try_from(counted).unwrap_or(u64::MAX);
    if counted != written {
        return Err(ExportError::Incomplete { written, counted });
    }
    Ok(Manifest {
        schema: schema.to_string(),
        table: table.to_owned(),
        from,
        to,
        format: encoding.format,
        compression: encoding.compression,
        columns: COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
        rows: written,
        partitions,
        sha256,
        bytes,
        snapshot_at,
    })
}
