//! # bems-batch
//!
//! SQS batch processing with partial failures, FIFO-correct, for Lambda
//! functions fed by an SQS event source mapping, and for anything else
//! that receives SQS records in batches (the local event-source runner of
//! `bems-lambda` calls the same code). No AWS service SDK is in this
//! crate's tree: it speaks only the event and response types of
//! [`aws_lambda_events`]; where a record goes when it is poison is a
//! [`DeadLetterSink`] you provide.
//!
//! ```
//! use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
//! use bems_batch::{RecordError, RecordHandler, decode, process_sqs_batch};
//! use bems_core::Validator;
//!
//! /// Counts the invoice events it sees; anything undecodable is poison.
//! struct Count {
//!     validator: Validator,
//!     seen: usize,
//! }
//!
//! impl RecordHandler for Count {
//!     async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
//!         let delivery = decode(record, &self.validator)?;
//!         if delivery.event.amount.value().is_zero() {
//!             return Err(RecordError::business("zero amounts wait for a correction"));
//!         }
//!         self.seen += 1;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let event: SqsEvent = serde_json::from_str(include_str!("../fixtures/example-sqs-event-fifo.json")).unwrap();
//! let mut handler = Count { validator: Validator::default(), seen: 0 };
//! let response = process_sqs_batch(&event, &mut handler).await;
//! assert!(response.batch_item_failures.is_empty());
//! assert_eq!(handler.seen, 5);
//! # }
//! ```
//!
//! ## Layers
//!
//! - This module: [`RecordHandler`] (one record), [`BatchProcessor`] (a
//!   batch: order, retries, dead-lettering, the response),
//!   [`process_sqs_batch`] (the defaults).
//! - [`function`]: a [`BatchFunction`](function::BatchFunction) is what
//!   an invocation calls, built once per instance and called for every
//!   batch; [`ProcessorFunction`](function::ProcessorFunction) pairs a
//!   processor with a handler.
//! - [`lambda`] (feature `lambda`): runs a batch function on
//!   `lambda_runtime`, one instance's state kept across invocations.
//!
//! ## Semantics
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
//! - [`BatchProcessor::process`] handles records one at a time in the
//!   batch's order; [`BatchProcessor::process_concurrently`] runs up to N
//!   clones of the handler at once, one lane each (a FIFO group, or a record
//!   of a standard queue): bounded concurrency that never splits a group.
//! - A handler may defer work to the end of the batch
//!   ([`RecordHandler::flush`]), to send one request for the whole batch;
//!   a deferred failure fails its record and the rest of its group.
//! - Errors come in three kinds ([`RecordError`]):
//!   - `Transient` (throttling, 5xx, timeouts): retried in place with
//!     exponential backoff and full jitter ([`IN_PLACE_RETRY`], or your
//!     [`RetryPolicy`]) while the invocation has time, then reported as a
//!     failure;
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use bems_core::contract::CLASS_DIMENSION;
/// The retry engine the in-place retries use (from `bems-core`, shared
/// with the producer SDK and the forwarder).
pub use bems_core::retry::RetryPolicy;
use tokio::time::Instant;

pub mod function;
#[cfg(feature = "lambda")]
#[cfg_attr(docsrs, doc(cfg(feature = "lambda")))]
pub mod lambda;

/// Why a record was not handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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

/// Every `class` label of the `Failed` and `DeadLettered` metrics: the
/// three [`RecordError`] classes, and `held_back` (a record left in the
/// queue behind an earlier failure of its FIFO group).
pub const METRIC_CLASSES: [&str; 4] = ["transient", "business", "poison", "held_back"];

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

    /// Completes work that [`handle`](RecordHandler::handle) deferred to the
    /// end of the batch (a stage processor sends all of a batch's next events
    /// in one `PutEvents` instead of one call per record). Returns the
    /// records whose deferred work failed, by message id. Each is settled
    /// like an error from `handle` (poison and last-attempt business errors
    /// go to the dead-letter sink) except that transient errors are not
    /// retried in place (the handler's client has retried already); one that
    /// is not dead-lettered fails, and so does every later record of its
    /// FIFO group. Those later records were handled already, so a handler
    /// that defers must make its effects idempotent (deterministic ids) and
    /// keep order per key itself, as the [`Publisher`](bems_core::publish::Publisher)
    /// does per invoice. The default defers nothing.
    fn flush(&mut self) -> impl Future<Output = Vec<(String, RecordError)>> + Send {
        std::future::ready(Vec::new())
    }
}

/// Where poison records go, with the reason.
pub trait DeadLetterSink {
    /// Stores `record` with `reason`; an error keeps the record in its queue.
    fn send(&self, record: &SqsMessage, reason: &str) -> impl Future<Output = Result<(), DeadLetterError>> + Send;

    /// Whether records can be sent at all: [`NoDeadLetter`] says no, so a
    /// record that would have gone to it is simply left in its queue.
    fn is_configured(&self) -> bool {
        true
    }
}

/// Why a dead-letter sink did not take a record (it stays in its queue).
#[derive(Debug, thiserror::Error)]
#[error("the dead-letter sink refused the record")]
pub struct DeadLetterError(#[source] Box<dyn std::error::Error + Send + Sync>);

impl DeadLetterError {
    /// The sink's own error, kept as the source.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> DeadLetterError {
        DeadLetterError(source.into())
    }
}

/// The absence of a dead-letter sink.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeadLetter;

impl DeadLetterSink for NoDeadLetter {
    async fn send(&self, _: &SqsMessage, _: &str) -> Result<(), DeadLetterError> {
        Err(DeadLetterError::new("no dead-letter sink is configured"))
    }

    fn is_configured(&self) -> bool {
        false
    }
}

/// How transient record errors are retried in place by default: 4
/// attempts, 100 ms doubling up to 2 s, within 10 s of the first, and never
/// past the invocation's deadline. A record that still fails is left for
/// SQS to redeliver.
pub const IN_PLACE_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 4,
    base: Duration::from_millis(100),
    max_delay: Duration::from_secs(2),
    deadline: Duration::from_secs(10),
};

/// A configured batch processor.
#[derive(Debug, Clone, Default)]
pub struct BatchProcessor<S = NoDeadLetter> {
    dead_letter: Option<S>,
    retry: RetryPolicy,
    deadline: Option<Instant>,
    max_receive_count: Option<u32>,
}

impl BatchProcessor<NoDeadLetter> {
    /// No dead-letter sink, default retries, no deadline.
    pub fn new() -> BatchProcessor<NoDeadLetter> {
        BatchProcessor { dead_letter: None, retry: IN_PLACE_RETRY, deadline: None, max_receive_count: None }
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
    pub fn with_retry(mut self, retry: RetryPolicy) -> BatchProcessor<S> {
        self.retry = retry;
        self
    }

    /// No transient retry sleeps past `deadline` (the invocation's deadline
    /// less a margin for returning the response).
    pub fn with_deadline(mut self, deadline: Instant) -> BatchProcessor<S> {
        self.deadline = Some(deadline);
        self
    }

    /// Handles `event` with `handler`, one record at a time in the batch's
    /// order; see the module docs.
    pub async fn process<H: RecordHandler>(&self, event: &SqsEvent, handler: &mut H) -> SqsBatchResponse {
        self.process_by(event, handler, self.deadline).await
    }

    /// [`process`](BatchProcessor::process) with this invocation's
    /// `deadline` in place of the configured one.
    pub(crate) async fn process_by<H: RecordHandler>(
        &self,
        event: &SqsEvent,
        handler: &mut H,
        deadline: Option<Instant>,
    ) -> SqsBatchResponse {
        let mut fates = Vec::with_capacity(event.records.len());
        self.handle_in_order(event.records.iter().enumerate(), handler, deadline, &mut fates).await;
        self.flush(handler, &event.records, &mut fates).await;
        respond(&event.records, fates)
    }

    /// Handles `event` with up to `workers` clones of `handler` at once:
    /// each FIFO message group (and each record of a standard queue) is a
    /// lane; a worker takes one lane at a time and handles it in order, so
    /// a group is never handled by two workers and its order holds. Each
    /// worker flushes its clone when no lane is left. Use it when records
    /// spend their time waiting on I/O and the handler is cheap to clone.
    pub async fn process_concurrently<H: RecordHandler + Clone>(
        &self,
        event: &SqsEvent,
        handler: &H,
        workers: NonZeroUsize,
    ) -> SqsBatchResponse {
        let lanes: Mutex<VecDeque<Vec<usize>>> = Mutex::new(lanes(&event.records).into());
        let count = workers.get().min(lanes.lock().map_or(0, |l| l.len()));
        let work = (0..count).map(|_| {
            let (lanes, mut handler) = (&lanes, handler.clone());
            async move {
                let mut fates = Vec::new();
                // The guard is dropped at the end of the statement, before
                // any await.
                while let Some(lane) = lanes.lock().ok().and_then(|mut l| l.pop_front()) {
                    let records = lane.iter().map(|&i| (i, &event.records[i]));
                    self.handle_in_order(records, &mut handler, self.deadline, &mut fates).await;
                }
                self.flush(&mut handler, &event.records, &mut fates).await;
                fates
            }
        });
        let fates = futures_util::future::join_all(work).await.into_iter().flatten().collect();
        respond(&event.records, fates)
    }

    /// Handles `records` (index in the batch, record) in the order given:
    /// after a record of a FIFO group fails, the later ones of that group
    /// are held back, not handled. Appends one fate per record to `fates`.
    async fn handle_in_order<'r, H: RecordHandler>(
        &self,
        records: impl Iterator<Item = (usize, &'r SqsMessage)>,
        handler: &mut H,
        deadline: Option<Instant>,
        fates: &mut Vec<(usize, Fate)>,
    ) {
        let mut failed_groups: HashSet<&str> = HashSet::new();
        for (index, record) in records {
            let group = message_group(record);
            let fate = match group {
                Some(g) if failed_groups.contains(g) => Fate::Failed("held_back"),
                _ => self.attempt(record, handler, deadline).await,
            };
            if let (Fate::Failed(_), Some(g)) = (fate, group) {
                failed_groups.insert(g);
            }
            fates.push((index, fate));
        }
    }

    /// Runs the handler's [`RecordHandler::flush`] and settles the records
    /// whose deferred work failed; a failure also fails every record of its
    /// group handled after it (`fates` is in handling order).
    async fn flush<H: RecordHandler>(&self, handler: &mut H, records: &[SqsMessage], fates: &mut [(usize, Fate)]) {
        for (message_id, error) in handler.flush().await {
            let Some(at) = fates
                .iter()
                .position(|&(i, f)| f == Fate::Done && records[i].message_id.as_deref() == Some(message_id.as_str()))
            else {
                tracing::warn!(message_id, error = %error, "flush named a record that is not in the batch or not done");
                continue;
            };
            let record = &records[fates[at].0];
            let fate = self.settle(record, error).await;
            fates[at].1 = fate;
            if let (Fate::Failed(_), Some(group)) = (fate, message_group(record)) {
                for later in &mut fates[at + 1..] {
                    if later.1 == Fate::Done && message_group(&records[later.0]) == Some(group) {
                        later.1 = Fate::Failed("held_back");
                    }
                }
            }
        }
    }

    /// Runs the handler with in-place retries of transient errors, then
    /// settles what is left.
    async fn attempt<H: RecordHandler>(&self, record: &SqsMessage, handler: &mut H, deadline: Option<Instant>) -> Fate {
        let started = Instant::now();
        let mut failures = 0;
        loop {
            match handler.handle(record).await {
                Ok(()) => return Fate::Done,
                Err(e @ RecordError::Transient(_)) => {
                    failures += 1;
                    let wait = self.retry.pause(failures, started.elapsed());
                    match wait {
                        Some(wait) if deadline.is_none_or(|d| Instant::now() + wait < d) => {
                            metrics::counter!("Retried").increment(1);
                            tokio::time::sleep(wait).await;
                        }
                        _ => return self.settle(record, e).await,
                    }
                }
                Err(e) => return self.settle(record, e).await,
            }
        }
    }

    /// What becomes of a record that failed with `error`: poison, and a
    /// business failure on its last attempt, go to the dead-letter sink
    /// (when there is one and it takes them); the rest stay in the queue.
    async fn settle(&self, record: &SqsMessage, error: RecordError) -> Fate {
        let class = error.class();
        let count = receive_count(record);
        let sink = self.dead_letter.as_ref().filter(|sink| sink.is_configured());
        let parked = match (&error, sink) {
            (RecordError::Poison(reason), Some(sink)) => Some(sink.send(record, &format!("poison: {reason}")).await),
            (RecordError::Business(reason), Some(sink)) if self.max_receive_count.is_some_and(|max| count >= max) => {
                Some(sink.send(record, &format!("business, gave up after {count} attempts: {reason}")).await)
            }
            _ => None,
        };
        let id = record.message_id.as_deref().unwrap_or("");
        let group = message_group(record);
        if let Some(Ok(())) = parked {
            tracing::warn!(message_id = id, group, receive_count = count, error = %error, "record dead-lettered");
            return Fate::Parked(class);
        }
        if let Some(Err(why)) = parked {
            let source = std::error::Error::source(&why).map(ToString::to_string).unwrap_or_default();
            tracing::error!(message_id = id, error = %why, source, "it stays in its queue");
        }
        tracing::warn!(message_id = id, group, receive_count = count, error = %error, "record failed; SQS will redeliver it");
        Fate::Failed(class)
    }
}

/// What became of a record in this batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Handled.
    Done,
    /// Sent to the dead-letter sink (error class): done with.
    Parked(&'static str),
    /// Left in the queue for redelivery (error class, or `held_back`).
    Failed(&'static str),
}

/// The batch's lanes, in order of first appearance: one per FIFO message
/// group, holding its records' indices in order, and one per record
/// without a group.
fn lanes(records: &[SqsMessage]) -> Vec<Vec<usize>> {
    let mut lanes: Vec<Vec<usize>> = Vec::new();
    let mut by_group: HashMap<&str, usize> = HashMap::new();
    for (i, record) in records.iter().enumerate() {
        match message_group(record) {
            Some(g) => match by_group.get(g) {
                Some(&lane) => lanes[lane].push(i),
                None => {
                    by_group.insert(g, lanes.len());
                    lanes.push(vec![i]);
                }
            },
            None => lanes.push(vec![i]),
        }
    }
    lanes
}

/// The response for `fates` (one per record, any order), failures in the
/// batch's order; counts each record's fate in the metrics.
fn respond(records: &[SqsMessage], mut fates: Vec<(usize, Fate)>) -> SqsBatchResponse {
    fates.sort_by_key(|&(i, _)| i);
    let mut response = SqsBatchResponse::default();
    for (i, fate) in fates {
        match fate {
            Fate::Done => metrics::counter!("Processed").increment(1),
            Fate::Parked(class) => metrics::counter!("DeadLettered", CLASS_DIMENSION => class).increment(1),
            Fate::Failed(class) => {
                metrics::counter!("Failed", CLASS_DIMENSION => class).increment(1);
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = records[i].message_id.clone().unwrap_or_default();
                response.batch_item_failures.push(failure);
            }
        }
    }
    response
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

/// The validator consumers use ([`bems_core::ValidationOptions::consumer`]).
pub fn consumer_validator() -> bems_core::Validator {
    bems_core::Validator::new(bems_core::ValidationOptions::consumer())
}

/// The validator consumers of a cell of `partitions` use: also refuses an
/// event whose partition is not its invoice's
/// ([`bems_core::ValidationOptions::consumer_in`]).
pub fn cell_consumer_validator(partitions: bems_core::partition::PartitionCount) -> bems_core::Validator {
    bems_core::Validator::new(bems_core::ValidationOptions::consumer_in(partitions))
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
        async fn send(&self, record: &SqsMessage, reason: &str) -> Result<(), DeadLetterError> {
            if self.broken {
                return Err(DeadLetterError::new("DLQ unreachable"));
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
        assert_eq!(h.calls["b1"], IN_PLACE_RETRY.max_attempts);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_transient_retries() {
        let mut h = Scripted::failing(vec![("a1", RecordError::transient("slow"), 99)]);
        let retry = RetryPolicy {
            max_attempts: 1000,
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(1),
            deadline: Duration::MAX,
        };
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

    /// Defers every record to `flush`, which fails the scripted ones.
    #[derive(Default)]
    struct Deferring {
        pending: Vec<String>,
        flush_errors: Vec<(&'static str, RecordError)>,
        flushed: Vec<String>,
        refuse: Option<&'static str>,
    }

    impl RecordHandler for Deferring {
        async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
            let id = record.message_id.clone().unwrap_or_default();
            if self.refuse == Some(id.as_str()) {
                return Err(RecordError::business("refused in handle"));
            }
            self.pending.push(id);
            Ok(())
        }

        async fn flush(&mut self) -> Vec<(String, RecordError)> {
            self.flushed.append(&mut self.pending);
            self.flush_errors.iter().map(|(id, e)| ((*id).to_owned(), e.clone())).collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_failure_fails_its_record_and_the_rest_of_its_group() {
        let mut h = Deferring {
            flush_errors: vec![("a2", RecordError::transient("PutEvents throttled"))],
            ..Deferring::default()
        };
        let r = process_sqs_batch(&event(FIFO), &mut h).await;
        assert_eq!(h.flushed, vec!["a1", "b1", "a2", "b2", "a3"], "one flush for the whole batch");
        assert_eq!(failed(&r), vec!["a2", "a3"], "group B is untouched");
    }

    #[tokio::test(start_paused = true)]
    async fn deferred_failures_in_two_groups_and_unknown_ids() {
        let mut h = Deferring {
            flush_errors: vec![
                ("b1", RecordError::business("refused")),
                ("a3", RecordError::business("refused")),
                ("zz", RecordError::business("not in the batch")),
            ],
            ..Deferring::default()
        };
        let r = process_sqs_batch(&event(FIFO), &mut h).await;
        assert_eq!(failed(&r), vec!["b1", "b2", "a3"], "an unknown id changes nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn deferred_poison_is_dead_lettered_without_failing_its_group() {
        let sink = Sink::default();
        let mut h =
            Deferring { flush_errors: vec![("a1", RecordError::poison("invalid next event"))], ..Deferring::default() };
        let r = BatchProcessor::new().with_dead_letter(sink.clone()).process(&event(FIFO), &mut h).await;
        assert!(failed(&r).is_empty());
        assert_eq!(*sink.sent.lock().expect("lock"), vec![("a1".to_owned(), "poison: invalid next event".to_owned())]);
        // Without a sink it fails, and so does the rest of group A.
        let mut h =
            Deferring { flush_errors: vec![("a1", RecordError::poison("invalid next event"))], ..Deferring::default() };
        assert_eq!(failed(&process_sqs_batch(&event(FIFO), &mut h).await), vec!["a1", "a2", "a3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_business_failure_on_its_last_attempt_is_dead_lettered() {
        // a2 is on its third receive in the fixture.
        let sink = Sink::default();
        let mut h = Deferring { flush_errors: vec![("a2", RecordError::business("refused"))], ..Deferring::default() };
        let p = BatchProcessor::new().with_dead_letter(sink.clone()).with_max_receive_count(3);
        assert!(failed(&p.process(&event(FIFO), &mut h).await).is_empty());
        assert_eq!(sink.sent.lock().expect("lock").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_failed_in_handle_is_not_failed_again_by_flush() {
        // a2 fails in handle, so a3 is held back and never handled; a flush
        // that names a3 anyway finds it not done and changes nothing.
        let mut h = Deferring {
            refuse: Some("a2"),
            flush_errors: vec![("a3", RecordError::business("again"))],
            ..Deferring::default()
        };
        let r = process_sqs_batch(&event(FIFO), &mut h).await;
        assert_eq!(failed(&r), vec!["a2", "a3"], "each failure reported once");
        assert_eq!(h.flushed, vec!["a1", "b1", "b2"]);
    }

    /// Records what it handled and how many handles ran at once; each
    /// handle takes one second of (paused) time.
    #[derive(Clone, Default)]
    struct Slow {
        handled: Arc<Mutex<Vec<String>>>,
        running: Arc<std::sync::atomic::AtomicUsize>,
        most: Arc<std::sync::atomic::AtomicUsize>,
        fail: Option<&'static str>,
    }

    impl RecordHandler for Slow {
        async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.running.fetch_sub(1, SeqCst);
            let id = record.message_id.clone().unwrap_or_default();
            self.handled.lock().expect("lock").push(id.clone());
            if self.fail == Some(id.as_str()) { Err(RecordError::business("no")) } else { Ok(()) }
        }
    }

    fn standard_batch(n: usize) -> SqsEvent {
        let mut e = event(STANDARD);
        let template = e.records[0].clone();
        e.records = (0..n)
            .map(|i| {
                let mut r = template.clone();
                r.message_id = Some(format!("s{i}"));
                r
            })
            .collect();
        e
    }

    #[tokio::test(start_paused = true)]
    async fn standard_records_run_concurrently_within_the_bound() {
        let h = Slow::default();
        let started = Instant::now();
        let r =
            BatchProcessor::new().process_concurrently(&standard_batch(10), &h, NonZeroUsize::new(4).expect("4")).await;
        assert!(failed(&r).is_empty());
        assert_eq!(h.most.load(std::sync::atomic::Ordering::SeqCst), 4, "at most 4 at once, and 4 were used");
        assert_eq!(started.elapsed(), Duration::from_secs(3), "10 one-second records on 4 workers: 3 rounds");
        assert_eq!(h.handled.lock().expect("lock").len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_fifo_groups_keep_their_order_and_failure_rules() {
        let h = Slow { fail: Some("a2"), ..Slow::default() };
        let r = BatchProcessor::new().process_concurrently(&event(FIFO), &h, NonZeroUsize::new(8).expect("8")).await;
        assert_eq!(failed(&r), vec!["a2", "a3"], "failures in the batch's order");
        assert_eq!(h.most.load(std::sync::atomic::Ordering::SeqCst), 2, "two groups, two workers");
        let handled = h.handled.lock().expect("lock").clone();
        let of = |p: char| handled.iter().filter(|m| m.starts_with(p)).cloned().collect::<Vec<_>>();
        assert_eq!(of('a'), vec!["a1", "a2"], "group A in order, a3 held back");
        assert_eq!(of('b'), vec!["b1", "b2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_standard_failures_are_independent() {
        let h = Slow { fail: Some("s3"), ..Slow::default() };
        let r =
            BatchProcessor::new().process_concurrently(&standard_batch(6), &h, NonZeroUsize::new(2).expect("2")).await;
        assert_eq!(failed(&r), vec!["s3"]);
        assert_eq!(h.handled.lock().expect("lock").len(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_processing_of_an_empty_batch_is_fine() {
        let h = Slow::default();
        let r = BatchProcessor::new().process_concurrently(&SqsEvent::default(), &h, NonZeroUsize::MIN).await;
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
