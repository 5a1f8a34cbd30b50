//! Which `MeshRateLimit` policies apply to an inbound, in which order, and what their merged
//! configuration is — Kuma's algorithm:
//!
//! 1. the top-level `targetRef` selects inbounds ([`selects`]);
//! 2. the applying policies are ordered least specific targetRef first ([`Specificity`]:
//!    the kind, then for Dataplane labels < name and no sectionName < sectionName), then by
//!    their `kuma.io/origin` label (global < none < zone), then `kuma.io/policy-role` (system,
//!    the default, < producer < consumer < workload-owner), ties broken by
//!    `kuma.io/display-name` (else the name), descending, so the smallest comes last and wins;
//! 3. their confs are merged field by field in that order ([`merge`]); rates and header lists
//!    are replaced whole; within one policy, later `from`/`rules` entries override earlier ones;
//! 4. `rules` with a `spiffeID` match apply only to the clients they match, over the
//!    catch-all ones, ordered Prefix (shorter first) < Exact ([`conf_for`], [`spiffe_routes`]);
//!    SNI matches apply on zone proxy listeners only, never on a sidecar inbound.
//!
//! `MeshGlobalRateLimit` policies are selected and ordered the same way ([`applying`] takes
//! either) and merged by [`global_conf_for`]; [`enforced_global`] is what they enforce.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::effective::{GlobalLimit, HttpLimit, Protocol, RejectHeaders, TcpLimit};
use crate::model::{
    Conf, DEFAULT_RATE_LIMIT_SERVICE_TIMEOUT, Dataplane, GlobalConf, Inbound, Local, MatchType,
    MeshGlobalRateLimit, MeshRateLimit, OnRateLimit, StringMatch, TargetRef, TargetRefKind,
};
use crate::quota::RejectStatus;

const ORIGIN_LABEL: &str = "kuma.io/origin";
const ROLE_LABEL: &str = "kuma.io/policy-role";
const DISPLAY_NAME_LABEL: &str = "kuma.io/display-name";
const NAMESPACE_LABEL: &str = "k8s.kuma.io/namespace";
const ZONE_LABEL: &str = "kuma.io/zone";

/// Whether a top-level targetRef selects this inbound of this Dataplane.
pub fn selects(target: &TargetRef, dp: &Dataplane, inbound: &Inbound) -> bool {
    let proxy_ok = target.proxy_types.is_empty() || target.proxy_types.contains(&dp.proxy_type());
    let tags_ok = target
        .tags
        .iter()
        .all(|(k, v)| inbound.tags.get(k) == Some(v));
    let section_ok = selects_section(target, inbound);
    let service_ok = target.name.as_deref() == Some(inbound.service());
    match target.kind {
        TargetRefKind::Mesh => proxy_ok,
        TargetRefKind::MeshSubset => proxy_ok && tags_ok,
        TargetRefKind::MeshService => service_ok && section_ok,
        TargetRefKind::MeshServiceSubset => service_ok && tags_ok,
        TargetRefKind::Dataplane => dataplane_selects(target, None, None, dp) && section_ok,
        // Gateways have listeners, not inbounds; these kinds never select an inbound.
        TargetRefKind::MeshGateway
        | TargetRefKind::MeshHttpRoute
        | TargetRefKind::MeshExternalService
        | TargetRefKind::MeshMultiZoneService => false,
    }
}

/// Whether a Dataplane targetRef selects this Dataplane (Kuma's `allDataplanesSelected`,
/// `isSelectedByResourceIdentifier`, `isSelectedByLabels`). By name, the Dataplane's
/// identity must match: its display name, its namespace (the targetRef's, else the policy's
/// own) and its zone (the policy's), each from the `k8s.kuma.io/namespace`, `kuma.io/zone`
/// and `kuma.io/display-name` labels.
fn dataplane_selects(
    target: &TargetRef,
    policy_namespace: Option<&str>,
    policy_zone: Option<&str>,
    dp: &Dataplane,
) -> bool {
    let label = |name: &str| dp.labels.get(name).map(String::as_str).unwrap_or("");
    match (&target.name, target.labels.is_empty()) {
        (None, true) => target.namespace.is_none(),
        (Some(name), _) => {
            let namespace = target.namespace.as_deref().or(policy_namespace);
            let display = dp
                .labels
                .get(DISPLAY_NAME_LABEL)
                .filter(|n| !n.is_empty())
                .unwrap_or(&dp.name);
            display == name
                && namespace.unwrap_or("") == label(NAMESPACE_LABEL)
                && policy_zone.unwrap_or("") == label(ZONE_LABEL)
        }
        (None, false) => target
            .labels
            .iter()
            .all(|(k, v)| dp.labels.get(k) == Some(v)),
    }
}

/// Whether a policy applies to this inbound: its targetRef selects it ([`selects`], with the
/// policy's namespace and zone for a Dataplane by name), and, for the consumer and
/// workload-owner roles, the policy is in the Dataplane's namespace (Kuma's
/// `dppSelectedByNamespace`).
pub fn policy_selects<P: Targeted + ?Sized>(p: &P, dp: &Dataplane, inbound: &Inbound) -> bool {
    let target = p.target();
    let labels = p.labels();
    if matches!(
        labels.get(ROLE_LABEL).map(String::as_str),
        Some("consumer" | "workload-owner")
    ) {
        let same = labels
            .get(NAMESPACE_LABEL)
            .is_some_and(|ns| dp.labels.get(NAMESPACE_LABEL) == Some(ns));
        if !same {
            return false;
        }
    }
    if target.kind != TargetRefKind::Dataplane {
        return selects(&target, dp, inbound);
    }
    let zone = labels.get(ZONE_LABEL).map(String::as_str);
    dataplane_selects(&target, p.namespace(), zone, dp) && selects_section(&target, inbound)
}

fn selects_section(target: &TargetRef, inbound: &Inbound) -> bool {
    target
        .section_name
        .as_ref()
        .is_none_or(|s| inbound.name.as_ref() == Some(s) || inbound.port.to_string() == *s)
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
    // Kuma's order of kinds (`TargetRefKind.Compare`).
    let kind_rank = match target.kind {
        TargetRefKind::Mesh => 1,
        TargetRefKind::Dataplane => 2,
        TargetRefKind::MeshSubset => 3,
        TargetRefKind::MeshGateway => 4,
        TargetRefKind::MeshService => 5,
        TargetRefKind::MeshExternalService => 6,
        TargetRefKind::MeshMultiZoneService => 7,
        TargetRefKind::MeshServiceSubset => 8,
        TargetRefKind::MeshHttpRoute => 9,
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
    /// The policy's namespace: its `k8s.kuma.io/namespace` label, else `metadata.namespace`.
    fn namespace(&self) -> Option<&str> {
        None
    }
}

/// [`Targeted::namespace`] of a policy with these labels and `metadata.namespace`.
fn namespace_of<'a>(
    labels: &'a BTreeMap<String, String>,
    namespace: &'a Option<String>,
) -> Option<&'a str> {
    labels
        .get(NAMESPACE_LABEL)
        .or(namespace.as_ref())
        .map(String::as_str)
}

/// Where a policy was created: a global control plane's copy ranks below an unlabelled one,
/// which ranks below a zone's own (Kuma's `kuma.io/origin`); an unknown value ranks lowest.
fn origin_rank(labels: &BTreeMap<String, String>) -> u8 {
    match labels.get(ORIGIN_LABEL).map(String::as_str) {
        None | Some("") => 2,
        Some("global") => 1,
        Some("zone") => 3,
        Some(_) => 0,
    }
}

/// Kuma's `kuma.io/policy-role`: system < producer < consumer < workload-owner. Kuma takes a
/// policy without the label as of the system role; an unknown value ranks lowest.
fn role_rank(labels: &BTreeMap<String, String>) -> u8 {
    match labels.get(ROLE_LABEL).map(String::as_str) {
        None | Some("") | Some("system") => 1,
        Some("producer") => 2,
        Some("consumer") => 3,
        Some("workload-owner") => 4,
        Some(_) => 0,
    }
}

/// The name ties are broken by: `kuma.io/display-name` when present (the name the user gave,
/// before a control plane added a hash or namespace), else the resource name.
fn display_name<P: Targeted + ?Sized>(p: &P) -> String {
    p.labels()
        .get(DISPLAY_NAME_LABEL)
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

    fn namespace(&self) -> Option<&str> {
        namespace_of(&self.labels, &self.namespace)
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

    fn namespace(&self) -> Option<&str> {
        namespace_of(&self.labels, &self.namespace)
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
        .filter(|p| p.mesh() == dp.mesh && policy_selects(*p, dp, inbound))
        .collect();
    // Kuma's order (`CompareByPolicyAttributes`, then `CompareByDisplayName`): how specific
    // the targetRef is, origin, role, then the display name (the smaller sorts later and
    // wins). A stable sort keeps the order given among equals, as Kuma's does.
    out.sort_by_cached_key(|p| {
        (
            specificity(&p.target()),
            origin_rank(p.labels()),
            role_rank(p.labels()),
            Reverse(display_name(*p)),
            // Kuma's store lists policies by name, and its sort is stable.
            p.name().to_string(),
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
/// inbound; the TCP connection limit applies to every inbound. `rate_from` names the policy
/// whose `requestRate` won the merge.
pub fn enforced(
    conf: &Conf,
    rate_from: Option<&str>,
    protocol: Protocol,
) -> (Option<HttpLimit>, Option<TcpLimit>) {
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
                policy: rate_from.unwrap_or_default().to_string(),
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

/// Whether a `spiffeID` match matches this client's SPIFFE ID.
fn spiffe_matches(m: &StringMatch, id: &str) -> bool {
    match m.kind {
        MatchType::Exact => id == m.value,
        MatchType::Prefix => id.starts_with(&m.value),
    }
}

/// Kuma's specificity of a match with a `spiffeID` (`CompareMatch`, then the prefix length):
/// Prefix below Exact, without SNI below with it, a shorter prefix below a longer one.
fn spiffe_rank(m: &SpiffeRule<'_>) -> (u8, bool, usize) {
    match m.spiffe_id.kind {
        MatchType::Prefix => (0, m.sni.is_some(), m.spiffe_id.value.len()),
        MatchType::Exact => (1, m.sni.is_some(), 0),
    }
}

/// A rule's match with a `spiffeID` (and maybe an SNI), its conf and policy.
#[derive(Clone, Copy)]
struct SpiffeRule<'a> {
    spiffe_id: &'a StringMatch,
    sni: Option<&'a StringMatch>,
    conf: &'a Conf,
    policy: &'a str,
}

/// The rules of the policies with a `spiffeID` match, one per match, in Kuma's order: policy
/// order, then rule and match order. SNI-only matches are left out: Kuma applies them on zone
/// proxy listeners only, never on a sidecar inbound.
fn spiffe_rules<'a>(policies: &[&'a MeshRateLimit]) -> Vec<SpiffeRule<'a>> {
    let mut out = Vec::new();
    for p in policies {
        for r in &p.spec.rules {
            for m in &r.matches {
                if let Some(spiffe_id) = m.spiffe_id() {
                    out.push(SpiffeRule {
                        spiffe_id,
                        sni: m.sni(),
                        conf: &r.default,
                        policy: p.name.as_str(),
                    });
                }
            }
        }
    }
    out
}

/// A conf merged from several policies, with the names that went into it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    pub conf: Conf,
    /// The policies that contributed, least specific first.
    pub policies: Vec<String>,
    /// The policy whose HTTP `requestRate` won the merge: the one a rejection is told of.
    pub rate_from: Option<String>,
}

impl Merged {
    fn merge(&mut self, over: &Conf, policy: &str) {
        merge(&mut self.conf, over);
        if !self.policies.iter().any(|n| n == policy) {
            self.policies.push(policy.to_string());
        }
        if over
            .local
            .http
            .as_ref()
            .is_some_and(|h| h.request_rate.is_some())
        {
            self.rate_from = Some(policy.to_string());
        }
    }

    /// What the merged conf enforces on an inbound of this protocol (see [`enforced`]).
    pub fn enforced(&self, protocol: Protocol) -> (Option<HttpLimit>, Option<TcpLimit>) {
        enforced(&self.conf, self.rate_from.as_deref(), protocol)
    }
}

/// The conf for one source: catch-all confs of every policy first, then every `spiffeID` rule
/// matching the client (and its SNI, when the rule names one), least specific first. This is
/// the conf of the route Kuma's Envoy picks for that client ([`spiffe_routes`]).
pub fn conf_for(policies: &[&MeshRateLimit], source: Option<&Source>) -> Merged {
    let mut merged = Merged::default();
    for p in policies {
        for c in catch_all_confs(p) {
            merged.merge(c, &p.name);
        }
    }
    if let Some(source) = source
        && let Some(id) = source.spiffe_id.as_deref()
    {
        let mut matched: Vec<_> = spiffe_rules(policies)
            .into_iter()
            .filter(|r| {
                spiffe_matches(r.spiffe_id, id)
                    && r.sni
                        .is_none_or(|sni| source.sni.as_deref() == Some(sni.value.as_str()))
            })
            .collect();
        matched.sort_by_key(spiffe_rank);
        for r in matched {
            merged.merge(r.conf, r.policy);
        }
    }
    merged
}

/// A route Kuma adds in front of a sidecar inbound's route for a `spiffeID` match: requests
/// whose client certificate carries a matching URI SAN (and, when `sni` is set, that asked
/// for that server name) take it, and its conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeRoute {
    pub matched: StringMatch,
    pub sni: Option<StringMatch>,
    /// The catch-all conf merged with every rule whose match covers this one, least specific
    /// first (Kuma's `mergeSubsumingMatchedRouteConfs`).
    pub merged: Merged,
}

/// The routes Kuma's MeshRateLimit plugin adds on a sidecar inbound for `rules[].matches`
/// with a `spiffeID` (`ConfigureMatchedRoutesOnFilterChain`), most specific first, as Envoy
/// tries them; one per distinct match.
pub fn spiffe_routes(policies: &[&MeshRateLimit]) -> Vec<SpiffeRoute> {
    let base = conf_for(policies, None);
    let mut rules: Vec<_> = spiffe_rules(policies)
        .into_iter()
        .filter(|r| r.conf.local.http.is_some())
        .collect();
    rules.sort_by_key(|r| Reverse(spiffe_rank(r)));
    let mut routes: Vec<SpiffeRoute> = Vec::new();
    for target in &rules {
        let seen = routes
            .iter()
            .any(|r| r.matched == *target.spiffe_id && r.sni.as_ref() == target.sni);
        if seen {
            continue;
        }
        let mut covering: Vec<_> = rules.iter().filter(|r| covers(r, target)).collect();
        covering.sort_by_key(|r| spiffe_rank(r));
        let mut merged = if base.conf.local.http.is_some() {
            base.clone()
        } else {
            Merged::default()
        };
        for r in covering {
            merged.merge(r.conf, r.policy);
        }
        routes.push(SpiffeRoute {
            matched: target.spiffe_id.clone(),
            sni: target.sni.cloned(),
            merged,
        });
    }
    routes
}

/// Kuma's `matchedRouteSubsumes`: every client `target` matches, `candidate` matches too
/// (its SPIFFE ID part covers the target's, and it names no SNI or the same one).
fn covers(candidate: &SpiffeRule<'_>, target: &SpiffeRule<'_>) -> bool {
    let (c, t) = (candidate.spiffe_id, target.spiffe_id);
    let spiffe = match c.kind {
        MatchType::Exact => t.kind == MatchType::Exact && c.value == t.value,
        MatchType::Prefix => t.value.starts_with(&c.value),
    };
    let sni = match (candidate.sni, target.sni) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(c), Some(t)) => c == t,
    };
    spiffe && sni
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
        policy: owner.to_string(),
        policies: merged.policies.clone(),
    })
}
