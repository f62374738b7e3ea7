//! The pattern language shared by EventBridge event patterns and SNS filter
//! policies: parsing (with the dialect's rules), matching against a JSON
//! value, and writing back the JSON the AWS APIs accept.
//!
//! A pattern is a tree: objects mirror the event's nesting, leaves are
//! arrays of matchers, and `$or` lists alternatives at any level. Matching
//! follows EventBridge (as implemented by AWS's `event-ruler`):
//!
//! - a leaf matches when any of its matchers matches any of the field's
//!   values (an array field contributes each element);
//! - an object field that holds an array of objects matches when one
//!   element matches the whole sub-pattern, so two fields never match from
//!   different elements of one array;
//! - `exists` looks at leaf values only: a field holding an object does not
//!   "exist" as a leaf;
//! - `anything-but` never matches a missing field.

use std::net::IpAddr;

use serde_json::{Map, Number, Value};

/// Which service's rules a pattern follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// EventBridge event patterns.
    EventBridge,
    /// SNS filter policies, `MessageAttributes` scope: no nesting.
    SnsAttributes,
    /// SNS filter policies, `MessageBody` scope.
    SnsBody,
}

impl Dialect {
    /// Decimal places numeric matching resolves: EventBridge 6, SNS 5.
    fn decimals(self) -> i32 {
        match self {
            Dialect::EventBridge => 6,
            Dialect::SnsAttributes | Dialect::SnsBody => 5,
        }
    }

    fn is_sns(self) -> bool {
        self != Dialect::EventBridge
    }
}

/// The largest magnitude numeric matching handles, in both services:
/// -1.0e9 to +1.0e9 inclusive.
pub const NUMERIC_LIMIT: f64 = 1.0e9;

/// Why a pattern is invalid: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct PatternError {
    /// Dotted path of the field in the pattern (`detail.amount`), `$` for the root.
    pub path: String,
    /// What is wrong.
    pub kind: PatternErrorKind,
}

/// The kinds of invalid pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternErrorKind {
    /// The text is not JSON.
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    /// The pattern (or a nested part of it) is not a JSON object.
    #[error("must be a JSON object")]
    NotAnObject,
    /// The pattern matches nothing in particular.
    #[error("a pattern needs at least one field")]
    Empty,
    /// A leaf is a bare value instead of an array of values.
    #[error("a leaf must be an array of values, got {0}")]
    LeafNotArray(&'static str),
    /// An empty array of values.
    #[error("the array of values must not be empty")]
    EmptyArray,
    /// An object in a value array that is not one known operator.
    #[error("unknown operator '{0}'")]
    UnknownOperator(String),
    /// An operator object with zero or several keys.
    #[error("an operator object has exactly one key, got {0}")]
    OperatorArity(usize),
    /// The operator is not available in this service.
    #[error("'{0}' is not supported here")]
    Unsupported(&'static str),
    /// An operator's value has the wrong type or shape.
    #[error("'{operator}' {expected}")]
    BadOperand {
        /// The operator.
        operator: &'static str,
        /// What it takes.
        expected: &'static str,
    },
    /// A malformed `numeric` list.
    #[error("malformed numeric condition: {0}")]
    MalformedNumeric(&'static str),
    /// A number outside the range numeric matching handles.
    #[error("{0} is outside the numeric range -1.0e9..=1.0e9")]
    NumberOutOfRange(String),
    /// A bad CIDR block.
    #[error("'{0}' is not an IPv4 or IPv6 address or CIDR block")]
    BadCidr(String),
    /// `exists` with a non-boolean.
    #[error("'exists' takes true or false")]
    ExistsNotBoolean,
    /// An `anything-but` list mixing strings and numbers (or holding others).
    #[error("an 'anything-but' list holds only strings or only numbers")]
    MixedAnythingBut,
    /// A wildcard with `**` or a bad escape.
    #[error("bad wildcard '{0}': {1}")]
    BadWildcard(String, &'static str),
    /// A nested object where the dialect allows none.
    #[error("nesting is not allowed in the MessageAttributes scope")]
    NestingNotAllowed,
    /// A limit of the service.
    #[error("{0}")]
    Limit(String),
}

fn err(path: &str, kind: PatternErrorKind) -> PatternError {
    PatternError { path: if path.is_empty() { "$".to_owned() } else { path.to_owned() }, kind }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// One object level of a pattern.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// Fields in pattern order.
    pub(crate) fields: Vec<(String, Field)>,
    /// `$or` alternatives (empty: none); one must match. A JSON object has
    /// one `$or` key, so a level has at most one group.
    pub(crate) or: Vec<Node>,
}

/// What a pattern says about one field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Field {
    /// The field is an object; match inside it.
    Nested(Node),
    /// The field's values must match one of these.
    Leaf(Vec<Matcher>),
}

/// A JSON number in a pattern: its text (for writing back) and value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Num {
    pub(crate) json: Number,
    pub(crate) value: f64,
}

/// One matcher in a leaf array.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Matcher {
    /// Equal to this string.
    String(String),
    /// Equal to this number.
    Number(Num),
    /// Equal to this boolean.
    Bool(bool),
    /// The value is `null`.
    Null,
    /// A string starting with this.
    Prefix { value: String, ignore_case: bool },
    /// A string ending with this.
    Suffix { value: String, ignore_case: bool },
    /// A string equal to this, ignoring case.
    EqualsIgnoreCase(String),
    /// A string matching this glob.
    Wildcard(Wildcard),
    /// Any present value except these.
    AnythingBut(AnythingBut),
    /// A number in this range.
    Numeric(Numeric),
    /// The field is (or is not) present as a leaf.
    Exists(bool),
    /// An IP address in this block.
    Cidr(Cidr),
}

/// The forms of `anything-but`. `list` remembers whether the pattern wrote
/// a list or a single value, so it is written back the same way.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AnythingBut {
    Strings { values: Vec<String>, list: bool },
    Numbers { values: Vec<Num>, list: bool },
    Prefix { values: Vec<String>, list: bool },
    Suffix { values: Vec<String>, list: bool },
    IgnoreCase { values: Vec<String>, list: bool },
    Wildcard { values: Vec<Wildcard>, list: bool },
}

/// A numeric condition: up to one lower and one upper bound, or equality.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Numeric {
    /// The operators and operands as written.
    pub(crate) terms: Vec<(NumOp, Num)>,
}

/// A numeric comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumOp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl NumOp {
    fn parse(s: &str) -> Option<NumOp> {
        Some(match s {
            "=" => NumOp::Eq,
            "<" => NumOp::Lt,
            "<=" => NumOp::Le,
            ">" => NumOp::Gt,
            ">=" => NumOp::Ge,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            NumOp::Eq => "=",
            NumOp::Lt => "<",
            NumOp::Le => "<=",
            NumOp::Gt => ">",
            NumOp::Ge => ">=",
        }
    }
}

/// A glob where `*` matches any run of characters; `\*` and `\\` are
/// literal. Stored as the literal pieces between stars.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Wildcard {
    pub(crate) source: String,
    /// The literal runs between stars; one run means no star at all.
    pieces: Vec<String>,
}

impl Wildcard {
    fn parse(source: &str) -> Result<Wildcard, &'static str> {
        let mut pieces = Vec::new();
        let mut current = String::new();
        let mut chars = source.chars();
        let mut previous_star = false;
        while let Some(c) = chars.next() {
            match c {
                '*' if previous_star => return Err("consecutive '*' are not allowed"),
                '*' => {
                    pieces.push(std::mem::take(&mut current));
                    previous_star = true;
                    continue;
                }
                '\\' => match chars.next() {
                    Some(e @ ('*' | '\\')) => current.push(e),
                    _ => return Err("a backslash escapes only '*' or '\\'"),
                },
                other => current.push(other),
            }
            previous_star = false;
        }
        pieces.push(current);
        Ok(Wildcard { source: source.to_owned(), pieces })
    }

    /// Greedy leftmost matching of the pieces, which is exact for globs
    /// whose only metacharacter is `*`.
    pub(crate) fn matches(&self, s: &str) -> bool {
        if self.pieces.len() == 1 {
            return s == self.pieces[0];
        }
        let first = &self.pieces[0];
        let last = &self.pieces[self.pieces.len() - 1];
        if !s.starts_with(first.as_str()) || s.len() < first.len() + last.len() || !s.ends_with(last.as_str()) {
            return false;
        }
        let mut rest = &s[first.len()..s.len() - last.len()];
        for piece in &self.pieces[1..self.pieces.len() - 1] {
            match rest.find(piece.as_str()) {
                Some(i) => rest = &rest[i + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

/// An IPv4 or IPv6 block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cidr {
    pub(crate) source: String,
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => p.parse().ok()?,
            Some(_) => return None,
        };
        (prefix <= max).then(|| Cidr { source: s.to_owned(), network, prefix })
    }

    fn contains(&self, s: &str) -> bool {
        let Ok(ip) = s.parse::<IpAddr>() else { return false };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Fixed-point key for numeric comparison at the dialect's precision, or
/// `None` outside the range numeric matching handles.
fn fixed(value: f64, dialect: Dialect) -> Option<i64> {
    if !value.is_finite() || value.abs() > NUMERIC_LIMIT {
        return None;
    }
    // |value| ≤ 1e9 and at most 10^6 scale: the product is below 2^53.
    #[allow(clippy::cast_possible_truncation)]
    Some((value * 10_f64.powi(dialect.decimals())).round() as i64)
}

/// EventBridge's fixed-point key for a number (six decimals), `None`
/// outside ±1.0e9: what exact numeric values are indexed by.
pub(crate) fn fixed_eventbridge(value: f64) -> Option<i64> {
    fixed(value, Dialect::EventBridge)
}

// ---------------------------------------------------------------- parsing

/// Keys that make an object in a value array an operator.
const OPERATORS: &[&str] =
    &["prefix", "suffix", "equals-ignore-case", "wildcard", "anything-but", "numeric", "exists", "cidr"];

pub(crate) fn parse(text: &str, dialect: Dialect) -> Result<Node, PatternError> {
    let value: Value = serde_json::from_str(text).map_err(|e| err("", PatternErrorKind::InvalidJson(e.to_string())))?;
    parse_value(&value, dialect)
}

pub(crate) fn parse_value(value: &Value, dialect: Dialect) -> Result<Node, PatternError> {
    let Value::Object(map) = value else { return Err(err("", PatternErrorKind::NotAnObject)) };
    let node = parse_node(map, "", dialect, 0)?;
    if node.fields.is_empty() && node.or.is_empty() {
        return Err(err("", PatternErrorKind::Empty));
    }
    Ok(node)
}

/// Whether `"$or": value` is the OR primitive (an array of at least two
/// objects, none keyed by an operator name) rather than a field named `$or`,
/// which event-ruler keeps for backward compatibility.
fn is_or(value: &Value) -> bool {
    match value {
        Value::Array(items) => {
            items.len() >= 2
                && items.iter().all(|i| {
                    i.as_object().is_some_and(|o| !o.is_empty() && o.keys().all(|k| !OPERATORS.contains(&k.as_str())))
                })
        }
        _ => false,
    }
}

fn parse_node(map: &Map<String, Value>, path: &str, dialect: Dialect, depth: usize) -> Result<Node, PatternError> {
    if depth > 64 {
        return Err(err(path, PatternErrorKind::Limit("patterns nest at most 64 levels".into())));
    }
    let mut node = Node { fields: Vec::new(), or: Vec::new() };
    for (key, value) in map {
        let here = join(path, key);
        if key == "$or" && is_or(value) {
            let alternatives = value
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, alt)| match alt {
                    Value::Object(o) => parse_node(o, &format!("{here}[{i}]"), dialect, depth + 1),
                    _ => Err(err(&here, PatternErrorKind::NotAnObject)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            node.or = alternatives;
            continue;
        }
        let field = match value {
            Value::Object(_) if dialect == Dialect::SnsAttributes => {
                return Err(err(&here, PatternErrorKind::NestingNotAllowed));
            }
            Value::Object(inner) => {
                let nested = parse_node(inner, &here, dialect, depth + 1)?;
                if nested.fields.is_empty() && nested.or.is_empty() {
                    return Err(err(&here, PatternErrorKind::Empty));
                }
                Field::Nested(nested)
            }
            Value::Array(items) if items.is_empty() => return Err(err(&here, PatternErrorKind::EmptyArray)),
            Value::Array(items) => {
                Field::Leaf(items.iter().map(|i| parse_matcher(i, &here, dialect)).collect::<Result<_, _>>()?)
            }
            other => return Err(err(&here, PatternErrorKind::LeafNotArray(kind(other)))),
        };
        node.fields.push((key.clone(), field));
    }
    Ok(node)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn num(n: &Number, path: &str) -> Result<Num, PatternError> {
    match n.as_f64() {
        Some(value) if value.is_finite() => Ok(Num { json: n.clone(), value }),
        _ => Err(err(path, PatternErrorKind::NumberOutOfRange(n.to_string()))),
    }
}

fn ranged(n: &Number, path: &str) -> Result<Num, PatternError> {
    let num = num(n, path)?;
    if num.value.abs() > NUMERIC_LIMIT {
        return Err(err(path, PatternErrorKind::NumberOutOfRange(n.to_string())));
    }
    Ok(num)
}

fn string_operand<'v>(v: &'v Value, operator: &'static str, path: &str) -> Result<&'v str, PatternError> {
    v.as_str().ok_or_else(|| err(path, PatternErrorKind::BadOperand { operator, expected: "takes a string" }))
}

/// A string, or a non-empty list of strings, for the operators that take either.
fn strings(v: &Value, operator: &'static str, path: &str) -> Result<(Vec<String>, bool), PatternError> {
    match v {
        Value::String(s) => Ok((vec![s.clone()], false)),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| string_operand(i, operator, path).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| (v, true)),
        _ => Err(err(path, PatternErrorKind::BadOperand { operator, expected: "takes a string or a list of strings" })),
    }
}

fn wildcard(s: &str, path: &str) -> Result<Wildcard, PatternError> {
    Wildcard::parse(s).map_err(|why| err(path, PatternErrorKind::BadWildcard(s.to_owned(), why)))
}

fn parse_matcher(v: &Value, path: &str, dialect: Dialect) -> Result<Matcher, PatternError> {
    let map = match v {
        Value::String(s) => return Ok(Matcher::String(s.clone())),
        Value::Number(n) => return num(n, path).map(Matcher::Number),
        Value::Bool(b) => return Ok(Matcher::Bool(*b)),
        Value::Null => return Ok(Matcher::Null),
        Value::Array(_) => return Err(err(path, PatternErrorKind::LeafNotArray("a nested array"))),
        Value::Object(map) => map,
    };
    let (op, operand) = match map.iter().next() {
        Some((k, v)) if map.len() == 1 => (k.as_str(), v),
        _ => return Err(err(path, PatternErrorKind::OperatorArity(map.len()))),
    };
    match op {
        "prefix" | "suffix" => {
            let operator = if op == "prefix" { "prefix" } else { "suffix" };
            let (value, ignore_case) = match operand {
                Value::String(s) => (s.clone(), false),
                Value::Object(o) if o.len() == 1 && o.contains_key("equals-ignore-case") => {
                    (string_operand(&o["equals-ignore-case"], "equals-ignore-case", path)?.to_owned(), true)
                }
                _ => {
                    return Err(err(
                        path,
                        PatternErrorKind::BadOperand {
                            operator,
                            expected: "takes a string or {\"equals-ignore-case\": string}",
                        },
                    ));
                }
            };
            Ok(if operator == "prefix" {
                Matcher::Prefix { value, ignore_case }
            } else {
                Matcher::Suffix { value, ignore_case }
            })
        }
        "equals-ignore-case" => {
            Ok(Matcher::EqualsIgnoreCase(string_operand(operand, "equals-ignore-case", path)?.to_owned()))
        }
        "wildcard" if dialect.is_sns() => Err(err(path, PatternErrorKind::Unsupported("wildcard"))),
        "wildcard" => Ok(Matcher::Wildcard(wildcard(string_operand(operand, "wildcard", path)?, path)?)),
        "exists" => operand.as_bool().map(Matcher::Exists).ok_or_else(|| err(path, PatternErrorKind::ExistsNotBoolean)),
        "cidr" => {
            let s = string_operand(operand, "cidr", path)?;
            Cidr::parse(s).map(Matcher::Cidr).ok_or_else(|| err(path, PatternErrorKind::BadCidr(s.to_owned())))
        }
        "numeric" => parse_numeric(operand, path).map(Matcher::Numeric),
        "anything-but" => parse_anything_but(operand, path, dialect).map(Matcher::AnythingBut),
        other => Err(err(path, PatternErrorKind::UnknownOperator(other.to_owned()))),
    }
}

fn parse_numeric(v: &Value, path: &str) -> Result<Numeric, PatternError> {
    let malformed = |why| err(path, PatternErrorKind::MalformedNumeric(why));
    let Value::Array(items) = v else { return Err(malformed("takes a list such as [\">\", 0, \"<=\", 5]")) };
    if items.is_empty() || items.len() % 2 != 0 || items.len() > 4 {
        return Err(malformed("takes one or two (operator, number) pairs"));
    }
    let mut terms = Vec::new();
    for pair in items.chunks(2) {
        let op = pair[0].as_str().and_then(NumOp::parse).ok_or_else(|| malformed("operators are =, <, <=, >, >="))?;
        let Value::Number(n) = &pair[1] else { return Err(malformed("each operator is followed by a number")) };
        terms.push((op, ranged(n, path)?));
    }
    let lower = terms.iter().filter(|(op, _)| matches!(op, NumOp::Gt | NumOp::Ge)).count();
    let upper = terms.iter().filter(|(op, _)| matches!(op, NumOp::Lt | NumOp::Le)).count();
    let eq = terms.iter().filter(|(op, _)| *op == NumOp::Eq).count();
    if eq > 0 && terms.len() > 1 {
        return Err(malformed("'=' stands alone"));
    }
    if lower > 1 || upper > 1 {
        return Err(malformed("at most one lower and one upper bound"));
    }
    if let (Some((_, lo)), Some((_, hi))) = (
        terms.iter().find(|(op, _)| matches!(op, NumOp::Gt | NumOp::Ge)),
        terms.iter().find(|(op, _)| matches!(op, NumOp::Lt | NumOp::Le)),
    ) && lo.value >= hi.value
    {
        return Err(malformed("the lower bound must be below the upper bound"));
    }
    Ok(Numeric { terms })
}

fn parse_anything_but(v: &Value, path: &str, dialect: Dialect) -> Result<AnythingBut, PatternError> {
    Ok(match v {
        Value::String(s) => AnythingBut::Strings { values: vec![s.clone()], list: false },
        Value::Number(n) => AnythingBut::Numbers { values: vec![num(n, path)?], list: false },
        Value::Array(items) if items.is_empty() => return Err(err(path, PatternErrorKind::EmptyArray)),
        Value::Array(items) if items.iter().all(Value::is_string) => AnythingBut::Strings {
            values: items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            list: true,
        },
        Value::Array(items) if items.iter().all(Value::is_number) => AnythingBut::Numbers {
            values: items.iter().filter_map(Value::as_number).map(|n| num(n, path)).collect::<Result<_, _>>()?,
            list: true,
        },
        Value::Array(_) => return Err(err(path, PatternErrorKind::MixedAnythingBut)),
        Value::Object(o) if o.len() == 1 => {
            let (op, operand) = o.iter().next().map(|(k, v)| (k.as_str(), v)).unwrap_or(("", &Value::Null));
            match op {
                "prefix" => {
                    let (values, list) = strings(operand, "prefix", path)?;
                    AnythingBut::Prefix { values, list }
                }
                // SNS refuses anything-but with suffix (LocalStack's snapshot
                // of AWS's answer: "Unsupported anything-but pattern: suffix").
                "suffix" if dialect.is_sns() => {
                    return Err(err(path, PatternErrorKind::Unsupported("anything-but with suffix")));
                }
                "suffix" => {
                    let (values, list) = strings(operand, "suffix", path)?;
                    AnythingBut::Suffix { values, list }
                }
                "equals-ignore-case" => {
                    let (values, list) = strings(operand, "equals-ignore-case", path)?;
                    AnythingBut::IgnoreCase { values, list }
                }
                "wildcard" if dialect.is_sns() => return Err(err(path, PatternErrorKind::Unsupported("wildcard"))),
                "wildcard" => {
                    let (values, list) = strings(operand, "wildcard", path)?;
                    AnythingBut::Wildcard {
                        values: values.iter().map(|s| wildcard(s, path)).collect::<Result<_, _>>()?,
                        list,
                    }
                }
                other => return Err(err(path, PatternErrorKind::UnknownOperator(format!("anything-but/{other}")))),
            }
        }
        _ => {
            return Err(err(
                path,
                PatternErrorKind::BadOperand {
                    operator: "anything-but",
                    expected: "takes a string, a number, a list of either, or {prefix|suffix|equals-ignore-case|wildcard: ...}",
                },
            ));
        }
    })
}

// ---------------------------------------------------------------- matching

/// Whether `node` matches `value` (an object, an array of objects, or
/// anything else, which has no fields).
pub(crate) fn matches(node: &Node, value: Option<&Value>, dialect: Dialect) -> bool {
    if let Some(Value::Array(items)) = value {
        // An array of objects: one element must match the whole node.
        return items.iter().any(|i| matches(node, Some(i), dialect));
    }
    // Missing, or a scalar where an object was expected: no field is present.
    let map = value.and_then(Value::as_object);
    node.fields.iter().all(|(k, f)| field_matches(f, map.and_then(|m| m.get(k)), dialect))
        && (node.or.is_empty() || node.or.iter().any(|alt| matches(alt, value, dialect)))
}

fn field_matches(field: &Field, value: Option<&Value>, dialect: Dialect) -> bool {
    match field {
        Field::Nested(node) => matches(node, value, dialect),
        Field::Leaf(matchers) => matchers.iter().any(|m| match m {
            Matcher::Exists(expected) => any_leaf(value, &mut |_| true) == *expected,
            other => any_leaf(value, &mut |v| leaf_matches(other, v, dialect)),
        }),
    }
}

/// Whether `f` holds for one of the field's leaf values: a scalar, or the
/// scalars of an array (nested arrays flattened). Objects are not leaves.
/// (A callback rather than a collected list: this is the hot path.)
fn any_leaf(value: Option<&Value>, f: &mut impl FnMut(&Value) -> bool) -> bool {
    match value {
        None | Some(Value::Object(_)) => false,
        Some(Value::Array(items)) => items.iter().any(|i| any_leaf(Some(i), f)),
        Some(v) => f(v),
    }
}

fn numbers_equal(a: f64, b: f64, dialect: Dialect) -> bool {
    match (fixed(a, dialect), fixed(b, dialect)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn leaf_matches(m: &Matcher, v: &Value, dialect: Dialect) -> bool {
    match m {
        Matcher::String(s) => v.as_str() == Some(s.as_str()),
        // SNS documents numeric attribute matching only through `numeric`;
        // a bare number does not match a Number attribute (LocalStack, whose
        // SNS filtering is snapshot-tested against AWS, agrees).
        Matcher::Number(_) if dialect == Dialect::SnsAttributes => false,
        Matcher::Number(n) => v.as_f64().is_some_and(|x| numbers_equal(x, n.value, dialect)),
        Matcher::Bool(b) => v.as_bool() == Some(*b),
        Matcher::Null => v.is_null(),
        Matcher::Prefix { value, ignore_case } => v.as_str().is_some_and(|s| {
            if *ignore_case { starts_with_ignore_case(s, value) } else { s.starts_with(value.as_str()) }
        }),
        Matcher::Suffix { value, ignore_case } => v
            .as_str()
            .is_some_and(|s| if *ignore_case { ends_with_ignore_case(s, value) } else { s.ends_with(value.as_str()) }),
        Matcher::EqualsIgnoreCase(value) => v.as_str().is_some_and(|s| eq_ignore_case(s, value)),
        Matcher::Wildcard(w) => v.as_str().is_some_and(|s| w.matches(s)),
        Matcher::Numeric(range) => v.as_f64().and_then(|x| fixed(x, dialect)).is_some_and(|x| {
            range.terms.iter().all(|(op, n)| {
                let bound = fixed(n.value, dialect).unwrap_or_default();
                match op {
                    NumOp::Eq => x == bound,
                    NumOp::Lt => x < bound,
                    NumOp::Le => x <= bound,
                    NumOp::Gt => x > bound,
                    NumOp::Ge => x >= bound,
                }
            })
        }),
        Matcher::Cidr(c) => v.as_str().is_some_and(|s| c.contains(s)),
        // SNS: `anything-but` matches values, and `null` is not one.
        Matcher::AnythingBut(_) if dialect.is_sns() && v.is_null() => false,
        Matcher::AnythingBut(ab) => !anything_but_excludes(ab, v, dialect),
        // Handled per field, not per value.
        Matcher::Exists(_) => false,
    }
}

/// Whether `v` is one of the values an `anything-but` excludes.
fn anything_but_excludes(ab: &AnythingBut, v: &Value, dialect: Dialect) -> bool {
    let s = v.as_str();
    match ab {
        AnythingBut::Strings { values, .. } => s.is_some_and(|s| values.iter().any(|x| x == s)),
        AnythingBut::Numbers { values, .. } => {
            v.as_f64().is_some_and(|x| values.iter().any(|n| numbers_equal(x, n.value, dialect)))
        }
        AnythingBut::Prefix { values, .. } => s.is_some_and(|s| values.iter().any(|p| s.starts_with(p.as_str()))),
        AnythingBut::Suffix { values, .. } => s.is_some_and(|s| values.iter().any(|p| s.ends_with(p.as_str()))),
        AnythingBut::IgnoreCase { values, .. } => s.is_some_and(|s| values.iter().any(|p| eq_ignore_case(s, p))),
        AnythingBut::Wildcard { values, .. } => s.is_some_and(|s| values.iter().any(|w| w.matches(s))),
    }
}

/// Case folding as event-ruler does it: Unicode lower case of both sides.
pub(crate) fn fold(s: &str) -> String {
    s.to_lowercase()
}

fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || fold(a) == fold(b)
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    (s.is_ascii() && prefix.is_ascii() && s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        || fold(s).starts_with(&fold(prefix))
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    (s.is_ascii()
        && suffix.is_ascii()
        && s.len() >= suffix.len()
        && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
        || fold(s).ends_with(&fold(suffix))
}

// ---------------------------------------------------------------- writing

/// The pattern as the JSON the AWS APIs accept.
pub(crate) fn to_value(node: &Node) -> Value {
    let mut entries: Vec<(String, Value)> = node
        .fields
        .iter()
        .map(|(key, field)| {
            let value = match field {
                Field::Nested(n) => to_value(n),
                Field::Leaf(ms) => Value::Array(ms.iter().map(matcher_value).collect()),
            };
            (key.clone(), value)
        })
        .collect();
    if !node.or.is_empty() {
        entries.push(("$or".into(), Value::Array(node.or.iter().map(to_value).collect())));
    }
    // Keys in sorted order whatever `serde_json::Map` is: with the
    // `preserve_order` feature (which any crate in a build can switch on)
    // it keeps insertion order, and the same pattern would get another text.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Value::Object(entries.into_iter().collect::<Map<String, Value>>())
}

fn list_or_one<T>(values: &[T], list: bool, f: impl Fn(&T) -> Value) -> Value {
    if list || values.len() != 1 { Value::Array(values.iter().map(f).collect()) } else { f(&values[0]) }
}

fn op(name: &str, operand: Value) -> Value {
    let mut m = Map::new();
    m.insert(name.to_owned(), operand);
    Value::Object(m)
}

fn matcher_value(m: &Matcher) -> Value {
    match m {
        Matcher::String(s) => Value::String(s.clone()),
        Matcher::Number(n) => Value::Number(n.json.clone()),
        Matcher::Bool(b) => Value::Bool(*b),
        Matcher::Null => Value::Null,
        Matcher::Prefix { value, ignore_case } | Matcher::Suffix { value, ignore_case } => {
            let name = if matches!(m, Matcher::Prefix { .. }) { "prefix" } else { "suffix" };
            let operand = if *ignore_case {
                op("equals-ignore-case", Value::String(value.clone()))
            } else {
                Value::String(value.clone())
            };
            op(name, operand)
        }
        Matcher::EqualsIgnoreCase(s) => op("equals-ignore-case", Value::String(s.clone())),
        Matcher::Wildcard(w) => op("wildcard", Value::String(w.source.clone())),
        Matcher::Exists(b) => op("exists", Value::Bool(*b)),
        Matcher::Cidr(c) => op("cidr", Value::String(c.source.clone())),
        Matcher::Numeric(n) => op(
            "numeric",
            Value::Array(
                n.terms
                    .iter()
                    .flat_map(|(o, x)| [Value::String(o.as_str().to_owned()), Value::Number(x.json.clone())])
                    .collect(),
            ),
        ),
        Matcher::AnythingBut(ab) => {
            let s = |x: &String| Value::String(x.clone());
            op(
                "anything-but",
                match ab {
                    AnythingBut::Strings { values, list } => list_or_one(values, *list, s),
                    AnythingBut::Numbers { values, list } => {
                        list_or_one(values, *list, |n| Value::Number(n.json.clone()))
                    }
                    AnythingBut::Prefix { values, list } => op("prefix", list_or_one(values, *list, s)),
                    AnythingBut::Suffix { values, list } => op("suffix", list_or_one(values, *list, s)),
                    AnythingBut::IgnoreCase { values, list } => op("equals-ignore-case", list_or_one(values, *list, s)),
                    AnythingBut::Wildcard { values, list } => {
                        op("wildcard", list_or_one(values, *list, |w| Value::String(w.source.clone())))
                    }
                },
            )
        }
    }
}

/// The dotted paths of every leaf, `$or` alternatives included (they sit at
/// the level of their `$or`): the "keys" SNS limits.
pub(crate) fn leaf_paths(node: &Node, path: &str, out: &mut std::collections::BTreeSet<String>) {
    for (key, field) in &node.fields {
        let here = join(path, key);
        match field {
            Field::Nested(n) => leaf_paths(n, &here, out),
            Field::Leaf(_) => {
                out.insert(here);
            }
        }
    }
    for alt in &node.or {
        leaf_paths(alt, path, out);
    }
}

/// SNS's "combinations" of a policy: the product of the value counts of
/// its leaves, where each `$or` contributes the sum over its alternatives.
pub(crate) fn combinations(node: &Node) -> u64 {
    let leaves: u64 = node
        .fields
        .iter()
        .map(|(_, f)| match f {
            Field::Nested(n) => combinations(n),
            Field::Leaf(ms) => ms.len() as u64,
        })
        .fold(1_u64, u64::saturating_mul);
    if node.or.is_empty() {
        leaves
    } else {
        leaves.saturating_mul(node.or.iter().map(combinations).fold(0_u64, u64::saturating_add))
    }
}
