//! A stage processor: the [`RecordHandler`] each stage's Lambda runs.
//!
//! Per record: decode the event whatever its envelope (undecodable or
//! invalid: poison), skip an event this instance already handled, and apply
//! the stage's rules ([`crate::stages`]). A rule that says "not yet" is a
//! business error (SQS redelivers it); an event the stage cannot apply is
//! poison. At the end of the batch ([`RecordHandler::flush`]) the next
//! events go to the bus together through the [`Publisher`]: one `PutEvents`
//! for a batch of ten instead of ten, which matters against the PutEvents
//! request quota at month-end rates (four stages each publishing every
//! invoice). A publish that did not get through is transient and fails its
//! record and the rest of its group.
//!
//! Status-change records need no extra step: the status-change queue is
//! subscribed to every stage topic, so each emitted event reaches the
//! Timestream writer by the same routing as everything else.
//!
//! Idempotency: next events have deterministic ids, so handling an event
//! twice within the FIFO deduplication window (five minutes) emits the same
//! id twice and SQS/SNS keep one. Beyond the window, an
//! [`IdempotencyStore`] ([`StageProcessor::with_store`]) makes the second
//! handling publish the very event the first one stored, time included, so
//! nothing downstream changes. The in-memory set of handled ids only saves
//! work within one instance.

use std::collections::{HashSet, VecDeque};

use aws_lambda_events::sqs::SqsMessage;
use bems_core::fields::EventId;
use bems_core::publish::{EventBus, Outcome, Publisher, Rejection};
use bems_core::{InvoiceEvent, Stage, Validator};
use chrono::Utc;

use crate::idempotency::{IdempotencyStore, NoStore, StoreError};
use crate::stages::{self, Approvals, Decision, PurchaseOrders, Rules};
use bems_batch::{RecordError, RecordHandler, cell_consumer_validator, decode};

/// How many handled event ids an instance remembers.
const REMEMBERED: usize = 10_000;

/// The processor of one stage.
#[derive(Debug)]
pub struct StageProcessor<B, O, A, S = NoStore> {
    stage: Stage,
    rules: Rules,
    publisher: Publisher<B>,
    validator: Validator,
    orders: O,
    approvals: A,
    handled: HashSet<EventId>,
    order: VecDeque<EventId>,
    pending: Vec<Pending>,
    store: S,
}

impl<B, O, A, S> StageProcessor<B, O, A, S> {
    /// Claims each next event in `store` before publishing it, so that a
    /// second handling of an event, however late, publishes the same event
    /// (see [`crate::idempotency`]).
    pub fn with_store<T: IdempotencyStore>(self, store: T) -> StageProcessor<B, O, A, T> {
        StageProcessor {
            stage: self.stage,
            rules: self.rules,
            publisher: self.publisher,
            validator: self.validator,
            orders: self.orders,
            approvals: self.approvals,
            handled: self.handled,
            order: self.order,
            pending: self.pending,
            store,
        }
    }
}

impl<B: EventBus + Sync, O: PurchaseOrders + Send, A: Approvals + Send> StageProcessor<B, O, A> {
    /// A processor for `stage` of the publisher's cell, decoding with
    /// [`cell_consumer_validator`]: an event whose partition is not its
    /// invoice's is refused for good (poison), with the reason.
    pub fn new(
        stage: Stage,
        rules: Rules,
        publisher: Publisher<B>,
        orders: O,
        approvals: A,
    ) -> StageProcessor<B, O, A, NoStore> {
        StageProcessor {
            stage,
            rules,
            validator: cell_consumer_validator(publisher.target().partitions),
            publisher,
            orders,
            approvals,
            handled: HashSet::new(),
            order: VecDeque::new(),
            pending: Vec::new(),
            store: NoStore,
        }
    }
}

impl<
    B: EventBus + Sync + Send,
    O: PurchaseOrders + Send + Sync,
    A: Approvals + Send + Sync,
    S: IdempotencyStore + Send + Sync,
> RecordHandler for StageProcessor<B, O, A, S>
{
    /// Decides, and defers the publish to [`flush`](RecordHandler::flush).
    async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
        let event = decode(record, &self.validator)?.event;
        if self.handled.contains(&event.event_id) || self.pending.iter().any(|p| p.event.event_id == event.event_id) {
            return Ok(());
        }
        match self.decide(&event) {
            Decision::Emit(next) => {
                // The stored event when this one was handled before.
                let next = self.store.claim(&event.event_id, &next).await.map_err(|e| match e {
                    StoreError::Unavailable(_) => RecordError::Transient(e.to_string()),
                    StoreError::Corrupt { .. } => RecordError::Poison(e.to_string()),
                })?;
                let message_id = record.message_id.clone().unwrap_or_default();
                self.pending.push(Pending { message_id, event, next });
                Ok(())
            }
            Decision::Retry(why) => Err(RecordError::Business(why)),
            Decision::Invalid(why) => Err(RecordError::Poison(why)),
        }
    }

    /// Publishes the batch's next events together: the [`Publisher`] packs
    /// them into as few `PutEvents` calls as the entry and size limits allow
    /// (one for a batch of ten), one event per invoice per call so that a
    /// failed event holds back that invoice's later ones.
    async fn flush(&mut self) -> Vec<(String, RecordError)> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Vec::new();
        }
        let outcomes = self.publisher.publish(pending.iter().map(|p| p.next.clone()).collect()).await;
        let mut failures = Vec::new();
        for (p, outcome) in pending.into_iter().zip(outcomes) {
            let error = match outcome {
                Outcome::Accepted { .. } => {
                    self.accepted(&p.event);
                    continue;
                }
                Outcome::Rejected { reason: Rejection::Invalid(v), .. } => {
                    RecordError::Poison(format!("the {} rules produced an invalid event: {v}", self.stage))
                }
                Outcome::Rejected { reason: Rejection::Refused { code, message }, .. } => {
                    RecordError::Business(format!("the bus refused the next event: {code}: {message}"))
                }
                Outcome::GaveUp { last_error, .. } => RecordError::Transient(last_error),
                Outcome::HeldBack { behind, .. } => {
                    RecordError::Transient(format!("held back behind event {behind} of the same invoice"))
                }
            };
            failures.push((p.message_id, error));
        }
        failures
    }
}

impl<B, O: PurchaseOrders, A: Approvals, S> StageProcessor<B, O, A, S> {
    fn decide(&self, event: &InvoiceEvent) -> Decision {
        let now = Utc::now();
        match self.stage {
            Stage::Ingestion => stages::ingest(event, &self.rules, now),
            Stage::Reconciliation => stages::reconcile(event, &self.orders, &self.rules, now),
            Stage::Authorization => stages::authorize(event, &self.approvals, &self.rules, now),
            Stage::Posting => stages::post(event, &self.rules, now),
        }
    }
}

impl<B, O, A, S> StageProcessor<B, O, A, S> {
    /// Bookkeeping once an event's successor is on the bus.
    fn accepted(&mut self, event: &InvoiceEvent) {
        self.remember(event.event_id);
        // How long the event waited between happening and being acted on by
        // this stage: the stage's share of the 2-minute SLA.
        let waited = (Utc::now() - event.occurred_at).num_milliseconds().max(0);
        #[allow(clippy::cast_precision_loss, reason = "milliseconds fit a double exactly far beyond any latency")]
        metrics::histogram!("StageLatency").record(waited as f64);
        tracing::info!(
            invoice_id = %event.invoice_id,
            event_id = %event.event_id,
            correlation_id = %event.metadata.correlation_id,
            stage = %self.stage,
            status = %event.status,
            "event handled, next event published"
        );
    }

    fn remember(&mut self, id: EventId) {
        if self.handled.insert(id) {
            self.order.push_back(id);
            if self.order.len() > REMEMBERED
                && let Some(old) = self.order.pop_front()
            {
                self.handled.remove(&old);
            }
        }
    }
}

/// An event whose successor waits for the end of the batch.
#[derive(Debug)]
struct Pending {
    message_id: String,
    event: InvoiceEvent,
    next: InvoiceEvent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::{NoApprovals, NoPurchaseOrderSystem};
    use aws_lambda_events::sqs::SqsEvent;
    use bems_batch::{BatchProcessor, DeadLetterSink};
    use bems_core::Status;
    use bems_core::envelope::PutEventsEntry;
    use bems_core::publish::{BusError, CellTarget, EntryResult};
    use std::sync::{Arc, Mutex};

    /// Accepts every entry and keeps it.
    #[derive(Clone, Default)]
    struct Recording(Arc<Mutex<Vec<PutEventsEntry>>>);

    impl EventBus for Recording {
        async fn put_events(&self, entries: &[PutEventsEntry]) -> Result<Vec<EntryResult>, BusError> {
            if let Ok(mut kept) = self.0.lock() {
                kept.extend(entries.iter().cloned());
            }
            Ok(entries.iter().map(|_| EntryResult::Accepted("eb".into())).collect())
        }
    }

    /// Keeps what is dead-lettered, with the reason.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<String>>>);

    impl DeadLetterSink for Kept {
        async fn send(&self, _: &SqsMessage, reason: &str) -> Result<(), bems_batch::DeadLetterError> {
            self.0.lock().map_err(|e| bems_batch::DeadLetterError::new(e.to_string()))?.push(reason.to_owned());
            Ok(())
        }
    }

    fn submitted(partition: u8) -> SqsEvent {
        let mut e = bems_core::Validator::new(bems_core::ValidationOptions::consumer())
            .parse(include_bytes!("../../bems-core/fixtures/example-invoice-event.json"))
            .expect("fixture");
        e.stage = Stage::Ingestion;
        e.status = Status::Submitted;
        e.previous_status = None;
        e.issue_date = chrono::Utc::now().date_naive();
        e.payment_terms = bems_core::PaymentTerms::net(e.issue_date, e.payment_terms.net_days);
        e.metadata.partition = bems_core::partition::Partition::new(i64::from(partition)).expect("partition");
        let mut record = SqsMessage::default();
        record.message_id = Some(format!("m-{partition}"));
        record.body = Some(e.to_json());
        record.attributes.insert("MessageGroupId".into(), format!("ingestion-p{partition:02}"));
        let mut event = SqsEvent::default();
        event.records = vec![record];
        event
    }

    /// What no rule can check: a partition in range that is not the
    /// invoice's own (`INV-2026-000123` is in partition 3 of 4) is refused
    /// for good, with the reason, and nothing is published for it.
    #[tokio::test]
    async fn an_in_range_partition_that_is_not_the_invoice_s_is_dead_lettered_with_the_reason() {
        let target = CellTarget::new("c1", "eu-west-1", "123456789012", 4).expect("target");
        let own = bems_core::partition::Partition::for_invoice(
            &bems_core::fields::InvoiceId::new("INV-2026-000123").expect("id"),
            target.partitions,
        )
        .get();
        let wrong = if own == 1 { 2 } else { 1 };
        for (partition, refused) in [(own, false), (wrong, true)] {
            let bus = Recording::default();
            let kept = Kept::default();
            let mut processor = StageProcessor::new(
                Stage::Ingestion,
                Rules::default(),
                Publisher::new(bus.clone(), target.clone()),
                NoPurchaseOrderSystem,
                NoApprovals,
            );
            let response = BatchProcessor::new()
                .with_dead_letter(kept.clone())
                .process(&submitted(partition), &mut processor)
                .await;
            assert!(response.batch_item_failures.is_empty(), "{response:?}");
            let reasons = kept.0.lock().expect("lock").clone();
            let published = bus.0.lock().expect("lock").len();
            if refused {
                assert_eq!(published, 0);
                assert_eq!(reasons.len(), 1);
                let want = format!("belongs to partition {own} of 4, got {wrong}");
                assert!(reasons[0].contains("metadata.partition") && reasons[0].contains(&want), "{}", reasons[0]);
            } else {
                assert_eq!((published, reasons.len()), (1, 0), "{reasons:?}");
            }
        }
    }
}
