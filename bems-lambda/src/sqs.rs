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

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};

use bems_batch::function::{BatchFunction, Invocation};
use bems_batch::{DeadLetterError, DeadLetterSink, message_group};
use bems_core::retry::{RetryPolicy, is_transient};

pub use bems_core::contract::{REASON_ATTRIBUTE, SOURCE_ATTRIBUTE};

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
    async fn send(&self, record: &SqsMessage, reason: &str) -> Result<(), DeadLetterError> {
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
        send.send().await.map(|_| ()).map_err(DeadLetterError::new)
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
    /// Records handled successfully whose delete failed: they come back.
    pub undeleted: usize,
}

/// A failed runner call.
#[derive(Debug, thiserror::Error)]
#[error("event-source runner: {0}")]
pub struct RunnerError(String);

/// One queue as Lambda's SQS event source mapping sees it: the runner's
/// handle on the queue, with the ARN looked up once (every record carries it
/// as `eventSourceARN`).
#[derive(Debug, Clone)]
pub struct EventSource {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    options: RunnerOptions,
}

/// Runs a start-up lookup, calling again on transient errors (the SDK has
/// already retried each call) with backoff for up to half a minute: a
/// runner started while SQS throttles or restarts must not die of it.
async fn looked_up<T, E, F, Fut>(call: F) -> Result<T, aws_sdk_sqs::error::SdkError<E, HttpResponse>>
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, aws_sdk_sqs::error::SdkError<E, HttpResponse>>>,
{
    let policy = RetryPolicy { max_attempts: u32::MAX, ..RetryPolicy::default() };
    let started = tokio::time::Instant::now();
    let mut failures = 0;
    loop {
        match call().await {
            Err(e) if is_transient(&e) => {
                failures += 1;
                match policy.pause(failures, started.elapsed()) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(e),
                }
            }
            result => return result,
        }
    }
}

/// The service's code and message when SQS answered, else the whole
/// transport error (connection refused, timeout).
fn sqs_error<E>(e: aws_sdk_sqs::error::SdkError<E>) -> RunnerError
where
    E: std::error::Error + aws_sdk_sqs::error::ProvideErrorMetadata + 'static,
{
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    match e.code() {
        Some(code) => RunnerError(format!("{code}: {}", e.message().unwrap_or("no message"))),
        None => RunnerError(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()),
    }
}

impl EventSource {
    /// The event source for the queue at `queue_url`; fails if the queue
    /// cannot be read (transient errors are retried for half a minute).
    pub async fn connect(
        client: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
        options: RunnerOptions,
    ) -> Result<EventSource, RunnerError> {
        let queue_url = queue_url.into();
        let out = looked_up(|| {
            client.get_queue_attributes().queue_url(&queue_url).attribute_names(QueueAttributeName::QueueArn).send()
        })
        .await
        .map_err(sqs_error)?;
        let queue_arn = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| RunnerError(format!("{queue_url}: no QueueArn attribute")))?;
        Ok(EventSource { client, queue_url, queue_arn, options })
    }

    /// The queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Polls once: receives a batch, calls `function`, deletes what
    /// succeeded (in one `DeleteMessageBatch`). Returns what happened; an
    /// empty poll returns zeros.
    pub async fn poll_once<F: BatchFunction>(&self, function: &mut F) -> Result<PollStats, RunnerError> {
        let received = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(self.options.batch_size)
            .wait_time_seconds(self.options.wait_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(sqs_error)?;
        if received.messages().is_empty() {
            return Ok(PollStats::default());
        }
        let mut event = SqsEvent::default();
        event.records = received.messages().iter().map(|m| to_lambda(m, &self.queue_arn)).collect();
        let response = function.call(event, &Invocation::default()).await;
        let failed: HashSet<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
        let mut stats = PollStats { received: received.messages().len(), ..PollStats::default() };
        let mut entries = Vec::new();
        for (i, m) in received.messages().iter().enumerate() {
            match (m.message_id(), m.receipt_handle()) {
                (Some(id), _) if failed.contains(id) => stats.failed += 1,
                (Some(_), Some(handle)) => entries.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .build()
                        .map_err(|e| RunnerError(e.to_string()))?,
                ),
                // Without an id or handle SQS sent something Lambda never
                // would; leave it to come back.
                _ => stats.failed += 1,
            }
        }
        if entries.is_empty() {
            return Ok(stats);
        }
        let sent = entries.len();
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs_error)?;
        // A record that could not be deleted comes back after its visibility
        // timeout and is handled again; the handlers are idempotent.
        stats.deleted = sent - out.failed().len();
        stats.undeleted = out.failed().len();
        for f in out.failed() {
            tracing::warn!(entry = f.id(), code = f.code(), message = f.message(), "delete failed; record will return");
        }
        Ok(stats)
    }

    /// Polls until `shutdown` resolves. Errors (an emulator restarting) are
    /// retried after `idle`.
    pub async fn run<F: BatchFunction>(&self, mut function: F, idle: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let pause = match self.poll_once(&mut function).await {
                Ok(stats) if stats.received > 0 => Duration::ZERO,
                Ok(_) => idle,
                Err(e) => {
                    tracing::warn!(queue = %self.queue_url, error = %e, "poll failed; retrying");
                    idle
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The URL of the queue named `name` (transient errors are retried for half
/// a minute).
pub async fn queue_url(client: &aws_sdk_sqs::Client, name: &str) -> Result<String, RunnerError> {
    let out = looked_up(|| client.get_queue_url().queue_name(name).send())
        .await
        .map_err(|e| RunnerError(format!("queue {name}: {}", sqs_error(e).0)))?;
    out.queue_url().map(str::to_owned).ok_or_else(|| RunnerError(format!("queue {name}: no URL")))
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
