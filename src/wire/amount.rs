//! Money: [`Amount`], an integer of atto units (10⁻¹⁸ of a whole unit), on the wire and on disk
//! a decimal string of that integer. No floats anywhere; parsing fails loudly; arithmetic that
//! would overflow is an error, never a stand-in value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::wire::Rejection;

/// An amount of money in atto units of its denomination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u128);

/// Arithmetic on amounts that left the 128 bits they have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} does not fit in an amount")]
pub struct Overflow(pub &'static str);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub const fn from_atto(atto: u128) -> Amount {
        Amount(atto)
    }

    pub const fn atto(self) -> u128 {
        self.0
    }

    pub fn checked_add(self, other: Amount, what: &'static str) -> Result<Amount, Overflow> {
        self.0
            .checked_add(other.0)
            .map(Amount)
            .ok_or(Overflow(what))
    }

    pub fn checked_sub(self, other: Amount, what: &'static str) -> Result<Amount, Overflow> {
        self.0
            .checked_sub(other.0)
            .map(Amount)
            .ok_or(Overflow(what))
    }

    /// What is left of `self` after `other`; zero when `other` is larger.
    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }

    /// As a signed balance term, for sums that may go below zero.
    pub fn signed(self, what: &'static str) -> Result<i128, Overflow> {
        i128::try_from(self.0).map_err(|_| Overflow(what))
    }

    /// Whole units with the fractional part trimmed, such as "2.5".
    pub fn to_decimal_units(self) -> String {
        let scale = 10u128.pow(DECIMALS);
        let (whole, fraction) = (self.0 / scale, self.0 % scale);
        if fraction == 0 {
            return whole.to_string();
        }
        let fraction = format!("{fraction:018}");
        format!("{whole}.{}", fraction.trim_end_matches('0'))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl schemars::JsonSchema for Amount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Amount".into()
    }

    /// Inline: a CRD's structural schema has no references.
    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Atto units (10^-18 of a whole unit), a decimal integer.",
            "pattern": "^(0|[1-9][0-9]{0,38})$"
        })
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A string: JSON numbers lose integers past 2^53.
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse("amount", &text).map_err(serde::de::Error::custom)
    }
}

/// Longest accepted amount string: u128 has 39 digits.
const MAX_DIGITS: usize = 39;

/// An amount in atto units as a person reads it, with its denomination ("0.35 USDC"); the text
/// as sent when it is not an amount.
pub fn in_units(atto: &str, denomination: &str) -> String {
    parse("amount", atto).map_or_else(
        |_| format!("{atto} {denomination}"),
        |a| format!("{} {denomination}", a.to_decimal_units()),
    )
}

/// Parses `text` as an amount for `field`; the error names the field and the rule.
pub fn parse(field: &str, text: &str) -> Result<Amount, Rejection> {
    let invalid = |rule: &str| Rejection::invalid(field, rule);
    if text.is_empty() {
        return Err(invalid("must be a non-empty decimal integer of atto units"));
    }
    if text.len() > MAX_DIGITS {
        return Err(invalid("must have at most 39 digits"));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("must contain only the digits 0-9"));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(invalid("must not have leading zeros"));
    }
    text.parse::<u128>()
        .map(Amount)
        .map_err(|_| invalid("must fit in 128 bits"))
}

/// Parses an amount that must be greater than zero.
pub fn parse_positive(field: &str, text: &str) -> Result<Amount, Rejection> {
    match parse(field, text)? {
        Amount::ZERO => Err(Rejection::invalid(field, "must be greater than zero")),
        n => Ok(n),
    }
}

/// Digits after the point of a decimal amount: amounts are integers of 10⁻¹⁸ units.
pub const DECIMALS: u32 = 18;

/// A decimal number of whole units, such as "2.5", as atto units; `None` unless it has 1 to 18
/// integer digits and at most 18 fractional ones (the CRD price's pattern).
pub fn decimal_atto_units(text: &str) -> Option<Amount> {
    let (int_part, frac_part) = text.split_once('.').unwrap_or((text, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty()
        || int_part.len() > 18
        || frac_part.len() > DECIMALS as usize
        || !digits_only(int_part)
        || !digits_only(frac_part)
        || (text.contains('.') && frac_part.is_empty())
    {
        return None;
    }
    let int: u128 = int_part.parse().ok()?;
    let frac: u128 = if frac_part.is_empty() {
        0
    } else {
        frac_part.parse().ok()?
    };
    let frac_scale = 10u128.pow(DECIMALS - frac_part.len() as u32);
    Some(Amount(int * 10u128.pow(DECIMALS) + frac * frac_scale))
}

/// Converts a decimal number of whole units, such as "2.5", into atto units.
pub fn from_decimal_units(field: &str, text: &str) -> Result<Amount, Rejection> {
    decimal_atto_units(text).ok_or_else(|| {
        Rejection::invalid(
            field,
            "must be a decimal number with at most 18 fractional digits, such as 2.5",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_keep_all_128_bits_and_refuse_what_is_not_one() {
        let max = Amount::from_atto(u128::MAX);
        let json = serde_json::to_string(&max).unwrap();
        assert_eq!(json, format!("\"{}\"", u128::MAX));
        assert_eq!(serde_json::from_str::<Amount>(&json).unwrap(), max);
        for bad in [r#""""#, r#""-1""#, r#""1.5""#, "7"] {
            assert!(serde_json::from_str::<Amount>(bad).is_err(), "{bad}");
        }
        let one = Amount::from_atto(1);
        assert_eq!(max.checked_add(one, "sum"), Err(Overflow("sum")));
        assert_eq!(Amount::ZERO.checked_sub(one, "left"), Err(Overflow("left")));
        assert_eq!(max.signed("balance"), Err(Overflow("balance")));
        assert_eq!(one.signed("balance"), Ok(1));
        assert_eq!(
            Amount::from_atto(2_500_000_000_000_000_000).to_decimal_units(),
            "2.5"
        );
    }

    #[test]
    fn parses_plain_integers_only() {
        let a = Amount::from_atto;
        assert_eq!(parse("amount", "0"), Ok(a(0)));
        assert_eq!(parse("amount", "1000"), Ok(a(1000)));
        assert_eq!(parse("amount", &u128::MAX.to_string()), Ok(a(u128::MAX)));
        for bad in [
            "",
            "-1",
            "1.5",
            " 1",
            "01",
            "1e3",
            "+1",
            "340282366920938463463374607431768211456",
        ] {
            let err = parse("amount", bad).unwrap_err();
            assert!(err.to_string().starts_with("amount: "), "{bad}: {err}");
        }
        assert!(
            parse("amount", &"9".repeat(40))
                .unwrap_err()
                .to_string()
                .contains("39 digits")
        );
        assert!(
            parse_positive("deposit.amount", "0")
                .unwrap_err()
                .to_string()
                .contains("greater than zero")
        );
    }

    #[test]
    fn decimal_units_round_trip() {
        assert_eq!(
            from_decimal_units("p", "2.5"),
            Ok(Amount(2_500_000_000_000_000_000))
        );
        assert_eq!(Amount(2_500_000_000_000_000_000).to_decimal_units(), "2.5");
        assert_eq!(
            Amount(3 * 1_000_000_000_000_000_000).to_decimal_units(),
            "3"
        );
        assert_eq!(Amount(1).to_decimal_units(), "0.000000000000000001");
        assert!(from_decimal_units("p", "abc").is_err());
    }

    #[test]
    fn amounts_read_in_whole_units_with_their_denomination() {
        assert_eq!(in_units("350000000000000000", "USDC"), "0.35 USDC");
        assert_eq!(in_units("2000000000000000000", "USDC"), "2 USDC");
        assert_eq!(in_units("x", "USDC"), "x USDC");
    }
}
