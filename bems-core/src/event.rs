//! The invoice status event, schema version 1.
//!
//! ```json
//! {
//!   "eventId": "0b9c6f5e-3c1f-4d8e-9a51-2f7f2c1d4e11",
//!   "invoiceId": "INV-2026-000123",
//!   "stage": "reconciliation",
//!   "status": "ingested",
//!   "previousStatus": "submitted",
//!   "amount": 1250.50,
//!   "currency": "EUR",
//!   "occurredAt": "2026-11-26T13:45:00.123Z",
//!   "issueDate": "2026-11-25",
//!   "vendor": { "id": "V-1001", "name": "Acme GmbH", "country": "DE", "taxId": "DE123456789" },
//!   "paymentTerms": { "netDays": 30, "dueDate": "2026-12-25" },
//!   "metadata": {
//!     "schemaVersion": 1, "region": "eu-west-1", "accountId": "123456789012",
//!     "cellId": "prod-eu-1", "partition": 7, "correlationId": "req-4f1c",
//!     "producer": "erp-sap"
//!   }
//! }
//! ```
//!
//! Every field is a type that can only hold a valid value; what depends on
//! several fields (decimals against the currency, the status transition, the
//! due date, the clock) is checked by [`InvoiceEvent::check`] and by the
//! [`Validator`](crate::Validator) that parses the wire form.

use chrono::{DateTime, Days, NaiveDate, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

use crate::fields::{
    AccountId, CellId, CorrelationId, CountryCode, EventId, InvoiceId, Producer, Reason, Region, TaxId, VendorId,
    VendorName,
};
use crate::lifecycle::{Stage, Status};
use crate::money::{Amount, Currency};
use crate::partition::Partition;
use crate::validate::{self, ValidationOptions};
use crate::violation::{Code, FieldError, Violations};

/// The schema version this crate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// One invoice status event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields, transform = crate::schema_support::event_rules))]
#[serde(rename_all = "camelCase")]
pub struct InvoiceEvent {
    /// Unique id of this event: the idempotency key and the FIFO
    /// deduplication id.
    pub event_id: EventId,
    /// The invoice the event is about.
    pub invoice_id: InvoiceId,
    /// The stage this event is handed to (see the lifecycle module).
    pub stage: Stage,
    /// The invoice's status as of this event.
    pub status: Status,
    /// The status before this event; absent on an invoice's first event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<Status>,
    /// Why the invoice was rejected; required when `status` is `rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Gross invoice amount, exact, in `currency`.
    pub amount: Amount,
    /// ISO 4217 currency of `amount`.
    pub currency: Currency,
    /// When the status change happened, in UTC.
    #[serde(serialize_with = "serialize_timestamp")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema_support::timestamp"))]
    pub occurred_at: DateTime<Utc>,
    /// When the previous status happened (the `occurredAt` of the event
    /// that carried `previousStatus`). The stages set it, so that one event
    /// alone gives its stage's latency; only with `previousStatus`, and not
    /// after `occurredAt`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "serialize_optional_timestamp")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema_support::timestamp", default))]
    pub previous_occurred_at: Option<DateTime<Utc>>,
    /// When the invoice was submitted (the `occurredAt` of its `submitted`
    /// event). The stages carry it forward, so that one event alone gives the
    /// end-to-end latency; not after `previousOccurredAt` or `occurredAt`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "serialize_optional_timestamp")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema_support::timestamp", default))]
    pub submitted_at: Option<DateTime<Utc>>,
    /// The invoice's date, from which payment terms run.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema_support::date"))]
    pub issue_date: NaiveDate,
    /// Who issued the invoice.
    pub vendor: Vendor,
    /// When it is due.
    pub payment_terms: PaymentTerms,
    /// Where and by whom the event was produced.
    pub metadata: Metadata,
}

/// The vendor that issued the invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct Vendor {
    /// The vendor's id in the producer's system.
    pub id: VendorId,
    /// Legal name.
    pub name: VendorName,
    /// ISO 3166-1 alpha-2 country.
    pub country: CountryCode,
    /// VAT number or other tax id, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<TaxId>,
}

/// Payment terms: net days and the due date they give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct PaymentTerms {
    /// Days from the issue date to the due date, 0–365.
    pub net_days: NetDays,
    /// `issueDate + netDays`. Optional on the wire (derived when absent);
    /// when present, it must match.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema_support::date", default))]
    pub due_date: NaiveDate,
}

impl PaymentTerms {
    /// Terms of `net_days` from `issue_date`.
    pub fn net(issue_date: NaiveDate, net_days: NetDays) -> PaymentTerms {
        PaymentTerms { net_days, due_date: net_days.due_date(issue_date) }
    }
}

/// Net payment days, 0–365 (the seed pipeline spans 30-day to year-long terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NetDays(u16);

impl NetDays {
    /// The longest terms accepted.
    pub const MAX: u16 = 365;

    /// Checks the range.
    pub fn new(days: i64) -> Result<NetDays, FieldError> {
        u16::try_from(days).ok().filter(|d| *d <= NetDays::MAX).map(NetDays).ok_or_else(|| {
            FieldError::new(Code::OutOfRange, format!("must be between 0 and {}, got {days}", NetDays::MAX))
        })
    }

    /// The number of days.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The due date for an invoice issued on `issue_date`. Saturates at the
    /// end of chrono's calendar instead of panicking.
    pub fn due_date(self, issue_date: NaiveDate) -> NaiveDate {
        issue_date.checked_add_days(Days::new(u64::from(self.0))).unwrap_or(NaiveDate::MAX)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for NetDays {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NetDays".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "integer", "minimum": 0, "maximum": NetDays::MAX })
    }
}

/// Processing metadata: where the event belongs and who produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Schema version of the event: 1.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema_support::schema_version"))]
    pub schema_version: u32,
    /// AWS Region of the cell.
    pub region: Region,
    /// AWS account of the cell.
    pub account_id: AccountId,
    /// The cell the event belongs to.
    pub cell_id: CellId,
    /// The invoice's partition within the cell: xxh64(invoiceId) mod P + 1.
    pub partition: Partition,
    /// Ties together every event caused by one request.
    pub correlation_id: CorrelationId,
    /// The system that produced the event.
    pub producer: Producer,
}

impl InvoiceEvent {
    /// Parses and validates the wire form with the default options
    /// ([`Validator::default`](crate::Validator)): unknown fields refused,
    /// the clock checked.
    pub fn from_json(bytes: &[u8]) -> Result<InvoiceEvent, Violations> {
        validate::Validator::default().parse(bytes)
    }

    /// The checks that span several fields: decimals against the currency,
    /// the status transition against [`crate::lifecycle::TRANSITIONS`], the
    /// rejection reason, the due date, the clock and the partition.
    /// Useful on events built in code; parsed events have passed it already.
    pub fn check(&self, options: &ValidationOptions, now: DateTime<Utc>) -> Result<(), Violations> {
        let mut found = Vec::new();
        validate::cross_checks(
            &validate::Parts {
                invoice_id: Some(&self.invoice_id),
                stage: Some(self.stage),
                status: Some(self.status),
                previous_status: Some(self.previous_status),
                reason: Some(self.reason.as_ref()),
                amount: Some(self.amount),
                currency: Some(self.currency),
                occurred_at: Some(self.occurred_at),
                previous_occurred_at: Some(self.previous_occurred_at),
                submitted_at: Some(self.submitted_at),
                issue_date: Some(self.issue_date),
                net_days: Some(self.payment_terms.net_days),
                due_date: Some(Some(self.payment_terms.due_date)),
                partition: Some(self.metadata.partition),
            },
            options,
            now,
            &mut found,
        );
        if self.metadata.schema_version != SCHEMA_VERSION {
            found.push(
                FieldError::new(Code::UnsupportedVersion, format!("must be {SCHEMA_VERSION}"))
                    .at("metadata.schemaVersion"),
            );
        }
        Violations::new(found).map_or(Ok(()), Err)
    }

    /// The event as compact JSON, the form every BEMS message carries.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every field is a string, an
        // integer or a pre-validated raw number.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Decodes through the [`Validator`](crate::Validator) with default options
/// except the clock: deserializing stored or replayed events must not depend
/// on when it runs. Works with `serde_json` (the amount is read from its raw
/// text so that no digit passes through a float).
impl<'de> serde::Deserialize<'de> for InvoiceEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<InvoiceEvent, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        let options = ValidationOptions { max_future_skew: None, ..ValidationOptions::default() };
        validate::Validator::new(options).parse(raw.get().as_bytes()).map_err(serde::de::Error::custom)
    }
}

fn serialize_timestamp<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

// serde's `serialize_with` hands over the field as it is: `&Option<_>`.
#[allow(clippy::ref_option, reason = "the signature serde's serialize_with requires")]
fn serialize_optional_timestamp<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_timestamp(t, s),
        None => s.serialize_none(),
    }
}

impl InvoiceEvent {
    /// How long the invoice waited between its previous status and this
    /// one, when the event says when the previous status happened.
    pub fn stage_latency(&self) -> Option<chrono::Duration> {
        self.previous_occurred_at.map(|p| self.occurred_at - p)
    }

    /// How long since the invoice was submitted: zero for the `submitted`
    /// event itself, `None` when a later event does not carry `submittedAt`.
    pub fn end_to_end_latency(&self) -> Option<chrono::Duration> {
        match (self.submitted_at, self.status) {
            (Some(at), _) => Some(self.occurred_at - at),
            (None, Status::Submitted) => Some(chrono::Duration::zero()),
            (None, _) => None,
        }
    }

    /// [`stage_latency`](InvoiceEvent::stage_latency) in whole
    /// milliseconds: the difference of the two times' milliseconds since
    /// the epoch, so that it equals the difference of the stored times
    /// (which the stores keep to the millisecond or finer). Every store
    /// writes this figure.
    pub fn stage_latency_ms(&self) -> Option<i64> {
        self.previous_occurred_at.map(|p| self.occurred_at.timestamp_millis() - p.timestamp_millis())
    }

    /// [`end_to_end_latency`](InvoiceEvent::end_to_end_latency) in whole
    /// milliseconds, computed as [`stage_latency_ms`](InvoiceEvent::stage_latency_ms) is.
    pub fn end_to_end_latency_ms(&self) -> Option<i64> {
        let submitted = self.submitted_at.or((self.status == Status::Submitted).then_some(self.occurred_at))?;
        Some(self.occurred_at.timestamp_millis() - submitted.timestamp_millis())
    }

    /// The amount at its currency's scale (EUR 1250.5 is 1250.50, JPY 1e3
    /// is 1000): the same value and the same text however a bus
    /// re-serialised the number on the way (LocalStack's EventBridge
    /// writes 1250.50 as 1250.5), so that a redelivered event makes the
    /// same stored row. Validation guarantees no more decimals than the
    /// scale, so nothing is rounded.
    pub fn amount_at_currency_scale(&self) -> rust_decimal::Decimal {
        let mut value = self.amount.value();
        value.rescale(self.currency.minor_units());
        value
    }

    /// Whether the event is synthetic: an invoice `bems smoke` sent
    /// ([`crate::contract::CANARY_PRODUCER`]). Stores keep it; business
    /// figures leave it out.
    pub fn is_synthetic(&self) -> bool {
        self.metadata.producer.as_str() == crate::contract::CANARY_PRODUCER
    }
}
