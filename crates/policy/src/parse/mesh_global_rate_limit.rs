//! Reading and validating a `MeshGlobalRateLimit` spec: Kong Mesh's shape and rules, the
//! checks `MeshRateLimit` has for the parts they share, and meshlimit's extensions (see
//! [`crate::model::mesh_global_rate_limit`]).

use std::time::Duration;

use serde_yaml_ng::Value;

use super::shared::{self, on_rate_limit, one_of};
use super::target_ref::{Opts, target_ref};
use crate::effective::{FailureMode, GlobalMode};
use crate::model::{
    GlobalBackend, GlobalConf, GlobalFromTo, GlobalHttp, GlobalRule, MeshGlobalRateLimitSpec,
    RateLimitService, TargetRefKind,
};
use crate::quota::Rate;
use crate::tree::{self, Report, field};

/// Kong Mesh's targetRef support matrix: sidecars by Mesh, MeshSubset or MeshService, builtin
/// gateways by Mesh or MeshGateway.
const TOP_KINDS: [TargetRefKind; 4] = [
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshGateway,
];

/// The windows an Envoy rate-limit service counts in (second, minute, hour, day).
const INTERVALS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(60),
    Duration::from_secs(3600),
    Duration::from_secs(86_400),
];

const MODES: [(&str, GlobalMode); 2] =
    [("Limit", GlobalMode::Limit), ("Shadow", GlobalMode::Shadow)];

const FAILURE_MODES: [(&str, FailureMode); 3] = [
    ("Open", FailureMode::Open),
    ("Closed", FailureMode::Closed),
    ("LocalShare", FailureMode::LocalShare),
];

pub(crate) fn spec(
    report: &mut Report,
    value: &Value,
    path: &str,
) -> Option<MeshGlobalRateLimitSpec> {
    let f = tree::fields(report, value, path, &["targetRef", "from", "to", "rules"])?;
    let mut spec = MeshGlobalRateLimitSpec::default();
    let mut ok = true;

    if let Some((v, p)) = f.get("targetRef") {
        let opts = Opts {
            supported: &TOP_KINDS,
            gateway_listener_tags: true,
            inbound_policy: true,
        };
        match target_ref(report, v, &p, opts) {
            Some(t) => {
                super::target_ref::warn_selects_nothing(report, &t, &p);
                spec.target_ref = Some(t);
            }
            None => ok = false,
        }
    }
    let top = spec.target();

    ok &= shared::rules_exclude_from_to(report, &f);

    if let Some((v, p)) = f.get("rules") {
        match tree::list(report, v, &p) {
            Some(items) => match shared::each(report, items, &p, rule) {
                Some(entries) => spec.rules = entries,
                None => ok = false,
            },
            None => ok = false,
        }
    }

    if let Some((v, p)) = f.get("from") {
        match tree::list(report, v, &p) {
            Some(items) => match shared::each(report, items, &p, from_to) {
                Some(entries) => spec.from = entries,
                None => ok = false,
            },
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

fn from_to(report: &mut Report, value: &Value, path: &str) -> Option<GlobalFromTo> {
    let (target_ref, default) = shared::from_to_entry(report, value, path, default_conf)?;
    Some(GlobalFromTo {
        target_ref,
        default,
    })
}

fn rule(report: &mut Report, value: &Value, path: &str) -> Option<GlobalRule> {
    let f = tree::fields(report, value, path, &["default", "matches"])?;
    let mut ok = true;
    if let Some((_, p)) = f.get("matches") {
        report.error(
            &p,
            "is not supported for MeshGlobalRateLimit (its limit is shared by every client of the service)",
        );
        ok = false;
    }
    let conf = default_conf(
        report,
        f.get("default").map(|(v, _)| v),
        &field(path, "default"),
    )?;
    ok.then_some(GlobalRule { default: conf })
}

fn default_conf(report: &mut Report, value: Option<&Value>, path: &str) -> Option<GlobalConf> {
    const FIELDS: [&str; 4] = ["http", "mode", "backend", "failureMode"];
    let Some(value) = value else {
        report.error(path, "must be defined");
        return None;
    };
    let f = tree::fields(report, value, path, &FIELDS)?;
    if !FIELDS.iter().any(|name| f.has(name)) {
        report.error(
            path,
            "must have at least one defined: http, mode, backend, failureMode",
        );
        return None;
    }
    let mut ok = true;
    let mut conf = GlobalConf::default();
    if let Some((v, p)) = f.get("http") {
        conf.http = http(report, v, &p);
        ok &= conf.http.is_some();
    }
    if let Some((v, p)) = f.get("mode") {
        conf.mode = one_of(report, v, &p, &MODES);
        ok &= conf.mode.is_some();
    }
    if let Some((v, p)) = f.get("backend") {
        conf.backend = backend(report, v, &p);
        ok &= conf.backend.is_some();
    }
    if let Some((v, p)) = f.get("failureMode") {
        conf.failure_mode = one_of(report, v, &p, &FAILURE_MODES);
        ok &= conf.failure_mode.is_some();
        let both = conf
            .rate_limit_service()
            .is_some_and(|s| s.limit_on_service_fail.is_some());
        if both {
            report.error(
                &p,
                "must not be set together with backend.rateLimitService.limitOnServiceFail (failureMode Open is limitOnServiceFail: false, Closed is true)",
            );
            ok = false;
        }
    }
    ok.then_some(conf)
}

fn http(report: &mut Report, value: &Value, path: &str) -> Option<GlobalHttp> {
    const FIELDS: [&str; 4] = [
        "disabled",
        "requestRate",
        "onRateLimit",
        "ratelimitOnRequest",
    ];
    let f = tree::fields(report, value, path, &FIELDS)?;
    if !FIELDS.iter().any(|name| f.has(name)) {
        report.error(
            path,
            "must have at least one defined: disabled, requestRate, onRateLimit",
        );
        return None;
    }
    let mut ok = true;
    let mut http = GlobalHttp::default();
    if let Some((_, p)) = f.get("ratelimitOnRequest") {
        // Refused rather than ignored: a limit the user wrote would silently not hold.
        report.error(
            &p,
            "is not supported: meshlimit enforces requestRate for the whole service, not per request header value",
        );
        ok = false;
    }
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

fn rate(report: &mut Report, value: &Value, path: &str) -> Option<Rate> {
    shared::rate(report, value, path, |d| {
        (!INTERVALS.contains(&d)).then_some("only 1s, 1m, 1h or 24h can be configured")
    })
}

fn backend(report: &mut Report, value: &Value, path: &str) -> Option<GlobalBackend> {
    let f = tree::fields(report, value, path, &["rateLimitService"])?;
    let Some((v, p)) = f.get("rateLimitService") else {
        report.error(path, "must have at least one defined: rateLimitService");
        return None;
    };
    Some(GlobalBackend {
        rate_limit_service: Some(rate_limit_service(report, v, &p)?),
    })
}

fn rate_limit_service(report: &mut Report, value: &Value, path: &str) -> Option<RateLimitService> {
    const FIELDS: [&str; 3] = ["url", "timeout", "limitOnServiceFail"];
    let f = tree::fields(report, value, path, &FIELDS)?;
    if !FIELDS.iter().any(|name| f.has(name)) {
        report.error(
            path,
            "must have at least one defined: url, timeout, limitOnServiceFail",
        );
        return None;
    }
    let mut ok = true;
    let mut service = RateLimitService::default();
    if let Some((v, p)) = f.get("url") {
        service.url = service_url(report, v, &p);
        ok &= service.url.is_some();
    }
    if let Some((v, p)) = f.get("timeout") {
        service.timeout = match tree::duration(report, v, &p) {
            Some(Duration::ZERO) => {
                report.error(&p, "must be greater than 0");
                None
            }
            other => other,
        };
        ok &= service.timeout.is_some();
    }
    if let Some((v, p)) = f.get("limitOnServiceFail") {
        service.limit_on_service_fail = tree::boolean(report, v, &p);
        ok &= service.limit_on_service_fail.is_some();
    }
    ok.then_some(service)
}

/// An Envoy rate-limit service is reached at a host and port: no credentials, path or query.
fn service_url(report: &mut Report, value: &Value, path: &str) -> Option<String> {
    let url = tree::nonempty_string(report, value, path)?;
    let valid = url.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.authority().is_some_and(|a| {
                !a.host().is_empty() && !a.as_str().contains('@') && a.port_u16() != Some(0)
            })
            && matches!(u.path(), "" | "/")
            && u.query().is_none()
    });
    if !valid {
        report.error(
            path,
            "must be an http:// or https:// URL of a host and port, without a path, such as http://ratelimit:10003",
        );
        return None;
    }
    Some(url)
}
