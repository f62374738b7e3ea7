//! Validation problems: where (a JSON path), what (a stable code) and why (a
//! message for people).
//!
//! Codes are part of the public contract: API clients, dashboards and DLQ
//! tooling match on them, so a code is never renamed; new rules get new codes.

use std::fmt;

use serde::Serialize;

use crate::lifecycle::TransitionError;

/// A stable, machine-readable reason code. Serialized in `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Code {
    /// The payload is larger than [`crate::MAX_EVENT_BYTES`].
    PayloadTooLarge,
    /// The payload is not well-formed JSON (or not UTF-8).
    InvalidJson,
    /// The value has the wrong JSON type.
    WrongType,
    /// A required field is absent.
    Missing,
    /// A field the schema does not define.
    UnknownField,
    /// The same field appears twice in one object.
    DuplicateField,
    /// A string is shorter than allowed (usually: empty).
    TooShort,
    /// A string is longer than allowed.
    TooLong,
    /// A string does not have the required format.
    InvalidFormat,
    /// Not one of the allowed values of an enumeration.
    UnknownValue,
    /// Not a known ISO code (currency or country).
    UnknownCode,
    /// Not a lowercase, hyphenated UUID.
    InvalidUuid,
    /// Not an RFC 3339 timestamp.
    InvalidTimestamp,
    /// A timestamp that is not in UTC (`Z`).
    NotUtc,
    /// A timestamp further in the future than the tolerance allows.
    InFuture,
    /// Not a valid calendar date (`YYYY-MM-DD`).
    InvalidDate,
    /// An amount that is zero or negative.
    NotPositive,
    /// More decimal places than the currency's minor unit.
    TooManyDecimals,
    /// A number outside its allowed range.
    OutOfRange,
    /// A value that contradicts another field (derived value, partition).
    Mismatch,
    /// A schema version this library does not read.
    UnsupportedVersion,
    /// The first event of an invoice is not `submitted`.
    InvalidInitialStatus,
    /// A status change out of a terminal status.
    TransitionFromTerminal,
    /// A status change to an earlier status.
    TransitionBackwards,
    /// A status change to the status the invoice already has.
    TransitionRepeated,
    /// A status change that jumps over a stage.
    TransitionSkipsStage,
    /// The event's stage is not the one its status belongs to.
    StageMismatch,
}

impl Code {
    /// Every code, for exhaustive tests and documentation.
    pub const ALL: [Code; 27] = [
        Code::PayloadTooLarge,
        Code::InvalidJson,
        Code::WrongType,
        Code::Missing,
        Code::UnknownField,
        Code::DuplicateField,
        Code::TooShort,
        Code::TooLong,
        Code::InvalidFormat,
        Code::UnknownValue,
        Code::UnknownCode,
        Code::InvalidUuid,
        Code::InvalidTimestamp,
        Code::NotUtc,
        Code::InFuture,
        Code::InvalidDate,
        Code::NotPositive,
        Code::TooManyDecimals,
        Code::OutOfRange,
        Code::Mismatch,
        Code::UnsupportedVersion,
        Code::InvalidInitialStatus,
        Code::TransitionFromTerminal,
        Code::TransitionBackwards,
        Code::TransitionRepeated,
        Code::TransitionSkipsStage,
        Code::StageMismatch,
    ];

    /// The wire form, for example `too_many_decimals`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::PayloadTooLarge => "payload_too_large",
            Code::InvalidJson => "invalid_json",
            Code::WrongType => "wrong_type",
            Code::Missing => "missing",
            Code::UnknownField => "unknown_field",
            Code::DuplicateField => "duplicate_field",
            Code::TooShort => "too_short",
            Code::TooLong => "too_long",
            Code::InvalidFormat => "invalid_format",
            Code::UnknownValue => "unknown_value",
            Code::UnknownCode => "unknown_code",
            Code::InvalidUuid => "invalid_uuid",
            Code::InvalidTimestamp => "invalid_timestamp",
            Code::NotUtc => "not_utc",
            Code::InFuture => "in_future",
            Code::InvalidDate => "invalid_date",
            Code::NotPositive => "not_positive",
            Code::TooManyDecimals => "too_many_decimals",
            Code::OutOfRange => "out_of_range",
            Code::Mismatch => "mismatch",
            Code::UnsupportedVersion => "unsupported_version",
            Code::InvalidInitialStatus => "invalid_initial_status",
            Code::TransitionFromTerminal => "transition_from_terminal",
            Code::TransitionBackwards => "transition_backwards",
            Code::TransitionRepeated => "transition_repeated",
            Code::TransitionSkipsStage => "transition_skips_stage",
            Code::StageMismatch => "stage_mismatch",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&TransitionError> for Code {
    fn from(e: &TransitionError) -> Code {
        match e {
            TransitionError::InvalidInitial { .. } => Code::InvalidInitialStatus,
            TransitionError::FromTerminal { .. } => Code::TransitionFromTerminal,
            TransitionError::Backwards { .. } => Code::TransitionBackwards,
            TransitionError::Repeated { .. } => Code::TransitionRepeated,
            TransitionError::SkipsStage { .. } => Code::TransitionSkipsStage,
            TransitionError::WrongStage { .. } => Code::StageMismatch,
        }
    }
}

/// A problem with one value, before it is placed at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// What is wrong.
    pub code: Code,
    /// Why, for people.
    pub message: String,
}

impl FieldError {
    /// A field error with the given code and message.
    pub fn new(code: Code, message: impl Into<String>) -> FieldError {
        FieldError { code, message: message.into() }
    }

    /// Places the error at `path`.
    pub fn at(self, path: impl Into<String>) -> Violation {
        Violation { path: path.into(), code: self.code, message: self.message }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code, self.message)
    }
}

impl std::error::Error for FieldError {}

/// One problem, at one place of the event.
///
/// `path` is dotted from the event's root (`vendor.country`); `$` is the
/// payload as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Where: `amount`, `vendor.country`, `$` for the whole payload.
    pub path: String,
    /// What: a stable code.
    pub code: Code,
    /// Why: a sentence for people.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.path, self.code, self.message)
    }
}

/// Every problem found in one event, in document order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// Wraps a non-empty list. Returns `None` for an empty one, so a
    /// `Violations` value always means "invalid".
    pub fn new(list: Vec<Violation>) -> Option<Violations> {
        (!list.is_empty()).then_some(Violations(list))
    }

    /// The problems, in the order they were found.
    pub fn as_slice(&self) -> &[Violation] {
        &self.0
    }

    /// `path: code` pairs, handy in tests and logs.
    pub fn codes(&self) -> Vec<(String, Code)> {
        self.0.iter().map(|v| (v.path.clone(), v.code)).collect()
    }

    /// Whether some problem has this path and code.
    pub fn contains(&self, path: &str, code: Code) -> bool {
        self.0.iter().any(|v| v.path == path && v.code == code)
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{}: ", if n == 1 { "" } else { "s" })?;
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

impl IntoIterator for Violations {
    type Item = Violation;
    type IntoIter = std::vec::IntoIter<Violation>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
