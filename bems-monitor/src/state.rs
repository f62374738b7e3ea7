//! What the dashboard shows, kept up to date as the cell runs.
//!
//! The panels ([`Panels`]) come from the cell's store through the query
//! layer (`crate::panels`), polled: locally from the PostgreSQL the local
//! writer stores into, on AWS from the cell's store (PostgreSQL or
//! Timestream) with CloudWatch's metrics beside it (`crate::aws`). A store
//! that does not answer keeps its panels at their last values and is
//! named as failing ([`State::apply_store`]); the queue panels go on.
//! Locally, failures by class come from the functions' own metrics through
//! [`ClassCounts`], and error rates from each processor's polls.
//!
//! With `--store timestream` on the emulators (moto stores writes but runs
//! no query) the writer's sink is wrapped in [`Tee`] instead: every record
//! it stores also updates the [`State`] (counts per stage, latencies, money
//! by currency and due week, each invoice's latest status for the SLA
//! check). Queue depths, dead letters and stuck invoices are polled from
//! SQS (and the store) in every mode.
//!
//! Anomaly flags, recomputed from the panels on every read: per stage, the
//! event rate of each completed bucket is compared with an exponentially
//! weighted mean and variance of the earlier buckets (weight 0.2, after 6
//! buckets of warm-up); a bucket more than 3 standard deviations away is
//! flagged; so is each stage's share of records returned for redelivery
//! (its error rate) in buckets where it received any.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bems_core::Stage;
use bems_lambda::timestream::Record;
use bems_lambda::writer::{SinkError, StatusSink, Written};
use serde::Serialize;

/// Fixed, indicative rates to EUR for adding amounts of different
/// currencies on the finance view (not market data; the generator's mix).
pub(crate) const TO_EUR: [(&str, f64); 6] =
    [("EUR", 1.0), ("USD", 0.92), ("GBP", 1.17), ("CHF", 1.05), ("JPY", 0.0062), ("SEK", 0.088)];

const FX_NOTE: &str =
    "EUR equivalents at fixed indicative rates (USD 0.92, GBP 1.17, CHF 1.05, JPY 0.0062, SEK 0.088), not market data";

const ANOMALY_METHOD: &str = "per stage, the status changes and the share of records returned for redelivery in each completed bucket, each against an exponentially weighted mean and variance of the earlier buckets (weight 0.2, 6 buckets of warm-up); flagged beyond 3 standard deviations";

/// `amount` of `currency` in EUR at the indicative rate (unknown
/// currencies count at par).
pub(crate) fn in_eur(currency: &str, amount: f64) -> f64 {
    TO_EUR.iter().find(|(c, _)| *c == currency).map_or(amount, |(_, rate)| amount * rate)
}

/// Width of a time bucket on the emulators, seconds.
pub(crate) const LOCAL_BUCKET_SECS: u64 = 10;

/// The stages' names, in pipeline order (the order of a series row).
const STAGES: [&str; 4] = ["ingestion", "reconciliation", "authorization", "posting"];

fn stage_index(stage: &str) -> Option<usize> {
    STAGES.iter().position(|s| *s == stage)
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// One invoice's latest known status.
#[derive(Debug, Clone)]
struct Latest {
    stage: String,
    status: String,
    time_ms: i64,
}

/// An invoice worth a finance team's attention.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Seconds the oldest has waited (CloudWatch's
    /// `ApproximateAgeOfOldestMessage` on AWS; the emulators leave it 0).
    pub(crate) oldest_secs: u64,
}

/// A flagged departure from a baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Anomaly {
    /// The stage.
    pub(crate) stage: String,
    /// `event rate (/s)` or `error rate (%)`.
    pub(crate) what: String,
    /// The bucket's value.
    pub(crate) value: f64,
    /// The baseline mean.
    pub(crate) baseline: f64,
    /// Standard deviations away.
    pub(crate) sigmas: f64,
    /// The bucket's start, Unix seconds.
    pub(crate) at: i64,
}

/// Two percentiles, milliseconds; `None` without data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    /// Median.
    pub(crate) p50: Option<u64>,
    /// 99th percentile.
    pub(crate) p99: Option<u64>,
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

/// What the dashboard's panels show, whichever source filled them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Panels {
    /// Status changes stored.
    pub(crate) visible: u64,
    /// Width of a series bucket, seconds.
    pub(crate) bucket_secs: u64,
    /// Bucket start (Unix seconds) → status changes per stage, in pipeline order.
    pub(crate) series: BTreeMap<i64, [u64; 4]>,
    /// Event → visible in Timestream.
    pub(crate) visibility_ms: Percentiles,
    /// Submitted → posted.
    pub(crate) end_to_end_ms: Percentiles,
    /// Currency → (invoices submitted, their amount).
    pub(crate) currencies: BTreeMap<String, (u64, f64)>,
    /// ISO week of the due date → currency → amount in EUR.
    pub(crate) due_weeks: BTreeMap<String, BTreeMap<String, f64>>,
    /// Payment terms (net days) → invoices.
    pub(crate) terms: BTreeMap<u16, u64>,
    /// The ten largest submitted invoices by EUR equivalent.
    pub(crate) high_value: Vec<HighValue>,
    /// Stage → (records received, returned for redelivery).
    pub(crate) stage_errors: BTreeMap<String, (u64, u64)>,
    /// Bucket start → stage → (records received, returned for redelivery).
    pub(crate) error_series: BTreeMap<i64, BTreeMap<String, (u64, u64)>>,
    /// Records by outcome (and error class), as the functions count them.
    pub(crate) failures: BTreeMap<String, u64>,
    /// Where the numbers come from.
    pub(crate) source: String,
    /// Panels that could not be filled at the last refresh, and why.
    pub(crate) problems: Vec<String>,
}

/// The store the panels come from, and whether it answers.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoreState {
    /// What and where it is (no secrets).
    pub(crate) name: String,
    /// Whether the last poll was answered.
    pub(crate) ok: bool,
    /// Why not.
    pub(crate) error: Option<String>,
    /// Unix seconds of the last answered poll.
    pub(crate) answered_at: Option<i64>,
}

impl Panels {
    /// Takes the parts the store answers (visible, series, latencies,
    /// money, largest invoices) from `from`.
    pub(crate) fn take_store_parts(&mut self, from: Panels) {
        self.visible = from.visible;
        self.series = from.series;
        self.visibility_ms = from.visibility_ms;
        self.end_to_end_ms = from.end_to_end_ms;
        self.currencies = from.currencies;
        self.due_weeks = from.due_weeks;
        self.terms = from.terms;
        self.high_value = from.high_value;
    }

    /// Adds `amount` of `currency`, due on `due`, to the cash-outflow weeks.
    pub(crate) fn add_due(&mut self, currency: &str, due: chrono::NaiveDate, amount: f64) {
        use chrono::Datelike;
        let week = due.iso_week();
        let key = format!("{}-W{:02}", week.year(), week.week());
        *self.due_weeks.entry(key).or_default().entry(currency.to_owned()).or_default() += in_eur(currency, amount);
    }

    /// Keeps `candidate` if it is among the ten largest by EUR equivalent.
    pub(crate) fn offer_high_value(&mut self, candidate: HighValue) {
        self.high_value.push(candidate);
        self.high_value.sort_by(|a, b| b.eur_equivalent.total_cmp(&a.eur_equivalent));
        self.high_value.truncate(10);
    }

    /// The anomalies of the buckets that start before `complete_before`
    /// (Unix seconds), the newest 20.
    pub(crate) fn anomalies(&self, complete_before: i64) -> Vec<Anomaly> {
        let step = i64::try_from(self.bucket_secs.max(1)).unwrap_or(1);
        let Some(&first) = self.series.keys().next().into_iter().chain(self.error_series.keys()).min() else {
            return Vec::new();
        };
        let mut rates = [Ewma::default(); 4];
        let mut errors = [Ewma::default(); 4];
        let mut out = Vec::new();
        let mut at = first;
        while at + step <= complete_before {
            let counts = self.series.get(&at).copied().unwrap_or_default();
            for (i, stage) in STAGES.iter().enumerate() {
                #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
                let x = counts[i] as f64 / step as f64;
                let baseline = rates[i].mean;
                if let Some(sigmas) = rates[i].observe(x) {
                    out.push(Anomaly {
                        stage: (*stage).into(),
                        what: "event rate (/s)".into(),
                        value: x,
                        baseline,
                        sigmas,
                        at,
                    });
                }
                let bucket = self.error_series.get(&at).and_then(|e| e.get(*stage)).copied();
                if let Some((received, failed)) = bucket.filter(|(r, _)| *r > 0) {
                    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
                    let share = 100.0 * failed as f64 / received as f64;
                    let baseline = errors[i].mean;
                    if let Some(sigmas) = errors[i].observe(share) {
                        out.push(Anomaly {
                            stage: (*stage).into(),
                            what: "error rate (%)".into(),
                            value: share,
                            baseline,
                            sigmas,
                            at,
                        });
                    }
                }
            }
            at += step;
        }
        let keep = out.len().saturating_sub(20);
        out.drain(..keep);
        out
    }
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

fn percentiles(values: &[u64]) -> Percentiles {
    Percentiles { p50: percentile(values, 0.5), p99: percentile(values, 0.99) }
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

/// One row of the status-changes chart.
#[derive(Debug, Serialize)]
struct SeriesRow {
    t: i64,
    ingestion: u64,
    reconciliation: u64,
    authorization: u64,
    posting: u64,
}

/// What `/api/state` answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Snapshot {
    mode: &'static str,
    source: String,
    problems: Vec<String>,
    cell: String,
    elapsed_secs: u64,
    sla_secs: u64,
    sent: u64,
    invalid: u64,
    last_invalid: String,
    failing_sent: u64,
    visible: u64,
    bucket_secs: u64,
    series: Vec<SeriesRow>,
    visibility_ms: Percentiles,
    end_to_end_ms: Percentiles,
    currencies: Vec<serde_json::Value>,
    due_weeks: Vec<serde_json::Value>,
    terms: Vec<serde_json::Value>,
    high_value: Vec<HighValue>,
    queues: BTreeMap<String, QueueState>,
    failures: BTreeMap<String, u64>,
    stage_errors: Vec<serde_json::Value>,
    stuck: Vec<bems_ops::stuck::Stuck>,
    alerts_sent: u64,
    store: StoreState,
    anomalies: Vec<Anomaly>,
    fx_note: &'static str,
    anomaly_method: &'static str,
}

/// Everything the dashboard and the summary read.
#[derive(Debug)]
pub(crate) struct State {
    started: Instant,
    /// `local` or `aws`.
    mode: &'static str,
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
    /// Events the bus accepted from the producer and the stages.
    pub(crate) published: u64,
    traffic_secs: Option<u64>,
    visibility_max_ms: Option<u64>,
    /// The panels.
    pub(crate) panels: Panels,
    visibility_ms: Vec<u64>,
    end_to_end_ms: Vec<u64>,
    latest: HashMap<String, Latest>,
    /// Queue name → state.
    pub(crate) queues: BTreeMap<String, QueueState>,
    /// The stuck invoices at the last check.
    pub(crate) stuck: Vec<bems_ops::stuck::Stuck>,
    /// Alerts published (once per stuck invoice).
    pub(crate) alerts_sent: u64,
    /// What the last queue and stuck check could not read, and why.
    pub(crate) monitor_problems: Vec<String>,
    /// On the emulators: the functions' record counts.
    failures: Option<Arc<ClassCounts>>,
    /// Whether the panels come from [`Tee`] (the writer's records) rather
    /// than from store queries.
    teed: bool,
    /// The store and its health.
    pub(crate) store: StoreState,
}

impl State {
    /// The state of a cell on the emulators whose store is polled, with
    /// `failures` counted locally.
    pub(crate) fn local(cell: &str, sla_secs: u64, failures: Arc<ClassCounts>, store: &str) -> State {
        let panels = Panels {
            bucket_secs: LOCAL_BUCKET_SECS,
            source: format!(
                "the cell's store ({store}), queried every 2 s, by event time; error rates from each stage processor's polls"
            ),
            ..Panels::default()
        };
        let mut state = State::new("local", cell, sla_secs, panels, Some(failures));
        state.store.name = store.to_owned();
        state
    }

    /// The state of a cell on the emulators with Timestream on moto, its
    /// panels fed by [`Tee`] and `failures`.
    pub(crate) fn local_teed(cell: &str, sla_secs: u64, failures: Arc<ClassCounts>) -> State {
        let panels = Panels {
            bucket_secs: LOCAL_BUCKET_SECS,
            source: "the local Timestream writer's stored records (moto runs no query), bucketed by when they were stored; error rates from each stage processor's polls".into(),
            ..Panels::default()
        };
        let mut state = State::new("local", cell, sla_secs, panels, Some(failures));
        state.teed = true;
        state.store = StoreState { name: "timestream (moto)".into(), ok: true, error: None, answered_at: None };
        state
    }

    /// The state of a cell on AWS, its panels replaced by each poll.
    pub(crate) fn aws(cell: &str, sla_secs: u64, store: &str) -> State {
        let mut state = State::new("aws", cell, sla_secs, Panels::default(), None);
        state.store.name = store.to_owned();
        state
    }

    fn new(mode: &'static str, cell: &str, sla_secs: u64, panels: Panels, failures: Option<Arc<ClassCounts>>) -> State {
        State {
            started: Instant::now(),
            mode,
            cell: cell.to_owned(),
            sla_secs,
            sent: 0,
            invalid: 0,
            last_invalid: String::new(),
            failing_sent: 0,
            published: 0,
            traffic_secs: None,
            visibility_max_ms: None,
            panels,
            visibility_ms: Vec::new(),
            end_to_end_ms: Vec::new(),
            latest: HashMap::new(),
            queues: BTreeMap::new(),
            stuck: Vec::new(),
            alerts_sent: 0,
            monitor_problems: Vec::new(),
            failures,
            teed: false,
            store: StoreState::default(),
        }
    }

    /// A copy of the panels for a poll to fill.
    pub(crate) fn panels_to_fill(&self) -> Panels {
        self.panels.clone()
    }

    /// Takes a store poll's panels, or, when the store did not answer,
    /// keeps the last ones and names the store as failing.
    pub(crate) fn apply_store(&mut self, polled: Panels, health: crate::panels::StoreHealth) {
        if health.error.is_none() {
            self.panels.take_store_parts(polled);
        }
        self.record_health(health);
    }

    fn record_health(&mut self, health: crate::panels::StoreHealth) {
        self.store.ok = health.error.is_none();
        if self.store.ok {
            self.store.answered_at = Some(now_unix());
        }
        self.store.error = health.error;
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

    fn bucket(&self, unix: i64) -> i64 {
        let width = i64::try_from(self.panels.bucket_secs.max(1)).unwrap_or(1);
        unix.div_euclid(width) * width
    }

    /// Takes in one stored record.
    fn record(&mut self, r: &Record, now_ms: i64) {
        use bems_core::contract::columns;
        let dim =
            |name: &str| r.dimensions.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap_or_default();
        let measure = |name: &str| r.measures.iter().find(|m| m.name == name).map(|m| m.value.clone());
        let (invoice, stage) = (dim(columns::INVOICE_ID), dim(columns::STAGE));
        let status = measure(columns::STATUS).unwrap_or_default();
        self.panels.visible += 1;
        let bucket = self.bucket(now_ms.div_euclid(1000));
        if let Some(i) = stage_index(&stage) {
            self.panels.series.entry(bucket).or_default()[i] += 1;
        }
        let visibility = u64::try_from(now_ms - r.time_ms).unwrap_or(0);
        sample(&mut self.visibility_ms, visibility, self.panels.visible);
        self.visibility_max_ms = self.visibility_max_ms.max(Some(visibility));
        if status == "posted"
            && let Some(ms) = measure(columns::END_TO_END_LATENCY_MS).and_then(|v| v.parse::<u64>().ok())
        {
            sample(&mut self.end_to_end_ms, ms, self.panels.visible);
        }
        if status == "submitted" {
            let amount: f64 = measure(columns::AMOUNT).and_then(|a| a.parse().ok()).unwrap_or(0.0);
            let currency = measure(columns::CURRENCY).unwrap_or_default();
            let entry = self.panels.currencies.entry(currency.clone()).or_default();
            entry.0 += 1;
            entry.1 += amount;
            if let Some(due) = measure(columns::DUE_DATE).and_then(|d| d.parse::<chrono::NaiveDate>().ok()) {
                self.panels.add_due(&currency, due, amount);
            }
            self.panels.offer_high_value(HighValue {
                invoice_id: invoice.clone(),
                amount: measure(columns::AMOUNT).unwrap_or_default(),
                vendor_id: measure(columns::VENDOR_ID).unwrap_or_default(),
                due_date: measure(columns::DUE_DATE).unwrap_or_default(),
                eur_equivalent: (in_eur(&currency, amount) * 100.0).round() / 100.0,
                currency,
            });
        }
        let newer = self.latest.get(&invoice).is_none_or(|l| l.time_ms <= r.time_ms);
        if newer {
            self.latest.insert(invoice, Latest { stage, status, time_ms: r.time_ms });
        }
    }

    /// Counts a stage processor's batch: records received, and returned
    /// for redelivery.
    pub(crate) fn processed(&mut self, stage: Stage, received: u64, failed: u64) {
        if received == 0 {
            return;
        }
        let total = self.panels.stage_errors.entry(stage.to_string()).or_default();
        total.0 += received;
        total.1 += failed;
        let bucket = self.bucket(now_unix());
        let this = self.panels.error_series.entry(bucket).or_default().entry(stage.to_string()).or_default();
        this.0 += received;
        this.1 += failed;
    }

    /// Records the payment terms of a sent invoice (with [`Tee`]; otherwise
    /// the terms come from the store).
    pub(crate) fn sent_terms(&mut self, net_days: u16) {
        if self.teed {
            *self.panels.terms.entry(net_days).or_default() += 1;
        }
    }

    /// Replaces the panels with a poll's answers (AWS); when the store
    /// did not answer, its panels keep their last values.
    pub(crate) fn replace_panels(&mut self, panels: Panels, health: crate::panels::StoreHealth) {
        let last = std::mem::replace(&mut self.panels, panels);
        if health.error.is_some() {
            self.panels.take_store_parts(last);
        }
        self.record_health(health);
    }

    /// The invoices whose latest stored status is not terminal and older
    /// than the SLA, from what [`Tee`] saw (otherwise
    /// `bems_ops::stuck::over_sla` asks the store).
    pub(crate) fn over_sla(&self, now_ms: i64) -> Vec<bems_ops::stuck::Stuck> {
        let limit = i64::try_from(self.sla_secs * 1000).unwrap_or(i64::MAX);
        let mut out: Vec<bems_ops::stuck::Stuck> = self
            .latest
            .iter()
            .filter(|(_, l)| !matches!(l.status.as_str(), "posted" | "rejected") && now_ms - l.time_ms > limit)
            .map(|(invoice, l)| {
                let age = u64::try_from((now_ms - l.time_ms) / 1000).unwrap_or(0);
                bems_ops::stuck::Stuck {
                    invoice_id: Some(invoice.clone()),
                    kind: bems_ops::stuck::Kind::OverSla,
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

    /// The anomalies of the completed buckets.
    pub(crate) fn anomalies(&self) -> Vec<Anomaly> {
        self.panels.anomalies(self.bucket(now_unix()))
    }

    /// What the dashboard reads.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut panels = self.panels.clone();
        if let Some(counts) = &self.failures {
            panels.failures = counts.snapshot();
        }
        if self.teed {
            panels.visibility_ms = percentiles(&self.visibility_ms);
            panels.end_to_end_ms = percentiles(&self.end_to_end_ms);
        }
        let series = panels
            .series
            .iter()
            .map(|(t, c)| SeriesRow {
                t: *t,
                ingestion: c[0],
                reconciliation: c[1],
                authorization: c[2],
                posting: c[3],
            })
            .collect();
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let stage_errors = panels
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
        Snapshot {
            mode: self.mode,
            source: panels.source.clone(),
            problems: panels
                .problems
                .iter()
                .chain(&self.monitor_problems)
                .cloned()
                .chain(self.store.error.as_ref().map(|e| format!("the store's panels ({}): {e}", self.store.name)))
                .collect(),
            cell: self.cell.clone(),
            elapsed_secs: self.elapsed_secs(),
            sla_secs: self.sla_secs,
            sent: self.sent,
            invalid: self.invalid,
            last_invalid: self.last_invalid.clone(),
            failing_sent: self.failing_sent,
            visible: panels.visible,
            bucket_secs: panels.bucket_secs,
            series,
            visibility_ms: panels.visibility_ms,
            end_to_end_ms: panels.end_to_end_ms,
            currencies: panels
                .currencies
                .iter()
                .map(|(c, (n, sum))| serde_json::json!({ "currency": c, "invoices": n, "amount": (sum * 100.0).round() / 100.0 }))
                .collect(),
            due_weeks: panels
                .due_weeks
                .iter()
                .map(|(w, by)| serde_json::json!({ "week": w, "byCurrency": by }))
                .collect(),
            terms: panels.terms.iter().map(|(d, n)| serde_json::json!({ "netDays": d, "invoices": n })).collect(),
            high_value: panels.high_value.clone(),
            queues: self.queues.clone(),
            failures: panels.failures.clone(),
            stage_errors,
            stuck: self.stuck.clone(),
            alerts_sent: self.alerts_sent,
            store: self.store.clone(),
            anomalies: self.anomalies(),
            fx_note: FX_NOTE,
            anomaly_method: ANOMALY_METHOD,
        }
    }

    /// Visibility latency percentiles, milliseconds.
    pub(crate) fn visibility(&self) -> Percentiles {
        if self.teed { percentiles(&self.visibility_ms) } else { self.panels.visibility_ms }
    }

    /// The largest visibility latency seen (emulators), milliseconds.
    pub(crate) fn visibility_max(&self) -> Option<u64> {
        self.visibility_max_ms
    }

    /// Marks the end of the traffic.
    pub(crate) fn traffic_stopped(&mut self) {
        self.traffic_secs.get_or_insert(self.started.elapsed().as_secs());
    }

    /// Seconds the traffic ran.
    pub(crate) fn traffic_secs(&self) -> u64 {
        self.traffic_secs.unwrap_or_else(|| self.elapsed_secs())
    }

    /// Whether no queue but the dead-letter queues holds or processes a
    /// message, at the last check.
    pub(crate) fn queues_idle(&self) -> bool {
        !self.queues.is_empty()
            && self
                .queues
                .iter()
                .filter(|(n, _)| !n.ends_with("-dlq.fifo"))
                .all(|(_, q)| q.depth == 0 && q.in_flight == 0)
    }

    /// Messages in the cell's dead-letter queues.
    pub(crate) fn in_dlq(&self) -> u64 {
        self.queues.iter().filter(|(n, _)| n.ends_with("-dlq.fifo")).map(|(_, q)| q.depth).sum()
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

impl<S: StatusSink<Record = Record> + Sync> StatusSink for Tee<S> {
    type Record = S::Record;

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
    fn a_surge_in_one_bucket_is_flagged_at_its_time_and_the_open_bucket_is_not_judged() {
        let mut panels = Panels { bucket_secs: 60, ..Panels::default() };
        for minute in 0..10 {
            panels.series.insert(1_800_000_000 + minute * 60, [600 + (minute as u64 % 3) * 6, 0, 0, 0]);
        }
        panels.series.insert(1_800_000_600, [6000, 0, 0, 0]);
        let flagged = panels.anomalies(1_800_000_660);
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert_eq!((flagged[0].stage.as_str(), flagged[0].at), ("ingestion", 1_800_000_600));
        assert!((flagged[0].value - 100.0).abs() < 1e-9);
        // The surge's bucket still filling: not judged yet.
        assert!(panels.anomalies(1_800_000_600).is_empty());
    }

    #[test]
    fn due_weeks_add_in_eur_by_iso_week() {
        let mut panels = Panels::default();
        let day = |d: &str| d.parse::<chrono::NaiveDate>().expect("date");
        panels.add_due("USD", day("2026-12-28"), 100.0);
        panels.add_due("USD", day("2027-01-03"), 100.0);
        panels.add_due("EUR", day("2027-01-04"), 50.0);
        let weeks: Vec<(&String, f64)> = panels.due_weeks.iter().map(|(w, by)| (w, by.values().sum())).collect();
        assert_eq!(weeks.len(), 2);
        assert_eq!(weeks[0].0, "2026-W53");
        assert!((weeks[0].1 - 184.0).abs() < 1e-9);
        assert_eq!(weeks[1].0, "2027-W01");
    }

    #[test]
    fn percentiles_pick_from_the_sorted_samples() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(51));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
