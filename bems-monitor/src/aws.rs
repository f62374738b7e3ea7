//! The dashboard over a cell deployed on AWS (`--aws`).
//!
//! On AWS the functions run in Lambda; here only the dashboard (and, if
//! asked, the traffic) runs. Every poll fills the same [`Panels`] the
//! emulator mode fills record by record, from two sources:
//!
//! - Timestream: one aggregate query per panel over the last `window`
//!   minutes of the cell's table ([`queries`]), each a `GROUP BY` that
//!   returns a few hundred rows at most whatever the event volume, so a
//!   poll costs the same at 60,000 events per minute as at 60;
//! - CloudWatch `GetMetricData`: the functions' record counts by outcome and
//!   error class (namespace `BEMS`, the Embedded Metric Format documents
//!   `bems_lambda::function` writes), the writer's `VisibilityLatency`
//!   percentiles (event → stored), and each queue's
//!   `ApproximateAgeOfOldestMessage` (`AWS/SQS`).
//!
//! A failed query leaves its panel empty and is named in
//! [`Panels::problems`]; the other panels still show.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use bems_batch::METRIC_CLASSES;
use bems_core::Stage;
use bems_core::contract::TIMESTREAM_TABLE;
use bems_core::contract::{CELL_DIMENSION, CLASS_DIMENSION, FUNCTION_DIMENSION, Function, METRICS_NAMESPACE};
use bems_core::routing::CellSpec;

use crate::state::{HighValue, Panels, Percentiles, TO_EUR, in_eur};

/// Width of a series bucket on AWS, seconds: CloudWatch's one-minute
/// resolution, and a chart of an hour in 60 points.
pub(crate) const AWS_BUCKET_SECS: u64 = 60;

/// A failed poll of one source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AwsError {
    /// A Timestream query failed.
    #[error("Timestream ({panel}): {message}")]
    Query {
        /// The panel it was for.
        panel: &'static str,
        /// The service's answer.
        message: String,
    },
    /// A Timestream answer has no value for a column the panel needs:
    /// the column is missing, or null in a row (rows leave nulls out).
    #[error("Timestream ({panel}): no value in column {column:?} (missing from the answer, or null)")]
    MissingColumn {
        /// The panel.
        panel: &'static str,
        /// The column.
        column: &'static str,
    },
    /// `GetMetricData` failed.
    #[error("CloudWatch ({what}): {message}")]
    Metrics {
        /// Which metrics.
        what: &'static str,
        /// The service's answer.
        message: String,
    },
}

/// The Timestream query behind each panel, by panel name.
pub(crate) fn queries(spec: &CellSpec, window_mins: u64) -> Vec<(&'static str, String)> {
    let from = format!("FROM \"{}\".\"{TIMESTREAM_TABLE}\"", spec.timestream_database());
    let base = format!("measure_name = 'status_change' AND time > ago({window_mins}m)");
    let submitted = format!("{base} AND status = 'submitted'");
    // Ranking by EUR equivalent happens in the query, so that LIMIT keeps the right ten.
    let to_eur: String = TO_EUR.iter().map(|(c, rate)| format!(" WHEN '{c}' THEN {rate:?}")).collect();
    vec![
        (
            "series",
            format!(
                "SELECT to_milliseconds(bin(time, {AWS_BUCKET_SECS}s)) AS bucket_ms, stage, count(*) AS changes {from} \
                 WHERE {base} GROUP BY bin(time, {AWS_BUCKET_SECS}s), stage ORDER BY bucket_ms"
            ),
        ),
        (
            "end_to_end",
            format!(
                "SELECT approx_percentile(end_to_end_latency_ms, 0.5) AS p50, \
                 approx_percentile(end_to_end_latency_ms, 0.99) AS p99 {from} WHERE {base} AND status = 'posted'"
            ),
        ),
        (
            "currencies",
            format!(
                "SELECT currency, count(*) AS invoices, sum(amount) AS amount {from} WHERE {submitted} \
                 GROUP BY currency ORDER BY currency"
            ),
        ),
        (
            "due_dates",
            format!(
                "SELECT currency, due_date, sum(amount) AS amount {from} WHERE {submitted} \
                 GROUP BY currency, due_date ORDER BY due_date"
            ),
        ),
        (
            "terms",
            format!(
                "SELECT net_days, count(*) AS invoices {from} WHERE {submitted} AND net_days IS NOT NULL \
                 GROUP BY net_days ORDER BY net_days"
            ),
        ),
        (
            "high_value",
            format!(
                "SELECT invoice_id, amount, currency, vendor_id, due_date {from} WHERE {submitted} \
                 ORDER BY amount * CASE currency{to_eur} ELSE 1.0 END DESC LIMIT 10"
            ),
        ),
    ]
}

/// A query's rows as column name → value (nulls left out).
type Rows = Vec<HashMap<String, String>>;

fn text<'a>(row: &'a HashMap<String, String>, panel: &'static str, column: &'static str) -> Result<&'a str, AwsError> {
    row.get(column).map(String::as_str).ok_or(AwsError::MissingColumn { panel, column })
}

fn number<T: std::str::FromStr>(
    row: &HashMap<String, String>,
    panel: &'static str,
    column: &'static str,
) -> Result<Option<T>, AwsError> {
    // A present column with a null value is absent from the row: no value, no error.
    Ok(text(row, panel, column).ok().and_then(|v| v.parse().ok()))
}

/// Fills `panels` from the answer to the query of `panel`.
pub(crate) fn apply(panels: &mut Panels, panel: &'static str, rows: &Rows) -> Result<(), AwsError> {
    match panel {
        "series" => {
            for row in rows {
                let (Some(ms), Some(n)) =
                    (number::<i64>(row, panel, "bucket_ms")?, number::<u64>(row, panel, "changes")?)
                else {
                    continue;
                };
                let stage = text(row, panel, "stage")?;
                if let Some(i) = Stage::ALL.iter().position(|s| s.as_str() == stage) {
                    panels.series.entry(ms.div_euclid(1000)).or_default()[i] += n;
                    panels.visible += n;
                }
            }
        }
        "end_to_end" => {
            if let Some(row) = rows.first() {
                panels.end_to_end_ms = Percentiles { p50: number(row, panel, "p50")?, p99: number(row, panel, "p99")? };
            }
        }
        "currencies" => {
            for row in rows {
                let currency = text(row, panel, "currency")?.to_owned();
                let invoices = number(row, panel, "invoices")?.unwrap_or(0);
                let amount = number(row, panel, "amount")?.unwrap_or(0.0);
                panels.currencies.insert(currency, (invoices, amount));
            }
        }
        "due_dates" => {
            for row in rows {
                let currency = text(row, panel, "currency")?;
                let amount: f64 = number(row, panel, "amount")?.unwrap_or(0.0);
                if let Some(due) = number::<chrono::NaiveDate>(row, panel, "due_date")? {
                    panels.add_due(currency, due, amount);
                }
            }
        }
        "terms" => {
            for row in rows {
                if let (Some(days), Some(n)) = (number(row, panel, "net_days")?, number(row, panel, "invoices")?) {
                    panels.terms.insert(days, n);
                }
            }
        }
        "high_value" => {
            for row in rows {
                let currency = text(row, panel, "currency")?.to_owned();
                let amount = text(row, panel, "amount")?.to_owned();
                let eur = in_eur(&currency, amount.parse().unwrap_or(0.0));
                panels.offer_high_value(HighValue {
                    invoice_id: text(row, panel, "invoice_id")?.to_owned(),
                    amount,
                    vendor_id: row.get("vendor_id").cloned().unwrap_or_default(),
                    due_date: row.get("due_date").cloned().unwrap_or_default(),
                    eur_equivalent: (eur * 100.0).round() / 100.0,
                    currency,
                });
            }
        }
        _ => {}
    }
    Ok(())
}

/// The rows of every page of an answer, by column name.
fn rows(pages: &[aws_sdk_timestreamquery::operation::query::QueryOutput]) -> Rows {
    let mut out = Vec::new();
    for page in pages {
        let columns: Vec<&str> = page.column_info().iter().map(|c| c.name().unwrap_or_default()).collect();
        for row in page.rows() {
            let named = columns
                .iter()
                .zip(row.data())
                .filter(|(_, d)| d.null_value() != Some(true))
                .filter_map(|(c, d)| d.scalar_value().map(|v| ((*c).to_owned(), v.to_owned())))
                .collect();
            out.push(named);
        }
    }
    out
}

/// One `GetMetricData` series: what it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counted {
    /// The `Function` dimension.
    function: String,
    /// The stage, for a stage processor.
    stage: Option<Stage>,
    /// `Processed`, `Failed` or `DeadLettered`.
    metric: &'static str,
    /// The `class` dimension.
    class: Option<&'static str>,
}

impl Counted {
    /// The name the dashboard's outcome table shows, as on the emulators.
    fn label(&self) -> String {
        match self.class {
            Some(class) => format!("{} {class}", self.metric),
            None => self.metric.to_owned(),
        }
    }
}

/// Every record count of the cell's functions, by query id.
fn counted() -> Vec<(String, Counted)> {
    let mut functions: Vec<(String, Option<Stage>)> =
        Stage::ALL.iter().map(|s| (Function::Processor(*s).metrics_name(), Some(*s))).collect();
    functions.push((Function::StatusWriter.metrics_name(), None));
    functions.push((Function::RouteForwarder.metrics_name(), None));
    let mut out = Vec::new();
    for (f, (function, stage)) in functions.into_iter().enumerate() {
        let mut add = |id: String, metric, class| {
            out.push((id, Counted { function: function.clone(), stage, metric, class }));
        };
        add(format!("f{f}_processed"), "Processed", None);
        for class in METRIC_CLASSES {
            add(format!("f{f}_failed_{class}"), "Failed", Some(class));
            add(format!("f{f}_dead_{class}"), "DeadLettered", Some(class));
        }
    }
    out
}

fn dimension(name: &str, value: &str) -> Dimension {
    Dimension::builder().name(name).value(value).build()
}

fn stat_query(
    id: &str,
    namespace: &str,
    metric: &str,
    dims: Vec<Dimension>,
    period: i32,
    stat: &str,
) -> MetricDataQuery {
    let metric = Metric::builder().namespace(namespace).metric_name(metric).set_dimensions(Some(dims)).build();
    MetricDataQuery::builder()
        .id(id)
        .metric_stat(MetricStat::builder().metric(metric).period(period).stat(stat).build())
        .return_data(true)
        .build()
}

/// Timestamped values by query id.
type Series = HashMap<String, Vec<(i64, f64)>>;

/// Everything one poll reads from AWS.
pub(crate) struct Remote {
    /// Timestream queries.
    pub(crate) timestream: aws_sdk_timestreamquery::Client,
    /// CloudWatch metrics.
    pub(crate) cloudwatch: aws_sdk_cloudwatch::Client,
    /// The cell.
    pub(crate) spec: CellSpec,
    /// Minutes of history the panels cover.
    pub(crate) window_mins: u64,
}

impl Remote {
    /// The panels now, and each queue's oldest-message age in seconds.
    pub(crate) async fn poll(&self, queues: &[String]) -> (Panels, BTreeMap<String, u64>) {
        let mut panels = Panels {
            bucket_secs: AWS_BUCKET_SECS,
            source: format!(
                "cell on AWS: Timestream aggregates over the last {} min in {}-s buckets by event time; \
                 CloudWatch metrics (namespace {METRICS_NAMESPACE}) for outcomes, error rates and visibility",
                self.window_mins, AWS_BUCKET_SECS
            ),
            ..Panels::default()
        };
        for (panel, query) in queries(&self.spec, self.window_mins) {
            let answer = bems_ops::history::query_pages(&self.timestream, &query)
                .await
                .map_err(|e| AwsError::Query { panel, message: e.to_string() })
                .and_then(|pages| apply(&mut panels, panel, &rows(&pages)));
            if let Err(e) = answer {
                panels.problems.push(e.to_string());
            }
        }
        match self.counts().await {
            Ok(series) => apply_counts(&mut panels, &counted(), &series),
            Err(e) => panels.problems.push(e.to_string()),
        }
        match self.visibility().await {
            Ok(p) => panels.visibility_ms = p,
            Err(e) => panels.problems.push(e.to_string()),
        }
        let ages = match self.ages(queues).await {
            Ok(ages) => ages,
            Err(e) => {
                panels.problems.push(e.to_string());
                BTreeMap::new()
            }
        };
        (panels, ages)
    }

    fn window_secs(&self) -> i64 {
        i64::try_from(self.window_mins.max(1) * 60).unwrap_or(3600)
    }

    async fn metric_data(
        &self,
        what: &'static str,
        queries: Vec<MetricDataQuery>,
        secs: i64,
    ) -> Result<Series, AwsError> {
        let now = chrono::Utc::now().timestamp();
        let (start, end) = (
            aws_sdk_cloudwatch::primitives::DateTime::from_secs(now - secs),
            aws_sdk_cloudwatch::primitives::DateTime::from_secs(now),
        );
        let mut out = Series::new();
        // At most 500 queries per call.
        for chunk in queries.chunks(500) {
            let mut token = None;
            loop {
                let page = self
                    .cloudwatch
                    .get_metric_data()
                    .set_metric_data_queries(Some(chunk.to_vec()))
                    .start_time(start)
                    .end_time(end)
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| AwsError::Metrics {
                        what,
                        message: aws_sdk_cloudwatch::error::DisplayErrorContext(&e).to_string(),
                    })?;
                for result in page.metric_data_results() {
                    let entry = out.entry(result.id().unwrap_or_default().to_owned()).or_default();
                    entry.extend(result.timestamps().iter().map(|t| t.secs()).zip(result.values().iter().copied()));
                }
                token = page.next_token().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn counts(&self) -> Result<Series, AwsError> {
        let cell = self.spec.cell_id().as_str();
        let queries = counted()
            .into_iter()
            .map(|(id, c)| {
                let mut dims = vec![dimension(CELL_DIMENSION, cell), dimension(FUNCTION_DIMENSION, &c.function)];
                dims.extend(c.class.map(|class| dimension(CLASS_DIMENSION, class)));
                let period = i32::try_from(AWS_BUCKET_SECS).unwrap_or(60);
                stat_query(&id, METRICS_NAMESPACE, c.metric, dims, period, "Sum")
            })
            .collect();
        self.metric_data("record counts", queries, self.window_secs()).await
    }

    async fn visibility(&self) -> Result<Percentiles, AwsError> {
        let writer = Function::StatusWriter.metrics_name();
        let dims =
            || vec![dimension(CELL_DIMENSION, self.spec.cell_id().as_str()), dimension(FUNCTION_DIMENSION, &writer)];
        let period = i32::try_from(self.window_secs()).unwrap_or(3600);
        let queries = ["p50", "p99"]
            .map(|p| stat_query(&format!("vis_{p}"), METRICS_NAMESPACE, "VisibilityLatency", dims(), period, p))
            .to_vec();
        let series = self.metric_data("visibility latency", queries, self.window_secs()).await?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "milliseconds, non-negative")]
        let newest =
            |id: &str| series.get(id).and_then(|v| v.iter().max_by_key(|(t, _)| *t)).map(|(_, v)| v.round() as u64);
        Ok(Percentiles { p50: newest("vis_p50"), p99: newest("vis_p99") })
    }

    async fn ages(&self, queues: &[String]) -> Result<BTreeMap<String, u64>, AwsError> {
        let queries = queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                stat_query(
                    &format!("age{i}"),
                    "AWS/SQS",
                    "ApproximateAgeOfOldestMessage",
                    vec![dimension("QueueName", q)],
                    60,
                    "Maximum",
                )
            })
            .collect();
        let series = self.metric_data("queue ages", queries, 600).await?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "seconds, non-negative")]
        let ages = queues
            .iter()
            .enumerate()
            .filter_map(|(i, q)| {
                let newest = series.get(&format!("age{i}"))?.iter().max_by_key(|(t, _)| *t)?.1;
                Some((q.clone(), newest.round() as u64))
            })
            .collect();
        Ok(ages)
    }
}

/// Folds the record counts into the outcome table, the per-stage error
/// rates and their per-bucket series (a stage's records received are its
/// processed, failed and dead-lettered records; its error rate is the share
/// returned for redelivery, as on the emulators).
fn apply_counts(panels: &mut Panels, counted: &[(String, Counted)], series: &Series) {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "sums of counts")]
    let count = |v: f64| v.max(0.0).round() as u64;
    for (id, c) in counted {
        let Some(points) = series.get(id) else { continue };
        let total: u64 = points.iter().map(|(_, v)| count(*v)).sum();
        if total > 0 {
            *panels.failures.entry(c.label()).or_default() += total;
        }
        let Some(stage) = c.stage else { continue };
        let failed = c.metric == "Failed";
        let bucket_secs = i64::try_from(AWS_BUCKET_SECS).unwrap_or(60);
        for (t, v) in points {
            let n = count(*v);
            let bucket = panels.error_series.entry(t.div_euclid(bucket_secs) * bucket_secs).or_default();
            let cell = bucket.entry(stage.to_string()).or_default();
            cell.0 += n;
            cell.1 += if failed { n } else { 0 };
            let total = panels.stage_errors.entry(stage.to_string()).or_default();
            total.0 += n;
            total.1 += if failed { n } else { 0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CellSpec {
        CellSpec::new(
            bems_core::fields::CellId::new("prod-eu-1").expect("cell"),
            bems_core::fields::Region::new("eu-west-1").expect("region"),
            bems_core::fields::AccountId::new("123456789012").expect("account"),
            bems_core::partition::PartitionCount::new(8).expect("partitions"),
        )
        .expect("spec")
    }

    fn row(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn each_panel_is_one_aggregate_over_the_window_of_the_cell_s_table() {
        let q: HashMap<&str, String> = queries(&spec(), 60).into_iter().collect();
        assert_eq!(
            q["series"],
            "SELECT to_milliseconds(bin(time, 60s)) AS bucket_ms, stage, count(*) AS changes \
             FROM \"bems_prod_eu_1\".\"status_changes\" WHERE measure_name = 'status_change' AND time > ago(60m) \
             GROUP BY bin(time, 60s), stage ORDER BY bucket_ms"
        );
        assert_eq!(
            q["high_value"],
            "SELECT invoice_id, amount, currency, vendor_id, due_date FROM \"bems_prod_eu_1\".\"status_changes\" \
             WHERE measure_name = 'status_change' AND time > ago(60m) AND status = 'submitted' \
             ORDER BY amount * CASE currency WHEN 'EUR' THEN 1.0 WHEN 'USD' THEN 0.92 WHEN 'GBP' THEN 1.17 \
             WHEN 'CHF' THEN 1.05 WHEN 'JPY' THEN 0.0062 WHEN 'SEK' THEN 0.088 ELSE 1.0 END DESC LIMIT 10"
        );
        for (panel, text) in &q {
            assert!(
                text.contains("GROUP BY") || text.contains("LIMIT") || text.contains("approx_percentile"),
                "{panel}"
            );
            assert!(text.contains("time > ago(60m)"), "{panel}");
        }
    }

    #[test]
    fn answers_fill_the_panels_and_a_missing_column_is_named() {
        let mut panels = Panels { bucket_secs: AWS_BUCKET_SECS, ..Panels::default() };
        let series = vec![
            row(&[("bucket_ms", "1795700040000"), ("stage", "ingestion"), ("changes", "120")]),
            row(&[("bucket_ms", "1795700040000"), ("stage", "posting"), ("changes", "80")]),
            row(&[("bucket_ms", "1795700100000"), ("stage", "ingestion"), ("changes", "7")]),
        ];
        apply(&mut panels, "series", &series).expect("series");
        assert_eq!(panels.visible, 207);
        assert_eq!(panels.series[&1_795_700_040], [120, 0, 0, 80]);
        apply(&mut panels, "end_to_end", &vec![row(&[("p50", "41000"), ("p99", "98000")])]).expect("latency");
        assert_eq!(panels.end_to_end_ms, Percentiles { p50: Some(41_000), p99: Some(98_000) });
        let due = vec![
            row(&[("currency", "USD"), ("due_date", "2026-12-28"), ("amount", "1000.0")]),
            row(&[("currency", "EUR"), ("due_date", "2026-12-30"), ("amount", "80.0")]),
        ];
        apply(&mut panels, "due_dates", &due).expect("due");
        let week: f64 = panels.due_weeks["2026-W53"].values().sum();
        assert!((week - 1000.0).abs() < 1e-9, "{week}");
        apply(&mut panels, "terms", &vec![row(&[("net_days", "30"), ("invoices", "12")])]).expect("terms");
        assert_eq!(panels.terms[&30], 12);
        let high = vec![
            row(&[("invoice_id", "INV-1"), ("amount", "1000000"), ("currency", "JPY")]),
            row(&[("invoice_id", "INV-2"), ("amount", "9000"), ("currency", "GBP")]),
        ];
        apply(&mut panels, "high_value", &high).expect("high value");
        assert_eq!(panels.high_value[0].invoice_id, "INV-2");
        assert!((panels.high_value[1].eur_equivalent - 6200.0).abs() < 1e-9);
        let broken = apply(&mut panels, "currencies", &vec![row(&[("invoices", "3")])]).expect_err("no currency");
        assert_eq!(
            broken.to_string(),
            "Timestream (currencies): no value in column \"currency\" (missing from the answer, or null)"
        );
    }

    #[test]
    fn record_counts_become_outcomes_and_per_stage_error_rates() {
        let counted = counted();
        // 4 processors, the writer, the forwarder; 1 + 2 per class each.
        assert_eq!(counted.len(), 6 * (1 + 2 * METRIC_CLASSES.len()));
        let id = |function: &str, metric: &str, class: Option<&str>| {
            counted
                .iter()
                .find(|(_, c)| c.function == function && c.metric == metric && c.class == class)
                .map(|(id, _)| id.clone())
                .expect("query")
        };
        let mut series = Series::new();
        series
            .insert(id("ingestion-processor", "Processed", None), vec![(1_795_700_040, 90.0), (1_795_700_100, 100.0)]);
        series.insert(id("ingestion-processor", "Failed", Some("transient")), vec![(1_795_700_040, 10.0)]);
        series.insert(id("timestream-writer", "Processed", None), vec![(1_795_700_040, 300.0)]);
        let mut panels = Panels::default();
        apply_counts(&mut panels, &counted, &series);
        assert_eq!(panels.stage_errors["ingestion"], (200, 10));
        assert_eq!(panels.error_series[&1_795_700_040]["ingestion"], (100, 10));
        assert_eq!(panels.failures["Processed"], 490);
        assert_eq!(panels.failures["Failed transient"], 10);
        assert!(!panels.stage_errors.contains_key("timestream-writer"));
    }
}
