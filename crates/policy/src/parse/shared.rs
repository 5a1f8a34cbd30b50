//! The pieces `MeshRateLimit` and `MeshGlobalRateLimit` are both made of: targetRefs,
//! `from[]`/`to[]` entries, rates, `onRateLimit` with its headers, and enumerated values.

use std::time::Duration;

use serde_yaml_ng::Value;

use crate::model::{HeaderChanges, OnRateLimit, ProxyType, TargetRef, TargetRefKind};
use crate::quota::{self, HeaderValue, Rate, RejectStatus};
use crate::tree::{self, Report, field, index};

/// Kuma's limit on `onRateLimit.headers.set` and `.add`.
const MAX_HEADERS: usize = 16;

pub(crate) fn target_ref(report: &mut Report, value: &Value, path: &str) -> Option<TargetRef> {
    const FIELDS: [&str; 8] = [
        "kind",
        "name",
        "namespace",
        "labels",
        "tags",
        "mesh",
        "sectionName",
        "proxyTypes",
    ];
    let f = tree::fields(report, value, path, &FIELDS)?;
    let mut ok = true;
    let kind = match f.get("kind") {
        None => {
            report.error(&field(path, "kind"), "must be defined");
            None
        }
        Some((v, p)) => {
            let text = tree::string(report, v, &p)?;
            let kind = TargetRefKind::parse(&text);
            if kind.is_none() {
                let names: Vec<&str> = TargetRefKind::ALL.iter().map(|k| k.as_str()).collect();
                let hint = tree::nearest(&text, &names)
                    .map(|n| format!(" (did you mean '{n}'?)"))
                    .unwrap_or_default();
                report.error(&p, format!("value '{text}' is not supported{hint}"));
            }
            kind
        }
    };
    let mut t = TargetRef::of(kind.unwrap_or(TargetRefKind::Mesh));
    ok &= kind.is_some();
    let mut opt_string = |name: &str| match f.get(name) {
        Some((v, p)) => match tree::nonempty_string(report, v, &p) {
            Some(s) => Some(s),
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    t.name = opt_string("name");
    t.namespace = opt_string("namespace");
    t.mesh = opt_string("mesh");
    t.section_name = opt_string("sectionName");
    if let Some((v, p)) = f.get("labels") {
        match tree::string_map(report, v, &p) {
            Some(m) => t.labels = m,
            None => ok = false,
        }
    }
    if let Some((v, p)) = f.get("tags") {
        // MeshSubset takes tag values; the kinds naming a resource take selectors (`*` too).
        let selector = kind != Some(TargetRefKind::MeshSubset);
        match target_tags(report, v, &p, selector) {
            Some(m) => t.tags = m,
            None => ok = false,
        }
    }
    if let Some((v, p)) = f.get("proxyTypes") {
        match tree::list(report, v, &p) {
            Some([]) => {
                report.error(&p, "must have at least one element");
                ok = false;
            }
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let ip = index(&p, i);
                    match tree::string(report, item, &ip).as_deref() {
                        Some("Sidecar") => t.proxy_types.push(ProxyType::Sidecar),
                        Some("Gateway") => t.proxy_types.push(ProxyType::Gateway),
                        Some(other) => {
                            report.error(
                                &ip,
                                format!(
                                    "value '{other}' is not supported (expected Sidecar or Gateway)"
                                ),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    if kind.is_some() {
        ok &= check_fields_for_kind(report, &f, &t, path);
    }
    ok.then_some(t)
}

/// A targetRef's `tags`, checked as Kuma checks them (its `ValidateTags` and
/// `ValidateSelector`), with Kuma's messages at Kuma's paths.
fn target_tags(
    report: &mut Report,
    value: &Value,
    path: &str,
    selector: bool,
) -> Option<std::collections::BTreeMap<String, String>> {
    let Value::Mapping(map) = value else {
        report.error(
            path,
            format!("expected a mapping, found {}", tree::describe(value)),
        );
        return None;
    };
    let name_chars = |b: u8| b.is_ascii_alphanumeric() || b".-_:/".contains(&b);
    let mut out = std::collections::BTreeMap::new();
    let mut ok = true;
    for (k, v) in map {
        let Value::String(k) = k else {
            report.error(
                path,
                format!("keys must be strings, found {}", tree::describe(k)),
            );
            ok = false;
            continue;
        };
        let p = tree::key(path, k);
        if k.is_empty() {
            report.error(path, "tag name must be non-empty");
            ok = false;
        }
        if !k.bytes().all(name_chars) {
            report.error(
                &p,
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            );
            ok = false;
        }
        let Some(v) = tree::string(report, v, &p) else {
            ok = false;
            continue;
        };
        if v.is_empty() {
            report.error(&p, "tag value must be non-empty");
            ok = false;
        }
        let value_ok = if selector {
            v == "*" || v.bytes().all(name_chars)
        } else {
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
        };
        if !value_ok {
            report.error(
                &p,
                if selector {
                    "tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be \"*\""
                } else {
                    "tag value must consist of alphanumeric characters, dots, dashes and underscores"
                },
            );
            ok = false;
        }
        out.insert(k.clone(), v);
    }
    ok.then_some(out)
}

/// Which targetRef fields each kind takes, as Kuma's targetRef validation has it.
fn check_fields_for_kind(
    report: &mut Report,
    f: &tree::Fields<'_>,
    t: &TargetRef,
    path: &str,
) -> bool {
    use TargetRefKind::*;
    let allowed: &[&str] = match t.kind {
        // Kuma refuses `mesh` with every kind: a policy only ever targets its own mesh.
        Mesh => &["proxyTypes"],
        MeshSubset => &["tags", "proxyTypes"],
        MeshService => &["name", "namespace", "sectionName"],
        MeshServiceSubset => &["name", "tags"],
        MeshGateway => &["name", "namespace", "tags"],
        MeshHttpRoute => &["name", "namespace"],
        Dataplane => &["name", "namespace", "labels", "sectionName"],
        MeshExternalService | MeshMultiZoneService => {
            &["name", "namespace", "labels", "sectionName"]
        }
    };
    let mut ok = true;
    for name in [
        "name",
        "mesh",
        "namespace",
        "labels",
        "tags",
        "sectionName",
        "proxyTypes",
    ] {
        if f.has(name) && !allowed.contains(&name) {
            report.error(
                &field(path, name),
                format!("must not be set with kind {}", t.kind.as_str()),
            );
            ok = false;
        }
    }
    let needs_name = matches!(
        t.kind,
        MeshService | MeshServiceSubset | MeshGateway | MeshHttpRoute
    );
    if needs_name && t.name.is_none() {
        report.error(
            &field(path, "name"),
            format!("must be set with kind {}", t.kind.as_str()),
        );
        ok = false;
    }
    // Kuma's targetRef name rule for the kinds that name another resource.
    let named_resource = !matches!(t.kind, Mesh | MeshSubset | Dataplane);
    if let Some(name) = t.name.as_deref().filter(|_| named_resource)
        && !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        report.error(
            &field(path, "name"),
            "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'.",
        );
        ok = false;
    }
    if t.name.is_some() && !t.labels.is_empty() {
        report.error(&field(path, "labels"), "must not be set together with name");
        ok = false;
    }
    // Kuma takes a Dataplane's sectionName alone (that inbound of every Dataplane).
    if t.kind != Dataplane && t.section_name.is_some() && t.name.is_none() && t.labels.is_empty() {
        report.error(
            &field(path, "sectionName"),
            "can only be used with name or labels",
        );
        ok = false;
    }
    ok
}

/// The top-level targetRef kinds a policy type accepts.
pub(crate) fn check_top_target(
    report: &mut Report,
    t: &TargetRef,
    path: &str,
    allowed: &[TargetRefKind],
) -> bool {
    if allowed.contains(&t.kind) {
        return true;
    }
    report.error(
        &field(path, "kind"),
        format!("value '{}' is not supported", t.kind.as_str()),
    );
    false
}

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
        Some((v, p)) => {
            let t = target_ref(report, v, &p)?;
            if t.kind != TargetRefKind::Mesh {
                report.error(
                    &field(&p, "kind"),
                    format!("value '{}' is not supported", t.kind.as_str()),
                );
                None
            } else {
                Some(t)
            }
        }
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
