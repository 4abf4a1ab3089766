//! Amounts on the wire: decimal strings of non-negative integers in atto units (10⁻¹⁸).

use crate::wire::Rejection;

/// Longest accepted amount string: u128 has 39 digits.
const MAX_DIGITS: usize = 39;

/// Parses `text` as an amount for `field`; the error names the field and the rule.
pub fn parse(field: &str, text: &str) -> Result<u128, Rejection> {
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
        .map_err(|_| invalid("must fit in 128 bits"))
}

/// Parses an amount that must be greater than zero.
pub fn parse_positive(field: &str, text: &str) -> Result<u128, Rejection> {
    match parse(field, text)? {
        0 => Err(Rejection::invalid(field, "must be greater than zero")),
        n => Ok(n),
    }
}

/// Digits after the point of a decimal amount: amounts are integers of 10⁻¹⁸ units.
pub const DECIMALS: u32 = 18;

/// A decimal number of whole units, such as "2.5", as atto units; `None` unless it has 1 to 18
/// integer digits and at most 18 fractional ones (the CRD price's pattern).
pub fn decimal_atto_units(text: &str) -> Option<u128> {
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
    Some(int * 10u128.pow(DECIMALS) + frac * frac_scale)
}

/// Converts a decimal number of whole units, such as "2.5", into atto units.
pub fn from_decimal_units(field: &str, text: &str) -> Result<u128, Rejection> {
    decimal_atto_units(text).ok_or_else(|| {
        Rejection::invalid(
            field,
            "must be a decimal number with at most 18 fractional digits, such as 2.5",
        )
    })
}

/// Formats atto units as whole units with the fractional part trimmed, such as "2.5".
pub fn to_decimal_units(atto: u128) -> String {
    const SCALE: u128 = 1_000_000_000_000_000_000;
    let (whole, fraction) = (atto / SCALE, atto % SCALE);
    if fraction == 0 {
        return whole.to_string();
    }
    let fraction = format!("{fraction:018}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_integers_only() {
        assert_eq!(parse("amount", "0"), Ok(0));
        assert_eq!(parse("amount", "1000"), Ok(1000));
        assert_eq!(parse("amount", &u128::MAX.to_string()), Ok(u128::MAX));
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
            Ok(2_500_000_000_000_000_000)
        );
        assert_eq!(to_decimal_units(2_500_000_000_000_000_000), "2.5");
        assert_eq!(to_decimal_units(3 * 1_000_000_000_000_000_000), "3");
        assert_eq!(to_decimal_units(1), "0.000000000000000001");
        assert!(from_decimal_units("p", "abc").is_err());
    }
}
