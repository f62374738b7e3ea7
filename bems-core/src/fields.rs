//! The text atoms of an event: identifiers, names and AWS coordinates.
//!
//! Each is a newtype that can only hold a valid value (parse, don't
//! validate). Each rule is written twice on purpose: as a hand-written check,
//! which is what runs (no regex engine on the hot path), and as the JSON
//! Schema `pattern` that API Gateway enforces. `bems-schema`'s tests feed
//! random strings to both and fail on any disagreement.

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use crate::violation::{Code, FieldError};

/// The rule for one kind of string.
#[derive(Debug, Clone, Copy)]
pub struct TextRule {
    /// Minimum length, in Unicode scalar values (what JSON Schema counts).
    pub min_chars: usize,
    /// Maximum length, in Unicode scalar values.
    pub max_chars: usize,
    /// The same rule as an ECMA-262 regular expression, for JSON Schema.
    pub pattern: &'static str,
    /// What the format is, in words, for error messages.
    pub describe: &'static str,
    check: fn(&str) -> bool,
}

impl TextRule {
    /// Checks `s` against the rule.
    pub fn check(&self, s: &str) -> Result<(), FieldError> {
        // Count at most max+1 chars: a 10 MB string is refused without a full scan.
        let n = s.chars().take(self.max_chars + 1).count();
        if n < self.min_chars {
            return Err(FieldError::new(
                Code::TooShort,
                format!("must be at least {} character{}", self.min_chars, if self.min_chars == 1 { "" } else { "s" }),
            ));
        }
        if n > self.max_chars {
            return Err(FieldError::new(Code::TooLong, format!("must be at most {} characters", self.max_chars)));
        }
        if !(self.check)(s) {
            return Err(FieldError::new(Code::InvalidFormat, format!("must be {}", self.describe)));
        }
        Ok(())
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '#' | '-')
}

fn starts_alnum(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

fn printable(s: &str) -> bool {
    !s.chars().any(|c| c.is_control())
}

/// Printable text: no C0/C1 control characters (the JSON Schema pattern
/// excludes exactly U+0000–U+001F and U+007F–U+009F, which is what
/// `char::is_control` means).
const PRINTABLE_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

macro_rules! text_atom {
    ($(#[$doc:meta])* $name:ident, $rule:ident = $rule_value:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The rule every value of this type satisfies.
            pub const $rule: TextRule = $rule_value;

            /// Checks `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, FieldError> {
                let value = value.into();
                Self::$rule.check(&value)?;
                Ok(Self(value))
            }

            /// The value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = FieldError;
            fn from_str(s: &str) -> Result<Self, FieldError> {
                Self::new(s)
            }
        }

        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let rule = Self::$rule;
                schemars::json_schema!({
                    "type": "string",
                    "minLength": rule.min_chars,
                    "maxLength": rule.max_chars,
                    "pattern": rule.pattern,
                })
            }
        }
    };
}

text_atom!(
    /// The invoice's business identifier, from the producer's system: 1–64
    /// characters of `A-Z a-z 0-9 . _ : / # -`, starting with a letter or digit.
    /// It is hashed to pick the invoice's partition.
    InvoiceId,
    RULE = TextRule {
        min_chars: 1,
        max_chars: 64,
        pattern: "^[A-Za-z0-9][A-Za-z0-9._:/#-]*$",
        describe: "letters, digits and . _ : / # -, starting with a letter or digit",
        check: |s| starts_alnum(s) && s.chars().all(is_id_char),
    }
);

text_atom!(
    /// The vendor's identifier in the producer's system (same alphabet as
    /// [`InvoiceId`]).
    VendorId,
    RULE = TextRule {
        min_chars: 1,
        max_chars: 64,
        pattern: "^[A-Za-z0-9][A-Za-z0-9._:/#-]*$",
        describe: "letters, digits and . _ : / # -, starting with a letter or digit",
        check: |s| starts_alnum(s) && s.chars().all(is_id_char),
    }
);

text_atom!(
    /// The vendor's legal name: 1–200 printable characters, any script.
    VendorName,
    RULE = TextRule {
        min_chars: 1,
        max_chars: 200,
        pattern: PRINTABLE_PATTERN,
        describe: "printable text without control characters",
        check: printable,
    }
);

text_atom!(
    /// A tax identifier (VAT number, EIN, ...): 1–32 characters of
    /// `A-Z a-z 0-9`, space, `. / -`, starting with a letter or digit.
    TaxId,
    RULE = TextRule {
        min_chars: 1,
        max_chars: 32,
        pattern: "^[A-Za-z0-9][A-Za-z0-9 ./-]*$",
        describe: "letters, digits, spaces and . / -, starting with a letter or digit",
        check: |s| starts_alnum(s) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '/' | '-')),
    }
);

text_atom!(
    /// Why a stage rejected the invoice: 1–500 printable characters.
    Reason,
    RULE = TextRule {
        min_chars: 1,
        max_chars: 500,
        pattern: PRINTABLE_PATTERN,
        describe: "printable text without control characters",
        check: printable,
    }
);

text_atom!(
    /// Ties together every event caused by one request (an X-Ray trace id, a
    /// UUID, ...): 1–128 characters of `A-Z a-z 0-9 . _ : / = + -`.
    CorrelationId,
    RULE = TextRule {
        min_chars: 1,
        max_chars: 128,
        pattern: "^[A-Za-z0-9][A-Za-z0-9._:/=+-]*$",
        describe: "letters, digits and . _ : / = + -, starting with a letter or digit",
        check: |s| starts_alnum(s) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '=' | '+' | '-')),
    }
);

text_atom!(
    /// The system that produced the event (`erp-sap`, `bems-ingestion`, ...):
    /// 1–64 characters of `A-Z a-z 0-9 . _ -`.
    Producer,
    RULE = TextRule {
        min_chars: 1,
        max_chars: 64,
        pattern: "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        describe: "letters, digits and . _ -, starting with a letter or digit",
        check: |s| starts_alnum(s) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
    }
);

text_atom!(
    /// A cell's identifier: 1–20 lowercase letters, digits and inner hyphens.
    /// It is part of every resource name of the cell, so it is kept short
    /// enough for SQS's 80-character queue names.
    CellId,
    RULE = TextRule {
        min_chars: 1,
        max_chars: 20,
        pattern: "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        describe: "lowercase letters, digits and inner hyphens",
        check: |s| {
            s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        },
    }
);

text_atom!(
    /// An AWS Region code such as `eu-west-1` or `us-gov-west-1`.
    Region,
    RULE = TextRule {
        min_chars: 9,
        max_chars: 25,
        pattern: "^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$",
        describe: "an AWS Region code such as eu-west-1",
        check: is_region,
    }
);

text_atom!(
    /// A 12-digit AWS account id.
    AccountId,
    RULE = TextRule {
        min_chars: 12,
        max_chars: 12,
        pattern: "^[0-9]{12}$",
        describe: "12 digits",
        check: |s| s.bytes().all(|b| b.is_ascii_digit()),
    }
);

fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return false;
    };
    first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && !middle.is_empty()
        && middle.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=2).contains(&last.len())
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// The event's unique id: a UUID in canonical lowercase hyphenated form.
///
/// It is the idempotency key of every consumer and the FIFO
/// `MessageDeduplicationId`, so one UUID must have exactly one spelling:
/// upper case, braces and the `urn:uuid:` form are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(Uuid);

impl EventId {
    /// The JSON Schema pattern of the canonical form.
    pub const PATTERN: &'static str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

    /// A new random (version 4) id.
    pub fn random() -> EventId {
        EventId(Uuid::new_v4())
    }

    /// Wraps a UUID.
    pub const fn from_uuid(uuid: Uuid) -> EventId {
        EventId(uuid)
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// Parses the canonical form.
    pub fn parse(s: &str) -> Result<EventId, FieldError> {
        let canonical = s.len() == 36
            && s.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            });
        if !canonical {
            return Err(FieldError::new(
                Code::InvalidUuid,
                "must be a lowercase hyphenated UUID (8-4-4-4-12 hex digits)",
            ));
        }
        Uuid::try_parse(s).map(EventId).map_err(|e| FieldError::new(Code::InvalidUuid, e.to_string()))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.hyphenated())
    }
}

impl std::str::FromStr for EventId {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<EventId, FieldError> {
        EventId::parse(s)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for EventId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EventId".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "pattern": EventId::PATTERN })
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case (`DE`, `US`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Checks the code against ISO 3166-1.
    pub fn new(code: &str) -> Result<CountryCode, FieldError> {
        let bytes = code.as_bytes();
        if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(FieldError::new(Code::InvalidFormat, "must be two upper-case letters (ISO 3166-1 alpha-2)"));
        }
        // celes matches case-insensitively; the upper-case check above keeps
        // one spelling per country.
        celes::Country::from_alpha2(code).map(|_| CountryCode([bytes[0], bytes[1]])).map_err(|_| {
            FieldError::new(Code::UnknownCode, format!("'{code}' is not an ISO 3166-1 alpha-2 country code"))
        })
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// Every assigned code, sorted: the JSON Schema enumeration.
    pub fn all() -> Vec<&'static str> {
        let mut codes: Vec<&'static str> = celes::Country::get_countries().iter().map(|c| c.alpha2).collect();
        codes.sort_unstable();
        codes.dedup();
        codes
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CountryCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for CountryCode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CountryCode".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "enum": CountryCode::all() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoice_ids_accept_common_erp_forms_and_refuse_others() {
        for ok in ["INV-2026-000123", "4500012345", "acme/inv#77", "a"] {
            assert!(InvoiceId::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(InvoiceId::new("").unwrap_err().code, Code::TooShort);
        assert_eq!(InvoiceId::new("x".repeat(65)).unwrap_err().code, Code::TooLong);
        assert_eq!(InvoiceId::new("-leading").unwrap_err().code, Code::InvalidFormat);
        assert_eq!(InvoiceId::new("has space").unwrap_err().code, Code::InvalidFormat);
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        // 200 three-byte characters are 600 bytes but within the limit.
        assert!(VendorName::new("é".repeat(200)).is_ok());
        assert_eq!(VendorName::new("é".repeat(201)).unwrap_err().code, Code::TooLong);
        assert_eq!(VendorName::new("Acme\u{7}").unwrap_err().code, Code::InvalidFormat);
    }

    #[test]
    fn regions_cell_ids_and_accounts() {
        for ok in ["eu-west-1", "us-gov-west-1", "ap-southeast-4", "eu-central-2"] {
            assert!(Region::new(ok).is_ok(), "{ok}");
        }
        for bad in ["eu-west", "euwest1", "EU-WEST-1", "e-west-1", "eu--1"] {
            assert!(Region::new(bad).is_err(), "{bad}");
        }
        assert!(CellId::new("prod-eu-1").is_ok());
        assert_eq!(CellId::new("-x").unwrap_err().code, Code::InvalidFormat);
        assert_eq!(CellId::new("Prod").unwrap_err().code, Code::InvalidFormat);
        assert!(AccountId::new("123456789012").is_ok());
        assert_eq!(AccountId::new("12345678901").unwrap_err().code, Code::TooShort);
        assert_eq!(AccountId::new("12345678901a").unwrap_err().code, Code::InvalidFormat);
    }

    #[test]
    fn event_ids_have_one_spelling() {
        let id = EventId::random();
        assert_eq!(EventId::parse(&id.to_string()), Ok(id));
        let upper = id.to_string().to_uppercase();
        assert_eq!(EventId::parse(&upper).unwrap_err().code, Code::InvalidUuid);
        assert_eq!(EventId::parse(&id.as_uuid().simple().to_string()).unwrap_err().code, Code::InvalidUuid);
        assert_eq!(EventId::parse("not-a-uuid").unwrap_err().code, Code::InvalidUuid);
    }

    #[test]
    fn country_codes_are_upper_case_iso_3166() {
        assert_eq!(CountryCode::new("DE").map(|c| c.to_string()), Ok("DE".to_owned()));
        assert_eq!(CountryCode::new("de").unwrap_err().code, Code::InvalidFormat);
        assert_eq!(CountryCode::new("XX").unwrap_err().code, Code::UnknownCode);
        assert_eq!(CountryCode::new("DEU").unwrap_err().code, Code::InvalidFormat);
        assert!(CountryCode::all().len() > 240);
    }
}
