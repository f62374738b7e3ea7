//! Event patterns and filter policies: every operator matches, refuses to
//! match, and refuses invalid input, with AWS's semantics.
//!
//! Where a case encodes a subtle rule, the comment names its source: the
//! EventBridge user guide ("Content filtering in Amazon EventBridge event
//! patterns", "Event pattern syntax"), the SNS developer guide ("Amazon SNS
//! message filtering") or AWS's event-ruler README, which EventBridge runs.

use bems_core::routing::{EventPattern, FilterPolicy, FilterPolicyScope, Match, PatternErrorKind, RuleSet};
use proptest::prelude::*;
use serde_json::{Value, json};

#[track_caller]
#[allow(clippy::needless_pass_by_value)] // call sites read better with `json!(..)` by value
fn check(pattern: &str, event: Value, expected: bool) {
    let p = EventPattern::from_json(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
    assert_eq!(p.matches(&event), expected, "pattern {pattern} on event {event}");
}

#[track_caller]
fn invalid(pattern: &str, path: &str) -> PatternErrorKind {
    let e = EventPattern::from_json(pattern).expect_err(pattern);
    assert_eq!(e.path, path, "{pattern}: {e}");
    e.kind
}

#[test]
fn exact_values_of_every_json_type() {
    check(r#"{"a": ["x"]}"#, json!({"a": "x"}), true);
    check(r#"{"a": ["x"]}"#, json!({"a": "X"}), false);
    check(r#"{"a": [5]}"#, json!({"a": 5}), true);
    // Numbers compare by value: 5, 5.0 and 5e0 are one number.
    check(r#"{"a": [5]}"#, json!({"a": 5.0}), true);
    check(r#"{"a": [5e0]}"#, json!({"a": 5}), true);
    check(r#"{"a": [5]}"#, json!({"a": "5"}), false);
    check(r#"{"a": ["5"]}"#, json!({"a": 5}), false);
    check(r#"{"a": [null]}"#, json!({"a": null}), true);
    check(r#"{"a": [null]}"#, json!({}), false);
    check(r#"{"a": [true]}"#, json!({"a": true}), true);
    check(r#"{"a": [true]}"#, json!({"a": "true"}), false);
    check(r#"{"a": [""]}"#, json!({"a": ""}), true);
    check(r#"{"a": ["x", "y"]}"#, json!({"a": "y"}), true);
    check(r#"{"a": ["x"]}"#, json!({}), false);
}

#[test]
fn arrays_in_the_event_match_on_a_shared_value() {
    check(r#"{"resources": ["arn:1"]}"#, json!({"resources": ["arn:0", "arn:1"]}), true);
    check(r#"{"resources": ["arn:1", "arn:9"]}"#, json!({"resources": ["arn:0", "arn:2"]}), false);
    check(r#"{"a": ["x"]}"#, json!({"a": []}), false);
    check(r#"{"a": ["x"]}"#, json!({"a": [["x"]]}), true);
}

#[test]
fn nested_objects_follow_the_event_structure() {
    check(r#"{"detail": {"stage": ["posting"]}}"#, json!({"detail": {"stage": "posting"}}), true);
    check(r#"{"detail": {"stage": ["posting"]}}"#, json!({"detail": {"stage": {"x": "posting"}}}), false);
    check(r#"{"detail": {"stage": ["posting"]}}"#, json!({"stage": "posting"}), false);
    check(r#"{"detail": {"stage": ["posting"]}}"#, json!({"detail": "posting"}), false);
}

#[test]
fn arrays_of_objects_match_within_one_element() {
    let p = r#"{"lines": {"sku": ["A"], "qty": [2]}}"#;
    check(p, json!({"lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}]}), true);
    // sku from the first element, qty from the second: no match.
    check(p, json!({"lines": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}]}), false);
    let deep = r#"{"a": {"b": {"c": ["x"], "d": ["y"]}}}"#;
    check(deep, json!({"a": [{"b": [{"c": "x", "d": "z"}, {"c": "z", "d": "y"}]}]}), false);
    check(deep, json!({"a": [{"b": [{"c": "z"}]}, {"b": [{"c": "x", "d": "y"}]}]}), true);
}

#[test]
fn prefix_and_suffix_with_and_without_case() {
    check(r#"{"a": [{"prefix": "INV-"}]}"#, json!({"a": "INV-1"}), true);
    check(r#"{"a": [{"prefix": "INV-"}]}"#, json!({"a": "inv-1"}), false);
    check(r#"{"a": [{"prefix": {"equals-ignore-case": "INV-"}}]}"#, json!({"a": "inv-1"}), true);
    check(r#"{"a": [{"prefix": ""}]}"#, json!({"a": "anything"}), true);
    check(r#"{"a": [{"prefix": "1"}]}"#, json!({"a": 12}), false); // strings only
    check(r#"{"a": [{"suffix": ".fifo"}]}"#, json!({"a": "q.fifo"}), true);
    check(r#"{"a": [{"suffix": ".fifo"}]}"#, json!({"a": "q.FIFO"}), false);
    check(r#"{"a": [{"suffix": {"equals-ignore-case": ".fifo"}}]}"#, json!({"a": "q.FIFO"}), true);
    check(r#"{"a": [{"suffix": {"equals-ignore-case": "ÉTÉ"}}]}"#, json!({"a": "bel été"}), true);
    assert!(matches!(
        invalid(r#"{"a": [{"prefix": 5}]}"#, "a"),
        PatternErrorKind::BadOperand { operator: "prefix", .. }
    ));
    assert!(matches!(invalid(r#"{"a": [{"suffix": {"x": "y"}}]}"#, "a"), PatternErrorKind::BadOperand { .. }));
}

#[test]
fn equals_ignore_case() {
    check(r#"{"a": [{"equals-ignore-case": "Posting"}]}"#, json!({"a": "POSTING"}), true);
    check(r#"{"a": [{"equals-ignore-case": "Posting"}]}"#, json!({"a": "Postings"}), false);
    check(r#"{"a": [{"equals-ignore-case": "ÉTÉ"}]}"#, json!({"a": "été"}), true);
    assert!(matches!(invalid(r#"{"a": [{"equals-ignore-case": ["x"]}]}"#, "a"), PatternErrorKind::BadOperand { .. }));
}

#[test]
fn wildcards_with_escapes() {
    check(r#"{"a": [{"wildcard": "arn:*:queue/*.fifo"}]}"#, json!({"a": "arn:aws:queue/x.fifo"}), true);
    check(r#"{"a": [{"wildcard": "arn:*:queue/*.fifo"}]}"#, json!({"a": "arn:aws:topic/x.fifo"}), false);
    check(r#"{"a": [{"wildcard": "*"}]}"#, json!({"a": ""}), true);
    check(r#"{"a": [{"wildcard": "a*a"}]}"#, json!({"a": "a"}), false);
    check(r#"{"a": [{"wildcard": "a*a"}]}"#, json!({"a": "aa"}), true);
    check(r#"{"a": [{"wildcard": "*ab*ab"}]}"#, json!({"a": "xabyab"}), true);
    check(r#"{"a": [{"wildcard": "*ab*ab"}]}"#, json!({"a": "xab"}), false);
    check(r#"{"a": [{"wildcard": "no-star"}]}"#, json!({"a": "no-star"}), true);
    check(r#"{"a": [{"wildcard": "5\\*"}]}"#, json!({"a": "5*"}), true);
    check(r#"{"a": [{"wildcard": "5\\*"}]}"#, json!({"a": "50"}), false);
    check(r#"{"a": [{"wildcard": "c:\\\\*"}]}"#, json!({"a": "c:\\tmp"}), true);
    assert!(matches!(invalid(r#"{"a": [{"wildcard": "a**b"}]}"#, "a"), PatternErrorKind::BadWildcard(..)));
    assert!(matches!(invalid(r#"{"a": [{"wildcard": "a\\b"}]}"#, "a"), PatternErrorKind::BadWildcard(..)));
    assert!(matches!(invalid(r#"{"a": [{"wildcard": "a\\"}]}"#, "a"), PatternErrorKind::BadWildcard(..)));
}

#[test]
fn anything_but_in_all_its_forms() {
    check(r#"{"a": [{"anything-but": "x"}]}"#, json!({"a": "y"}), true);
    check(r#"{"a": [{"anything-but": "x"}]}"#, json!({"a": "x"}), false);
    // Never matches a missing field (EventBridge user guide).
    check(r#"{"a": [{"anything-but": "x"}]}"#, json!({}), false);
    check(r#"{"a": [{"anything-but": ["x", "y"]}]}"#, json!({"a": "z"}), true);
    check(r#"{"a": [{"anything-but": ["x", "y"]}]}"#, json!({"a": "y"}), false);
    check(r#"{"a": [{"anything-but": [100, 200]}]}"#, json!({"a": 300}), true);
    check(r#"{"a": [{"anything-but": [100, 200]}]}"#, json!({"a": 200.0}), false);
    check(r#"{"a": [{"anything-but": 5}]}"#, json!({"a": 5}), false);
    check(r#"{"a": [{"anything-but": {"prefix": "init"}}]}"#, json!({"a": "running"}), true);
    check(r#"{"a": [{"anything-but": {"prefix": "init"}}]}"#, json!({"a": "initializing"}), false);
    check(r#"{"a": [{"anything-but": {"prefix": ["init", "err"]}}]}"#, json!({"a": "error"}), false);
    check(r#"{"a": [{"anything-but": {"suffix": ".tmp"}}]}"#, json!({"a": "x.tmp"}), false);
    check(r#"{"a": [{"anything-but": {"suffix": ".tmp"}}]}"#, json!({"a": "x.csv"}), true);
    check(r#"{"a": [{"anything-but": {"equals-ignore-case": ["Stopped"]}}]}"#, json!({"a": "STOPPED"}), false);
    check(r#"{"a": [{"anything-but": {"equals-ignore-case": "Stopped"}}]}"#, json!({"a": "running"}), true);
    check(r#"{"a": [{"anything-but": {"wildcard": "*/bin/*.jar"}}]}"#, json!({"a": "/usr/bin/x.jar"}), false);
    check(r#"{"a": [{"anything-but": {"wildcard": ["*.jar", "*.class"]}}]}"#, json!({"a": "x.py"}), true);
    // An array field matches when one of its values is not excluded.
    check(r#"{"a": [{"anything-but": "x"}]}"#, json!({"a": ["x", "y"]}), true);
    check(r#"{"a": [{"anything-but": "x"}]}"#, json!({"a": ["x"]}), false);
    assert_eq!(invalid(r#"{"a": [{"anything-but": ["x", 1]}]}"#, "a"), PatternErrorKind::MixedAnythingBut);
    assert_eq!(invalid(r#"{"a": [{"anything-but": [true]}]}"#, "a"), PatternErrorKind::MixedAnythingBut);
    assert_eq!(invalid(r#"{"a": [{"anything-but": []}]}"#, "a"), PatternErrorKind::EmptyArray);
    assert!(matches!(
        invalid(r#"{"a": [{"anything-but": {"numeric": [">", 1]}}]}"#, "a"),
        PatternErrorKind::UnknownOperator(_)
    ));
    assert!(matches!(invalid(r#"{"a": [{"anything-but": {"prefix": 1}}]}"#, "a"), PatternErrorKind::BadOperand { .. }));
}

#[test]
fn numeric_ranges() {
    let p = r#"{"n": [{"numeric": [">", 0, "<=", 5]}]}"#;
    check(p, json!({"n": 5}), true);
    check(p, json!({"n": 0.000001}), true);
    check(p, json!({"n": 0}), false);
    check(p, json!({"n": 5.0000001}), true); // beyond six decimals: equal to 5 (EventBridge precision)
    check(p, json!({"n": 5.000001}), false);
    check(p, json!({"n": "3"}), false); // JSON numbers only
    check(r#"{"n": [{"numeric": ["=", 3.018e2]}]}"#, json!({"n": 301.8}), true);
    check(r#"{"n": [{"numeric": ["<", 10]}]}"#, json!({"n": -1e9}), true);
    // Event values outside ±1e9 never match a numeric condition.
    check(r#"{"n": [{"numeric": ["<", 10]}]}"#, json!({"n": -2e9}), false);
    check(r#"{"n": [{"numeric": [">=", 1e9]}]}"#, json!({"n": 1e9}), true);
    check(r#"{"n": [{"numeric": [">", 1]}]}"#, json!({"n": [0, 2]}), true);
    for (pattern, why) in [
        (r#"{"n": [{"numeric": []}]}"#, "empty"),
        (r#"{"n": [{"numeric": [">"]}]}"#, "operator without number"),
        (r#"{"n": [{"numeric": [">", "5"]}]}"#, "number as string"),
        (r#"{"n": [{"numeric": ["!=", 5]}]}"#, "unknown operator"),
        (r#"{"n": [{"numeric": [">", 1, ">", 2]}]}"#, "two lower bounds"),
        (r#"{"n": [{"numeric": ["=", 1, "<", 2]}]}"#, "= with another"),
        (r#"{"n": [{"numeric": [">", 5, "<", 5]}]}"#, "empty range"),
        (r#"{"n": [{"numeric": [">", 0, "<", 1, "<", 2]}]}"#, "odd length"),
        (r#"{"n": [{"numeric": 5}]}"#, "not a list"),
    ] {
        assert!(matches!(invalid(pattern, "n"), PatternErrorKind::MalformedNumeric(_)), "{why}");
    }
    assert!(matches!(invalid(r#"{"n": [{"numeric": [">", 5e9]}]}"#, "n"), PatternErrorKind::NumberOutOfRange(_)));
}

#[test]
fn exists_looks_at_leaves_only() {
    check(r#"{"a": [{"exists": true}]}"#, json!({"a": 1}), true);
    check(r#"{"a": [{"exists": true}]}"#, json!({"a": null}), true);
    check(r#"{"a": [{"exists": true}]}"#, json!({}), false);
    check(r#"{"a": [{"exists": false}]}"#, json!({}), true);
    check(r#"{"a": [{"exists": false}]}"#, json!({"a": "x"}), false);
    // An object is not a leaf: exists:false matches it (event-ruler README).
    check(r#"{"a": [{"exists": false}]}"#, json!({"a": {"b": 1}}), true);
    check(r#"{"a": [{"exists": true}]}"#, json!({"a": {"b": 1}}), false);
    check(r#"{"a": [{"exists": true}]}"#, json!({"a": []}), false);
    check(r#"{"x": {"a": [{"exists": false}]}}"#, json!({"y": 1}), true);
    assert_eq!(invalid(r#"{"a": [{"exists": "true"}]}"#, "a"), PatternErrorKind::ExistsNotBoolean);
}

#[test]
fn cidr_for_ipv4_and_ipv6() {
    check(r#"{"ip": [{"cidr": "10.0.0.0/24"}]}"#, json!({"ip": "10.0.0.255"}), true);
    check(r#"{"ip": [{"cidr": "10.0.0.0/24"}]}"#, json!({"ip": "10.0.1.0"}), false);
    check(r#"{"ip": [{"cidr": "0.0.0.0/0"}]}"#, json!({"ip": "203.0.113.7"}), true);
    check(r#"{"ip": [{"cidr": "203.0.113.7"}]}"#, json!({"ip": "203.0.113.7"}), true);
    check(r#"{"ip": [{"cidr": "2001:db8::/32"}]}"#, json!({"ip": "2001:db8:ffff::1"}), true);
    check(r#"{"ip": [{"cidr": "2001:db8::/32"}]}"#, json!({"ip": "2001:db9::1"}), false);
    check(r#"{"ip": [{"cidr": "10.0.0.0/8"}]}"#, json!({"ip": "::ffff:10.0.0.1"}), false);
    check(r#"{"ip": [{"cidr": "10.0.0.0/8"}]}"#, json!({"ip": "not an ip"}), false);
    for bad in ["10.0.0.0/33", "10.0.0/8", "2001:db8::/129", "10.0.0.0/", "x", "10.0.0.0/-1"] {
        let p = format!(r#"{{"ip": [{{"cidr": "{bad}"}}]}}"#);
        assert!(matches!(invalid(&p, "ip"), PatternErrorKind::BadCidr(_)), "{bad}");
    }
}

#[test]
fn or_at_any_level() {
    let p = r#"{"source": ["bems.invoices"], "$or": [{"a": ["1"]}, {"b": ["2"], "c": ["3"]}]}"#;
    check(p, json!({"source": "bems.invoices", "a": "1"}), true);
    check(p, json!({"source": "bems.invoices", "b": "2", "c": "3"}), true);
    check(p, json!({"source": "bems.invoices", "b": "2"}), false);
    check(p, json!({"source": "other", "a": "1"}), false);
    let nested = r#"{"detail": {"$or": [{"stage": ["posting"]}, {"amount": [{"numeric": [">", 100]}], "$or": [{"x": ["1"]}, {"y": ["1"]}]}]}}"#;
    check(nested, json!({"detail": {"stage": "posting"}}), true);
    check(nested, json!({"detail": {"amount": 500, "y": "1"}}), true);
    check(nested, json!({"detail": {"amount": 500}}), false);
    // "$or" that is not an array of ≥2 plain objects stays a field name (event-ruler README).
    check(r#"{"$or": ["x"]}"#, json!({"$or": "x"}), true);
    // An invalid alternative is reported inside the $or.
    assert_eq!(
        invalid(r#"{"$or": [{"a": "x"}, {"b": ["y"]}]}"#, "$or[0].a"),
        PatternErrorKind::LeafNotArray("a string")
    );
    assert_eq!(
        invalid(r#"{"$or": [{"a": [{"exists": 1}]}, {"b": ["y"]}]}"#, "$or[0].a"),
        PatternErrorKind::ExistsNotBoolean
    );
}

#[test]
fn structural_errors_say_where_and_why() {
    assert_eq!(
        invalid(r#"{"detail": {"stage": "posting"}}"#, "detail.stage"),
        PatternErrorKind::LeafNotArray("a string")
    );
    assert_eq!(invalid(r#"{"a": []}"#, "a"), PatternErrorKind::EmptyArray);
    assert_eq!(invalid(r#"{}"#, "$"), PatternErrorKind::Empty);
    assert_eq!(invalid(r#"{"a": {}}"#, "a"), PatternErrorKind::Empty);
    assert_eq!(invalid(r#"["a"]"#, "$"), PatternErrorKind::NotAnObject);
    assert!(matches!(invalid(r#"{"a": ["#, "$"), PatternErrorKind::InvalidJson(_)));
    assert_eq!(invalid(r#"{"a": [{"contains": "x"}]}"#, "a"), PatternErrorKind::UnknownOperator("contains".into()));
    assert_eq!(invalid(r#"{"a": [{"prefix": "x", "suffix": "y"}]}"#, "a"), PatternErrorKind::OperatorArity(2));
    assert_eq!(invalid(r#"{"a": [["x"]]}"#, "a"), PatternErrorKind::LeafNotArray("a nested array"));
    let e = EventPattern::from_json(r#"{"detail": {"amount": [{"numeric": [">", "x"]}]}}"#).unwrap_err();
    assert_eq!(e.to_string(), "detail.amount: malformed numeric condition: each operator is followed by a number");
}

#[test]
fn builder_writes_what_the_parser_reads() {
    let built = EventPattern::builder()
        .field(&["source"], [Match::exact("bems.invoices")])
        .field(&["detail", "stage"], [Match::exact("posting"), Match::exact("authorization")])
        .field(&["detail", "amount"], [Match::numeric(&[(">", 0.0), ("<=", 5000.0)])])
        .field(&["detail", "vendor", "country"], [Match::anything_but(["XX"])])
        .any_of(
            &["detail"],
            [
                EventPattern::builder().field(&["currency"], [Match::exact("EUR")]),
                EventPattern::builder().field(&["reason"], [Match::exists(true)]),
            ],
        )
        .build()
        .expect("valid");
    let event = json!({"source": "bems.invoices", "detail": {"stage": "posting", "amount": 10, "currency": "EUR", "vendor": {"country": "DE"}}});
    assert!(built.matches(&event));
    assert_eq!(EventPattern::from_json(&built.to_json()).expect("parses"), built);
    let err = EventPattern::builder().field(&["a"], [Match::wildcard("**")]).build().unwrap_err();
    assert_eq!(err.path, "a");
    let err = EventPattern::builder().field(&["a"], []).build().unwrap_err();
    assert_eq!(err.kind, PatternErrorKind::EmptyArray);
}

// ------------------------------------------------------------ SNS

#[track_caller]
fn attrs(pairs: &[(&str, &str, &str)]) -> Value {
    let mut m = serde_json::Map::new();
    for (name, kind, value) in pairs {
        m.insert((*name).into(), json!({"Type": kind, "Value": value}));
    }
    Value::Object(m)
}

#[test]
fn attribute_policies_read_string_number_and_array_attributes() {
    let p = FilterPolicy::from_json(
        r#"{"stage": ["posting"], "partition": [{"numeric": [">=", 1, "<=", 16]}], "tags": ["urgent"]}"#,
        FilterPolicyScope::MessageAttributes,
    )
    .expect("valid");
    let ok = attrs(&[
        ("stage", "String", "posting"),
        ("partition", "Number", "7"),
        ("tags", "String.Array", r#"["urgent","eu"]"#),
    ]);
    assert!(p.matches(&Value::Null, &ok));
    let wrong_partition = attrs(&[
        ("stage", "String", "posting"),
        ("partition", "Number", "17"),
        ("tags", "String.Array", r#"["urgent"]"#),
    ]);
    assert!(!p.matches(&Value::Null, &wrong_partition));
    // A Number attribute written as a String does not satisfy a numeric condition.
    let as_string = attrs(&[
        ("stage", "String", "posting"),
        ("partition", "String", "7"),
        ("tags", "String.Array", r#"["urgent"]"#),
    ]);
    assert!(!p.matches(&Value::Null, &as_string));
    let missing_tags = attrs(&[("stage", "String", "posting"), ("partition", "Number", "7")]);
    assert!(!p.matches(&Value::Null, &missing_tags));
}

#[test]
fn attribute_policies_have_no_nesting_and_sns_operators_only() {
    let e =
        FilterPolicy::from_json(r#"{"detail": {"stage": ["x"]}}"#, FilterPolicyScope::MessageAttributes).unwrap_err();
    assert_eq!((e.path.as_str(), e.kind), ("detail", PatternErrorKind::NestingNotAllowed));
    let e = FilterPolicy::from_json(r#"{"a": [{"wildcard": "x*"}]}"#, FilterPolicyScope::MessageBody).unwrap_err();
    assert_eq!(e.kind, PatternErrorKind::Unsupported("wildcard"));
    let e =
        FilterPolicy::from_json(r#"{"a": [{"anything-but": {"suffix": "x"}}]}"#, FilterPolicyScope::MessageAttributes)
            .unwrap_err();
    assert_eq!(e.kind, PatternErrorKind::Unsupported("anything-but with suffix"));
    // Booleans and null are allowed (SNS filter policy constraints).
    assert!(FilterPolicy::from_json(r#"{"a": [true, null]}"#, FilterPolicyScope::MessageBody).is_ok());
}

#[test]
fn sns_differs_from_eventbridge_on_bare_numbers_and_null() {
    // Found by the LocalStack differential test; see its comments.
    let p = FilterPolicy::from_json(r#"{"price": [5.5]}"#, FilterPolicyScope::MessageAttributes).expect("valid");
    assert!(!p.matches(&Value::Null, &attrs(&[("price", "Number", "5.5")])));
    let p = FilterPolicy::from_json(r#"{"price": [{"numeric": ["=", 5.5]}]}"#, FilterPolicyScope::MessageAttributes)
        .expect("valid");
    assert!(p.matches(&Value::Null, &attrs(&[("price", "Number", "5.5")])));
    let p =
        FilterPolicy::from_json(r#"{"a": [{"anything-but": ["x"]}]}"#, FilterPolicyScope::MessageBody).expect("valid");
    assert!(!p.matches(&json!({"a": null}), &Value::Null));
    assert!(p.matches(&json!({"a": "y"}), &Value::Null));
    check(r#"{"a": [{"anything-but": ["x"]}]}"#, json!({"a": null}), true);
}

#[test]
fn body_policies_nest_and_match_the_json_body() {
    let p = FilterPolicy::from_json(
        r#"{"detail": {"stage": ["posting"], "amount": [{"numeric": [">", 100]}]}}"#,
        FilterPolicyScope::MessageBody,
    )
    .expect("valid");
    assert!(p.matches(&json!({"detail": {"stage": "posting", "amount": 101}}), &Value::Null));
    assert!(!p.matches(&json!({"detail": {"stage": "posting", "amount": 99}}), &Value::Null));
    assert!(!p.matches(&json!("not json"), &Value::Null));
}

#[test]
fn sns_limits_are_enforced_when_a_policy_is_built() {
    let six = r#"{"a": ["1"], "b": ["1"], "c": ["1"], "d": ["1"], "e": ["1"], "f": ["1"]}"#;
    let e = FilterPolicy::from_json(six, FilterPolicyScope::MessageAttributes).unwrap_err();
    assert!(matches!(e.kind, PatternErrorKind::Limit(ref m) if m.contains("at most 5 keys")), "{e}");
    // 10 × 16 = 160 combinations > 150.
    let values = |n: usize| (0..n).map(|i| format!("\"v{i}\"")).collect::<Vec<_>>().join(",");
    let big = format!(r#"{{"a": [{}], "b": [{}]}}"#, values(10), values(16));
    let e = FilterPolicy::from_json(&big, FilterPolicyScope::MessageAttributes).unwrap_err();
    assert!(matches!(e.kind, PatternErrorKind::Limit(ref m) if m.contains("160")), "{e}");
    let ok = format!(r#"{{"a": [{}], "b": [{}]}}"#, values(10), values(15));
    assert!(FilterPolicy::from_json(&ok, FilterPolicyScope::MessageAttributes).is_ok());
    // Keys inside a nested $or count too: 6 distinct leaf paths.
    let nested = r#"{"detail": {"a": ["1"], "b": ["1"], "$or": [{"c": ["1"], "d": ["1"]}, {"e": ["1"], "f": ["1"]}]}}"#;
    let e = FilterPolicy::from_json(nested, FilterPolicyScope::MessageBody).unwrap_err();
    assert!(matches!(e.kind, PatternErrorKind::Limit(ref m) if m.contains("has 6")), "{e}");
    // $or sums its alternatives: 2 × (3 + 4) = 14.
    let or = r#"{"a": ["1", "2"], "$or": [{"b": ["1", "2", "3"]}, {"c": ["1", "2", "3", "4"]}]}"#;
    assert!(FilterPolicy::from_json(or, FilterPolicyScope::MessageAttributes).is_ok());
}

// ------------------------------------------------------------ round trips

fn leaf() -> impl Strategy<Value = Match> {
    let s = "[a-zA-Z0-9 .:/-]{0,12}";
    prop_oneof![
        s.prop_map(Match::exact),
        (-1_000_000_i64..1_000_000).prop_map(Match::integer),
        s.prop_map(|x| Match::prefix(&x)),
        s.prop_map(|x| Match::suffix_ignore_case(&x)),
        s.prop_map(|x| Match::equals_ignore_case(&x)),
        "[a-z]{1,4}(\\*[a-z]{1,4}){0,3}".prop_map(|x| Match::wildcard(&x)),
        prop::collection::vec(s, 1..4).prop_map(Match::anything_but),
        s.prop_map(|x| Match::anything_but_prefix(&x)),
        (-1e6_f64..1e6, 0.5_f64..1e3).prop_map(|(lo, w)| Match::numeric(&[(">=", lo), ("<", lo + w)])),
        any::<bool>().prop_map(Match::exists),
        (0_u8..=255, 0_u8..=32).prop_map(|(a, p)| Match::cidr(&format!("10.{a}.0.0/{p}"))),
        Just(Match::null()),
    ]
}

proptest! {
    /// parse → serialize → parse is the identity, for any pattern the builder can make.
    #[test]
    fn patterns_round_trip(fields in prop::collection::vec(("[a-z]{1,3}", "[a-z]{1,3}", prop::collection::vec(leaf(), 1..4)), 1..5)) {
        let mut b = EventPattern::builder();
        for (outer, inner, matches) in fields {
            b = b.field(&[outer.as_str(), inner.as_str()], matches);
        }
        let p = b.build().expect("builder patterns are valid");
        let again = EventPattern::from_json(&p.to_json()).expect("serialized pattern parses");
        prop_assert_eq!(&again, &p);
        prop_assert_eq!(again.to_json(), p.to_json());
    }

    /// Matching never panics, whatever the event.
    #[test]
    fn matching_arbitrary_events_never_panics(event in arb_json(3)) {
        let p = EventPattern::from_json(r#"{"a": [{"prefix": "x"}, {"numeric": [">", 1]}, {"anything-but": "z"}], "b": {"c": [{"exists": false}]}, "$or": [{"d": [{"cidr": "10.0.0.0/8"}]}, {"e": [{"wildcard": "*x*"}]}]}"#).expect("valid");
        let _ = p.matches(&event);
    }
}

/// Small vocabularies so that random rules and events actually meet.
fn small_pattern() -> impl Strategy<Value = EventPattern> {
    let m = prop_oneof![
        "[ab]".prop_map(Match::exact),
        (0_i64..3).prop_map(Match::integer),
        "[ab]".prop_map(|x| Match::prefix(&x)),
        "[ab]{0,2}".prop_map(|x| Match::suffix(&x)),
        "[aAbB]{1,2}".prop_map(|x| Match::equals_ignore_case(&x)),
        any::<bool>().prop_map(Match::exists),
        Just(Match::numeric(&[(">", 0.5)])),
        "[ab]".prop_map(|x| Match::anything_but([x])),
    ];
    prop::collection::vec(
        (prop::sample::select(vec!["x", "y"]), prop::sample::select(vec!["p", "q"]), prop::collection::vec(m, 1..3)),
        1..3,
    )
    .prop_map(|fields| {
        let mut b = EventPattern::builder();
        for (outer, inner, ms) in fields {
            b = b.field(&[outer, inner], ms);
        }
        b.build().expect("valid")
    })
}

fn small_event() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        "[abAB]{1,2}".prop_map(Value::String),
        (0_i64..3).prop_map(|n| json!(n)),
        Just(Value::Null),
        prop::collection::vec("[ab]".prop_map(Value::String), 0..3).prop_map(Value::Array),
    ];
    let inner = prop::collection::btree_map(prop::sample::select(vec!["p", "q", "r"]), leaf, 0..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    let field = prop_oneof![inner.clone(), prop::collection::vec(inner, 0..3).prop_map(Value::Array)];
    prop::collection::btree_map(prop::sample::select(vec!["x", "y", "z"]), field, 0..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

proptest! {
    /// The indexed rule set finds exactly the rules a brute-force loop finds,
    /// from a parsed value and from raw JSON.
    #[test]
    fn ruleset_agrees_with_trying_every_rule(patterns in prop::collection::vec(small_pattern(), 1..20), events in prop::collection::vec(small_event(), 1..10)) {
        let named: Vec<(String, EventPattern)> = patterns.into_iter().enumerate().map(|(i, p)| (format!("r{i}"), p)).collect();
        let set = RuleSet::new(named.clone()).expect("unique names");
        for event in &events {
            let brute: Vec<&str> = named.iter().filter(|(_, p)| p.matches(event)).map(|(n, _)| n.as_str()).collect();
            prop_assert_eq!(&set.matching(event), &brute, "event {}", event);
            prop_assert_eq!(&set.matching_json(event.to_string().as_bytes()).expect("json"), &brute, "raw event {}", event);
        }
    }
}

fn arb_json(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        "[a-z0-9.:]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-e]", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
