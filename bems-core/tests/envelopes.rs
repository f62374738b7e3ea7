//! The AWS payload fixtures: each decodes, and each round-trips through its
//! typed form to the same JSON.
//!
//! The fixtures follow aws-lambda-rust-runtime's convention
//! (`fixtures/example-<source>-<variant>.json`). Their shapes are those of
//! the AWS documentation: "Amazon EventBridge events" (event structure,
//! including `replay-name` on replayed events), "Amazon SNS message and JSON
//! formats" (notification and subscription confirmation, `SequenceNumber` on
//! FIFO topics) and the `PutEventsRequestEntry` API reference.

use bems_core::envelope::{EventBridgeEvent, PutEventsEntry, Shape, SnsNotification, decode_body};
use bems_core::{DecodeError, InvoiceEvent, Validator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn fixture(name: &str) -> String {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Parse into `T`, serialize, and compare with the fixture as JSON values.
fn round_trip<T: DeserializeOwned + Serialize>(name: &str) -> T {
    let text = fixture(name);
    let typed: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again = serde_json::to_value(&typed).expect("serializes");
    let original: Value = serde_json::from_str(&text).expect("fixture is JSON");
    assert_eq!(again, original, "{name} does not round-trip");
    typed
}

#[test]
fn invoice_event_round_trips_with_exact_amount_digits() {
    let event: InvoiceEvent = round_trip("example-invoice-event.json");
    assert_eq!(event.amount.to_string(), "1250.50");
    assert!(event.to_json().contains(r#""amount":1250.50,"#), "{}", event.to_json());
}

#[test]
fn eventbridge_event_round_trips() {
    let eb: EventBridgeEvent<InvoiceEvent> = round_trip("example-eventbridge-event-invoice.json");
    assert_eq!(eb.detail_type, bems_core::envelope::DETAIL_TYPE);
    assert_eq!(eb.source, bems_core::envelope::EVENT_SOURCE);
    assert_eq!(eb.replay_name, None);
}

#[test]
fn replayed_eventbridge_event_keeps_its_replay_name() {
    let eb: EventBridgeEvent<InvoiceEvent> = round_trip("example-eventbridge-event-replayed.json");
    assert_eq!(eb.replay_name.as_deref(), Some("bems-prod-eu-1-replay-20261126"));
}

#[test]
fn sns_notifications_round_trip() {
    for name in [
        "example-sns-notification-eventbridge.json",
        "example-sns-notification-invoice.json",
        "example-sns-subscription-confirmation.json",
    ] {
        let _: SnsNotification = round_trip(name);
    }
}

#[test]
fn putevents_entry_round_trips_and_matches_what_the_producer_builds() {
    let entry: PutEventsEntry = round_trip("example-eventbridge-putevents-entry.json");
    let event = InvoiceEvent::from_json(fixture("example-invoice-event.json").as_bytes()).expect("valid");
    assert_eq!(PutEventsEntry::for_event(&event, "bems-prod-eu-1"), entry);
    assert_eq!(entry.size(), "bems.invoices".len() + "Invoice Status Changed".len() + entry.detail.len());
}

#[test]
fn every_shape_decodes_to_the_same_event() {
    let v = Validator::default();
    let expected = InvoiceEvent::from_json(fixture("example-invoice-event.json").as_bytes()).expect("valid");
    let cases = [
        ("example-invoice-event.json", Shape::Raw),
        ("example-eventbridge-event-invoice.json", Shape::EventBridge),
        ("example-sns-notification-invoice.json", Shape::Sns),
        ("example-sns-notification-eventbridge.json", Shape::SnsEventBridge),
    ];
    for (name, shape) in cases {
        let d = decode_body(&fixture(name), &v).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(d.shape, shape, "{name}");
        assert_eq!(d.event, expected, "{name}");
    }
    let d = decode_body(&fixture("example-sns-notification-eventbridge.json"), &v).expect("valid");
    assert_eq!(d.eventbridge_id.as_deref(), Some("6f1b3c2e-8a4d-4e1f-b7c9-0d2e3f4a5b6c"));
    assert_eq!(d.sns_message_id.as_deref(), Some("a1b2c3d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"));
}

#[test]
fn a_subscription_confirmation_is_not_an_event() {
    let err = decode_body(&fixture("example-sns-subscription-confirmation.json"), &Validator::default()).unwrap_err();
    assert_eq!(err, DecodeError::UnexpectedSnsType("SubscriptionConfirmation".into()));
}

#[test]
fn an_invalid_event_inside_an_envelope_reports_its_fields() {
    let body =
        fixture("example-eventbridge-event-invoice.json").replace(r#""currency": "EUR""#, r#""currency": "EURO""#);
    match decode_body(&body, &Validator::default()) {
        Err(DecodeError::Invalid(v)) => assert!(v.contains("currency", bems_core::Code::InvalidFormat), "{v}"),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn broken_envelopes_and_bodies_are_errors_not_panics() {
    let v = Validator::default();
    for body in
        ["", "null", "[]", "{", r#"{"Type":"Notification","TopicArn":"x"}"#, r#"{"detail-type":"x","detail":{}}"#]
    {
        assert!(decode_body(body, &v).is_err(), "{body:?}");
    }
}
