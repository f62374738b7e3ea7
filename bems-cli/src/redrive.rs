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

/// A failed redrive call.
#[derive(Debug, thiserror::Error)]
#[error("redrive: {0}")]
pub struct RedriveError(String);

fn fail(what: &str, e: &(impl std::error::Error + 'static)) -> RedriveError {
    RedriveError(format!("{what}: {}", crate::describe(e)))
}

/// What a redrive moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    /// SQS message ids of the moved messages, in the order they moved.
    pub message_ids: Vec<String>,
}

/// Moves every message visible in `dlq_url` to `source_url` (both FIFO).
pub async fn redrive_fifo(sqs: &aws_sdk_sqs::Client, dlq_url: &str, source_url: &str) -> Result<Moved, RedriveError> {
    let mut moved = Moved::default();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    loop {
        let batch = sqs
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::MessageDeduplicationId)
            .send()
            .await
            .map_err(|e| fail("receive from the DLQ", &e))?;
        if batch.messages().is_empty() {
            return Ok(moved);
        }
        for m in batch.messages() {
            let attr = |name: MessageSystemAttributeName| m.attributes().and_then(|a| a.get(&name)).cloned();
            let group = attr(MessageSystemAttributeName::MessageGroupId).unwrap_or_else(|| "redrive".to_owned());
            let original = attr(MessageSystemAttributeName::MessageDeduplicationId)
                .unwrap_or_else(|| m.message_id().unwrap_or_default().to_owned());
            // SQS allows 128 characters in a deduplication id.
            let mut dedup = format!("{original}:redrive:{stamp}");
            dedup.truncate(128);
            sqs.send_message()
                .queue_url(source_url)
                .message_body(m.body().unwrap_or_default())
                .message_group_id(group)
                .message_deduplication_id(dedup)
                .send()
                .await
                .map_err(|e| fail("send to the source queue", &e))?;
            sqs.delete_message()
                .queue_url(dlq_url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .map_err(|e| fail("delete from the DLQ", &e))?;
            moved.message_ids.push(m.message_id().unwrap_or_default().to_owned());
        }
    }
}
