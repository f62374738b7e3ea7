//! # bems-lambda
//!
//! The functions of a BEMS cell, on top of [`bems_batch`] (SQS batch
//! processing) and [`bems_core`] (the event, the cell's contract, the
//! producer):
//!
//! - [`processor`] and [`stages`]: a stage processor, the record handler
//!   each stage's function runs: decode, apply the stage's rules (pure
//!   functions, deterministic next-event ids), publish the batch's next
//!   events in one call; [`idempotency`]: its optional durable store
//!   (DynamoDB). Feature `processors`.
//! - [`forward`]: the route forwarder, from each stage's route queue (the
//!   rules' SQS FIFO target) to its SNS FIFO topic, group kept. Feature
//!   `forwarder`.
//! - [`writer`]: the status writer core, over a [`writer::StatusSink`] per
//!   store; [`postgres`]: the PostgreSQL sink (feature `postgres`, over
//!   `bems-store`); [`timestream`]: the Timestream for LiveAnalytics sink
//!   (feature `timestream`).
//! - [`sqs`]: the SQS dead-letter sink, and the local event-source runner
//!   that plays Lambda's SQS event source mapping against the emulators.
//! - [`config`]: each function's typed configuration, read once.
//! - [`function`] and [`telemetry`] (feature `lambda`): the entry points,
//!   built once per instance; the extension point through which your own
//!   purchase-order system, approvals and rules replace ours
//!   ([`function::StageFunction`]); our logs and metrics, opt-in.
//!
//! ## Features and binaries
//!
//! Every feature is on by default. Each binary needs only its own, so a
//! function built alone links only the SDKs it calls:
//!
//! | binary | features | AWS SDKs |
//! |---|---|---|
//! | `invoice-{ingestion,reconciliation,authorization,posting}-processor` | `processors`, `lambda` | EventBridge, SQS, DynamoDB |
//! | `route-forwarder` | `forwarder`, `lambda` | SNS, SQS |
//! | `postgres-writer` | `postgres`, `lambda` | SQS (the dead-letter queue) |
//! | `timestream-writer` | `timestream`, `lambda` | Timestream Write, SQS |
//!
//! For example `cargo build --release --no-default-features --features
//! forwarder,lambda --bin route-forwarder`.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
#[cfg(feature = "forwarder")]
#[cfg_attr(docsrs, doc(cfg(feature = "forwarder")))]
pub mod forward;
#[cfg(feature = "lambda")]
#[cfg_attr(docsrs, doc(cfg(feature = "lambda")))]
pub mod function;
#[cfg(feature = "processors")]
#[cfg_attr(docsrs, doc(cfg(feature = "processors")))]
pub mod idempotency;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "processors")]
#[cfg_attr(docsrs, doc(cfg(feature = "processors")))]
pub mod processor;
pub mod sqs;
pub mod stages;
#[cfg(feature = "lambda")]
#[cfg_attr(docsrs, doc(cfg(feature = "lambda")))]
pub mod telemetry;
#[cfg(feature = "timestream")]
#[cfg_attr(docsrs, doc(cfg(feature = "timestream")))]
pub mod timestream;
pub mod writer;
