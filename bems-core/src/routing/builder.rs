//! Typed builders for patterns and filter policies.
//!
//! A builder writes the JSON, then parses it with the same parser as text
//! patterns, so a built pattern passes exactly the checks a hand-written one
//! does.
//!
//! ```
//! use bems_core::routing::{EventPattern, Match};
//!
//! let pattern = EventPattern::builder()
//!     .field(&["source"], [Match::exact("bems.invoices")])
//!     .field(&["detail", "amount"], [Match::numeric(&[(">=", 10_000.0)])])
//!     .build()?;
//! assert_eq!(pattern.to_json(), r#"{"detail":{"amount":[{"numeric":[">=",10000.0]}]},"source":["bems.invoices"]}"#);
//! # Ok::<(), bems_core::routing::PatternError>(())
//! ```

use serde_json::{Map, Number, Value, json};

use super::event_pattern::EventPattern;
use super::filter_policy::{FilterPolicy, FilterPolicyScope};
use super::tree::PatternError;

/// One value or operator of a leaf.
#[derive(Debug, Clone, PartialEq)]
pub struct Match(Value);

fn number(n: f64) -> Value {
    // Non-finite numbers have no JSON form; `null` makes the parser refuse
    // the operator with a clear message instead of panicking here.
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

impl Match {
    /// Equal to this string.
    pub fn exact(s: impl Into<String>) -> Match {
        Match(Value::String(s.into()))
    }
    /// Equal to this integer.
    pub fn integer(n: i64) -> Match {
        Match(json!(n))
    }
    /// Equal to this number.
    pub fn number(n: f64) -> Match {
        Match(number(n))
    }
    /// The value `null`.
    pub fn null() -> Match {
        Match(Value::Null)
    }
    /// Equal to this boolean.
    pub fn boolean(b: bool) -> Match {
        Match(Value::Bool(b))
    }
    /// A string starting with `s`.
    pub fn prefix(s: &str) -> Match {
        Match(json!({ "prefix": s }))
    }
    /// A string starting with `s`, ignoring case.
    pub fn prefix_ignore_case(s: &str) -> Match {
        Match(json!({ "prefix": { "equals-ignore-case": s } }))
    }
    /// A string ending with `s`.
    pub fn suffix(s: &str) -> Match {
        Match(json!({ "suffix": s }))
    }
    /// A string ending with `s`, ignoring case.
    pub fn suffix_ignore_case(s: &str) -> Match {
        Match(json!({ "suffix": { "equals-ignore-case": s } }))
    }
    /// A string equal to `s`, ignoring case.
    pub fn equals_ignore_case(s: &str) -> Match {
        Match(json!({ "equals-ignore-case": s }))
    }
    /// A string matching the glob `s` (`*`, escapes `\*` and `\\`).
    pub fn wildcard(s: &str) -> Match {
        Match(json!({ "wildcard": s }))
    }
    /// The field is present as a leaf (`true`) or absent (`false`).
    pub fn exists(b: bool) -> Match {
        Match(json!({ "exists": b }))
    }
    /// An IP address in this CIDR block (or equal to this address).
    pub fn cidr(block: &str) -> Match {
        Match(json!({ "cidr": block }))
    }
    /// A number satisfying every `(operator, bound)`: `=`, `<`, `<=`, `>`, `>=`.
    pub fn numeric(terms: &[(&str, f64)]) -> Match {
        Match(json!({ "numeric": terms.iter().flat_map(|(op, n)| [json!(op), number(*n)]).collect::<Vec<_>>() }))
    }
    /// Any present value except these strings.
    pub fn anything_but<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Match {
        Match(json!({ "anything-but": values.into_iter().map(|s| Value::String(s.into())).collect::<Vec<_>>() }))
    }
    /// Any present value except these numbers.
    pub fn anything_but_numbers(values: impl IntoIterator<Item = f64>) -> Match {
        Match(json!({ "anything-but": values.into_iter().map(number).collect::<Vec<_>>() }))
    }
    /// Anything but these whole numbers (written without a fraction, as
    /// [`Match::integer`] writes them).
    pub fn anything_but_integers(values: impl IntoIterator<Item = i64>) -> Match {
        Match(json!({ "anything-but": values.into_iter().collect::<Vec<_>>() }))
    }
    /// Any present value that does not start with `s`.
    pub fn anything_but_prefix(s: &str) -> Match {
        Match(json!({ "anything-but": { "prefix": s } }))
    }
    /// Any present value that does not end with `s`.
    pub fn anything_but_suffix(s: &str) -> Match {
        Match(json!({ "anything-but": { "suffix": s } }))
    }
    /// Any present value not equal to one of these, ignoring case.
    pub fn anything_but_ignore_case<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Match {
        let values: Vec<Value> = values.into_iter().map(|s| Value::String(s.into())).collect();
        Match(json!({ "anything-but": { "equals-ignore-case": values } }))
    }
    /// Any present value not matching the glob `s`.
    pub fn anything_but_wildcard(s: &str) -> Match {
        Match(json!({ "anything-but": { "wildcard": s } }))
    }

    /// The JSON this matcher stands for.
    pub fn to_value(&self) -> Value {
        self.0.clone()
    }
}

/// Builds a pattern field by field. Paths name nested objects:
/// `&["detail", "stage"]` is `{"detail": {"stage": [...]}}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatternBuilder {
    root: Map<String, Value>,
}

impl PatternBuilder {
    /// The object at `path`, created as needed (a leaf in the way is replaced).
    fn object_at(&mut self, path: &[&str]) -> &mut Map<String, Value> {
        let mut map = &mut self.root;
        for key in path {
            let slot = map.entry((*key).to_owned()).or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            map = match slot {
                Value::Object(m) => m,
                _ => unreachable!("just made an object"),
            };
        }
        map
    }

    /// Requires the field at `path` to match one of `matches`. An empty
    /// path or list is refused by `build` with the place named.
    pub fn field(mut self, path: &[&str], matches: impl IntoIterator<Item = Match>) -> PatternBuilder {
        let values = Value::Array(matches.into_iter().map(|m| m.0).collect());
        match path.split_last() {
            Some((last, parents)) => {
                self.object_at(parents).insert((*last).to_owned(), values);
            }
            None => {
                self.root.insert(String::new(), values);
            }
        }
        self
    }

    /// Requires one of `alternatives` to match the object at `path` (`$or`).
    pub fn any_of(mut self, path: &[&str], alternatives: impl IntoIterator<Item = PatternBuilder>) -> PatternBuilder {
        let alts: Vec<Value> = alternatives.into_iter().map(|b| Value::Object(b.root)).collect();
        self.object_at(path).insert("$or".to_owned(), Value::Array(alts));
        self
    }

    /// The JSON built so far.
    pub fn to_value(&self) -> Value {
        Value::Object(self.root.clone())
    }

    /// Parses the built JSON as an EventBridge pattern.
    pub fn build(self) -> Result<EventPattern, PatternError> {
        EventPattern::from_value(&Value::Object(self.root))
    }

    /// Parses the built JSON as an SNS filter policy for `scope`.
    pub fn build_filter_policy(self, scope: FilterPolicyScope) -> Result<FilterPolicy, PatternError> {
        FilterPolicy::from_json(&Value::Object(self.root).to_string(), scope)
    }
}
