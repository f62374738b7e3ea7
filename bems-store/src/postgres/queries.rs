//! The query layer on PostgreSQL.
//!
//! Panels over a window read the rollups for the window's closed minutes
//! and the raw rows for the open one (the minute of the server's `now()`),
//! so a panel costs about the same whatever the event rate: the rollup has
//! one row per minute and message group, the open minute at most a
//! minute's rows (found through the BRIN index on `occurred_at`).

use std::sync::Arc;

use bems_core::contract::CANARY_PRODUCER;
use bems_core::{Stage, Status};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use tokio_postgres::types::ToSql;

use super::{ENGINE, Postgres, StoreError};
use crate::histogram::{self, BUCKETS, LATENCY_BOUNDS_MS};
use crate::query::{
    HistoryEntry, Latencies, MoneyRow, OpenInvoice, Queries, QueryError, StageCount, Submitted, Window,
};

/// The query layer over one store: one connection, opened on first use
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

    async fn query(
        &self,
        step: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, QueryError> {
        let client = self.client().await?;
        client.query(sql, params).await.map_err(|e| StoreError::new(step, e).into())
    }

    fn t(&self, name: &str) -> String {
        self.pg.schema().table(name)
    }

    async fn entries(&self, step: &'static str, table: &str, invoice: &str) -> Result<Vec<HistoryEntry>, QueryError> {
        let sql = format!(
            "SELECT occurred_at, stage, status, previous_status, event_id, amount, currency, due_date, \
               stage_latency_ms, end_to_end_latency_ms, reason, version, stored_at \
             FROM {} WHERE invoice_id = $1 \
               AND occurred_at >= coalesce((SELECT first_seen FROM {} WHERE invoice_id = $1), '-infinity') \
             ORDER BY occurred_at, stage, version",
            self.t(table),
            self.t("invoices")
        );
        let mut out = Vec::new();
        for r in self.query(step, &sql, &[&invoice]).await? {
            let previous: Option<String> = r.get(3);
            out.push(HistoryEntry {
                occurred_at: r.get(0),
                stage: stage(step, r.get(1))?,
                status: status(step, r.get(2))?,
                previous_status: previous.as_deref().map(|p| status(step, p)).transpose()?,
                event_id: r.get::<_, uuid::Uuid>(4).to_string(),
                amount: Some(r.get(5)),
                currency: Some(r.get(6)),
                due_date: Some(r.get(7)),
                stage_latency_ms: r.get(8),
                end_to_end_latency_ms: r.get(9),
                reason: r.get(10),
                version: Some(r.get(11)),
                stored_at: Some(r.get(12)),
            });
        }
        Ok(out)
    }
}

impl Queries for PgQueries {
    async fn history(&self, invoice: &str) -> Result<Vec<HistoryEntry>, QueryError> {
        self.entries("history", "status_changes", invoice).await
    }

    async fn versions(&self, invoice: &str) -> Result<Vec<HistoryEntry>, QueryError> {
        self.entries("versions", "status_change_versions", invoice).await
    }

    async fn open_invoices(&self, window: Window, sla_secs: u32, limit: u32) -> Result<Vec<OpenInvoice>, QueryError> {
        let step = "open invoices";
        let (since, cutoff) = (window.from, window.to - chrono::Duration::seconds(i64::from(sla_secs)));
        let sql = format!(
            "SELECT invoice_id, latest_stage, latest_status, latest_event_id, latest_at FROM {} \
             WHERE NOT terminal AND latest_at >= $1 AND latest_at < $2 ORDER BY latest_at LIMIT $3",
            self.t("invoices")
        );
        let mut out = Vec::new();
        for r in self.query(step, &sql, &[&since, &cutoff, &i64::from(limit)]).await? {
            out.push(OpenInvoice {
                invoice_id: r.get(0),
                stage: stage(step, r.get(1))?,
                status: status(step, r.get(2))?,
                event_id: r.get::<_, uuid::Uuid>(3).to_string(),
                last_change: r.get(4),
            });
        }
        Ok(out)
    }

    async fn stage_counts(&self, window: Window, bucket_secs: u32) -> Result<Vec<StageCount>, QueryError> {
        let step = "stage counts";
        let bucket = i64::from(bucket_secs.max(1));
        // Whole minutes come from the rollup; a finer bucket needs the rows.
        let sql = if bucket % 60 == 0 {
            format!(
                "SELECT minute, stage, sum(changes)::int8 FROM {rollup} \
                   WHERE minute >= date_trunc('minute', $1::timestamptz) AND minute < date_trunc('minute', now()) \
                     AND minute < $2 GROUP BY 1, 2 \
                 UNION ALL \
                 SELECT date_trunc('minute', occurred_at), stage, count(*) FROM {rows} \
                   WHERE occurred_at >= greatest(date_trunc('minute', now()), date_trunc('minute', $1::timestamptz)) \
                     AND occurred_at < $2 AND producer <> $3 GROUP BY 1, 2",
                rollup = self.t("status_minute"),
                rows = self.t("status_changes"),
            )
        } else {
            format!(
                "SELECT date_bin(make_interval(secs => $4::float8), occurred_at, timestamptz 'epoch'), stage, count(*) FROM {} \
                   WHERE occurred_at >= $1 AND occurred_at < $2 AND producer <> $3 GROUP BY 1, 2",
                self.t("status_changes")
            )
        };
        let canary = CANARY_PRODUCER;
        let bucket_f = bucket as f64;
        let rows = if bucket % 60 == 0 {
            self.query(step, &sql, &[&window.from, &window.to, &canary]).await?
        } else {
            self.query(step, &sql, &[&window.from, &window.to, &canary, &bucket_f]).await?
        };
        let mut sums: std::collections::BTreeMap<(i64, Stage), u64> = std::collections::BTreeMap::new();
        for r in rows {
            let at: DateTime<Utc> = r.get(0);
            let s = stage(step, r.get(1))?;
            let start = at.timestamp().div_euclid(bucket) * bucket;
            *sums.entry((start, s)).or_default() += count(step, r.get(2))?;
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
            self.t("status_minute")
        );
        let rows = format!(
            "SELECT v, s, e, count(*) FROM ( \
               SELECT width_bucket(greatest(0, trunc(extract(epoch FROM stored_at - occurred_at) * 1000))::int8, $3::int8[]) AS v, \
                      CASE WHEN stage_latency_ms IS NOT NULL \
                        THEN width_bucket(greatest(0, stage_latency_ms), $3::int8[]) END AS s, \
                      CASE WHEN status = 'posted' AND end_to_end_latency_ms IS NOT NULL \
                        THEN width_bucket(greatest(0, end_to_end_latency_ms), $3::int8[]) END AS e \
               FROM {} WHERE occurred_at >= greatest(date_trunc('minute', now()), date_trunc('minute', $1::timestamptz)) \
                 AND occurred_at < $2 AND producer <> $4 \
             ) r GROUP BY GROUPING SETS ((v), (s), (e))",
            self.t("status_changes")
        );
        let bounds = LATENCY_BOUNDS_MS.to_vec();
        let canary = CANARY_PRODUCER;
        let client = self.client().await?;
        let (closed_params, open_params): ([&(dyn ToSql + Sync); 2], [&(dyn ToSql + Sync); 4]) =
            ([&window.from, &window.to], [&window.from, &window.to, &bounds, &canary]);
        let (closed, open) =
            tokio::try_join!(client.query_one(&rollup, &closed_params), client.query(&rows, &open_params))
                .map_err(|e| QueryError::from(StoreError::new(step, e)))?;
        let mut hist = [[0_i64; BUCKETS]; 3];
        for (k, h) in hist.iter_mut().enumerate() {
            for (i, slot) in h.iter_mut().enumerate() {
                *slot = closed.get::<_, i64>(k * BUCKETS + i);
            }
        }
        for r in open {
            let n: i64 = r.get(3);
            // At most one of the three is set in a grouping-set row (a
            // row without that latency has none, and counts nowhere;
            // GREATEST would have made its null a 0, hence the CASEs).
            for (k, h) in hist.iter_mut().enumerate() {
                if let Some(b) = r.get::<_, Option<i32>>(k) {
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
            rollup = self.t("money_minute"),
            rows = self.t("status_changes"),
        );
        let canary = CANARY_PRODUCER;
        let mut out = Vec::new();
        for r in self.query(step, &sql, &[&window.from, &window.to, &canary]).await? {
            out.push(MoneyRow {
                currency: r.get(0),
                due_week: r.get(1),
                net_days: r.get(2),
                invoices: count(step, r.get(3))?,
                amount: r.get::<_, Decimal>(4),
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
               FROM candidates c LEFT JOIN unnest($4::text[], $5::float8[]) AS r(currency, rate) \
                 ON r.currency = c.currency \
               ORDER BY rank LIMIT $6 \
             ) \
             SELECT t.invoice_id, t.amount, t.currency, s.vendor_id, s.due_date FROM top t \
             JOIN LATERAL (SELECT vendor_id, due_date FROM {rows} s \
               WHERE s.invoice_id = t.invoice_id AND s.status = 'submitted' AND s.amount = t.amount \
                 AND s.occurred_at >= date_trunc('minute', $1::timestamptz) AND s.occurred_at < $2 \
               ORDER BY s.occurred_at LIMIT 1) s ON true \
             ORDER BY t.rank",
            largest = self.t("largest_minute"),
            rows = self.t("status_changes"),
        );
        let (currencies, factors): (Vec<&str>, Vec<f64>) = rates.iter().copied().unzip();
        let canary = CANARY_PRODUCER;
        let rows = self
            .query(step, &sql, &[&window.from, &window.to, &canary, &currencies, &factors, &i64::from(limit)])
            .await?;
        Ok(rows
            .iter()
            .map(|r| Submitted {
                invoice_id: r.get(0),
                amount: r.get(1),
                currency: r.get(2),
                vendor_id: r.get(3),
                due_date: r.get(4),
            })
            .collect())
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
            rollup = self.t("status_minute"),
            rows = self.t("status_changes"),
        );
        let row = self.query(step, &sql, &[&window.from, &window.to]).await?;
        count(step, row.first().map_or(0, |r| r.get(0)))
    }
}
