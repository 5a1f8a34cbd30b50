//! Reading and validating a `MeshRateLimit` spec, rule by rule as Kuma 2.14 does, plus the
//! stricter checks meshlimit adds (status range, header names and values, unknown fields).

use std::time::Duration;

use serde_yaml_ng::Value;

use super::shared::{self, on_rate_limit};
use super::source_match;
use super::target_ref::{Opts, target_ref};
use crate::model::{
    Conf, FromTo, Local, LocalHttp, LocalTcp, Match, MeshRateLimitSpec, Rule, TargetRefKind,
};
use crate::quota::Rate;
use crate::tree::{self, Report, field, index};

const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// The top-level targetRef kinds Kuma accepts for a `MeshRateLimit` of the system role (no
/// `kuma.io/policy-role` label, or `system`).
const SYSTEM_KINDS: [TargetRefKind; 7] = [
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshGateway,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
    TargetRefKind::MeshHttpRoute,
    TargetRefKind::Dataplane,
];

/// ... and of the other roles (producer, consumer, workload-owner): no gateways.
const ROLE_KINDS: [TargetRefKind; 5] = [
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
    TargetRefKind::Dataplane,
];

const GATEWAY_SCOPE: &str = "must not be defined when the scope includes a Gateway, select only proxyType Sidecar or select only gateways and use spec.to";

/// A `MeshRateLimit` spec, checked in Kuma's order: `rules` against `from`/`to`, the
/// top-level targetRef, then `rules`, `from` and `to`. `system_role`: the policy has no
/// `kuma.io/policy-role` label other than `system` (only then may it target gateways).
pub(crate) fn spec(
    report: &mut Report,
    value: &Value,
    path: &str,
    system_role: bool,
) -> Option<MeshRateLimitSpec> {
    let f = tree::fields(report, value, path, &["targetRef", "from", "to", "rules"])?;
    let mut spec = MeshRateLimitSpec::default();
    let mut ok = shared::rules_exclude_from_to(report, &f);

    let nonempty = |name: &str| {
        f.get(name)
            .is_some_and(|(v, _)| !matches!(v, Value::Sequence(items) if items.is_empty()))
    };
    if let Some((v, p)) = f.get("targetRef") {
        let opts = Opts {
            supported: if system_role {
                &SYSTEM_KINDS
            } else {
                &ROLE_KINDS
            },
            gateway_listener_tags: system_role,
            inbound_policy: nonempty("from") || nonempty("rules"),
        };
        match target_ref(report, v, &p, opts) {
            Some(t) => {
                super::target_ref::warn_selects_nothing(report, &t, &p);
                spec.target_ref = Some(t);
            }
            None => ok = false,
        }
    }
    // Kuma checks the entries against the targetRef as written, even when it is invalid.
    let top = Scope::of(f.get("targetRef").map(|(v, _)| v));

    if let Some((v, p)) = f.get("rules") {
        match tree::list(report, v, &p) {
            Some(items) if !items.is_empty() && top.gateways => {
                report.error(&p, "must not be defined");
                ok = false;
            }
            Some(items) => match shared::each(report, items, &p, rule) {
                Some(entries) => spec.rules = entries,
                None => ok = false,
            },
            None => ok = false,
        }
    }

    if let Some((v, p)) = f.get("from") {
        match tree::list(report, v, &p) {
            Some(items)
                if !items.is_empty() && top.gateways && (!top.legacy || nonempty("rules")) =>
            {
                report.error(&p, GATEWAY_SCOPE);
                ok = false;
            }
            Some(items) => {
                if !items.is_empty() {
                    report.warn(&p, "'from' field is deprecated, use 'rules' instead");
                    if top.gateways {
                        report.warn(
                            &field(f.path(), "targetRef"),
                            "the scope also includes gateways, where 'from' does not apply; set proxyTypes: [\"Sidecar\"] (Kuma 2.6+ rejects this policy without it)",
                        );
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
            Some(items) if !items.is_empty() && !top.gateways => {
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

/// What the top-level targetRef, as written, says of gateways.
struct Scope {
    /// Kuma's `IncludesGateways`: MeshGateway, MeshHTTPRoute, or Mesh/MeshSubset unless
    /// `proxyTypes` leaves gateways out.
    gateways: bool,
    /// Mesh or MeshSubset with `proxyTypes` unset: a Kuma 2.5 policy when it has `from` and no
    /// `rules`. Kuma 2.6+ rejects that (the scope also covers gateways); meshlimit accepts it
    /// with a warning, because the MeshRateLimit documentation's Kuma 2.5 examples are written
    /// so and must keep working unchanged (`from` only ever applies to sidecar inbounds).
    legacy: bool,
}

impl Scope {
    fn of(target: Option<&Value>) -> Scope {
        let kind = match target {
            None => Some(TargetRefKind::Mesh),
            Some(v) => v
                .get("kind")
                .and_then(Value::as_str)
                .and_then(TargetRefKind::parse),
        };
        let proxy_types: Vec<&str> = target
            .and_then(|v| v.get("proxyTypes"))
            .and_then(Value::as_sequence)
            .map(|items| items.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mesh_like = matches!(kind, Some(TargetRefKind::Mesh | TargetRefKind::MeshSubset));
        Scope {
            gateways: matches!(
                kind,
                Some(TargetRefKind::MeshGateway | TargetRefKind::MeshHttpRoute)
            ) || (mesh_like
                && (proxy_types.is_empty() || proxy_types.contains(&"Gateway"))),
            legacy: mesh_like && proxy_types.is_empty(),
        }
    }
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
                    match source_match::source_match(report, item, &index(&p, i)) {
                        Some(m) => {
                            if matches!(m, Match::Sni(_)) {
                                report.warn(
                                    &field(&index(&p, i), "sni"),
                                    "SNI matches apply on zone proxy listeners only (as in Kuma), which meshlimit does not enforce: no inbound uses this entry",
                                );
                            }
                            matches.push(m);
                        }
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
        && matches.iter().any(|m| m.spiffe_id().is_some())
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
