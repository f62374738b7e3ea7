//! # bems-schema
//!
//! JSON Schemas for the BEMS invoice event, generated from the `bems-core`
//! types with [`schemars`] and lowered to JSON Schema draft-04, the dialect
//! API Gateway request models use.
//!
//! The generated files are committed under `bems-schema/schemas/` so that
//! API Gateway, `infra/` and other languages can use them without Rust. A
//! test regenerates them and fails when the committed copy differs; run
//! `BEMS_UPDATE_SCHEMAS=1 cargo test -p bems-schema` after changing a type.
//!
//! | file | what |
//! |---|---|
//! | `invoice-event.v1.json` | the full event, any stage |
//! | `<stage>-request.v1.json` | the body of `POST /invoices/<stage>`: the event with `stage` fixed |
//!
//! What the schemas cannot check, the Rust validator does: duplicate keys,
//! calendar validity of dates, the due date arithmetic and the clock. The
//! fixture corpus in `bems-core/fixtures` marks those cases and the tests
//! prove both validators agree on every other case.

use bems_core::{InvoiceEvent, Stage};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

/// The `$schema` URI of draft-04.
pub const DRAFT_04: &str = "http://json-schema.org/draft-04/schema#";

/// Why a schema could not be lowered to draft-04.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The generated schema uses a keyword draft-04 does not have.
    #[error("keyword '{keyword}' at '{path}' has no draft-04 equivalent")]
    Unsupported {
        /// The keyword.
        keyword: String,
        /// Where, as a JSON pointer.
        path: String,
    },
}

/// The schema of the full invoice event, as draft-04.
pub fn event_schema() -> Result<Value, SchemaError> {
    let settings = SchemaSettings::draft07().with(|s| {
        // API Gateway models may only `$ref` other models by URL: inline all.
        s.inline_subschemas = true;
    });
    let mut root = settings.into_generator().into_root_schema_for::<InvoiceEvent>().to_value();
    wire_form(&mut root);
    to_draft04(root)
}

/// Adapts what schemars derives to the wire form, which has no `null`
/// values (an optional field is absent, never `null`, as the Rust validator
/// insists) and no defaults (a derived field such as `dueDate` is computed,
/// not defaulted).
fn wire_form(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("default");
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    let only = only.clone();
                    map.insert("type".into(), only);
                }
            }
            // `Option<T>` of a referenced type: `anyOf: [T, {"type": "null"}]`.
            if let Some(Value::Array(branches)) = map.get("anyOf")
                && let [inner, null] = branches.as_slice()
                && null == &json!({ "type": "null" })
                && let Value::Object(inner) = inner.clone()
            {
                map.remove("anyOf");
                for (k, v) in inner {
                    map.entry(k).or_insert(v);
                }
            }
            map.values_mut().for_each(wire_form);
        }
        Value::Array(items) => items.iter_mut().for_each(wire_form),
        _ => {}
    }
}

/// The request body schema of `POST /invoices/<stage>`: the event whose
/// `stage` is fixed, with only the transitions that stage's events make.
pub fn request_schema(stage: Stage) -> Result<Value, SchemaError> {
    let mut schema = event_schema()?;
    let name = stage.as_str();
    let title = format!("Invoice{}{}Request", name[..1].to_uppercase(), &name[1..]);
    schema["title"] = json!(title);
    schema["description"] = json!(format!(
        "Body of POST /invoices/{name}: an invoice event handed to the {name} stage (schema version {}).",
        bems_core::SCHEMA_VERSION
    ));
    schema["properties"]["stage"] = json!({
        "description": "The stage this event is handed to: always the endpoint's stage.",
        "type": "string",
        "enum": [name],
    });
    if let Some(Value::Array(branches)) = schema.pointer_mut("/allOf/0/anyOf") {
        branches.retain(|b| b.pointer("/properties/stage/enum/0") == Some(&json!(name)));
    }
    Ok(schema)
}

/// Every schema file: `(file name, schema)`, in a stable order.
pub fn all_schemas() -> Result<Vec<(String, Value)>, SchemaError> {
    let mut files = vec![("invoice-event.v1.json".to_owned(), event_schema()?)];
    for stage in Stage::ALL {
        files.push((format!("{stage}-request.v1.json"), request_schema(stage)?));
    }
    Ok(files)
}

/// The committed text of a schema: pretty-printed, newline-terminated.
pub fn render(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Lowers a draft-07 schema to draft-04: `exclusiveMinimum`/`Maximum`
/// become booleans beside `minimum`/`maximum`, `const` becomes a one-value
/// `enum`, and any keyword draft-04 lacks is an error rather than silently
/// ignored by API Gateway.
pub fn to_draft04(mut schema: Value) -> Result<Value, SchemaError> {
    lower(&mut schema, "")?;
    if let Value::Object(map) = &mut schema {
        map.insert("$schema".into(), json!(DRAFT_04));
        // Inlined subschemas leave nothing to define.
        if map.get("definitions").is_some_and(|d| d.as_object().is_some_and(Map::is_empty)) {
            map.remove("definitions");
        }
    }
    Ok(schema)
}

/// Keywords added after draft-04.
const LATER_KEYWORDS: &[&str] = &[
    "$defs",
    "$anchor",
    "$comment",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "unevaluatedProperties",
    "unevaluatedItems",
    "prefixItems",
    "examples",
    "contentEncoding",
    "contentMediaType",
    "readOnly",
    "writeOnly",
    "deprecated",
];

fn lower(value: &mut Value, path: &str) -> Result<(), SchemaError> {
    match value {
        Value::Object(map) => {
            if let Some(keyword) = LATER_KEYWORDS.iter().find(|k| map.contains_key(**k)) {
                return Err(SchemaError::Unsupported { keyword: (*keyword).to_owned(), path: path.to_owned() });
            }
            if let Some(c) = map.remove("const") {
                map.insert("enum".into(), json!([c]));
            }
            for (exclusive, inclusive) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
                if let Some(bound) = map.get(exclusive).filter(|v| v.is_number()).cloned() {
                    map.insert(inclusive.into(), bound);
                    map.insert(exclusive.into(), json!(true));
                }
            }
            for (key, child) in map.iter_mut() {
                // `properties` maps names to schemas: recurse into each, but the
                // names themselves are not keywords.
                if key == "properties" || key == "definitions" {
                    if let Value::Object(props) = child {
                        for (name, schema) in props.iter_mut() {
                            lower(schema, &format!("{path}/{key}/{name}"))?;
                        }
                    }
                } else if key != "enum" {
                    lower(child, &format!("{path}/{key}"))?;
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                lower(item, &format!("{path}/{i}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_bounds_and_const_are_lowered() {
        let lowered = to_draft04(json!({
            "type": "object",
            "properties": {
                "a": { "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10 },
                "b": { "const": "x" },
                "if": { "type": "string" },
            },
        }))
        .expect("lowers");
        assert_eq!(
            lowered["properties"]["a"],
            json!({ "type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 10, "exclusiveMaximum": true })
        );
        assert_eq!(lowered["properties"]["b"], json!({ "enum": ["x"] }));
        // A property *named* like a keyword is fine.
        assert_eq!(lowered["properties"]["if"], json!({ "type": "string" }));
        assert_eq!(lowered["$schema"], json!(DRAFT_04));
    }

    #[test]
    fn later_keywords_are_refused_with_their_place() {
        let err = to_draft04(json!({ "properties": { "x": { "if": {} } } })).unwrap_err();
        assert_eq!(err.to_string(), "keyword 'if' at '/properties/x' has no draft-04 equivalent");
    }

    #[test]
    fn request_schemas_fix_the_stage_and_keep_only_its_transitions() {
        let s = request_schema(Stage::Posting).expect("generates");
        assert_eq!(s["properties"]["stage"]["enum"], json!(["posting"]));
        let branches = s.pointer("/allOf/0/anyOf").and_then(Value::as_array).expect("transitions");
        // reconciled -> authorized, authorized -> posted, authorized -> rejected.
        assert_eq!(branches.len(), 3);
        assert_eq!(s["title"], json!("InvoicePostingRequest"));
    }
}
