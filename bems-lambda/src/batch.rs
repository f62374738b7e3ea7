//! SQS batch processing with partial failures, FIFO-correct.
//!
//! [`process_sqs_batch`] runs a [`RecordHandler`] over an [`SqsEvent`] and
//! returns the [`SqsBatchResponse`] that Lambda's event source mapping
//! (with `ReportBatchItemFailures`) turns into deletes and redeliveries:
//!
//! - **FIFO queues** (records carry `MessageGroupId`): records of one group
//!   are handled in order; at a group's first failure, that record and every
//!   later record of the group are reported as failures and *not handled*, so
//!   SQS redelivers them in their original order. Other groups go on.
//! - **Standard queues**: records are independent; a failure affects only
//!   itself.
//! - Errors come in three kinds ([`RecordError`]):
//!   - `Transient` (throttling, 5xx, timeouts): retried in place with
//!     exponential backoff and full jitter while the invocation has time,
//!     then reported as a failure;
//!   - `Business` (for example, a transition that cannot be applied yet):
//!     reported as a failure at once, so SQS redelivers it. On its last
//!     attempt ([`BatchProcessor::with_max_receive_count`], the queue's
//!     `maxReceiveCount`) it is moved to the dead-letter sink instead, with
//!     the reason, and its group goes on. This matters on FIFO queues: the
//!     records held back behind a failing record are received (and counted)
//!     with it, so if SQS's redrive moved the failing record after
//!     `maxReceiveCount` receives it would move them along with it.
//!     [`receive_count`] tells the handler which attempt this is;
//!   - `Poison` (undecodable, schema-invalid): with a [`DeadLetterSink`]
//!     configured, sent to the dead-letter queue at once with the reason and
//!     then treated as handled, so it never blocks its group; without one,
//!     reported like a business failure.
//! - A batch where every record fails is returned as every record failing,
//!   never as an error of the invocation (which would redeliver the records
//!   that succeeded too).

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use tokio::time::Instant;

/// Why a record was not handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Worth retrying now: throttling, a 5xx, a timeout.
    #[error("transient: {0}")]
    Transient(String),
    /// Worth retrying later, by redelivery.
    #[error("business: {0}")]
    Business(String),
    /// Never worth retrying: the record cannot be understood.
    #[error("poison: {0}")]
    Poison(String),
}

impl RecordError {
    /// `transient`, `business` or `poison`: the metric label of the class.
    pub const fn class(&self) -> &'static str {
        match self {
            RecordError::Transient(_) => "transient",
            RecordError::Business(_) => "business",
            RecordError::Poison(_) => "poison",
        }
    }

    /// A transient error with this message.
    pub fn transient(message: impl Into<String>) -> RecordError {
        RecordError::Transient(message.into())
    }
    /// A business error with this message.
    pub fn business(message: impl Into<String>) -> RecordError {
        RecordError::Business(message.into())
    }
    /// A poison error with this message.
    pub fn poison(message: impl Into<String>) -> RecordError {
        RecordError::Poison(message.into())
    }
}

/// Handles one record. Implement it with `async fn handle(...)`.
pub trait RecordHandler {
    /// Handles `record`; the error says whether and how to retry.
    fn handle(&mut self, record: &SqsMessage) -> impl Future<Output = Result<(), RecordError>> + Send;
}

/// Where poison records go, with the reason.
pub trait DeadLetterSink {
    /// Stores `record` with `reason`; an error keeps the record in its queue.
    fn send(&self, record: &SqsMessage, reason: &str) -> impl Future<Output = Result<(), String>> + Send;
}

/// The absence of a dead-letter sink.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeadLetter;

impl DeadLetterSink for NoDeadLetter {
    async fn send(&self, _: &SqsMessage, _: &str) -> Result<(), String> {
        Err("no dead-letter sink is configured".to_owned())
    }
}

/// How transient errors are retried in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransientRetry {
    /// Attempts per record, the first included.
    pub max_attempts: u32,
    /// The first backoff ceiling.
    pub base: Duration,
    /// The largest backoff ceiling.
    pub max_delay: Duration,
}

impl Default for TransientRetry {
    fn default() -> TransientRetry {
        TransientRetry { max_attempts: 4, base: Duration::from_millis(100), max_delay: Duration::from_secs(2) }
    }
}

impl TransientRetry {
    fn backoff(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(2_u32.saturating_pow(attempt.min(20))).min(self.max_delay).mul_f64(fastrand::f64())
    }
}

/// A configured batch processor.
#[derive(Debug, Clone, Default)]
pub struct BatchProcessor<S = NoDeadLetter> {
    dead_letter: Option<S>,
    retry: TransientRetry,
    deadline: Option<Instant>,
    max_receive_count: Option<u32>,
}

impl BatchProcessor<NoDeadLetter> {
    /// No dead-letter sink, default retries, no deadline.
    pub fn new() -> BatchProcessor<NoDeadLetter> {
        BatchProcessor { dead_letter: None, retry: TransientRetry::default(), deadline: None, max_receive_count: None }
    }
}

impl<S: DeadLetterSink> BatchProcessor<S> {
    /// Sends poison records to `sink` so they leave their group at once.
    pub fn with_dead_letter<T: DeadLetterSink>(self, sink: T) -> BatchProcessor<T> {
        BatchProcessor {
            dead_letter: Some(sink),
            retry: self.retry,
            deadline: self.deadline,
            max_receive_count: self.max_receive_count,
        }
    }

    /// The queue's `maxReceiveCount`: a business failure on that attempt
    /// goes to the dead-letter sink (when one is configured) instead of back
    /// to the queue, so it does not take the records behind it along.
    pub fn with_max_receive_count(mut self, max_receive_count: u32) -> BatchProcessor<S> {
        self.max_receive_count = Some(max_receive_count);
        self
    }

    /// Replaces the transient retry policy.
    pub fn with_retry(mut self, retry: TransientRetry) -> BatchProcessor<S> {
        self.retry = retry;
        self
    }

    /// No transient retry sleeps past `deadline` (the invocation's deadline
    /// less a margin for returning the response).
    pub fn with_deadline(mut self, deadline: Instant) -> BatchProcessor<S> {
        self.deadline = Some(deadline);
        self
    }

    /// Handles `event` with `handler`; see the module docs.
    pub async fn process<H: RecordHandler>(&self, event: &SqsEvent, handler: &mut H) -> SqsBatchResponse {
        let mut failed_groups: HashSet<&str> = HashSet::new();
        let mut response = SqsBatchResponse::default();
        for record in &event.records {
            let group = message_group(record);
            let ok = match group {
                Some(g) if failed_groups.contains(g) => {
                    metrics::counter!("Failed", "class" => "held_back").increment(1);
                    false
                }
                _ => self.handle(record, handler).await,
            };
            if !ok {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = record.message_id.clone().unwrap_or_default();
                response.batch_item_failures.push(failure);
                if let Some(g) = group {
                    failed_groups.insert(g);
                }
            }
        }
        response
    }

    /// Whether the record is done with (handled, or dead-lettered). Counts
    /// it in the metrics and logs failures with the record's ids.
    async fn handle<H: RecordHandler>(&self, record: &SqsMessage, handler: &mut H) -> bool {
        let result = self.attempt(record, handler).await;
        let (class, done) = match &result {
            Ok(()) => ("ok", true),
            Err((e, parked)) => (e.class(), *parked),
        };
        if let Err((e, parked)) = &result {
            let id = record.message_id.as_deref().unwrap_or("");
            if *parked {
                metrics::counter!("DeadLettered", "class" => class).increment(1);
                tracing::warn!(message_id = id, group = message_group(record), receive_count = receive_count(record), error = %e, "record dead-lettered");
            } else {
                metrics::counter!("Failed", "class" => class).increment(1);
                tracing::warn!(message_id = id, group = message_group(record), receive_count = receive_count(record), error = %e, "record failed; SQS will redeliver it");
            }
        } else {
            metrics::counter!("Processed").increment(1);
        }
        done
    }

    /// Runs the handler with in-place retries. `Err((error, parked))`:
    /// `parked` when the record went to the dead-letter sink.
    async fn attempt<H: RecordHandler>(&self, record: &SqsMessage, handler: &mut H) -> Result<(), (RecordError, bool)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match handler.handle(record).await {
                Ok(()) => return Ok(()),
                Err(e @ RecordError::Transient(_)) if attempt < self.retry.max_attempts => {
                    let wait = self.retry.backoff(attempt - 1);
                    if self.deadline.is_some_and(|d| Instant::now() + wait >= d) {
                        return Err((e, false));
                    }
                    metrics::counter!("Retried").increment(1);
                    tokio::time::sleep(wait).await;
                }
                Err(RecordError::Poison(reason)) => {
                    let parked = match &self.dead_letter {
                        Some(sink) => sink.send(record, &format!("poison: {reason}")).await.is_ok(),
                        None => false,
                    };
                    return Err((RecordError::Poison(reason), parked));
                }
                Err(RecordError::Business(reason)) => {
                    let count = receive_count(record);
                    let parked = match (&self.dead_letter, self.max_receive_count) {
                        (Some(sink), Some(max)) if count >= max => sink
                            .send(record, &format!("business, gave up after {count} attempts: {reason}"))
                            .await
                            .is_ok(),
                        _ => false,
                    };
                    return Err((RecordError::Business(reason), parked));
                }
                Err(e @ RecordError::Transient(_)) => return Err((e, false)),
            }
        }
    }
}

/// Handles `event` with `handler` using a [`BatchProcessor`] with no
/// dead-letter sink and default retries.
pub async fn process_sqs_batch<H: RecordHandler>(event: &SqsEvent, handler: &mut H) -> SqsBatchResponse {
    BatchProcessor::new().process(event, handler).await
}

/// Decodes the invoice event in `record`'s body, whatever its envelope
/// (raw, SNS, EventBridge). A body that cannot be decoded or validated is
/// poison: no retry will make it valid, and the reason lists every problem.
pub fn decode(record: &SqsMessage, validator: &bems_core::Validator) -> Result<bems_core::Delivery, RecordError> {
    let body = record.body.as_deref().ok_or_else(|| RecordError::poison("the record has no body"))?;
    bems_core::decode_body(body, validator).map_err(|e| RecordError::Poison(e.to_string()))
}

/// The validator consumers use: unknown fields are ignored (producers may
/// be on a newer minor schema version) and the clock is not checked
/// (redelivered and replayed events are old by design).
pub fn consumer_validator() -> bems_core::Validator {
    bems_core::Validator::new(bems_core::ValidationOptions {
        unknown_fields: bems_core::UnknownFields::Ignore,
        max_future_skew: None,
        partitions: None,
    })
}

/// The record's FIFO message group, `None` on a standard queue.
pub fn message_group(record: &SqsMessage) -> Option<&str> {
    record.attributes.get("MessageGroupId").map(String::as_str)
}

/// How many times SQS has delivered this record, this time included
/// (`ApproximateReceiveCount`; 1 when absent).
pub fn receive_count(record: &SqsMessage) -> u32 {
    record.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const FIFO: &str = include_str!("../fixtures/example-sqs-event-fifo.json");
    const STANDARD: &str = include_str!("../fixtures/example-sqs-event-standard.json");

    fn event(json: &str) -> SqsEvent {
        serde_json::from_str(json).expect("fixture")
    }

    /// Fails records by message id with a scripted error; records what it
    /// was asked to handle, in order.
    #[derive(Default)]
    struct Scripted {
        errors: Vec<(&'static str, RecordError, u32)>,
        handled: Vec<String>,
        calls: std::collections::HashMap<String, u32>,
    }

    impl Scripted {
        fn failing(errors: Vec<(&'static str, RecordError, u32)>) -> Scripted {
            Scripted { errors, ..Scripted::default() }
        }
    }

    impl RecordHandler for Scripted {
        async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
            let id = record.message_id.clone().unwrap_or_default();
            let n = self.calls.entry(id.clone()).or_default();
            *n += 1;
            self.handled.push(id.clone());
            // An error applies for its first `times` calls on that record.
            match self.errors.iter().find(|(m, _, times)| *m == id && *n <= *times) {
                Some((_, e, _)) => Err(e.clone()),
                None => Ok(()),
            }
        }
    }

    #[derive(Clone, Default)]
    struct Sink {
        sent: Arc<Mutex<Vec<(String, String)>>>,
        broken: bool,
    }

    impl DeadLetterSink for Sink {
        async fn send(&self, record: &SqsMessage, reason: &str) -> Result<(), String> {
            if self.broken {
                return Err("DLQ unreachable".into());
            }
            self.sent.lock().expect("lock").push((record.message_id.clone().unwrap_or_default(), reason.to_owned()));
            Ok(())
        }
    }

    fn failed(r: &SqsBatchResponse) -> Vec<&str> {
        r.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect()
    }

    fn unique(handled: &[String]) -> Vec<&str> {
        let mut seen = Vec::new();
        for h in handled {
            if !seen.contains(&h.as_str()) {
                seen.push(h.as_str());
            }
        }
        seen
    }

    // The FIFO fixture: group A = a1, a2, a3; group B = b1, b2; records
    // interleaved a1 b1 a2 b2 a3.

    #[tokio::test(start_paused = true)]
    async fn all_good_reports_no_failures_and_keeps_order() {
        let mut h = Scripted::default();
        let r = process_sqs_batch(&event(FIFO), &mut h).await;
        assert!(failed(&r).is_empty());
        assert_eq!(h.handled, vec!["a1", "b1", "a2", "b2", "a3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_business_failure_stops_its_group_only() {
        let mut h = Scripted::failing(vec![("a2", RecordError::business("not yet"), 99)]);
        let r = process_sqs_batch(&event(FIFO), &mut h).await;
        assert_eq!(failed(&r), vec!["a2", "a3"], "a2 and everything after it in group A");
        assert_eq!(h.handled, vec!["a1", "b1", "a2", "b2"], "a3 is never handled; group B goes on");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_several_groups_are_independent() {
        let mut h =
            Scripted::failing(vec![("a1", RecordError::business("x"), 99), ("b2", RecordError::business("y"), 99)]);
        let r = process_sqs_batch(&event(FIFO), &mut h).await;
        assert_eq!(failed(&r), vec!["a1", "a2", "b2", "a3"]);
        assert_eq!(h.handled, vec!["a1", "b1", "b2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_error_is_retried_in_place() {
        let mut h = Scripted::failing(vec![("b1", RecordError::transient("throttled"), 2)]);
        let r = process_sqs_batch(&event(FIFO), &mut h).await;
        assert!(failed(&r).is_empty());
        assert_eq!(h.calls["b1"], 3);
        assert_eq!(unique(&h.handled), vec!["a1", "b1", "a2", "b2", "a3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_error_that_outlasts_its_attempts_fails_its_group() {
        let mut h = Scripted::failing(vec![("b1", RecordError::transient("down"), 99)]);
        let r = process_sqs_batch(&event(FIFO), &mut h).await;
        assert_eq!(failed(&r), vec!["b1", "b2"]);
        assert_eq!(h.calls["b1"], TransientRetry::default().max_attempts);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_transient_retries() {
        let mut h = Scripted::failing(vec![("a1", RecordError::transient("slow"), 99)]);
        let retry =
            TransientRetry { max_attempts: 1000, base: Duration::from_secs(1), max_delay: Duration::from_secs(1) };
        let p = BatchProcessor::new().with_retry(retry).with_deadline(Instant::now() + Duration::from_secs(5));
        let started = Instant::now();
        let r = p.process(&event(FIFO), &mut h).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(failed(&r), vec!["a1", "a2", "a3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn poison_goes_to_the_dead_letter_sink_and_does_not_block_its_group() {
        let sink = Sink::default();
        let mut h = Scripted::failing(vec![("a2", RecordError::poison("amount: not_positive"), 99)]);
        let r = BatchProcessor::new().with_dead_letter(sink.clone()).process(&event(FIFO), &mut h).await;
        assert!(failed(&r).is_empty(), "dead-lettered poison counts as done");
        assert_eq!(h.handled, vec!["a1", "b1", "a2", "b2", "a3"], "a3 still handled");
        assert_eq!(h.calls["a2"], 1, "poison is never retried");
        assert_eq!(
            *sink.sent.lock().expect("lock"),
            vec![("a2".to_owned(), "poison: amount: not_positive".to_owned())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn poison_without_a_sink_or_with_a_broken_one_fails_like_business() {
        let mut h = Scripted::failing(vec![("a2", RecordError::poison("bad"), 99)]);
        let r = process_sqs_batch(&event(FIFO), &mut h).await;
        assert_eq!(failed(&r), vec!["a2", "a3"]);
        let broken = Sink { broken: true, ..Sink::default() };
        let mut h = Scripted::failing(vec![("a2", RecordError::poison("bad"), 99)]);
        let r = BatchProcessor::new().with_dead_letter(broken).process(&event(FIFO), &mut h).await;
        assert_eq!(failed(&r), vec!["a2", "a3"], "a poison record that could not be parked stays in its queue");
    }

    #[tokio::test(start_paused = true)]
    async fn a_business_failure_on_its_last_attempt_is_dead_lettered_and_its_group_goes_on() {
        // a2 arrives for the third time (ApproximateReceiveCount 3 in the fixture).
        let sink = Sink::default();
        let mut h = Scripted::failing(vec![("a2", RecordError::business("ledger closed"), 99)]);
        let p = BatchProcessor::new().with_dead_letter(sink.clone()).with_max_receive_count(3);
        let r = p.process(&event(FIFO), &mut h).await;
        assert!(failed(&r).is_empty());
        assert_eq!(h.handled, vec!["a1", "b1", "a2", "b2", "a3"]);
        assert_eq!(
            *sink.sent.lock().expect("lock"),
            vec![("a2".to_owned(), "business, gave up after 3 attempts: ledger closed".to_owned())]
        );
        // Before its last attempt it goes back to the queue as usual.
        let mut h = Scripted::failing(vec![("a2", RecordError::business("ledger closed"), 99)]);
        let p = BatchProcessor::new().with_dead_letter(Sink::default()).with_max_receive_count(5);
        assert_eq!(failed(&p.process(&event(FIFO), &mut h).await), vec!["a2", "a3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_failing_batch_is_reported_record_by_record() {
        let mut h =
            Scripted::failing(["a1", "b1", "a2", "b2", "a3"].map(|m| (m, RecordError::business("down"), 99)).to_vec());
        let r = process_sqs_batch(&event(FIFO), &mut h).await;
        assert_eq!(failed(&r), vec!["a1", "b1", "a2", "b2", "a3"]);
        assert_eq!(h.handled, vec!["a1", "b1"], "later records of failed groups are not handled");
    }

    #[tokio::test(start_paused = true)]
    async fn standard_queue_records_are_independent() {
        let mut h = Scripted::failing(vec![("s2", RecordError::business("x"), 99)]);
        let r = process_sqs_batch(&event(STANDARD), &mut h).await;
        assert_eq!(failed(&r), vec!["s2"]);
        assert_eq!(h.handled, vec!["s1", "s2", "s3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_batch_is_fine() {
        let mut h = Scripted::default();
        let r = process_sqs_batch(&SqsEvent::default(), &mut h).await;
        assert!(r.batch_item_failures.is_empty());
    }

    /// The fixtures are SQS events as Lambda delivers them; they survive a
    /// round trip through the aws_lambda_events types unchanged.
    #[test]
    fn fixtures_round_trip() {
        for text in [FIFO, STANDARD] {
            let typed = event(text);
            let again = serde_json::to_value(&typed).expect("serializes");
            let original: serde_json::Value = serde_json::from_str(text).expect("json");
            assert!(again == original, "the round trip changed the fixture");
        }
    }

    #[test]
    fn decoding_failures_are_poison_with_every_problem() {
        let e = event(FIFO);
        let ok = decode(&e.records[0], &bems_core::Validator::default()).expect("valid body");
        assert_eq!(ok.event.invoice_id.as_str(), "INV-2026-000123");
        let mut bad = e.records[0].clone();
        bad.body = Some(r#"{"eventId": 1}"#.to_owned());
        match decode(&bad, &bems_core::Validator::default()) {
            Err(RecordError::Poison(reason)) => {
                assert!(reason.contains("eventId: wrong_type") && reason.contains("invoiceId: missing"), "{reason}");
            }
            other => panic!("expected poison, got {other:?}"),
        }
        bad.body = None;
        assert!(matches!(decode(&bad, &bems_core::Validator::default()), Err(RecordError::Poison(_))));
    }

    #[test]
    fn receive_count_and_group_come_from_the_attributes() {
        let e = event(FIFO);
        assert_eq!(receive_count(&e.records[0]), 1);
        assert_eq!(receive_count(&e.records[2]), 3);
        assert_eq!(message_group(&e.records[1]), Some("reconciliation-p02"));
        assert_eq!(message_group(&event(STANDARD).records[0]), None);
    }
}
