//! The stored form of one status change: [`StatusRow`], made from a
//! delivered event and its version, the same whichever engine keeps it.

use bems_core::{InvoiceEvent, Stage, Status};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

/// One status change as the store keeps it: a typed column per field.
///
/// Its key is the series and time Timestream keys a record by, the
/// invoice, the stage and `occurred_at` ([`StatusRow::key`]); `version` is
/// EventBridge's receipt time of the event. Everything else is its
/// content ([`StatusRow::differences`]): a redelivery is the same key,
/// version and content; a correction is the same key with a higher version.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusRow {
    /// The invoice.
    pub invoice_id: String,
    /// The stage the event was handed to.
    pub stage: Stage,
    /// When the status change happened.
    pub occurred_at: DateTime<Utc>,
    /// The cell.
    pub cell_id: String,
    /// The cell's Region.
    pub region: String,
    /// The invoice's partition in the cell.
    pub partition: i16,
    /// The status it set.
    pub status: Status,
    /// The status before it.
    pub previous_status: Option<Status>,
    /// The event.
    pub event_id: uuid::Uuid,
    /// The amount at the currency's scale.
    pub amount: Decimal,
    /// ISO 4217 currency.
    pub currency: String,
    /// When the invoice was submitted.
    pub submitted_at: Option<DateTime<Utc>>,
    /// When the previous status change happened.
    pub previous_occurred_at: Option<DateTime<Utc>>,
    /// The invoice's date.
    pub issue_date: NaiveDate,
    /// When payment is due.
    pub due_date: NaiveDate,
    /// Payment terms, days.
    pub net_days: i16,
    /// The vendor.
    pub vendor_id: String,
    /// Its country.
    pub vendor_country: String,
    /// Why the invoice was rejected.
    pub reason: Option<String>,
    /// Milliseconds since the previous status change.
    pub stage_latency_ms: Option<i64>,
    /// Milliseconds since the invoice was submitted.
    pub end_to_end_latency_ms: Option<i64>,
    /// Who produced the event (`bems-canary` for a synthetic invoice).
    pub producer: String,
    /// EventBridge's receipt time of the event.
    pub version: DateTime<Utc>,
}

/// `at` to the microsecond (towards the past).
pub fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::DurationRound;
    at.duration_trunc(chrono::Duration::microseconds(1)).unwrap_or(at)
}

/// A row's key: invoice, stage, time.
pub type RowKey = (String, Stage, DateTime<Utc>);

impl StatusRow {
    /// The row of `event`, delivered with version `version`. Everything
    /// comes from the event itself, never from when the writer runs, so
    /// the same delivery always makes the same row. Times are kept to the
    /// microsecond, PostgreSQL's precision (events carry milliseconds).
    pub fn new(event: &InvoiceEvent, version: DateTime<Utc>) -> StatusRow {
        StatusRow {
            invoice_id: event.invoice_id.to_string(),
            stage: event.stage,
            occurred_at: micros(event.occurred_at),
            cell_id: event.metadata.cell_id.to_string(),
            region: event.metadata.region.to_string(),
            partition: i16::from(event.metadata.partition.get()),
            status: event.status,
            previous_status: event.previous_status,
            event_id: *event.event_id.as_uuid(),
            amount: event.amount_at_currency_scale(),
            currency: event.currency.code().to_owned(),
            submitted_at: event.submitted_at.map(micros),
            previous_occurred_at: event.previous_occurred_at.map(micros),
            issue_date: event.issue_date,
            due_date: event.payment_terms.due_date,
            net_days: i16::try_from(event.payment_terms.net_days.get()).unwrap_or(i16::MAX),
            vendor_id: event.vendor.id.as_str().to_owned(),
            vendor_country: event.vendor.country.as_str().to_owned(),
            reason: event.reason.as_ref().map(|r| r.as_str().to_owned()),
            stage_latency_ms: event.stage_latency_ms(),
            end_to_end_latency_ms: event.end_to_end_latency_ms(),
            producer: event.metadata.producer.as_str().to_owned(),
            version: micros(version),
        }
    }

    /// Its key.
    pub fn key(&self) -> RowKey {
        (self.invoice_id.clone(), self.stage, self.occurred_at)
    }

    /// Whether it is a synthetic invoice's (left out of business figures).
    pub fn is_synthetic(&self) -> bool {
        self.producer == bems_core::contract::CANARY_PRODUCER
    }

    /// The content fields in which `other` differs from `self` (key and
    /// version aside): empty when a second write of it would change nothing.
    pub fn differences(&self, other: &StatusRow) -> Vec<&'static str> {
        use bems_core::contract::columns as c;
        let mut out = Vec::new();
        let mut differ = |name: &'static str, same: bool| {
            if !same {
                out.push(name);
            }
        };
        differ(c::CELL_ID, self.cell_id == other.cell_id);
        differ(c::REGION, self.region == other.region);
        differ(c::PARTITION, self.partition == other.partition);
        differ(c::STATUS, self.status == other.status);
        differ(c::PREVIOUS_STATUS, self.previous_status == other.previous_status);
        differ(c::EVENT_ID, self.event_id == other.event_id);
        // Same value and same scale: 1250.50 is not 1250.5 here.
        differ(c::AMOUNT, self.amount == other.amount && self.amount.scale() == other.amount.scale());
        differ(c::CURRENCY, self.currency == other.currency);
        differ(c::SUBMITTED_AT, self.submitted_at == other.submitted_at);
        differ(c::PREVIOUS_OCCURRED_AT, self.previous_occurred_at == other.previous_occurred_at);
        differ(c::ISSUE_DATE, self.issue_date == other.issue_date);
        differ(c::DUE_DATE, self.due_date == other.due_date);
        differ(c::NET_DAYS, self.net_days == other.net_days);
        differ(c::VENDOR_ID, self.vendor_id == other.vendor_id);
        differ(c::VENDOR_COUNTRY, self.vendor_country == other.vendor_country);
        differ(c::REASON, self.reason == other.reason);
        differ(c::STAGE_LATENCY_MS, self.stage_latency_ms == other.stage_latency_ms);
        differ(c::END_TO_END_LATENCY_MS, self.end_to_end_latency_ms == other.end_to_end_latency_ms);
        differ(c::PRODUCER, self.producer == other.producer);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> InvoiceEvent {
        bems_core::Validator::default()
            .parse(include_bytes!("../../bems-core/fixtures/example-invoice-event.json"))
            .expect("fixture")
    }

    #[test]
    fn a_row_holds_every_field_typed_and_the_amount_at_the_currency_s_scale() {
        let version: DateTime<Utc> = "2026-11-26T13:45:01Z".parse().expect("time");
        let row = StatusRow::new(&event(), version);
        assert_eq!(row.key().0, "INV-2026-000123");
        assert_eq!(
            (row.stage, row.status, row.previous_status),
            (Stage::Reconciliation, Status::Ingested, Some(Status::Submitted))
        );
        assert_eq!(row.amount.to_string(), "1250.50");
        assert_eq!((row.partition, row.net_days, row.due_date.to_string().as_str()), (7, 30, "2026-12-25"));
        assert_eq!(row.event_id.to_string(), "0b9c6f5e-3c1f-4d8e-9a51-2f7f2c1d4e11");
        assert!(!row.is_synthetic());
        // The same delivery makes the same row: no difference.
        assert!(row.differences(&StatusRow::new(&event(), version)).is_empty());
    }

    #[test]
    fn differences_name_each_changed_field_and_see_the_amount_s_scale() {
        let version: DateTime<Utc> = "2026-11-26T13:45:01Z".parse().expect("time");
        let row = StatusRow::new(&event(), version);
        let mut other = row.clone();
        other.amount = "1250.5".parse().expect("decimal");
        other.status = Status::Rejected;
        other.version = "2026-11-26T13:46:00Z".parse().expect("time");
        assert_eq!(row.differences(&other), ["status", "amount"], "the version is not content");
    }
}
