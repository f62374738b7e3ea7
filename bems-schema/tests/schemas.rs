//! The committed schemas are current, valid draft-04, and agree with the
//! Rust validator on every case of the shared fixture corpus.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use bems_core::{Code, Stage, Validator};
use serde::Deserialize;
use serde_json::Value;

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bems-core/fixtures").join(kind)
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn compile(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft4::new(schema).expect("schema compiles as draft-04")
}

/// Regenerates every schema and compares it with the committed file.
/// `BEMS_UPDATE_SCHEMAS=1` writes the files instead.
#[test]
fn committed_schemas_are_what_the_types_generate() {
    let update = std::env::var_os("BEMS_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    let generated = bems_schema::all_schemas().expect("schemas generate");
    for (name, schema) in &generated {
        let path = schema_dir().join(name);
        let text = bems_schema::render(schema);
        if update {
            fs::write(&path, &text).expect("write schema");
        } else if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(name.clone());
        }
    }
    let expected: BTreeSet<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    let committed: BTreeSet<String> =
        json_files(&schema_dir()).iter().filter_map(|p| p.file_name()?.to_str().map(str::to_owned)).collect();
    assert_eq!(committed, expected, "bems-schema/schemas/ holds other files than the generator writes");
    assert!(
        stale.is_empty(),
        "stale schema files {stale:?}: run `BEMS_UPDATE_SCHEMAS=1 cargo test -p bems-schema` and commit the result"
    );
}

#[test]
fn schemas_are_valid_draft04_documents() {
    for (name, schema) in bems_schema::all_schemas().expect("schemas generate") {
        assert!(jsonschema::draft4::meta::is_valid(&schema), "{name} is not a valid draft-04 schema");
        assert_eq!(schema["$schema"], bems_schema::DRAFT_04, "{name}");
        assert!(!bems_schema::render(&schema).contains("$ref"), "{name}: API Gateway models cannot use local $refs");
    }
}

/// One invalid case of the corpus.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InvalidCase {
    description: String,
    /// `path: code` pairs the Rust validator must report, no more, no less.
    expect: Vec<String>,
    /// Set when JSON Schema cannot express the rule; says why.
    beyond_schema: Option<String>,
    /// The event as JSON, or...
    event: Option<Box<serde_json::value::RawValue>>,
    /// ...as raw text, for bodies that are not JSON or not canonical.
    event_text: Option<String>,
}

impl InvalidCase {
    fn body(&self) -> &str {
        match (&self.event, &self.event_text) {
            (Some(raw), None) => raw.get(),
            (None, Some(text)) => text,
            _ => panic!("a case has exactly one of event and eventText"),
        }
    }
}

#[test]
fn both_validators_accept_every_valid_fixture() {
    let event_schema = compile(&bems_schema::event_schema().expect("generates"));
    let files = json_files(&corpus_dir("valid"));
    assert!(files.len() >= 15, "the valid corpus shrank to {}", files.len());
    for path in files {
        let name = path.display();
        let text = fs::read_to_string(&path).expect("readable");
        let event = Validator::default().parse(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: Rust refused: {e}"));
        let value: Value = serde_json::from_str(&text).expect("JSON");
        let errors: Vec<String> =
            event_schema.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{name}: event schema refused: {errors:#?}");
        let stage_schema = compile(&bems_schema::request_schema(event.stage).expect("generates"));
        assert!(stage_schema.is_valid(&value), "{name}: the {} request schema refused it", event.stage);
        for other in Stage::ALL.into_iter().filter(|s| *s != event.stage) {
            let other_schema = compile(&bems_schema::request_schema(other).expect("generates"));
            assert!(!other_schema.is_valid(&value), "{name}: the {other} endpoint accepted a {} event", event.stage);
        }
    }
}

#[test]
fn both_validators_refuse_every_invalid_fixture() {
    let schema = compile(&bems_schema::event_schema().expect("generates"));
    let files = json_files(&corpus_dir("invalid"));
    assert!(files.len() >= 40, "the invalid corpus has {} cases; the issue asks for at least 40", files.len());
    let mut covered = BTreeSet::new();
    let mut disagreements = Vec::new();
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let case: InvalidCase = serde_json::from_str(&fs::read_to_string(path).expect("readable"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!case.description.is_empty(), "{name}: describe the case");

        let rust = Validator::default().parse(case.body().as_bytes());
        let got: BTreeSet<String> = match &rust {
            Ok(_) => BTreeSet::new(),
            Err(v) => v.as_slice().iter().map(|v| format!("{}: {}", v.path, v.code)).collect(),
        };
        let want: BTreeSet<String> = case.expect.iter().cloned().collect();
        assert_eq!(got, want, "{name}: Rust validator reported other problems ({})", case.description);
        if let Err(v) = rust {
            covered.extend(v.as_slice().iter().map(|v| v.code));
        }

        // The schema sees what API Gateway sees: the parsed body.
        let schema_ok = match serde_json::from_str::<Value>(case.body()) {
            Ok(value) => schema.is_valid(&value),
            Err(_) => false, // API Gateway answers 400 before any model check.
        };
        match (&case.beyond_schema, schema_ok) {
            (None, false) | (Some(_), true) => {}
            (None, true) => disagreements.push(format!("{name}: JSON Schema accepted it ({})", case.description)),
            (Some(why), false) => disagreements
                .push(format!("{name}: marked beyondSchema ({why}) but JSON Schema refused it: drop the mark")),
        }
    }
    assert!(disagreements.is_empty(), "validators disagree:\n{}", disagreements.join("\n"));
    let missing: Vec<&str> = Code::ALL.iter().filter(|c| !covered.contains(c)).map(|c| c.as_str()).collect();
    assert!(missing.is_empty(), "no invalid fixture exercises {missing:?}");
}

mod patterns {
    //! Each text rule is written twice: a hand-written check (what runs) and
    //! a JSON Schema pattern (what API Gateway runs). Random strings must get
    //! the same verdict from both.

    use bems_core::fields::{
        AccountId, CellId, CorrelationId, InvoiceId, Producer, Reason, Region, TaxId, TextRule, VendorId, VendorName,
    };
    use bems_core::validate::{DATE_PATTERN, TIMESTAMP_PATTERN, parse_date, parse_timestamp};
    use proptest::prelude::*;
    use serde_json::json;

    fn string_schema(rule: &TextRule) -> jsonschema::Validator {
        super::compile(&json!({
            "type": "string", "minLength": rule.min_chars, "maxLength": rule.max_chars, "pattern": rule.pattern,
        }))
    }

    /// Strings near the rules' edges: the characters the rules care about,
    /// plus a few they refuse, and lengths around the limits.
    fn edgy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9._:/#=+ -]{0,70}",
            "[a-z0-9-]{0,24}",
            "[a-z]{2}(-[a-z]{1,8}){1,3}-[0-9]{1,3}",
            "[0-9]{10,14}",
            "[\\x00-\\x1f\\x7f-\\x9f]?[a-zA-Zé日 ]{0,3}[\\x00-\\x1f\\x7f-\\x9f]?",
            ".{0,210}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn text_rules_and_patterns_agree(s in edgy()) {
            let rules = [
                ("InvoiceId", InvoiceId::RULE), ("VendorId", VendorId::RULE), ("VendorName", VendorName::RULE),
                ("TaxId", TaxId::RULE), ("Reason", Reason::RULE), ("CorrelationId", CorrelationId::RULE),
                ("Producer", Producer::RULE), ("CellId", CellId::RULE), ("Region", Region::RULE),
                ("AccountId", AccountId::RULE),
            ];
            for (name, rule) in rules {
                let schema = string_schema(&rule).is_valid(&json!(s));
                prop_assert_eq!(rule.check(&s).is_ok(), schema, "{} disagrees on {:?}", name, s);
            }
        }

        #[test]
        fn event_id_pattern_agrees(s in "[0-9a-fA-F-]{30,40}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}") {
            let schema = super::compile(&json!({ "type": "string", "pattern": bems_core::fields::EventId::PATTERN }));
            prop_assert_eq!(bems_core::fields::EventId::parse(&s).is_ok(), schema.is_valid(&json!(s)), "{:?}", s);
        }

        /// The pattern checks the shape; Rust also checks the calendar. So:
        /// pattern refuses ⇒ Rust refuses; pattern accepts ⇒ Rust accepts,
        /// or refuses for a day the calendar lacks.
        #[test]
        fn timestamp_and_date_patterns_agree(
            y in 1000_u32..3000, mo in 0_u32..14, d in 0_u32..33, h in 0_u32..26, mi in 0_u32..62, se in 0_u32..62,
            frac in "(\\.[0-9]{0,10})?", zone in "Z|z|\\+0[0-9]:00|-05:30|",
        ) {
            let date = format!("{y:04}-{mo:02}-{d:02}");
            let ts = format!("{date}T{h:02}:{mi:02}:{se:02}{frac}{zone}");
            let ts_schema = super::compile(&json!({ "type": "string", "pattern": TIMESTAMP_PATTERN }));
            let date_schema = super::compile(&json!({ "type": "string", "pattern": DATE_PATTERN }));
            let calendar_ok = chrono::NaiveDate::from_ymd_opt(y as i32, mo, d).is_some();
            prop_assert_eq!(parse_timestamp(&ts).is_ok(), ts_schema.is_valid(&json!(ts)) && calendar_ok, "{}", ts);
            prop_assert_eq!(parse_date(&date).is_ok(), date_schema.is_valid(&json!(date)) && calendar_ok, "{}", date);
        }
    }
}
