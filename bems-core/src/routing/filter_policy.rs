//! SNS subscription filter policies.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::tree::{self, Dialect, Node, PatternError, PatternErrorKind};

/// SNS: at most 5 keys in a filter policy.
pub const MAX_KEYS: usize = 5;

/// SNS: at most 150 combinations of values in a filter policy.
pub const MAX_COMBINATIONS: u64 = 150;

/// What a filter policy looks at (the subscription's `FilterPolicyScope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FilterPolicyScope {
    /// The message attributes (the default in SNS). No nesting.
    MessageAttributes,
    /// The message body, which must be JSON.
    MessageBody,
}

impl FilterPolicyScope {
    /// The name SNS uses for the attribute value.
    pub const fn as_str(self) -> &'static str {
        match self {
            FilterPolicyScope::MessageAttributes => "MessageAttributes",
            FilterPolicyScope::MessageBody => "MessageBody",
        }
    }

    fn dialect(self) -> Dialect {
        match self {
            FilterPolicyScope::MessageAttributes => Dialect::SnsAttributes,
            FilterPolicyScope::MessageBody => Dialect::SnsBody,
        }
    }
}

/// A parsed SNS filter policy, within SNS's limits.
///
/// Operators: exact strings, numbers, booleans and `null`, `prefix`,
/// `suffix` (each also with `equals-ignore-case`), `equals-ignore-case`,
/// `anything-but` (value, list, `prefix`, `equals-ignore-case`), `numeric`
/// (within ±1.0e9, five decimal places), `exists`, `cidr` and `$or`. SNS
/// has no `wildcard` and no `anything-but` with `suffix`; the attribute scope
/// has no nesting.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterPolicy {
    root: Node,
    scope: FilterPolicyScope,
}

impl FilterPolicy {
    /// Parses a policy for `scope` and checks SNS's limits: at most
    /// [`MAX_KEYS`] keys and [`MAX_COMBINATIONS`] combinations.
    pub fn from_json(text: &str, scope: FilterPolicyScope) -> Result<FilterPolicy, PatternError> {
        let root = tree::parse(text, scope.dialect())?;
        let mut leaves = std::collections::BTreeSet::new();
        tree::leaf_paths(&root, "", &mut leaves);
        if leaves.len() > MAX_KEYS {
            return Err(PatternError {
                path: "$".into(),
                kind: PatternErrorKind::Limit(format!(
                    "SNS allows at most {MAX_KEYS} keys, this policy has {}",
                    leaves.len()
                )),
            });
        }
        let combinations = tree::combinations(&root);
        if combinations > MAX_COMBINATIONS {
            return Err(PatternError {
                path: "$".into(),
                kind: PatternErrorKind::Limit(format!(
                    "SNS allows at most {MAX_COMBINATIONS} combinations of values, this policy has {combinations}"
                )),
            });
        }
        Ok(FilterPolicy { root, scope })
    }

    /// The scope the policy was written for.
    pub fn scope(&self) -> FilterPolicyScope {
        self.scope
    }

    /// Whether SNS would deliver a message with this body (JSON, for the
    /// body scope) and these attributes, in the shape of an SNS
    /// notification's `MessageAttributes`:
    /// `{"name": {"Type": "String" | "Number" | "String.Array", "Value": "..."}}`.
    pub fn matches(&self, body: &Value, message_attributes: &Value) -> bool {
        match self.scope {
            FilterPolicyScope::MessageBody => tree::matches(&self.root, Some(body), Dialect::SnsBody),
            FilterPolicyScope::MessageAttributes => {
                let attributes = attribute_values(message_attributes);
                tree::matches(&self.root, Some(&attributes), Dialect::SnsAttributes)
            }
        }
    }

    /// The policy as the JSON value `Subscribe`/`SetSubscriptionAttributes` accept.
    pub fn to_value(&self) -> Value {
        tree::to_value(&self.root)
    }

    /// The policy as compact JSON text.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }
}

/// Typed attribute values: `String` stays a string, `Number` becomes a JSON
/// number, `String.Array` its array. `Binary` attributes and values that do
/// not parse are left out: SNS does not filter on them.
fn attribute_values(attributes: &Value) -> Value {
    let mut out = Map::new();
    for (name, attr) in attributes.as_object().into_iter().flatten() {
        let (Some(kind), Some(text)) =
            (attr.get("Type").and_then(Value::as_str), attr.get("Value").and_then(Value::as_str))
        else {
            continue;
        };
        let value = match kind {
            "String" => Some(Value::String(text.to_owned())),
            "Number" => serde_json::from_str::<serde_json::Number>(text.trim()).ok().map(Value::Number),
            "String.Array" => serde_json::from_str::<Value>(text).ok().filter(Value::is_array),
            _ => None,
        };
        if let Some(v) = value {
            out.insert(name.clone(), v);
        }
    }
    Value::Object(out)
}

impl fmt::Display for FilterPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl Serialize for FilterPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}
