//! `bems smoke`: what a user runs after deploying a cell. One marked
//! invoice goes in through the API with the producers' key, as a producer's
//! would, and is followed until every stage has handled it and, when the
//! cell has a store, the store holds each of its status changes; the report
//! says where it stopped, and what the queues there hold.
//!
//! The invoice is marked twice, so that nobody takes it for business: its
//! id starts with [`SMOKE_PREFIX`] and its producer is [`SMOKE_PRODUCER`].
//! It is small (1.00 EUR, under every automatic approval limit) and issued
//! today, so the stock stage rules pass it through to `posted`.
//!
//! It is seen in each stage through the cell's smoke queue
//! (`CellSpec::smoke_queue_name`), subscribed to every stage topic for
//! smoke invoices only: each status change the invoice makes passes its
//! stage's topic, and so arrives there. No queue a function reads is
//! touched. What it waits for, in order:
//!
//! | checkpoint | status | seen in its stage: what it shows | stored |
//! |---|---|---|---|
//! | `routing` | `submitted` | the bus took it, the ingestion rule routed it, the route forwarder published it | the status writer stored it |
//! | `ingestion` | `ingested` | the ingestion processor handled it | stored |
//! | `reconciliation` | `reconciled` | the reconciliation processor handled it | stored |
//! | `authorization` | `authorized` | the authorization processor handled it | stored |
//! | `posting` | `posted` | the posting processor handled it | stored |
//!
//! The store is read through [`StatusStore`]: the cell's store through
//! `bems history`'s query ([`bems_store::Store`]: PostgreSQL or
//! Timestream); on the emulators, whose Timestream (moto) stores writes but
//! runs no query, moto's own record of the writes ([`MotoStore`], emulator
//! only); [`NoStore`] for a cell deployed with `Store=none`.

use std::future::Future;
use std::time::{Duration, Instant};

use bems_core::contract::{TIMESTREAM_TABLE, columns};
use bems_core::fields::InvoiceId;
use bems_core::partition::Partition;
use bems_core::routing::CellSpec;
use bems_core::{InvoiceEvent, Stage, Status};
use serde::Serialize;
use serde_json::{Value, json};

/// The start of every smoke invoice's id, which the smoke queue's
/// subscriptions filter on.
pub use bems_core::contract::SMOKE_INVOICE_PREFIX as SMOKE_PREFIX;

/// The producer written on every smoke invoice's submission.
pub use bems_core::contract::CANARY_PRODUCER as SMOKE_PRODUCER;

/// Why the smoke test could not run (as opposed to a cell that failed it,
/// which is a [`Report`] that did not pass).
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    /// The API could not be called at all (no answer, a bad URL).
    #[error("smoke: could not call the API at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The cell has no smoke queue (deployed before it existed?).
    #[error("smoke: the cell's smoke queue {queue} cannot be read: {reason}")]
    NoSmokeQueue {
        /// The queue.
        queue: String,
        /// Why.
        reason: String,
    },
    /// The smoke invoice could not be built (a bug: it is fixed data).
    #[error("smoke: the smoke invoice is invalid: {0}")]
    Invoice(String),
}

/// Where the cell's status changes are read from.
pub trait StatusStore {
    /// The statuses stored for `invoice`, in any order.
    fn statuses(&self, invoice: &InvoiceId) -> impl Future<Output = Result<Vec<Status>, String>> + Send;

    /// Whether there is a store to check (`false` for [`NoStore`]).
    fn exists(&self) -> bool {
        true
    }
}

/// A cell without a store (`Store=none`): only the stages are followed.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStore;

impl StatusStore for NoStore {
    async fn statuses(&self, _: &InvoiceId) -> Result<Vec<Status>, String> {
        Ok(Vec::new())
    }

    fn exists(&self) -> bool {
        false
    }
}

/// The cell's store, read with `bems history`'s query.
impl StatusStore for bems_store::Store {
    async fn statuses(&self, invoice: &InvoiceId) -> Result<Vec<Status>, String> {
        use bems_store::query::Queries;
        let entries = self.history(invoice.as_str()).await.map_err(|e| e.to_string())?;
        Ok(entries.iter().map(|e| e.status).collect())
    }
}

/// moto's record of the writes to the cell's table, at
/// `/moto-api/data.json`: only for a cell on the emulators, whose
/// Timestream stores writes but answers no query.
#[derive(Debug, Clone)]
pub struct MotoStore {
    /// moto's endpoint.
    pub url: String,
    /// The cell.
    pub spec: CellSpec,
}

impl StatusStore for MotoStore {
    async fn statuses(&self, invoice: &InvoiceId) -> Result<Vec<Status>, String> {
        let url = format!("{}/moto-api/data.json", self.url.trim_end_matches('/'));
        let (database, invoice) = (self.spec.timestream_database(), invoice.as_str().to_owned());
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();
            let mut response = agent.get(&url).call().map_err(|e| format!("moto at {url}: {e}"))?;
            let text = response
                .body_mut()
                .with_config()
                .limit(u64::MAX)
                .read_to_string()
                .map_err(|e| format!("moto's answer: {e}"))?;
            let data: Value = serde_json::from_str(&text).map_err(|e| format!("moto's answer is not JSON: {e}"))?;
            Ok(moto_statuses(&data, &database, &invoice))
        })
        .await
        .map_err(|e| format!("reading moto: {e}"))?
    }
}

/// The statuses of `invoice` in moto's `data` for the cell's table.
fn moto_statuses(data: &Value, database: &str, invoice: &str) -> Vec<Status> {
    let named = |list: &Value, name: &str| -> Option<String> {
        list.as_array()?.iter().find(|d| d["Name"] == name).and_then(|d| d["Value"].as_str()).map(str::to_owned)
    };
    data["timestreamwrite"]["TimestreamTable"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["db_name"] == database && t["name"] == TIMESTREAM_TABLE)
        .flat_map(|t| t["records"].as_array().into_iter().flatten())
        .filter(|r| named(&r["Dimensions"], columns::INVOICE_ID).as_deref() == Some(invoice))
        .filter_map(|r| Status::from_wire(&named(&r["MeasureValues"], columns::STATUS)?))
        .collect()
}

/// How long to follow the invoice.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Give up on the next checkpoint after this long.
    pub timeout: Duration,
    /// How often the store is read.
    pub poll: Duration,
}

impl Default for Options {
    fn default() -> Options {
        // The SLA is 2 minutes for every event; the whole run gets a little more.
        Options { timeout: Duration::from_secs(180), poll: Duration::from_secs(2) }
    }
}

/// The API's answer to the smoke invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as sent.
    pub body: String,
    /// Milliseconds to the answer.
    pub ms: u64,
}

/// One checkpoint of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// `routing`, or the stage that produces `status`.
    pub name: String,
    /// The status that proves it.
    pub status: Status,
    /// Milliseconds after the API's answer it passed its stage's topic.
    pub seen_after_ms: Option<u64>,
    /// Milliseconds after the API's answer it was in the store (`None`
    /// also when the cell has no store).
    pub stored_after_ms: Option<u64>,
}

/// Where and why the run stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stopped {
    /// The first checkpoint not reached: `api`, `routing` or a stage.
    pub at: String,
    /// What that means, in words.
    pub reason: String,
    /// The queues in front of that checkpoint.
    pub queues: Vec<crate::stuck::QueueDepth>,
    /// The smoke invoice's messages in the cell's dead-letter queues.
    pub dead_lettered: Vec<crate::stuck::Stuck>,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The smoke invoice.
    pub invoice_id: String,
    /// Its submission's event id.
    pub event_id: String,
    /// What the API answered.
    pub api: ApiAnswer,
    /// The checkpoints, in order.
    pub checkpoints: Vec<Checkpoint>,
    /// Whether the store was checked.
    pub store_checked: bool,
    /// `None` when every checkpoint was reached.
    pub stopped: Option<Stopped>,
}

impl Report {
    /// Whether the invoice went all the way.
    pub fn passed(&self) -> bool {
        self.stopped.is_none()
    }
}

/// The checkpoints: (name, the status that proves it).
pub fn checkpoints() -> [(&'static str, Status); 5] {
    [
        ("routing", Status::Submitted),
        ("ingestion", Status::Ingested),
        ("reconciliation", Status::Reconciled),
        ("authorization", Status::Authorized),
        ("posting", Status::Posted),
    ]
}

/// A fresh smoke invoice's submission, placed in `spec`'s cell.
pub fn smoke_invoice(spec: &CellSpec) -> Result<InvoiceEvent, SmokeError> {
    let now = chrono::Utc::now();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let invoice = format!("{SMOKE_PREFIX}{}-{}", now.format("%Y%m%d%H%M%S"), &id[..8]);
    let invoice_id = InvoiceId::new(&invoice).map_err(|e| SmokeError::Invoice(e.to_string()))?;
    let today = now.date_naive();
    let body = json!({
        "eventId": uuid::Uuid::new_v4().to_string(),
        "invoiceId": invoice,
        "stage": "ingestion",
        "status": "submitted",
        "amount": 1.00,
        "currency": "EUR",
        "occurredAt": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "issueDate": today.to_string(),
        "vendor": { "id": "BEMS-SMOKE", "name": "BEMS smoke test", "country": "DE" },
        "paymentTerms": { "netDays": 30, "dueDate": (today + chrono::Days::new(30)).to_string() },
        "metadata": {
            "schemaVersion": 1,
            "region": spec.region().as_str(),
            "accountId": spec.account_id().as_str(),
            "cellId": spec.cell_id().as_str(),
            "partition": Partition::for_invoice(&invoice_id, spec.partitions()).get(),
            "correlationId": format!("smoke-{id}"),
            "producer": SMOKE_PRODUCER,
        },
    });
    let validator = bems_core::Validator::new(bems_core::ValidationOptions {
        partitions: Some(spec.partitions()),
        ..bems_core::ValidationOptions::default()
    });
    validator.parse(body.to_string().as_bytes()).map_err(|e| SmokeError::Invoice(e.to_string()))
}

/// POSTs `event` to `url` with `key`.
async fn submit(url: &str, key: &str, event: &InvoiceEvent) -> Result<ApiAnswer, SmokeError> {
    let (url, key, body) = (url.to_owned(), key.to_owned(), event.to_json());
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let started = Instant::now();
        let mut response = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header("x-api-key", &key)
            .send(body.as_bytes())
            .map_err(|e| SmokeError::Unreachable { url: url.clone(), reason: e.to_string() })?;
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Ok(ApiAnswer { status: response.status().as_u16(), body, ms })
    })
    .await
    .map_err(|e| SmokeError::Unreachable { url: String::new(), reason: e.to_string() })?
}

/// Runs the smoke test: `url` is the cell's `POST /invoices/ingestion`.
pub async fn smoke<S: StatusStore + Sync>(
    spec: &CellSpec,
    url: &str,
    key: &str,
    store: &S,
    sqs: &aws_sdk_sqs::Client,
    options: Options,
) -> Result<Report, SmokeError> {
    let event = smoke_invoice(spec)?;
    // Looked up first: a cell without it cannot be followed at all.
    let smoke_queue = sqs
        .get_queue_url()
        .queue_name(spec.smoke_queue_name())
        .send()
        .await
        .map_err(|e| SmokeError::NoSmokeQueue { queue: spec.smoke_queue_name(), reason: crate::describe(&e) })?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let api = submit(url, key, &event).await?;
    let mut report = Report {
        invoice_id: event.invoice_id.to_string(),
        event_id: event.event_id.to_string(),
        checkpoints: checkpoints()
            .iter()
            .map(|(name, status)| Checkpoint {
                name: (*name).to_owned(),
                status: *status,
                seen_after_ms: None,
                stored_after_ms: None,
            })
            .collect(),
        store_checked: store.exists(),
        stopped: None,
        api,
    };
    let accepted = (200..300).contains(&report.api.status)
        && serde_json::from_str::<Value>(&report.api.body).is_ok_and(|b| b["failedEntryCount"] == 0);
    if !accepted {
        report.stopped = Some(Stopped {
            at: "api".into(),
            reason: format!("the API answered {}: {}", report.api.status, report.api.body.trim()),
            queues: Vec::new(),
            dead_lettered: Vec::new(),
        });
        return Ok(report);
    }
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut store_error: Option<String> = None;
    let done = |r: &Report| {
        r.checkpoints.iter().all(|c| c.seen_after_ms.is_some() && (!r.store_checked || c.stored_after_ms.is_some()))
    };
    loop {
        let elapsed = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let seen = seen_in_stages(sqs, &smoke_queue, &report.invoice_id).await;
        if seen.contains(&Status::Rejected) {
            report.stopped = Some(Stopped {
                at: first_missing(&report.checkpoints, &seen).to_owned(),
                reason: "a stage rejected the smoke invoice (its `rejected` event says why; so does `bems history`)"
                    .into(),
                queues: Vec::new(),
                dead_lettered: Vec::new(),
            });
            return Ok(report);
        }
        for c in report.checkpoints.iter_mut().filter(|c| c.seen_after_ms.is_none() && seen.contains(&c.status)) {
            c.seen_after_ms = Some(elapsed());
            last_progress = Instant::now();
        }
        if report.store_checked {
            match store.statuses(&event.invoice_id).await {
                Ok(stored) => {
                    store_error = None;
                    for c in report.checkpoints.iter_mut().filter(|c| c.stored_after_ms.is_none()) {
                        if stored.contains(&c.status) {
                            c.stored_after_ms = Some(elapsed());
                            last_progress = Instant::now();
                        }
                    }
                }
                Err(e) => store_error = Some(e),
            }
        }
        if done(&report) {
            return Ok(report);
        }
        // Each step gets the whole timeout from the previous one.
        if last_progress.elapsed() >= options.timeout {
            break;
        }
        tokio::time::sleep(options.poll).await;
    }
    let waited = options.timeout.as_secs();
    let unseen = report.checkpoints.iter().find(|c| c.seen_after_ms.is_none()).cloned();
    let (at, reason, queues) = match (&unseen, &store_error) {
        (Some(c), _) if c.name == "routing" => (
            c.name.clone(),
            format!(
                "`submitted` did not reach the ingestion topic in {waited} s: the bus, the ingestion rule or the route forwarder did not pass it on"
            ),
            vec![spec.route_queue_name(Stage::Ingestion), spec.unrouted_queue_name(), spec.bus_dlq_name()],
        ),
        (Some(c), _) => {
            let stage = Stage::from_wire(&c.name).unwrap_or(Stage::Ingestion);
            // Its queue, and the route queue its next event goes through.
            let next = stage.next().unwrap_or(Stage::Posting);
            (
                c.name.clone(),
                format!(
                    "no `{}` {waited} s after the previous step: the {stage} processor has not handled the invoice",
                    c.status
                ),
                vec![spec.queue_name(stage), spec.route_queue_name(next)],
            )
        }
        (None, Some(e)) => (
            "store".to_owned(),
            format!("every stage handled it, but the store could not be read: {e}"),
            vec![spec.status_queue_name()],
        ),
        (None, None) => {
            let missing =
                report.checkpoints.iter().find(|c| c.stored_after_ms.is_none()).map_or(Status::Posted, |c| c.status);
            (
                "store".to_owned(),
                format!(
                    "every stage handled it, but `{missing}` is not in the store after {waited} s: the status writer has not stored it"
                ),
                vec![spec.status_queue_name()],
            )
        }
    };
    let mut depths = Vec::new();
    for queue in queues {
        if let Some(depth) = crate::stuck::queue_depth(sqs, &queue).await {
            depths.push(depth);
        }
    }
    let dead_lettered = crate::stuck::dead_lettered(sqs, spec)
        .await
        .map(|all| all.into_iter().filter(|s| s.invoice_id.as_deref() == Some(report.invoice_id.as_str())).collect())
        .unwrap_or_default();
    report.stopped = Some(Stopped { at, reason, queues: depths, dead_lettered });
    Ok(report)
}

/// Messages of the smoke queue older than this are left over from a run
/// that ended, and are deleted when met.
const STALE_MS: i64 = 15 * 60 * 1000;

/// The statuses of `invoice` now in the smoke queue at `url`, deleted as
/// read. Another run's messages are released at once for that run (FIFO
/// groups are shared), unless they are stale.
async fn seen_in_stages(sqs: &aws_sdk_sqs::Client, url: &str, invoice: &str) -> Vec<Status> {
    use aws_sdk_sqs::types::MessageSystemAttributeName;
    let mut seen = Vec::new();
    let Ok(out) = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send()
        .await
    else {
        return seen;
    };
    let now = chrono::Utc::now().timestamp_millis();
    for m in out.messages() {
        let body: Value = serde_json::from_str(m.body().unwrap_or_default()).unwrap_or(Value::Null);
        let detail = body.get("detail").unwrap_or(&body);
        let handle = m.receipt_handle().unwrap_or_default();
        let sent = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(now);
        if detail["invoiceId"] == invoice {
            if let Some(status) = detail["status"].as_str().and_then(Status::from_wire) {
                seen.push(status);
            }
            let _ = sqs.delete_message().queue_url(url).receipt_handle(handle).send().await;
        } else if now - sent > STALE_MS {
            let _ = sqs.delete_message().queue_url(url).receipt_handle(handle).send().await;
        } else {
            let _ = sqs
                .change_message_visibility()
                .queue_url(url)
                .receipt_handle(handle)
                .visibility_timeout(0)
                .send()
                .await;
        }
    }
    seen
}

/// The checkpoint a rejection stopped: the first not seen before it nor now.
fn first_missing<'c>(checkpoints: &'c [Checkpoint], now: &[Status]) -> &'c str {
    checkpoints
        .iter()
        .find(|c| c.seen_after_ms.is_none() && !now.contains(&c.status))
        .map_or("posting", |c| c.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bems_core::fields::{AccountId, CellId, Region};
    use bems_core::partition::PartitionCount;

    fn spec() -> CellSpec {
        CellSpec::new(
            CellId::new("prod-eu-1").expect("cell"),
            Region::new("eu-west-1").expect("region"),
            AccountId::new("123456789012").expect("account"),
            PartitionCount::new(16).expect("partitions"),
        )
        .expect("spec")
    }

    #[test]
    fn the_smoke_invoice_is_marked_valid_and_in_the_cell() {
        let spec = spec();
        let e = smoke_invoice(&spec).expect("a valid invoice");
        assert!(e.invoice_id.as_str().starts_with(SMOKE_PREFIX));
        assert_eq!(e.metadata.producer.as_str(), SMOKE_PRODUCER);
        assert_eq!((e.stage, e.status, e.previous_status), (Stage::Ingestion, Status::Submitted, None));
        assert_eq!(e.metadata.partition, Partition::for_invoice(&e.invoice_id, spec.partitions()));
        assert_eq!(e.metadata.cell_id.as_str(), "prod-eu-1");
        // Two runs never share an invoice.
        assert_ne!(smoke_invoice(&spec).expect("valid").invoice_id, e.invoice_id);
    }

    #[test]
    fn moto_s_writes_are_read_for_one_invoice_of_one_table() {
        let record = |invoice: &str, status: &str| {
            json!({
                "Dimensions": [{ "Name": "invoice_id", "Value": invoice }, { "Name": "cell_id", "Value": "prod-eu-1" }],
                "MeasureName": "status_change",
                "MeasureValues": [{ "Name": "status", "Value": status, "Type": "VARCHAR" }],
            })
        };
        let data = json!({ "timestreamwrite": { "TimestreamTable": [
            { "db_name": "bems_prod_eu_1", "name": "status_changes", "records": [record("A", "submitted"), record("B", "submitted"), record("A", "ingested")] },
            { "db_name": "bems_other", "name": "status_changes", "records": [record("A", "posted")] },
        ] } });
        assert_eq!(moto_statuses(&data, "bems_prod_eu_1", "A"), vec![Status::Submitted, Status::Ingested]);
        assert!(moto_statuses(&data, "bems_prod_eu_1", "C").is_empty());
    }
}
