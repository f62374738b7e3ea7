//! The store's panels through the query layer (`bems_store::query`): the
//! same questions on PostgreSQL and on Timestream, locally and on AWS, so
//! that what the dashboard calls "visible" is what the store holds and
//! answers.

use bems_core::Stage;
use bems_store::query::{Queries, Window, by_currency, by_due_week, by_terms};
use rust_decimal::prelude::ToPrimitive;

use crate::state::{HighValue, Panels, Percentiles, TO_EUR, in_eur};

/// Whether the store answered, and what it said otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StoreHealth {
    /// The first failure of this poll, `None` when every query answered.
    pub(crate) error: Option<String>,
}

fn percentiles(s: bems_store::histogram::LatencySummary) -> Percentiles {
    let ms = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    Percentiles { p50: ms(s.p50), p99: ms(s.p99) }
}

/// Fills the store's parts of `panels` (visible, series, latencies,
/// money, largest invoices) from `store` over `window`, in buckets of
/// `bucket_secs`. A query that fails leaves its panel as it was and is
/// named in the returned health; the first failure ends the poll, since
/// the others share its connection.
pub(crate) async fn fill<Q: Queries + Sync>(
    store: &Q,
    window: Window,
    bucket_secs: u32,
    panels: &mut Panels,
) -> StoreHealth {
    let failed = |what: &str, e: bems_store::query::QueryError| StoreHealth { error: Some(format!("{what}: {e}")) };
    match store.visible(window).await {
        Ok(n) => panels.visible = n,
        Err(e) => return failed("visible", e),
    }
    match store.stage_counts(window, bucket_secs).await {
        Ok(counts) => {
            panels.series.clear();
            for c in counts {
                if let Some(i) = Stage::ALL.iter().position(|s| *s == c.stage) {
                    panels.series.entry(c.bucket.timestamp()).or_default()[i] += c.changes;
                }
            }
        }
        Err(e) => return failed("status changes per stage", e),
    }
    match store.latencies(window).await {
        Ok(l) => {
            if let Some(v) = l.visibility {
                panels.visibility_ms = percentiles(v);
            }
            panels.end_to_end_ms = percentiles(l.end_to_end);
        }
        Err(e) => return failed("latencies", e),
    }
    match store.money(window).await {
        Ok(rows) => {
            panels.currencies =
                by_currency(&rows).into_iter().map(|(c, n, a)| (c, (n, a.to_f64().unwrap_or(0.0)))).collect();
            panels.due_weeks.clear();
            for (week, currency, amount) in by_due_week(&rows) {
                panels.add_due(&currency, week, amount.to_f64().unwrap_or(0.0));
            }
            panels.terms =
                by_terms(&rows).into_iter().filter_map(|(days, n)| u16::try_from(days).ok().map(|d| (d, n))).collect();
        }
        Err(e) => return failed("money", e),
    }
    match store.largest_submitted(window, &TO_EUR, 10).await {
        Ok(largest) => {
            panels.high_value.clear();
            for s in largest {
                let amount = s.amount.to_f64().unwrap_or(0.0);
                panels.offer_high_value(HighValue {
                    invoice_id: s.invoice_id,
                    amount: s.amount.to_string(),
                    eur_equivalent: (in_eur(&s.currency, amount) * 100.0).round() / 100.0,
                    currency: s.currency,
                    vendor_id: s.vendor_id,
                    due_date: s.due_date.to_string(),
                });
            }
        }
        Err(e) => return failed("largest invoices", e),
    }
    StoreHealth::default()
}
