//! Whole-device counts from Kubernetes quantities.
//!
//! GPUs are extended resources, which the apiserver only admits as whole numbers, but a quantity
//! may still be spelled "8", "8000m" or "1k". Every count here is an integer: nothing is ever
//! rounded through a float or a percentage.

/// Which way a fractional quantity is rounded to a whole count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// For capacity: never claim a device that is not wholly there.
    Down,
    /// For requests: never count less than what was asked for.
    Up,
}

/// Parses a Kubernetes quantity into a whole count, or `None` when it is not a valid quantity or
/// is negative or too large to be a device count.
pub fn parse_count(quantity: &str, rounding: Rounding) -> Option<u32> {
    let (numerator, denominator) = exact(quantity)?;
    let whole = match rounding {
        Rounding::Down => numerator / denominator,
        Rounding::Up => numerator.div_ceil(denominator),
    };
    u32::try_from(whole).ok()
}

/// How two quantities compare ("512Mi" is less than "1Gi", "1500m" more than "1"), exactly;
/// `None` when either is not a valid non-negative quantity or is too large to compare.
pub fn compare(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    let (an, ad) = exact(a)?;
    let (bn, bd) = exact(b)?;
    Some(an.checked_mul(bd)?.cmp(&bn.checked_mul(ad)?))
}

/// A non-negative quantity as the exact fraction numerator / denominator.
fn exact(quantity: &str) -> Option<(u128, u128)> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.is_empty() || number.starts_with('-') {
        return None;
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if !int_part.chars().all(|c| c.is_ascii_digit())
        || !frac_part.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    // value = digits / 10^scale * multiplier, carried exactly as (numerator, denominator).
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return None;
    }
    let mut numerator: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let mut denominator: u128 = 10u128.checked_pow(frac_part.len() as u32)?;
    match suffix {
        "" => {}
        "n" => denominator = denominator.checked_mul(1_000_000_000)?,
        "u" => denominator = denominator.checked_mul(1_000_000)?,
        "m" => denominator = denominator.checked_mul(1_000)?,
        "k" => numerator = numerator.checked_mul(1_000)?,
        "M" => numerator = numerator.checked_mul(1_000_000)?,
        "G" => numerator = numerator.checked_mul(1_000_000_000)?,
        "T" => numerator = numerator.checked_mul(1_000_000_000_000)?,
        "P" => numerator = numerator.checked_mul(1_000_000_000_000_000)?,
        // "E" alone is exa; "E" followed by digits is an exponent (below).
        "E" => numerator = numerator.checked_mul(1_000_000_000_000_000_000)?,
        "Ki" => numerator = numerator.checked_mul(1 << 10)?,
        "Mi" => numerator = numerator.checked_mul(1 << 20)?,
        "Gi" => numerator = numerator.checked_mul(1 << 30)?,
        "Ti" => numerator = numerator.checked_mul(1 << 40)?,
        "Pi" => numerator = numerator.checked_mul(1 << 50)?,
        "Ei" => numerator = numerator.checked_mul(1 << 60)?,
        s if s.starts_with(['e', 'E']) => {
            let exponent: i32 = s[1..].parse().ok()?;
            if exponent >= 0 {
                numerator = numerator.checked_mul(10u128.checked_pow(exponent as u32)?)?;
            } else {
                denominator = denominator.checked_mul(10u128.checked_pow((-exponent) as u32)?)?;
            }
        }
        _ => return None,
    }
    Some((numerator, denominator))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn quantities_compare_exactly_across_suffixes() {
        for (a, b, want) in [
            ("128Mi", "32Mi", Ordering::Greater),
            ("512Mi", "1Gi", Ordering::Less),
            ("1Gi", "1024Mi", Ordering::Equal),
            ("1G", "1Gi", Ordering::Less),
            ("100m", "0.1", Ordering::Equal),
            ("1500m", "1", Ordering::Greater),
            ("134217728", "128Mi", Ordering::Equal),
        ] {
            assert_eq!(compare(a, b), Some(want), "{a} vs {b}");
        }
        assert_eq!(compare("1x", "1"), None);
        assert_eq!(compare("-1", "1"), None);
    }

    #[test]
    fn whole_numbers_in_every_spelling() {
        for (q, want) in [
            ("0", 0),
            ("8", 8),
            ("+8", 8),
            ("8000m", 8),
            ("1k", 1000),
            ("8e0", 8),
            ("80e-1", 8),
            ("1Ki", 1024),
            ("007", 7),
        ] {
            assert_eq!(parse_count(q, Rounding::Down), Some(want), "{q}");
            assert_eq!(parse_count(q, Rounding::Up), Some(want), "{q}");
        }
    }

    #[test]
    fn every_suffix_kubernetes_accepts() {
        for (q, down, up) in [
            ("0.000001T", 1_000_000, 1_000_000),
            ("0.000001P", 1_000_000_000, 1_000_000_000),
            ("0.000000000000000003E", 3, 3),
            ("2E0", 2, 2),
            ("0.001Ti", 1_099_511_627, 1_099_511_628),
            ("0.000000000001Pi", 1125, 1126),
            ("0.000000000000000001Ei", 1, 2),
        ] {
            assert_eq!(parse_count(q, Rounding::Down), Some(down), "{q}");
            assert_eq!(parse_count(q, Rounding::Up), Some(up), "{q}");
        }
    }

    #[test]
    fn fractions_round_the_safe_way() {
        assert_eq!(parse_count("1500m", Rounding::Down), Some(1));
        assert_eq!(parse_count("1500m", Rounding::Up), Some(2));
        assert_eq!(parse_count("0.5", Rounding::Down), Some(0));
        assert_eq!(parse_count("0.5", Rounding::Up), Some(1));
        assert_eq!(parse_count("1n", Rounding::Up), Some(1));
    }

    #[test]
    fn garbage_and_negative_are_rejected() {
        for q in [
            "",
            "-1",
            "abc",
            "1x",
            "1.2.3",
            ".",
            "1e",
            "99999999999999",
            // Valid quantities, but more devices than a count holds.
            "1Ti",
            "5T",
            "1E",
        ] {
            assert_eq!(parse_count(q, Rounding::Down), None, "{q}");
        }
    }
}
