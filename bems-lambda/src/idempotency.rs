//! Durable idempotency for the stage processors: the first next event a
//! stage made for an event id is the one it publishes, forever.
//!
//! A stage's next event has a deterministic id ([`crate::stages::next_event_id`])
//! but not a deterministic time: it happened when the stage acted. Within
//! the FIFO deduplication window (five minutes) a second handling of the same
//! event is dropped by SQS and SNS on its event id. Beyond it (an archive
//! replay, a producer retrying late, a message redriven from a DLQ after its
//! successor went out) a second handling would publish the same id with a
//! later time, and the Timestream writer would store a second record for the
//! same status change. [`IdempotencyStore::claim`] closes that gap: the first
//! claim for an event id stores the next event; every later claim, from any
//! instance, gets that stored event back and publishes it byte for byte, so
//! downstream stages and the writer see the same event again and change
//! nothing.
//!
//! The store is optional because it costs a write per handled event
//! ([`DynamoDbStore`]: one conditional `PutItem` of a bit over 1 KB, two
//! on-demand write units at $0.625 per million; at 69 million handled
//! events a day, roughly $86 a day). Without it ([`NoStore`]) duplicates are still dropped within the
//! FIFO window, which covers redeliveries, restarts and retries.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use bems_core::InvoiceEvent;
use bems_core::fields::EventId;

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer (throttling, a 5xx, the network): retry.
    #[error("idempotency store unavailable: {0}")]
    Unavailable(String),
    /// What the store holds for the key is not an event this code can read.
    #[error("idempotency record for event {key} is unreadable: {reason}")]
    Corrupt {
        /// The event id.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Remembers which next event each handled event produced.
pub trait IdempotencyStore {
    /// Stores `next` as what handling `key` produced, unless something is
    /// stored for `key` already; returns what is stored (`next`, or the
    /// earlier event, which the caller publishes instead).
    fn claim(
        &self,
        key: &EventId,
        next: &InvoiceEvent,
    ) -> impl Future<Output = Result<InvoiceEvent, StoreError>> + Send;
}

/// No durable store: every claim returns `next` as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStore;

impl IdempotencyStore for NoStore {
    async fn claim(&self, _: &EventId, next: &InvoiceEvent) -> Result<InvoiceEvent, StoreError> {
        Ok(next.clone())
    }
}

impl<S: IdempotencyStore + Sync> IdempotencyStore for Option<S> {
    async fn claim(&self, key: &EventId, next: &InvoiceEvent) -> Result<InvoiceEvent, StoreError> {
        match self {
            Some(store) => store.claim(key, next).await,
            None => Ok(next.clone()),
        }
    }
}

/// Attribute names of a [`DynamoDbStore`] item. The table's partition key
/// is `eventId` (string), and its TTL attribute is `expiresAt`.
pub mod attributes {
    /// The handled event's id: the partition key.
    pub const KEY: &str = "eventId";
    /// The next event, as the JSON it is published as.
    pub const NEXT: &str = "next";
    /// Epoch seconds after which DynamoDB's TTL deletes the item.
    pub const EXPIRES_AT: &str = "expiresAt";
}

/// The store in a DynamoDB table: one conditional `PutItem` per claim
/// (`attribute_not_exists(eventId)`), returning the stored item when the
/// condition fails, so a claim is one round trip whether it wins or not.
#[derive(Debug, Clone)]
pub struct DynamoDbStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    ttl: Duration,
}

impl DynamoDbStore {
    /// A store in `table` whose items expire after `ttl` (keep it longer
    /// than the archive's replay horizon and the DLQs' retention).
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>, ttl: Duration) -> DynamoDbStore {
        DynamoDbStore { client, table: table.into(), ttl }
    }

    fn decode(
        key: &EventId,
        item: &std::collections::HashMap<String, AttributeValue>,
    ) -> Result<InvoiceEvent, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { key: key.to_string(), reason };
        let text = item
            .get(attributes::NEXT)
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| corrupt(format!("no string attribute `{}`", attributes::NEXT)))?;
        serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))
    }
}

impl IdempotencyStore for DynamoDbStore {
    async fn claim(&self, key: &EventId, next: &InvoiceEvent) -> Result<InvoiceEvent, StoreError> {
        let expires = SystemTime::now().checked_add(self.ttl).unwrap_or(SystemTime::now());
        let expires = expires.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(attributes::KEY, AttributeValue::S(key.to_string()))
            .item(attributes::NEXT, AttributeValue::S(next.to_json()))
            .item(attributes::EXPIRES_AT, AttributeValue::N(expires.to_string()))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", attributes::KEY)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let error = match put {
            Ok(_) => return Ok(next.clone()),
            Err(e) => e.into_service_error(),
        };
        let PutItemError::ConditionalCheckFailedException(failed) = error else {
            return Err(StoreError::Unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(error).to_string()));
        };
        if let Some(item) = failed.item() {
            return DynamoDbStore::decode(key, item);
        }
        // Without the old item in the error (an older emulator), read it.
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attributes::KEY, AttributeValue::S(key.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()))?;
        // Refused but gone: TTL deleted it in between. Claiming again wins.
        let item = got.item().ok_or_else(|| {
            StoreError::Unavailable(format!("event {key}: the stored claim expired during the claim"))
        })?;
        DynamoDbStore::decode(key, item)
    }
}
