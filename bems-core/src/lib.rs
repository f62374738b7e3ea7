//! # bems-core
//!
//! The invoice event of BEMS (Business Event Monitoring System) and
//! everything about it that needs no AWS SDK: the model, its validation, its
//! lifecycle, partition keys and the AWS envelopes it travels in.
//!
//! ```
//! use bems_core::{InvoiceEvent, Validator, decode_body};
//!
//! let body = include_str!("../fixtures/example-eventbridge-event-invoice.json");
//! let delivery = decode_body(body, &Validator::default()).expect("valid");
//! assert_eq!(delivery.event.invoice_id.as_str(), "INV-2026-000123");
//! ```
//!
//! ## Layout
//!
//! - [`event`]: [`InvoiceEvent`], schema version 1, and its parts.
//! - [`fields`]: the text atoms (ids, names, AWS coordinates), each a type
//!   that can only hold a valid value.
//! - [`money`]: exact [`Amount`]s and ISO 4217 [`Currency`] codes.
//! - [`lifecycle`]: [`Stage`], [`Status`] and the transition table.
//! - [`validate`]: the [`Validator`] that parses the wire form and reports
//!   every problem at once.
//! - [`violation`]: what it reports: a [`Violation`] has a path, a stable
//!   [`Code`] and a message.
//! - [`partition`]: partitions, FIFO message groups and deduplication ids.
//! - [`envelope`]: EventBridge and SNS envelopes, and [`decode_body`] for
//!   whatever shape an SQS body has.
//! - [`routing`]: EventBridge event patterns, SNS filter policies, an
//!   indexed [`routing::RuleSet`], and the [`routing::CellSpec`] that derives a
//!   cell's rules and subscriptions.
//! - [`retry`]: the one retry engine (backoff with full jitter, attempts
//!   and a deadline) that the producer SDK, the forwarder and the batch
//!   core share.
//! - [`contract`]: every name a cell's parts find each other by (resources,
//!   message attributes, metrics, the store's columns), defined once.
//!
//! ## Errors
//!
//! Validation returns [`Violations`], never panics, and never stops at the
//! first problem. Each module with fallible operations has its own error
//! type ([`TransitionError`], [`DecodeError`], [`FieldError`],
//! [`routing::PatternError`], [`routing::CellSpecError`]).
//!
//! ## Features
//!
//! - `schema`: derives `schemars::JsonSchema` for the event types; used by
//!   `bems-schema` to generate the committed JSON Schemas.
//! - `aws-errors`: [`retry::is_transient`], which AWS SDK errors are worth
//!   another attempt, over the SDK's shared error types (no service SDK).
//! - `aws`: the producer SDK, [`publish`] (`Publisher` over
//!   `aws-sdk-eventbridge`); implies `aws-errors`. Off by default so that
//!   schema and routing users compile no AWS SDK.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod contract;
pub mod envelope;
pub mod event;
pub mod fields;
pub mod lifecycle;
pub mod money;
pub mod partition;
#[cfg(feature = "aws")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws")))]
pub mod publish;
pub mod retry;
pub mod routing;
#[cfg(feature = "schema")]
mod schema_support;
pub mod validate;
pub mod violation;

pub use envelope::{DecodeError, Delivery, EventBridgeEvent, PutEventsEntry, Shape, SnsNotification, decode_body};
pub use event::{InvoiceEvent, Metadata, NetDays, PaymentTerms, SCHEMA_VERSION, Vendor};
pub use lifecycle::{Stage, Status, TransitionError};
pub use money::{Amount, Currency};
pub use partition::{Partition, PartitionCount};
pub use validate::{MAX_EVENT_BYTES, UnknownFields, ValidationOptions, Validator};
pub use violation::{Code, FieldError, Violation, Violations};

/// The README's Rust code, compiled by `cargo test --doc` so that the
/// first example a newcomer copies keeps building (it needs `aws`).
#[cfg(all(doctest, feature = "aws"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
