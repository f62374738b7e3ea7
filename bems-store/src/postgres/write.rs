//! The writer: status rows into PostgreSQL with Timestream's idempotency
//! contract, the versions, the invoices and the rollups in the same
//! transaction.
//!
//! Per row ([`RowOutcome`]):
//!
//! - a new key is inserted;
//! - the same key, version and content again (a redelivery) changes
//!   nothing: [`RowOutcome::Duplicate`];
//! - the same key with a higher version (a correction) replaces the row
//!   (`stored_at` kept) and is appended to the versions table;
//! - a lower version changes nothing and is done: [`RowOutcome::Stale`];
//! - the same version with other content is a [`RowOutcome::Conflict`]
//!   naming the fields, for the dead-letter queue.
//!
//! A batch is one transaction of two round trips when its rows are new:
//! `BEGIN` with one statement that inserts the rows (`ON CONFLICT DO
//! NOTHING RETURNING`: which keys were new) and their first versions; then
//! the invoices, the rollup changes and `COMMIT`, pipelined. Rows whose key
//! was stored are read `FOR UPDATE` and compared here, and a replacement
//! is updated and its version appended, in between. The rollups change only by what really
//! changed (a replaced row's old values out, its new ones in), so a
//! redelivery leaves them as they are.
//!
//! When a batch fails on a data error (SQLSTATE class 22 or 23), it is
//! rolled back and written again row by row, each under a savepoint: one
//! bad row is [`RowOutcome::Invalid`] with the server's reason and the
//! others are stored. Any other failure fails the whole batch
//! ([`StoreError`], classified by [`super::ErrorClass`]) and nothing of it
//! is stored: the caller retries by redelivery.

use std::collections::{BTreeMap, HashMap};

use bems_core::{Stage, Status};
use chrono::{DateTime, DurationRound, NaiveDate, Utc};
use futures_util::future::try_join_all;
use rust_decimal::Decimal;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Statement};

use super::{ErrorClass, Postgres, Schema, StoreError};
use crate::histogram::{self, BUCKETS};
use crate::query::week_start;
use crate::row::{RowKey, StatusRow};

/// What became of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RowOutcome {
    /// Stored for the first time.
    Inserted,
    /// Replaced a lower version of the same key.
    Replaced {
        /// The version it replaced.
        previous: DateTime<Utc>,
    },
    /// Already stored exactly so: nothing changed.
    Duplicate,
    /// A higher version is stored: nothing changed, and nothing to do.
    Stale {
        /// The stored version.
        stored: DateTime<Utc>,
    },
    /// The same version is stored with other content.
    Conflict {
        /// The fields that differ.
        fields: Vec<&'static str>,
    },
    /// The store refused the row's data.
    Invalid {
        /// The server's SQLSTATE.
        sqlstate: Option<String>,
        /// Its message.
        message: String,
    },
}

impl RowOutcome {
    /// Whether the row is stored as it should be (nothing to retry or
    /// dead-letter).
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            RowOutcome::Inserted | RowOutcome::Replaced { .. } | RowOutcome::Duplicate | RowOutcome::Stale { .. }
        )
    }

    /// Why the row cannot be stored, for a dead-letter queue.
    pub fn reason(&self) -> Option<String> {
        match self {
            RowOutcome::Conflict { fields } => Some(format!(
                "conflict: the same version is stored with other content (differs in {})",
                fields.join(", ")
            )),
            RowOutcome::Invalid { sqlstate, message } => Some(match sqlstate {
                Some(code) => format!("refused by the store (SQLSTATE {code}): {message}"),
                None => format!("refused by the store: {message}"),
            }),
            _ => None,
        }
    }
}

/// The row columns, in the order of every statement's parameters: name
/// and SQL array type. `stored_at` is the database's.
const COLUMNS: [(&str, &str); 23] = [
    ("invoice_id", "text"),
    ("stage", "text"),
    ("occurred_at", "timestamptz"),
    ("cell_id", "text"),
    ("region", "text"),
    ("partition", "int2"),
    ("status", "text"),
    ("previous_status", "text"),
    ("event_id", "uuid"),
    ("amount", "numeric"),
    ("currency", "text"),
    ("submitted_at", "timestamptz"),
    ("previous_occurred_at", "timestamptz"),
    ("issue_date", "date"),
    ("due_date", "date"),
    ("net_days", "int2"),
    ("vendor_id", "text"),
    ("vendor_country", "text"),
    ("reason", "text"),
    ("stage_latency_ms", "int8"),
    ("end_to_end_latency_ms", "int8"),
    ("producer", "text"),
    ("version", "timestamptz"),
];

/// `unnest($1::text[], $2::…[], …) AS u(invoice_id, …)`.
fn unnest_all() -> String {
    let arrays: Vec<String> = COLUMNS.iter().enumerate().map(|(i, (_, t))| format!("${}::{t}[]", i + 1)).collect();
    let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
    format!("unnest({}) AS u({})", arrays.join(", "), names.join(", "))
}

fn column_list() -> String {
    COLUMNS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// The statements of one connection, prepared once.
struct Statements {
    begin: Statement,
    commit: Statement,
    insert: Statement,
    existing: Statement,
    update: Statement,
    versions: Statement,
    invoices: Statement,
    status_minute: Statement,
    money_minute: Statement,
    largest_merge: Statement,
    largest_recompute: Statement,
}

impl Statements {
    async fn prepare(client: &Client, schema: &Schema) -> Result<Statements, StoreError> {
        let (columns, unnest) = (column_list(), unnest_all());
        let t = |name: &str| schema.table(name);
        let prepare =
            |sql: String| async move { client.prepare(&sql).await.map_err(|e| StoreError::new("prepare", e)) };
        let select_columns = format!("{columns}, stored_at");
        let update_set: Vec<String> = COLUMNS.iter().skip(3).map(|(n, _)| format!("{n} = u.{n}")).collect();
        Ok(Statements {
            begin: prepare("BEGIN".to_owned()).await?,
            commit: prepare("COMMIT".to_owned()).await?,
            // The new rows and their first versions in one statement.
            insert: prepare(format!(
                "WITH inserted AS ( \
                   INSERT INTO {rows} ({columns}) SELECT * FROM {unnest} \
                   ON CONFLICT (invoice_id, stage, occurred_at) DO NOTHING RETURNING * \
                 ), first_versions AS ( \
                   INSERT INTO {versions} ({columns}, stored_at) SELECT {columns}, stored_at FROM inserted \
                 ) \
                 SELECT invoice_id, stage, occurred_at, stored_at FROM inserted",
                rows = t("status_changes"),
                versions = t("status_change_versions"),
            ))
            .await?,
            existing: prepare(format!(
                "SELECT {select_columns} FROM {} \
                 WHERE (invoice_id, stage, occurred_at) IN \
                   (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])) \
                 FOR UPDATE",
                t("status_changes")
            ))
            .await?,
            update: prepare(format!(
                "UPDATE {} AS s SET {} FROM {unnest} \
                 WHERE s.invoice_id = u.invoice_id AND s.stage = u.stage AND s.occurred_at = u.occurred_at",
                t("status_changes"),
                update_set.join(", ")
            ))
            .await?,
            versions: prepare(format!(
                "INSERT INTO {} ({columns}) SELECT * FROM {unnest} ON CONFLICT DO NOTHING",
                t("status_change_versions")
            ))
            .await?,
            invoices: prepare(format!(
                "INSERT INTO {table} AS i (invoice_id, partition, producer, first_seen, latest_at, latest_version, \
                   latest_stage, latest_status, latest_event_id, terminal) \
                 SELECT * FROM unnest($1::text[], $2::int2[], $3::text[], $4::timestamptz[], $5::timestamptz[], \
                   $6::timestamptz[], $7::text[], $8::text[], $9::uuid[], $10::bool[]) \
                 ON CONFLICT (invoice_id) DO UPDATE SET \
                   first_seen = least(i.first_seen, excluded.first_seen), \
                   {latest}",
                table = t("invoices"),
                latest = [
                    "latest_at",
                    "latest_version",
                    "latest_stage",
                    "latest_status",
                    "latest_event_id",
                    "terminal"
                ]
                .map(|c| format!(
                    "{c} = CASE WHEN (excluded.latest_at, excluded.latest_version) >= (i.latest_at, i.latest_version) \
                         THEN excluded.{c} ELSE i.{c} END"
                ))
                .join(", ")
            ))
            .await?,
            status_minute: prepare(format!(
                "INSERT INTO {table} AS m (minute, stage, partition, changes, synthetic, visibility_ms, \
                   stage_latency_ms, end_to_end_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (minute, stage, partition) DO UPDATE SET \
                   changes = m.changes + excluded.changes, synthetic = m.synthetic + excluded.synthetic, \
                   visibility_ms = {add}(m.visibility_ms, excluded.visibility_ms), \
                   stage_latency_ms = {add}(m.stage_latency_ms, excluded.stage_latency_ms), \
                   end_to_end_ms = {add}(m.end_to_end_ms, excluded.end_to_end_ms)",
                table = t("status_minute"),
                add = t("add_counts")
            ))
            .await?,
            money_minute: prepare(format!(
                "INSERT INTO {} AS m (minute, partition, currency, due_week, net_days, invoices, amount) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (minute, partition, currency, due_week, net_days) DO UPDATE SET \
                   invoices = m.invoices + excluded.invoices, amount = m.amount + excluded.amount",
                t("money_minute")
            ))
            .await?,
            largest_merge: prepare(format!(
                "INSERT INTO {table} AS m (minute, partition, currency, amounts, invoice_ids) \
                 SELECT $1, $2, $3, array_agg(a ORDER BY a DESC, i), array_agg(i ORDER BY a DESC, i) \
                   FROM (SELECT a, i FROM unnest($4::numeric[], $5::text[]) AS u(a, i) ORDER BY a DESC, i LIMIT 10) t \
                 ON CONFLICT (minute, partition, currency) DO UPDATE SET (amounts, invoice_ids) = ( \
                   SELECT array_agg(a ORDER BY a DESC, i), array_agg(i ORDER BY a DESC, i) FROM ( \
                     SELECT a, i FROM unnest(m.amounts || excluded.amounts, m.invoice_ids || excluded.invoice_ids) \
                       AS u(a, i) ORDER BY a DESC, i LIMIT 10) t)",
                table = t("largest_minute")
            ))
            .await?,
            largest_recompute: prepare(format!(
                "INSERT INTO {table} (minute, partition, currency, amounts, invoice_ids) \
                 SELECT $1, $2, $3, coalesce(array_agg(amount ORDER BY amount DESC, invoice_id), '{{}}'), \
                        coalesce(array_agg(invoice_id ORDER BY amount DESC, invoice_id), '{{}}') \
                   FROM (SELECT amount, invoice_id FROM {rows} \
                         WHERE occurred_at >= $1 AND occurred_at < $1 + interval '1 minute' AND partition = $2 \
                           AND currency = $3 AND status = 'submitted' AND producer <> $4 \
                         ORDER BY amount DESC, invoice_id LIMIT 10) t \
                 ON CONFLICT (minute, partition, currency) DO UPDATE \
                   SET amounts = excluded.amounts, invoice_ids = excluded.invoice_ids",
                table = t("largest_minute"),
                rows = t("status_changes")
            ))
            .await?,
        })
    }
}

/// One connection and its statements.
struct Connection {
    client: Client,
    statements: Statements,
}

impl Connection {
    async fn open(pg: &Postgres) -> Result<Connection, StoreError> {
        let client = pg.connect().await?;
        let statements = Statements::prepare(&client, pg.schema()).await?;
        Ok(Connection { client, statements })
    }
}

/// The writer of one store: one connection, opened on first use and
/// again after it fails, so a function builds it once per instance.
pub struct Writer {
    pg: Postgres,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("pg", &self.pg).finish_non_exhaustive()
    }
}

impl Writer {
    /// A writer to `pg`; it connects on its first write.
    pub fn new(pg: Postgres) -> Writer {
        Writer { pg, connection: tokio::sync::Mutex::new(None) }
    }

    /// Where it writes.
    pub fn postgres(&self) -> &Postgres {
        &self.pg
    }

    /// Connects now (at a function's start, so the first batch does not
    /// pay for it); a failure is only logged by the caller: the first
    /// write tries again.
    pub async fn connect(&self) -> Result<(), StoreError> {
        let mut guard = self.connection.lock().await;
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = Some(Connection::open(&self.pg).await?);
        }
        Ok(())
    }

    /// Writes `rows` in one transaction; one outcome per row, in order.
    ///
    /// A connection found broken (the server restarted, or the instance
    /// was frozen longer than the server keeps an idle connection) is
    /// opened again once before the batch fails: the batch is written
    /// again as a whole, which is safe because every write is idempotent.
    pub async fn write(&self, rows: &[StatusRow]) -> Result<Vec<RowOutcome>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut guard = self.connection.lock().await;
        let mut reconnected = false;
        loop {
            if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
                *guard = Some(Connection::open(&self.pg).await?);
                reconnected = true;
            }
            let Some(connection) = guard.as_mut() else { continue };
            match write_batch(connection, rows).await {
                Ok(out) => return Ok(out),
                Err(e) => {
                    let broken =
                        (e.sqlstate.is_none() && e.class == ErrorClass::Unavailable) || connection.client.is_closed();
                    if e.class == ErrorClass::Unavailable || broken {
                        *guard = None;
                    }
                    if broken && !reconnected {
                        tracing::info!(error = %e, "postgres connection broken; reconnecting once");
                        reconnected = true;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }
}

async fn write_batch(connection: &mut Connection, rows: &[StatusRow]) -> Result<Vec<RowOutcome>, StoreError> {
    let step = "write";
    let Connection { client, statements } = connection;
    // BEGIN goes out with the first INSERT, and COMMIT with the last
    // statements: two round trips for a batch of new rows. If a statement
    // fails, PostgreSQL ends the transaction at that COMMIT without
    // committing, and the error comes back here.
    let (begun, written) =
        tokio::join!(client.execute(&statements.begin, &[]), write_rows(&*client, statements, rows, true));
    let error = match (begun, written) {
        (Ok(_), Ok(out)) => return Ok(out),
        (Err(e), _) => StoreError::new("begin", e),
        (Ok(_), Err(e)) => e,
    };
    // Whatever is left of the transaction (nothing, if COMMIT ended it).
    if !client.is_closed() {
        client.batch_execute("ROLLBACK").await.map_err(|e| StoreError::new(step, e))?;
    }
    if error.class != ErrorClass::Data {
        return Err(error);
    }
    tracing::info!(error = %error, rows = rows.len(), "batch refused for its data; writing row by row");
    let mut tx = client.transaction().await.map_err(|e| StoreError::new(step, e))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let savepoint = tx.savepoint("bems_row").await.map_err(|e| StoreError::new(step, e))?;
        match write_rows(&savepoint, statements, std::slice::from_ref(row), false).await {
            Ok(mut one) => {
                savepoint.commit().await.map_err(|e| StoreError::new(step, e))?;
                out.push(one.pop().unwrap_or(RowOutcome::Duplicate));
            }
            Err(e) if e.class == ErrorClass::Data => {
                savepoint.rollback().await.map_err(|e| StoreError::new(step, e))?;
                out.push(RowOutcome::Invalid { sqlstate: e.sqlstate, message: e.message });
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit().await.map_err(|e| StoreError::new("commit", e))?;
    Ok(out)
}

/// Writes `rows` in rounds of distinct keys (a key twice in one batch is
/// written, then compared with itself, in order); with `commit`, the last
/// round's statements end with the transaction's COMMIT.
async fn write_rows<C: GenericClient + Sync>(
    c: &C,
    st: &Statements,
    rows: &[StatusRow],
    commit: bool,
) -> Result<Vec<RowOutcome>, StoreError> {
    // A row's round: how many rows before it have its key.
    let mut seen: HashMap<RowKey, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let n = seen.entry(row.key()).or_default();
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }
    let mut out: Vec<Option<RowOutcome>> = vec![None; rows.len()];
    let last = rounds.len().saturating_sub(1);
    for (r, round) in rounds.into_iter().enumerate() {
        let members: Vec<&StatusRow> = round.iter().map(|i| &rows[*i]).collect();
        let outcomes = write_round(c, st, &members, commit && r == last).await?;
        for (i, o) in round.into_iter().zip(outcomes) {
            out[i] = Some(o);
        }
    }
    Ok(out.into_iter().map(|o| o.unwrap_or(RowOutcome::Duplicate)).collect())
}

/// The rows' columns as arrays, one per statement parameter.
struct Columns<'a> {
    invoice_id: Vec<&'a str>,
    stage: Vec<&'static str>,
    occurred_at: Vec<DateTime<Utc>>,
    cell_id: Vec<&'a str>,
    region: Vec<&'a str>,
    partition: Vec<i16>,
    status: Vec<&'static str>,
    previous_status: Vec<Option<&'static str>>,
    event_id: Vec<uuid::Uuid>,
    amount: Vec<Decimal>,
    currency: Vec<&'a str>,
    submitted_at: Vec<Option<DateTime<Utc>>>,
    previous_occurred_at: Vec<Option<DateTime<Utc>>>,
    issue_date: Vec<NaiveDate>,
    due_date: Vec<NaiveDate>,
    net_days: Vec<i16>,
    vendor_id: Vec<&'a str>,
    vendor_country: Vec<&'a str>,
    reason: Vec<Option<&'a str>>,
    stage_latency_ms: Vec<Option<i64>>,
    end_to_end_latency_ms: Vec<Option<i64>>,
    producer: Vec<&'a str>,
    version: Vec<DateTime<Utc>>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[&'a StatusRow]) -> Columns<'a> {
        Columns {
            invoice_id: rows.iter().map(|r| r.invoice_id.as_str()).collect(),
            stage: rows.iter().map(|r| r.stage.as_str()).collect(),
            occurred_at: rows.iter().map(|r| r.occurred_at).collect(),
            cell_id: rows.iter().map(|r| r.cell_id.as_str()).collect(),
            region: rows.iter().map(|r| r.region.as_str()).collect(),
            partition: rows.iter().map(|r| r.partition).collect(),
            status: rows.iter().map(|r| r.status.as_str()).collect(),
            previous_status: rows.iter().map(|r| r.previous_status.map(Status::as_str)).collect(),
            event_id: rows.iter().map(|r| r.event_id).collect(),
            amount: rows.iter().map(|r| r.amount).collect(),
            currency: rows.iter().map(|r| r.currency.as_str()).collect(),
            submitted_at: rows.iter().map(|r| r.submitted_at).collect(),
            previous_occurred_at: rows.iter().map(|r| r.previous_occurred_at).collect(),
            issue_date: rows.iter().map(|r| r.issue_date).collect(),
            due_date: rows.iter().map(|r| r.due_date).collect(),
            net_days: rows.iter().map(|r| r.net_days).collect(),
            vendor_id: rows.iter().map(|r| r.vendor_id.as_str()).collect(),
            vendor_country: rows.iter().map(|r| r.vendor_country.as_str()).collect(),
            reason: rows.iter().map(|r| r.reason.as_deref()).collect(),
            stage_latency_ms: rows.iter().map(|r| r.stage_latency_ms).collect(),
            end_to_end_latency_ms: rows.iter().map(|r| r.end_to_end_latency_ms).collect(),
            producer: rows.iter().map(|r| r.producer.as_str()).collect(),
            version: rows.iter().map(|r| r.version).collect(),
        }
    }

    /// In [`COLUMNS`] order.
    fn params(&self) -> [&(dyn ToSql + Sync); 23] {
        [
            &self.invoice_id,
            &self.stage,
            &self.occurred_at,
            &self.cell_id,
            &self.region,
            &self.partition,
            &self.status,
            &self.previous_status,
            &self.event_id,
            &self.amount,
            &self.currency,
            &self.submitted_at,
            &self.previous_occurred_at,
            &self.issue_date,
            &self.due_date,
            &self.net_days,
            &self.vendor_id,
            &self.vendor_country,
            &self.reason,
            &self.stage_latency_ms,
            &self.end_to_end_latency_ms,
            &self.producer,
            &self.version,
        ]
    }
}

/// A stored row as read back.
pub(crate) fn read_row(row: &tokio_postgres::Row) -> Result<(StatusRow, DateTime<Utc>), StoreError> {
    let bad = |column: &'static str| move |e: tokio_postgres::Error| StoreError::new(column, e);
    let stage: String = row.try_get("stage").map_err(bad("read stage"))?;
    let status: String = row.try_get("status").map_err(bad("read status"))?;
    let previous: Option<String> = row.try_get("previous_status").map_err(bad("read previous_status"))?;
    let r = StatusRow {
        invoice_id: row.try_get("invoice_id").map_err(bad("read invoice_id"))?,
        // The table's CHECKs allow only the lifecycle's names.
        stage: Stage::from_wire(&stage).unwrap_or(Stage::Ingestion),
        occurred_at: row.try_get("occurred_at").map_err(bad("read occurred_at"))?,
        cell_id: row.try_get("cell_id").map_err(bad("read cell_id"))?,
        region: row.try_get("region").map_err(bad("read region"))?,
        partition: row.try_get("partition").map_err(bad("read partition"))?,
        status: Status::from_wire(&status).unwrap_or(Status::Submitted),
        previous_status: previous.as_deref().and_then(Status::from_wire),
        event_id: row.try_get("event_id").map_err(bad("read event_id"))?,
        amount: row.try_get("amount").map_err(bad("read amount"))?,
        currency: row.try_get("currency").map_err(bad("read currency"))?,
        submitted_at: row.try_get("submitted_at").map_err(bad("read submitted_at"))?,
        previous_occurred_at: row.try_get("previous_occurred_at").map_err(bad("read previous_occurred_at"))?,
        issue_date: row.try_get("issue_date").map_err(bad("read issue_date"))?,
        due_date: row.try_get("due_date").map_err(bad("read due_date"))?,
        net_days: row.try_get("net_days").map_err(bad("read net_days"))?,
        vendor_id: row.try_get("vendor_id").map_err(bad("read vendor_id"))?,
        vendor_country: row.try_get("vendor_country").map_err(bad("read vendor_country"))?,
        reason: row.try_get("reason").map_err(bad("read reason"))?,
        stage_latency_ms: row.try_get("stage_latency_ms").map_err(bad("read stage_latency_ms"))?,
        end_to_end_latency_ms: row.try_get("end_to_end_latency_ms").map_err(bad("read end_to_end_latency_ms"))?,
        producer: row.try_get("producer").map_err(bad("read producer"))?,
        version: row.try_get("version").map_err(bad("read version"))?,
    };
    let stored_at = row.try_get("stored_at").map_err(bad("read stored_at"))?;
    Ok((r, stored_at))
}

/// What to do with a row whose key is stored.
enum Decision {
    Outcome(RowOutcome),
    Replace { old: Box<StatusRow>, stored_at: DateTime<Utc> },
}

fn decide(new: &StatusRow, old: StatusRow, stored_at: DateTime<Utc>) -> Decision {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match old.version.cmp(&new.version) {
        Equal => {
            let fields = old.differences(new);
            Decision::Outcome(if fields.is_empty() { RowOutcome::Duplicate } else { RowOutcome::Conflict { fields } })
        }
        Greater => Decision::Outcome(RowOutcome::Stale { stored: old.version }),
        Less => Decision::Replace { old: Box::new(old), stored_at },
    }
}

async fn write_round<C: GenericClient + Sync>(
    tx: &C,
    st: &Statements,
    rows: &[&StatusRow],
    commit: bool,
) -> Result<Vec<RowOutcome>, StoreError> {
    let columns = Columns::of(rows);
    let inserted: HashMap<RowKey, DateTime<Utc>> = tx
        .query(&st.insert, &columns.params())
        .await
        .map_err(|e| StoreError::new("insert", e))?
        .iter()
        .map(|r| {
            let stage: &str = r.get(1);
            ((r.get(0), Stage::from_wire(stage).unwrap_or(Stage::Ingestion), r.get(2)), r.get(3))
        })
        .collect();
    let mut outcomes: Vec<Option<RowOutcome>> = vec![None; rows.len()];
    let mut rollup = Rollup::default();
    let mut changed: Vec<&StatusRow> = Vec::new();
    let mut replaced: Vec<&StatusRow> = Vec::new();
    let mut others = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match inserted.get(&row.key()) {
            Some(stored_at) => {
                outcomes[i] = Some(RowOutcome::Inserted);
                rollup.add(row, *stored_at, 1);
                changed.push(row);
            }
            None => others.push(i),
        }
    }
    if !others.is_empty() {
        let keys = Columns::of(&others.iter().map(|i| rows[*i]).collect::<Vec<_>>());
        let existing: HashMap<RowKey, (StatusRow, DateTime<Utc>)> = tx
            .query(&st.existing, &[&keys.invoice_id, &keys.stage, &keys.occurred_at])
            .await
            .map_err(|e| StoreError::new("read stored rows", e))?
            .iter()
            .map(|r| read_row(r).map(|(row, stored)| (row.key(), (row, stored))))
            .collect::<Result<_, _>>()?;
        for i in others {
            let row = rows[i];
            let Some((old, stored_at)) = existing.get(&row.key()).cloned() else {
                // ON CONFLICT found the key, so it is stored and, read
                // committed, visible now; only a dropped partition removes it.
                outcomes[i] = Some(RowOutcome::Invalid {
                    sqlstate: None,
                    message: "its key conflicted with a row that could not be read back".into(),
                });
                continue;
            };
            match decide(row, old, stored_at) {
                Decision::Outcome(o) => outcomes[i] = Some(o),
                Decision::Replace { old, stored_at } => {
                    outcomes[i] = Some(RowOutcome::Replaced { previous: old.version });
                    rollup.add(&old, stored_at, -1);
                    rollup.add(row, stored_at, 1);
                    rollup.replaced(&old, row);
                    changed.push(row);
                    replaced.push(row);
                }
            }
        }
    }
    if !replaced.is_empty() {
        let columns = Columns::of(&replaced);
        tx.execute(&st.update, &columns.params()).await.map_err(|e| StoreError::new("replace", e))?;
    }
    // The inserted rows' first versions went in with them; a replaced
    // row's new version is appended here.
    let versions = Columns::of(&replaced);
    let invoices = Invoices::of(&changed);
    let (version_params, invoice_params) = (versions.params(), invoices.params());
    let mut statements: Vec<(&Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
    if !replaced.is_empty() {
        statements.push((&st.versions, version_params.to_vec()));
    }
    if !changed.is_empty() {
        statements.push((&st.invoices, invoice_params.to_vec()));
    }
    // Keys in order, so that two transactions touching the same rows lock
    // them in the same order.
    let status_rows: Vec<_> = rollup.status.iter().filter(|(_, d)| !d.is_zero()).collect();
    let money_rows: Vec<_> = rollup.money.iter().filter(|(_, d)| d.0 != 0 || !d.1.is_zero()).collect();
    for ((minute, stage, partition), d) in &status_rows {
        statements.push((
            &st.status_minute,
            vec![minute, stage, partition, &d.changes, &d.synthetic, &d.visibility, &d.stage_latency, &d.end_to_end],
        ));
    }
    for ((minute, partition, currency, week, days), (n, amount)) in &money_rows {
        statements.push((&st.money_minute, vec![minute, partition, currency, week, days, n, amount]));
    }
    // A minute being recomputed reads this round's rows itself.
    let canary = bems_core::contract::CANARY_PRODUCER;
    for (key, (amounts, ids)) in rollup.largest.iter().filter(|(k, _)| !rollup.recompute.contains(*k)) {
        statements.push((&st.largest_merge, vec![&key.0, &key.1, &key.2, amounts, ids]));
    }
    for key in &rollup.recompute {
        statements.push((&st.largest_recompute, vec![&key.0, &key.1, &key.2, &canary]));
    }
    if commit {
        statements.push((&st.commit, Vec::new()));
    }
    // Pipelined: one round trip for all of them.
    if !statements.is_empty() {
        try_join_all(statements.iter().map(|(statement, params)| tx.execute(*statement, params)))
            .await
            .map_err(|e| StoreError::new("versions, invoices, rollups and commit", e))?;
    }
    Ok(outcomes.into_iter().map(|o| o.unwrap_or(RowOutcome::Duplicate)).collect())
}

/// The invoices table's change: per invoice, the earliest time and the
/// latest status change among the rows written.
struct Invoices<'a> {
    invoice_id: Vec<&'a str>,
    partition: Vec<i16>,
    producer: Vec<&'a str>,
    first_seen: Vec<DateTime<Utc>>,
    latest_at: Vec<DateTime<Utc>>,
    latest_version: Vec<DateTime<Utc>>,
    latest_stage: Vec<&'static str>,
    latest_status: Vec<&'static str>,
    latest_event_id: Vec<uuid::Uuid>,
    terminal: Vec<bool>,
}

impl<'a> Invoices<'a> {
    fn of(rows: &[&'a StatusRow]) -> Invoices<'a> {
        let mut per: BTreeMap<&str, (DateTime<Utc>, &StatusRow)> = BTreeMap::new();
        for r in rows {
            let e = per.entry(r.invoice_id.as_str()).or_insert((r.occurred_at, r));
            e.0 = e.0.min(r.occurred_at);
            if (r.occurred_at, r.version) >= (e.1.occurred_at, e.1.version) {
                e.1 = r;
            }
        }
        let latest: Vec<(&str, DateTime<Utc>, &StatusRow)> = per.into_iter().map(|(k, (f, r))| (k, f, r)).collect();
        Invoices {
            invoice_id: latest.iter().map(|l| l.0).collect(),
            partition: latest.iter().map(|l| l.2.partition).collect(),
            producer: latest.iter().map(|l| l.2.producer.as_str()).collect(),
            first_seen: latest.iter().map(|l| l.1).collect(),
            latest_at: latest.iter().map(|l| l.2.occurred_at).collect(),
            latest_version: latest.iter().map(|l| l.2.version).collect(),
            latest_stage: latest.iter().map(|l| l.2.stage.as_str()).collect(),
            latest_status: latest.iter().map(|l| l.2.status.as_str()).collect(),
            latest_event_id: latest.iter().map(|l| l.2.event_id).collect(),
            terminal: latest.iter().map(|l| l.2.status.is_terminal()).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.invoice_id,
            &self.partition,
            &self.producer,
            &self.first_seen,
            &self.latest_at,
            &self.latest_version,
            &self.latest_stage,
            &self.latest_status,
            &self.latest_event_id,
            &self.terminal,
        ]
    }
}

/// The change of one `status_minute` row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatusDelta {
    changes: i64,
    synthetic: i64,
    visibility: Vec<i64>,
    stage_latency: Vec<i64>,
    end_to_end: Vec<i64>,
}

impl Default for StatusDelta {
    fn default() -> StatusDelta {
        StatusDelta {
            changes: 0,
            synthetic: 0,
            visibility: vec![0; BUCKETS],
            stage_latency: vec![0; BUCKETS],
            end_to_end: vec![0; BUCKETS],
        }
    }
}

impl StatusDelta {
    fn is_zero(&self) -> bool {
        self.changes == 0
            && self.synthetic == 0
            && [&self.visibility, &self.stage_latency, &self.end_to_end].iter().all(|h| h.iter().all(|c| *c == 0))
    }
}

type StatusKey = (DateTime<Utc>, &'static str, i16);
type MoneyKey = (DateTime<Utc>, i16, String, NaiveDate, i16);
type LargestKey = (DateTime<Utc>, i16, String);

/// The rollups' change from the rows a round wrote.
#[derive(Default)]
struct Rollup {
    status: BTreeMap<StatusKey, StatusDelta>,
    money: BTreeMap<MoneyKey, (i64, Decimal)>,
    /// New submissions, to merge into their minute's largest.
    largest: BTreeMap<LargestKey, (Vec<Decimal>, Vec<String>)>,
    /// Minutes whose largest a replaced submission changes: recomputed
    /// from the rows.
    recompute: std::collections::BTreeSet<LargestKey>,
}

/// The minute of `at`.
pub(crate) fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(chrono::Duration::minutes(1)).unwrap_or(at)
}

impl Rollup {
    /// Adds (`sign` 1) or takes away (-1) `row`'s contribution, stored at
    /// `stored_at`.
    fn add(&mut self, row: &StatusRow, stored_at: DateTime<Utc>, sign: i64) {
        let minute = minute_of(row.occurred_at);
        let d = self.status.entry((minute, row.stage.as_str(), row.partition)).or_default();
        if row.is_synthetic() {
            d.synthetic += sign;
            return;
        }
        d.changes += sign;
        d.visibility[histogram::bucket((stored_at - row.occurred_at).num_milliseconds())] += sign;
        if let Some(ms) = row.stage_latency_ms {
            d.stage_latency[histogram::bucket(ms)] += sign;
        }
        if let (Status::Posted, Some(ms)) = (row.status, row.end_to_end_latency_ms) {
            d.end_to_end[histogram::bucket(ms)] += sign;
        }
        if row.status == Status::Submitted {
            let key = (minute, row.partition, row.currency.clone(), week_start(row.due_date), row.net_days);
            let m = self.money.entry(key).or_default();
            m.0 += sign;
            m.1 += if sign < 0 { -row.amount } else { row.amount };
            let key = (minute, row.partition, row.currency.clone());
            if sign > 0 {
                let l = self.largest.entry(key).or_default();
                l.0.push(row.amount);
                l.1.push(row.invoice_id.clone());
            }
        }
    }

    /// A replacement of `old` by `new`: the largest of their minutes are
    /// recomputed when either was a submission (synthetic or not: the
    /// recomputation reads the rows as they are).
    fn replaced(&mut self, old: &StatusRow, new: &StatusRow) {
        for row in [old, new] {
            if row.status == Status::Submitted {
                self.recompute.insert((minute_of(row.occurred_at), row.partition, row.currency.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> StatusRow {
        let event = bems_core::Validator::default()
            .parse(include_bytes!("../../../bems-core/fixtures/example-invoice-event.json"))
            .expect("fixture");
        StatusRow::new(&event, "2026-11-26T13:45:01Z".parse().expect("time"))
    }

    #[test]
    fn a_stored_row_is_a_duplicate_a_conflict_stale_or_replaced_by_version() {
        let stored_at: DateTime<Utc> = "2026-11-26T13:45:02Z".parse().expect("time");
        let new = row();
        assert!(matches!(decide(&new, row(), stored_at), Decision::Outcome(RowOutcome::Duplicate)));
        let mut other = row();
        other.vendor_id = "V-9".into();
        assert!(matches!(
            decide(&new, other.clone(), stored_at),
            Decision::Outcome(RowOutcome::Conflict { fields }) if fields == ["vendor_id"]
        ));
        other.version = new.version + chrono::Duration::seconds(5);
        assert!(matches!(decide(&new, other.clone(), stored_at), Decision::Outcome(RowOutcome::Stale { .. })));
        other.version = new.version - chrono::Duration::seconds(5);
        assert!(matches!(decide(&new, other, stored_at), Decision::Replace { .. }));
    }

    #[test]
    fn a_replacement_moves_the_rollup_by_the_difference_only() {
        let stored_at: DateTime<Utc> = "2026-11-26T13:45:02Z".parse().expect("time");
        let mut old = row();
        old.stage_latency_ms = Some(300);
        let mut new = old.clone();
        new.stage_latency_ms = Some(700);
        let mut rollup = Rollup::default();
        rollup.add(&old, stored_at, -1);
        rollup.add(&new, stored_at, 1);
        let (_, d) = rollup.status.iter().next().expect("one key");
        assert_eq!((d.changes, d.synthetic), (0, 0));
        assert!(d.visibility.iter().all(|c| *c == 0), "same stored_at, same visibility");
        assert_eq!(d.stage_latency[histogram::bucket(700)], 1);
        assert_eq!(d.stage_latency[histogram::bucket(300)], -1);
        assert_eq!(d.stage_latency.iter().sum::<i64>(), 0, "the old value out, the new one in");
    }

    #[test]
    fn statements_list_every_column_once() {
        let names: std::collections::HashSet<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), COLUMNS.len());
        assert!(unnest_all().starts_with("unnest($1::text[], $2::text[], $3::timestamptz[]"));
        assert!(unnest_all().ends_with("producer, version)"));
    }
}
