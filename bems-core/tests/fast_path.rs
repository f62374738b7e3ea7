//! The single-pass fast path agrees with the thorough reader: the same
//! event for every input it accepts, and the thorough reader's full report
//! for everything else (see the `validate` module docs). Checked on every
//! fixture, bare and in each envelope, on hand-made inputs at the edges of
//! what the fast path accepts, and on random corruptions of a valid body.

use bems_core::envelope::decode_body_thorough;
use bems_core::{ValidationOptions, Validator, decode_body};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

const EVENTBRIDGE: &str = include_str!("../fixtures/example-eventbridge-event-invoice.json");

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 14, 0, 0).single().expect("time")
}

/// The producers' validator (unknown fields refused) and the consumers'.
fn validators() -> [Validator; 2] {
    [Validator::default(), Validator::new(ValidationOptions::consumer())]
}

fn same_event(bytes: &[u8]) {
    for v in validators() {
        assert_eq!(
            v.parse_at(bytes, now()),
            v.parse_thorough(bytes, now()),
            "{:?} on {}",
            v.options().unknown_fields,
            String::from_utf8_lossy(bytes)
        );
    }
}

fn same_delivery(body: &str) {
    // The clock is not checked (the envelope path reads it itself).
    for v in [
        Validator::new(ValidationOptions { max_future_skew: None, ..ValidationOptions::default() }),
        validators()[1].clone(),
    ] {
        assert_eq!(decode_body(body, &v), decode_body_thorough(body, &v), "{body}");
    }
}

/// `event` in an EventBridge envelope, as a stage queue receives it.
fn in_eventbridge(event: &Value) -> String {
    let mut envelope: Value = serde_json::from_str(EVENTBRIDGE).expect("fixture");
    envelope["detail"] = event.clone();
    envelope.to_string()
}

/// Every event of the fixture corpus (`fixtures/valid`, `fixtures/invalid`).
fn corpus() -> Vec<Value> {
    let mut events = Vec::new();
    for dir in ["valid", "invalid"] {
        let path = format!("{}/fixtures/{dir}", env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(&path).expect("fixture directory") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("fixture");
            let case: Value = serde_json::from_str(&text).expect("fixture is JSON");
            events.push(case.get("event").cloned().unwrap_or(case));
        }
    }
    assert!(events.len() > 90, "the corpus is there");
    events
}

#[test]
fn every_fixture_reads_the_same_bare_and_in_an_eventbridge_envelope() {
    for event in corpus() {
        same_event(event.to_string().as_bytes());
        same_delivery(&in_eventbridge(&event));
    }
}

#[test]
fn the_example_envelopes_read_the_same() {
    for body in [
        EVENTBRIDGE,
        include_str!("../fixtures/example-eventbridge-event-replayed.json"),
        include_str!("../fixtures/example-sns-notification-eventbridge.json"),
        include_str!("../fixtures/example-sns-notification-invoice.json"),
        include_str!("../fixtures/example-sns-subscription-confirmation.json"),
    ] {
        same_delivery(body);
    }
    let delivery = decode_body(EVENTBRIDGE, &validators()[1]).expect("valid");
    assert_eq!(delivery.eventbridge_id.as_deref(), Some("6f1b3c2e-8a4d-4e1f-b7c9-0d2e3f4a5b6c"));
}

/// Inputs at the edges of what the fast path accepts: each must get what
/// the thorough reader gives, accepted or not.
#[test]
fn irregular_inputs_get_the_thorough_answer() {
    let event: Value = serde_json::from_str(&decoded_detail()).expect("event");
    let text = event.to_string();
    let bare = [
        // A duplicate member, top level and nested.
        text.replacen("\"invoiceId\"", "\"invoiceId\":\"INV-1\",\"invoiceId\"", 1),
        text.replacen("\"country\"", "\"country\":\"FR\",\"country\"", 1),
        text.replacen("\"vendor\"", "\"vendor\":{},\"vendor\"", 1),
        // null is not "absent".
        text.replacen("\"invoiceId\"", "\"reason\":null,\"invoiceId\"", 1),
        text.replacen("\"netDays\"", "\"dueDate\":null,\"netDays\"", 1),
        // Unknown members, refused by producers, ignored by consumers.
        text.replacen("\"invoiceId\"", "\"extra\":[1,{\"a\":null}],\"invoiceId\"", 1),
        text.replacen("\"country\"", "\"extra\":1,\"country\"", 1),
        // Nested members that are not objects.
        text.replacen("\"vendor\":{", "\"vendor\":7,\"x\":{", 1),
        text.replacen("\"metadata\":{", "\"metadata\":null,\"x\":{", 1),
        // Escaped keys and values.
        text.replacen("\"invoiceId\"", "\"invoice\\u0049d\"", 1),
        text.replacen("Acme", "Ac\\u006de \\\"quoted\\\"", 1),
        // Whitespace, trailing bytes, not an object.
        format!("  \n{text}\t "),
        format!("{text}x"),
        format!("[{text}]"),
        "{".into(),
        String::new(),
    ];
    // A byte that is not UTF-8 in a member the consumers ignore (found by
    // the fuzzer: skipping a value does not check its text).
    let mut invalid = text.replacen("\"invoiceId\"", "\"extra\":\"a~b\",\"invoiceId\"", 1).into_bytes();
    if let Some(at) = invalid.iter().position(|b| *b == b'~') {
        invalid[at] = 0xb5;
    }
    same_event(&invalid);
    for input in &bare {
        same_event(input.as_bytes());
        same_delivery(input);
        same_delivery(&in_eventbridge(&serde_json::from_str(input).unwrap_or(Value::Null)));
    }

    let envelope: Value = serde_json::from_str(EVENTBRIDGE).expect("fixture");
    let with = |key: &str, value: Value| {
        let mut e = envelope.clone();
        e[key] = value;
        e.to_string()
    };
    let without = |key: &str| {
        let mut e = envelope.clone();
        e.as_object_mut().expect("object").remove(key);
        e.to_string()
    };
    let text = envelope.to_string();
    let envelopes = [
        // Each member the thorough path requires, missing or of another type.
        without("version"),
        without("id"),
        without("source"),
        without("time"),
        without("detail"),
        without("detail-type"),
        without("resources"),
        with("id", json!(5)),
        with("detail-type", Value::Null),
        with("detail", Value::Null),
        with("detail", json!("{}")),
        with("resources", Value::Null),
        with("resources", json!([1])),
        with("resources", json!(["arn:aws:sqs:eu-west-1:123456789012:q"])),
        with("replay-name", Value::Null),
        with("replay-name", json!("month-end")),
        with("replay-name", json!(3)),
        // The SNS test: both members present and not null.
        with("Type", json!("Notification")),
        with("TopicArn", json!("arn:aws:sns:eu-west-1:123456789012:t")),
        {
            let mut e = envelope.clone();
            e["Type"] = json!("Notification");
            e["TopicArn"] = json!("arn:aws:sns:eu-west-1:123456789012:t");
            e.to_string()
        },
        {
            let mut e = envelope.clone();
            e["Type"] = Value::Null;
            e["TopicArn"] = json!("arn");
            e.to_string()
        },
        // Duplicates.
        text.replacen("\"id\"", "\"id\":\"x\",\"id\"", 1),
        text.replacen("\"detail\"", "\"detail\":{},\"detail\"", 1),
        text.replacen("\"detail-type\"", "\"Type\":1,\"Type\":2,\"detail-type\"", 1),
        text.replacen("\"detail-type\"", "\"unknown\":1,\"unknown\":2,\"detail-type\"", 1),
        format!("{text} trailing"),
    ];
    for body in &envelopes {
        same_delivery(body);
    }

    // Over the size limit: the thorough path names it.
    let mut big = envelope.clone();
    big["detail"]["vendor"]["name"] = json!("x".repeat(bems_core::MAX_EVENT_BYTES));
    same_delivery(&big.to_string());
}

fn decoded_detail() -> String {
    let envelope: Value = serde_json::from_str(EVENTBRIDGE).expect("fixture");
    envelope["detail"].to_string()
}

proptest! {
    /// A valid EventBridge body with one byte replaced: the fast path and
    /// the thorough one answer the same.
    #[test]
    fn single_byte_corruptions_read_the_same(at in 0..EVENTBRIDGE.len(), byte in 0x20_u8..0x7f) {
        let mut bytes = EVENTBRIDGE.as_bytes().to_vec();
        bytes[at] = byte;
        let body = String::from_utf8(bytes).expect("ASCII");
        for v in validators() {
            prop_assert_eq!(decode_body(&body, &v), decode_body_thorough(&body, &v));
            prop_assert_eq!(v.parse_at(body.as_bytes(), now()), v.parse_thorough(body.as_bytes(), now()));
        }
    }
}
