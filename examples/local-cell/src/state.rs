//! What the dashboard shows, kept up to date as the cell runs.
//!
//! The Timestream writer's sink is wrapped in [`Tee`]: every record it
//! stores also updates the [`State`] (counts per stage, latencies, money
//! by currency and due week, each invoice's latest status for the SLA
//! check). Queue depths and dead letters are polled from SQS; failures by
//! class come from the functions' own metrics through [`ClassCounts`].
//!
//! Anomaly flags: per stage, the events of each 5-second bucket are compared
//! with an exponentially weighted mean and variance of the earlier buckets
//! (weight 0.2, after 6 buckets of warm-up); a bucket more than 3 standard
//! deviations away is flagged; so is each stage's share of records returned
//! for redelivery (its error rate) in buckets where it received any.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bems_lambda::timestream::{Record, RecordSink, SinkError, Written};
use serde::Serialize;

/// Fixed, indicative rates to EUR for adding amounts of different
/// currencies on the finance view (not market data; the generator's mix).
const TO_EUR: [(&str, f64); 6] =
    [("EUR", 1.0), ("USD", 0.92), ("GBP", 1.17), ("CHF", 1.05), ("JPY", 0.0062), ("SEK", 0.088)];

fn in_eur(currency: &str, amount: f64) -> f64 {
    TO_EUR.iter().find(|(c, _)| *c == currency).map_or(amount, |(_, rate)| amount * rate)
}

/// Width of a time bucket, seconds.
pub(crate) const BUCKET_SECS: u64 = 5;

/// One invoice's latest known status.
#[derive(Debug, Clone)]
struct Latest {
    stage: String,
    status: String,
    time_ms: i64,
}

/// An invoice worth a finance team's attention.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HighValue {
    /// Invoice.
    pub(crate) invoice_id: String,
    /// Amount as text.
    pub(crate) amount: String,
    /// Its currency.
    pub(crate) currency: String,
    /// Vendor id.
    pub(crate) vendor_id: String,
    /// Due date.
    pub(crate) due_date: String,
    /// The amount in EUR at the indicative rate.
    pub(crate) eur_equivalent: f64,
}

/// A queue's depth and the age of its oldest message.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueueState {
    /// Messages waiting.
    pub(crate) depth: u64,
    /// Messages being processed.
    pub(crate) in_flight: u64,
    /// Seconds the oldest has waited (SQS reports it only on AWS; the
    /// emulators leave it 0).
    pub(crate) oldest_secs: u64,
}

/// A flagged departure from a baseline.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Anomaly {
    /// The stage.
    pub(crate) stage: String,
    /// `event rate` or `error rate`.
    pub(crate) what: String,
    /// The bucket's value.
    pub(crate) value: f64,
    /// The baseline mean.
    pub(crate) baseline: f64,
    /// Standard deviations away.
    pub(crate) sigmas: f64,
    /// Seconds into the run.
    pub(crate) at_secs: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Ewma {
    n: u32,
    mean: f64,
    var: f64,
}

impl Ewma {
    const ALPHA: f64 = 0.2;
    const WARM_UP: u32 = 6;
    const THRESHOLD: f64 = 3.0;

    /// Compares `x` with the baseline, then folds it in; the number of
    /// standard deviations when it is an anomaly.
    fn observe(&mut self, x: f64) -> Option<f64> {
        let sd = self.var.sqrt();
        let flagged = (self.n >= Self::WARM_UP && sd > 0.0 && (x - self.mean).abs() > Self::THRESHOLD * sd)
            .then(|| (x - self.mean).abs() / sd);
        if self.n == 0 {
            self.mean = x;
        } else {
            let diff = x - self.mean;
            self.mean += Self::ALPHA * diff;
            self.var = (1.0 - Self::ALPHA) * (self.var + Self::ALPHA * diff * diff);
        }
        self.n += 1;
        flagged
    }
}

/// Everything the dashboard and the summary read.
#[derive(Debug)]
pub(crate) struct State {
    started: Instant,
    /// The cell.
    pub(crate) cell: String,
    /// The SLA, seconds.
    pub(crate) sla_secs: u64,
    /// Invoices sent.
    pub(crate) sent: u64,
    /// Invoices refused by validation (never sent), with the last problem.
    pub(crate) invalid: u64,
    last_invalid: String,
    /// Invoices sent that are meant to fail approval.
    pub(crate) failing_sent: u64,
    /// Status changes stored in Timestream.
    pub(crate) visible: u64,
    /// Per bucket index, per stage: status changes stored.
    buckets: BTreeMap<u64, BTreeMap<String, u64>>,
    visibility_ms: Vec<u64>,
    end_to_end_ms: Vec<u64>,
    by_currency: BTreeMap<String, (u64, f64)>,
    due_weeks: BTreeMap<String, BTreeMap<String, f64>>,
    terms: BTreeMap<u16, u64>,
    high_value: Vec<HighValue>,
    latest: HashMap<String, Latest>,
    /// Queue name → state.
    pub(crate) queues: BTreeMap<String, QueueState>,
    /// The stuck invoices at the last check.
    pub(crate) stuck: Vec<bems_cli::stuck::Stuck>,
    /// Alerts published (once per stuck invoice).
    pub(crate) alerts_sent: u64,
    failures: Arc<ClassCounts>,
    rate_baselines: BTreeMap<String, Ewma>,
    error_baselines: BTreeMap<String, Ewma>,
    /// Per stage: records received and returned for redelivery, in total.
    stage_errors: BTreeMap<String, (u64, u64)>,
    /// Per bucket, per stage: the same.
    error_buckets: BTreeMap<u64, BTreeMap<String, (u64, u64)>>,
    anomalies: Vec<Anomaly>,
    judged_bucket: u64,
}

fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(i).copied()
}

/// At most this many latency samples are kept (uniform reservoir).
const SAMPLES: usize = 50_000;

fn sample(into: &mut Vec<u64>, value: u64, seen: u64) {
    if into.len() < SAMPLES {
        into.push(value);
    } else {
        let j = fastrand::u64(0..seen.max(1));
        if let Some(slot) = usize::try_from(j).ok().and_then(|j| into.get_mut(j)) {
            *slot = value;
        }
    }
}

impl State {
    /// An empty state for `cell`.
    pub(crate) fn new(cell: &str, sla_secs: u64, failures: Arc<ClassCounts>) -> State {
        State {
            started: Instant::now(),
            cell: cell.to_owned(),
            sla_secs,
            sent: 0,
            invalid: 0,
            last_invalid: String::new(),
            failing_sent: 0,
            visible: 0,
            buckets: BTreeMap::new(),
            visibility_ms: Vec::new(),
            end_to_end_ms: Vec::new(),
            by_currency: BTreeMap::new(),
            due_weeks: BTreeMap::new(),
            terms: BTreeMap::new(),
            high_value: Vec::new(),
            latest: HashMap::new(),
            queues: BTreeMap::new(),
            stuck: Vec::new(),
            alerts_sent: 0,
            failures,
            rate_baselines: BTreeMap::new(),
            error_baselines: BTreeMap::new(),
            stage_errors: BTreeMap::new(),
            error_buckets: BTreeMap::new(),
            anomalies: Vec::new(),
            judged_bucket: 0,
        }
    }

    /// Seconds since the start.
    pub(crate) fn elapsed_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Counts an invalid payload.
    pub(crate) fn invalid(&mut self, problem: String) {
        self.invalid += 1;
        self.last_invalid = problem;
    }

    /// Takes in one stored record.
    fn record(&mut self, r: &Record, now_ms: i64) {
        let dim =
            |name: &str| r.dimensions.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap_or_default();
        let measure = |name: &str| r.measures.iter().find(|m| m.name == name).map(|m| m.value.clone());
        let (invoice, stage) = (dim("invoice_id"), dim("stage"));
        let status = measure("status").unwrap_or_default();
        self.visible += 1;
        let bucket = self.started.elapsed().as_secs() / BUCKET_SECS;
        *self.buckets.entry(bucket).or_default().entry(stage.clone()).or_default() += 1;
        sample(&mut self.visibility_ms, u64::try_from(now_ms - r.time_ms).unwrap_or(0), self.visible);
        if status == "posted"
            && let Some(ms) = measure("end_to_end_latency_ms").and_then(|v| v.parse::<u64>().ok())
        {
            sample(&mut self.end_to_end_ms, ms, self.visible);
        }
        if status == "submitted" {
            let amount: f64 = measure("amount").and_then(|a| a.parse().ok()).unwrap_or(0.0);
            let currency = measure("currency").unwrap_or_default();
            let entry = self.by_currency.entry(currency.clone()).or_default();
            entry.0 += 1;
            entry.1 += amount;
            if let Some(due) = measure("due_date").and_then(|d| d.parse::<chrono::NaiveDate>().ok()) {
                use chrono::Datelike;
                let week = due.iso_week();
                let key = format!("{}-W{:02}", week.year(), week.week());
                *self.due_weeks.entry(key).or_default().entry(currency.clone()).or_default() +=
                    in_eur(&currency, amount);
            }
            self.high_value.push(HighValue {
                invoice_id: invoice.clone(),
                amount: measure("amount").unwrap_or_default(),
                vendor_id: measure("vendor_id").unwrap_or_default(),
                due_date: measure("due_date").unwrap_or_default(),
                eur_equivalent: (in_eur(&currency, amount) * 100.0).round() / 100.0,
                currency,
            });
            self.high_value.sort_by(|a, b| b.eur_equivalent.total_cmp(&a.eur_equivalent));
            self.high_value.truncate(10);
        }
        let newer = self.latest.get(&invoice).is_none_or(|l| l.time_ms <= r.time_ms);
        if newer {
            self.latest.insert(invoice, Latest { stage, status, time_ms: r.time_ms });
        }
    }

    /// Counts a stage processor's batch: records received, and returned
    /// for redelivery.
    pub(crate) fn processed(&mut self, stage: bems_core::Stage, received: u64, failed: u64) {
        if received == 0 {
            return;
        }
        let total = self.stage_errors.entry(stage.to_string()).or_default();
        total.0 += received;
        total.1 += failed;
        let bucket = self.started.elapsed().as_secs() / BUCKET_SECS;
        let this = self.error_buckets.entry(bucket).or_default().entry(stage.to_string()).or_default();
        this.0 += received;
        this.1 += failed;
    }

    /// Records the payment terms of a sent invoice.
    pub(crate) fn sent_terms(&mut self, net_days: u16) {
        *self.terms.entry(net_days).or_default() += 1;
    }

    /// The invoices whose latest status is not terminal and older than the SLA.
    pub(crate) fn over_sla(&self, now_ms: i64) -> Vec<bems_cli::stuck::Stuck> {
        let limit = i64::try_from(self.sla_secs * 1000).unwrap_or(i64::MAX);
        let mut out: Vec<bems_cli::stuck::Stuck> = self
            .latest
            .iter()
            .filter(|(_, l)| !matches!(l.status.as_str(), "posted" | "rejected") && now_ms - l.time_ms > limit)
            .map(|(invoice, l)| {
                let age = u64::try_from((now_ms - l.time_ms) / 1000).unwrap_or(0);
                bems_cli::stuck::Stuck {
                    invoice_id: Some(invoice.clone()),
                    kind: bems_cli::stuck::Kind::OverSla,
                    place: l.stage.clone(),
                    reason: format!(
                        "no status change for {age} s since '{}': the {} stage has not acted on it",
                        l.status, l.stage
                    ),
                    age_secs: age,
                    event_id: None,
                    more_in_group: false,
                }
            })
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.age_secs));
        out
    }

    /// Judges the buckets completed since the last call against their
    /// baselines.
    pub(crate) fn judge(&mut self) {
        let current = self.started.elapsed().as_secs() / BUCKET_SECS;
        while self.judged_bucket < current {
            let b = self.judged_bucket;
            let counts = self.buckets.get(&b).cloned().unwrap_or_default();
            for stage in ["ingestion", "reconciliation", "authorization", "posting"] {
                #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
                let x = counts.get(stage).copied().unwrap_or(0) as f64 / BUCKET_SECS as f64;
                let baseline = self.rate_baselines.entry(stage.to_owned()).or_default();
                let mean = baseline.mean;
                if let Some(sigmas) = baseline.observe(x) {
                    self.anomalies.push(Anomaly {
                        stage: stage.to_owned(),
                        what: "event rate".into(),
                        value: x,
                        baseline: mean,
                        sigmas,
                        at_secs: b * BUCKET_SECS,
                    });
                }
                let errors = self.error_buckets.get(&b).and_then(|e| e.get(stage)).copied();
                if let Some((received, failed)) = errors.filter(|(r, _)| *r > 0) {
                    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
                    let share = 100.0 * failed as f64 / received as f64;
                    let baseline = self.error_baselines.entry(stage.to_owned()).or_default();
                    let mean = baseline.mean;
                    if let Some(sigmas) = baseline.observe(share) {
                        self.anomalies.push(Anomaly {
                            stage: stage.to_owned(),
                            what: "error rate (%)".into(),
                            value: share,
                            baseline: mean,
                            sigmas,
                            at_secs: b * BUCKET_SECS,
                        });
                    }
                }
            }
            self.judged_bucket += 1;
        }
        let keep = self.anomalies.len().saturating_sub(20);
        self.anomalies.drain(..keep);
    }

    /// The JSON the dashboard reads.
    pub(crate) fn snapshot(&self) -> serde_json::Value {
        let stages = ["ingestion", "reconciliation", "authorization", "posting"];
        let series: Vec<serde_json::Value> = self
            .buckets
            .iter()
            .map(|(b, counts)| {
                let mut row = serde_json::json!({ "t": b * BUCKET_SECS });
                for s in stages {
                    row[s] = counts.get(s).copied().unwrap_or(0).into();
                }
                row
            })
            .collect();
        let terms: Vec<serde_json::Value> =
            self.terms.iter().map(|(d, n)| serde_json::json!({ "netDays": d, "invoices": n })).collect();
        let currencies: Vec<serde_json::Value> = self
            .by_currency
            .iter()
            .map(|(c, (n, sum))| serde_json::json!({ "currency": c, "invoices": n, "amount": (sum * 100.0).round() / 100.0 }))
            .collect();
        let weeks: Vec<serde_json::Value> =
            self.due_weeks.iter().map(|(w, by)| serde_json::json!({ "week": w, "byCurrency": by })).collect();
        let failures = self.failures.snapshot();
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let stage_errors: Vec<serde_json::Value> = self
            .stage_errors
            .iter()
            .map(|(stage, (received, failed))| {
                let percent = if *received == 0 { 0.0 } else { 100.0 * *failed as f64 / *received as f64 };
                serde_json::json!({
                    "stage": stage,
                    "received": received,
                    "returned": failed,
                    "percent": (percent * 100.0).round() / 100.0,
                })
            })
            .collect();
        serde_json::json!({
            "cell": self.cell,
            "elapsedSecs": self.elapsed_secs(),
            "slaSecs": self.sla_secs,
            "sent": self.sent,
            "invalid": self.invalid,
            "lastInvalid": self.last_invalid,
            "failingSent": self.failing_sent,
            "visible": self.visible,
            "series": series,
            "visibilityMs": { "p50": percentile(&self.visibility_ms, 0.5), "p99": percentile(&self.visibility_ms, 0.99) },
            "endToEndMs": { "p50": percentile(&self.end_to_end_ms, 0.5), "p99": percentile(&self.end_to_end_ms, 0.99) },
            "currencies": currencies,
            "dueWeeks": weeks,
            "terms": terms,
            "highValue": self.high_value,
            "queues": self.queues,
            "failures": failures,
            "stageErrors": stage_errors,
            "stuck": self.stuck,
            "alertsSent": self.alerts_sent,
            "anomalies": self.anomalies,
            "fxNote": "EUR equivalents at fixed indicative rates (USD 0.92, GBP 1.17, CHF 1.05, JPY 0.0062, SEK 0.088), not market data",
            "anomalyMethod": "per stage, the events stored and the share of records returned for redelivery in each 5-second bucket, each against an exponentially weighted mean and variance of the earlier buckets (weight 0.2, 6 buckets of warm-up); flagged beyond 3 standard deviations",
        })
    }

    /// Visibility latency percentiles, milliseconds.
    pub(crate) fn visibility(&self) -> (Option<u64>, Option<u64>) {
        (percentile(&self.visibility_ms, 0.5), percentile(&self.visibility_ms, 0.99))
    }
}

/// The writer's sink, teeing every stored record into the [`State`].
#[derive(Clone)]
pub(crate) struct Tee<S> {
    /// The real sink.
    pub(crate) inner: S,
    /// The state.
    pub(crate) state: Arc<Mutex<State>>,
}

impl<S: RecordSink + Sync> RecordSink for Tee<S> {
    async fn write(&self, records: &[Record]) -> Result<Vec<Written>, SinkError> {
        let written = self.inner.write(records).await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        if let Ok(mut state) = self.state.lock() {
            for (r, w) in records.iter().zip(&written) {
                if *w == Written::Ok {
                    state.record(r, now_ms);
                }
            }
        }
        Ok(written)
    }
}

/// A `metrics` recorder that counts the functions' `Processed`, `Failed`
/// and `DeadLettered` records, the latter two by class: the local stand-in
/// for the CloudWatch metrics the Lambda functions emit.
#[derive(Debug, Default)]
pub(crate) struct ClassCounts {
    counts: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl ClassCounts {
    fn counter(&self, key: &metrics::Key) -> Arc<AtomicU64> {
        let class = key.labels().find(|l| l.key() == "class").map(|l| l.value().to_owned());
        let name = match class {
            Some(class) => format!("{} {class}", key.name()),
            None => key.name().to_owned(),
        };
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.entry(name).or_default().clone()
    }

    /// Counts by name (and class).
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
        let counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.iter().map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed))).collect()
    }
}

struct Count(Arc<AtomicU64>);

impl metrics::CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

/// Installs `counts` as the process's recorder.
pub(crate) struct Recorder(pub Arc<ClassCounts>);

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(Arc::new(Count(self.0.counter(key))))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_is_not_flagged_and_a_jump_is() {
        let mut e = Ewma::default();
        for x in [10.0, 11.0, 9.0, 10.0, 10.5, 9.5, 10.0, 10.2] {
            assert!(e.observe(x).is_none(), "{x}");
        }
        assert!(e.observe(40.0).is_some_and(|s| s > 3.0));
    }

    #[test]
    fn percentiles_pick_from_the_sorted_samples() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(51));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
