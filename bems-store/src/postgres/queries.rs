//! The query layer on PostgreSQL, over either transport.
//!
//! Panels over a window read the rollups for the window's closed minutes
//! and the raw rows for the open one (the minute of the server's `now()`),
//! so a panel costs about the same whatever the event rate: the rollup has
//! one row per minute and message group, the open minute at most a
//! minute's rows (found through the BRIN index on `occurred_at`).
//!
//! Each question is one function over a [`SqlStore`] (a store's schema
//! and an [`Executor`]): [`PgQueries`] runs it on a connection, the Data
//! API's query layer (feature `data-api`) through the RDS Data API, with
//! the same SQL.

use std::sync::Arc;

use bems_core::contract::CANARY_PRODUCER;
use bems_core::{Stage, Status};
use chrono::DateTime;

use super::sql::{Executor, Param, Row, array_literal};
use super::{ENGINE, Postgres, Schema, StoreError};
use crate::histogram::{self, BUCKETS, LATENCY_BOUNDS_MS};
use crate::query::{
    ArchivedMonth, HistoryEntry, Latencies, MoneyRow, OpenInvoice, Queries, QueryError, StageCount, Submitted, Window,
};

/// A PostgreSQL store the query layer reads: its schema, and where its
/// statements run.
pub trait SqlStore: Executor {
    /// The cell's schema.
    fn schema(&self) -> &Schema;
}

/// The query layer over one store, on a connection: opened on first use
/// and again after it breaks, shared by concurrent queries (PostgreSQL
/// pipelines them).
pub struct PgQueries {
    pg: Postgres,
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl std::fmt::Debug for PgQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQueries").field("pg", &self.pg).finish_non_exhaustive()
    }
}

fn bad(query: &'static str, column: &'static str, value: &str) -> QueryError {
    QueryError::BadValue { engine: ENGINE, query, column, value: value.to_owned() }
}

fn stage(query: &'static str, text: &str) -> Result<Stage, QueryError> {
    Stage::from_wire(text).ok_or_else(|| bad(query, "stage", text))
}

fn status(query: &'static str, text: &str) -> Result<Status, QueryError> {
    Status::from_wire(text).ok_or_else(|| bad(query, "status", text))
}

fn count(query: &'static str, n: i64) -> Result<u64, QueryError> {
    u64::try_from(n).map_err(|_| bad(query, "count", &n.to_string()))
}

impl PgQueries {
    /// The query layer over `pg`.
    pub fn new(pg: Postgres) -> PgQueries {
        PgQueries { pg, client: tokio::sync::Mutex::new(None) }
    }

    /// Where it reads.
    pub fn postgres(&self) -> &Postgres {
        &self.pg
    }

    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, QueryError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let client = Arc::new(self.pg.connect().await?);
        *guard = Some(client.clone());
        Ok(client)
    }
}

impl Executor for PgQueries {
    async fn rows(&self, query: &'static str, sql: &str, params: &[Param]) -> Result<Vec<Row>, QueryError> {
        let client = self.client().await?;
        let rows = client.query(sql, &super::sql::bound(params)).await.map_err(|e| StoreError::new(query, e))?;
        rows.iter().map(|r| super::sql::from_pg(query, r)).collect()
    }
}

impl SqlStore for PgQueries {
    fn schema(&self) -> &Schema {
        self.pg.schema()
    }
}

/// `store`'s table `name`, schema-qualified.
fn t(store: &impl SqlStore, name: &str) -> String {
    store.schema().table(name)
}

async fn entries(
    store: &impl SqlStore,
    step: &'static str,
    table: &str,
    invoice: &str,
) -> Result<Vec<HistoryEntry>, QueryError> {
    let sql = format!(
        "SELECT occurred_at, stage, status, previous_status, event_id, amount, currency, due_date, \
           stage_latency_ms, end_to_end_latency_ms, reason, version, stored_at \
         FROM {} WHERE invoice_id = $1 \
           AND occurred_at >= coalesce((SELECT first_seen FROM {} WHERE invoice_id = $1), '-infinity') \
         ORDER BY occurred_at, stage, version",
        t(store, table),
        t(store, "invoices")
    );
    let mut out = Vec::new();
    for r in store.rows(step, &sql, &[Param::Text(invoice.to_owned())]).await? {
        out.push(HistoryEntry {
            occurred_at: r.time(0)?,
            stage: stage(step, &r.text(1)?)?,
            status: status(step, &r.text(2)?)?,
            previous_status: r.opt_text(3)?.as_deref().map(|p| status(step, p)).transpose()?,
            event_id: r.text(4)?,
            amount: Some(r.decimal(5)?),
            currency: Some(r.text(6)?),
            due_date: Some(r.date(7)?),
            stage_latency_ms: r.opt_int(8)?,
            end_to_end_latency_ms: r.opt_int(9)?,
            reason: r.opt_text(10)?,
            version: Some(r.time(11)?),
            stored_at: Some(r.time(12)?),
        });
    }
    Ok(out)
}

/// Every question, the same SQL over either transport.
impl<S: SqlStore> Queries for S {
    async fn history(&self, invoice: &str) -> Result<Vec<HistoryEntry>, QueryError> {
        entries(self, "history", "status_changes", invoice).await
    }

    async fn versions(&self, invoice: &str) -> Result<Vec<HistoryEntry>, QueryError> {
        entries(self, "versions", "status_change_versions", invoice).await
    }

    async fn archived(&self, invoice: &str) -> Result<Vec<ArchivedMonth>, QueryError> {
        let step = "archived";
        // A schema not yet migrated to version 2 has archived nothing: its
        // history still answers.
        let table = Param::Text(t(self, "archives"));
        let exists = self.rows(step, "SELECT to_regclass($1) IS NOT NULL", &[table]).await?;
        if !exists.first().map(|r| r.boolean(0)).transpose()?.unwrap_or(false) {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT a.month, a.location, v.location FROM {archives} a \
               JOIN {invoices} i ON i.invoice_id = $1 \
               LEFT JOIN {archives} v ON v.month = a.month AND v.table_name = 'status_change_versions' \
             WHERE a.table_name = 'status_changes' \
               AND a.month >= date_trunc('month', i.first_seen AT TIME ZONE 'UTC')::date \
               AND a.month <= (i.latest_at AT TIME ZONE 'UTC')::date \
             ORDER BY a.month",
            archives = t(self, "archives"),
            invoices = t(self, "invoices")
        );
        let mut out = Vec::new();
        for r in self.rows(step, &sql, &[Param::Text(invoice.to_owned())]).await? {
            out.push(ArchivedMonth { month: r.date(0)?, changes: r.text(1)?, versions: r.opt_text(2)? });
        }
        Ok(out)
    }

    async fn open_invoices(&self, window: Window, sla_secs: u32, limit: u32) -> Result<Vec<OpenInvoice>, QueryError> {
        let step = "open invoices";
        let (since, cutoff) = (window.from, window.to - chrono::Duration::seconds(i64::from(sla_secs)));
        let sql = format!(
            "SELECT invoice_id, latest_stage, latest_status, latest_event_id, latest_at FROM {} \
             WHERE NOT terminal AND latest_at >= $1 AND latest_at < $2 ORDER BY latest_at LIMIT $3",
            t(self, "invoices")
        );
        let params = [Param::Time(since), Param::Time(cutoff), Param::Int(i64::from(limit))];
        let mut out = Vec::new();
        for r in self.rows(step, &sql, &params).await? {
            out.push(OpenInvoice {
                invoice_id: r.text(0)?,
                stage: stage(step, &r.text(1)?)?,
                status: status(step, &r.text(2)?)?,
                event_id: r.text(3)?,
                last_change: r.time(4)?,
            });
        }
        Ok(out)
    }

    async fn stage_counts(&self, window: Window, bucket_secs: u32) -> Result<Vec<StageCount>, QueryError> {
        let step = "stage counts";
        let bucket = i64::from(bucket_secs.max(1));
        let canary = Param::Text(CANARY_PRODUCER.to_owned());
        // Whole minutes come from the rollup; a finer bucket needs the rows.
        let (sql, params) = if bucket % 60 == 0 {
            let sql = format!(
                "SELECT minute, stage, sum(changes)::int8 FROM {rollup} \
                   WHERE minute >= date_trunc('minute', $1::timestamptz) AND minute < date_trunc('minute', now()) \
                     AND minute < $2 GROUP BY 1, 2 \
                 UNION ALL \
                 SELECT date_trunc('minute', occurred_at), stage, count(*) FROM {rows} \
                   WHERE occurred_at >= greatest(date_trunc('minute', now()), date_trunc('minute', $1::timestamptz)) \
                     AND occurred_at < $2 AND producer <> $3 GROUP BY 1, 2",
                rollup = t(self, "status_minute"),
                rows = t(self, "status_changes"),
            );
            (sql, vec![Param::Time(window.from), Param::Time(window.to), canary])
        } else {
            let sql = format!(
                "SELECT date_bin(make_interval(secs => $4::float8), occurred_at, timestamptz 'epoch'), stage, count(*) FROM {} \
                   WHERE occurred_at >= $1 AND occurred_at < $2 AND producer <> $3 GROUP BY 1, 2",
                t(self, "status_changes")
            );
            #[allow(clippy::cast_precision_loss)] // at most 4,294,967,295 seconds: exact in an f64
            let seconds = bucket as f64;
            (sql, vec![Param::Time(window.from), Param::Time(window.to), canary, Param::Float(seconds)])
        };
        let mut sums: std::collections::BTreeMap<(i64, Stage), u64> = std::collections::BTreeMap::new();
        for r in self.rows(step, &sql, &params).await? {
            let start = r.time(0)?.timestamp().div_euclid(bucket) * bucket;
            *sums.entry((start, stage(step, &r.text(1)?)?)).or_default() += count(step, r.int(2)?)?;
        }
        Ok(sums
            .into_iter()
            .map(|((start, stage), changes)| StageCount {
                bucket: DateTime::from_timestamp(start, 0).unwrap_or_default(),
                stage,
                changes,
            })
            .collect())
    }

    async fn latencies(&self, window: Window) -> Result<Latencies, QueryError> {
        let step = "latencies";
        // The closed minutes: one row of per-bucket sums of the three
        // histograms (element by element: cheaper than unnesting every
        // array); the open minute: its rows, bucketed in one pass.
        let sums: Vec<String> = ["visibility_ms", "stage_latency_ms", "end_to_end_ms"]
            .iter()
            .flat_map(|column| (1..=BUCKETS).map(move |i| format!("coalesce(sum({column}[{i}]), 0)::int8")))
            .collect();
        let rollup = format!(
            "SELECT {} FROM {} WHERE minute >= date_trunc('minute', $1::timestamptz) \
               AND minute < date_trunc('minute', now()) AND minute < $2",
            sums.join(", "),
            t(self, "status_minute")
        );
        let rows = format!(
            "SELECT v, s, e, count(*) FROM ( \
               SELECT width_bucket(greatest(0, trunc(extract(epoch FROM stored_at - occurred_at) * 1000))::int8, $3::text::int8[]) AS v, \
                      CASE WHEN stage_latency_ms IS NOT NULL \
                        THEN width_bucket(greatest(0, stage_latency_ms), $3::text::int8[]) END AS s, \
                      CASE WHEN status = 'posted' AND end_to_end_latency_ms IS NOT NULL \
                        THEN width_bucket(greatest(0, end_to_end_latency_ms), $3::text::int8[]) END AS e \
               FROM {} WHERE occurred_at >= greatest(date_trunc('minute', now()), date_trunc('minute', $1::timestamptz)) \
                 AND occurred_at < $2 AND producer <> $4 \
             ) r GROUP BY GROUPING SETS ((v), (s), (e))",
            t(self, "status_changes")
        );
        let closed_params = [Param::Time(window.from), Param::Time(window.to)];
        let open_params = [
            Param::Time(window.from),
            Param::Time(window.to),
            Param::Text(array_literal(&LATENCY_BOUNDS_MS)),
            Param::Text(CANARY_PRODUCER.to_owned()),
        ];
        let (closed, open) =
            tokio::try_join!(self.rows(step, &rollup, &closed_params), self.rows(step, &rows, &open_params))?;
        let closed = closed.first().ok_or(QueryError::MissingColumn { engine: ENGINE, query: step, column: "sums" })?;
        let mut hist = [[0_i64; BUCKETS]; 3];
        for (k, h) in hist.iter_mut().enumerate() {
            for (i, slot) in h.iter_mut().enumerate() {
                *slot = closed.int(k * BUCKETS + i)?;
            }
        }
        for r in open {
            let n = r.int(3)?;
            // At most one of the three is set in a grouping-set row (a
            // row without that latency has none, and counts nowhere;
            // GREATEST would have made its null a 0, hence the CASEs).
            for (k, h) in hist.iter_mut().enumerate() {
                if let Some(b) = r.opt_int(k)? {
                    let i = usize::try_from(b - 1).map_err(|_| bad(step, "bucket", &b.to_string()))?;
                    if let Some(slot) = h.get_mut(i) {
                        *slot += n;
                    }
                }
            }
        }
        Ok(Latencies {
            visibility: Some(histogram::summarize(&hist[0])),
            stage: histogram::summarize(&hist[1]),
            end_to_end: histogram::summarize(&hist[2]),
        })
    }

    async fn money(&self, window: Window) -> Result<Vec<MoneyRow>, QueryError> {
        let step = "money";
        let sql = format!(
            "SELECT currency, due_week, net_days, sum(invoices)::int8, sum(amount) FROM ( \
               SELECT currency, due_week, net_days, invoices, amount FROM {rollup} \
                 WHERE minute >= date_trunc('minute', $1::timestamptz) AND minute < date_trunc('minute', now()) \
                   AND minute < $2 \
               UNION ALL \
               SELECT currency, date_trunc('week', due_date)::date, net_days, 1, amount FROM {rows} \
                 WHERE occurred_at >= greatest(date_trunc('minute', now()), date_trunc('minute', $1::timestamptz)) \
                   AND occurred_at < $2 AND producer <> $3 AND status = 'submitted' \
             ) m GROUP BY 1, 2, 3 HAVING sum(invoices) <> 0 ORDER BY 1, 2, 3",
            rollup = t(self, "money_minute"),
            rows = t(self, "status_changes"),
        );
        let params = [Param::Time(window.from), Param::Time(window.to), Param::Text(CANARY_PRODUCER.to_owned())];
        let mut out = Vec::new();
        for r in self.rows(step, &sql, &params).await? {
            let net_days = r.int(2)?;
            out.push(MoneyRow {
                currency: r.text(0)?,
                due_week: r.date(1)?,
                net_days: i16::try_from(net_days).map_err(|_| bad(step, "net_days", &net_days.to_string()))?,
                invoices: count(step, r.int(3)?)?,
                amount: r.decimal(4)?,
            });
        }
        Ok(out)
    }

    async fn largest_submitted(
        &self,
        window: Window,
        rates: &[(&str, f64)],
        limit: u32,
    ) -> Result<Vec<Submitted>, QueryError> {
        let step = "largest submitted";
        // The closed minutes' ten largest per partition and currency (the
        // largest of the window at any rates are among them), the open
        // minute's submissions, ranked; then each one's vendor and due date.
        let sql = format!(
            "WITH candidates AS ( \
               SELECT u.invoice_id, u.amount, l.currency FROM {largest} l, \
                 unnest(l.invoice_ids, l.amounts) AS u(invoice_id, amount) \
               WHERE l.minute >= date_trunc('minute', $1::timestamptz) AND l.minute < date_trunc('minute', now()) \
                 AND l.minute < $2 \
               UNION ALL \
               SELECT invoice_id, amount, currency FROM {rows} \
               WHERE occurred_at >= greatest(date_trunc('minute', now()), date_trunc('minute', $1::timestamptz)) \
                 AND occurred_at < $2 AND producer <> $3 AND status = 'submitted' \
             ), top AS ( \
               SELECT c.invoice_id, c.amount, c.currency, \
                 row_number() OVER (ORDER BY c.amount::float8 * coalesce(r.rate, 1) DESC, c.invoice_id) AS rank \
               FROM candidates c LEFT JOIN unnest($4::text::text[], $5::text::float8[]) AS r(currency, rate) \
                 ON r.currency = c.currency \
               ORDER BY rank LIMIT $6 \
             ) \
             SELECT t.invoice_id, t.amount, t.currency, s.vendor_id, s.due_date FROM top t \
             JOIN LATERAL (SELECT vendor_id, due_date FROM {rows} s \
               WHERE s.invoice_id = t.invoice_id AND s.status = 'submitted' AND s.amount = t.amount \
                 AND s.occurred_at >= date_trunc('minute', $1::timestamptz) AND s.occurred_at < $2 \
               ORDER BY s.occurred_at LIMIT 1) s ON true \
             ORDER BY t.rank",
            largest = t(self, "largest_minute"),
            rows = t(self, "status_changes"),
        );
        let (currencies, factors): (Vec<&str>, Vec<f64>) = rates.iter().copied().unzip();
        let params = [
            Param::Time(window.from),
            Param::Time(window.to),
            Param::Text(CANARY_PRODUCER.to_owned()),
            Param::Text(array_literal(&currencies)),
            Param::Text(array_literal(&factors)),
            Param::Int(i64::from(limit)),
        ];
        let mut out = Vec::new();
        for r in self.rows(step, &sql, &params).await? {
            out.push(Submitted {
                invoice_id: r.text(0)?,
                amount: r.decimal(1)?,
                currency: r.text(2)?,
                vendor_id: r.text(3)?,
                due_date: r.date(4)?,
            });
        }
        Ok(out)
    }

    async fn visible(&self, window: Window) -> Result<u64, QueryError> {
        let step = "visible";
        let sql = format!(
            "SELECT (SELECT coalesce(sum(changes + synthetic), 0)::int8 FROM {rollup} \
                       WHERE minute >= date_trunc('minute', $1::timestamptz) \
                         AND minute < date_trunc('minute', now()) AND minute < $2) \
                  + (SELECT count(*) FROM {rows} \
                       WHERE occurred_at >= greatest(date_trunc('minute', now()), date_trunc('minute', $1::timestamptz)) \
                         AND occurred_at < $2)",
            rollup = t(self, "status_minute"),
            rows = t(self, "status_changes"),
        );
        let rows = self.rows(step, &sql, &[Param::Time(window.from), Param::Time(window.to)]).await?;
        count(step, rows.first().map_or(Ok(0), |r| r.int(0))?)
    }
}
