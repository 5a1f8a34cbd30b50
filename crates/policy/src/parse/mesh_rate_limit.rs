//! Reading and validating a `MeshRateLimit` spec, rule by rule as Kuma 2.14 does, plus the
//! stricter checks meshlimit adds (status range, header names and values, unknown fields).

use std::time::Duration;

use serde_yaml_ng::Value;

use super::shared::{self, check_top_target, on_rate_limit, target_ref};
use crate::model::{
    Conf, FromTo, Local, LocalHttp, LocalTcp, Match, MatchType, MeshRateLimitSpec, ProxyType, Rule,
    StringMatch, TargetRef, TargetRefKind,
};
use crate::quota::Rate;
use crate::tree::{self, Report, field, index};

const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// The top-level targetRef kinds Kuma accepts for a `MeshRateLimit`.
const TOP_KINDS: [TargetRefKind; 7] = [
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshGateway,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
    TargetRefKind::MeshHttpRoute,
    TargetRefKind::Dataplane,
];

pub(crate) fn spec(report: &mut Report, value: &Value, path: &str) -> Option<MeshRateLimitSpec> {
    let f = tree::fields(report, value, path, &["targetRef", "from", "to", "rules"])?;
    let mut spec = MeshRateLimitSpec::default();
    let mut ok = true;

    if let Some((v, p)) = f.get("targetRef") {
        match target_ref(report, v, &p) {
            Some(t) => {
                ok &= check_top_target(report, &t, &p, &TOP_KINDS);
                spec.target_ref = Some(t);
            }
            None => ok = false,
        }
    }
    let top = spec.target();

    ok &= shared::rules_exclude_from_to(report, &f);

    // Kuma: a sectionName names an inbound, so only `from`/`rules` may use it.
    let nonempty = |name: &str| {
        f.get(name)
            .is_some_and(|(v, _)| !matches!(v, Value::Sequence(items) if items.is_empty()))
    };
    if top.kind == TargetRefKind::Dataplane
        && top.section_name.is_some()
        && !nonempty("from")
        && !nonempty("rules")
    {
        report.error(
            &field(&field(f.path(), "targetRef"), "sectionName"),
            "can only be used with inbound policies",
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
                match shared::each(report, items, &p, rule) {
                    Some(entries) => spec.rules = entries,
                    None => ok = false,
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
                match shared::each(report, items, &p, from_to) {
                    Some(entries) => spec.from = entries,
                    None => ok = false,
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
            Some(items) => match shared::each(report, items, &p, from_to) {
                Some(entries) => spec.to = entries,
                None => ok = false,
            },
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

fn from_to(report: &mut Report, value: &Value, path: &str) -> Option<FromTo> {
    let (target_ref, default) = shared::from_to_entry(report, value, path, default_conf)?;
    Some(FromTo {
        target_ref,
        default,
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
            "can't be specified when matches contain spiffeID because this field cannot be conditioned on source identity",
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
                        "unrecognized type {text:?}, supported values are: {}",
                        names.join(", ")
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
    shared::rate(report, value, path, |d| {
        (d <= MIN_INTERVAL).then_some("must be greater than: 50ms")
    })
}
