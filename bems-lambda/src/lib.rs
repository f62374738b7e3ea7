//! # bems-lambda
//!
//! The Lambda side of BEMS.
//!
//! ## Layout
//!
//! - [`batch`]: SQS batch processing with partial failures, FIFO-correct:
//!   `process_sqs_batch`, the `RecordHandler` trait, the error taxonomy
//!   (transient, business, poison), the dead-letter sink, deferred
//!   batch-wide effects (`RecordHandler::flush`) and bounded concurrency by
//!   lane (`BatchProcessor::process_concurrently`). Public API for users'
//!   own processors.
//! - [`sqs`]: the SQS dead-letter sink, and the local event-source runner
//!   that plays Lambda's SQS event source mapping against the emulators.
//! - [`processor`]: a stage processor, the `RecordHandler` each stage's
//!   Lambda runs: decode, apply the rules, publish the batch's next events
//!   in one call.
//! - [`forward`]: the route forwarder, from each stage's route queue (the
//!   rules' SQS FIFO target) to its SNS FIFO topic, group kept.
//! - [`idempotency`]: the optional durable store that makes a late second
//!   handling of an event republish the first one's next event (DynamoDB).
//! - [`timestream`]: the Timestream writer: one multi-measure record per
//!   status change, batched, rejections handled record by record, behind a
//!   sink trait.
//! - [`stages`]: the four stages' business rules as pure functions (event
//!   in, decision out), with deterministic next-event ids.
//!
//! ```
//! use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
//! use bems_core::Validator;
//! use bems_lambda::batch::{RecordError, RecordHandler, decode, process_sqs_batch};
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
//! - [`function`]: the Lambda entry points; the six binaries in `src/bin/`
//!   (`invoice-{ingestion,reconciliation,authorization,posting}-processor`,
//!   `timestream-writer`, `route-forwarder`) are one line each.

pub mod batch;
pub mod forward;
pub mod function;
pub mod idempotency;
pub mod processor;
pub mod sqs;
pub mod stages;
pub mod timestream;

pub use batch::{BatchProcessor, DeadLetterSink, RecordError, RecordHandler, process_sqs_batch};
