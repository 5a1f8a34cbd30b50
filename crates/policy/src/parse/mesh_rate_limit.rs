//! Reading and validating a `MeshRateLimit` spec, rule by rule as Kuma 2.14 does, plus the
//! stricter checks meshlimit adds (status range, header names and values, unknown fields).

use std::time::Duration;

use serde_yaml_ng::Value;

use crate::model::{
    Conf, FromTo, HeaderChanges, Local, LocalHttp, LocalTcp, Match, MatchType, MeshRateLimitSpec,
    OnRateLimit, ProxyType, Rule, StringMatch, TargetRef, TargetRefKind,
};
use crate::quota::{self, HeaderValue, Rate, RejectStatus};
use crate::tree::{self, Report, field, index};

const MIN_INTERVAL: Duration = Duration::from_millis(50);
const MAX_HEADERS: usize = 16;

pub(crate) fn spec(report: &mut Report, value: &Value, path: &str) -> Option<MeshRateLimitSpec> {
    let f = tree::fields(report, value, path, &["targetRef", "from", "to", "rules"])?;
    let mut spec = MeshRateLimitSpec::default();
    let mut ok = true;

    if let Some((v, p)) = f.get("targetRef") {
        match target_ref(report, v, &p) {
            Some(t) => {
                ok &= check_top_target(report, &t, &p);
                spec.target_ref = Some(t);
            }
            None => ok = false,
        }
    }
    let top = spec.target();

    let has = |name: &str| match f.get(name) {
        Some((Value::Sequence(items), _)) => !items.is_empty(),
        Some(_) => true,
        None => false,
    };
    if has("rules") && (has("from") || has("to")) {
        report.error(
            path,
            "fields 'to' and 'from' must be empty when 'rules' is defined",
        );
        ok = false;
    }

    if let Some((v, p)) = f.get("rules") {
        let gateway_error = explicit_gateway_scope(&top);
        match tree::list(report, v, &p) {
            Some(items) if !items.is_empty() && gateway_error => {
                report.error(&p, "must not be defined");
                ok = false;
            }
            Some(items) => {
                if !items.is_empty() && top.includes_gateways() {
                    warn_implicit_gateways(report, &f, "rules");
                }
                for (i, item) in items.iter().enumerate() {
                    match rule(report, item, &index(&p, i)) {
                        Some(r) => spec.rules.push(r),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }

    if let Some((v, p)) = f.get("from") {
        match tree::list(report, v, &p) {
            Some(items) if !items.is_empty() && explicit_gateway_scope(&top) => {
                let message = if top.kind == TargetRefKind::MeshHttpRoute {
                    "must not be defined when spec.kind is MeshHTTPRoute"
                } else {
                    "must not be defined when the scope includes a Gateway, select only proxyType Sidecar or select only gateways and use spec.to"
                };
                report.error(&p, message);
                ok = false;
            }
            Some(items) => {
                if !items.is_empty() {
                    report.warn(&p, "'from' field is deprecated, use 'rules' instead");
                    if top.includes_gateways() {
                        warn_implicit_gateways(report, &f, "from");
                    }
                }
                for (i, item) in items.iter().enumerate() {
                    match from_to(report, item, &index(&p, i)) {
                        Some(e) => spec.from.push(e),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }

    if let Some((v, p)) = f.get("to") {
        match tree::list(report, v, &p) {
            Some(items) if !items.is_empty() && !top.includes_gateways() => {
                report.error(&p, "must not be defined");
                ok = false;
            }
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    match from_to(report, item, &index(&p, i)) {
                        Some(e) => spec.to.push(e),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }

    ok.then_some(spec)
}

/// Gateways are in scope because the user said so (not merely because `proxyTypes` is unset).
fn explicit_gateway_scope(top: &TargetRef) -> bool {
    matches!(
        top.kind,
        TargetRefKind::MeshGateway | TargetRefKind::MeshHttpRoute
    ) || top.proxy_types.contains(&ProxyType::Gateway)
}

/// Kuma 2.6+ rejects `from`/`rules` when `proxyTypes` is unset, because the scope then also
/// covers gateways. The seeds' own examples are written that way, so meshlimit accepts them
/// (inbound entries only ever apply to sidecars) and says how to be explicit.
fn warn_implicit_gateways(report: &mut Report, f: &tree::Fields<'_>, what: &str) {
    report.warn(
        &field(f.path(), "targetRef"),
        format!(
            "the scope also includes gateways, where '{what}' does not apply; set proxyTypes: [\"Sidecar\"] (Kuma 2.6+ rejects this policy without it)"
        ),
    );
}

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
    for (name, slot) in [("labels", &mut t.labels), ("tags", &mut t.tags)] {
        if let Some((v, p)) = f.get(name) {
            match tree::string_map(report, v, &p) {
                Some(m) => *slot = m,
                None => ok = false,
            }
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

/// Which targetRef fields each kind takes, as Kuma's targetRef validation has it.
fn check_fields_for_kind(
    report: &mut Report,
    f: &tree::Fields<'_>,
    t: &TargetRef,
    path: &str,
) -> bool {
    use TargetRefKind::*;
    let allowed: &[&str] = match t.kind {
        Mesh => &["proxyTypes", "mesh"],
        MeshSubset => &["tags", "proxyTypes", "mesh"],
        MeshService => &["name", "namespace", "sectionName", "mesh"],
        MeshServiceSubset => &["name", "tags", "mesh"],
        MeshGateway => &["name", "namespace", "tags", "mesh"],
        MeshHttpRoute => &["name", "namespace", "mesh"],
        Dataplane => &["name", "namespace", "labels", "sectionName", "mesh"],
        MeshExternalService | MeshMultiZoneService => {
            &["name", "namespace", "labels", "sectionName", "mesh"]
        }
    };
    let mut ok = true;
    for name in [
        "name",
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
    if t.name.is_some() && !t.labels.is_empty() {
        report.error(&field(path, "labels"), "must not be set together with name");
        ok = false;
    }
    if t.section_name.is_some() && t.name.is_none() && t.labels.is_empty() {
        report.error(
            &field(path, "sectionName"),
            "can only be used with name or labels",
        );
        ok = false;
    }
    ok
}

fn check_top_target(report: &mut Report, t: &TargetRef, path: &str) -> bool {
    use TargetRefKind::*;
    match t.kind {
        Mesh | MeshSubset | MeshGateway | MeshService | MeshServiceSubset | MeshHttpRoute
        | Dataplane => true,
        other => {
            report.error(
                &field(path, "kind"),
                format!("value '{}' is not supported", other.as_str()),
            );
            false
        }
    }
}

fn from_to(report: &mut Report, value: &Value, path: &str) -> Option<FromTo> {
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
    let conf = default_conf(
        report,
        f.get("default").map(|(v, _)| v),
        &field(path, "default"),
    );
    Some(FromTo {
        target_ref: target?,
        default: conf?,
    })
}

fn rule(report: &mut Report, value: &Value, path: &str) -> Option<Rule> {
    let f = tree::fields(report, value, path, &["matches", "default"])?;
    let mut ok = true;
    let mut matches = Vec::new();
    if let Some((v, p)) = f.get("matches") {
        match tree::list(report, v, &p) {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    match source_match(report, item, &index(&p, i)) {
                        Some(m) => matches.push(m),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    let default_path = field(path, "default");
    let conf = default_conf(report, f.get("default").map(|(v, _)| v), &default_path);
    if let Some(c) = &conf
        && c.local.tcp.is_some()
        && matches.iter().any(|m| matches!(m, Match::SpiffeId(_)))
    {
        report.error(
            &field(&field(&default_path, "local"), "tcp"),
            "must not be defined when matches select by spiffeID (a TCP connection limit cannot depend on the client identity)",
        );
        ok = false;
    }
    let conf = conf?;
    ok.then_some(Rule {
        matches,
        default: conf,
    })
}

fn source_match(report: &mut Report, value: &Value, path: &str) -> Option<Match> {
    let f = tree::fields(report, value, path, &["spiffeID", "sni"])?;
    match (f.get("spiffeID"), f.get("sni")) {
        (Some((v, p)), None) => {
            let m = string_match(report, v, &p, &[MatchType::Exact, MatchType::Prefix])?;
            if !m.value.starts_with("spiffe://") {
                report.error(&field(&p, "value"), "must start with spiffe://");
                return None;
            }
            Some(Match::SpiffeId(m))
        }
        (None, Some((v, p))) => Some(Match::Sni(string_match(
            report,
            v,
            &p,
            &[MatchType::Exact],
        )?)),
        _ => {
            report.error(path, "must have exactly one defined: spiffeID, sni");
            None
        }
    }
}

fn string_match(
    report: &mut Report,
    value: &Value,
    path: &str,
    types: &[MatchType],
) -> Option<StringMatch> {
    let f = tree::fields(report, value, path, &["type", "value"])?;
    let kind = match f.get("type") {
        None => {
            report.error(&field(path, "type"), "must be defined");
            None
        }
        Some((v, p)) => {
            let text = tree::string(report, v, &p)?;
            let kind = match text.as_str() {
                "Exact" => Some(MatchType::Exact),
                "Prefix" => Some(MatchType::Prefix),
                _ => None,
            }
            .filter(|k| types.contains(k));
            if kind.is_none() {
                let names: Vec<String> = types.iter().map(|t| format!("{t:?}")).collect();
                report.error(
                    &p,
                    format!(
                        "value '{text}' is not supported (expected {})",
                        names.join(" or ")
                    ),
                );
            }
            kind
        }
    };
    let value = match f.get("value") {
        None => {
            report.error(&field(path, "value"), "must be defined");
            None
        }
        Some((v, p)) => tree::nonempty_string(report, v, &p),
    };
    Some(StringMatch {
        kind: kind?,
        value: value?,
    })
}

/// `default` of an entry. Like Kuma, a missing `default` is reported as a missing
/// `default.local`.
fn default_conf(report: &mut Report, value: Option<&Value>, path: &str) -> Option<Conf> {
    let local_path = field(path, "local");
    let local_value = match value {
        None => None,
        Some(v) => tree::fields(report, v, path, &["local"])?
            .get("local")
            .map(|(v, _)| v),
    };
    let Some(local_value) = local_value else {
        report.error(&local_path, "must be defined");
        return None;
    };
    let local = local(report, local_value, &local_path)?;
    Some(Conf { local })
}

fn local(report: &mut Report, value: &Value, path: &str) -> Option<Local> {
    let f = tree::fields(report, value, path, &["http", "tcp"])?;
    let mut ok = true;
    if !f.has("http") && !f.has("tcp") {
        report.error(path, "must have at least one defined: tcp, http");
        ok = false;
    }
    let http = match f.get("http") {
        Some((v, p)) => {
            let h = local_http(report, v, &p);
            ok &= h.is_some();
            h
        }
        None => None,
    };
    let tcp = match f.get("tcp") {
        Some((v, p)) => {
            let t = local_tcp(report, v, &p);
            ok &= t.is_some();
            t
        }
        None => None,
    };
    ok.then_some(Local { http, tcp })
}

fn local_http(report: &mut Report, value: &Value, path: &str) -> Option<LocalHttp> {
    let f = tree::fields(
        report,
        value,
        path,
        &["disabled", "requestRate", "onRateLimit"],
    )?;
    if !f.has("disabled") && !f.has("requestRate") && !f.has("onRateLimit") {
        report.error(
            path,
            "must have at least one defined: disabled, requestRate, onRateLimit",
        );
        return None;
    }
    let mut ok = true;
    let mut http = LocalHttp::default();
    if let Some((v, p)) = f.get("disabled") {
        http.disabled = tree::boolean(report, v, &p);
        ok &= http.disabled.is_some();
    }
    if let Some((v, p)) = f.get("requestRate") {
        http.request_rate = rate(report, v, &p);
        ok &= http.request_rate.is_some();
    }
    if let Some((v, p)) = f.get("onRateLimit") {
        http.on_rate_limit = on_rate_limit(report, v, &p);
        ok &= http.on_rate_limit.is_some();
    }
    ok.then_some(http)
}

fn local_tcp(report: &mut Report, value: &Value, path: &str) -> Option<LocalTcp> {
    let f = tree::fields(report, value, path, &["disabled", "connectionRate"])?;
    if !f.has("disabled") && !f.has("connectionRate") {
        report.error(
            path,
            "must have at least one defined: disabled, connectionRate",
        );
        return None;
    }
    let mut ok = true;
    let mut tcp = LocalTcp::default();
    if let Some((v, p)) = f.get("disabled") {
        tcp.disabled = tree::boolean(report, v, &p);
        ok &= tcp.disabled.is_some();
    }
    if let Some((v, p)) = f.get("connectionRate") {
        tcp.connection_rate = rate(report, v, &p);
        ok &= tcp.connection_rate.is_some();
    }
    ok.then_some(tcp)
}

fn rate(report: &mut Report, value: &Value, path: &str) -> Option<Rate> {
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
            Some(d) if d <= MIN_INTERVAL => {
                report.error(&p, "must be greater than: 50ms");
                None
            }
            other => other,
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

fn on_rate_limit(report: &mut Report, value: &Value, path: &str) -> Option<OnRateLimit> {
    let f = tree::fields(report, value, path, &["status", "headers"])?;
    let mut ok = true;
    let mut out = OnRateLimit::default();
    if let Some((v, p)) = f.get("status") {
        match tree::integer(report, v, &p, u64::MAX) {
            // Kuma only checks > 0, and Envoy silently answers 429 for anything below 400.
            Some(s @ 400..=599) => out.status = u16::try_from(s).ok().and_then(RejectStatus::new),
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
