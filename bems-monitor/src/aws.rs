//! The dashboard over a cell deployed on AWS (`--aws`).
//!
//! On AWS the functions run in Lambda; here only the dashboard (and, if
//! asked, the traffic) runs. Every poll fills the same [`Panels`] the
//! emulator mode fills, from two sources:
//!
//! - the cell's store, through the query layer (`crate::panels`):
//!   PostgreSQL's rollups, or Timestream's aggregate queries over the last
//!   `window` minutes ([`timestream_queries`]), each returning a few
//!   hundred rows at most whatever the event volume, so a poll costs about
//!   the same at 60,000 events per minute as at 60;
//! - CloudWatch `GetMetricData`: the functions' record counts by outcome and
//!   error class (namespace `BEMS`, the Embedded Metric Format documents
//!   `bems_lambda::function` writes), the writer's `VisibilityLatency`
//!   percentiles (event → stored) where the store keeps no store time
//!   (Timestream), and each queue's `ApproximateAgeOfOldestMessage`
//!   (`AWS/SQS`).
//!
//! A failed query leaves its panel as it was and is named in
//! [`Panels::problems`]; the other panels still show.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use bems_batch::METRIC_CLASSES;
use bems_core::Stage;
use bems_core::contract::{CELL_DIMENSION, CLASS_DIMENSION, FUNCTION_DIMENSION, Function, METRICS_NAMESPACE};
use bems_core::routing::CellSpec;
use bems_store::query::Window;
use bems_store::timestream::TimestreamQueries;

use crate::state::{Panels, Percentiles, TO_EUR};

/// Width of a series bucket on AWS, seconds: CloudWatch's one-minute
/// resolution, and a chart of an hour in 60 points.
pub(crate) const AWS_BUCKET_SECS: u64 = 60;

/// A failed poll of CloudWatch.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AwsError {
    /// `GetMetricData` failed.
    #[error("CloudWatch ({what}): {message}")]
    Metrics {
        /// Which metrics.
        what: &'static str,
        /// The service's answer.
        message: String,
    },
}

/// The Timestream queries behind the panels and the over-SLA check, by
/// name (`--print-queries`): the texts the query layer sends for the last
/// `window_mins` minutes, the same at every poll.
pub(crate) fn timestream_queries(spec: &CellSpec, window_mins: u32, sla_secs: u32) -> Vec<(&'static str, String)> {
    let config = aws_sdk_timestreamquery::config::Builder::new()
        .behavior_version(aws_sdk_timestreamquery::config::BehaviorVersion::latest())
        .region(aws_sdk_timestreamquery::config::Region::new(spec.region().to_string()))
        .build();
    let q = TimestreamQueries::new(aws_sdk_timestreamquery::Client::from_conf(config), spec);
    let window = Window::last_minutes(chrono::Utc::now(), window_mins);
    let bucket = u32::try_from(AWS_BUCKET_SECS).unwrap_or(60);
    vec![
        ("visible", q.visible_query(window)),
        ("stage_counts", q.stage_counts_query(window, bucket)),
        ("latencies", q.latencies_query(window)),
        ("money", q.money_query(window)),
        ("largest", q.largest_query(window, &TO_EUR, 10)),
        (
            "open",
            q.open_query(Window::last_minutes(chrono::Utc::now(), 24 * 60), sla_secs, bems_ops::stuck::OVER_SLA_LIMIT),
        ),
    ]
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
    /// The cell's store.
    pub(crate) store: bems_store::Store,
    /// CloudWatch metrics.
    pub(crate) cloudwatch: aws_sdk_cloudwatch::Client,
    /// The cell.
    pub(crate) spec: CellSpec,
    /// Minutes of history the panels cover.
    pub(crate) window_mins: u32,
}

impl Remote {
    /// The panels now with the store's health, and each queue's
    /// oldest-message age in seconds.
    pub(crate) async fn poll(
        &self,
        queues: &[String],
        last: Panels,
    ) -> (Panels, crate::panels::StoreHealth, BTreeMap<String, u64>) {
        let mut panels = Panels {
            bucket_secs: AWS_BUCKET_SECS,
            source: format!(
                "cell on AWS: {} over the last {} min in {}-s buckets by event time; \
                 CloudWatch metrics (namespace {METRICS_NAMESPACE}) for outcomes and error rates",
                self.store.describe(),
                self.window_mins,
                AWS_BUCKET_SECS
            ),
            ..last
        };
        panels.problems.clear();
        panels.failures.clear();
        panels.stage_errors.clear();
        panels.error_series.clear();
        let window = Window::last_minutes(chrono::Utc::now(), self.window_mins);
        let bucket = u32::try_from(AWS_BUCKET_SECS).unwrap_or(60);
        let health = crate::panels::fill(&self.store, window, bucket, &mut panels).await;
        match self.counts().await {
            Ok(series) => apply_counts(&mut panels, &counted(), &series),
            Err(e) => panels.problems.push(e.to_string()),
        }
        // The writer's metric where the store keeps no store time.
        if matches!(self.store, bems_store::Store::Timestream(_)) {
            match self.visibility().await {
                Ok(p) => panels.visibility_ms = p,
                Err(e) => panels.problems.push(e.to_string()),
            }
        }
        let ages = match self.ages(queues).await {
            Ok(ages) => ages,
            Err(e) => {
                panels.problems.push(e.to_string());
                BTreeMap::new()
            }
        };
        (panels, health, ages)
    }

    fn window_secs(&self) -> i64 {
        i64::from(self.window_mins.max(1)) * 60
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

    #[test]
    fn the_timestream_queries_are_the_same_text_at_every_poll() {
        let first = timestream_queries(&spec(), 60, 120);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(first, timestream_queries(&spec(), 60, 120));
        let named: HashMap<&str, &String> = first.iter().map(|(k, v)| (*k, v)).collect();
        assert!(named["stage_counts"].contains("bin(time, 60s)"), "{}", named["stage_counts"]);
        assert!(named["stage_counts"].contains("time >= ago(60m)"));
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
        series.insert(id("status-writer", "Processed", None), vec![(1_795_700_040, 300.0)]);
        let mut panels = Panels::default();
        apply_counts(&mut panels, &counted, &series);
        assert_eq!(panels.stage_errors["ingestion"], (200, 10));
        assert_eq!(panels.error_series[&1_795_700_040]["ingestion"], (100, 10));
        assert_eq!(panels.failures["Processed"], 490);
        assert_eq!(panels.failures["Failed transient"], 10);
        assert!(!panels.stage_errors.contains_key("status-writer"));
    }
}
