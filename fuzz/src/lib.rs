//! # bems-fuzz
//!
//! The checks behind the fuzz targets, one per parser that untrusted bytes
//! reach: the invoice event (API bodies, SDK input), the three body shapes
//! a consumer receives (bare, EventBridge, SNS), the SQS event a Lambda
//! function is invoked with, and event patterns and filter policies (the
//! routing rules, from configuration). Each function must return for any
//! input; it panics only when an invariant breaks, which is what the
//! fuzzer reports:
//!
//! - parsers never panic, whatever the bytes;
//! - what a parser accepts survives a round trip (an accepted event
//!   serializes to JSON that parses to the same event; an accepted pattern
//!   prints as JSON that parses to the same pattern);
//! - the rule index (`RuleSet`) selects exactly the rules whose patterns
//!   match one by one;
//! - the single-pass fast paths of the validator and of `decode_body`
//!   answer exactly what the thorough readers answer.
//!
//! The targets (`fuzz_targets/`) call these; `tests/regressions.rs` runs
//! every file of the seed corpora (`corpus/<target>/`) and of
//! `regressions/<target>/` (inputs that once broke a check) through them
//! on the stable toolchain, in `scripts/test`.

use std::sync::OnceLock;

use bems_core::routing::{EventPattern, FilterPolicy, FilterPolicyScope, RuleSet};
use bems_core::{ValidationOptions, Validator};

fn strict() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(Validator::default)
}

/// Consumers' validator (`bems_batch::consumer_validator`'s options;
/// the cell's consumers also check the partition against the invoice's
/// (`ValidationOptions::consumer_in`), a hash the event either matches or
/// not, which this target leaves to the unit tests).
fn consumer() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| Validator::new(ValidationOptions::consumer()))
}

/// The invoice event: both validators, the fast path agreeing with the
/// thorough reader; an accepted event round-trips.
pub fn event_json(data: &[u8]) {
    let now = chrono::DateTime::from_timestamp(1_795_700_000, 0).unwrap_or_default();
    for validator in [strict(), consumer()] {
        assert_eq!(
            validator.parse_at(data, now),
            validator.parse_thorough(data, now),
            "the fast path and the thorough reader must agree"
        );
        if let Ok(event) = validator.parse(data) {
            let again = serde_json::to_vec(&event).expect("an accepted event serializes");
            let back = consumer().parse(&again);
            assert_eq!(back.as_ref(), Ok(&event), "an accepted event must survive a JSON round trip");
        }
    }
}

/// A consumer's message body in any of its three shapes.
pub fn envelope(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    assert_eq!(
        bems_core::decode_body(text, consumer()),
        bems_core::envelope::decode_body_thorough(text, consumer()),
        "the fast path and the thorough path must agree"
    );
    if let Ok(delivery) = bems_core::decode_body(text, consumer()) {
        let again = serde_json::to_vec(&delivery.event).expect("serializes");
        assert!(consumer().parse(&again).is_ok(), "a decoded event must validate again");
    }
}

/// The SQS event Lambda invokes a function with, and every record's body.
pub fn sqs_event(data: &[u8]) {
    let Ok(event) = serde_json::from_slice::<aws_lambda_events::sqs::SqsEvent>(data) else { return };
    for record in &event.records {
        if let Some(body) = record.body.as_deref() {
            let _ = bems_core::decode_body(body, consumer());
        }
    }
}

/// An event pattern and a filter policy of either scope: accepted ones
/// print as JSON that parses to the same rule.
pub fn patterns(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(pattern) = EventPattern::from_json(text) {
        let printed = pattern.to_json();
        let again = EventPattern::from_json(&printed).expect("a printed pattern parses");
        assert_eq!(again.to_json(), printed, "a pattern must print the same after a round trip");
        let _ = pattern.matches(&sample_event());
    }
    for scope in [FilterPolicyScope::MessageBody, FilterPolicyScope::MessageAttributes] {
        if let Ok(policy) = FilterPolicy::from_json(text, scope) {
            let printed = policy.to_json();
            let again = FilterPolicy::from_json(&printed, scope).expect("a printed policy parses");
            assert_eq!(again.to_json(), printed, "a policy must print the same after a round trip");
            let _ = policy.matches(&sample_event(), &serde_json::json!({}));
        }
    }
}

fn sample_event() -> serde_json::Value {
    serde_json::from_str(include_str!("../../bems-core/fixtures/example-eventbridge-event-invoice.json"))
        .expect("fixture")
}

/// Rules with every operator kind on the fields the cell routes on, and
/// the cell's own stage rules.
fn rule_set() -> &'static (RuleSet, Vec<(String, EventPattern)>) {
    static R: OnceLock<(RuleSet, Vec<(String, EventPattern)>)> = OnceLock::new();
    R.get_or_init(|| {
        let texts = [
            r#"{"detail": {"invoiceId": ["INV-2026-000123"]}}"#,
            r#"{"detail": {"invoiceId": [{"prefix": "INV-"}]}}"#,
            r#"{"detail": {"invoiceId": [{"suffix": "3"}]}}"#,
            r#"{"detail": {"vendor": {"name": [{"equals-ignore-case": "acme"}]}}}"#,
            r#"{"detail": {"invoiceId": [{"wildcard": "INV-*-0*"}]}}"#,
            r#"{"detail": {"currency": [{"anything-but": ["USD", "EUR"]}]}}"#,
            r#"{"detail": {"amount": [{"numeric": [">", 0, "<=", 1000]}]}}"#,
            r#"{"detail": {"vendor": {"taxId": [{"exists": false}]}}}"#,
            r#"{"detail": {"status": [null, true, 5, "posted"]}}"#,
            r#"{"source": ["bems.invoices"], "$or": [{"detail": {"stage": ["posting"]}}, {"detail": {"amount": [{"numeric": [">=", 5000]}]}}]}"#,
        ];
        let mut named: Vec<(String, EventPattern)> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("r{i}"), EventPattern::from_json(t).expect("a seed rule parses")))
            .collect();
        let spec = bems_core::routing::CellSpec::new(
            bems_core::fields::CellId::new("fuzz").expect("cell"),
            bems_core::fields::Region::new("eu-west-1").expect("region"),
            bems_core::fields::AccountId::new("123456789012").expect("account"),
            bems_core::partition::PartitionCount::new(4).expect("partitions"),
        )
        .expect("spec");
        for rule in spec.stage_rules() {
            named.push((rule.name.clone(), rule.pattern.clone()));
        }
        let set = RuleSet::new(named.clone()).expect("the rule set builds");
        (set, named)
    })
}

/// The rule index against the patterns one by one, on any event JSON.
pub fn rules(data: &[u8]) {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let (set, named) = rule_set();
    let indexed = set.matching(&event);
    let one_by_one: Vec<&str> = named.iter().filter(|(_, p)| p.matches(&event)).map(|(n, _)| n.as_str()).collect();
    assert_eq!(indexed, one_by_one, "the rule index must select exactly the matching rules");
    // From text, decoding only the fields the rules name: the same answer
    // whenever the whole text is JSON without duplicate keys.
    if let Ok(pruned) = set.matching_json(data)
        && !has_duplicate_keys(data)
    {
        assert_eq!(pruned, indexed, "matching_json must agree with matching");
    }
}

/// Whether any JSON object in `data` repeats a key (where parsers may
/// legitimately differ about which value wins).
fn has_duplicate_keys(data: &[u8]) -> bool {
    struct Check(bool);
    impl<'de> serde::de::DeserializeSeed<'de> for &mut Check {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> serde::de::Visitor<'de> for &mut Check {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(&mut *self)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut keys = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !keys.insert(key) {
                    self.0 = true;
                }
                map.next_value_seed(&mut *self)?;
            }
            Ok(())
        }
    }
    let mut check = Check(false);
    let mut de = serde_json::Deserializer::from_slice(data);
    let _ = serde::de::DeserializeSeed::deserialize(&mut check, &mut de);
    check.0
}
