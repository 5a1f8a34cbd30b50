//! The pieces `MeshRateLimit` and `MeshGlobalRateLimit` are both made of (besides targetRefs,
//! in `target_ref`): `from[]`/`to[]` entries, rates, `onRateLimit` with its headers, and enumerated values.

use std::time::Duration;

use serde_yaml_ng::Value;

use super::target_ref::{Opts, target_ref};
use crate::model::{HeaderChanges, OnRateLimit, TargetRef};
use crate::quota::{self, HeaderValue, Rate, RejectStatus};
use crate::tree::{self, Report, field, index};

/// Kuma's limit on `onRateLimit.headers.set` and `.add`.
const MAX_HEADERS: usize = 16;

/// Kuma: `rules` replaces `from` and `to`, so a spec holds one or the other.
pub(crate) fn rules_exclude_from_to(report: &mut Report, f: &tree::Fields<'_>) -> bool {
    let has = |name: &str| match f.get(name) {
        Some((Value::Sequence(items), _)) => !items.is_empty(),
        Some(_) => true,
        None => false,
    };
    if has("rules") && (has("from") || has("to")) {
        report.error(
            f.path(),
            "fields 'to' and 'from' must be empty when 'rules' is defined",
        );
        return false;
    }
    true
}

/// A `from[]` or `to[]` entry: a targetRef of kind Mesh (required) and the `default` that
/// `conf` reads (given the value, if any, and its path).
pub(crate) fn from_to_entry<C>(
    report: &mut Report,
    value: &Value,
    path: &str,
    conf: impl FnOnce(&mut Report, Option<&Value>, &str) -> Option<C>,
) -> Option<(TargetRef, C)> {
    let f = tree::fields(report, value, path, &["targetRef", "default"])?;
    let target = match f.get("targetRef") {
        None => {
            report.error(&field(path, "targetRef"), "must be defined");
            None
        }
        Some((v, p)) => target_ref(report, v, &p, Opts::MESH_ONLY),
    };
    let conf = conf(
        report,
        f.get("default").map(|(v, _)| v),
        &field(path, "default"),
    );
    Some((target?, conf?))
}

/// `{num, interval}`; `interval` says what is wrong with an interval, if anything.
pub(crate) fn rate(
    report: &mut Report,
    value: &Value,
    path: &str,
    interval: fn(Duration) -> Option<&'static str>,
) -> Option<Rate> {
    let f = tree::fields(report, value, path, &["num", "interval"])?;
    let num = match f.get("num") {
        None => {
            report.error(&field(path, "num"), "must be defined");
            None
        }
        Some((v, p)) => match tree::integer(report, v, &p, u32::MAX.into()) {
            Some(0) => {
                report.error(&p, "must be greater than 0");
                None
            }
            Some(n) => u32::try_from(n).ok(),
            None => None,
        },
    };
    let interval = match f.get("interval") {
        None => {
            report.error(&field(path, "interval"), "must be defined");
            None
        }
        Some((v, p)) => match tree::duration(report, v, &p) {
            Some(d) => match interval(d) {
                Some(problem) => {
                    report.error(&p, problem);
                    None
                }
                None => Some(d),
            },
            None => None,
        },
    };
    // The engine serves every rate validation lets through: built here, once.
    match Rate::new(num?, interval?) {
        Ok(rate) => Some(rate),
        Err(error) => {
            report.error(&field(path, "interval"), error.to_string());
            None
        }
    }
}

pub(crate) fn on_rate_limit(report: &mut Report, value: &Value, path: &str) -> Option<OnRateLimit> {
    let f = tree::fields(report, value, path, &["status", "headers"])?;
    let mut ok = true;
    let mut out = OnRateLimit::default();
    if let Some((v, p)) = f.get("status") {
        match tree::integer(report, v, &p, u64::MAX) {
            Some(s @ 400..=599) => out.status = u16::try_from(s).ok().and_then(RejectStatus::new),
            Some(0) => {
                report.error(&p, "must be greater than 0");
                ok = false;
            }
            // Kuma accepts any status above 0, and Envoy answers 429 for anything below 400:
            // accept it, send what Envoy sends, and say so.
            Some(s @ 1..=399) => {
                report.warn(
                    &p,
                    format!(
                        "status {s} is below 400: Envoy answers 429 instead, and so does meshlimit"
                    ),
                );
                out.status = Some(RejectStatus::DEFAULT);
            }
            // Above 599 Envoy refuses the configuration (not an HTTP status it knows).
            Some(_) => {
                report.error(&p, "must be in inclusive range [400, 599]");
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some((v, p)) = f.get("headers") {
        match tree::fields(report, v, &p, &["set", "add"]) {
            Some(h) => {
                let mut changes = HeaderChanges::default();
                for (name, slot) in [("set", &mut changes.set), ("add", &mut changes.add)] {
                    if let Some((v, p)) = h.get(name) {
                        match headers(report, v, &p) {
                            Some(list) => *slot = Some(list),
                            None => ok = false,
                        }
                    }
                }
                out.headers = Some(changes);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn headers(report: &mut Report, value: &Value, path: &str) -> Option<Vec<HeaderValue>> {
    let items = tree::list(report, value, path)?;
    let mut ok = true;
    if items.len() > MAX_HEADERS {
        report.error(path, format!("must have at most {MAX_HEADERS} items"));
        ok = false;
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate().take(MAX_HEADERS) {
        let p = index(path, i);
        let Some(f) = tree::fields(report, item, &p, &["name", "value"]) else {
            ok = false;
            continue;
        };
        let name = match f.get("name") {
            None => {
                report.error(&field(&p, "name"), "must be defined");
                None
            }
            Some((v, np)) => tree::string(report, v, &np).filter(|n| match quota::header_name(n) {
                Ok(_) => true,
                Err(error) => {
                    report.error(&np, error.to_string());
                    false
                }
            }),
        };
        let value = match f.get("value") {
            None => {
                report.error(&field(&p, "value"), "must be defined");
                None
            }
            Some((v, vp)) => {
                tree::string(report, v, &vp).filter(|s| match quota::header_value(s) {
                    Ok(_) => true,
                    Err(error) => {
                        report.error(&vp, error.to_string());
                        false
                    }
                })
            }
        };
        match (name, value) {
            (Some(name), Some(value)) => match HeaderValue::new(&name, &value) {
                Ok(header) => out.push(header),
                Err(_) => ok = false,
            },
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// One of a few spellings (`Limit`, `Shadow`), suggesting the nearest when it is a typo.
pub(crate) fn one_of<T: Copy>(
    report: &mut Report,
    value: &Value,
    path: &str,
    choices: &[(&'static str, T)],
) -> Option<T> {
    let text = tree::string(report, value, path)?;
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == text) {
        return Some(*v);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let hint = match tree::nearest(&text, &names) {
        Some(n) => format!("did you mean '{n}'?"),
        None => match names.split_last() {
            Some((last, [])) => format!("expected {last}"),
            Some((last, rest)) => format!("expected {} or {last}", rest.join(", ")),
            None => "nothing is accepted here".into(),
        },
    };
    report.error(path, format!("value '{text}' is not supported ({hint})"));
    None
}

/// Every item of a list, each parsed with `item` at its index; `None` when any of them fails
/// (each failure is reported where it is).
pub(crate) fn each<T>(
    report: &mut Report,
    items: &[Value],
    path: &str,
    mut item: impl FnMut(&mut Report, &Value, &str) -> Option<T>,
) -> Option<Vec<T>> {
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, value) in items.iter().enumerate() {
        match item(report, value, &index(path, i)) {
            Some(parsed) => out.push(parsed),
            None => ok = false,
        }
    }
    ok.then_some(out)
}
