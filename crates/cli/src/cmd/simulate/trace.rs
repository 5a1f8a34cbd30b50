//! Traces for `meshlimit simulate`: one arrival per line, an offset in milliseconds from the
//! start (decimals down to the nanosecond), non-decreasing. Blank lines and `#` comments are
//! skipped. Every problem names the file and line.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};

/// One arrival: the offset as written (echoed in the output) and in nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    pub text: String,
    pub offset_ns: u64,
}

/// A trace that cannot be used, with where and why.
#[derive(Debug)]
pub enum TraceError {
    Open {
        path: String,
        source: io::Error,
    },
    Read {
        name: String,
        line: usize,
        source: io::Error,
    },
    Malformed {
        name: String,
        line: usize,
        text: String,
        reason: String,
    },
    Decreasing {
        name: String,
        line: usize,
        text: String,
        previous: String,
    },
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Open { path, source } => {
                write!(f, "cannot open arrivals file {path}: {source}")
            }
            TraceError::Read { name, line, source } => {
                write!(f, "{name}:{line}: cannot read: {source}")
            }
            TraceError::Malformed {
                name,
                line,
                text,
                reason,
            } => write!(
                f,
                "{name}:{line}: {text:?} is not an arrival offset: {reason} \
                 (expected milliseconds from the start, e.g. 250 or 1000.5)"
            ),
            TraceError::Decreasing {
                name,
                line,
                text,
                previous,
            } => write!(
                f,
                "{name}:{line}: offset {text} comes before the previous arrival at {previous} \
                 (offsets must not decrease)"
            ),
        }
    }
}

impl std::error::Error for TraceError {}

/// Reads the trace at `path`, or standard input for `-`.
pub fn read(path: &str) -> Result<Vec<Arrival>, TraceError> {
    if path == "-" {
        let stdin = io::stdin();
        return parse(crate::cmd::STDIN_LABEL, stdin.lock().lines());
    }
    let file = File::open(path).map_err(|source| TraceError::Open {
        path: path.to_string(),
        source,
    })?;
    parse(path, BufReader::new(file).lines())
}

/// Parses trace lines; `name` is used in errors.
pub fn parse(
    name: &str,
    lines: impl Iterator<Item = io::Result<String>>,
) -> Result<Vec<Arrival>, TraceError> {
    let mut arrivals: Vec<Arrival> = Vec::new();
    for (index, line) in lines.enumerate() {
        let number = index + 1;
        let line = line.map_err(|source| TraceError::Read {
            name: name.to_string(),
            line: number,
            source,
        })?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let offset_ns = parse_offset_ms(text).map_err(|reason| TraceError::Malformed {
            name: name.to_string(),
            line: number,
            text: text.to_string(),
            reason,
        })?;
        if let Some(previous) = arrivals.last()
            && offset_ns < previous.offset_ns
        {
            return Err(TraceError::Decreasing {
                name: name.to_string(),
                line: number,
                text: text.to_string(),
                previous: previous.text.clone(),
            });
        }
        arrivals.push(Arrival {
            text: text.to_string(),
            offset_ns,
        });
    }
    Ok(arrivals)
}

/// `"1000.5"` ms → 1_000_500_000 ns, exactly.
fn parse_offset_ms(text: &str) -> Result<u64, String> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err("no digits".into());
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err("only digits and one decimal point are allowed".into());
    }
    if fraction.len() > 6 {
        return Err("more than 6 decimals (finer than a nanosecond)".into());
    }
    let too_large = || "too large".to_string();
    let whole_ms: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let fraction_ns: u64 = if fraction.is_empty() {
        0
    } else {
        let digits: u64 = fraction.parse().map_err(|_| too_large())?;
        digits * 10u64.pow(6 - fraction.len() as u32)
    };
    whole_ms
        .checked_mul(1_000_000)
        .and_then(|ns| ns.checked_add(fraction_ns))
        .ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> impl Iterator<Item = io::Result<String>> + '_ {
        text.lines().map(|l| Ok(l.to_string()))
    }

    #[test]
    fn offsets_are_exact_milliseconds() {
        assert_eq!(parse_offset_ms("0"), Ok(0));
        assert_eq!(parse_offset_ms("1000.5"), Ok(1_000_500_000));
        assert_eq!(parse_offset_ms("333.333334"), Ok(333_333_334));
        assert_eq!(parse_offset_ms(".5"), Ok(500_000));
        assert_eq!(parse_offset_ms("7."), Ok(7_000_000));
        for bad in [
            "",
            ".",
            "-1",
            "1e3",
            "1.2.3",
            "1.0000001",
            "12 ms",
            "99999999999999999999",
        ] {
            assert!(parse_offset_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("trace.txt", lines("0\n\n# burst\n5\nfive\n")).unwrap_err();
        assert!(
            err.to_string().starts_with("trace.txt:5: \"five\""),
            "{err}"
        );
        let err = parse("trace.txt", lines("10\n9.5\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "trace.txt:2: offset 9.5 comes before the previous arrival at 10 (offsets must not decrease)"
        );
        let ok = parse("t", lines(" 1 \n1\n2.25\n")).unwrap();
        assert_eq!(
            ok.iter().map(|a| a.offset_ns).collect::<Vec<_>>(),
            [1_000_000, 1_000_000, 2_250_000]
        );
    }
}
