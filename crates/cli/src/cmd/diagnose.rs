//! `meshlimit diagnose rate-limit [--dataplane DP] [--mesh M]`: walks the checks a user would
//! otherwise do by hand and prints each as `[ok]` or `[problem]`, with the fix. Exits 1 when
//! any check finds a problem.
//!
//! The checks: policies that select nothing; inbounds where a policy's limit is shadowed by a
//! more specific one; what Dataplanes declare that no limit is enforced on (inbounds in state
//! `Ignored`, zone-proxy listeners); limits the recent traffic trips constantly; global limits whose shared
//! store (Redis) failed checks in the last minute; kernel limits with no kernel agent attached;
//! data planes not connected, or behind the store version.

use std::process::ExitCode;

use meshlimit_control_plane_client::client::{Client, ClientError};
use meshlimit_control_plane_client::wire::{Selection, StatusResponse};
use meshlimit_policy::effective::{DataplaneLimits, KernelLimit, Protocol, Rate};
use meshlimit_policy::model::Dataplane;
use meshlimit_policy::{Kind, Resource};

use super::Context;
use super::get::output::{block_on, client, explain, per_second, resource_of};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Topic {
    /// Why requests or connections are (or are not) rate limited.
    RateLimit,
}

#[derive(clap::Args)]
pub struct Args {
    /// What to diagnose.
    #[arg(value_enum, value_name = "TOPIC")]
    pub topic: Topic,
    /// Only the checks about this Dataplane.
    #[arg(long, value_name = "NAME")]
    pub dataplane: Option<String>,
    /// The mesh of --dataplane.
    #[arg(short = 'm', long, default_value = "default")]
    pub mesh: String,
}

/// A share of rejections over the last minute above this is "tripping constantly".
const CONSTANT_REJECTION: f64 = 0.10;

/// Everything the checks look at, read once.
struct Facts {
    status: StatusResponse,
    policies: Vec<(Resource, Selection)>,
    rate_limits: Vec<(Resource, Selection)>,
    effective: Vec<DataplaneLimits>,
    kernel: Vec<KernelLimit>,
    dataplanes: Vec<Dataplane>,
}

async fn gather(client: &Client, dataplane: Option<(&str, &str)>) -> Result<Facts, ClientError> {
    let status = client.status().await?;
    let mut policies = Vec::new();
    for value in client.list(Kind::MeshRateLimit, None).await? {
        let Ok(resource) = resource_of(&value) else {
            continue;
        };
        let selection = client
            .selection(Kind::MeshRateLimit, resource.mesh(), resource.name())
            .await?;
        policies.push((resource, selection));
    }
    let mut rate_limits = Vec::new();
    for value in client.list(Kind::RateLimit, None).await? {
        let Ok(resource) = resource_of(&value) else {
            continue;
        };
        let selection = client
            .selection(Kind::RateLimit, resource.mesh(), resource.name())
            .await?;
        rate_limits.push((resource, selection));
    }
    let mut effective = Vec::new();
    for dp in &status.dataplanes {
        if dataplane.is_some_and(|(m, n)| dp.mesh != m || dp.name != n) {
            continue;
        }
        match client.dataplane_limits(&dp.mesh, &dp.name).await {
            Ok(meshlimit_control_plane_client::wire::StreamEvent::Limits {
                limits: Some(limits),
                ..
            }) => effective.push(limits),
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e),
        }
    }
    let kernel = match client
        .get_json::<meshlimit_control_plane_client::wire::KernelEvent>("/kernel-limits")
        .await?
    {
        meshlimit_control_plane_client::wire::StreamEvent::Limits { limits, .. } => {
            limits.unwrap_or_default()
        }
        meshlimit_control_plane_client::wire::StreamEvent::Heartbeat { .. } => Vec::new(),
    };
    let mut dataplanes = Vec::new();
    for value in client.list(Kind::Dataplane, None).await? {
        if let Ok(Resource::Dataplane(dp)) = resource_of(&value) {
            dataplanes.push(dp);
        }
    }
    Ok(Facts {
        status,
        policies,
        rate_limits,
        effective,
        kernel,
        dataplanes,
    })
}

#[derive(Default)]
struct Report {
    lines: Vec<String>,
    problems: usize,
}

impl Report {
    fn ok(&mut self, what: String) {
        self.lines.push(format!("[ok]      {what}"));
    }

    /// Worth knowing, not wrong: never changes the exit code.
    fn info(&mut self, what: String, hint: String) {
        self.lines
            .push(format!("[info]    {what}\n          {hint}"));
    }

    fn problem(&mut self, what: String, fix: String) {
        self.problems += 1;
        self.lines
            .push(format!("[problem] {what}\n          fix: {fix}"));
    }
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<ExitCode> {
    let Topic::RateLimit = args.topic;
    let client = client(ctx)?;
    let focus = args.dataplane.as_deref().map(|n| (args.mesh.as_str(), n));
    let facts = block_on(gather(&client, focus))?.map_err(explain)?;
    if let Some((mesh, name)) = focus
        && !facts
            .status
            .dataplanes
            .iter()
            .any(|d| d.mesh == mesh && d.name == name)
    {
        anyhow::bail!("no Dataplane {mesh}/{name} is stored or connected");
    }
    let mut report = Report::default();
    report.ok(format!(
        "control plane {} reachable at store version {}: {} MeshRateLimit(s), {} RateLimit(s), {} data plane(s)",
        client.base(),
        facts.status.version,
        facts.policies.len(),
        facts.rate_limits.len(),
        facts.status.dataplanes.len()
    ));
    check_store(&facts, &mut report);
    check_selection(&facts, focus, &mut report);
    check_shadowing(&facts, &mut report);
    check_not_enforced(&facts, focus, &mut report);
    check_traffic(&facts, focus, &mut report);
    check_global(&facts, focus, &mut report);
    check_kernel(&facts, &mut report);
    let xds = super::diagnose_xds::fetch(&client)?;
    let envoys = super::diagnose_xds::connected_nodes(xds.as_ref());
    check_connections(&facts, focus, &envoys, &client, &mut report);
    for (what, fix) in super::diagnose_xds::check(xds.as_ref(), focus) {
        match fix {
            None => report.ok(what),
            Some(fix) => report.problem(what, fix),
        }
    }
    for line in &report.lines {
        println!("{line}");
    }
    println!();
    if report.problems == 0 {
        println!("No problem found.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} problem(s) found.", report.problems);
        Ok(ExitCode::from(1))
    }
}

/// A store that refuses writes (a full disk, say) keeps serving what it holds, but no apply
/// can change it.
fn check_store(facts: &Facts, report: &mut Report) {
    let store = &facts.status.store;
    if !store.writable {
        report.problem(
            format!(
                "the store refuses writes: {} ({} failed write(s) since the control plane \
                 started); the limits it holds are still enforced",
                store.error.as_deref().unwrap_or("a write failed"),
                store.write_errors
            ),
            "free space on the store's disk (or fix the I/O error in the control plane's \
             log); the next write reopens the store, no restart needed"
                .to_string(),
        );
    }
}

/// Inbounds in state `Ignored` and zone-proxy listeners are accepted and never enforced:
/// information, as Kuma leaves the first alone and meshlimit has no zone proxy.
fn check_not_enforced(facts: &Facts, focus: Option<(&str, &str)>, report: &mut Report) {
    for dp in &facts.dataplanes {
        if focus.is_some_and(|(m, n)| dp.mesh != m || dp.name != n) {
            continue;
        }
        for note in dp.not_enforced() {
            report.info(
                format!("Dataplane {}/{}: {note}", dp.mesh, dp.name),
                "accepted as Kuma accepts it, and limited by nothing: no change is needed".into(),
            );
        }
    }
}

fn check_selection(facts: &Facts, focus: Option<(&str, &str)>, report: &mut Report) {
    for (policy, selection) in &facts.policies {
        if focus.is_some_and(|(mesh, _)| policy.mesh() != mesh) {
            continue;
        }
        let inbounds: usize = selection.dataplanes.iter().map(|d| d.inbounds.len()).sum();
        if inbounds == 0 {
            let target = match policy {
                Resource::MeshRateLimit(m) => m.spec.target_ref.as_ref(),
                _ => None,
            };
            report.problem(
                format!(
                    "MeshRateLimit {}/{} selects no dataplane inbound (targetRef {})",
                    policy.mesh(),
                    policy.name(),
                    target
                        .and_then(|t| serde_json::to_string(t).ok())
                        .unwrap_or_else(|| "Mesh".to_string())
                ),
                "match spec.targetRef to a Dataplane's name, labels, tags or kuma.io/service \
                 (see `meshlimit get dp -A -o yaml`), or delete the policy"
                    .to_string(),
            );
        } else if focus.is_none() {
            report.ok(format!(
                "MeshRateLimit {}/{} selects {inbounds} inbound(s)",
                policy.mesh(),
                policy.name()
            ));
        }
    }
    if focus.is_none() {
        for (limit, selection) in &facts.rate_limits {
            if selection.kernel.is_empty() {
                report.problem(
                    format!("RateLimit {} resolves to no destination", limit.name()),
                    "name in spec.service(s) a service that some Dataplane inbound carries as \
                     kuma.io/service, or apply that Dataplane"
                        .to_string(),
                );
            } else {
                report.ok(format!(
                    "RateLimit {} resolves to {} kernel destination(s)",
                    limit.name(),
                    selection.kernel.len()
                ));
            }
        }
    }
}

/// The rates a policy sets for one protocol, in any of its confs.
fn policy_rates(policy: &Resource, protocol: Protocol) -> Vec<Rate> {
    let Resource::MeshRateLimit(m) = policy else {
        return Vec::new();
    };
    let spec = &m.spec;
    spec.rules
        .iter()
        .map(|r| &r.default)
        .chain(spec.from.iter().map(|f| &f.default))
        .chain(spec.to.iter().map(|t| &t.default))
        .filter_map(|conf| match protocol {
            Protocol::Http => conf.local.http.as_ref()?.request_rate,
            Protocol::Tcp => conf.local.tcp.as_ref()?.connection_rate,
        })
        .collect()
}

fn check_shadowing(facts: &Facts, report: &mut Report) {
    let mut shadowed = 0;
    for dp in &facts.effective {
        for inbound in &dp.inbounds {
            if inbound.policies.len() < 2 {
                continue;
            }
            let winner = inbound.policies.last().cloned().unwrap_or_default();
            for name in &inbound.policies[..inbound.policies.len() - 1] {
                let Some((policy, _)) = facts
                    .policies
                    .iter()
                    .find(|(p, _)| p.mesh() == dp.mesh && p.name() == name)
                else {
                    continue;
                };
                for (protocol, effective) in [
                    (
                        Protocol::Http,
                        inbound.http.as_ref().map(|h| h.request_rate),
                    ),
                    (
                        Protocol::Tcp,
                        inbound.tcp.as_ref().map(|t| t.connection_rate),
                    ),
                ] {
                    let own = policy_rates(policy, protocol);
                    let protocol = match protocol {
                        Protocol::Http => "http",
                        Protocol::Tcp => "tcp",
                    };
                    if own.is_empty() || effective.is_some_and(|e| own.contains(&e)) {
                        continue;
                    }
                    // Kuma's merging: the more specific policy is meant to win. Worth showing
                    // (it explains a limit that seems ignored), not a problem.
                    shadowed += 1;
                    report.info(
                        format!(
                            "{}/{} inbound {}: the {protocol} limit of MeshRateLimit {name} ({}) \
                             is shadowed; the effective limit is {} (more specific: {winner})",
                            dp.mesh,
                            dp.dataplane,
                            inbound.port,
                            own.iter().map(rate_text).collect::<Vec<_>>().join(","),
                            effective
                                .map_or_else(|| "none (disabled)".to_string(), |r| rate_text(&r)),
                        ),
                        format!(
                            "intended if {winner} is meant to override it here; if {name} should \
                             apply, narrow the targetRef of {winner} or remove its {protocol} limit"
                        ),
                    );
                }
            }
        }
    }
    if shadowed == 0 {
        report.ok("no policy's limit is shadowed by a more specific one".to_string());
    }
}

fn rate_text(rate: &Rate) -> String {
    super::describe::rate_text(rate)
}

fn rate_per_second(rate: &Rate) -> f64 {
    let secs = rate.interval().as_secs_f64();
    if secs > 0.0 {
        f64::from(rate.num().get()) / secs
    } else {
        0.0
    }
}

fn check_traffic(facts: &Facts, focus: Option<(&str, &str)>, report: &mut Report) {
    let mut tripping = 0;
    let mut measured = 0;
    for dp in &facts.status.dataplanes {
        if focus.is_some_and(|(m, n)| dp.mesh != m || dp.name != n) {
            continue;
        }
        let limits = facts
            .effective
            .iter()
            .find(|l| l.mesh == dp.mesh && l.dataplane == dp.name);
        for inbound in &dp.inbounds {
            measured += 1;
            let stats = &inbound.stats;
            if stats.rate_per_second <= 0.0 {
                continue;
            }
            let share = stats.limited_per_second / stats.rate_per_second;
            if share < CONSTANT_REJECTION {
                continue;
            }
            tripping += 1;
            let limit = limits
                .and_then(|l| l.inbounds.iter().find(|i| i.port == inbound.port))
                .and_then(|i| match inbound.protocol.as_str() {
                    "http" => i.http.as_ref().map(|h| h.request_rate),
                    _ => i.tcp.as_ref().map(|t| t.connection_rate),
                });
            report.problem(
                format!(
                    "{}/{} inbound {} ({}): {} offered against a limit of {}; {:.0}% rejected over the last minute",
                    dp.mesh,
                    dp.name,
                    inbound.port,
                    inbound.protocol,
                    per_second(stats.rate_per_second),
                    limit.map_or_else(|| "?".to_string(), |r| format!(
                        "{} ({})",
                        rate_text(&r),
                        per_second(rate_per_second(&r))
                    )),
                    share * 100.0
                ),
                "raise the rate of the policy that sets it (see POLICIES in `meshlimit describe dp`), \
                 or add instances: limits are per instance"
                    .to_string(),
            );
        }
    }
    if tripping == 0 {
        if measured == 0 {
            report.ok("no traffic reported yet, so no limit trips constantly".to_string());
        } else {
            report.ok(format!(
                "recent traffic trips no limit constantly ({measured} inbound limit(s) measured)"
            ));
        }
    }
}

/// Global limits (`MeshGlobalRateLimit`) whose shared store failed checks in the last minute,
/// with what the failure mode decided for them.
fn check_global(facts: &Facts, focus: Option<(&str, &str)>, report: &mut Report) {
    let mut healthy = 0;
    let mut earlier = 0;
    for dp in &facts.status.dataplanes {
        if focus.is_some_and(|(m, n)| dp.mesh != m || dp.name != n) {
            continue;
        }
        for inbound in &dp.inbounds {
            let Some(global) = &inbound.global else {
                continue;
            };
            let counters = &global.counters;
            if global.store_errors_last_minute == 0 {
                healthy += 1;
                earlier += counters.store_errors;
                continue;
            }
            report.problem(
                format!(
                    "{}/{} inbound {}: {} check(s) of its global limit failed in the shared store \
                     over the last minute ({} since start; decided by the failure mode: {} \
                     admitted (open), {} rejected (closed), {} by the local share)",
                    dp.mesh,
                    dp.name,
                    inbound.port,
                    global.store_errors_last_minute,
                    counters.store_errors,
                    counters.fallbacks_open,
                    counters.fallbacks_closed,
                    counters.fallbacks_local_share,
                ),
                "check that the data plane reaches Redis (its --redis URL) and that Redis answers \
                 within the policy's backend timeout; the data plane's /metrics counts each failure \
                 in meshlimit_global_store_errors_total"
                    .to_string(),
            );
        }
    }
    if healthy > 0 {
        let before = if earlier > 0 {
            format!(" ({earlier} failed check(s) earlier)")
        } else {
            String::new()
        };
        report.ok(format!(
            "global limits on {healthy} inbound(s): no check of a shared store failed in the last minute{before}"
        ));
    }
}

fn check_kernel(facts: &Facts, report: &mut Report) {
    if facts.kernel.is_empty() {
        report.ok("no kernel limits, so no kernel agent is needed".to_string());
        return;
    }
    let attached: Vec<&str> = facts
        .status
        .agents
        .iter()
        .filter(|a| a.connected && a.attached)
        .map(|a| a.name.as_str())
        .collect();
    let off: Vec<(&str, &str)> = facts
        .status
        .agents
        .iter()
        .filter(|a| a.connected && !a.attached)
        .filter_map(|a| Some((a.name.as_str(), a.disabled.as_deref()?)))
        .collect();
    for (name, reason) in &off {
        report.info(
            format!(
                "{} kernel limit(s) not enforced on {name}: the kernel limiter is off there on \
                 purpose ({reason})",
                facts.kernel.len()
            ),
            "to enforce them there, run it without --no-kernel as root (or run \
             `meshlimit agent --cp URL` on that host)"
                .to_string(),
        );
    }
    if attached.is_empty() && !off.is_empty() {
        // The operator's choice, said above; nothing is broken.
    } else if attached.is_empty() {
        report.problem(
            format!(
                "{} kernel limit(s) but no kernel agent is connected with its programs attached",
                facts.kernel.len()
            ),
            "run `meshlimit agent --cp URL` as root on every host with clients to limit; check \
             its log for a failed attach (cgroup v2 and BPF support are needed)"
                .to_string(),
        );
    } else {
        report.ok(format!("kernel agent(s) attached: {}", attached.join(", ")));
    }
    for agent in &facts.status.agents {
        if agent.connected
            && agent
                .acknowledged_version
                .is_some_and(|v| v < facts.status.version)
        {
            report.problem(
                format!(
                    "kernel agent {} enforces store version {}, the store is at {}",
                    agent.name,
                    agent.acknowledged_version.unwrap_or_default(),
                    facts.status.version
                ),
                "check the agent's log for errors applying limits".to_string(),
            );
        }
    }
}

fn check_connections(
    facts: &Facts,
    focus: Option<(&str, &str)>,
    envoys: &[String],
    client: &Client,
    report: &mut Report,
) {
    for dp in &facts.status.dataplanes {
        if focus.is_some_and(|(m, n)| dp.mesh != m || dp.name != n) {
            continue;
        }
        // A Dataplane served by an Envoy sidecar follows over xDS, not the limits stream: the
        // xDS check below judges it.
        if !dp.connected && envoys.contains(&meshlimit_xds::node_id(&dp.mesh, &dp.name)) {
            report.ok(format!(
                "data plane {}/{} is an Envoy sidecar connected over xDS",
                dp.mesh, dp.name
            ));
            continue;
        }
        let has_resource = facts
            .effective
            .iter()
            .any(|l| l.mesh == dp.mesh && l.dataplane == dp.name);
        if !dp.connected {
            let seen = dp.last_seen_seconds.map_or_else(
                || "never connected".to_string(),
                |s| format!("last seen {}s ago", s.round()),
            );
            report.problem(
                format!(
                    "data plane {}/{} is not connected ({seen})",
                    dp.mesh, dp.name
                ),
                format!(
                    "start `meshlimit --cp {} dataplane --mesh {} --name {}` for it, and check it \
                     can reach the control plane (and sends --token if one is required)",
                    client.base(),
                    dp.mesh,
                    dp.name
                ),
            );
            continue;
        }
        if !has_resource {
            report.problem(
                format!(
                    "data plane {}/{} is connected but no Dataplane resource has that name",
                    dp.mesh, dp.name
                ),
                "apply its Dataplane resource (networking.address and inbounds), or fix the \
                 --name/--mesh it was started with"
                    .to_string(),
            );
            continue;
        }
        match dp.acknowledged_version {
            Some(v) if v >= facts.status.version => report.ok(format!(
                "data plane {}/{} is connected and enforces the current store version {v}",
                dp.mesh, dp.name
            )),
            acknowledged => report.problem(
                format!(
                    "data plane {}/{} is connected but enforces store version {}, the store is at {}",
                    dp.mesh,
                    dp.name,
                    acknowledged.map_or_else(|| "none".to_string(), |v| v.to_string()),
                    facts.status.version
                ),
                "a healthy data plane catches up within a second: look at its output for errors \
                 applying the limits (an address it cannot bind, for one)"
                    .to_string(),
            ),
        }
    }
}
