//! The query layer: what the CLI, the monitor and the tests ask a store,
//! answered the same way by each engine ([`Queries`]).
//!
//! | question | PostgreSQL | Timestream |
//! |---|---|---|
//! | [`history`](Queries::history) of an invoice, oldest first | key-prefix lookup from its first-seen time | `WHERE invoice_id = …` |
//! | [`versions`](Queries::versions): every version of its rows | the versions table | not kept (a correction replaces) |
//! | [`open_invoices`](Queries::open_invoices): invoices whose latest status is not terminal and older than the SLA | index range over open invoices | `GROUP BY invoice_id` over the window |
//! | [`stage_counts`](Queries::stage_counts) per time bucket | per-minute rollup, open minute from rows | `bin(time)` |
//! | [`latencies`](Queries::latencies) against the SLA | rollup histograms | `approx_percentile` (no visibility: Timestream keeps no store time) |
//! | [`money`](Queries::money): submitted amounts by currency, due week and terms | per-minute rollup, open minute from rows | `GROUP BY` |
//! | [`largest_submitted`](Queries::largest_submitted) | rows of the window | rows of the window |
//! | [`visible`](Queries::visible): status changes stored | rollup, open minute from rows | `count(*)` |
//!
//! Every business figure (counts, latencies, money, largest invoices)
//! leaves out synthetic invoices (`metadata.producer` is
//! [`bems_core::contract::CANARY_PRODUCER`]); history, versions, the stuck
//! query and the visible count keep them.

use std::future::Future;

use bems_core::{Stage, Status};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::histogram::LatencySummary;

/// A time range `[from, to)` of `occurred_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Inclusive start.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
    /// When the window is "the last n minutes": Timestream then asks
    /// `time >= ago(nm)`, a text that stays the same from poll to poll.
    pub last_minutes: Option<u32>,
}

impl Window {
    /// `[from, to)`.
    pub fn between(from: DateTime<Utc>, to: DateTime<Utc>) -> Window {
        Window { from, to, last_minutes: None }
    }

    /// The last `minutes` minutes up to `now`.
    pub fn last_minutes(now: DateTime<Utc>, minutes: u32) -> Window {
        Window { from: now - chrono::Duration::minutes(i64::from(minutes)), to: now, last_minutes: Some(minutes) }
    }
}

/// A month of an invoice's status changes moved out of the store
/// (`bems store archive`): where its files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ArchivedMonth {
    /// The month (its first day).
    pub month: chrono::NaiveDate,
    /// The file of the month's status changes.
    pub changes: String,
    /// The file of every version of them.
    pub versions: Option<String>,
}

/// One status change of an invoice, or one version of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HistoryEntry {
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The stage that received it.
    pub stage: Stage,
    /// The status it set.
    pub status: Status,
    /// The status before.
    pub previous_status: Option<Status>,
    /// The event.
    pub event_id: String,
    /// The amount, exact, at the scale stored.
    pub amount: Option<Decimal>,
    /// Its currency.
    pub currency: Option<String>,
    /// When payment is due.
    pub due_date: Option<NaiveDate>,
    /// Milliseconds since the previous status change.
    pub stage_latency_ms: Option<i64>,
    /// Milliseconds since submission.
    pub end_to_end_latency_ms: Option<i64>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The version (EventBridge's receipt time), where the engine returns it.
    pub version: Option<DateTime<Utc>>,
    /// When this version was stored (PostgreSQL).
    pub stored_at: Option<DateTime<Utc>>,
}

/// An invoice whose latest status is not terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenInvoice {
    /// The invoice.
    pub invoice_id: String,
    /// The stage its latest status change went to.
    pub stage: Stage,
    /// Its latest status.
    pub status: Status,
    /// The event of that change.
    pub event_id: String,
    /// When that change happened.
    pub last_change: DateTime<Utc>,
}

/// Status changes of one stage in one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageCount {
    /// The bucket's start.
    pub bucket: DateTime<Utc>,
    /// The stage.
    pub stage: Stage,
    /// Status changes.
    pub changes: u64,
}

/// The latencies of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Latencies {
    /// Event to stored (`stored_at - occurred_at`): the SLA's figure.
    /// `None` where the engine keeps no store time (Timestream).
    pub visibility: Option<LatencySummary>,
    /// Previous status change to this one.
    pub stage: LatencySummary,
    /// Submission to posting (posted rows).
    pub end_to_end: LatencySummary,
}

/// Submitted invoices of one currency, due-date week and payment terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MoneyRow {
    /// ISO 4217 currency.
    pub currency: String,
    /// The Monday of the due date's ISO week.
    pub due_week: NaiveDate,
    /// Payment terms, days.
    pub net_days: i16,
    /// Invoices submitted.
    pub invoices: u64,
    /// Their amount.
    pub amount: Decimal,
}

/// A submitted invoice, for the largest-invoices panel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Submitted {
    /// The invoice.
    pub invoice_id: String,
    /// Its amount.
    pub amount: Decimal,
    /// Currency.
    pub currency: String,
    /// The vendor.
    pub vendor_id: String,
    /// When payment is due.
    pub due_date: NaiveDate,
}

/// The Monday of `date`'s ISO week.
pub fn week_start(date: NaiveDate) -> NaiveDate {
    use chrono::Datelike;
    date - chrono::Duration::days(i64::from(date.weekday().num_days_from_monday()))
}

/// Totals by currency: (currency, invoices, amount), from [`Queries::money`].
pub fn by_currency(rows: &[MoneyRow]) -> Vec<(String, u64, Decimal)> {
    let mut out: std::collections::BTreeMap<&str, (u64, Decimal)> = std::collections::BTreeMap::new();
    for r in rows {
        let e = out.entry(&r.currency).or_default();
        e.0 += r.invoices;
        e.1 += r.amount;
    }
    out.into_iter().map(|(c, (n, a))| (c.to_owned(), n, a)).collect()
}

/// Projected cash outflow: (due week, currency, amount), from [`Queries::money`].
pub fn by_due_week(rows: &[MoneyRow]) -> Vec<(NaiveDate, String, Decimal)> {
    let mut out: std::collections::BTreeMap<(NaiveDate, &str), Decimal> = std::collections::BTreeMap::new();
    for r in rows {
        *out.entry((r.due_week, &r.currency)).or_default() += r.amount;
    }
    out.into_iter().map(|((w, c), a)| (w, c.to_owned(), a)).collect()
}

/// Invoices by payment terms: (net days, invoices), from [`Queries::money`].
pub fn by_terms(rows: &[MoneyRow]) -> Vec<(i16, u64)> {
    let mut out: std::collections::BTreeMap<i16, u64> = std::collections::BTreeMap::new();
    for r in rows {
        *out.entry(r.net_days).or_default() += r.invoices;
    }
    out.into_iter().collect()
}

/// A failed query.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The engine could not be reached or refused the query.
    #[error("{engine}: {message}")]
    Engine {
        /// `postgres` or `timestream`.
        engine: &'static str,
        /// What it said, in one line.
        message: String,
        /// Whether trying again later may succeed (connection, throttling).
        transient: bool,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An answer lacks a value the question needs.
    #[error("{engine} ({query}): the answer has no value in column {column:?}")]
    MissingColumn {
        /// The engine.
        engine: &'static str,
        /// Which question.
        query: &'static str,
        /// The column.
        column: &'static str,
    },
    /// An answer holds a value that is not what the column means.
    #[error("{engine} ({query}): column {column:?} holds {value:?}")]
    BadValue {
        /// The engine.
        engine: &'static str,
        /// Which question.
        query: &'static str,
        /// The column.
        column: &'static str,
        /// The value.
        value: String,
    },
    /// The engine does not keep what the question needs.
    #[error("{engine} does not keep {what}")]
    Unsupported {
        /// The engine.
        engine: &'static str,
        /// What.
        what: &'static str,
    },
}

impl QueryError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, QueryError::Engine { transient: true, .. })
    }
}

/// The questions every store answers.
pub trait Queries {
    /// `invoice`'s status changes, oldest first.
    fn history(&self, invoice: &str) -> impl Future<Output = Result<Vec<HistoryEntry>, QueryError>> + Send;

    /// Every version of `invoice`'s rows (the first write and each
    /// correction), oldest first.
    fn versions(&self, invoice: &str) -> impl Future<Output = Result<Vec<HistoryEntry>, QueryError>> + Send;

    /// The archived months that may hold `invoice`'s status changes (from
    /// the month it was first seen to its latest change's), oldest first:
    /// what [`Queries::history`] no longer finds in the store.
    fn archived(&self, invoice: &str) -> impl Future<Output = Result<Vec<ArchivedMonth>, QueryError>> + Send;

    /// Invoices whose latest status is not terminal and changed in
    /// `window` but more than `sla_secs` before its end, oldest first, at
    /// most `limit`.
    fn open_invoices(
        &self,
        window: Window,
        sla_secs: u32,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<OpenInvoice>, QueryError>> + Send;

    /// Status changes per stage in buckets of `bucket_secs` (by
    /// `occurred_at`, aligned to the epoch) over `window`.
    fn stage_counts(
        &self,
        window: Window,
        bucket_secs: u32,
    ) -> impl Future<Output = Result<Vec<StageCount>, QueryError>> + Send;

    /// Latencies of the status changes of `window`.
    fn latencies(&self, window: Window) -> impl Future<Output = Result<Latencies, QueryError>> + Send;

    /// Invoices submitted in `window`, by currency, due week and terms.
    fn money(&self, window: Window) -> impl Future<Output = Result<Vec<MoneyRow>, QueryError>> + Send;

    /// The `limit` largest invoices submitted in `window`, ranked by amount
    /// times `rates` (currency → factor to a common currency; 1 for one not
    /// listed).
    fn largest_submitted(
        &self,
        window: Window,
        rates: &[(&str, f64)],
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Submitted>, QueryError>> + Send;

    /// Status changes stored with `occurred_at` in `window`, synthetic ones
    /// included.
    fn visible(&self, window: Window) -> impl Future<Output = Result<u64, QueryError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_rows_add_up_by_currency_week_and_terms() {
        let day = |d: &str| d.parse::<NaiveDate>().expect("date");
        let row = |currency: &str, due: &str, net_days, invoices, amount: &str| MoneyRow {
            currency: currency.into(),
            due_week: week_start(day(due)),
            net_days,
            invoices,
            amount: amount.parse().expect("decimal"),
        };
        let rows = [
            row("EUR", "2026-12-25", 30, 2, "100.50"),
            row("EUR", "2026-12-26", 60, 1, "10.00"),
            row("USD", "2027-01-04", 30, 3, "7.25"),
        ];
        assert_eq!(week_start(day("2026-12-27")), day("2026-12-21"), "Sunday's week starts on Monday");
        assert_eq!(
            by_currency(&rows),
            [("EUR".into(), 3, "110.50".parse().expect("d")), ("USD".into(), 3, "7.25".parse().expect("d"))]
        );
        assert_eq!(by_due_week(&rows).len(), 2, "EUR's two rows share a week");
        assert_eq!(by_terms(&rows), [(30, 5), (60, 1)]);
    }
}
