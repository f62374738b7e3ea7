//! An auditor's export of a period: every status change with
//! `occurred_at` in `[from, to)`, as CSV or JSON lines, with a manifest
//! that lets the auditor check the file is complete.
//!
//! The export reads one consistent snapshot (a `REPEATABLE READ READ
//! ONLY` transaction), partition by partition in `occurred_at` order, a
//! few thousand rows at a time through a cursor, so its memory does not
//! grow with the period. Within the snapshot it counts the period's rows
//! again and fails if the file holds another number. The manifest
//! ([`Manifest`]) gives the bounds, the row count (per partition too) and
//! the SHA-256 of the file: `sha256sum` and `wc -l` check it.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::migrate::hex;
use super::partitions::{month_of, partition_name};
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

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Manifest {
    /// The cell's schema.
    pub schema: String,
    /// Inclusive start of the period.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
    /// The file's format.
    pub format: Format,
    /// The columns, in order.
    pub columns: Vec<String>,
    /// Data rows written (CSV: lines after the header).
    pub rows: u64,
    /// Rows per partition read, in order.
    pub partitions: Vec<(String, u64)>,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
    /// Bytes written.
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
    #[error("export: writing the file: {0}")]
    Io(#[from] std::io::Error),
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

/// Hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Where rows go.
enum Sink<W: Write> {
    Csv(Box<csv::Writer<Hashing<W>>>),
    Jsonl(Hashing<W>),
}

/// Rows fetched from the cursor at a time.
const FETCH: i64 = 5_000;

/// Exports `schema`'s status changes of `[from, to)` to `out`.
pub async fn export<W: Write>(
    client: &mut tokio_postgres::Client,
    schema: &Schema,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    format: Format,
    out: W,
) -> Result<Manifest, ExportError> {
    if from >= to {
        return Err(ExportError::EmptyPeriod { from, to });
    }
    let step = "export";
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| StoreError::new(step, e))?;
    let snapshot_at: DateTime<Utc> =
        tx.query_one("SELECT now()", &[]).await.map_err(|e| StoreError::new(step, e))?.get(0);
    // The months the period touches, then the default partition.
    let mut tables = Vec::new();
    let mut month = month_of(from);
    while month <= month_of(to - chrono::Duration::microseconds(1)) {
        tables.push(partition_name("status_changes", month));
        month = month.checked_add_months(chrono::Months::new(1)).unwrap_or(chrono::NaiveDate::MAX);
    }
    tables.push("status_changes_default".to_owned());

    let file = Hashing { inner: out, hash: Sha256::new(), bytes: 0 };
    // The CSV writer buffers a few kilobytes before it writes through.
    let mut sink = match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(file);
            w.write_record(COLUMNS).map_err(std::io::Error::other)?;
            Sink::Csv(Box::new(w))
        }
        Format::Jsonl => Sink::Jsonl(file),
    };
    let columns = COLUMNS.join(", ");
    let mut written = 0_u64;
    let mut partitions = Vec::new();
    for table in tables {
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&schema.table(&table)])
            .await
            .map_err(|e| StoreError::new(step, e))?
            .get(0);
        if !exists {
            continue;
        }
        let select = match format {
            Format::Csv => {
                format!("SELECT {} FROM {}", COLUMNS.map(|c| format!("{c}::text")).join(", "), schema.table(&table))
            }
            Format::Jsonl => {
                format!("SELECT row_to_json(t)::text FROM (SELECT {columns} FROM {}", schema.table(&table))
            }
        };
        let close = if format == Format::Jsonl { ") t" } else { "" };
        // Bounds as literals: a cursor declaration takes no parameters.
        let sql = format!(
            "DECLARE bems_export NO SCROLL CURSOR FOR {select} WHERE occurred_at >= '{}' AND occurred_at < '{}' \
             ORDER BY occurred_at, invoice_id, stage{close}",
            from.to_rfc3339(),
            to.to_rfc3339(),
        );
        tx.batch_execute(&sql).await.map_err(|e| StoreError::new(step, e))?;
        let mut in_table = 0_u64;
        loop {
            let rows = tx
                .query(&format!("FETCH {FETCH} FROM bems_export"), &[])
                .await
                .map_err(|e| StoreError::new(step, e))?;
            for row in &rows {
                match &mut sink {
                    Sink::Csv(w) => {
                        let values: Vec<String> =
                            (0..COLUMNS.len()).map(|i| row.get::<_, Option<String>>(i).unwrap_or_default()).collect();
                        w.write_record(&values).map_err(std::io::Error::other)?;
                    }
                    Sink::Jsonl(file) => {
                        let line: String = row.get(0);
                        file.write_all(line.as_bytes())?;
                        file.write_all(b"\n")?;
                    }
                }
            }
            in_table += rows.len() as u64;
            if (rows.len() as i64) < FETCH {
                break;
            }
        }
        tx.batch_execute("CLOSE bems_export").await.map_err(|e| StoreError::new(step, e))?;
        written += in_table;
        partitions.push((table, in_table));
    }
    let mut file = match sink {
        Sink::Csv(w) => w.into_inner().map_err(|e| e.into_error())?,
        Sink::Jsonl(file) => file,
    };
    file.flush()?;
    let counted: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE occurred_at >= $1 AND occurred_at < $2",
                schema.table("status_changes")
            ),
            &[&from, &to],
        )
        .await
        .map_err(|e| StoreError::new(step, e))?
        .get(0);
    tx.commit().await.map_err(|e| StoreError::new(step, e))?;
    let counted = u64::try_from(counted).unwrap_or(0);
    if counted != written {
        return Err(ExportError::Incomplete { written, counted });
    }
    Ok(Manifest {
        schema: schema.to_string(),
        from,
        to,
        format,
        columns: COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
        rows: written,
        partitions,
        sha256: hex(&file.hash.finalize()),
        bytes: file.bytes,
        snapshot_at,
    })
}
