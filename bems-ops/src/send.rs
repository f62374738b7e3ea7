//! `bems send`: one invoice event from a file or standard input, validated
//! field by field, then put on the cell's bus with the producer SDK.
//!
//! Validation runs before anything is sent, with the producers' rules
//! ([`bems_core::Validator`]): an invalid event is never published, and
//! every problem is reported with its field, code and reason. The event is
//! placed in the cell (partition, cell, Region, account) the way every
//! producer's is, so a file may leave those to the tool.

use bems_core::publish::{CellTarget, EventBus, Outcome, Publisher, Rejection};
use bems_core::violation::Violation;
use bems_core::{InvoiceEvent, Validator};
use serde::Serialize;

/// Why an event was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The event is invalid; nothing was sent.
    #[error("the event is invalid ({} problems); nothing was sent", .0.len())]
    Invalid(Vec<Violation>),
    /// The bus refused it.
    #[error("the bus refused the event: {code}: {message}")]
    Refused {
        /// The bus's error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// It could not be sent in time (throttling, the network).
    #[error("the event was not accepted after {attempts} attempts: {last_error}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last_error: String,
    },
}

/// An event on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    /// The event's id.
    pub event_id: String,
    /// Its invoice.
    pub invoice_id: String,
    /// The partition it was placed in.
    pub partition: u8,
    /// EventBridge's id for it.
    pub eventbridge_id: String,
    /// Attempts it took.
    pub attempts: u32,
}

/// Parses `text` as an invoice event with the producers' validation: every
/// problem, or the event.
pub fn parse(text: &str) -> Result<InvoiceEvent, SendError> {
    Validator::default().parse(text.as_bytes()).map_err(|v| SendError::Invalid(v.into_iter().collect()))
}

/// Validates `text`, places the event in `target` and publishes it.
pub async fn send<B: EventBus + Sync>(bus: B, target: CellTarget, text: &str) -> Result<Sent, SendError> {
    let event = parse(text)?;
    let publisher = Publisher::new(bus, target);
    let mut placed = event.clone();
    publisher.place(&mut placed);
    let outcome = publisher.publish(vec![event]).await.into_iter().next();
    match outcome {
        Some(Outcome::Accepted { event_id, eventbridge_id, attempts }) => Ok(Sent {
            event_id: event_id.to_string(),
            invoice_id: placed.invoice_id.to_string(),
            partition: placed.metadata.partition.get(),
            eventbridge_id,
            attempts,
        }),
        Some(Outcome::Rejected { reason: Rejection::Invalid(v), .. }) => {
            Err(SendError::Invalid(v.into_iter().collect()))
        }
        Some(Outcome::Rejected { reason: Rejection::Refused { code, message }, .. }) => {
            Err(SendError::Refused { code, message })
        }
        Some(Outcome::GaveUp { attempts, last_error, .. }) => Err(SendError::GaveUp { attempts, last_error }),
        Some(Outcome::HeldBack { .. }) | None => {
            Err(SendError::GaveUp { attempts: 0, last_error: "the publisher returned no outcome".into() })
        }
    }
}
