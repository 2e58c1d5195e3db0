//! Durations as operators write them on a command line: `90` (seconds), `90s`,
//! `30m`, `1h`, `2d` (no I/O).
//!
//! Arithmetic is checked: a number whose seconds do not fit in 64 bits is an error
//! naming the limit, never a value that wrapped around (unchecked, a release build
//! would read `300000000000000000d` as some other, arbitrary number of seconds).

use std::time::Duration;

/// etcd's longest lease TTL (`MaxLeaseTTL` in etcd's lessor: 9,000,000,000 s).
pub const ETCD_MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;
/// The shortest subnet lease TTL: it must outlive a keepalive round trip.
pub const MIN_LEASE_TTL_SECS: u64 = 5;

/// What is wrong with a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration like 90s, 30m, 1h or 2d")]
    Syntax(String),
    #[error("{0:?}: the unit must be s, m, h or d")]
    Unit(String),
    #[error("{0:?} is too long: it does not fit in 2^64 seconds")]
    Overflow(String),
    #[error(
        "{text:?} is too short: the lease must survive a keepalive round trip (use {min}s or more)"
    )]
    TooShort { text: String, min: u64 },
    #[error("{text:?} is longer than etcd's longest lease TTL ({max} s, about 285 years)")]
    TooLong { text: String, max: u64 },
}

/// `90s` → (`90`, `s`): the leading digits and what follows them (`default_unit` when
/// nothing does).
fn split_unit<'a>(s: &'a str, default_unit: &'a str) -> (&'a str, &'a str) {
    match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, default_unit),
    }
}

/// Parses `90`, `90s`, `30m`, `1h`, `2d` (surrounding spaces allowed).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    let (num, unit) = split_unit(s, "s");
    if num.is_empty() {
        return Err(DurationError::Syntax(s.to_string()));
    }
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(DurationError::Unit(s.to_string())),
    };
    // Only digits are left, so a parse failure means more than 2^64.
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::Overflow(s.to_string()))?;
    let secs = n
        .checked_mul(scale)
        .ok_or_else(|| DurationError::Overflow(s.to_string()))?;
    Ok(Duration::from_secs(secs))
}

/// Parses a subnet lease TTL (`--subnet-lease-ttl`): a duration from 5 s up to
/// etcd's longest lease TTL.
pub fn parse_lease_ttl(text: &str) -> Result<Duration, DurationError> {
    let d = parse(text)?;
    let text = text.trim().to_string();
    if d.as_secs() < MIN_LEASE_TTL_SECS {
        return Err(DurationError::TooShort {
            text,
            min: MIN_LEASE_TTL_SECS,
        });
    }
    if d.as_secs() > ETCD_MAX_LEASE_TTL_SECS {
        return Err(DurationError::TooLong {
            text,
            max: ETCD_MAX_LEASE_TTL_SECS,
        });
    }
    Ok(d)
}

/// A short duration (`--aqm-target`, `--aqm-interval`): a whole number with `us`, `ms`
/// or `s`, in ns, within `min..=max` ns. The error says what to write.
pub fn parse_short_ns(text: &str, min: u64, max: u64) -> Result<u64, String> {
    const SYNTAX: &str = "use a whole number with us, ms or s (500us, 1ms, 2s)";
    let (digits, unit) = split_unit(text.trim(), "");
    let per = match unit {
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        _ => return Err(SYNTAX.into()),
    };
    let ns = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(per))
        .ok_or_else(|| SYNTAX.to_string())?;
    if ns < min || ns > max {
        return Err(format!(
            "use {} to {}",
            format_short_ns(min),
            format_short_ns(max)
        ));
    }
    Ok(ns)
}

/// ns in the largest whole unit of `us`, `ms` and `s` ([`parse_short_ns`] reads it back).
pub fn format_short_ns(ns: u64) -> String {
    if ns % 1_000_000_000 == 0 {
        format!("{}s", ns / 1_000_000_000)
    } else if ns % 1_000_000 == 0 {
        format!("{}ms", ns / 1_000_000)
    } else {
        format!("{}us", ns / 1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse(" 30m "), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert_eq!(parse("h"), Err(DurationError::Syntax("h".into())));
        assert_eq!(parse(""), Err(DurationError::Syntax("".into())));
        assert_eq!(parse("-1s"), Err(DurationError::Syntax("-1s".into())));
        assert_eq!(parse("1w"), Err(DurationError::Unit("1w".into())));
        assert_eq!(parse("1.5h"), Err(DurationError::Unit("1.5h".into())));
        assert_eq!(parse("1 h"), Err(DurationError::Unit("1 h".into())));
        assert!(parse("1w")
            .unwrap_err()
            .to_string()
            .contains("unit must be s, m, h or d"));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrapped_value() {
        // 300000000000000000 × 86400 is about 2.6e22 > 2^64: an unchecked multiply
        // wraps (in release builds) to 2,324,576,438,079,979,520 s.
        let e = parse("300000000000000000d").unwrap_err();
        assert_eq!(e, DurationError::Overflow("300000000000000000d".into()));
        assert!(e.to_string().contains("too long"), "{e}");
        assert!(matches!(
            parse("18446744073709551616"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse("307445734561825861m"),
            Err(DurationError::Overflow(_))
        ));
        // The largest values that fit are accepted.
        assert_eq!(
            parse("18446744073709551615"),
            Ok(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse("213503982334601d"),
            Ok(Duration::from_secs(213_503_982_334_601 * 86_400))
        );
    }

    #[test]
    fn lease_ttl_bounds() {
        assert_eq!(parse_lease_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_lease_ttl("5"), Ok(Duration::from_secs(5)));
        assert!(matches!(
            parse_lease_ttl("4s"),
            Err(DurationError::TooShort { min: 5, .. })
        ));
        assert!(matches!(
            parse_lease_ttl("1"),
            Err(DurationError::TooShort { .. })
        ));
        assert_eq!(
            parse_lease_ttl("104166d"),
            Ok(Duration::from_secs(104_166 * 86_400))
        );
        let e = parse_lease_ttl("104167d").unwrap_err();
        assert!(matches!(e, DurationError::TooLong { .. }), "{e}");
        assert!(e.to_string().contains("etcd's longest lease TTL"), "{e}");
        assert!(matches!(
            parse_lease_ttl("300000000000000000d"),
            Err(DurationError::Overflow(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_never_wraps(n in 0u64.., unit in "[smhd]?") {
            let text = format!("{n}{unit}");
            let scale: u128 = match unit.as_str() { "m" => 60, "h" => 3600, "d" => 86_400, _ => 1 };
            let exact = u128::from(n) * scale;
            match parse(&text) {
                Ok(d) => proptest::prop_assert_eq!(u128::from(d.as_secs()), exact),
                Err(e) => {
                    proptest::prop_assert!(exact > u128::from(u64::MAX), "{text}: {e}");
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,40}") {
            let _ = parse(&s);
            let _ = parse_lease_ttl(&s);
        }
    }
}
