//! Which `MeshRateLimit` policies apply to an inbound, in which order, and what their merged
//! configuration is — Kuma's algorithm:
//!
//! 1. the top-level `targetRef` selects inbounds ([`selects`]);
//! 2. the applying policies are ordered by their `kuma.io/origin` label (global < none <
//!    zone), then `kuma.io/policy-role` (system < producer < consumer < workload-owner, the
//!    default), then least specific targetRef first ([`Specificity`]), ties broken by
//!    `kuma.io/display-name` (else the name), descending, so the smallest comes last and wins;
//! 3. their confs are merged field by field in that order ([`merge`]); rates and header lists
//!    are replaced whole; within one policy, later `from`/`rules` entries override earlier ones;
//! 4. `rules` with `matches` apply only to the sources they match, over the catch-all ones,
//!    ordered SNI < spiffeID Prefix < spiffeID Exact.
//!
//! `MeshGlobalRateLimit` policies are selected and ordered the same way ([`applying`] takes
//! either) and merged by [`global_conf_for`]; [`enforced_global`] is what they enforce.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::effective::{GlobalLimit, HttpLimit, Protocol, RejectHeaders, TcpLimit};
use crate::model::{
    Conf, DEFAULT_RATE_LIMIT_SERVICE_TIMEOUT, Dataplane, GlobalConf, Inbound, Local, Match,
    MatchType, MeshGlobalRateLimit, MeshRateLimit, OnRateLimit, TargetRef, TargetRefKind,
};
use crate::quota::RejectStatus;

/// Whether a top-level targetRef selects this inbound of this Dataplane.
pub fn selects(target: &TargetRef, dp: &Dataplane, inbound: &Inbound) -> bool {
    let proxy_ok = target.proxy_types.is_empty() || target.proxy_types.contains(&dp.proxy_type());
    let tags_ok = target
        .tags
        .iter()
        .all(|(k, v)| inbound.tags.get(k) == Some(v));
    let section_ok = target
        .section_name
        .as_ref()
        .is_none_or(|s| inbound.name.as_ref() == Some(s) || inbound.port.to_string() == *s);
    let service_ok = target.name.as_deref() == Some(inbound.service());
    match target.kind {
        TargetRefKind::Mesh => proxy_ok,
        TargetRefKind::MeshSubset => proxy_ok && tags_ok,
        TargetRefKind::MeshService => service_ok && section_ok,
        TargetRefKind::MeshServiceSubset => service_ok && tags_ok,
        TargetRefKind::Dataplane => {
            // Dataplanes here are universal (no namespace): a targetRef naming a namespace
            // selects Dataplanes of that namespace only, so none of them.
            target.namespace.is_none()
                && target.name.as_ref().is_none_or(|n| *n == dp.name)
                && target
                    .labels
                    .iter()
                    .all(|(k, v)| dp.labels.get(k) == Some(v))
                && section_ok
        }
        // Gateways have listeners, not inbounds; these kinds never select an inbound.
        TargetRefKind::MeshGateway
        | TargetRefKind::MeshHttpRoute
        | TargetRefKind::MeshExternalService
        | TargetRefKind::MeshMultiZoneService => false,
    }
}

/// How specific a top-level targetRef is; greater sorts later and wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    kind_rank: u8,
    /// Dataplane: selected by name (1) rather than labels (0). MeshGateway: listener tag count.
    detail: usize,
    /// Dataplane with a sectionName.
    section: bool,
}

pub fn specificity(target: &TargetRef) -> Specificity {
    let kind_rank = match target.kind {
        TargetRefKind::Mesh => 0,
        TargetRefKind::Dataplane => 1,
        TargetRefKind::MeshSubset => 2,
        TargetRefKind::MeshGateway => 3,
        TargetRefKind::MeshService => 4,
        TargetRefKind::MeshServiceSubset => 5,
        TargetRefKind::MeshHttpRoute => 6,
        TargetRefKind::MeshExternalService | TargetRefKind::MeshMultiZoneService => 7,
    };
    let (detail, section) = match target.kind {
        TargetRefKind::Dataplane => (
            usize::from(target.name.is_some()),
            target.section_name.is_some(),
        ),
        TargetRefKind::MeshGateway => (target.tags.len(), false),
        _ => (0, false),
    };
    Specificity {
        kind_rank,
        detail,
        section,
    }
}

/// A policy that a top-level targetRef attaches to inbounds.
pub trait Targeted {
    fn name(&self) -> &str;
    fn mesh(&self) -> &str;
    /// The top-level targetRef, `{kind: Mesh}` when omitted.
    fn target(&self) -> TargetRef;
    /// The resource's labels (`kuma.io/origin`, `kuma.io/policy-role`, `kuma.io/display-name`
    /// order policies before their targetRef does).
    fn labels(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        &NONE
    }
}

/// Where a policy was created: a global control plane's copy ranks below an unlabelled one,
/// which ranks below a zone's own (Kuma's `kuma.io/origin`).
fn origin_rank(labels: &BTreeMap<String, String>) -> u8 {
    match labels.get("kuma.io/origin").map(String::as_str) {
        Some("global") => 0,
        Some("zone") => 2,
        _ => 1,
    }
}

/// Kuma's `kuma.io/policy-role`: system < producer < consumer < workload-owner. Kuma gives an
/// inbound policy without the label the workload-owner role.
fn role_rank(labels: &BTreeMap<String, String>) -> u8 {
    match labels.get("kuma.io/policy-role").map(String::as_str) {
        Some("system") => 0,
        Some("producer") => 1,
        Some("consumer") => 2,
        _ => 3,
    }
}

/// The name ties are broken by: `kuma.io/display-name` when present (the name the user gave,
/// before a control plane added a hash or namespace), else the resource name.
fn display_name<P: Targeted + ?Sized>(p: &P) -> String {
    p.labels()
        .get("kuma.io/display-name")
        .cloned()
        .unwrap_or_else(|| p.name().to_string())
}

impl Targeted for MeshRateLimit {
    fn name(&self) -> &str {
        &self.name
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    fn mesh(&self) -> &str {
        &self.mesh
    }

    fn target(&self) -> TargetRef {
        self.spec.target()
    }
}

impl Targeted for MeshGlobalRateLimit {
    fn name(&self) -> &str {
        &self.name
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    fn mesh(&self) -> &str {
        &self.mesh
    }

    fn target(&self) -> TargetRef {
        self.spec.target()
    }
}

/// The policies that select this inbound, least specific first.
pub fn applying<'a, P: Targeted + 'a>(
    policies: impl IntoIterator<Item = &'a P>,
    dp: &Dataplane,
    inbound: &Inbound,
) -> Vec<&'a P> {
    let mut out: Vec<&P> = policies
        .into_iter()
        .filter(|p| p.mesh() == dp.mesh && selects(&p.target(), dp, inbound))
        .collect();
    // Kuma's order: origin, then role, then how specific the targetRef is, then the name
    // (the smaller name sorts later, so it wins).
    out.sort_by_cached_key(|p| {
        (
            origin_rank(p.labels()),
            role_rank(p.labels()),
            specificity(&p.target()),
            Reverse(display_name(*p)),
            Reverse(p.name().to_string()),
        )
    });
    out
}

/// The confs a policy contributes for every source, in its own order: `from[]` entries (all
/// of kind Mesh) and then `rules[]` without `matches` (a policy has one or the other).
pub fn catch_all_confs(policy: &MeshRateLimit) -> impl Iterator<Item = &Conf> {
    let from = policy.spec.from.iter().map(|f| &f.default);
    let rules = policy
        .spec
        .rules
        .iter()
        .filter(|r| r.matches.is_empty())
        .map(|r| &r.default);
    from.chain(rules)
}

/// Merges `over` into `base`: a field set in `over` wins; rates and header lists are
/// replaced whole.
pub fn merge(base: &mut Conf, over: &Conf) {
    merge_local(&mut base.local, &over.local);
}

fn merge_local(base: &mut Local, over: &Local) {
    if let Some(o) = &over.http {
        let b = base.http.get_or_insert_with(Default::default);
        replace(&mut b.disabled, &o.disabled);
        replace(&mut b.request_rate, &o.request_rate);
        merge_on_rate_limit(&mut b.on_rate_limit, &o.on_rate_limit);
    }
    if let Some(o) = &over.tcp {
        let b = base.tcp.get_or_insert_with(Default::default);
        replace(&mut b.disabled, &o.disabled);
        replace(&mut b.connection_rate, &o.connection_rate);
    }
}

fn merge_on_rate_limit(base: &mut Option<OnRateLimit>, over: &Option<OnRateLimit>) {
    if let Some(orl) = over {
        let borl = base.get_or_insert_with(Default::default);
        replace(&mut borl.status, &orl.status);
        if let Some(h) = &orl.headers {
            let bh = borl.headers.get_or_insert_with(Default::default);
            replace(&mut bh.set, &h.set);
            replace(&mut bh.add, &h.add);
        }
    }
}

fn replace<T: Clone>(slot: &mut Option<T>, value: &Option<T>) {
    if value.is_some() {
        slot.clone_from(value);
    }
}

/// What a merged conf enforces on an inbound of this protocol. HTTP limits need an HTTP
/// inbound; the TCP connection limit applies to every inbound.
pub fn enforced(conf: &Conf, protocol: Protocol) -> (Option<HttpLimit>, Option<TcpLimit>) {
    let http = conf
        .local
        .http
        .as_ref()
        .filter(|_| protocol == Protocol::Http)
        .and_then(|h| {
            if h.disabled == Some(true) {
                return None;
            }
            let orl = h.on_rate_limit.clone().unwrap_or_default();
            let headers = orl.headers.unwrap_or_default();
            Some(HttpLimit {
                request_rate: h.request_rate?,
                status: orl.status.unwrap_or(RejectStatus::DEFAULT),
                headers: RejectHeaders {
                    set: headers.set.unwrap_or_default(),
                    add: headers.add.unwrap_or_default(),
                },
            })
        });
    let tcp = conf.local.tcp.as_ref().and_then(|t| {
        if t.disabled == Some(true) {
            return None;
        }
        Some(TcpLimit {
            connection_rate: t.connection_rate?,
        })
    });
    (http, tcp)
}

/// The identity of a client, as far as `rules[].matches` can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The client's SPIFFE ID (`spiffe://trust-domain/...`).
    pub spiffe_id: Option<String>,
    /// The TLS server name the client asked for.
    pub sni: Option<String>,
}

/// How specific a match is when it matches this source (`None` when it does not):
/// SNI (1) < spiffeID Prefix (2) < spiffeID Exact (3).
pub fn match_rank(m: &Match, source: &Source) -> Option<u8> {
    match m {
        Match::SpiffeId(s) => {
            let id = source.spiffe_id.as_deref()?;
            match s.kind {
                MatchType::Exact => (id == s.value).then_some(3),
                MatchType::Prefix => id.starts_with(&s.value).then_some(2),
            }
        }
        Match::Sni(s) => (source.sni.as_deref() == Some(&s.value)).then_some(1),
    }
}

/// The conf for one source: catch-all confs of every policy first, then each matching rule,
/// least specific match first (policy order, then rule order, among equals).
/// Returns the conf and the names of the policies that contributed.
pub fn conf_for(policies: &[&MeshRateLimit], source: Option<&Source>) -> (Conf, Vec<String>) {
    let mut conf = Conf::default();
    let mut names: Vec<String> = Vec::new();
    let contributed = |names: &mut Vec<String>, name: &str| {
        if names.last().map(String::as_str) != Some(name) && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    };
    for p in policies {
        for c in catch_all_confs(p) {
            merge(&mut conf, c);
            contributed(&mut names, &p.name);
        }
    }
    if let Some(source) = source {
        let mut matched: Vec<(u8, usize, usize, &Conf, &str)> = Vec::new();
        for (pi, p) in policies.iter().enumerate() {
            for (ri, r) in p.spec.rules.iter().enumerate() {
                if let Some(rank) = r.matches.iter().filter_map(|m| match_rank(m, source)).max() {
                    matched.push((rank, pi, ri, &r.default, &p.name));
                }
            }
        }
        matched.sort_by_key(|(rank, pi, ri, _, _)| (*rank, *pi, *ri));
        for (_, _, _, c, name) in matched {
            merge(&mut conf, c);
            contributed(&mut names, name);
        }
    }
    (conf, names)
}

/// The confs a `MeshGlobalRateLimit` contributes, in its own order: `from[]` entries (all of
/// kind Mesh) and then `rules[]` (a policy has one or the other).
pub fn global_confs(policy: &MeshGlobalRateLimit) -> impl Iterator<Item = &GlobalConf> {
    let from = policy.spec.from.iter().map(|f| &f.default);
    from.chain(policy.spec.rules.iter().map(|r| &r.default))
}

/// Merges `over` into `base` as [`merge`] does: a field set in `over` wins; the rate, the
/// header lists and the URL are replaced whole. `failureMode` and `limitOnServiceFail` are
/// one field: whichever `over` sets replaces both (kept as `failure_mode`).
pub fn merge_global(base: &mut GlobalConf, over: &GlobalConf) {
    if let Some(o) = &over.http {
        let b = base.http.get_or_insert_with(Default::default);
        replace(&mut b.disabled, &o.disabled);
        replace(&mut b.request_rate, &o.request_rate);
        merge_on_rate_limit(&mut b.on_rate_limit, &o.on_rate_limit);
    }
    replace(&mut base.mode, &over.mode);
    if let Some(o) = over.rate_limit_service() {
        let b = base
            .backend
            .get_or_insert_with(Default::default)
            .rate_limit_service
            .get_or_insert_with(Default::default);
        replace(&mut b.url, &o.url);
        replace(&mut b.timeout, &o.timeout);
    }
    replace(&mut base.failure_mode, &over.failure());
}

/// The merged `MeshGlobalRateLimit` conf of an inbound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergedGlobal {
    pub conf: GlobalConf,
    /// The policies that contributed, least specific first.
    pub policies: Vec<String>,
    /// The policy whose `requestRate` won: it names the shared bucket.
    pub rate_from: Option<String>,
}

/// Merges the confs of the applying policies (least specific first, as [`applying`] orders
/// them), each policy's in its own order.
pub fn global_conf_for(policies: &[&MeshGlobalRateLimit]) -> MergedGlobal {
    let mut merged = MergedGlobal::default();
    for p in policies {
        for c in global_confs(p) {
            merge_global(&mut merged.conf, c);
            if !merged.policies.contains(&p.name) {
                merged.policies.push(p.name.clone());
            }
            if c.http.as_ref().is_some_and(|h| h.request_rate.is_some()) {
                merged.rate_from = Some(p.name.clone());
            }
        }
    }
    merged
}

/// What a merged conf enforces on an inbound of this protocol and service, as if the inbound
/// were the service's only instance (`share` is the whole total); `ResourceSet` divides it
/// among the live instances. HTTP inbounds only; nothing when disabled or without a rate.
pub fn enforced_global(
    merged: &MergedGlobal,
    protocol: Protocol,
    mesh: &str,
    service: &str,
) -> Option<GlobalLimit> {
    if protocol != Protocol::Http {
        return None;
    }
    let conf = &merged.conf;
    let http = conf.http.as_ref()?;
    if http.disabled == Some(true) {
        return None;
    }
    let request_rate = http.request_rate?;
    let owner = merged.rate_from.as_deref()?;
    let orl = http.on_rate_limit.clone().unwrap_or_default();
    let headers = orl.headers.unwrap_or_default();
    let service_conf = conf.rate_limit_service();
    Some(GlobalLimit {
        service: service.to_string(),
        key: crate::global::key(mesh, owner, service),
        request_rate,
        share: request_rate,
        instances: 1,
        index: 0,
        mode: conf.mode.unwrap_or_default(),
        status: orl.status.unwrap_or(RejectStatus::DEFAULT),
        headers: RejectHeaders {
            set: headers.set.unwrap_or_default(),
            add: headers.add.unwrap_or_default(),
        },
        rate_limit_service: service_conf.and_then(|s| s.url.clone()),
        timeout: service_conf
            .and_then(|s| s.timeout)
            .unwrap_or(DEFAULT_RATE_LIMIT_SERVICE_TIMEOUT),
        failure_mode: conf.failure().unwrap_or_default(),
        policies: merged.policies.clone(),
    })
}
