//! Go-style durations (`500ms`, `10s`, `1m30s`), as Kuma and the CLI write them.

use std::time::Duration;

/// Formats a duration the way Go's `time.Duration.String()` does (`1m30s`, `500ms`, `1.5s`).
pub fn format_go(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", trim_fraction(ns, 1_000));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim_fraction(ns, 1_000_000));
    }
    let total_s = ns / 1_000_000_000;
    let frac_ns = ns % 1_000_000_000;
    let h = total_s / 3600;
    let m = (total_s % 3600) / 60;
    let s = total_s % 60;
    let secs = trim_fraction(
        u128::from(s as u64) * 1_000_000_000 + frac_ns,
        1_000_000_000,
    );
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{secs}s"));
    out
}

fn trim_fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Parses a Go-style duration: a sequence of decimal numbers with units `ns`, `us`/`µs`, `ms`,
/// `s`, `m`, `h` (e.g. `1m30s`, `1.5s`, `500ms`). No sign; `0` alone is zero.
pub fn parse_go(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| {
                format!("invalid duration {text:?}: missing unit (ns, us, ms, s, m, h)")
            })?;
        if num_len == 0 {
            return Err(format!("invalid duration {text:?}: expected a number"));
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ns, us, ms, s, m, h)"
                ));
            }
        };
        let (whole, frac) = match num.split_once('.') {
            Some((w, f)) => (w, f),
            None => (num, ""),
        };
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(format!("invalid duration {text:?}: bad number {num:?}"));
        }
        let whole_v: u128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| format!("invalid duration {text:?}: number too large"))?
        };
        let mut part = whole_v
            .checked_mul(unit_ns)
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        let mut scale = unit_ns;
        for digit in frac.chars().take(30) {
            scale /= 10;
            if scale == 0 {
                break;
            }
            part += u128::from(digit.to_digit(10).unwrap_or(0)) * scale;
        }
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        rest = next;
    }
    let nanos =
        u64::try_from(total).map_err(|_| format!("invalid duration {text:?}: too large"))?;
    Ok(Duration::from_nanos(nanos))
}

/// `#[serde(with = "crate::duration::serde_go")]` for `Duration` fields.
pub mod serde_go {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_go(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_go(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_go_durations() {
        for (text, ns, shown) in [
            ("500ms", 500_000_000u64, "500ms"),
            ("10s", 10_000_000_000, "10s"),
            ("1m30s", 90_000_000_000, "1m30s"),
            ("1.5s", 1_500_000_000, "1.5s"),
            ("2h", 7_200_000_000_000, "2h0m0s"),
            ("250us", 250_000, "250µs"),
            ("7ns", 7, "7ns"),
        ] {
            let d = parse_go(text).unwrap();
            assert_eq!(d.as_nanos(), u128::from(ns), "{text}");
            assert_eq!(format_go(d), shown, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_durations() {
        for text in ["", "10", "s", "1x", "-1s", "1..5s", "99999999999999999999h"] {
            assert!(parse_go(text).is_err(), "{text:?} should fail");
        }
    }
}
