//! `bems stuck`: which invoices are stuck, why, and for how long.
//!
//! An invoice is stuck when
//!
//! - a message of it sits in one of the cell's dead-letter queues (the four
//!   stage DLQs, the four route DLQs, the status DLQ, the bus DLQ): the
//!   reason is the one the processor recorded (`bems-poison-reason`) or
//!   "dead-lettered after maxReceiveCount receives"; or
//! - its latest status change is not terminal and older than the SLA: it has
//!   not reached its next stage in time (from the cell's store, through
//!   [`bems_store::query::Queries::open_invoices`]).
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
use bems_core::Stage;
use bems_core::routing::CellSpec;
use bems_store::query::{OpenInvoice, Queries, QueryError};
use serde::{Deserialize, Serialize};

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum StuckError {
    /// An AWS call failed.
    #[error("stuck: {0}")]
    Call(#[from] crate::CallError),
    /// The over-SLA query failed.
    #[error("stuck: the store: {0}")]
    Store(#[from] QueryError),
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

/// At most this many over-SLA invoices are listed per check.
pub const OVER_SLA_LIMIT: u32 = 1_000;

/// An open invoice past the SLA, as a stuck one, `now_ms` being now.
pub fn over_sla_entry(open: &OpenInvoice, now_ms: i64) -> Stuck {
    let age = u64::try_from((now_ms - open.last_change.timestamp_millis()).max(0) / 1000).unwrap_or(0);
    Stuck {
        invoice_id: Some(open.invoice_id.clone()),
        kind: Kind::OverSla,
        reason: format!(
            "no status change for {age} s since '{}': the {} stage has not acted on it",
            open.status, open.stage
        ),
        place: open.stage.to_string(),
        age_secs: age,
        event_id: Some(open.event_id.clone()),
        more_in_group: false,
    }
}

/// The invoices of the cell whose latest status change, within the last
/// `window_hours`, is not terminal and older than `sla_secs`, oldest
/// first, from its store.
pub async fn over_sla<Q: Queries + Sync>(
    store: &Q,
    sla_secs: u32,
    window_hours: u32,
) -> Result<Vec<Stuck>, StuckError> {
    let now = chrono::Utc::now();
    let window = bems_store::query::Window::last_minutes(now, window_hours.saturating_mul(60));
    let open = store.open_invoices(window, sla_secs, OVER_SLA_LIMIT).await?;
    Ok(open.iter().map(|o| over_sla_entry(o, now.timestamp_millis())).collect())
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
    use super::*;

    #[test]
    fn an_open_invoice_past_the_sla_is_stuck_at_its_stage_with_its_age() {
        let open = OpenInvoice {
            invoice_id: "INV-7".into(),
            stage: Stage::Authorization,
            status: bems_core::Status::Reconciled,
            event_id: "5d0e8c1a-7b2f-4c3d-8e9f-1a2b3c4d5e6f".into(),
            last_change: chrono::DateTime::from_timestamp_millis(1_795_700_000_000).expect("time"),
        };
        let stuck = over_sla_entry(&open, 1_795_700_300_000);
        assert_eq!(stuck.invoice_id.as_deref(), Some("INV-7"));
        assert_eq!((stuck.kind, stuck.age_secs), (Kind::OverSla, 300));
        assert_eq!(stuck.place, "authorization");
        assert!(stuck.reason.contains("'reconciled'"), "{}", stuck.reason);
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
