//! Reading and validating a `targetRef`, as Kuma 2.14's `ValidateTargetRef` does: the kinds
//! a place accepts, which fields each kind takes, name and tag character sets, with Kuma's
//! messages at Kuma's paths and in Kuma's order.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use crate::model::{ProxyType, TargetRef, TargetRefKind};
use crate::tree::{self, Report, field, index};

/// What a place in a policy accepts as a targetRef (Kuma's `ValidateTargetRefOpts`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opts<'a> {
    pub supported: &'a [TargetRefKind],
    /// A MeshGateway targetRef may select listeners by `tags`.
    pub gateway_listener_tags: bool,
    /// The policy has `from` or `rules`, so a Dataplane `sectionName` names one of its inbounds.
    pub inbound_policy: bool,
}

impl Opts<'_> {
    /// `from[]` and `to[]` entries: kind Mesh only.
    pub(crate) const MESH_ONLY: Opts<'static> = Opts {
        supported: &[TargetRefKind::Mesh],
        gateway_listener_tags: false,
        inbound_policy: false,
    };
}

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

pub(crate) fn target_ref(
    report: &mut Report,
    value: &Value,
    path: &str,
    opts: Opts<'_>,
) -> Option<TargetRef> {
    let f = tree::fields(report, value, path, &FIELDS)?;
    let kind = match f.get("kind") {
        None => {
            report.error(&field(path, "kind"), "must be defined");
            return None;
        }
        Some((v, p)) => {
            let text = tree::string(report, v, &p)?;
            let Some(kind) = TargetRefKind::parse(&text) else {
                let names: Vec<&str> = TargetRefKind::ALL.iter().map(|k| k.as_str()).collect();
                let hint = tree::nearest(&text, &names)
                    .map(|n| format!(" (did you mean '{n}'?)"))
                    .unwrap_or_default();
                report.error(&p, format!("value '{text}' is not supported{hint}"));
                return None;
            };
            // Kuma stops at an unsupported kind: the other fields mean nothing then.
            if !opts.supported.contains(&kind) {
                report.error(&p, format!("value '{text}' is not supported"));
                return None;
            }
            kind
        }
    };
    let mut t = TargetRef::of(kind);
    let mut ok = true;
    // Kuma takes an empty string or mapping as unset.
    let mut opt_string = |name: &str| match f.get(name) {
        Some((v, p)) => match tree::string(report, v, &p) {
            Some(s) => Some(s).filter(|s| !s.is_empty()),
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
        match raw_tags(report, v, &p) {
            Some(m) => t.tags = m,
            None => ok = false,
        }
    }
    let proxy_types_given = match f.get("proxyTypes") {
        Some((v, p)) => match proxy_types(report, v, &p) {
            Some(list) => {
                t.proxy_types = list;
                true
            }
            None => {
                ok = false;
                true
            }
        },
        None => false,
    };
    if !ok {
        return None;
    }
    kind_rules(report, &t, path, opts, proxy_types_given).then_some(t)
}

/// A `tags` mapping of strings; its keys and values are checked by [`tag_rules`].
fn raw_tags(report: &mut Report, value: &Value, path: &str) -> Option<BTreeMap<String, String>> {
    let Value::Mapping(map) = value else {
        report.error(
            path,
            format!("expected a mapping, found {}", tree::describe(value)),
        );
        return None;
    };
    let mut out = BTreeMap::new();
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
        match tree::string(report, v, &tree::key(path, k)) {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn proxy_types(report: &mut Report, value: &Value, path: &str) -> Option<Vec<ProxyType>> {
    let items = tree::list(report, value, path)?;
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let ip = index(path, i);
        match tree::string(report, item, &ip).as_deref() {
            Some("Sidecar") => out.push(ProxyType::Sidecar),
            Some("Gateway") => out.push(ProxyType::Gateway),
            Some(other) => {
                report.error(
                    &ip,
                    format!("value '{other}' is not supported (expected Sidecar or Gateway)"),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Tag names and values, as Kuma's `ValidateTags` (a MeshSubset's tag values) or
/// `ValidateSelector` (`selector`: a value may also be `*` or hold slashes) check them.
fn tag_rules(report: &mut Report, tags: &BTreeMap<String, String>, path: &str, selector: bool) {
    let name_chars = |b: u8| b.is_ascii_alphanumeric() || b".-_:/".contains(&b);
    for (k, v) in tags {
        let p = tree::key(path, k);
        if k.is_empty() {
            report.error(path, "tag name must be non-empty");
        }
        if !k.bytes().all(name_chars) {
            report.error(
                &p,
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            );
        }
        if v.is_empty() {
            report.error(&p, "tag value must be non-empty");
        }
        if selector {
            if !(v == "*" || v.bytes().all(name_chars)) {
                report.error(
                    &p,
                    "tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be \"*\"",
                );
            }
        } else if !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
        {
            report.error(
                &p,
                "tag value must consist of alphanumeric characters, dots, dashes and underscores",
            );
        }
    }
}

/// Which fields each kind takes, in the order Kuma checks them; whether all is well.
fn kind_rules(
    report: &mut Report,
    t: &TargetRef,
    path: &str,
    opts: Opts<'_>,
    proxy_types_given: bool,
) -> bool {
    use TargetRefKind::*;
    let errors_before = report.errors.len();
    let kind = t.kind.as_str();
    let name = t.name.is_some();
    let namespace = t.namespace.is_some();
    let labels = !t.labels.is_empty();
    let set = |what: &str| match what {
        "name" => name,
        "namespace" => namespace,
        "labels" => labels,
        "tags" => !t.tags.is_empty(),
        "mesh" => t.mesh.is_some(),
        "sectionName" => t.section_name.is_some(),
        "proxyTypes" => !t.proxy_types.is_empty(),
        _ => false,
    };
    let disallow = |report: &mut Report, names: &[&str]| {
        for n in names {
            if set(n) {
                report.error(&field(path, n), format!("must not be set with kind {kind}"));
            }
        }
    };
    let name_chars = |report: &mut Report| {
        if let Some(n) = &t.name
            && !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            report.error(
                &field(path, "name"),
                "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'.",
            );
        }
    };
    let name_or_labels = |report: &mut Report| {
        if !labels && !name {
            report.error(
                path,
                format!("name or labels must be set when kind is {kind}"),
            );
        }
    };
    let proxy_types = |report: &mut Report| {
        if proxy_types_given && t.proxy_types.is_empty() {
            report.error(
                &field(path, "proxyTypes"),
                "must be undefined or have at least one element",
            );
        }
    };
    match t.kind {
        Mesh => {
            if name {
                report.error(
                    &field(path, "name"),
                    "using name with kind Mesh is not yet supported",
                );
            }
            disallow(
                report,
                &["mesh", "tags", "labels", "namespace", "sectionName"],
            );
            proxy_types(report);
        }
        Dataplane => {
            disallow(report, &["tags", "mesh", "proxyTypes"]);
            if labels && (name || namespace) {
                report.error(
                    &field(path, "labels"),
                    "either labels or name and namespace must be specified",
                );
            }
            if !opts.inbound_policy && t.section_name.is_some() {
                report.error(
                    &field(path, "sectionName"),
                    "can only be used with inbound policies",
                );
            }
        }
        MeshSubset => {
            disallow(report, &["name", "mesh"]);
            tag_rules(report, &t.tags, &field(path, "tags"), false);
            disallow(report, &["labels", "namespace", "sectionName"]);
            proxy_types(report);
        }
        MeshService | MeshHttpRoute => {
            name_chars(report);
            disallow(report, &["mesh", "tags", "proxyTypes"]);
            if t.kind == MeshHttpRoute {
                disallow(report, &["sectionName"]);
            }
            name_or_labels(report);
            if labels && (name || namespace) {
                report.error(
                    &field(path, "labels"),
                    "either labels or name and namespace must be specified",
                );
            }
        }
        MeshServiceSubset | MeshGateway => {
            if !name {
                report.error(
                    &field(path, "name"),
                    format!("must be set when kind is {kind}"),
                );
            }
            name_chars(report);
            disallow(report, &["mesh", "proxyTypes"]);
            tag_rules(report, &t.tags, &field(path, "tags"), true);
            if t.kind == MeshGateway && !opts.gateway_listener_tags {
                disallow(report, &["tags"]);
            }
            disallow(report, &["labels", "namespace", "sectionName"]);
        }
        MeshExternalService => {
            name_chars(report);
            disallow(report, &["mesh", "tags", "proxyTypes"]);
            name_or_labels(report);
            if labels && (name || namespace) {
                report.error(
                    &field(path, "labels"),
                    "either labels or name must be specified",
                );
            }
            disallow(report, &["sectionName"]);
        }
        // Kuma checks no field of this kind.
        MeshMultiZoneService => {}
    }
    report.errors.len() == errors_before
}

/// A top-level MeshService targetRef by `labels` is valid, but Kuma 2.14 matches sidecar
/// inbounds to a MeshService by its name (`kuma.io/service`), so it selects none; say so.
pub(crate) fn warn_selects_nothing(report: &mut Report, t: &TargetRef, path: &str) {
    if t.kind == TargetRefKind::MeshService && t.name.is_none() && !t.labels.is_empty() {
        report.warn(
            &field(path, "labels"),
            "a MeshService selected by labels selects no inbound: Kuma 2.14 matches inbounds to a MeshService by its name (the kuma.io/service tag), and so does meshlimit; this policy limits nothing",
        );
    }
}
