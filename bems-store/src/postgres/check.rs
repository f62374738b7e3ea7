//! The rollups against the rows they summarise: [`rollup_mismatches`]
//! recomputes the three rollups from `status_changes` and lists every
//! difference. The tests run it after every fault; `bems store check`
//! runs it for an operator (with a window, since on a large store it reads
//! every row of it).

use chrono::{DateTime, Utc};

use super::{Schema, StoreError};
use crate::histogram::LATENCY_BOUNDS_MS;

/// One difference between a rollup and the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// `status_minute`, `money_minute` or `largest_minute`.
    pub rollup: &'static str,
    /// The rollup row's key and the figure, as text.
    pub what: String,
    /// The figure from the rows.
    pub rows: String,
    /// The figure in the rollup.
    pub stored: String,
}

/// The differences between the rollups and the rows with `occurred_at` in
/// `[from, to)` (whole minutes); empty when they agree.
pub async fn rollup_mismatches(
    client: &tokio_postgres::Client,
    schema: &Schema,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Mismatch>, StoreError> {
    let rows = schema.table("status_changes");
    let canary = bems_core::contract::CANARY_PRODUCER;
    let bounds = LATENCY_BOUNDS_MS.to_vec();
    let in_window = "minute >= date_trunc('minute', $1::timestamptz) AND minute < $2";
    // Each side as (minute, stage, partition, figure, value) with the zero
    // figures left out, compared both ways.
    let from_rows = format!(
        "WITH r AS (SELECT date_trunc('minute', occurred_at) AS minute, * FROM {rows} \
           WHERE occurred_at >= date_trunc('minute', $1::timestamptz) AND occurred_at < $2) \
         SELECT minute, stage, partition, 'changes', count(*) FROM r WHERE producer <> $3 GROUP BY 1, 2, 3 \
         UNION ALL SELECT minute, stage, partition, 'synthetic', count(*) FROM r WHERE producer = $3 GROUP BY 1, 2, 3 \
         UNION ALL SELECT minute, stage, partition, 'visibility_ms[' || width_bucket( \
             greatest(0, trunc(extract(epoch FROM stored_at - occurred_at) * 1000))::int8, $4::int8[]) || ']', count(*) \
           FROM r WHERE producer <> $3 GROUP BY 1, 2, 3, 4 \
         UNION ALL SELECT minute, stage, partition, 'stage_latency_ms[' || width_bucket(greatest(0, stage_latency_ms), $4::int8[]) || ']', count(*) \
           FROM r WHERE producer <> $3 AND stage_latency_ms IS NOT NULL GROUP BY 1, 2, 3, 4 \
         UNION ALL SELECT minute, stage, partition, 'end_to_end_ms[' || width_bucket(greatest(0, end_to_end_latency_ms), $4::int8[]) || ']', count(*) \
           FROM r WHERE producer <> $3 AND status = 'posted' AND end_to_end_latency_ms IS NOT NULL GROUP BY 1, 2, 3, 4"
    );
    let rollup = schema.table("status_minute");
    let from_rollup = format!(
        "SELECT minute, stage, partition, 'changes', changes FROM {rollup} WHERE {in_window} AND changes <> 0 \
         UNION ALL SELECT minute, stage, partition, 'synthetic', synthetic FROM {rollup} WHERE {in_window} AND synthetic <> 0 \
         UNION ALL SELECT minute, stage, partition, 'visibility_ms[' || i || ']', v FROM {rollup}, \
           unnest(visibility_ms) WITH ORDINALITY AS u(v, i) WHERE {in_window} AND v <> 0 \
         UNION ALL SELECT minute, stage, partition, 'stage_latency_ms[' || i || ']', v FROM {rollup}, \
           unnest(stage_latency_ms) WITH ORDINALITY AS u(v, i) WHERE {in_window} AND v <> 0 \
         UNION ALL SELECT minute, stage, partition, 'end_to_end_ms[' || i || ']', v FROM {rollup}, \
           unnest(end_to_end_ms) WITH ORDINALITY AS u(v, i) WHERE {in_window} AND v <> 0"
    );
    let status_sql = format!(
        "WITH a(minute, stage, partition, figure, n) AS ({from_rows}), \
              b(minute, stage, partition, figure, n) AS ({from_rollup}) \
         SELECT coalesce(a.minute, b.minute), coalesce(a.stage, b.stage), coalesce(a.partition, b.partition), \
                coalesce(a.figure, b.figure), a.n::text, b.n::text \
         FROM a FULL JOIN b USING (minute, stage, partition, figure) \
         WHERE a.n IS DISTINCT FROM b.n ORDER BY 1, 2, 3, 4"
    );
    let money = schema.table("money_minute");
    let money_sql = format!(
        "WITH a AS (SELECT date_trunc('minute', occurred_at) AS minute, partition, currency, \
             date_trunc('week', due_date)::date AS due_week, net_days, count(*) AS invoices, sum(amount) AS amount \
           FROM {rows} WHERE occurred_at >= date_trunc('minute', $1::timestamptz) AND occurred_at < $2 \
             AND producer <> $3 AND status = 'submitted' GROUP BY 1, 2, 3, 4, 5), \
         b AS (SELECT * FROM {money} WHERE {in_window} AND (invoices <> 0 OR amount <> 0)) \
         SELECT coalesce(a.minute, b.minute), coalesce(a.partition, b.partition), coalesce(a.currency, b.currency), \
                coalesce(a.due_week, b.due_week), coalesce(a.net_days, b.net_days), \
                a.invoices::text || ' / ' || a.amount::text, b.invoices::text || ' / ' || b.amount::text \
         FROM a FULL JOIN b USING (minute, partition, currency, due_week, net_days) \
         WHERE a.invoices IS DISTINCT FROM b.invoices OR a.amount IS DISTINCT FROM b.amount ORDER BY 1, 2, 3, 4, 5"
    );
    let largest = schema.table("largest_minute");
    let largest_sql = format!(
        "WITH ranked AS (SELECT date_trunc('minute', occurred_at) AS minute, partition, currency, amount, invoice_id, \
             row_number() OVER (PARTITION BY date_trunc('minute', occurred_at), partition, currency \
                                ORDER BY amount DESC, invoice_id) AS n \
           FROM {rows} WHERE occurred_at >= date_trunc('minute', $1::timestamptz) AND occurred_at < $2 \
             AND producer <> $3 AND status = 'submitted'), \
         a AS (SELECT minute, partition, currency, array_agg(amount ORDER BY n)::text AS amounts, \
                 array_agg(invoice_id ORDER BY n)::text AS ids FROM ranked WHERE n <= 10 GROUP BY 1, 2, 3), \
         b AS (SELECT minute, partition, currency, amounts::text AS amounts, invoice_ids::text AS ids FROM {largest} \
               WHERE {in_window} AND cardinality(amounts) > 0) \
         SELECT coalesce(a.minute, b.minute), coalesce(a.partition, b.partition), coalesce(a.currency, b.currency), \
                a.amounts || ' ' || a.ids, b.amounts || ' ' || b.ids \
         FROM a FULL JOIN b USING (minute, partition, currency) \
         WHERE a.amounts IS DISTINCT FROM b.amounts OR a.ids IS DISTINCT FROM b.ids ORDER BY 1, 2, 3"
    );
    let step = "check the rollups";
    let mut out = Vec::new();
    for r in client.query(&status_sql, &[&from, &to, &canary, &bounds]).await.map_err(|e| StoreError::new(step, e))? {
        let (minute, stage, partition, figure): (DateTime<Utc>, String, i16, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        out.push(Mismatch {
            rollup: "status_minute",
            what: format!("{minute} {stage} p{partition} {figure}"),
            rows: r.get::<_, Option<String>>(4).unwrap_or_else(|| "0".into()),
            stored: r.get::<_, Option<String>>(5).unwrap_or_else(|| "0".into()),
        });
    }
    for r in client.query(&money_sql, &[&from, &to, &canary]).await.map_err(|e| StoreError::new(step, e))? {
        let (minute, partition, currency, week, days): (DateTime<Utc>, i16, String, chrono::NaiveDate, i16) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        out.push(Mismatch {
            rollup: "money_minute",
            what: format!("{minute} p{partition} {currency} week of {week} net {days}: invoices / amount"),
            rows: r.get::<_, Option<String>>(5).unwrap_or_else(|| "none".into()),
            stored: r.get::<_, Option<String>>(6).unwrap_or_else(|| "none".into()),
        });
    }
    for r in client.query(&largest_sql, &[&from, &to, &canary]).await.map_err(|e| StoreError::new(step, e))? {
        let (minute, partition, currency): (DateTime<Utc>, i16, String) = (r.get(0), r.get(1), r.get(2));
        out.push(Mismatch {
            rollup: "largest_minute",
            what: format!("{minute} p{partition} {currency}: the ten largest"),
            rows: r.get::<_, Option<String>>(3).unwrap_or_else(|| "none".into()),
            stored: r.get::<_, Option<String>>(4).unwrap_or_else(|| "none".into()),
        });
    }
    Ok(out)
}
