//! A consistent set of resources and what it means for each Dataplane.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::effective::{
    DataplaneLimits, GlobalLimit, InboundLimits, KernelLimit, Protocol, SourceLimit, SpiffeIdMatch,
    SpiffeMatchType,
};
use crate::global::share;
use crate::matching::{self, Source};
use crate::model::{
    DEFAULT_MESH, Dataplane, Form, Inbound, Kind, Match, MatchType, MeshGlobalRateLimit,
    MeshRateLimit, RateLimit, Resource,
};
use crate::parse::{Origin, Parsed};
use crate::problem::Problem;
use crate::quota::TokenBucket;

/// Validated resources that are consistent with each other: names are unique per kind and
/// mesh, every mesh referred to exists, no service has two kernel rate limits, and no
/// destination (address and port) gets two different kernel limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSet {
    resources: Vec<Resource>,
}

/// The limit of one `rules[]` entry with `matches`, for a client that matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLimits {
    /// The inbound port.
    pub port: u16,
    /// The match this entry was computed for.
    pub matched: Match,
    /// What a client matching it gets (catch-all rules, then every rule it matches).
    pub limits: InboundLimits,
}

impl ResourceSet {
    pub fn new(resources: Vec<Resource>) -> Result<ResourceSet, Vec<Problem>> {
        let problems = consistency(&resources, None);
        if problems.is_empty() {
            Ok(ResourceSet { resources })
        } else {
            Err(problems)
        }
    }

    /// Like [`ResourceSet::new`], with problems attributed to the file and document each
    /// resource came from.
    pub fn from_parsed(parsed: Parsed) -> Result<ResourceSet, Vec<Problem>> {
        let problems = consistency(&parsed.resources, Some(&parsed.origins));
        if problems.is_empty() {
            Ok(ResourceSet {
                resources: parsed.resources,
            })
        } else {
            Err(problems)
        }
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    fn mesh_rate_limits(&self) -> impl Iterator<Item = &MeshRateLimit> {
        self.resources.iter().filter_map(|r| match r {
            Resource::MeshRateLimit(p) => Some(p),
            _ => None,
        })
    }

    fn mesh_global_rate_limits(&self) -> impl Iterator<Item = &MeshGlobalRateLimit> {
        self.resources.iter().filter_map(|r| match r {
            Resource::MeshGlobalRateLimit(p) => Some(p),
            _ => None,
        })
    }

    fn dataplanes(&self) -> impl Iterator<Item = &Dataplane> {
        self.resources.iter().filter_map(|r| match r {
            Resource::Dataplane(d) => Some(d),
            _ => None,
        })
    }

    fn rate_limits(&self) -> impl Iterator<Item = &RateLimit> {
        self.resources.iter().filter_map(|r| match r {
            Resource::RateLimit(p) => Some(p),
            _ => None,
        })
    }

    pub fn dataplane(&self, mesh: &str, name: &str) -> Option<&Dataplane> {
        self.dataplanes().find(|d| d.mesh == mesh && d.name == name)
    }

    /// What one Dataplane enforces; `None` when there is no such Dataplane in that mesh.
    pub fn effective(&self, mesh: &str, dataplane: &str) -> Option<DataplaneLimits> {
        let dp = self.dataplane(mesh, dataplane)?;
        Some(self.limits_of(dp, &self.global_instances(mesh)))
    }

    /// What every Dataplane enforces, in the order they were given.
    pub fn all_effective(&self) -> Vec<DataplaneLimits> {
        let mut instances: HashMap<&str, GlobalInstances<'_>> = HashMap::new();
        self.dataplanes()
            .map(|dp| {
                let of_mesh = instances
                    .entry(&dp.mesh)
                    .or_insert_with(|| self.global_instances(&dp.mesh));
                self.limits_of(dp, of_mesh)
            })
            .collect()
    }

    fn limits_of(&self, dp: &Dataplane, instances: &GlobalInstances<'_>) -> DataplaneLimits {
        let inbounds = dp
            .networking
            .enforced_inbounds()
            .map(|inbound| {
                let policies = matching::applying(self.mesh_rate_limits(), dp, inbound);
                let global = self.global_of(dp, inbound, instances);
                inbound_limits(inbound, &policies, None, global)
            })
            .collect();
        DataplaneLimits {
            dataplane: dp.name.clone(),
            mesh: dp.mesh.clone(),
            address: dp.networking.address.clone(),
            inbounds,
            kernel: self.kernel_limits_of(|d| std::ptr::eq(d, dp)),
        }
    }

    /// For each inbound of a Dataplane, the limit a client gets when it matches one of the
    /// `rules[].matches` of the policies there (one entry per match).
    pub fn source_limits(&self, mesh: &str, dataplane: &str) -> Vec<SourceLimits> {
        let Some(dp) = self.dataplane(mesh, dataplane) else {
            return Vec::new();
        };
        let instances = self.global_instances(mesh);
        let mut out = Vec::new();
        for inbound in dp.networking.enforced_inbounds() {
            let policies = matching::applying(self.mesh_rate_limits(), dp, inbound);
            let global = self.global_of(dp, inbound, &instances);
            let mut seen = Vec::new();
            for p in &policies {
                for rule in &p.spec.rules {
                    for m in &rule.matches {
                        // SNI matches apply on zone proxy listeners only, not on inbounds.
                        if seen.contains(&m) || m.spiffe_id().is_none() {
                            continue;
                        }
                        seen.push(m);
                        let source = Source {
                            spiffe_id: m.spiffe_id().map(|s| s.value.clone()),
                            sni: m.sni().map(|s| s.value.clone()),
                        };
                        out.push(SourceLimits {
                            port: inbound.port,
                            matched: m.clone(),
                            limits: inbound_limits(
                                inbound,
                                &policies,
                                Some(&source),
                                global.clone(),
                            ),
                        });
                    }
                }
            }
        }
        out
    }

    /// The limits of one inbound for one client.
    pub fn limits_for_source(
        &self,
        mesh: &str,
        dataplane: &str,
        port: u16,
        source: &Source,
    ) -> Option<InboundLimits> {
        let dp = self.dataplane(mesh, dataplane)?;
        let inbound = dp.networking.enforced_inbounds().find(|i| i.port == port)?;
        let policies = matching::applying(self.mesh_rate_limits(), dp, inbound);
        let global = self.global_of(dp, inbound, &self.global_instances(mesh));
        Some(inbound_limits(inbound, &policies, Some(source), global))
    }

    /// The `MeshGlobalRateLimit` of one inbound as if it were the service's only instance.
    fn global_alone(&self, dp: &Dataplane, inbound: &Inbound) -> Option<GlobalLimit> {
        let policies = matching::applying(self.mesh_global_rate_limits(), dp, inbound);
        if policies.is_empty() {
            return None;
        }
        let merged = matching::global_conf_for(&policies);
        matching::enforced_global(&merged, inbound.protocol(), &dp.mesh, inbound.service())
    }

    /// The instances enforcing each global limit of a mesh: every inbound whose limit has
    /// that key, ordered by (Dataplane name, inbound port) so that every instance computes
    /// the same order from the same set, whatever order the resources came in.
    fn global_instances(&self, mesh: &str) -> GlobalInstances<'_> {
        let mut out: GlobalInstances<'_> = HashMap::new();
        if self.mesh_global_rate_limits().next().is_none() {
            return out;
        }
        for dp in self.dataplanes().filter(|d| d.mesh == mesh) {
            for inbound in dp.networking.enforced_inbounds() {
                if let Some(limit) = self.global_alone(dp, inbound) {
                    out.entry(limit.key)
                        .or_default()
                        .push((dp.name.as_str(), inbound.port));
                }
            }
        }
        for peers in out.values_mut() {
            peers.sort_unstable();
        }
        out
    }

    /// The global limit of an inbound, with this instance's share of the total.
    fn global_of(
        &self,
        dp: &Dataplane,
        inbound: &Inbound,
        instances: &GlobalInstances<'_>,
    ) -> Option<GlobalLimit> {
        let mut limit = self.global_alone(dp, inbound)?;
        let me = (dp.name.as_str(), inbound.port);
        let (count, index) = instances
            .get(&limit.key)
            .and_then(|peers| Some((peers.len(), peers.binary_search(&me).ok()?)))
            .unwrap_or((1, 0));
        limit.instances = u32::try_from(count).unwrap_or(u32::MAX);
        limit.index = u32::try_from(index).unwrap_or(u32::MAX);
        limit.share = share(limit.request_rate, limit.instances, limit.index);
        Some(limit)
    }

    /// Every `RateLimit` resolved to the inbounds, in the same mesh, whose `kuma.io/service`
    /// is the limited service.
    pub fn kernel_limits(&self) -> Vec<KernelLimit> {
        self.kernel_limits_of(|_| true)
    }

    fn kernel_limits_of(&self, include: impl Fn(&Dataplane) -> bool) -> Vec<KernelLimit> {
        let mut out = Vec::new();
        for rl in self.rate_limits() {
            for service in &rl.services {
                for rule in &service.rules {
                    for dp in self
                        .dataplanes()
                        .filter(|d| d.mesh == rl.mesh && include(d))
                    {
                        for inbound in dp.networking.enforced_inbounds() {
                            if inbound.service() != service.name {
                                continue;
                            }
                            out.push(KernelLimit {
                                service: service.name.clone(),
                                address: inbound
                                    .address
                                    .clone()
                                    .unwrap_or_else(|| dp.networking.address.clone()),
                                port: inbound.port,
                                bucket: *rule,
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

/// For each global limit's key, the (Dataplane name, inbound port) of its instances, in order.
type GlobalInstances<'a> = HashMap<String, Vec<(&'a str, u16)>>;

fn inbound_limits(
    inbound: &Inbound,
    policies: &[&MeshRateLimit],
    source: Option<&Source>,
    global: Option<GlobalLimit>,
) -> InboundLimits {
    let merged = matching::conf_for(policies, source);
    let protocol = inbound.protocol();
    let (http, tcp) = merged.enforced(protocol);
    // Per-client routes belong to the inbound's own limits, not to one client's view of them.
    let sources = match (source, protocol) {
        (None, Protocol::Http) => matching::spiffe_routes(policies)
            .into_iter()
            .map(|route| SourceLimit {
                spiffe_id: SpiffeIdMatch {
                    kind: match route.matched.kind {
                        MatchType::Exact => SpiffeMatchType::Exact,
                        MatchType::Prefix => SpiffeMatchType::Prefix,
                    },
                    value: route.matched.value,
                },
                sni: route.sni.map(|s| s.value),
                http: route.merged.enforced(protocol).0,
            })
            .collect(),
        _ => Vec::new(),
    };
    InboundLimits {
        port: inbound.port,
        service_port: inbound.effective_service_port(),
        service: inbound.service().to_string(),
        protocol,
        http,
        tcp,
        policies: merged.policies,
        global,
        sources,
    }
}

/// Checks across resources. `origins`, when given, is parallel to `resources`.
fn consistency(resources: &[Resource], origins: Option<&[Origin]>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let locate = |i: usize, p: Problem| {
        let r = &resources[i];
        let p = p.of(r.kind().as_str(), r.name());
        match origins.and_then(|o| o.get(i)) {
            Some(o) => p.at(&o.file, o.document),
            None => p,
        }
    };
    let name_path = |r: &Resource| match r {
        Resource::MeshRateLimit(p) if p.form == Form::Kubernetes => "metadata.name",
        Resource::MeshGlobalRateLimit(p) if p.form == Form::Kubernetes => "metadata.name",
        Resource::RateLimit(_) => "metadata.name",
        _ => "name",
    };
    let mesh_path = |r: &Resource| match r {
        Resource::MeshRateLimit(p) if p.form == Form::Kubernetes => {
            "metadata.labels[\"kuma.io/mesh\"]"
        }
        Resource::MeshGlobalRateLimit(p) if p.form == Form::Kubernetes => {
            "metadata.labels[\"kuma.io/mesh\"]"
        }
        Resource::RateLimit(_) => "metadata.labels[\"kuma.io/mesh\"]",
        _ => "mesh",
    };

    let mut seen: HashMap<(Kind, &str, &str), usize> = HashMap::new();
    for (i, r) in resources.iter().enumerate() {
        if let Some(first) = seen.insert((r.kind(), r.mesh(), r.name()), i) {
            let at = origins
                .and_then(|o| o.get(first))
                .map(|o| format!(" (first defined in {}, document {})", o.file, o.document))
                .unwrap_or_default();
            problems.push(locate(
                i,
                Problem::new(
                    name_path(r),
                    if r.kind() == Kind::Mesh {
                        format!("duplicate Mesh '{}'{at}: names must be unique", r.name())
                    } else {
                        format!(
                            "duplicate {} '{}' in mesh '{}'{at}: names must be unique per kind and mesh",
                            r.kind(),
                            r.name(),
                            r.mesh()
                        )
                    },
                ),
            ));
            // Put the first one back so later duplicates point at it too.
            seen.insert((r.kind(), r.mesh(), r.name()), first);
        }
    }

    let meshes: Vec<&str> = resources
        .iter()
        .filter(|r| r.kind() == Kind::Mesh)
        .map(Resource::name)
        .chain([DEFAULT_MESH])
        .collect();
    for (i, r) in resources.iter().enumerate() {
        if r.kind() != Kind::Mesh && !meshes.contains(&r.mesh()) {
            problems.push(locate(
                i,
                Problem::new(
                    mesh_path(r),
                    format!(
                        "mesh '{}' is not defined (add a Mesh named '{}')",
                        r.mesh(),
                        r.mesh()
                    ),
                ),
            ));
        }
    }

    let mut limited: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for (i, r) in resources.iter().enumerate() {
        let Resource::RateLimit(rl) = r else { continue };
        for (si, s) in rl.services.iter().enumerate() {
            if let Some(other) = limited.get(&(rl.mesh.as_str(), s.name.as_str())) {
                if *other != rl.name {
                    let path = if rl.listed {
                        format!("spec.services[{si}].name")
                    } else {
                        "spec.service".to_string()
                    };
                    problems.push(locate(
                        i,
                        Problem::new(
                            path,
                            format!(
                                "service '{}' already has a kernel rate limit in RateLimit '{other}' (the kernel keeps one bucket per destination)",
                                s.name
                            ),
                        ),
                    ));
                }
            } else {
                limited.insert((rl.mesh.as_str(), s.name.as_str()), rl.name.as_str());
            }
        }
    }
    problems.extend(
        shared_destinations(resources, &limited)
            .into_iter()
            .map(|(i, p)| locate(i, p)),
    );
    problems
}

/// A kernel limit as it reaches one destination, for [`shared_destinations`].
struct DestinationLimit<'a> {
    rate_limit: &'a str,
    mesh: &'a str,
    service: &'a str,
    dataplane: &'a str,
    rule: TokenBucket,
}

/// The kernel keeps one token bucket per destination address and port, whatever the mesh or
/// service: two kernel limits that resolve to the same destination with different settings
/// cannot both be enforced. Reports each such destination once, on the later `RateLimit`
/// (at the index given). `limited` holds the one `RateLimit` kept for each (mesh, service);
/// services already reported as limited twice are skipped.
fn shared_destinations<'a>(
    resources: &'a [Resource],
    limited: &BTreeMap<(&str, &str), &str>,
) -> Vec<(usize, Problem)> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<(String, u16), DestinationLimit<'a>> = BTreeMap::new();
    for (i, r) in resources.iter().enumerate() {
        let Resource::RateLimit(rl) = r else { continue };
        for (si, s) in rl.services.iter().enumerate() {
            if limited.get(&(rl.mesh.as_str(), s.name.as_str())) != Some(&rl.name.as_str()) {
                continue;
            }
            let path = if rl.listed {
                format!("spec.services[{si}].name")
            } else {
                "spec.service".to_string()
            };
            for dp in resources.iter().filter_map(|r| match r {
                Resource::Dataplane(d) if d.mesh == rl.mesh => Some(d),
                _ => None,
            }) {
                for inbound in dp
                    .networking
                    .inbound
                    .iter()
                    .filter(|i| i.service() == s.name)
                {
                    let address = inbound.address.as_deref().unwrap_or(&dp.networking.address);
                    let key = (canonical_address(address), inbound.port);
                    for rule in &s.rules {
                        let here = DestinationLimit {
                            rate_limit: &rl.name,
                            mesh: &rl.mesh,
                            service: &s.name,
                            dataplane: &dp.name,
                            rule: *rule,
                        };
                        match seen.get(&key) {
                            None => {
                                seen.insert(key.clone(), here);
                            }
                            Some(first) if first.rule == here.rule => {}
                            Some(first) => {
                                problems.push((i, destination_conflict(&path, &key, first, &here)));
                            }
                        }
                    }
                }
            }
        }
    }
    problems
}

fn destination_conflict(
    path: &str,
    (address, port): &(String, u16),
    first: &DestinationLimit<'_>,
    here: &DestinationLimit<'_>,
) -> Problem {
    let destination = if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    let settings = |r: &TokenBucket| {
        format!(
            "maxTokens {}, tokensPerFill {}, fillInterval {}",
            r.max_tokens(),
            r.tokens_per_fill(),
            r.fill_interval_ns()
        )
    };
    Problem::new(
        path,
        format!(
            "service '{}' reaches {destination} (Dataplane '{}'), which RateLimit '{}' already \
             limits for service '{}' in mesh '{}' with other settings ({} here, {} there): the \
             kernel keeps one token bucket per destination, so give both the same settings or \
             give the Dataplanes different addresses or ports",
            here.service,
            here.dataplane,
            first.rate_limit,
            first.service,
            first.mesh,
            settings(&here.rule),
            settings(&first.rule),
        ),
    )
}

/// The form of an address the kernel keys on: IPv4-mapped IPv6 is IPv4, and `::0:1` is `::1`.
/// A name that is not an IP address stays as written.
fn canonical_address(address: &str) -> String {
    match address.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => address.to_string(),
    }
}
