//! Moving messages from a dead-letter queue back to their source queue,
//! FIFO-safe and loss-free.
//!
//! SQS's own `StartMessageMoveTask` keeps each message's deduplication id,
//! so a FIFO message whose id the source queue saw within five minutes is
//! dropped as a duplicate (LocalStack reports such a task as completed).
//! This redrive sends each message back with its message group and a new
//! deduplication id (`<original>:redrive:<millis>`; consumers stay
//! idempotent on the event's `eventId`), and deletes it from the DLQ only
//! after the send succeeded: a crash between the two duplicates a message,
//! never loses one.

use aws_sdk_sqs::types::MessageSystemAttributeName;
use bems_core::Stage;
use bems_core::routing::CellSpec;

/// Why a redrive failed.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// `--queue` names no queue of the cell.
    #[error(
        "{0:?} is not a queue of the cell; use a stage (ingestion, reconciliation, authorization, posting), <stage>-route, or status"
    )]
    UnknownQueue(String),
    /// An SQS call failed.
    #[error("redrive: {0}")]
    Call(#[from] crate::CallError),
}

fn fail<E>(what: &str, e: E) -> RedriveError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    RedriveError::Call(crate::CallError::new(what, e))
}

/// The (dead-letter queue, source queue) names of one of `spec`'s queues
/// with a DLQ, named as `bems redrive --queue` takes it: a stage
/// (`ingestion`), a route queue (`ingestion-route`), or `status`.
pub fn queues_named(spec: &CellSpec, queue: &str) -> Result<(String, String), RedriveError> {
    if queue == "status" {
        return Ok((spec.status_dlq_name(), spec.status_queue_name()));
    }
    let (stage, route) = match queue.strip_suffix("-route") {
        Some(stage) => (stage, true),
        None => (queue, false),
    };
    let Some(stage) = Stage::from_wire(stage) else {
        return Err(RedriveError::UnknownQueue(queue.to_owned()));
    };
    Ok(if route {
        (spec.route_dlq_name(stage), spec.route_queue_name(stage))
    } else {
        (spec.dlq_name(stage), spec.queue_name(stage))
    })
}

/// The URL of the queue named `name`.
pub async fn queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String, RedriveError> {
    let found = sqs.get_queue_url().queue_name(name).send().await.map_err(|e| fail(&format!("queue {name}"), e))?;
    Ok(found.queue_url().unwrap_or_default().to_owned())
}

/// What a redrive moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Moved {
    /// SQS message ids of the moved messages, in the order they moved.
    pub message_ids: Vec<String>,
}

/// Moves every message visible in `dlq_url` to `source_url` (both FIFO).
pub async fn redrive_fifo(sqs: &aws_sdk_sqs::Client, dlq_url: &str, source_url: &str) -> Result<Moved, RedriveError> {
    let moved = move_matching(sqs, dlq_url, source_url, None, |_| true).await?;
    Ok(Moved { message_ids: moved.message_ids })
}

/// What a redrive of one invoice moved, and what it could not reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceMoved {
    /// SQS message ids of the invoice's moved messages, in order.
    pub message_ids: Vec<String>,
    /// Messages of other invoices looked at and left in the DLQ.
    pub left: usize,
    /// FIFO message groups where another invoice's message was first: SQS
    /// returns nothing behind it while it is held, so messages of this
    /// invoice further back in those groups (if any) were not reached.
    pub unreached_groups: Vec<String>,
}

/// Moves the messages of `invoice` from `dlq_url` back to `source_url` (both
/// FIFO), as [`redrive_fifo`] does, and leaves every other message where it
/// was: those are held while the DLQ is read and released at the end.
pub async fn redrive_invoice(
    sqs: &aws_sdk_sqs::Client,
    dlq_url: &str,
    source_url: &str,
    invoice: &str,
) -> Result<InvoiceMoved, RedriveError> {
    // Long enough to read the whole DLQ while others are held.
    move_matching(sqs, dlq_url, source_url, Some(120), |body| {
        crate::stuck::identify(body).0.as_deref() == Some(invoice)
    })
    .await
}

/// Moves each message of `dlq_url` whose body `matches` to `source_url`
/// (same group, a new deduplication id; deleted from the DLQ only after the
/// send), holding the others for `hold` seconds (the queue's visibility
/// timeout when `None`) while the DLQ is read, then releasing them.
async fn move_matching(
    sqs: &aws_sdk_sqs::Client,
    dlq_url: &str,
    source_url: &str,
    hold: Option<i32>,
    matches: impl Fn(&str) -> bool,
) -> Result<InvoiceMoved, RedriveError> {
    let mut moved = InvoiceMoved::default();
    let mut held: Vec<String> = Vec::new();
    let mut blocked = std::collections::BTreeSet::new();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    loop {
        let batch = sqs
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(10)
            .set_visibility_timeout(hold)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::MessageDeduplicationId)
            .send()
            .await
            .map_err(|e| fail("receive from the DLQ", e))?;
        if batch.messages().is_empty() {
            break;
        }
        for m in batch.messages() {
            let attr = |name: MessageSystemAttributeName| m.attributes().and_then(|a| a.get(&name)).cloned();
            let group = attr(MessageSystemAttributeName::MessageGroupId).unwrap_or_else(|| "redrive".to_owned());
            let body = m.body().unwrap_or_default();
            if !matches(body) {
                moved.left += 1;
                blocked.insert(group);
                held.push(m.receipt_handle().unwrap_or_default().to_owned());
                continue;
            }
            let original = attr(MessageSystemAttributeName::MessageDeduplicationId)
                .unwrap_or_else(|| m.message_id().unwrap_or_default().to_owned());
            // SQS allows 128 characters in a deduplication id.
            let mut dedup = format!("{original}:redrive:{stamp}");
            dedup.truncate(128);
            sqs.send_message()
                .queue_url(source_url)
                .message_body(body)
                .message_group_id(group)
                .message_deduplication_id(dedup)
                .send()
                .await
                .map_err(|e| fail("send to the source queue", e))?;
            sqs.delete_message()
                .queue_url(dlq_url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .map_err(|e| fail("delete from the DLQ", e))?;
            moved.message_ids.push(m.message_id().unwrap_or_default().to_owned());
        }
    }
    for handle in &held {
        sqs.change_message_visibility()
            .queue_url(dlq_url)
            .receipt_handle(handle)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| fail("release a message left in the DLQ", e))?;
    }
    moved.unreached_groups = blocked.into_iter().collect();
    Ok(moved)
}
