//! The producer SDK: validated, partitioned, ordered, retried `PutEvents`
//! (feature `aws`).
//!
//! ```no_run
//! # async fn run(events: Vec<bems_core::InvoiceEvent>) -> Result<(), Box<dyn std::error::Error>> {
//! use bems_core::publish::{CellTarget, Publisher};
//!
//! let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let bus = aws_sdk_eventbridge::Client::new(&config);
//! let target = CellTarget::new("prod-eu-1", "eu-west-1", "123456789012", 16)?;
//! let publisher = Publisher::new(bus, target);
//! for outcome in publisher.publish(events).await {
//!     println!("{outcome:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! What it guarantees:
//!
//! - every input gets exactly one [`Outcome`], in input order: accepted,
//!   rejected with the reason, given up after N attempts, or held back
//!   because an earlier event of the same invoice was not accepted;
//! - invalid events are rejected before any call and never sent;
//! - `metadata.partition`, `cellId`, `region` and `accountId` are set from
//!   the [`CellTarget`], so producers cannot route an invoice to the wrong
//!   partition;
//! - batches hold at most 10 entries and [`MAX_REQUEST_BYTES`](crate::envelope::MAX_REQUEST_BYTES);
//! - only failed entries are retried, with exponential backoff and full
//!   jitter, until the [`RetryPolicy`]'s deadline;
//! - one invoice's events are sent in input order: an invoice has at most
//!   one event in flight, and if one is not accepted, its later events are
//!   not sent (they would overtake it). EventBridge itself does not promise
//!   ordering between separate calls; consumers check transitions.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::envelope::{PutEventsEntry, batches};
use crate::event::InvoiceEvent;
use crate::fields::{AccountId, CellId, EventId, Region};
use crate::partition::{Partition, PartitionCount};
use crate::retry::RetryPolicy;
use crate::routing::CellSpec;
use crate::validate::ValidationOptions;
use crate::violation::{FieldError, Violations};

/// What the bus said about one entry of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    /// Accepted, with EventBridge's event id.
    Accepted(String),
    /// Refused, with the service's error code and message.
    Failed {
        /// `ErrorCode` of the result entry.
        code: String,
        /// `ErrorMessage` of the result entry.
        message: String,
    },
}

/// Why a whole call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Worth retrying: throttling, a 5xx, a timeout, a dropped connection.
    #[error("transient: {0}")]
    Transient(String),
    /// Not worth retrying: access denied, a missing bus, a malformed request.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// The one call the publisher needs. Implemented for
/// `aws_sdk_eventbridge::Client`; tests use fakes.
pub trait EventBus {
    /// Sends `entries` in one `PutEvents` call; returns one result per
    /// entry, in order.
    fn put_events(
        &self,
        entries: &[PutEventsEntry],
    ) -> impl std::future::Future<Output = Result<Vec<EntryResult>, BusError>> + Send;
}

/// Where events go: the cell's bus and coordinates.
#[derive(Debug, Clone)]
pub struct CellTarget {
    /// The bus name (`bems-<cell>`) or ARN.
    pub bus: String,
    /// The cell id.
    pub cell_id: CellId,
    /// The cell's Region.
    pub region: Region,
    /// The cell's account.
    pub account_id: AccountId,
    /// The cell's partition count.
    pub partitions: PartitionCount,
}

impl CellTarget {
    /// A target for the cell's default bus name.
    pub fn new(cell_id: &str, region: &str, account_id: &str, partitions: u32) -> Result<CellTarget, FieldError> {
        let cell_id = CellId::new(cell_id)?;
        Ok(CellTarget {
            bus: crate::contract::bus_name(&cell_id),
            cell_id,
            region: Region::new(region)?,
            account_id: AccountId::new(account_id)?,
            partitions: PartitionCount::new(partitions)?,
        })
    }
}

impl From<&CellSpec> for CellTarget {
    /// Where a producer sends `spec`'s events: its bus, its coordinates.
    fn from(spec: &CellSpec) -> CellTarget {
        CellTarget {
            bus: spec.bus_name(),
            cell_id: spec.cell_id().clone(),
            region: spec.region().clone(),
            account_id: spec.account_id().clone(),
            partitions: spec.partitions(),
        }
    }
}

/// What happened to one input event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// On the bus.
    Accepted {
        /// The event's id.
        event_id: EventId,
        /// EventBridge's id for it.
        eventbridge_id: String,
        /// Calls it took.
        attempts: u32,
    },
    /// Not sent, or refused for good.
    Rejected {
        /// The event's id.
        event_id: EventId,
        /// Why.
        reason: Rejection,
    },
    /// Still failing when attempts or time ran out.
    GaveUp {
        /// The event's id.
        event_id: EventId,
        /// Calls made.
        attempts: u32,
        /// The last error.
        last_error: String,
    },
    /// Not sent because an earlier event of the same invoice was not
    /// accepted; sending it would have overtaken that one.
    HeldBack {
        /// The event's id.
        event_id: EventId,
        /// The earlier event that was not accepted.
        behind: EventId,
    },
}

impl Outcome {
    /// The event this outcome is about.
    pub fn event_id(&self) -> EventId {
        match self {
            Outcome::Accepted { event_id, .. }
            | Outcome::Rejected { event_id, .. }
            | Outcome::GaveUp { event_id, .. }
            | Outcome::HeldBack { event_id, .. } => *event_id,
        }
    }

    /// Whether the event is on the bus.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Outcome::Accepted { .. })
    }
}

/// Why an event was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// It failed validation; nothing was sent.
    Invalid(Violations),
    /// The bus refused it with a non-retryable error.
    Refused {
        /// The error code.
        code: String,
        /// The error message.
        message: String,
    },
}

/// Entry error codes worth retrying: EventBridge's throttling and internal
/// failures. Anything else (for example `MalformedDetail`) is permanent.
fn retryable(code: &str) -> bool {
    matches!(code, "ThrottlingException" | "InternalFailure" | "InternalException" | "ServiceUnavailable")
}

/// Publishes invoice events to a cell's bus.
#[derive(Debug, Clone)]
pub struct Publisher<B> {
    bus: B,
    target: CellTarget,
    retry: RetryPolicy,
    validation: ValidationOptions,
}

struct Pending {
    index: usize,
    event_id: EventId,
    entry: PutEventsEntry,
    attempts: u32,
    last_error: String,
}

impl<B: EventBus> Publisher<B> {
    /// A publisher with the default retry policy and validation options.
    pub fn new(bus: B, target: CellTarget) -> Publisher<B> {
        let validation = ValidationOptions { partitions: Some(target.partitions), ..ValidationOptions::default() };
        Publisher { bus, target, retry: RetryPolicy::default(), validation }
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Publisher<B> {
        self.retry = retry;
        self
    }

    /// The cell's coordinates written into every event.
    pub fn target(&self) -> &CellTarget {
        &self.target
    }

    /// Places `event` in the target cell: partition and cell metadata.
    pub fn place(&self, event: &mut InvoiceEvent) {
        event.metadata.partition = Partition::for_invoice(&event.invoice_id, self.target.partitions);
        event.metadata.cell_id = self.target.cell_id.clone();
        event.metadata.region = self.target.region.clone();
        event.metadata.account_id = self.target.account_id.clone();
    }

    /// Publishes `events`; one outcome per event, in input order.
    pub async fn publish(&self, events: Vec<InvoiceEvent>) -> Vec<Outcome> {
        let started = Instant::now();
        let now = chrono::Utc::now();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        // Per invoice, its valid events in input order; `by_invoice` finds an
        // invoice's queue without scanning them all.
        let mut queues: Vec<VecDeque<Pending>> = Vec::new();
        let mut by_invoice: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (index, mut event) in events.into_iter().enumerate() {
            self.place(&mut event);
            if let Err(violations) = event.check(&self.validation, now) {
                outcomes[index] =
                    Some(Outcome::Rejected { event_id: event.event_id, reason: Rejection::Invalid(violations) });
                continue;
            }
            let pending = Pending {
                index,
                event_id: event.event_id,
                entry: PutEventsEntry::for_event(&event, &self.target.bus),
                attempts: 0,
                last_error: String::new(),
            };
            match by_invoice.get(event.invoice_id.as_str()) {
                Some(&q) => queues[q].push_back(pending),
                None => {
                    by_invoice.insert(event.invoice_id.as_str().to_owned(), queues.len());
                    queues.push(VecDeque::from([pending]));
                }
            }
        }

        // Consecutive rounds in which some entry failed and will be retried:
        // only those wait, for a backoff that grows with their number.
        let mut failing_rounds: u32 = 0;
        loop {
            // The head of every invoice's queue: at most one event per
            // invoice in flight, in input order.
            let heads: Vec<usize> = (0..queues.len()).filter(|&q| !queues[q].is_empty()).collect();
            if heads.is_empty() {
                break;
            }
            let Some(wait) = self.retry.pace(failing_rounds, started.elapsed()) else { break };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let mut will_retry = false;
            for batch in batches(&heads, |q| queues[q].front().map_or(0, |p| p.entry.size())) {
                let entries: Vec<PutEventsEntry> =
                    batch.iter().filter_map(|&q| queues[q].front().map(|p| p.entry.clone())).collect();
                let results = self.bus.put_events(&entries).await;
                for (i, &q) in batch.iter().enumerate() {
                    let queue = &mut queues[q];
                    let Some(head) = queue.front_mut() else { continue };
                    head.attempts += 1;
                    let verdict = match &results {
                        Ok(r) => match r.get(i) {
                            Some(EntryResult::Accepted(id)) => Ok(id.clone()),
                            Some(EntryResult::Failed { code, message }) if retryable(code) => {
                                Err((true, code.clone(), message.clone()))
                            }
                            Some(EntryResult::Failed { code, message }) => Err((false, code.clone(), message.clone())),
                            None => Err((
                                true,
                                "MissingResult".into(),
                                "the bus returned fewer results than entries".into(),
                            )),
                        },
                        Err(BusError::Transient(m)) => Err((true, "Transient".into(), m.clone())),
                        Err(BusError::Permanent(m)) => Err((false, "Permanent".into(), m.clone())),
                    };
                    match verdict {
                        Ok(eventbridge_id) => {
                            if let Some(done) = queue.pop_front() {
                                outcomes[done.index] = Some(Outcome::Accepted {
                                    event_id: done.event_id,
                                    eventbridge_id,
                                    attempts: done.attempts,
                                });
                            }
                        }
                        Err((true, code, message)) if head.attempts < self.retry.max_attempts => {
                            head.last_error = format!("{code}: {message}");
                            will_retry = true;
                        }
                        Err((retry, code, message)) => {
                            if let Some(failed) = queue.pop_front() {
                                outcomes[failed.index] = Some(if retry {
                                    Outcome::GaveUp {
                                        event_id: failed.event_id,
                                        attempts: failed.attempts,
                                        last_error: format!("{code}: {message}"),
                                    }
                                } else {
                                    Outcome::Rejected {
                                        event_id: failed.event_id,
                                        reason: Rejection::Refused { code, message },
                                    }
                                });
                                hold_back(queue, failed.event_id, &mut outcomes);
                            }
                        }
                    }
                }
            }
            failing_rounds = if will_retry { failing_rounds + 1 } else { 0 };
        }
        // Out of time: heads give up, the events behind them are held back.
        for queue in &mut queues {
            if let Some(head) = queue.pop_front() {
                let last_error = if head.last_error.is_empty() {
                    "the deadline passed before it could be sent".to_owned()
                } else {
                    head.last_error
                };
                outcomes[head.index] =
                    Some(Outcome::GaveUp { event_id: head.event_id, attempts: head.attempts, last_error });
                hold_back(queue, head.event_id, &mut outcomes);
            }
        }
        outcomes.into_iter().flatten().collect()
    }
}

fn hold_back(queue: &mut VecDeque<Pending>, behind: EventId, outcomes: &mut [Option<Outcome>]) {
    for held in queue.drain(..) {
        outcomes[held.index] = Some(Outcome::HeldBack { event_id: held.event_id, behind });
    }
}

mod sdk {
    //! `EventBus` for the AWS SDK client.

    use aws_sdk_eventbridge::config::http::HttpResponse;
    use aws_sdk_eventbridge::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
    use aws_sdk_eventbridge::operation::put_events::PutEventsError;
    use aws_sdk_eventbridge::types::PutEventsRequestEntry;

    use super::{BusError, EntryResult, EventBus};
    use crate::envelope::PutEventsEntry;
    use crate::retry::is_transient;

    impl EventBus for aws_sdk_eventbridge::Client {
        async fn put_events(&self, entries: &[PutEventsEntry]) -> Result<Vec<EntryResult>, BusError> {
            let request: Vec<PutEventsRequestEntry> = entries
                .iter()
                .map(|e| {
                    PutEventsRequestEntry::builder()
                        .source(&e.source)
                        .detail_type(&e.detail_type)
                        .detail(&e.detail)
                        .event_bus_name(&e.event_bus_name)
                        .set_resources((!e.resources.is_empty()).then(|| e.resources.clone()))
                        .build()
                })
                .collect();
            match self.put_events().set_entries(Some(request)).send().await {
                Ok(out) => Ok(out
                    .entries()
                    .iter()
                    .map(|r| match (r.event_id(), r.error_code()) {
                        (Some(id), None) => EntryResult::Accepted(id.to_owned()),
                        (_, code) => EntryResult::Failed {
                            code: code.unwrap_or("Unknown").to_owned(),
                            message: r.error_message().unwrap_or_default().to_owned(),
                        },
                    })
                    .collect()),
                Err(e) => Err(classify(&e)),
            }
        }
    }

    /// [`is_transient`](crate::retry::is_transient) errors and EventBridge's `LimitExceededException`
    /// are transient; every other service error is permanent.
    fn classify(e: &SdkError<PutEventsError, HttpResponse>) -> BusError {
        let text = DisplayErrorContext(e).to_string();
        let limit = matches!(e, SdkError::ServiceError(s) if s.err().code() == Some("LimitExceededException"));
        if is_transient(e) || limit { BusError::Transient(text) } else { BusError::Permanent(text) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    const EVENT: &str = include_str!("../fixtures/example-invoice-event.json");

    fn event(invoice: &str, n: u32) -> InvoiceEvent {
        let mut e = InvoiceEvent::from_json(EVENT.as_bytes()).expect("fixture");
        e.event_id = EventId::random();
        e.invoice_id = crate::fields::InvoiceId::new(invoice).expect("id");
        e.metadata.correlation_id = crate::fields::CorrelationId::new(format!("seq-{n}")).expect("id");
        e
    }

    fn target() -> CellTarget {
        CellTarget::new("test", "eu-west-1", "123456789012", 16).expect("valid")
    }

    /// A bus that answers from a script: a closure decides each entry's fate
    /// from the entry and how many times that event was seen.
    struct FakeBus<F> {
        calls: Mutex<Vec<Vec<String>>>,
        decide: F,
    }

    impl<F> FakeBus<F> {
        fn new(decide: F) -> FakeBus<F> {
            FakeBus { calls: Mutex::new(Vec::new()), decide }
        }
        fn sent(&self) -> Vec<Vec<String>> {
            self.calls.lock().expect("lock").clone()
        }
    }

    fn correlation(entry: &PutEventsEntry) -> String {
        let v: serde_json::Value = serde_json::from_str(&entry.detail).expect("json");
        format!("{}/{}", v["invoiceId"].as_str().unwrap_or("?"), v["metadata"]["correlationId"].as_str().unwrap_or("?"))
    }

    impl<F> EventBus for FakeBus<F>
    where
        F: Fn(&str, usize) -> Result<EntryResult, BusError> + Sync,
    {
        async fn put_events(&self, entries: &[PutEventsEntry]) -> Result<Vec<EntryResult>, BusError> {
            let names: Vec<String> = entries.iter().map(correlation).collect();
            let seen_before: Vec<usize> = {
                let calls = self.calls.lock().expect("lock");
                names.iter().map(|n| calls.iter().flatten().filter(|c| *c == n).count()).collect()
            };
            self.calls.lock().expect("lock").push(names.clone());
            let mut out = Vec::new();
            for (name, seen) in names.iter().zip(seen_before) {
                out.push((self.decide)(name, seen)?);
            }
            Ok(out)
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            deadline: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_hold_ten_entries_and_one_event_per_invoice() {
        let bus = FakeBus::new(|_: &str, _| Ok(EntryResult::Accepted("eb".into())));
        let events: Vec<InvoiceEvent> = (0..25).map(|i| event(&format!("INV-{}", i % 12), i)).collect();
        let publisher = Publisher::new(bus, target()).with_retry(fast());
        let outcomes = publisher.publish(events).await;
        assert!(outcomes.iter().all(Outcome::is_accepted));
        let calls = publisher.bus.sent();
        assert!(calls.iter().all(|c| c.len() <= crate::envelope::MAX_ENTRIES_PER_CALL));
        for call in &calls {
            let mut invoices: Vec<&str> = call.iter().map(|c| c.split('/').next().unwrap_or("")).collect();
            invoices.sort_unstable();
            let before = invoices.len();
            invoices.dedup();
            assert_eq!(before, invoices.len(), "one event per invoice per call: {call:?}");
        }
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 25);
    }

    #[tokio::test(start_paused = true)]
    async fn only_failed_entries_are_retried_and_order_per_invoice_holds() {
        // The first attempt of INV-1/seq-0 is throttled.
        let bus = FakeBus::new(|name: &str, seen| {
            if name == "INV-1/seq-0" && seen == 0 {
                Ok(EntryResult::Failed { code: "ThrottlingException".into(), message: "slow down".into() })
            } else {
                Ok(EntryResult::Accepted(format!("eb-{name}")))
            }
        });
        let events = vec![event("INV-1", 0), event("INV-2", 0), event("INV-1", 1)];
        let publisher = Publisher::new(bus, target()).with_retry(fast());
        let outcomes = publisher.publish(events).await;
        assert!(outcomes.iter().all(Outcome::is_accepted), "{outcomes:?}");
        assert!(matches!(outcomes[0], Outcome::Accepted { attempts: 2, .. }));
        let calls = publisher.bus.sent();
        assert_eq!(calls[0], vec!["INV-1/seq-0", "INV-2/seq-0"]);
        // Only the failed entry is resent, and INV-1's next event waits for it.
        assert_eq!(calls[1], vec!["INV-1/seq-0"]);
        assert_eq!(calls[2], vec!["INV-1/seq-1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_input_has_an_outcome_even_when_everything_fails() {
        let bus = FakeBus::new(|name: &str, _| {
            if name.starts_with("INV-1/") {
                Err(BusError::Transient("503".into()))
            } else {
                Ok(EntryResult::Accepted("eb".into()))
            }
        });
        let events = vec![event("INV-1", 0), event("INV-1", 1), event("INV-2", 0)];
        let ids: Vec<EventId> = events.iter().map(|e| e.event_id).collect();
        let publisher = Publisher::new(bus, target()).with_retry(fast());
        let outcomes = publisher.publish(events).await;
        assert_eq!(outcomes.iter().map(Outcome::event_id).collect::<Vec<_>>(), ids);
        assert!(matches!(outcomes[0], Outcome::GaveUp { attempts: 4, .. }), "{:?}", outcomes[0]);
        assert_eq!(outcomes[1], Outcome::HeldBack { event_id: ids[1], behind: ids[0] });
        // INV-2 shared INV-1's failing calls: a whole-call failure fails every entry in it.
        assert!(matches!(outcomes[2], Outcome::GaveUp { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_refusals_and_invalid_events_are_rejected_without_retry() {
        let bus = FakeBus::new(|name: &str, _| {
            if name == "INV-1/seq-0" {
                Ok(EntryResult::Failed { code: "MalformedDetail".into(), message: "bad".into() })
            } else {
                Ok(EntryResult::Accepted("eb".into()))
            }
        });
        let mut invalid = event("INV-3", 0);
        invalid.currency = crate::money::Currency::new("JPY").expect("valid");
        let events = vec![event("INV-1", 0), event("INV-1", 1), invalid, event("INV-2", 0)];
        let publisher = Publisher::new(bus, target()).with_retry(fast());
        let outcomes = publisher.publish(events).await;
        assert!(
            matches!(&outcomes[0], Outcome::Rejected { reason: Rejection::Refused { code, .. }, .. } if code == "MalformedDetail")
        );
        assert!(matches!(outcomes[1], Outcome::HeldBack { .. }));
        assert!(
            matches!(&outcomes[2], Outcome::Rejected { reason: Rejection::Invalid(v), .. } if v.contains("amount", crate::Code::TooManyDecimals))
        );
        assert!(outcomes[3].is_accepted());
        assert_eq!(publisher.bus.sent().iter().flatten().filter(|n| n.starts_with("INV-1/seq-0")).count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_without_failures_do_not_wait() {
        // Three events per invoice take three rounds; none fails, so no round
        // backs off (the paused clock would advance on any sleep).
        let bus = FakeBus::new(|_: &str, _| Ok(EntryResult::Accepted("eb".into())));
        let events: Vec<InvoiceEvent> =
            (0..3).flat_map(|n| (0..4).map(move |i| event(&format!("INV-{i}"), n))).collect();
        let publisher = Publisher::new(bus, target()).with_retry(fast());
        let started = Instant::now();
        assert!(publisher.publish(events).await.iter().all(Outcome::is_accepted));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(publisher.bus.sent().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_the_whole_publish() {
        let bus = FakeBus::new(|_: &str, _| Err(BusError::Transient("throttled".into())));
        let retry = RetryPolicy { max_attempts: 1000, deadline: Duration::from_secs(2), ..fast() };
        let publisher = Publisher::new(bus, target()).with_retry(retry);
        let started = Instant::now();
        let outcomes = publisher.publish(vec![event("INV-1", 0)]).await;
        assert!(started.elapsed() <= Duration::from_secs(2) + Duration::from_millis(1));
        assert!(matches!(&outcomes[0], Outcome::GaveUp { last_error, .. } if last_error.contains("throttled")));
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_placed_in_the_target_cell() {
        let bus = FakeBus::new(|_: &str, _| Ok(EntryResult::Accepted("eb".into())));
        let publisher = Publisher::new(bus, target()).with_retry(fast());
        let mut e = event("INV-2026-000001", 0);
        e.metadata.partition = Partition::new(99).expect("valid");
        publisher.place(&mut e);
        assert_eq!(e.metadata.partition.get(), 14, "golden partition of 16");
        assert_eq!(e.metadata.cell_id.as_str(), "test");
    }
}
