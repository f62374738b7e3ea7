//! Every query of the layer on data the writer stored in a real
//! PostgreSQL, each expected value computed here from the generated rows,
//! not by the store: history, open invoices, stage counts (from the rollup
//! and from rows), latencies (against percentiles of the sorted values),
//! money, the largest invoices, the visible count; and the rollup check
//! catches a rollup that drifted.

mod common;

use std::collections::BTreeMap;

use bems_core::{Stage, Status};
use bems_store::StatusRow;
use bems_store::histogram::{self, SLA_MS};
use bems_store::postgres::PgQueries;
use bems_store::postgres::write::Writer;
use bems_store::query::{Queries, Window, week_start};
use chrono::{DateTime, Duration, DurationRound, Utc};
use common::{assert_rollups_match, drop_schema, event, store};
use rust_decimal::Decimal;

/// An invoice's lifecycle from `submitted`, one change every 0.2–40 s,
/// stopping at `now` (so some are still open), every fifth stalled after
/// two, some rejected at authorization; the first invoice is synthetic.
fn lifecycle(i: usize, now: DateTime<Utc>, rng: &mut fastrand::Rng) -> Vec<StatusRow> {
    let invoice = format!("INV-Q-{i:04}");
    let steps = [
        (Stage::Ingestion, Status::Submitted),
        (Stage::Reconciliation, Status::Ingested),
        (Stage::Authorization, Status::Reconciled),
        (Stage::Posting, Status::Authorized),
        (Stage::Posting, Status::Posted),
    ];
    let rejected = i % 7 == 3;
    let currency = ["EUR", "USD", "JPY", "GBP"][i % 4];
    let amount: Decimal = match currency {
        "JPY" => Decimal::from(rng.u32(1_000..2_000_000)),
        _ => Decimal::new(i64::from(rng.u32(100..10_000_000)), 2),
    };
    let net_days = [30_u16, 60, 90][i % 3];
    let submitted =
        (now - Duration::milliseconds(rng.i64(1_000..600_000))).duration_trunc(Duration::milliseconds(1)).expect("ms");
    let mut at = submitted;
    let mut previous: Option<(Status, DateTime<Utc>)> = None;
    let mut out = Vec::new();
    for (n, (stage, status)) in steps.into_iter().enumerate() {
        let (stage, status) =
            if rejected && n == 3 { (Stage::Authorization, Status::Rejected) } else { (stage, status) };
        if at > now {
            break;
        }
        let mut e = event(&invoice, stage, status, at);
        e.currency = bems_core::Currency::new(currency).expect("currency");
        e.amount = bems_core::Amount::new(amount).expect("amount");
        e.payment_terms =
            bems_core::PaymentTerms::net(e.issue_date, bems_core::NetDays::new(i64::from(net_days)).expect("net days"));
        if let Some((p, t)) = previous {
            e.previous_status = Some(p);
            e.previous_occurred_at = Some(t);
            e.submitted_at = Some(submitted);
        }
        if status == Status::Rejected {
            e.reason = Some(bems_core::fields::Reason::new("over the approval limit").expect("reason"));
        }
        if i == 0 {
            e.metadata.producer =
                bems_core::fields::Producer::new(bems_core::contract::CANARY_PRODUCER).expect("producer");
        }
        out.push(StatusRow::new(&e, at + Duration::milliseconds(rng.i64(5..900))));
        // Every fifth invoice stalls after its second change.
        if status.is_terminal() || (i % 5 == 1 && n == 1) {
            break;
        }
        previous = Some((status, at));
        at += Duration::milliseconds(rng.i64(200..40_000));
    }
    out
}

/// The value at rank ceil(p·n) of the sorted values.
fn truth(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let rank = ((sorted.len() as f64) * p).ceil().max(1.0) as usize;
    sorted.get(rank - 1).copied()
}

/// A summary's figures against the values: each percentile is the upper
/// bound of the bucket holding the true one, and the share within the SLA
/// is exact.
fn check_summary(name: &str, s: histogram::LatencySummary, values: &mut [i64]) {
    values.sort_unstable();
    assert_eq!(s.count, values.len() as u64, "{name}: count");
    for (p, got) in [(0.5, s.p50), (0.9, s.p90), (0.99, s.p99)] {
        let expected = truth(values, p).map(|t| histogram::upper_bound(histogram::bucket(t)));
        assert_eq!(got, expected, "{name}: p{p}");
        if let (Some(got), Some(t)) = (got, truth(values, p)) {
            assert!(got > t, "{name}: p{p} {got} is above the true {t}");
        }
    }
    let within = values.iter().filter(|v| **v < SLA_MS).count();
    #[allow(clippy::cast_precision_loss)]
    let share = (!values.is_empty()).then(|| within as f64 / values.len() as f64);
    assert_eq!(s.within_sla, share, "{name}: within the SLA");
}

#[tokio::test]
async fn every_query_answers_what_the_rows_say() {
    let Some((pg, client)) = store().await else { return };
    let writer = Writer::new(pg.clone());
    let queries = PgQueries::new(pg.clone());
    let now = Utc::now();
    let mut rng = fastrand::Rng::with_seed(17);
    let mut rows: Vec<StatusRow> = (0..80).flat_map(|i| lifecycle(i, now, &mut rng)).collect();
    rng.shuffle(&mut rows);
    for batch in rows.chunks(10) {
        assert!(writer.write(batch).await.expect("write").iter().all(|o| o.is_done()));
    }
    let business: Vec<&StatusRow> = rows.iter().filter(|r| !r.is_synthetic()).collect();
    assert!(business.len() < rows.len(), "a synthetic invoice is among them");
    let window = Window::between(now - Duration::minutes(15), now + Duration::minutes(1));

    // Visible: every row of the window, synthetic ones too.
    assert_eq!(queries.visible(window).await.expect("visible"), rows.len() as u64);

    // Stage counts per minute (rollup and open minute) and per 10 s (rows).
    for bucket in [60_i64, 10] {
        let mut expected: BTreeMap<(i64, Stage), u64> = BTreeMap::new();
        for r in &business {
            *expected.entry((r.occurred_at.timestamp().div_euclid(bucket) * bucket, r.stage)).or_default() += 1;
        }
        let got: BTreeMap<(i64, Stage), u64> = queries
            .stage_counts(window, u32::try_from(bucket).expect("bucket"))
            .await
            .expect("stage counts")
            .into_iter()
            .map(|c| ((c.bucket.timestamp(), c.stage), c.changes))
            .collect();
        assert_eq!(got, expected, "{bucket}-s buckets");
    }

    // Latencies: stage, end-to-end (posted), visibility (from stored_at).
    let latencies = queries.latencies(window).await.expect("latencies");
    let mut stage: Vec<i64> = business.iter().filter_map(|r| r.stage_latency_ms).collect();
    check_summary("stage latency", latencies.stage, &mut stage);
    let mut e2e: Vec<i64> =
        business.iter().filter(|r| r.status == Status::Posted).filter_map(|r| r.end_to_end_latency_ms).collect();
    check_summary("end to end", latencies.end_to_end, &mut e2e);
    let mut visibility: Vec<i64> = client
        .query(
            &format!(
                "SELECT occurred_at, stored_at FROM {}.status_changes WHERE producer <> 'bems-canary'",
                pg.schema()
            ),
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get::<_, DateTime<Utc>>(1) - r.get::<_, DateTime<Utc>>(0)).num_milliseconds().max(0))
        .collect();
    assert_eq!(visibility.len(), business.len());
    check_summary("visibility", latencies.visibility.expect("postgres keeps stored_at"), &mut visibility);

    // Money of the submissions, by currency, due week and terms.
    let mut expected: BTreeMap<(String, chrono::NaiveDate, i16), (u64, Decimal)> = BTreeMap::new();
    for r in business.iter().filter(|r| r.status == Status::Submitted) {
        let e = expected.entry((r.currency.clone(), week_start(r.due_date), r.net_days)).or_default();
        e.0 += 1;
        e.1 += r.amount;
    }
    let got: BTreeMap<(String, chrono::NaiveDate, i16), (u64, Decimal)> = queries
        .money(window)
        .await
        .expect("money")
        .into_iter()
        .map(|m| ((m.currency, m.due_week, m.net_days), (m.invoices, m.amount)))
        .collect();
    assert_eq!(got, expected);

    // The five largest submissions at the given rates.
    let rates = [("EUR", 1.0), ("USD", 0.92), ("JPY", 0.0062), ("GBP", 1.17)];
    let rate = |c: &str| rates.iter().find(|(k, _)| *k == c).map_or(1.0, |(_, r)| *r);
    let mut submitted: Vec<&&StatusRow> = business.iter().filter(|r| r.status == Status::Submitted).collect();
    submitted.sort_by(|a, b| {
        let value = |r: &StatusRow| r.amount.to_string().parse::<f64>().expect("amount") * rate(&r.currency);
        value(b).total_cmp(&value(a)).then(a.invoice_id.cmp(&b.invoice_id))
    });
    let largest = queries.largest_submitted(window, &rates, 5).await.expect("largest");
    assert_eq!(
        largest.iter().map(|s| s.invoice_id.as_str()).collect::<Vec<_>>(),
        submitted.iter().take(5).map(|r| r.invoice_id.as_str()).collect::<Vec<_>>()
    );

    // Open invoices: the latest change not terminal, older than the SLA.
    let cutoff = window.to - Duration::seconds(120);
    let mut latest: BTreeMap<&str, &StatusRow> = BTreeMap::new();
    for r in &rows {
        let e = latest.entry(r.invoice_id.as_str()).or_insert(r);
        if (r.occurred_at, r.version) > (e.occurred_at, e.version) {
            *e = r;
        }
    }
    let mut open: Vec<(&str, DateTime<Utc>)> = latest
        .values()
        .filter(|r| !r.status.is_terminal() && r.occurred_at < cutoff && r.occurred_at >= window.from)
        .map(|r| (r.invoice_id.as_str(), r.occurred_at))
        .collect();
    open.sort_by_key(|(id, at)| (*at, *id));
    let got = queries.open_invoices(window, 120, 1000).await.expect("open");
    assert_eq!(got.iter().map(|o| (o.invoice_id.as_str(), o.last_change)).collect::<Vec<_>>(), open);
    assert!(!open.is_empty() && open.len() < latest.len(), "some open, some done: {}", open.len());

    // History: the invoice's rows, oldest first.
    let invoice = &rows[0].invoice_id;
    let mut mine: Vec<&StatusRow> = rows.iter().filter(|r| &r.invoice_id == invoice).collect();
    mine.sort_by_key(|r| r.occurred_at);
    let history = queries.history(invoice).await.expect("history");
    assert_eq!(
        history.iter().map(|h| (h.occurred_at, h.status, h.amount)).collect::<Vec<_>>(),
        mine.iter().map(|r| (r.occurred_at, r.status, Some(r.amount))).collect::<Vec<_>>()
    );

    // The rollups agree with the rows, and the check sees a drifted one.
    assert_rollups_match(&client, &pg).await;
    client
        .execute(
            &format!(
                "UPDATE {}.status_minute SET changes = changes + 1 WHERE (minute, stage, partition) = \
                 (SELECT minute, stage, partition FROM {}.status_minute LIMIT 1)",
                pg.schema(),
                pg.schema()
            ),
            &[],
        )
        .await
        .expect("drift");
    let mismatches = bems_store::postgres::check::rollup_mismatches(
        &client,
        pg.schema(),
        window.from - Duration::hours(1),
        window.to,
    )
    .await
    .expect("check");
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    assert!(mismatches[0].what.ends_with("changes"), "{mismatches:?}");
    drop_schema(&client, &pg).await;
}
