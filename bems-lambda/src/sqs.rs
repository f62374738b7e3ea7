//! SQS for the batch core: a dead-letter sink, and the local event-source
//! runner that stands in for Lambda's SQS event source mapping.
//!
//! The runner does what the mapping does on AWS: long-polls the queue,
//! builds the [`SqsEvent`] Lambda would deliver (with `MessageGroupId`,
//! `ApproximateReceiveCount` and the other attributes), calls the same
//! handler the Lambda binary calls, deletes the records that succeeded and
//! leaves the reported failures for redelivery after their visibility
//! timeout. It is how the end-to-end tests and the local cell run the
//! processors (Lambda itself cannot run on LocalStack without Docker).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};

use crate::batch::{BatchProcessor, DeadLetterSink, RecordHandler, message_group};

/// Message attribute carrying why a record was dead-lettered.
pub const REASON_ATTRIBUTE: &str = "bems-poison-reason";

/// Message attribute carrying the queue a dead-lettered record came from.
pub const SOURCE_ATTRIBUTE: &str = "bems-source-queue";

/// Sends poison records to an SQS dead-letter queue, with the reason and
/// the source queue as message attributes. For a FIFO DLQ the record keeps
/// its message group, and its SQS message id is the deduplication id, so a
/// record dead-lettered twice (after a crash) is stored once.
#[derive(Debug, Clone)]
pub struct SqsDeadLetter {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    fifo: bool,
}

impl SqsDeadLetter {
    /// A sink writing to the queue at `queue_url`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> SqsDeadLetter {
        let queue_url = queue_url.into();
        let fifo = queue_url.ends_with(".fifo");
        SqsDeadLetter { client, queue_url, fifo }
    }
}

fn attribute(value: &str) -> MessageAttributeValue {
    // Both fields are set, so the builder cannot fail.
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .unwrap_or_else(|_| unreachable!("data type and value are set"))
}

impl DeadLetterSink for SqsDeadLetter {
    async fn send(&self, record: &SqsMessage, reason: &str) -> Result<(), String> {
        // SQS message attribute values are limited to the message size; keep
        // the reason readable rather than complete.
        let reason: String = reason.chars().take(2000).collect();
        let mut send = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(record.body.clone().unwrap_or_default())
            .message_attributes(REASON_ATTRIBUTE, attribute(&reason))
            .message_attributes(SOURCE_ATTRIBUTE, attribute(record.event_source_arn.as_deref().unwrap_or("unknown")));
        if self.fifo {
            send = send
                .message_group_id(message_group(record).unwrap_or("poison"))
                .message_deduplication_id(record.message_id.clone().unwrap_or_default());
        }
        send.send().await.map(|_| ()).map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
    }
}

/// The Lambda handler the runner calls: an `SqsEvent` in, the partial
/// batch response out.
pub trait BatchFunction {
    /// Handles one batch.
    fn call(&mut self, event: SqsEvent) -> impl Future<Output = SqsBatchResponse> + Send;
}

/// A batch function made of a [`BatchProcessor`] and a record handler:
/// what a processor's Lambda binary runs, and what the runner calls.
pub struct ProcessorFunction<S, H> {
    /// The processor (dead-letter sink, retries, max receive count).
    pub processor: BatchProcessor<S>,
    /// The record handler.
    pub handler: H,
}

impl<S: DeadLetterSink + Sync + Send, H: RecordHandler + Send> BatchFunction for ProcessorFunction<S, H> {
    async fn call(&mut self, event: SqsEvent) -> SqsBatchResponse {
        self.processor.process(&event, &mut self.handler).await
    }
}

/// Runner settings, mirroring the event source mapping's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerOptions {
    /// Records per batch (FIFO: at most 10).
    pub batch_size: i32,
    /// Long-poll wait, seconds (0–20).
    pub wait_seconds: i32,
}

impl Default for RunnerOptions {
    fn default() -> RunnerOptions {
        RunnerOptions { batch_size: 10, wait_seconds: 1 }
    }
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Records received.
    pub received: usize,
    /// Records deleted after success.
    pub deleted: usize,
    /// Records left for redelivery.
    pub failed: usize,
}

/// A failed runner call.
#[derive(Debug, thiserror::Error)]
#[error("event-source runner: {0}")]
pub struct RunnerError(String);

/// Polls `queue_url` once: receives a batch, calls `function`, deletes what
/// succeeded. Returns what happened; an empty poll returns zeros.
pub async fn poll_once<F: BatchFunction>(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    options: RunnerOptions,
    function: &mut F,
) -> Result<PollStats, RunnerError> {
    let received = client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(options.batch_size)
        .wait_time_seconds(options.wait_seconds)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .map_err(|e| RunnerError(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
    if received.messages().is_empty() {
        return Ok(PollStats::default());
    }
    let arn = queue_arn(client, queue_url).await.unwrap_or_default();
    let records: Vec<SqsMessage> = received.messages().iter().map(|m| to_lambda(m, &arn)).collect();
    let handles: HashMap<String, String> = received
        .messages()
        .iter()
        .filter_map(|m| Some((m.message_id()?.to_owned(), m.receipt_handle()?.to_owned())))
        .collect();
    let mut event = SqsEvent::default();
    event.records = records;
    let ids: Vec<String> = event.records.iter().filter_map(|r| r.message_id.clone()).collect();
    let response = function.call(event).await;
    let failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    let mut stats = PollStats { received: ids.len(), ..PollStats::default() };
    for id in &ids {
        if failed.contains(&id.as_str()) {
            stats.failed += 1;
            continue;
        }
        if let Some(handle) = handles.get(id) {
            client
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(handle)
                .send()
                .await
                .map_err(|e| RunnerError(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
            stats.deleted += 1;
        }
    }
    Ok(stats)
}

/// Polls until `shutdown` resolves. Errors (an emulator restarting) are
/// retried after `idle`.
pub async fn run<F: BatchFunction>(
    client: aws_sdk_sqs::Client,
    queue_url: String,
    options: RunnerOptions,
    mut function: F,
    idle: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let pause = match poll_once(&client, &queue_url, options, &mut function).await {
            Ok(stats) if stats.received > 0 => Duration::ZERO,
            _ => idle,
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn queue_arn(client: &aws_sdk_sqs::Client, queue_url: &str) -> Option<String> {
    let out = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .ok()?;
    out.attributes()?.get(&QueueAttributeName::QueueArn).cloned()
}

/// The record as Lambda's SQS event source would deliver it.
fn to_lambda(m: &aws_sdk_sqs::types::Message, queue_arn: &str) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = m.message_id().map(str::to_owned);
    record.receipt_handle = m.receipt_handle().map(str::to_owned);
    record.body = m.body().map(str::to_owned);
    record.md5_of_body = m.md5_of_body().map(str::to_owned);
    record.md5_of_message_attributes = m.md5_of_message_attributes().map(str::to_owned);
    record.attributes =
        m.attributes().map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect()).unwrap_or_default();
    for (name, value) in m.message_attributes().into_iter().flatten() {
        let mut attr = aws_lambda_events::sqs::SqsMessageAttribute::default();
        attr.data_type = Some(value.data_type().to_owned());
        attr.string_value = value.string_value().map(str::to_owned);
        record.message_attributes.insert(name.clone(), attr);
    }
    record.event_source = Some("aws:sqs".to_owned());
    record.event_source_arn = Some(queue_arn.to_owned());
    record.aws_region = queue_arn.split(':').nth(3).map(str::to_owned);
    record
}
