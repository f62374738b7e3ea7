//! `bems stuck`: which invoices are stuck, why, and for how long.
//!
//! An invoice is stuck when
//!
//! - a message of it sits in one of the cell's dead-letter queues (the four
//!   stage DLQs, the four route DLQs, the status DLQ, the bus DLQ): the
//!   reason is the one the processor recorded (`bems-poison-reason`) or
//!   "dead-lettered after maxReceiveCount receives"; or
//! - its latest status change is not terminal and older than the SLA: it has
//!   not reached its next stage in time (from the cell's Timestream table).
//!
//! Reading a DLQ must not consume it: messages are received with a short
//! visibility timeout and released at once. On a FIFO DLQ a receive returns
//! at most the first ten messages of each message group while earlier ones
//! are held; a group with more is reported as such (`more_in_group`).
//!
//! Alerting once per stuck invoice, not once per check: [`Alerted`] remembers
//! what was alerted (a JSON file between runs), [`Alerted::new_since`] says
//! what is new, and an invoice that is no longer stuck is forgotten, so a
//! later episode alerts again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName};
use aws_sdk_timestreamquery::operation::query::QueryOutput;
use bems_core::contract::{TIMESTREAM_TABLE, columns};
use bems_core::routing::CellSpec;
use bems_core::{Stage, Status};
use serde::{Deserialize, Serialize};

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum StuckError {
    /// An AWS call failed.
    #[error("stuck: {0}")]
    Call(#[from] crate::CallError),
    /// The over-SLA query failed.
    #[error("stuck: the Timestream query: {0}")]
    Query(crate::CallError),
    /// The query's answer lacks a column it selects.
    #[error("stuck: the answer has no column {0:?}")]
    MissingColumn(String),
    /// A request could not be built (an SDK builder's required field).
    #[error("stuck: {0}")]
    Build(#[from] aws_sdk_sqs::error::BuildError),
    /// An alert could not be written.
    #[error("stuck: alert message: {0}")]
    Alert(#[from] serde_json::Error),
}

fn fail<E>(what: &str, e: E) -> StuckError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    StuckError::Call(crate::CallError::new(what, e))
}

/// Why an invoice is stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A message of it is in a dead-letter queue.
    DeadLettered,
    /// Its latest status is not terminal and older than the SLA.
    OverSla,
}

/// One stuck invoice (or message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stuck {
    /// The invoice, or `None` when the message could not be decoded.
    pub invoice_id: Option<String>,
    /// Dead-lettered or over the SLA.
    pub kind: Kind,
    /// Where: the DLQ, or the stage the invoice waits for.
    pub place: String,
    /// Why, in words.
    pub reason: String,
    /// Seconds since the message was sent, or since the latest status change.
    pub age_secs: u64,
    /// The event's id, when known.
    pub event_id: Option<String>,
    /// A FIFO DLQ group had more messages than one look shows.
    pub more_in_group: bool,
}

impl Stuck {
    /// The key alerts are deduplicated on: invoice (or event) and kind.
    pub fn key(&self) -> String {
        let who = self.invoice_id.as_deref().or(self.event_id.as_deref()).unwrap_or("unknown");
        format!("{who}:{:?}", self.kind)
    }
}

/// A queue's depth: what waits in it and what is being handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueDepth {
    /// The queue's name.
    pub queue: String,
    /// Messages waiting (`ApproximateNumberOfMessages`).
    pub waiting: u64,
    /// Messages being handled (`ApproximateNumberOfMessagesNotVisible`).
    pub in_flight: u64,
}

/// A queue's depth, or `None` when it cannot be read.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, name: &str) -> Option<QueueDepth> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let url = sqs.get_queue_url().queue_name(name).send().await.ok()?.queue_url()?.to_owned();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .ok()?;
    let count = |a: A| attributes.attributes().and_then(|m| m.get(&a)).and_then(|v| v.parse().ok()).unwrap_or(0);
    Some(QueueDepth {
        queue: name.to_owned(),
        waiting: count(A::ApproximateNumberOfMessages),
        in_flight: count(A::ApproximateNumberOfMessagesNotVisible),
    })
}

/// The cell's dead-letter queues: (name, what it holds).
pub fn dead_letter_queues(spec: &CellSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for stage in Stage::ALL {
        out.push((spec.dlq_name(stage), format!("{stage} queue")));
        out.push((spec.route_dlq_name(stage), format!("{stage} route queue")));
    }
    out.push((spec.status_dlq_name(), "status queue".into()));
    out.push((spec.bus_dlq_name(), "bus (undeliverable events)".into()));
    out
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The dead-lettered messages of `spec`'s cell, read without consuming them.
pub async fn dead_lettered(sqs: &aws_sdk_sqs::Client, spec: &CellSpec) -> Result<Vec<Stuck>, StuckError> {
    let mut out = Vec::new();
    for (name, what) in dead_letter_queues(spec) {
        let url = match sqs.get_queue_url().queue_name(&name).send().await {
            Ok(found) => found.queue_url().unwrap_or_default().to_owned(),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_queue_does_not_exist()) => continue,
            Err(e) => return Err(fail(&format!("queue {name}"), e)),
        };
        out.extend(peek(sqs, &url, &name, &what).await?);
    }
    Ok(out)
}

/// Every message visible in one DLQ, released again afterwards.
async fn peek(sqs: &aws_sdk_sqs::Client, url: &str, name: &str, what: &str) -> Result<Vec<Stuck>, StuckError> {
    let mut out = Vec::new();
    let mut held = Vec::new();
    let mut per_group: BTreeMap<String, usize> = BTreeMap::new();
    let now = now_ms();
    loop {
        let batch = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| fail(&format!("receive from {name}"), e))?;
        if batch.messages().is_empty() {
            break;
        }
        for m in batch.messages() {
            let attribute = |a: MessageSystemAttributeName| m.attributes().and_then(|x| x.get(&a)).cloned();
            if let Some(group) = attribute(MessageSystemAttributeName::MessageGroupId) {
                *per_group.entry(group).or_default() += 1;
            }
            let sent = attribute(MessageSystemAttributeName::SentTimestamp).and_then(|t| t.parse::<u64>().ok());
            let recorded = m
                .message_attributes()
                .and_then(|a| a.get(bems_core::contract::REASON_ATTRIBUTE))
                .and_then(|v| v.string_value())
                .map(str::to_owned);
            let body = m.body().unwrap_or_default();
            let (invoice_id, event_id, status) = identify(body);
            let reason = match (recorded, &status) {
                (Some(r), _) => r,
                (None, Some(s)) => format!("{s} event dead-lettered from the {what} after maxReceiveCount receives"),
                (None, None) => format!("undecodable message dead-lettered from the {what}"),
            };
            out.push(Stuck {
                invoice_id,
                kind: Kind::DeadLettered,
                place: name.to_owned(),
                reason,
                age_secs: sent.map_or(0, |s| now.saturating_sub(s) / 1000),
                event_id,
                more_in_group: false,
            });
            if let Some(handle) = m.receipt_handle() {
                held.push(handle.to_owned());
            }
        }
    }
    // A FIFO receive gives at most 10 of a group; a group that filled it may hold more.
    let full: BTreeSet<&String> = per_group.iter().filter(|(_, n)| **n >= 10).map(|(g, _)| g).collect();
    if !full.is_empty() {
        for s in &mut out {
            s.more_in_group = true;
        }
    }
    release(sqs, url, name, &held).await?;
    Ok(out)
}

/// Makes held messages visible again.
async fn release(sqs: &aws_sdk_sqs::Client, url: &str, name: &str, handles: &[String]) -> Result<(), StuckError> {
    for chunk in handles.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .visibility_timeout(0)
                    .build()
                    .map_err(StuckError::Build)
            })
            .collect::<Result<Vec<_>, _>>()?;
        sqs.change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| fail(&format!("release messages of {name}"), e))?;
    }
    Ok(())
}

/// Invoice id, event id and status from a message body of any envelope
/// (raw EventBridge event, SNS envelope around one, bare event).
pub(crate) fn identify(body: &str) -> (Option<String>, Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else { return (None, None, None) };
    // Raw delivery of an EventBridge event, an SNS envelope around one, or a bare event.
    let inner = value
        .get("Message")
        .and_then(serde_json::Value::as_str)
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .unwrap_or(value);
    let event = inner.get("detail").cloned().unwrap_or(inner);
    let field = |name: &str| event.get(name).and_then(serde_json::Value::as_str).map(str::to_owned);
    (field("invoiceId"), field("eventId"), field("status"))
}

/// The query for invoices whose latest status change, within the last
/// `window_hours`, is not terminal and older than `sla_secs`.
pub fn over_sla_query(spec: &CellSpec, sla_secs: u64, window_hours: u64) -> String {
    let terminal: Vec<String> =
        Status::ALL.into_iter().filter(|s| s.is_terminal()).map(|s| format!("'{}'", s.as_str())).collect();
    format!(
        "SELECT invoice_id, max_by(stage, time) AS stage, max_by(status, time) AS status, \
         max_by(event_id, time) AS event_id, to_milliseconds(max(time)) AS last_change_ms \
         FROM \"{}\".\"{TIMESTREAM_TABLE}\" WHERE measure_name = 'status_change' AND time > ago({window_hours}h) \
         GROUP BY invoice_id \
         HAVING max_by(status, time) NOT IN ({}) AND max(time) < ago({sla_secs}s) \
         ORDER BY last_change_ms ASC",
        spec.timestream_database(),
        terminal.join(", ")
    )
}

/// The over-SLA invoices of one page of that query's answer.
pub fn parse_over_sla(page: &QueryOutput, now_ms: u64) -> Result<Vec<Stuck>, StuckError> {
    if page.rows().is_empty() {
        return Ok(Vec::new());
    }
    let columns: Vec<&str> = page.column_info().iter().map(|c| c.name().unwrap_or_default()).collect();
    let index =
        |name: &str| columns.iter().position(|c| *c == name).ok_or_else(|| StuckError::MissingColumn(name.to_owned()));
    let (invoice, stage, status, event, last) = (
        index(columns::INVOICE_ID)?,
        index(columns::STAGE)?,
        index(columns::STATUS)?,
        index(columns::EVENT_ID)?,
        index("last_change_ms")?,
    );
    let mut out = Vec::new();
    for row in page.rows() {
        let value = |i: usize| row.data().get(i).and_then(|d| d.scalar_value()).map(str::to_owned);
        let last_ms = value(last).and_then(|v| v.parse::<u64>().ok()).unwrap_or(now_ms);
        let age = now_ms.saturating_sub(last_ms) / 1000;
        let status = value(status).unwrap_or_default();
        let stage = value(stage).unwrap_or_default();
        out.push(Stuck {
            invoice_id: value(invoice),
            kind: Kind::OverSla,
            reason: format!("no status change for {age} s since '{status}': the {stage} stage has not acted on it"),
            place: stage,
            age_secs: age,
            event_id: value(event),
            more_in_group: false,
        });
    }
    Ok(out)
}

/// The invoices of `spec`'s cell over the SLA, from Timestream.
pub async fn over_sla(
    client: &aws_sdk_timestreamquery::Client,
    spec: &CellSpec,
    sla_secs: u64,
    window_hours: u64,
) -> Result<Vec<Stuck>, StuckError> {
    let query = over_sla_query(spec, sla_secs, window_hours);
    let pages = crate::history::query_pages(client, &query).await.map_err(StuckError::Query)?;
    let mut out = Vec::new();
    for page in &pages {
        out.extend(parse_over_sla(page, now_ms())?);
    }
    Ok(out)
}

/// What has been alerted, kept between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alerted {
    /// [`Stuck::key`]s alerted and still stuck at the last check.
    pub keys: BTreeSet<String>,
}

impl Alerted {
    /// The stuck entries not alerted yet; afterwards, `self` holds exactly
    /// the keys of `stuck` (those no longer stuck are forgotten, so a new
    /// episode alerts again).
    pub fn new_since<'a>(&mut self, stuck: &'a [Stuck]) -> Vec<&'a Stuck> {
        let now: BTreeSet<String> = stuck.iter().map(Stuck::key).collect();
        let mut seen = BTreeSet::new();
        let fresh = stuck.iter().filter(|s| !self.keys.contains(&s.key()) && seen.insert(s.key())).collect();
        self.keys = now;
        fresh
    }
}

/// Publishes one alert per entry of `fresh` to the SNS topic `topic_arn`.
pub async fn alert(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    cell: &str,
    fresh: &[&Stuck],
) -> Result<usize, StuckError> {
    for s in fresh {
        let who = s.invoice_id.as_deref().unwrap_or("an undecodable message");
        let subject = match s.kind {
            Kind::DeadLettered => format!("BEMS {cell}: {who} dead-lettered"),
            Kind::OverSla => format!("BEMS {cell}: {who} over the SLA"),
        };
        let mut subject: String = subject.chars().filter(|c| !c.is_control()).collect();
        // SNS subjects: at most 100 characters.
        subject.truncate(100);
        let message = serde_json::to_string_pretty(s)?;
        sns.publish()
            .topic_arn(topic_arn)
            .subject(subject)
            .message(message)
            .send()
            .await
            .map_err(|e| fail("publish the alert", e))?;
    }
    Ok(fresh.len())
}

#[cfg(test)]
mod tests {
    use aws_sdk_timestreamquery::types::{ColumnInfo, Datum, Row};

    use super::*;

    fn spec() -> CellSpec {
        CellSpec::new(
            bems_core::fields::CellId::new("prod-eu-1").expect("cell"),
            bems_core::fields::Region::new("eu-west-1").expect("region"),
            bems_core::fields::AccountId::new("123456789012").expect("account"),
            bems_core::partition::PartitionCount::new(16).expect("partitions"),
        )
        .expect("spec")
    }

    #[test]
    fn the_over_sla_query_keeps_non_terminal_latest_statuses_older_than_the_sla() {
        assert_eq!(
            over_sla_query(&spec(), 120, 24),
            "SELECT invoice_id, max_by(stage, time) AS stage, max_by(status, time) AS status, \
             max_by(event_id, time) AS event_id, to_milliseconds(max(time)) AS last_change_ms \
             FROM \"bems_prod_eu_1\".\"status_changes\" WHERE measure_name = 'status_change' AND time > ago(24h) \
             GROUP BY invoice_id \
             HAVING max_by(status, time) NOT IN ('posted', 'rejected') AND max(time) < ago(120s) \
             ORDER BY last_change_ms ASC"
        );
    }

    #[test]
    fn over_sla_rows_become_stuck_invoices_with_their_age() {
        let columns = ["invoice_id", "stage", "status", "event_id", "last_change_ms"]
            .map(|n| ColumnInfo::builder().name(n).build())
            .to_vec();
        let row = Row::builder()
            .set_data(Some(
                ["INV-7", "authorization", "reconciled", "5d0e8c1a-7b2f-4c3d-8e9f-1a2b3c4d5e6f", "1795700000000"]
                    .map(|v| Datum::builder().scalar_value(v).build())
                    .to_vec(),
            ))
            .build()
            .expect("row");
        let page =
            QueryOutput::builder().query_id("q").set_column_info(Some(columns)).rows(row).build().expect("output");
        let stuck = parse_over_sla(&page, 1_795_700_300_000).expect("parsed");
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].invoice_id.as_deref(), Some("INV-7"));
        assert_eq!(stuck[0].age_secs, 300);
        assert_eq!(stuck[0].place, "authorization");
        assert!(stuck[0].reason.contains("'reconciled'"), "{}", stuck[0].reason);
    }

    #[test]
    fn identify_reads_raw_sns_and_bare_bodies() {
        let detail = r#"{"invoiceId":"INV-1","eventId":"e-1","status":"ingested"}"#;
        let raw = format!(r#"{{"detail-type":"Invoice Status Changed","detail":{detail}}}"#);
        let sns = serde_json::json!({ "Type": "Notification", "Message": raw }).to_string();
        for body in [raw.as_str(), sns.as_str(), detail] {
            assert_eq!(identify(body), (Some("INV-1".into()), Some("e-1".into()), Some("ingested".into())), "{body}");
        }
        assert_eq!(identify("not json"), (None, None, None));
    }

    #[test]
    fn each_stuck_invoice_alerts_once_until_it_recovers() {
        let stuck = |invoice: &str| Stuck {
            invoice_id: Some(invoice.into()),
            kind: Kind::DeadLettered,
            place: "dlq".into(),
            reason: "r".into(),
            age_secs: 1,
            event_id: None,
            more_in_group: false,
        };
        let mut alerted = Alerted::default();
        assert_eq!(alerted.new_since(&[stuck("A"), stuck("B")]).len(), 2);
        assert_eq!(alerted.new_since(&[stuck("A"), stuck("B")]).len(), 0, "a second check alerts nothing");
        assert_eq!(alerted.new_since(&[stuck("B")]).len(), 0);
        let again = [stuck("A"), stuck("B")];
        let fresh = alerted.new_since(&again);
        assert_eq!(fresh.len(), 1, "A recovered and is stuck again");
        assert_eq!(fresh[0].invoice_id.as_deref(), Some("A"));
        // Two messages of one invoice in DLQs: one alert.
        let mut alerted = Alerted::default();
        assert_eq!(alerted.new_since(&[stuck("C"), stuck("C")]).len(), 1);
    }
}
