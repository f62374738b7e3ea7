//! EventBridge event patterns.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::builder::PatternBuilder;
use super::tree::{self, Dialect, Node, PatternError};

/// A parsed, validated EventBridge event pattern.
///
/// Operators: exact values (strings, numbers, `null`, booleans; an array in
/// the event matches when it shares a value), nested objects, `prefix` and
/// `suffix` (each also with `equals-ignore-case`), `equals-ignore-case`,
/// `wildcard` (`*`, with `\*` and `\\` escapes; `**` refused),
/// `anything-but` (a value, a list of strings or of numbers, `prefix`,
/// `suffix`, `equals-ignore-case`, `wildcard`; never matches a missing
/// field), `numeric` (`=`, `<`, `<=`, `>`, `>=`, one lower and one upper
/// bound; JSON numbers only, within ±1.0e9, compared at six decimal places),
/// `exists` (leaf fields only), `cidr` (IPv4 and IPv6) and `$or` at any
/// level. Fields under an array of objects must match within one element.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPattern {
    root: Node,
}

impl EventPattern {
    /// Parses a pattern; the error says where and why it is invalid.
    pub fn from_json(text: &str) -> Result<EventPattern, PatternError> {
        tree::parse(text, Dialect::EventBridge).map(|root| EventPattern { root })
    }

    /// Parses a pattern given as a JSON value.
    pub fn from_value(value: &Value) -> Result<EventPattern, PatternError> {
        tree::parse_value(value, Dialect::EventBridge).map(|root| EventPattern { root })
    }

    /// A builder for patterns written in code.
    pub fn builder() -> PatternBuilder {
        PatternBuilder::default()
    }

    /// Whether `event` (the whole EventBridge event: `source`,
    /// `detail-type`, `detail`, ...) matches.
    pub fn matches(&self, event: &Value) -> bool {
        tree::matches(&self.root, Some(event), Dialect::EventBridge)
    }

    /// The pattern as the JSON value `PutRule` accepts.
    pub fn to_value(&self) -> Value {
        tree::to_value(&self.root)
    }

    /// The pattern as compact JSON text, for `PutRule`'s `EventPattern`.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    pub(crate) fn root(&self) -> &Node {
        &self.root
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl Serialize for EventPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl std::str::FromStr for EventPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<EventPattern, PatternError> {
        EventPattern::from_json(s)
    }
}
