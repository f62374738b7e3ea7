//! The status writer core: from the status-change queue to a store.
//!
//! One core, one small trait per store, as vector's sinks are built: the
//! [`StatusWriter`] decodes each record (poison goes to the dead-letter
//! sink), has the store encode and write them in calls of the store's
//! size, sends records the store refuses for good to the dead-letter sink
//! with the reason, and reports the ones to retry. A store is a
//! [`StatusSink`] (one write call) of a [`StoreRecord`] (the record, how
//! one is made from an event, how many go in a call). A sink that wraps
//! another (to count, to inject faults) states only its `write`.
//! [`crate::timestream::TimestreamTable`] is the one in this crate; each
//! store gets its own writer binary over this core, so a function links
//! only its store's SDK.
//!
//! Records are independent (the store orders them by version, EventBridge's
//! receipt time), so unlike a stage processor the writer does not hold back
//! a FIFO group behind a failure.

use std::future::Future;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use bems_batch::DeadLetterSink;
use bems_batch::function::{BatchFunction, Invocation};
use bems_core::{Delivery, InvoiceEvent};
use chrono::{DateTime, Utc};

/// What the store said about one record of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Written {
    /// Stored (or an identical record already was).
    Ok,
    /// Not stored because a newer version of it is: a stale copy, done.
    Superseded,
    /// Refused for good, with the store's reason: dead-letter it.
    Rejected(String),
}

/// Why a whole write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Throttling, 5xx, timeouts: try again.
    #[error("transient: {0}")]
    Transient(String),
    /// Anything else.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A store's record of one status change.
pub trait StoreRecord: Sized + Send + Sync {
    /// The store's name, in dead-letter reasons.
    const STORE: &'static str;

    /// At most this many records per [`StatusSink::write`].
    const MAX_PER_CALL: usize;

    /// The record of one delivered status change; `received` is
    /// EventBridge's receipt time ([`received_at`]), its version. The same
    /// event must always make the same record: a redelivery is a no-op.
    fn encode(event: &InvoiceEvent, received: DateTime<Utc>) -> Self;
}

/// A store of status changes.
pub trait StatusSink {
    /// The store's record.
    type Record: StoreRecord;

    /// Writes at most [`StoreRecord::MAX_PER_CALL`] records; one result per
    /// record, in order.
    fn write(&self, records: &[Self::Record]) -> impl Future<Output = Result<Vec<Written>, SinkError>> + Send;
}

/// The outcome for one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored, or already superseded by a newer version.
    Done,
    /// Could not be stored, and retrying will not help: dead-letter it.
    Failed(String),
    /// The store was unavailable: retry by redelivery.
    Retry(String),
}

/// Writes `records` in calls of at most the sink's size; one outcome per
/// record. One bad record never fails the others.
pub async fn write_all<S: StatusSink>(sink: &S, records: &[S::Record]) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(records.len());
    for chunk in records.chunks(S::Record::MAX_PER_CALL.max(1)) {
        match sink.write(chunk).await {
            Ok(results) => {
                for i in 0..chunk.len() {
                    out.push(match results.get(i) {
                        Some(Written::Ok | Written::Superseded) => Outcome::Done,
                        Some(Written::Rejected(reason)) => Outcome::Failed(reason.clone()),
                        None => Outcome::Retry("the store returned fewer results than records".into()),
                    });
                }
            }
            Err(SinkError::Transient(e)) => out.extend(chunk.iter().map(|_| Outcome::Retry(e.clone()))),
            Err(SinkError::Permanent(e)) => out.extend(chunk.iter().map(|_| Outcome::Failed(e.clone()))),
        }
    }
    out
}

/// The version of a delivery: EventBridge's receipt time when it came
/// through EventBridge, else the event's own time.
pub fn received_at(delivery: &Delivery) -> DateTime<Utc> {
    delivery
        .eventbridge_time
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(delivery.event.occurred_at, |t| t.with_timezone(&Utc))
}

/// The status writer as a batch function over a sink `S` and a
/// dead-letter sink `D`.
///
/// A record the store cannot take now ([`Outcome::Retry`]) goes back to
/// its queue for redelivery, until its last receive
/// ([`with_max_receive_count`](StatusWriter::with_max_receive_count)):
/// then it goes to the dead-letter sink with the reason "store
/// unavailable", where `bems redrive` brings it back once the store is.
/// So an outage shorter than (maxReceiveCount − 1) × the queue's
/// visibility timeout dead-letters nothing, and a longer one loses nothing.
#[derive(Debug, Clone)]
pub struct StatusWriter<S, D> {
    /// Where records go.
    pub sink: S,
    /// Where records that can never be written go.
    pub dead_letter: D,
    /// How bodies are validated (clock unchecked: records are history).
    pub validator: bems_core::Validator,
    /// The source queue's `maxReceiveCount`, when known.
    pub max_receive_count: Option<u32>,
}

/// The start of a dead-letter reason for a record the store could not
/// take before its last receive.
pub const STORE_UNAVAILABLE: &str = "store unavailable";

impl<S, D> StatusWriter<S, D> {
    /// A writer decoding with [`bems_batch::consumer_validator`].
    pub fn new(sink: S, dead_letter: D) -> StatusWriter<S, D> {
        StatusWriter { sink, dead_letter, validator: bems_batch::consumer_validator(), max_receive_count: None }
    }

    /// Dead-letters a record the store could not take on its
    /// `max_receive_count`-th receive (the queue's `maxReceiveCount`),
    /// with the reason, instead of letting SQS move it without one.
    #[must_use]
    pub fn with_max_receive_count(mut self, max_receive_count: u32) -> StatusWriter<S, D> {
        self.max_receive_count = Some(max_receive_count);
        self
    }

    /// The writer of a cell of `partitions`: an event whose partition is
    /// not its invoice's goes to the dead-letter sink with the reason, as
    /// the stage processors send it to theirs, instead of being stored.
    #[must_use]
    pub fn in_cell(mut self, partitions: bems_core::partition::PartitionCount) -> StatusWriter<S, D> {
        self.validator = bems_batch::cell_consumer_validator(partitions);
        self
    }
}

impl<S: StatusSink + Sync + Send, D: DeadLetterSink + Sync + Send> BatchFunction for StatusWriter<S, D> {
    async fn call(&mut self, event: SqsEvent, _: &Invocation) -> SqsBatchResponse {
        let mut failed: Vec<String> = Vec::new();
        let mut decoded = Vec::new();
        let mut records = Vec::new();
        for r in &event.records {
            match bems_batch::decode(r, &self.validator) {
                Ok(d) => {
                    records.push(S::Record::encode(&d.event, received_at(&d)));
                    decoded.push((r, d.event.occurred_at.timestamp_millis()));
                }
                Err(e) => {
                    if self.dead_letter.send(r, &e.to_string()).await.is_err() {
                        failed.push(r.message_id.clone().unwrap_or_default());
                    }
                }
            }
        }
        let outcomes = write_all(&self.sink, &records).await;
        // Visibility latency: from the status change to its record being
        // stored. This is the SLA ("every event visible within 2 minutes").
        let now_ms = Utc::now().timestamp_millis();
        for ((r, occurred_ms), outcome) in decoded.iter().zip(outcomes) {
            let keep = match outcome {
                Outcome::Done => {
                    #[allow(clippy::cast_precision_loss)]
                    metrics::histogram!("VisibilityLatency").record((now_ms - occurred_ms).max(0) as f64);
                    metrics::counter!("RecordsWritten").increment(1);
                    false
                }
                Outcome::Failed(reason) => {
                    self.dead_letter.send(r, &format!("{}: {reason}", S::Record::STORE)).await.is_err()
                }
                Outcome::Retry(reason) => {
                    let count = bems_batch::receive_count(r);
                    if self.max_receive_count.is_some_and(|max| count >= max) {
                        metrics::counter!("StoreUnavailableDeadLettered").increment(1);
                        let reason = format!("{}: {STORE_UNAVAILABLE} at receive {count}: {reason}", S::Record::STORE);
                        self.dead_letter.send(r, &reason).await.is_err()
                    } else {
                        true
                    }
                }
            };
            if keep {
                failed.push(r.message_id.clone().unwrap_or_default());
            }
        }
        let mut response = SqsBatchResponse::default();
        for id in failed {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            response.batch_item_failures.push(f);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records are numbers: 1 is superseded, 2 rejected; whole calls fail
    /// on demand.
    struct Fake {
        calls: Mutex<Vec<usize>>,
        transient: bool,
    }

    /// A record of the fake store.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Numbered(u32);

    impl StoreRecord for Numbered {
        const STORE: &'static str = "fake";
        const MAX_PER_CALL: usize = 100;

        fn encode(_: &InvoiceEvent, _: DateTime<Utc>) -> Numbered {
            Numbered(0)
        }
    }

    impl StatusSink for Fake {
        type Record = Numbered;

        async fn write(&self, records: &[Numbered]) -> Result<Vec<Written>, SinkError> {
            self.calls.lock().expect("lock").push(records.len());
            if self.transient {
                return Err(SinkError::Transient("ThrottlingException".into()));
            }
            Ok(records
                .iter()
                .map(|r| match r.0 {
                    1 => Written::Superseded,
                    2 => Written::Rejected("different measure values already exist for this version".into()),
                    _ => Written::Ok,
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn calls_of_the_sink_s_size_and_rejections_handled_record_by_record() {
        let mut records = vec![Numbered(0); 250];
        records[3] = Numbered(1);
        records[7] = Numbered(2);
        let sink = Fake { calls: Mutex::new(Vec::new()), transient: false };
        let out = write_all(&sink, &records).await;
        assert_eq!(*sink.calls.lock().expect("lock"), vec![100, 100, 50]);
        assert_eq!(out.len(), 250);
        assert_eq!(out[3], Outcome::Done, "a superseded copy is done");
        assert!(matches!(&out[7], Outcome::Failed(r) if r.contains("different")));
        assert_eq!(out.iter().filter(|o| **o == Outcome::Done).count(), 249);

        let down = Fake { calls: Mutex::new(Vec::new()), transient: true };
        assert!(write_all(&down, &records[..5]).await.iter().all(|o| matches!(o, Outcome::Retry(_))));
    }
}
