//! Reading a generic YAML tree by hand, so that every complaint carries its exact field path.
//!
//! Each reader takes the node and its path, records problems in a [`Report`], and returns
//! `None` when the value cannot be used. Callers keep going after a problem so one run reports
//! everything that is wrong with a document.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

/// Problems and warnings found in one document, as (field path, message).
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub errors: Vec<(String, String)>,
    pub warnings: Vec<(String, String)>,
}

impl Report {
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push((path.to_string(), message.into()));
    }

    pub fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push((path.to_string(), message.into()));
    }
}

pub(crate) fn field(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

pub(crate) fn key(path: &str, k: &str) -> String {
    format!("{path}[{k:?}]")
}

/// What a YAML value is, in words (for "expected X, found Y").
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) if n.is_f64() => format!("a number ({n})"),
        Value::Number(n) => format!("an integer ({n})"),
        Value::String(s) => format!("a string ({})", quote_short(s)),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn quote_short(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

/// A mapping whose keys were checked against the allowed field names.
pub(crate) struct Fields<'a> {
    map: &'a Mapping,
    path: String,
}

impl<'a> Fields<'a> {
    /// The value of a field, `None` when absent or null (YAML `~` means "not set").
    pub fn get(&self, name: &str) -> Option<(&'a Value, String)> {
        match self.map.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some((v, field(&self.path, name))),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Reads a mapping and rejects any field not in `allowed`, suggesting the nearest name.
pub(crate) fn fields<'a>(
    report: &mut Report,
    value: &'a Value,
    path: &str,
    allowed: &[&str],
) -> Option<Fields<'a>> {
    let Value::Mapping(map) = value else {
        report.error(
            path,
            format!("expected a mapping, found {}", describe(value)),
        );
        return None;
    };
    for k in map.keys() {
        match k {
            Value::String(name) if allowed.contains(&name.as_str()) => {}
            Value::String(name) => report.error(&field(path, name), unknown_field(name, allowed)),
            other => report.error(
                path,
                format!("field names must be strings, found {}", describe(other)),
            ),
        }
    }
    Some(Fields {
        map,
        path: path.to_string(),
    })
}

/// "unknown field 'x' (did you mean 'y'?)", or the list of valid fields when none is close.
pub(crate) fn unknown_field(name: &str, allowed: &[&str]) -> String {
    match nearest(name, allowed) {
        Some(best) => format!("unknown field '{name}' (did you mean '{best}'?)"),
        None if allowed.is_empty() => {
            format!("unknown field '{name}' (no fields are allowed here)")
        }
        None => format!(
            "unknown field '{name}' (expected one of: {})",
            allowed.join(", ")
        ),
    }
}

/// The candidate closest to `name`, if it is close enough to be a likely typo.
pub(crate) fn nearest<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let lower = name.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| {
            let d = strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase());
            (d, *c)
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub(crate) fn string(report: &mut Report, value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => {
            report.error(
                path,
                format!(
                    "expected a string, found {} (quote it to make it a string)",
                    describe(value)
                ),
            );
            None
        }
        other => {
            report.error(
                path,
                format!("expected a string, found {}", describe(other)),
            );
            None
        }
    }
}

/// A string that must not be empty.
pub(crate) fn nonempty_string(report: &mut Report, value: &Value, path: &str) -> Option<String> {
    let s = string(report, value, path)?;
    if s.trim().is_empty() {
        report.error(path, "must not be empty");
        return None;
    }
    Some(s)
}

pub(crate) fn boolean(report: &mut Report, value: &Value, path: &str) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        other => {
            report.error(
                path,
                format!("expected true or false, found {}", describe(other)),
            );
            None
        }
    }
}

/// An unsigned integer no larger than `max` (range checks beyond that are the caller's).
pub(crate) fn integer(report: &mut Report, value: &Value, path: &str, max: u64) -> Option<u64> {
    let Value::Number(n) = value else {
        report.error(
            path,
            format!("expected an integer, found {}", describe(value)),
        );
        return None;
    };
    if let Some(u) = n.as_u64() {
        if u > max {
            report.error(path, format!("must be at most {max}, found {u}"));
            return None;
        }
        return Some(u);
    }
    if let Some(i) = n.as_i64() {
        // Only negative numbers get here.
        report.error(path, format!("must not be negative, found {i}"));
        return None;
    }
    let message = match n.as_f64() {
        Some(f) if f.is_finite() && f.fract() == 0.0 && f > 0.0 => {
            format!("must be at most {max}, found {n}")
        }
        _ => format!("expected an integer, found {}", describe(value)),
    };
    report.error(path, message);
    None
}

/// A Go-style duration string (`10s`, `500ms`, `1m30s`).
pub(crate) fn duration(report: &mut Report, value: &Value, path: &str) -> Option<Duration> {
    let Value::String(s) = value else {
        report.error(
            path,
            format!(
                "expected a duration such as \"10s\" or \"500ms\", found {}",
                describe(value)
            ),
        );
        return None;
    };
    match crate::duration::parse_go(s) {
        Ok(d) => Some(d),
        // Do not echo a whole megabyte back at the user.
        Err(_) if s.len() > 64 => {
            report.error(
                path,
                format!("invalid duration {}: too long", quote_short(s)),
            );
            None
        }
        Err(e) => {
            report.error(path, e);
            None
        }
    }
}

pub(crate) fn list<'a>(report: &mut Report, value: &'a Value, path: &str) -> Option<&'a [Value]> {
    match value {
        Value::Sequence(items) => Some(items),
        other => {
            report.error(path, format!("expected a list, found {}", describe(other)));
            None
        }
    }
}

/// A mapping of non-empty strings to non-empty strings (tags, labels).
pub(crate) fn string_map(
    report: &mut Report,
    value: &Value,
    path: &str,
) -> Option<BTreeMap<String, String>> {
    let Value::Mapping(map) = value else {
        report.error(
            path,
            format!("expected a mapping, found {}", describe(value)),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, v) in map {
        let Value::String(k) = k else {
            report.error(path, format!("keys must be strings, found {}", describe(k)));
            ok = false;
            continue;
        };
        let p = key(path, k);
        if k.is_empty() {
            report.error(&p, "key must not be empty");
            ok = false;
        }
        match nonempty_string(report, v, &p) {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_field() {
        assert_eq!(
            nearest("requestrate", &["disabled", "requestRate", "onRateLimit"]),
            Some("requestRate")
        );
        assert_eq!(nearest("intreval", &["num", "interval"]), Some("interval"));
        assert_eq!(nearest("nmu", &["num", "interval"]), Some("num"));
        assert_eq!(nearest("zzzzzz", &["num", "interval"]), None);
        assert_eq!(
            unknown_field("tpc", &["tcp", "http"]),
            "unknown field 'tpc' (did you mean 'tcp'?)"
        );
        assert_eq!(
            unknown_field("zzzzzz", &["tcp", "http"]),
            "unknown field 'zzzzzz' (expected one of: tcp, http)"
        );
    }

    #[test]
    fn integers_reject_wrong_types_and_sizes() {
        let mut r = Report::default();
        let v: Value = serde_yaml_ng::from_str("[5, -1, 1.5, 1.0e30, \"5\", 4294967296]").unwrap();
        let items = v.as_sequence().unwrap();
        assert_eq!(integer(&mut r, &items[0], "a", u32::MAX.into()), Some(5));
        for item in &items[1..] {
            assert_eq!(integer(&mut r, item, "a", u32::MAX.into()), None);
        }
        let messages: Vec<_> = r.errors.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(messages[0], "must not be negative, found -1");
        assert_eq!(messages[1], "expected an integer, found a number (1.5)");
        assert!(
            messages[2].starts_with("must be at most 4294967295"),
            "{}",
            messages[2]
        );
        assert_eq!(messages[3], "expected an integer, found a string (\"5\")");
        assert_eq!(messages[4], "must be at most 4294967295, found 4294967296");
    }
}
