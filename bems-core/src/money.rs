//! Amounts and currencies.
//!
//! An [`Amount`] is an exact decimal ([`rust_decimal::Decimal`]), never an
//! `f64`: `0.1 + 0.2` must stay `0.3` in a ledger. On the wire it is a JSON
//! *number* (so EventBridge and SNS numeric filters can match it) written
//! with exactly the digits it was read with: `1250.50` stays `1250.50`.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::violation::{Code, FieldError};

/// The largest amount, exclusive: 10^12.
///
/// With at most three decimals this keeps every amount within 15 significant
/// digits, which any consumer that reads JSON numbers as IEEE doubles
/// (EventBridge numeric rules, JavaScript dashboards, Python's `json`) holds
/// exactly. It still covers invoices of 999 billion in zero-decimal
/// currencies such as IDR or VND.
pub const MAX_AMOUNT_EXCLUSIVE: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);

/// A positive, exact invoice amount below [`MAX_AMOUNT_EXCLUSIVE`].
///
/// Whether its decimals suit the currency is checked on the whole event,
/// where the currency is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(Decimal);

impl Amount {
    /// Checks range and sign and wraps the value.
    pub fn new(value: Decimal) -> Result<Amount, FieldError> {
        if value <= Decimal::ZERO {
            return Err(FieldError::new(Code::NotPositive, format!("must be greater than 0, got {value}")));
        }
        if value >= MAX_AMOUNT_EXCLUSIVE {
            return Err(FieldError::new(
                Code::OutOfRange,
                format!("must be less than {MAX_AMOUNT_EXCLUSIVE}, got {value}"),
            ));
        }
        Ok(Amount(value))
    }

    /// Parses the text of a JSON number (as it appears on the wire, exponent
    /// allowed) without going through a float.
    pub fn from_json_number(text: &str) -> Result<Amount, FieldError> {
        let parsed =
            if text.contains(['e', 'E']) { Decimal::from_scientific(text) } else { Decimal::from_str_exact(text) };
        let value = parsed.map_err(|_| {
            FieldError::new(
                Code::OutOfRange,
                format!("must be less than {MAX_AMOUNT_EXCLUSIVE} with at most 28 significant digits"),
            )
        })?;
        Amount::new(value)
    }

    /// The exact value, with the scale it was given.
    pub const fn value(self) -> Decimal {
        self.0
    }

    /// Significant decimal places: `12.50` has 1, `12.345` has 3.
    pub fn decimal_places(self) -> u32 {
        self.0.normalize().scale()
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Amount {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Amount, FieldError> {
        Amount::from_json_number(s)
    }
}

impl Serialize for Amount {
    /// Writes a JSON number with the value's exact digits. This relies on
    /// `serde_json`'s raw values, which is the wire format of every BEMS
    /// message.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(self.0.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Amount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Amount".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "number",
            "exclusiveMinimum": 0,
            "exclusiveMaximum": 1_000_000_000_000_u64,
        })
    }
}

/// An ISO 4217 currency that has a minor unit (so not gold, SDRs or `XXX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// Checks the code against ISO 4217.
    pub fn new(code: &str) -> Result<Currency, FieldError> {
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(FieldError::new(Code::InvalidFormat, "must be three upper-case letters (ISO 4217)"));
        }
        match iso_currency::Currency::from_code(code) {
            Some(c) if c.exponent().is_some() && code != "XTS" => Ok(Currency(c)),
            Some(_) => Err(FieldError::new(
                Code::UnknownCode,
                format!(
                    "'{code}' is an ISO 4217 code without a minor unit (metal, fund or test code), not an invoice currency"
                ),
            )),
            None => Err(FieldError::new(Code::UnknownCode, format!("'{code}' is not an ISO 4217 currency code"))),
        }
    }

    /// The three-letter code.
    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Decimal places of the minor unit: 2 for EUR, 0 for JPY, 3 for BHD.
    pub fn minor_units(self) -> u32 {
        self.0.exponent().map_or(0, u32::from)
    }

    /// Every accepted currency, sorted by code.
    pub fn all() -> Vec<Currency> {
        use iso_currency::IntoEnumIterator;
        let mut all: Vec<Currency> =
            iso_currency::Currency::iter().filter_map(|c| Currency::new(c.code()).ok()).collect();
        all.sort_unstable_by_key(|c| c.code());
        all
    }

    /// Checks that `amount` has no more decimals than this currency's minor unit.
    pub fn check_amount(self, amount: Amount) -> Result<(), FieldError> {
        let places = amount.decimal_places();
        let allowed = self.minor_units();
        if places > allowed {
            return Err(FieldError::new(
                Code::TooManyDecimals,
                format!(
                    "{} allows at most {allowed} decimal place{}, got {places}",
                    self.code(),
                    if allowed == 1 { "" } else { "s" }
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Currency {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Currency".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let codes: Vec<&str> = Currency::all().into_iter().map(Currency::code).collect();
        schemars::json_schema!({ "type": "string", "enum": codes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_amount_constant_is_ten_to_the_twelfth() {
        assert_eq!(MAX_AMOUNT_EXCLUSIVE, Decimal::from(1_000_000_000_000_u64));
    }

    #[test]
    fn amounts_keep_their_exact_digits() {
        for text in ["1250.50", "0.01", "999999999999.999", "7", "0.1"] {
            let a = Amount::from_json_number(text).unwrap();
            assert_eq!(serde_json::to_string(&a).unwrap(), text);
        }
        assert_eq!(Amount::from_json_number("1.5e2").unwrap().value(), Decimal::from(150));
    }

    #[test]
    fn amounts_must_be_positive_and_in_range() {
        assert_eq!(Amount::from_json_number("0").unwrap_err().code, Code::NotPositive);
        assert_eq!(Amount::from_json_number("-3.5").unwrap_err().code, Code::NotPositive);
        assert_eq!(Amount::from_json_number("1000000000000").unwrap_err().code, Code::OutOfRange);
        assert_eq!(Amount::from_json_number("1e400").unwrap_err().code, Code::OutOfRange);
        assert_eq!(Amount::from_json_number("1.0000000000000000000000000000001").unwrap_err().code, Code::OutOfRange);
    }

    #[test]
    fn decimals_are_checked_against_the_currency_minor_unit() {
        let usd = Currency::new("USD").unwrap();
        let jpy = Currency::new("JPY").unwrap();
        let bhd = Currency::new("BHD").unwrap();
        let a = |s| Amount::from_json_number(s).unwrap();
        assert!(usd.check_amount(a("12.34")).is_ok());
        // Trailing zeros are not significant: 12.500 is 12.5.
        assert!(usd.check_amount(a("12.500")).is_ok());
        assert_eq!(usd.check_amount(a("12.345")).unwrap_err().code, Code::TooManyDecimals);
        assert!(jpy.check_amount(a("1200")).is_ok());
        assert_eq!(jpy.check_amount(a("1200.5")).unwrap_err().code, Code::TooManyDecimals);
        assert!(bhd.check_amount(a("1.234")).is_ok());
    }

    #[test]
    fn currencies_without_minor_units_are_refused() {
        assert_eq!(Currency::new("XAU").unwrap_err().code, Code::UnknownCode);
        assert_eq!(Currency::new("XTS").unwrap_err().code, Code::UnknownCode);
        assert_eq!(Currency::new("ABC").unwrap_err().code, Code::UnknownCode);
        assert_eq!(Currency::new("usd").unwrap_err().code, Code::InvalidFormat);
        let all = Currency::all();
        assert!(all.iter().any(|c| c.code() == "EUR"));
        assert!(all.iter().all(|c| c.code() != "XAU"));
    }
}
