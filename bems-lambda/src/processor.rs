//! A stage processor: the [`RecordHandler`] each stage's Lambda runs.
//!
//! Per record: decode the event whatever its envelope (undecodable or
//! invalid: poison), skip an event this instance already handled, apply the
//! stage's rules ([`crate::stages`]), and publish the next event through the
//! [`Publisher`]. A rule that says "not yet" is a business error (SQS
//! redelivers it); an event the stage cannot apply is poison; a publish that
//! did not get through is transient.
//!
//! Status-change records need no extra step: the status-change queue is
//! subscribed to every stage topic, so each emitted event reaches the
//! Timestream writer by the same routing as everything else.
//!
//! Idempotency: next events have deterministic ids, so handling an event
//! twice emits the same event twice and FIFO deduplication (five minutes)
//! keeps one; beyond that window the downstream stages and the Timestream
//! writer (same record, same version) are idempotent on the event id. The
//! in-memory set of handled ids only saves work within one instance.

use std::collections::{HashSet, VecDeque};

use aws_lambda_events::sqs::SqsMessage;
use bems_core::publish::{EventBus, Outcome, Publisher, Rejection};
use bems_core::{InvoiceEvent, Stage, Validator};
use chrono::Utc;

use crate::batch::{RecordError, RecordHandler, consumer_validator, decode};
use crate::stages::{self, Approvals, Decision, PurchaseOrders, Rules};

/// How many handled event ids an instance remembers.
const REMEMBERED: usize = 10_000;

/// The processor of one stage.
pub struct StageProcessor<B, O, A> {
    stage: Stage,
    rules: Rules,
    publisher: Publisher<B>,
    validator: Validator,
    orders: O,
    approvals: A,
    handled: HashSet<bems_core::fields::EventId>,
    order: VecDeque<bems_core::fields::EventId>,
}

impl<B: EventBus + Sync, O: PurchaseOrders + Send, A: Approvals + Send> StageProcessor<B, O, A> {
    /// A processor for `stage`, decoding with [`consumer_validator`].
    pub fn new(
        stage: Stage,
        rules: Rules,
        publisher: Publisher<B>,
        orders: O,
        approvals: A,
    ) -> StageProcessor<B, O, A> {
        StageProcessor {
            stage,
            rules,
            publisher,
            validator: consumer_validator(),
            orders,
            approvals,
            handled: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    fn decide(&self, event: &InvoiceEvent) -> Decision {
        let now = Utc::now();
        match self.stage {
            Stage::Ingestion => stages::ingest(event, &self.rules, now),
            Stage::Reconciliation => stages::reconcile(event, &self.orders, &self.rules, now),
            Stage::Authorization => stages::authorize(event, &self.approvals, &self.rules, now),
            Stage::Posting => stages::post(event, &self.rules, now),
        }
    }

    fn remember(&mut self, id: bems_core::fields::EventId) {
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

impl<B: EventBus + Sync + Send, O: PurchaseOrders + Send + Sync, A: Approvals + Send + Sync> RecordHandler
    for StageProcessor<B, O, A>
{
    async fn handle(&mut self, record: &SqsMessage) -> Result<(), RecordError> {
        let event = decode(record, &self.validator)?.event;
        if self.handled.contains(&event.event_id) {
            return Ok(());
        }
        let next = match self.decide(&event) {
            Decision::Emit(next) => next,
            Decision::Retry(why) => return Err(RecordError::Business(why)),
            Decision::Invalid(why) => return Err(RecordError::Poison(why)),
        };
        match self.publisher.publish(vec![*next]).await.pop() {
            Some(Outcome::Accepted { .. }) => {
                self.remember(event.event_id);
                // How long the event waited between happening and being acted
                // on by this stage: the stage's share of the 2-minute SLA.
                let waited = (Utc::now() - event.occurred_at).num_milliseconds().max(0);
                #[allow(clippy::cast_precision_loss)]
                metrics::histogram!("StageLatency").record(waited as f64);
                tracing::info!(
                    invoice_id = %event.invoice_id,
                    event_id = %event.event_id,
                    correlation_id = %event.metadata.correlation_id,
                    stage = %self.stage,
                    status = %event.status,
                    "event handled, next event published"
                );
                Ok(())
            }
            Some(Outcome::Rejected { reason: Rejection::Invalid(v), .. }) => {
                Err(RecordError::Poison(format!("the {} rules produced an invalid event: {v}", self.stage)))
            }
            Some(Outcome::Rejected { reason: Rejection::Refused { code, message }, .. }) => {
                Err(RecordError::Business(format!("the bus refused the next event: {code}: {message}")))
            }
            Some(Outcome::GaveUp { last_error, .. }) => Err(RecordError::Transient(last_error)),
            Some(Outcome::HeldBack { .. }) | None => Err(RecordError::Transient("the next event was not sent".into())),
        }
    }
}
