//! The Timestream for LiveAnalytics sink of the status writer
//! ([`crate::writer`]): one multi-measure record per status change, at most
//! 100 per `WriteRecords` call, rejected records answered one by one.
//! (Timestream for LiveAnalytics is closed to new AWS customers; see the
//! store section of the docs.)
//!
//! ## The record
//!
//! - time: the event's `occurredAt`, in milliseconds;
//! - dimensions: `invoice_id`, `cell_id`, `region`, `partition`, `stage`;
//! - measure `status_change` (multi): `status`, `previous_status`,
//!   `event_id`, `amount` (DOUBLE: amounts have at most 15 significant
//!   digits, which a double holds exactly), `currency`, `due_date`,
//!   `vendor_id`, `vendor_country`, `net_days` (BIGINT, the payment terms),
//!   and `stage_latency_ms` and
//!   `end_to_end_latency_ms` (BIGINT) when the event carries the times they
//!   need (`previousOccurredAt`, `submittedAt`; the stages always set them).
//!
//! The latencies come from the event's own timestamps, never from when the
//! writer runs: a value depending on the write time would make a redelivered
//! record differ from the first write and break idempotency.
//!
//! ## Idempotency and corrections
//!
//! `Version` is EventBridge's receipt time of the event (milliseconds). A
//! redelivered or duplicated event is the same record with the same version:
//! Timestream accepts it as a no-op. The same status change published again
//! with corrected values is received later, so it has a higher version and
//! upserts. A stale copy arriving after a correction has a lower version;
//! Timestream rejects it, and the writer counts that as done.

use bems_core::InvoiceEvent;
use chrono::{DateTime, Utc};

/// At most this many records per `WriteRecords` call.
pub const MAX_RECORDS_PER_CALL: usize = 100;

/// The measure name of every record.
pub use bems_core::contract::columns::MEASURE_NAME;

/// A multi-measure record, independent of any SDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// Dimension names and values.
    pub dimensions: Vec<(&'static str, String)>,
    /// Measure names, values and types.
    pub measures: Vec<Measure>,
    /// The record's version.
    pub version: i64,
}

/// One measure of a multi-measure record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    /// Name.
    pub name: &'static str,
    /// Value as text, as Timestream takes it.
    pub value: String,
    /// Type.
    pub kind: MeasureKind,
}

/// Timestream measure value types used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureKind {
    /// `VARCHAR`.
    Varchar,
    /// `DOUBLE`.
    Double,
    /// `BIGINT`.
    Bigint,
}

fn varchar(name: &'static str, value: impl Into<String>) -> Measure {
    Measure { name, value: value.into(), kind: MeasureKind::Varchar }
}

impl crate::writer::StoreRecord for Record {
    const STORE: &'static str = "timestream";
    const MAX_PER_CALL: usize = MAX_RECORDS_PER_CALL;

    fn encode(event: &InvoiceEvent, received: DateTime<Utc>) -> Record {
        record(event, received)
    }
}

/// The record of one delivered status change. `received` is EventBridge's
/// receipt time (the envelope's `time`), the record's version.
pub fn record(event: &InvoiceEvent, received: DateTime<Utc>) -> Record {
    use bems_core::contract::columns::*;
    let mut measures = vec![
        varchar(STATUS, event.status.as_str()),
        varchar(EVENT_ID, event.event_id.to_string()),
        Measure { name: AMOUNT, value: event.amount_at_currency_scale().to_string(), kind: MeasureKind::Double },
        varchar(CURRENCY, event.currency.code()),
        varchar(DUE_DATE, event.payment_terms.due_date.to_string()),
        varchar(VENDOR_ID, event.vendor.id.as_str()),
        varchar(VENDOR_COUNTRY, event.vendor.country.as_str()),
        Measure { name: NET_DAYS, value: event.payment_terms.net_days.get().to_string(), kind: MeasureKind::Bigint },
    ];
    if let Some(previous) = event.previous_status {
        measures.insert(1, varchar(PREVIOUS_STATUS, previous.as_str()));
    }
    // Both come from the event itself, never from when the writer runs: a
    // redelivered event must make the very same record.
    let bigint = |name, value: i64| Measure { name, value: value.to_string(), kind: MeasureKind::Bigint };
    if let Some(ms) = event.stage_latency_ms() {
        measures.push(bigint(STAGE_LATENCY_MS, ms));
    }
    if let Some(ms) = event.end_to_end_latency_ms() {
        measures.push(bigint(END_TO_END_LATENCY_MS, ms));
    }
    Record {
        time_ms: event.occurred_at.timestamp_millis(),
        dimensions: vec![
            (INVOICE_ID, event.invoice_id.to_string()),
            (CELL_ID, event.metadata.cell_id.to_string()),
            (REGION, event.metadata.region.to_string()),
            (PARTITION, event.metadata.partition.get().to_string()),
            (STAGE, event.stage.as_str().to_owned()),
        ],
        measures,
        version: received.timestamp_millis(),
    }
}

/// What a rejection means for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// A newer version is stored: this copy is stale, nothing to do.
    Superseded,
    /// The same version with other measures: a conflict no retry fixes.
    Conflict,
    /// Anything else (time outside the memory store, bad value): poison.
    Invalid,
}

/// Classifies a `RejectedRecords` reason.
pub fn classify(reason: &str) -> RejectionKind {
    let r = reason.to_ascii_lowercase();
    if r.contains("version") && (r.contains("lower") || r.contains("older")) {
        RejectionKind::Superseded
    } else if r.contains("version") || r.contains("already exists") || r.contains("different") {
        RejectionKind::Conflict
    } else {
        RejectionKind::Invalid
    }
}

mod sdk {
    //! `RecordSink` for Timestream for LiveAnalytics.

    use aws_sdk_timestreamwrite::error::{DisplayErrorContext, SdkError};
    use aws_sdk_timestreamwrite::types::{Dimension, MeasureValue, MeasureValueType, TimeUnit};

    use super::{MEASURE_NAME, MeasureKind, Record, RejectionKind, classify};
    use crate::writer::{SinkError, StatusSink, Written};

    /// A Timestream table to write to.
    #[derive(Debug, Clone)]
    pub struct TimestreamTable {
        /// The client.
        pub client: aws_sdk_timestreamwrite::Client,
        /// Database name.
        pub database: String,
        /// Table name.
        pub table: String,
    }

    fn to_sdk(r: &Record) -> Result<aws_sdk_timestreamwrite::types::Record, String> {
        let dimensions = r
            .dimensions
            .iter()
            .map(|(n, v)| Dimension::builder().name(*n).value(v).build().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let measures = r
            .measures
            .iter()
            .map(|m| {
                MeasureValue::builder()
                    .name(m.name)
                    .value(&m.value)
                    .r#type(match m.kind {
                        MeasureKind::Varchar => MeasureValueType::Varchar,
                        MeasureKind::Double => MeasureValueType::Double,
                        MeasureKind::Bigint => MeasureValueType::Bigint,
                    })
                    .build()
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(aws_sdk_timestreamwrite::types::Record::builder()
            .set_dimensions(Some(dimensions))
            .set_measure_values(Some(measures))
            .time(r.time_ms.to_string())
            .version(r.version)
            .build())
    }

    /// What a rejected record means: the answer's `ExistingVersion` says
    /// whether a newer version is stored (a stale copy: done) or the same
    /// one with other values (a conflict); without it, the reason's text
    /// is all there is.
    fn rejection(rejected: &aws_sdk_timestreamwrite::types::RejectedRecord, ours: Option<i64>) -> Written {
        let reason = rejected.reason().unwrap_or("rejected");
        let kind = match (rejected.existing_version(), ours) {
            (Some(existing), Some(ours)) if existing > ours => RejectionKind::Superseded,
            (Some(existing), Some(ours)) if existing == ours => RejectionKind::Conflict,
            _ => classify(reason),
        };
        match kind {
            RejectionKind::Superseded => Written::Superseded,
            RejectionKind::Conflict | RejectionKind::Invalid => Written::Rejected(reason.to_owned()),
        }
    }

    impl StatusSink for TimestreamTable {
        type Record = Record;

        async fn write(&self, records: &[Record]) -> Result<Vec<Written>, SinkError> {
            let sdk: Vec<_> = records.iter().map(to_sdk).collect::<Result<_, _>>().map_err(SinkError::Permanent)?;
            let common = aws_sdk_timestreamwrite::types::Record::builder()
                .measure_name(MEASURE_NAME)
                .measure_value_type(MeasureValueType::Multi)
                .time_unit(TimeUnit::Milliseconds)
                .build();
            let sent = self
                .client
                .write_records()
                .database_name(&self.database)
                .table_name(&self.table)
                .common_attributes(common)
                .set_records(Some(sdk))
                .send()
                .await;
            match sent {
                Ok(_) => Ok(vec![Written::Ok; records.len()]),
                Err(SdkError::ServiceError(e)) if e.err().is_rejected_records_exception() => {
                    let mut out = vec![Written::Ok; records.len()];
                    if let aws_sdk_timestreamwrite::operation::write_records::WriteRecordsError::RejectedRecordsException(r) = e.err() {
                        for rejected in r.rejected_records() {
                            let i = usize::try_from(rejected.record_index()).unwrap_or(usize::MAX);
                            if let Some(slot) = out.get_mut(i) {
                                *slot = rejection(rejected, records.get(i).map(|r| r.version));
                            }
                        }
                    }
                    Ok(out)
                }
                Err(e) => {
                    let text = DisplayErrorContext(&e).to_string();
                    let transient = bems_core::retry::is_transient(&e);
                    Err(if transient { SinkError::Transient(text) } else { SinkError::Permanent(text) })
                }
            }
        }
    }
}

pub use sdk::TimestreamTable;

#[cfg(test)]
mod tests {
    use super::*;
    use bems_core::Status;
    use chrono::{DateTime, Utc};

    fn event() -> InvoiceEvent {
        bems_core::Validator::default()
            .parse(include_bytes!("../../bems-core/fixtures/example-invoice-event.json"))
            .expect("fixture")
    }

    #[test]
    fn latencies_come_from_the_event_s_own_timestamps() {
        let received: DateTime<Utc> = "2026-11-26T13:45:01Z".parse().expect("time");
        let bigint = |r: &Record, n: &str| {
            r.measures.iter().find(|m| m.name == n).map(|m| (m.value.clone(), m.kind == MeasureKind::Bigint))
        };
        let mut e = event();
        // Without the times, no latency measures (not a guess).
        let r = record(&e, received);
        assert_eq!((bigint(&r, "stage_latency_ms"), bigint(&r, "end_to_end_latency_ms")), (None, None));
        e.previous_occurred_at = Some("2026-11-26T13:44:58.900Z".parse().expect("time"));
        e.submitted_at = Some("2026-11-26T13:44:51.004Z".parse().expect("time"));
        let r = record(&e, received);
        assert_eq!(bigint(&r, "stage_latency_ms"), Some(("1223".to_owned(), true)));
        assert_eq!(bigint(&r, "end_to_end_latency_ms"), Some(("9119".to_owned(), true)));
        // The same event later makes the same record: nothing depends on the
        // writer's clock.
        assert_eq!(record(&e, received), r);
        // A submission is the start of the clock.
        let mut first = event();
        first.status = Status::Submitted;
        first.previous_status = None;
        assert_eq!(bigint(&record(&first, received), "end_to_end_latency_ms"), Some(("0".to_owned(), true)));
    }

    #[test]
    fn a_status_change_is_one_multi_measure_record() {
        let received: DateTime<Utc> = "2026-11-26T13:45:01Z".parse().expect("time");
        let r = record(&event(), received);
        assert_eq!(r.time_ms, 1_795_700_700_123);
        assert_eq!(r.version, 1_795_700_701_000);
        assert_eq!(r.dimensions[0], ("invoice_id", "INV-2026-000123".to_owned()));
        assert_eq!(
            r.dimensions.iter().map(|d| d.0).collect::<Vec<_>>(),
            ["invoice_id", "cell_id", "region", "partition", "stage"]
        );
        let m = |n: &str| r.measures.iter().find(|m| m.name == n).map(|m| m.value.clone());
        assert_eq!(m("amount").as_deref(), Some("1250.50"));
        assert_eq!(m("status").as_deref(), Some("ingested"));
        assert_eq!(m("previous_status").as_deref(), Some("submitted"));
        assert_eq!(m("due_date").as_deref(), Some("2026-12-25"));
        let terms = r.measures.iter().find(|m| m.name == "net_days").expect("net_days");
        assert_eq!((terms.value.as_str(), terms.kind), ("30", MeasureKind::Bigint));
        // Same input, same record: a redelivery is an idempotent no-op.
        assert_eq!(record(&event(), received), r);
    }

    #[test]
    fn the_amount_is_written_at_its_currency_s_scale_whatever_the_wire_text() {
        let received: DateTime<Utc> = "2026-11-26T13:45:01Z".parse().expect("time");
        let amount = |json: &str, currency: &str| {
            let mut e = event();
            e.amount = bems_core::Amount::from_json_number(json).expect("amount");
            e.currency = bems_core::Currency::new(currency).expect("currency");
            record(&e, received).measures.iter().find(|m| m.name == "amount").map(|m| m.value.clone())
        };
        assert_eq!(amount("1250.5", "EUR").as_deref(), Some("1250.50"));
        assert_eq!(amount("1250.50", "EUR").as_deref(), Some("1250.50"));
        assert_eq!(amount("1250", "EUR").as_deref(), Some("1250.00"));
        assert_eq!(amount("1e3", "JPY").as_deref(), Some("1000"));
        assert_eq!(amount("0.125", "BHD").as_deref(), Some("0.125"));
    }

    #[test]
    fn rejection_reasons_are_classified() {
        assert_eq!(classify("The record version 5 is lower than the existing version 7."), RejectionKind::Superseded);
        assert_eq!(
            classify("A record with the same version and different measure values already exists."),
            RejectionKind::Conflict
        );
        assert_eq!(
            classify("The record timestamp is outside the time range of the memory store."),
            RejectionKind::Invalid
        );
    }
}
