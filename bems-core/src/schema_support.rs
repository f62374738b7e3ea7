//! JSON Schema pieces that derive cannot express (feature `schema`).
//!
//! The event-level rules are generated from the same tables the validator
//! uses ([`TRANSITIONS`], the currencies' minor units), so the schema cannot
//! drift from the code.

use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

use crate::lifecycle::TRANSITIONS;
use crate::money::Currency;
use crate::validate::{DATE_PATTERN, TIMESTAMP_PATTERN};

pub(crate) fn timestamp(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "pattern": TIMESTAMP_PATTERN })
}

pub(crate) fn date(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "pattern": DATE_PATTERN })
}

pub(crate) fn schema_version(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "integer", "enum": [crate::event::SCHEMA_VERSION] })
}

/// Adds to the event schema, under `allOf`:
/// - one branch per allowed transition (previous status, status, stage; a
///   reason when rejecting), so an illegal move fails the schema too;
/// - one branch per minor-unit group of currencies, with the amount's
///   `multipleOf` for that group;
/// - `previousOccurredAt` only with `previousStatus` (draft-04
///   `dependencies`).
pub(crate) fn event_rules(schema: &mut Schema) {
    let transitions: Vec<Value> = TRANSITIONS
        .iter()
        .map(|&(from, to, stage)| {
            let mut properties = json!({
                "status": { "enum": [to.as_str()] },
                "stage": { "enum": [stage.as_str()] },
            });
            let mut required = Vec::new();
            let mut branch = serde_json::Map::new();
            match from {
                Some(from) => {
                    properties["previousStatus"] = json!({ "enum": [from.as_str()] });
                    required.push("previousStatus");
                }
                None => {
                    branch.insert("not".into(), json!({ "required": ["previousStatus"] }));
                }
            }
            if to == crate::Status::Rejected {
                required.push("reason");
            }
            branch.insert("properties".into(), properties);
            if !required.is_empty() {
                branch.insert("required".into(), json!(required));
            }
            Value::Object(branch)
        })
        .collect();

    let mut groups: std::collections::BTreeMap<u32, Vec<&'static str>> = Default::default();
    for c in Currency::all() {
        groups.entry(c.minor_units()).or_default().push(c.code());
    }
    let currencies: Vec<Value> = groups
        .into_iter()
        .map(|(units, codes)| {
            // multipleOf 10^-units, written as the exact decimal literal.
            let step: Value = if units == 0 {
                json!(1)
            } else {
                serde_json::from_str(&format!("0.{}1", "0".repeat(units as usize - 1))).unwrap_or(json!(1))
            };
            json!({
                "properties": {
                    "currency": { "enum": codes },
                    "amount": { "multipleOf": step },
                }
            })
        })
        .collect();

    schema.insert("allOf".into(), json!([{ "anyOf": transitions }, { "anyOf": currencies }]));
    schema.insert("dependencies".into(), json!({ "previousOccurredAt": ["previousStatus"] }));
}
