//! The PostgreSQL sink of the status writer ([`crate::writer`]): each
//! status change is a [`bems_store::StatusRow`], a whole batch one
//! transaction of [`bems_store::postgres::write::Writer`], which keeps
//! Timestream's idempotency contract (a redelivery changes nothing, a
//! higher version replaces and is kept as a version, a lower one is done,
//! the same version with other content is a conflict for the dead-letter
//! queue) and refuses a bad row alone.
//!
//! A store that is down or refuses every row (no tables, no privilege) is
//! a transient failure: the records go back to the queue, and on their
//! last receive to the dead-letter queue as "store unavailable"
//! ([`crate::writer::StatusWriter::with_max_receive_count`]).

use bems_core::InvoiceEvent;
use bems_store::StatusRow;
use bems_store::postgres::write::{RowOutcome, Writer};
use chrono::{DateTime, Utc};

use crate::writer::{SinkError, StatusSink, StoreRecord, Written};

impl StoreRecord for StatusRow {
    const STORE: &'static str = "postgres";
    /// A whole SQS batch (at most 10 for a FIFO queue) in one transaction;
    /// the local runner's and a bulk loader's larger batches in calls of
    /// this many rows.
    const MAX_PER_CALL: usize = 1_000;

    fn encode(event: &InvoiceEvent, received: DateTime<Utc>) -> StatusRow {
        StatusRow::new(event, received)
    }
}

/// The status writer's PostgreSQL sink: one connection per function
/// instance, opened at start or on first use, and again after it breaks.
#[derive(Debug)]
pub struct PostgresSink {
    writer: Writer,
}

impl PostgresSink {
    /// The sink writing through `writer`.
    pub fn new(writer: Writer) -> PostgresSink {
        PostgresSink { writer }
    }

    /// The writer.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }
}

/// What the writer's outcome means for the record.
pub fn written(outcome: &RowOutcome) -> Written {
    match outcome {
        RowOutcome::Stale { .. } => Written::Superseded,
        o if o.is_done() => Written::Ok,
        o => Written::Rejected(o.reason().unwrap_or_else(|| "refused".into())),
    }
}

impl StatusSink for PostgresSink {
    type Record = StatusRow;

    async fn write(&self, records: &[StatusRow]) -> Result<Vec<Written>, SinkError> {
        match self.writer.write(records).await {
            Ok(outcomes) => Ok(outcomes.iter().map(written).collect()),
            // Down, overloaded, or refusing every row until an operator
            // acts: the records wait in their queue either way.
            Err(e) => Err(SinkError::Transient(e.to_string())),
        }
    }
}
