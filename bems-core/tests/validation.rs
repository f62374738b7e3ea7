//! Validator behaviour beyond the fixture corpus (which `bems-schema`'s
//! tests run against both validators): options, typed events, and inputs
//! that must never panic.

use bems_core::partition::PartitionCount;
use bems_core::{Code, InvoiceEvent, Partition, UnknownFields, ValidationOptions, Validator};
use chrono::{TimeDelta, TimeZone, Utc};
use proptest::prelude::*;

const EVENT: &str = include_str!("../fixtures/example-invoice-event.json");

fn with(field: &str, value: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(EVENT).expect("fixture");
    let (parent, key) = field.rsplit_once('.').map_or((None, field), |(p, k)| (Some(p), k));
    let target = match parent {
        Some(p) => &mut v[p],
        None => &mut v,
    };
    target[key] = serde_json::from_str(value).expect("value is JSON");
    v.to_string()
}

#[test]
fn unknown_fields_can_be_ignored_by_consumers() {
    let body = with("vendor.rating", r#""AAA""#);
    let strict = Validator::default().parse(body.as_bytes()).unwrap_err();
    assert!(strict.contains("vendor.rating", Code::UnknownField), "{strict}");
    let lenient = Validator::new(ValidationOptions { unknown_fields: UnknownFields::Ignore, ..Default::default() });
    let event = lenient.parse(body.as_bytes()).expect("ignored");
    assert_eq!(event.vendor.name.as_str(), "Acme Industriebedarf GmbH");
}

#[test]
fn clock_tolerance_is_configurable() {
    let now = Utc.with_ymd_and_hms(2026, 11, 26, 13, 40, 0).single().expect("valid");
    // The fixture's occurredAt is 13:45:00.123, 5 min 0.123 s after `now`.
    let default = Validator::default().parse_at(EVENT.as_bytes(), now).unwrap_err();
    assert_eq!(default.codes(), vec![("occurredAt".to_owned(), Code::InFuture)]);
    let tolerant =
        Validator::new(ValidationOptions { max_future_skew: Some(TimeDelta::minutes(10)), ..Default::default() });
    assert!(tolerant.parse_at(EVENT.as_bytes(), now).is_ok());
    let unchecked = Validator::new(ValidationOptions { max_future_skew: None, ..Default::default() });
    assert!(unchecked.parse_at(EVENT.as_bytes(), now).is_ok());
}

#[test]
fn partition_is_checked_against_the_cell_when_configured() {
    let count = PartitionCount::new(16).expect("valid");
    let v = Validator::new(ValidationOptions { partitions: Some(count), ..Default::default() });
    let invoice = bems_core::fields::InvoiceId::new("INV-2026-000123").expect("valid");
    let right = Partition::for_invoice(&invoice, count).get();
    let wrong = if right == 1 { 2 } else { 1 };
    assert!(v.parse(with("metadata.partition", &right.to_string()).as_bytes()).is_ok());
    let err = v.parse(with("metadata.partition", &wrong.to_string()).as_bytes()).unwrap_err();
    assert_eq!(err.codes(), vec![("metadata.partition".to_owned(), Code::Mismatch)]);
    let err = v.parse(with("metadata.partition", "40").as_bytes()).unwrap_err();
    assert_eq!(err.codes(), vec![("metadata.partition".to_owned(), Code::OutOfRange)]);
}

#[test]
fn typed_events_pass_the_same_cross_field_rules() {
    let mut event = InvoiceEvent::from_json(EVENT.as_bytes()).expect("valid");
    let now = Utc::now();
    assert_eq!(event.check(&ValidationOptions::default(), now), Ok(()));
    event.currency = bems_core::Currency::new("JPY").expect("valid");
    event.previous_status = None;
    event.metadata.schema_version = 2;
    let err = event.check(&ValidationOptions::default(), now).unwrap_err();
    assert_eq!(
        err.codes(),
        vec![
            ("amount".to_owned(), Code::TooManyDecimals),
            ("status".to_owned(), Code::InvalidInitialStatus),
            ("metadata.schemaVersion".to_owned(), Code::UnsupportedVersion),
        ]
    );
}

#[test]
fn messages_name_the_field_and_the_reason() {
    let err = Validator::default().parse(with("amount", "12.345").as_bytes()).unwrap_err();
    assert_eq!(err.to_string(), "1 problem: amount: too_many_decimals (EUR allows at most 2 decimal places, got 3)");
    let err = Validator::default().parse(with("stage", r#""payment""#).as_bytes()).unwrap_err();
    assert!(err.to_string().contains("must be one of ingestion, reconciliation, authorization, posting"), "{err}");
}

#[test]
fn serde_deserialize_validates_but_ignores_the_clock() {
    let future = with("occurredAt", r#""2999-01-01T00:00:00Z""#);
    let event: InvoiceEvent = serde_json::from_str(&future).expect("clock not checked");
    assert_eq!(event.occurred_at.to_rfc3339(), "2999-01-01T00:00:00+00:00");
    let err = serde_json::from_str::<InvoiceEvent>(&with("amount", "0")).unwrap_err();
    assert!(err.to_string().contains("amount: not_positive"), "{err}");
}

#[test]
fn violations_serialize_for_api_responses() {
    let err = Validator::default().parse(with("currency", r#""XYZ""#).as_bytes()).unwrap_err();
    let json = serde_json::to_value(&err).expect("serializes");
    assert_eq!(json[0]["path"], "currency");
    assert_eq!(json[0]["code"], "unknown_code");
}

proptest! {
    /// Arbitrary bytes: an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Validator::default().parse(&bytes);
        let _ = bems_core::decode_body(&String::from_utf8_lossy(&bytes), &Validator::default());
    }

    /// The valid event with one byte replaced: valid or a clean error.
    #[test]
    fn single_byte_corruptions_never_panic(at in 0..EVENT.len(), byte in any::<u8>()) {
        let mut bytes = EVENT.as_bytes().to_vec();
        bytes[at] = byte;
        if let Err(e) = Validator::default().parse(&bytes) {
            prop_assert!(!e.as_slice().is_empty());
            prop_assert!(e.as_slice().iter().all(|v| !v.message.is_empty()));
        }
    }

    /// Any value in any field: an error naming that field (or a valid event).
    #[test]
    fn any_value_in_any_field_is_reported_at_that_field(
        field in prop::sample::select(vec![
            "eventId", "invoiceId", "stage", "status", "amount", "currency", "occurredAt", "issueDate",
            "vendor.name", "vendor.country", "paymentTerms.netDays", "metadata.partition", "metadata.accountId",
        ]),
        value in prop_oneof![
            Just("null".to_owned()), Just("true".to_owned()), Just("[]".to_owned()), Just("{}".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()), any::<f64>().prop_map(|f| format!("{f:?}")).prop_filter("finite", |s| !s.contains("inf") && !s.contains("NaN")),
            ".{0,80}".prop_map(|s| serde_json::to_string(&s).expect("string")),
        ],
    ) {
        let body = with(field, &value);
        if let Err(e) = Validator::default().parse(body.as_bytes()) {
            prop_assert!(e.as_slice().iter().any(|v| v.path == field || v.path == "amount" || v.path == "stage" || v.path == "status" || v.path.starts_with("paymentTerms")), "{field}={value}: {e}");
        }
    }
}
