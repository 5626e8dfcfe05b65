//! Go-style durations (`30s`, `1m30s`, `500ms`, `1h`) as written in kube-proxy's
//! configuration and in `ProxyConfig.spec.syncPeriod`.
//!
//! [`parse_duration`] is total: any input, however long or large, gives a value or an
//! error, never a panic (the first version converted through `f64` and panicked on
//! `99999999999999999999h`). Arithmetic is on integer nanoseconds in `u128` with checked
//! operations; a sum past [`Duration::MAX`] is an error, not a wrap.
//!
//! How large a duration a ProxyConfig may carry is a separate question, answered per
//! field by [`crate::bounds`]: a value that parses may still be refused as too long.

use std::time::Duration;

/// A duration string that is not of the form `<number><unit>...`, or is too large.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (expected e.g. \"30s\", \"1m30s\", \"500ms\")")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Fraction digits beyond this many cannot change the result by a nanosecond for any
/// unit up to hours, and bounding them keeps the arithmetic inside `u128`.
const MAX_FRACTION_DIGITS: usize = 18;

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "h" => 3600 * NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "s" => NANOS_PER_SEC,
        "ms" => 1_000_000,
        "us" | "µs" | "μs" => 1_000,
        "ns" => 1,
        _ => return None,
    })
}

/// One `<number><unit>` component, in nanoseconds.
fn component_nanos(number: &str, unit: &str) -> Result<u128, &'static str> {
    let scale = unit_nanos(unit).ok_or("unknown unit")?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err("expected a number");
    }
    if fraction.contains('.') {
        return Err("bad number");
    }
    let mut nanos: u128 = 0;
    for d in whole.bytes() {
        nanos = nanos
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(d - b'0')))
            .ok_or("too large")?;
    }
    nanos = nanos.checked_mul(scale).ok_or("too large")?;
    let kept = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
    if !kept.is_empty() {
        let digits: u128 = kept.parse().map_err(|_| "bad number")?;
        let denominator = 10u128.pow(kept.len() as u32);
        nanos = nanos
            .checked_add(digits * scale / denominator)
            .ok_or("too large")?;
    }
    Ok(nanos)
}

/// Parses a Go-style duration. Units: `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`; `0` alone is
/// zero. Never panics.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.chars().take(64).collect(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.starts_with('-') {
        return Err(err("negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit"))?;
        if num_len == 0 {
            return Err(err("expected a number"));
        }
        let (number, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos = component_nanos(number, unit).map_err(err)?;
        total = total.checked_add(nanos).ok_or_else(|| err("too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| err("too large"))?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1µs").unwrap(), Duration::from_micros(1));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("0.000000001s").unwrap(),
            Duration::from_nanos(1)
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "30", "s", "3x", "1..5s", ".s", "-1s", "1h-1m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Issue 14 defect 3: these panicked (the first) or parsed to values that later
    /// overflowed `Instant + d` (the second; now bounded per field, see `bounds`).
    #[test]
    fn huge_values_are_errors_or_values_never_panics() {
        let e = parse_duration("99999999999999999999h").unwrap_err();
        assert_eq!(e.reason, "too large");
        // Fits in a `Duration`; the per-field ceiling refuses it (`bounds`).
        assert!(parse_duration("3000000000000000h").is_ok());
        assert!(parse_duration(&format!("{}h", "9".repeat(400))).is_err());
        assert!(parse_duration(&format!("1.{}s", "9".repeat(400))).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn never_panics_on_any_string(s in "\\PC*") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn never_panics_on_duration_shaped_strings(
            s in "[+-]?([0-9]{0,30}(\\.[0-9]{0,30})?(h|m|s|ms|us|µs|ns|x)?){0,6}"
        ) {
            let _ = parse_duration(&s);
        }

        #[test]
        fn whole_seconds_round_trip(secs in 0u64..=u64::MAX / 2) {
            prop_assert_eq!(parse_duration(&format!("{secs}s")).unwrap(), Duration::from_secs(secs));
        }
    }
}
