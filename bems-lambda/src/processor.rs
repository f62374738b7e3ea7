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

use crate::batch::{RecordError, RecordHandler, consumer_validator, decode};
use crate::idempotency::{IdempotencyStore, NoStore, StoreError};
use crate::stages::{self, Approvals, Decision, PurchaseOrders, Rules};

/// How many handled event ids an instance remembers.
const REMEMBERED: usize = 10_000;

/// The processor of one stage.
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
    /// A processor for `stage`, decoding with [`consumer_validator`].
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
            publisher,
            validator: consumer_validator(),
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
struct Pending {
    message_id: String,
    event: InvoiceEvent,
    next: InvoiceEvent,
}
