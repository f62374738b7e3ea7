//! The route forwarder: from each stage's route queue to its SNS FIFO topic.
//!
//! A classic EventBridge rule can give a FIFO target a message group only
//! through `SqsParameters`, so the stage rules deliver to an SQS FIFO route
//! queue per stage (group `<stage>-pNN`), and this [`RecordHandler`]
//! publishes each record to the stage's topic with the same group, so that
//! SNS fans it out to the stage queue (filtered) and the status queue.
//!
//! - The body goes on unchanged (the EventBridge envelope; consumers decode
//!   any envelope). The forwarder does not validate: the processors do, and
//!   a forwarder that dropped what it did not understand would lose it
//!   silently.
//! - Deduplication id: the event's `detail.eventId`, so a producer's second
//!   `PutEvents` of one event, which EventBridge delivers as a new event, is
//!   dropped by the topic within its five-minute window.
//! - The batch's records go out at the end of the batch
//!   ([`RecordHandler::flush`]) in as few `PublishBatch` calls as the
//!   10-entry and 256 KiB limits allow, one record per invoice per call: an
//!   invoice's later record never leaves before an earlier one, and one that
//!   was not accepted holds back the rest of its invoice.
//! - Failed entries the topic may accept later (throttling, internal
//!   errors) are retried with full-jitter backoff under a deadline, then
//!   fail their record (transient); SQS redelivers it. Entries the topic
//!   refuses fail as business errors: SQS redelivers them until
//!   `maxReceiveCount`, then moves them to the route queue's DLQ, where the
//!   alarm on every DLQ sees them.
//! - A record from a queue that is not a route queue of this cell is a
//!   configuration error: it is never forwarded (business error; it ends in
//!   its own queue's DLQ).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use aws_lambda_events::sqs::SqsMessage;
use bems_core::Stage;
use bems_core::envelope::batches;
use bems_core::retry::RetryPolicy;
use bems_core::routing::CellSpec;

use tokio::time::Instant;

use bems_batch::{RecordError, RecordHandler, message_group};

/// One message for a topic's `PublishBatch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessage {
    /// The batch entry id, unique within a call.
    pub id: String,
    /// The message body.
    pub body: String,
    /// The FIFO message group.
    pub group: String,
    /// The FIFO deduplication id.
    pub deduplication_id: String,
    /// The event's invoice id, published as the message attribute
    /// [`bems_core::contract::INVOICE_ID_ATTRIBUTE`] for subscriptions that
    /// filter on it (the smoke queue's).
    pub invoice_id: Option<String>,
}

impl TopicMessage {
    /// The bytes SNS counts against a call's 256 KiB: the body and the
    /// attribute's name, type and value.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .invoice_id
                .as_ref()
                .map_or(0, |id| bems_core::contract::INVOICE_ID_ATTRIBUTE.len() + "String".len() + id.len())
    }
}

/// What the topic said about one entry of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Published.
    Published,
    /// Not published; `retryable` when a later attempt may succeed.
    Failed {
        /// The error code.
        code: String,
        /// The message.
        message: String,
        /// Whether retrying may help (not the sender's fault).
        retryable: bool,
    },
}

/// SNS `PublishBatch`, behind a trait so the forwarding rules can be tested
/// without a network.
pub trait Topics {
    /// Publishes `messages` (at most 10, at most 256 KiB) to `topic_arn` in
    /// one call; one outcome per message, in order. `Err` when the call as a
    /// whole failed, with the reason.
    fn publish_batch(
        &self,
        topic_arn: &str,
        messages: &[TopicMessage],
    ) -> impl Future<Output = Result<Vec<EntryOutcome>, String>> + Send;
}

impl Topics for aws_sdk_sns::Client {
    async fn publish_batch(&self, topic_arn: &str, messages: &[TopicMessage]) -> Result<Vec<EntryOutcome>, String> {
        let mut entries = Vec::with_capacity(messages.len());
        for m in messages {
            let mut entry = aws_sdk_sns::types::PublishBatchRequestEntry::builder()
                .id(&m.id)
                .message(&m.body)
                .message_group_id(&m.group)
                .message_deduplication_id(&m.deduplication_id);
            if let Some(invoice) = &m.invoice_id {
                let value = aws_sdk_sns::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(invoice)
                    .build()
                    .map_err(|e| e.to_string())?;
                entry = entry.message_attributes(bems_core::contract::INVOICE_ID_ATTRIBUTE, value);
            }
            entries.push(entry.build().map_err(|e| e.to_string())?);
        }
        let out = self
            .publish_batch()
            .topic_arn(topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .map_err(|e| aws_sdk_sns::error::DisplayErrorContext(e).to_string())?;
        Ok(messages
            .iter()
            .map(|m| {
                if let Some(f) = out.failed().iter().find(|f| f.id() == m.id) {
                    EntryOutcome::Failed {
                        code: f.code().to_owned(),
                        message: f.message().unwrap_or_default().to_owned(),
                        retryable: !f.sender_fault(),
                    }
                } else if out.successful().iter().any(|s| s.id() == Some(m.id.as_str())) {
                    EntryOutcome::Published
                } else {
                    EntryOutcome::Failed {
                        code: "MissingResult".into(),
                        message: "the topic returned no result for the entry".into(),
                        retryable: true,
                    }
                }
            })
            .collect())
    }
}

/// A record waiting for the end of the batch.
#[derive(Debug)]
struct Pending {
    record_id: String,
    /// Order is kept per key: the invoice id, or the group without one.
    key: String,
    topic_arn: String,
    message: TopicMessage,
    attempts: u32,
    last_error: String,
}

/// The forwarder of one cell: route queue → stage topic.
#[derive(Debug)]
pub struct Forwarder<T> {
    topics: T,
    /// Route queue ARN → (stage, topic ARN).
    routes: HashMap<String, (Stage, String)>,
    retry: RetryPolicy,
    pending: Vec<Pending>,
}

impl<T> Forwarder<T> {
    /// The forwarder for `spec`'s route queues.
    pub fn new(spec: &CellSpec, topics: T) -> Forwarder<T> {
        let routes = Stage::ALL
            .into_iter()
            .map(|s| (spec.queue_arn(&spec.route_queue_name(s)), (s, spec.topic_arn(s))))
            .collect();
        Forwarder {
            topics,
            routes,
            retry: RetryPolicy { deadline: Duration::from_secs(10), ..RetryPolicy::default() },
            pending: Vec::new(),
        }
    }

    /// Retries failed entries under `retry` instead of the default (8
    /// attempts, 10 s).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Forwarder<T> {
        self.retry = retry;
        self
    }
}

/// The event's id and invoice id from an EventBridge envelope (or a bare
/// event), when the body has them.
fn ids(body: &str) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else { return (None, None) };
    let detail = value.get("detail").unwrap_or(&value);
    let field = |name: &str| detail.get(name).and_then(serde_json::Value::as_str).map(str::to_owned);
    (field("eventId"), field("invoiceId"))
}

impl<T: Topics + Sync + Send> RecordHandler for Forwarder<T> {
    async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
        let source = record.event_source_arn.as_deref().unwrap_or_default();
        let Some((stage, topic_arn)) = self.routes.get(source) else {
            return Err(RecordError::business(format!(
                "eventSourceARN: {source:?} is not a route queue of this cell; not forwarded"
            )));
        };
        let record_id = record.message_id.clone().unwrap_or_default();
        let body = record.body.clone().unwrap_or_default();
        let Some(group) = message_group(record) else {
            return Err(RecordError::business(format!(
                "MessageGroupId: missing on a record of the {stage} route queue, which is FIFO"
            )));
        };
        let (event_id, invoice_id) = ids(&body);
        let message = TopicMessage {
            id: String::new(),
            group: group.to_owned(),
            // Without an event id, the record's own id: a redelivery of this
            // record is still dropped by the topic.
            deduplication_id: event_id.unwrap_or_else(|| record_id.clone()),
            // Only a valid id: SNS refuses an empty attribute value, and an
            // event whose id is not one matches no subscription's filter.
            invoice_id: invoice_id.clone().filter(|id| bems_core::fields::InvoiceId::new(id.as_str()).is_ok()),
            body,
        };
        self.pending.push(Pending {
            record_id,
            key: invoice_id.unwrap_or_else(|| group.to_owned()),
            topic_arn: topic_arn.clone(),
            message,
            attempts: 0,
            last_error: String::new(),
        });
        Ok(())
    }

    async fn flush(&mut self) -> Vec<(String, RecordError)> {
        let pending = std::mem::take(&mut self.pending);
        self.forward(pending).await
    }
}

impl<T: Topics + Sync> Forwarder<T> {
    /// Publishes `pending`, one record per invoice per call, retrying what
    /// may succeed later; returns the records that were not published.
    async fn forward(&self, pending: Vec<Pending>) -> Vec<(String, RecordError)> {
        let started = Instant::now();
        // Per (topic, invoice), the records in batch order.
        let mut queues: Vec<VecDeque<Pending>> = Vec::new();
        let mut by_key: HashMap<(String, String), usize> = HashMap::new();
        for p in pending {
            let key = (p.topic_arn.clone(), p.key.clone());
            match by_key.get(&key) {
                Some(&q) => queues[q].push_back(p),
                None => {
                    by_key.insert(key, queues.len());
                    queues.push(VecDeque::from([p]));
                }
            }
        }
        let mut failures = Vec::new();
        let mut failing_rounds = 0;
        loop {
            let heads: Vec<usize> = (0..queues.len()).filter(|&q| !queues[q].is_empty()).collect();
            if heads.is_empty() {
                break;
            }
            let Some(wait) = self.retry.pace(failing_rounds, started.elapsed()) else { break };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let mut will_retry = false;
            // One call per topic per run of heads.
            let mut by_topic: Vec<(String, Vec<usize>)> = Vec::new();
            for q in heads {
                let Some(head) = queues[q].front() else { continue };
                match by_topic.iter_mut().find(|(t, _)| *t == head.topic_arn) {
                    Some((_, qs)) => qs.push(q),
                    None => by_topic.push((head.topic_arn.clone(), vec![q])),
                }
            }
            for (topic_arn, qs) in by_topic {
                for call in batches(&qs, |q| queues[q].front().map_or(0, |p| p.message.size())) {
                    let messages: Vec<TopicMessage> = call
                        .iter()
                        .enumerate()
                        .filter_map(|(i, &q)| {
                            queues[q].front().map(|p| TopicMessage { id: i.to_string(), ..p.message.clone() })
                        })
                        .collect();
                    let outcomes = self.topics.publish_batch(&topic_arn, &messages).await;
                    for (i, &q) in call.iter().enumerate() {
                        let queue = &mut queues[q];
                        let Some(head) = queue.front_mut() else { continue };
                        head.attempts += 1;
                        let outcome = match &outcomes {
                            Ok(o) => o.get(i).cloned().unwrap_or(EntryOutcome::Failed {
                                code: "MissingResult".into(),
                                message: "the topic returned fewer results than entries".into(),
                                retryable: true,
                            }),
                            Err(e) => {
                                EntryOutcome::Failed { code: "CallFailed".into(), message: e.clone(), retryable: true }
                            }
                        };
                        match outcome {
                            EntryOutcome::Published => {
                                queue.pop_front();
                            }
                            EntryOutcome::Failed { code, message, retryable: true }
                                if head.attempts < self.retry.max_attempts =>
                            {
                                head.last_error = format!("{code}: {message}");
                                will_retry = true;
                            }
                            EntryOutcome::Failed { code, message, retryable } => {
                                let error = if retryable {
                                    RecordError::Transient(format!("publish to {topic_arn} gave up: {code}: {message}"))
                                } else {
                                    RecordError::Business(format!("{topic_arn} refused the message: {code}: {message}"))
                                };
                                fail_queue(queue, error, &mut failures);
                            }
                        }
                    }
                }
            }
            failing_rounds = if will_retry { failing_rounds + 1 } else { 0 };
        }
        // Out of time: the heads give up, the records behind them wait.
        for queue in &mut queues {
            if let Some(head) = queue.front() {
                let why = if head.last_error.is_empty() { "the deadline passed" } else { head.last_error.as_str() };
                let error = RecordError::Transient(format!("publish to {} gave up: {why}", head.topic_arn));
                fail_queue(queue, error, &mut failures);
            }
        }
        failures
    }
}

/// Runs the forwarder outside Lambda: one event-source runner
/// ([`crate::sqs::EventSource`]) per route queue of `spec`, until
/// `shutdown` resolves; each runner finishes its batch first. This is how a
/// cell on the emulators (or a test against an AWS cell without the
/// deployed function) moves its events from the rules to the topics.
pub async fn run_locally(
    spec: &CellSpec,
    topics: aws_sdk_sns::Client,
    sqs: aws_sdk_sqs::Client,
    idle: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), crate::sqs::RunnerError> {
    use crate::sqs::{EventSource, RunnerOptions};
    use bems_batch::function::ProcessorFunction;
    let mut sources = Vec::new();
    for stage in Stage::ALL {
        let url = crate::sqs::queue_url(&sqs, &spec.route_queue_name(stage)).await?;
        sources.push(EventSource::connect(sqs.clone(), url, RunnerOptions::default()).await?);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runners = futures_util::future::join_all(sources.iter().map(|source| {
        let function = ProcessorFunction {
            processor: bems_batch::BatchProcessor::new(),
            handler: Forwarder::new(spec, topics.clone()),
        };
        let mut stopped = stopped.clone();
        source.run(function, idle, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
    }));
    tokio::pin!(runners);
    tokio::select! {
        () = shutdown => {
            let _ = stop.send(true);
            runners.await;
        }
        _ = &mut runners => {}
    }
    Ok(())
}

/// Fails the head of `queue` with `error` and holds back the records behind it.
fn fail_queue(queue: &mut VecDeque<Pending>, error: RecordError, failures: &mut Vec<(String, RecordError)>) {
    let Some(head) = queue.pop_front() else { return };
    for held in queue.drain(..) {
        failures.push((
            held.record_id,
            RecordError::Transient(format!("held back behind record {} of the same invoice", head.record_id)),
        ));
    }
    failures.push((head.record_id, error));
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use aws_lambda_events::sqs::SqsEvent;
    use bems_core::fields::{AccountId, CellId, Region};
    use bems_core::partition::PartitionCount;

    use super::*;
    use bems_batch::BatchProcessor;

    /// A topic that records every call and answers each entry with `answer`.
    struct FakeTopics<F> {
        calls: Mutex<Vec<(String, Vec<TopicMessage>)>>,
        answer: F,
    }

    impl<F: Fn(usize, &TopicMessage) -> Result<EntryOutcome, String> + Sync> Topics for FakeTopics<F> {
        async fn publish_batch(&self, topic_arn: &str, messages: &[TopicMessage]) -> Result<Vec<EntryOutcome>, String> {
            let mut calls = self.calls.lock().unwrap();
            calls.push((topic_arn.to_owned(), messages.to_vec()));
            let n = calls.len();
            messages.iter().map(|m| (self.answer)(n, m)).collect()
        }
    }

    fn topics<F: Fn(usize, &TopicMessage) -> Result<EntryOutcome, String>>(answer: F) -> FakeTopics<F> {
        FakeTopics { calls: Mutex::new(Vec::new()), answer }
    }

    fn spec() -> CellSpec {
        CellSpec::new(
            CellId::new("prod-eu-1").unwrap(),
            Region::new("eu-west-1").unwrap(),
            AccountId::new("123456789012").unwrap(),
            PartitionCount::new(16).unwrap(),
        )
        .unwrap()
    }

    fn batch() -> SqsEvent {
        serde_json::from_str(include_str!("../fixtures/example-sqs-event-route.json")).unwrap()
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            deadline: Duration::from_secs(5),
        }
    }

    const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:bems-prod-eu-1-reconciliation.fifo";

    fn failed_ids(response: &aws_lambda_events::sqs::SqsBatchResponse) -> Vec<&str> {
        response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect()
    }

    #[tokio::test]
    async fn forwards_to_the_stage_topic_with_group_and_event_id_one_record_per_invoice_per_call() {
        let mut forwarder = Forwarder::new(&spec(), topics(|_, _| Ok(EntryOutcome::Published))).with_retry(fast());
        let event = batch();
        let response = BatchProcessor::new().process(&event, &mut forwarder).await;
        assert!(response.batch_item_failures.is_empty());
        let calls = forwarder.topics.calls.into_inner().unwrap();
        // r1, r2, r4 go together; r3 is INV-2026-000123 again and waits for r1's call.
        let sent: Vec<Vec<(&str, &str)>> = calls
            .iter()
            .map(|(topic, ms)| {
                assert_eq!(topic, TOPIC);
                ms.iter().map(|m| (m.group.as_str(), m.deduplication_id.as_str())).collect()
            })
            .collect();
        assert_eq!(
            sent,
            [
                vec![
                    ("reconciliation-p07", "0b9c6f5e-3c1f-4d8e-9a51-2f7f2c1d4e11"),
                    ("reconciliation-p02", "5d0e8c1a-7b2f-4c3d-8e9f-1a2b3c4d5e6f"),
                    ("reconciliation-p07", "2c3d4e5f-6a7b-4c8d-9e0f-a1b2c3d4e5f6"),
                ],
                // The producer's second PutEvents of the same event: same
                // deduplication id, so the topic keeps one.
                vec![("reconciliation-p07", "0b9c6f5e-3c1f-4d8e-9a51-2f7f2c1d4e11")],
            ]
        );
        // Bodies go on unchanged, each with its invoice id as the attribute
        // subscriptions filter on.
        assert_eq!(Some(calls[1].1[0].body.as_str()), event.records[2].body.as_deref());
        assert_eq!(calls[1].1[0].invoice_id.as_deref(), Some("INV-2026-000123"));
    }

    /// SNS refuses an empty attribute value: a body whose invoice id is not
    /// one is forwarded without the attribute (and no smoke subscription
    /// matches it), rather than failing its call.
    #[tokio::test]
    async fn an_invalid_invoice_id_is_forwarded_without_the_attribute() {
        let mut forwarder = Forwarder::new(&spec(), topics(|_, _| Ok(EntryOutcome::Published))).with_retry(fast());
        let mut event = batch();
        event.records.truncate(1);
        let body = event.records[0].body.clone().unwrap_or_default();
        event.records[0].body = Some(body.replace("\"INV-2026-000123\"", "\"\""));
        let response = BatchProcessor::new().process(&event, &mut forwarder).await;
        assert!(response.batch_item_failures.is_empty());
        let calls = forwarder.topics.calls.into_inner().unwrap();
        assert_eq!(calls[0].1[0].invoice_id, None);
        assert!(calls[0].1[0].body.contains("\"invoiceId\":\"\""));
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_entries_are_retried_and_refused_ones_hold_back_their_invoice() {
        // Call 1: INV-...123 (r1) refused, INV-...456 (r2) throttled, INV-...789 (r4) published.
        let answer = |call: usize, m: &TopicMessage| {
            Ok(match (call, m.deduplication_id.as_str()) {
                (1, "0b9c6f5e-3c1f-4d8e-9a51-2f7f2c1d4e11") => {
                    EntryOutcome::Failed { code: "InvalidParameter".into(), message: "bad".into(), retryable: false }
                }
                (1, "5d0e8c1a-7b2f-4c3d-8e9f-1a2b3c4d5e6f") => {
                    EntryOutcome::Failed { code: "Throttled".into(), message: "slow down".into(), retryable: true }
                }
                _ => EntryOutcome::Published,
            })
        };
        let mut forwarder = Forwarder::new(&spec(), topics(answer)).with_retry(fast());
        let forwarded = forwarder.forward_all(&batch()).await;
        let calls = forwarder.topics.calls.into_inner().unwrap();
        assert_eq!(calls.len(), 2, "{calls:?}");
        // The retry carries r2 only: r3 is held back behind the refused r1.
        assert_eq!(calls[1].1.len(), 1);
        assert_eq!(calls[1].1[0].deduplication_id, "5d0e8c1a-7b2f-4c3d-8e9f-1a2b3c4d5e6f");
        let mut failures: Vec<(String, String)> = forwarded.into_iter().map(|(id, e)| (id, e.to_string())).collect();
        failures.sort();
        assert_eq!(failures.len(), 2);
        assert_eq!(failures[0].0, "r1");
        assert!(failures[0].1.starts_with("business: ") && failures[0].1.contains("InvalidParameter"), "{failures:?}");
        assert_eq!(failures[1].0, "r3");
        assert!(failures[1].1.contains("held back behind record r1"), "{failures:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_topic_that_stays_down_fails_the_batch_as_transient_after_the_retries() {
        let mut forwarder =
            Forwarder::new(&spec(), topics(|_, _| Err("connection reset".to_owned()))).with_retry(fast());
        let event = batch();
        let response = BatchProcessor::new().process(&event, &mut forwarder).await;
        assert_eq!(failed_ids(&response), ["r1", "r2", "r3", "r4"]);
        // Three attempts for each head; r3 never went out.
        let calls = forwarder.topics.calls.into_inner().unwrap();
        assert_eq!(calls.len(), 3);
        assert!(calls.iter().all(|(_, ms)| ms.len() == 3));
    }

    #[tokio::test]
    async fn a_record_from_another_queue_is_not_forwarded() {
        let mut event = batch();
        event.records[1].event_source_arn =
            Some("arn:aws:sqs:eu-west-1:123456789012:bems-prod-eu-1-reconciliation.fifo".into());
        let mut forwarder = Forwarder::new(&spec(), topics(|_, _| Ok(EntryOutcome::Published))).with_retry(fast());
        let error = forwarder.handle(&event.records[1]).await.unwrap_err();
        assert_eq!(error.class(), "business");
        assert!(error.to_string().contains("eventSourceARN") && error.to_string().contains("not a route queue"));
        assert!(forwarder.flush().await.is_empty());
        assert!(forwarder.topics.calls.into_inner().unwrap().is_empty());
    }

    #[tokio::test]
    async fn large_bodies_are_split_by_the_request_size_limit() {
        let mut event = batch();
        for (i, r) in event.records.iter_mut().enumerate() {
            let mut body: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
            body["detail"]["invoiceId"] = format!("INV-2026-10000{i}").into();
            body["detail"]["notes"] = "x".repeat(100 * 1024).into();
            r.body = Some(body.to_string());
        }
        let mut forwarder = Forwarder::new(&spec(), topics(|_, _| Ok(EntryOutcome::Published))).with_retry(fast());
        assert!(forwarder.forward_all(&event).await.is_empty());
        let sizes: Vec<usize> = forwarder.topics.calls.into_inner().unwrap().iter().map(|(_, ms)| ms.len()).collect();
        assert_eq!(sizes, [2, 2]);
    }

    impl<T: Topics + Sync + Send> Forwarder<T> {
        /// Handles every record, then flushes: the deferred failures.
        async fn forward_all(&mut self, event: &SqsEvent) -> Vec<(String, RecordError)> {
            for r in &event.records {
                self.handle(r).await.unwrap();
            }
            self.flush().await
        }
    }
}
