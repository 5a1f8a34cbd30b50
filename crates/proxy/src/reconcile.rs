//! Applying one configuration, in phases: [`desired`] reads what it asks for, [`diff`]
//! compares that with the listeners running, and [`reconcile`] stops, re-plans and binds, then
//! publishes the result. The first two are pure; only the last touches sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meshlimit_policy::effective::{DataplaneLimits, InboundLimits};

use crate::inbound::{Counters, InboundKey};
use crate::listener::Listener;
use crate::plan::compile;
use crate::state::{ProxyProblem, Shared};

/// One inbound a configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wanted<'c> {
    pub address: IpAddr,
    pub limits: &'c InboundLimits,
}

/// What a configuration asks for, and what in it cannot be served as written.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Desired<'c> {
    pub inbounds: BTreeMap<InboundKey, Wanted<'c>>,
    /// In configuration order.
    pub problems: Vec<ProxyProblem>,
}

/// What to do to the running listeners, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes<'c> {
    /// Listeners whose inbound is gone or moved to another address.
    pub stop: Vec<InboundKey>,
    /// Listeners that stay, with their new limits.
    pub replan: Vec<(InboundKey, &'c InboundLimits)>,
    /// Inbounds without a listener: new, moved, or not bound last time.
    pub bind: Vec<(InboundKey, Wanted<'c>)>,
}

/// Phase 1: the inbounds a configuration asks for, keyed by mesh, Dataplane and port. A
/// Dataplane whose address is not an IP is skipped; of an inbound declared twice, the first
/// declaration counts.
pub(crate) fn desired(config: &[DataplaneLimits]) -> Desired<'_> {
    let mut desired = Desired::default();
    for dataplane in config {
        let Ok(address) = dataplane.address.parse::<IpAddr>() else {
            desired.problems.push(ProxyProblem::NotAnIp {
                mesh: dataplane.mesh.clone(),
                dataplane: dataplane.dataplane.clone(),
                address: dataplane.address.clone(),
            });
            continue;
        };
        for limits in &dataplane.inbounds {
            let key = InboundKey {
                mesh: dataplane.mesh.clone(),
                dataplane: dataplane.dataplane.clone(),
                port: limits.port,
            };
            if desired.inbounds.contains_key(&key) {
                desired.problems.push(ProxyProblem::DeclaredTwice { key });
                continue;
            }
            desired.inbounds.insert(key, Wanted { address, limits });
        }
    }
    desired
}

/// Phase 2: from the listeners running (with the IP each is bound to) to the ones wanted. A
/// listener is kept only if its inbound is still wanted on the same IP; everything else
/// wanted is bound anew.
pub(crate) fn diff<'c>(
    running: &BTreeMap<InboundKey, IpAddr>,
    desired: &Desired<'c>,
) -> Changes<'c> {
    let mut changes = Changes::default();
    let mut kept = BTreeSet::new();
    for (key, address) in running {
        match desired.inbounds.get(key) {
            Some(wanted) if wanted.address == *address => {
                kept.insert(key);
            }
            _ => changes.stop.push(key.clone()),
        }
    }
    for (key, wanted) in &desired.inbounds {
        if kept.contains(key) {
            changes.replan.push((key.clone(), wanted.limits));
        } else {
            changes.bind.push((key.clone(), *wanted));
        }
    }
    changes
}

/// Applies one configuration to the running listeners and publishes what came of it. Returns
/// whether some inbound could not be bound (the caller tries again later).
pub(crate) async fn reconcile(
    shared: &Shared,
    running: &mut BTreeMap<InboundKey, Listener>,
    config: Vec<DataplaneLimits>,
    version: Option<u64>,
) -> bool {
    let now_ns = shared.clock.now_ns();
    let desired = desired(&config);
    let addresses = running
        .iter()
        .map(|(key, listener)| (key.clone(), listener.inbound.local_addr.ip()))
        .collect();
    let changes = diff(&addresses, &desired);
    let mut problems = desired.problems;

    // Stop before binding, so that a port can move between inbounds in one change.
    stop(running, changes.stop).await;
    replan(running, changes.replan, now_ns);
    let unbound = bind(shared, running, changes.bind, now_ns).await;
    let any_unbound = !unbound.is_empty();
    problems.extend(unbound);

    publish(shared, running, config, version, problems);
    any_unbound
}

async fn stop(running: &mut BTreeMap<InboundKey, Listener>, keys: Vec<InboundKey>) {
    for key in keys {
        if let Some(listener) = running.remove(&key) {
            let address = listener.inbound.local_addr;
            listener.stop().await;
            tracing::info!(inbound = %key, %address, "stopped listening");
        }
    }
}

/// New plans start from the previous ones, so that buckets keep their tokens.
fn replan(
    running: &BTreeMap<InboundKey, Listener>,
    replan: Vec<(InboundKey, &InboundLimits)>,
    now_ns: u64,
) {
    for (key, limits) in replan {
        if let Some(listener) = running.get(&key) {
            let previous = listener.inbound.plan.load();
            let plan = compile(limits, Some(&previous), now_ns, &listener.inbound.counters);
            listener.inbound.plan.store(Arc::new(plan));
        }
    }
}

/// Returns a problem for each inbound that could not be bound.
async fn bind(
    shared: &Shared,
    running: &mut BTreeMap<InboundKey, Listener>,
    bind: Vec<(InboundKey, Wanted<'_>)>,
    now_ns: u64,
) -> Vec<ProxyProblem> {
    let mut problems = Vec::new();
    for (key, wanted) in bind {
        let counters = Counters::default();
        let plan = compile(wanted.limits, None, now_ns, &counters);
        match Listener::start(shared, key.clone(), wanted.address, plan, counters).await {
            Ok(listener) => {
                running.insert(key, listener);
            }
            Err(error) => {
                let address = SocketAddr::from((wanted.address, key.port));
                problems.push(ProxyProblem::cannot_listen(key, address, &error));
            }
        }
    }
    problems
}

/// What the admin endpoint, [`crate::ProxyStats`] and status watchers see.
fn publish(
    shared: &Shared,
    running: &BTreeMap<InboundKey, Listener>,
    config: Vec<DataplaneLimits>,
    version: Option<u64>,
    problems: Vec<ProxyProblem>,
) {
    for problem in &problems {
        tracing::error!("{problem}");
    }
    let listeners = running.values().map(Listener::status).collect();
    shared.inbounds.store(Arc::new(
        running
            .values()
            .map(|listener| Arc::clone(&listener.inbound))
            .collect(),
    ));
    shared.config.store(Arc::new(config));
    shared.status.send_modify(|status| {
        status.generation += 1;
        status.version = version;
        status.listeners = listeners;
        status.problems = problems;
    });
}

#[cfg(test)]
mod tests {
    use meshlimit_policy::effective::Protocol;

    use super::*;

    fn inbound(port: u16) -> InboundLimits {
        InboundLimits {
            port,
            service_port: port + 1,
            service: "backend".into(),
            protocol: Protocol::Http,
            http: None,
            tcp: None,
            policies: Vec::new(),
            global: None,
            sources: Vec::new(),
        }
    }

    fn dataplane(name: &str, address: &str, inbounds: Vec<InboundLimits>) -> DataplaneLimits {
        DataplaneLimits {
            dataplane: name.into(),
            mesh: "default".into(),
            address: address.into(),
            inbounds,
            kernel: Vec::new(),
        }
    }

    fn key(dataplane: &str, port: u16) -> InboundKey {
        InboundKey {
            mesh: "default".into(),
            dataplane: dataplane.into(),
            port,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    fn keys<'a>(keys: impl IntoIterator<Item = &'a InboundKey>) -> Vec<String> {
        keys.into_iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_inbound_of_every_dataplane_is_wanted_at_its_address() {
        let config = [
            dataplane("web", "10.0.0.1", vec![inbound(80), inbound(443)]),
            dataplane("db", "::1", vec![inbound(80)]),
        ];
        let desired = desired(&config);
        assert_eq!(desired.problems, []);
        assert_eq!(
            keys(desired.inbounds.keys()),
            ["default/db:80", "default/web:80", "default/web:443"]
        );
        let web = desired.inbounds[&key("web", 443)];
        assert_eq!(web.address, ip("10.0.0.1"));
        assert_eq!(web.limits, &config[0].inbounds[1]);
        assert_eq!(desired.inbounds[&key("db", 80)].address, ip("::1"));
    }

    #[test]
    fn a_dataplane_without_an_ip_is_skipped_and_the_others_are_kept() {
        let config = [
            dataplane("web", "web.local", vec![inbound(80)]),
            dataplane("db", "10.0.0.2", vec![inbound(5432)]),
        ];
        let desired = desired(&config);
        assert_eq!(keys(desired.inbounds.keys()), ["default/db:5432"]);
        assert_eq!(
            desired.problems,
            [ProxyProblem::NotAnIp {
                mesh: "default".into(),
                dataplane: "web".into(),
                address: "web.local".into(),
            }]
        );
    }

    #[test]
    fn the_first_of_two_declarations_is_served() {
        let mut second = inbound(80);
        second.service_port = 9999;
        let config = [
            dataplane("web", "10.0.0.1", vec![inbound(80), second]),
            dataplane("web", "10.0.0.9", vec![inbound(80)]),
        ];
        let desired = desired(&config);
        let wanted = desired.inbounds[&key("web", 80)];
        assert_eq!(wanted.address, ip("10.0.0.1"));
        assert_eq!(wanted.limits.service_port, 81);
        assert_eq!(
            desired.problems,
            [
                ProxyProblem::DeclaredTwice {
                    key: key("web", 80)
                },
                ProxyProblem::DeclaredTwice {
                    key: key("web", 80)
                },
            ]
        );
    }

    #[test]
    fn the_same_port_in_another_mesh_is_another_inbound() {
        let mut other = dataplane("web", "10.0.0.1", vec![inbound(80)]);
        other.mesh = "other".into();
        let config = [dataplane("web", "10.0.0.1", vec![inbound(80)]), other];
        let desired = desired(&config);
        assert_eq!(desired.problems, []);
        assert_eq!(
            keys(desired.inbounds.keys()),
            ["default/web:80", "other/web:80"]
        );
    }

    #[test]
    fn nothing_running_binds_everything() {
        let config = [dataplane("web", "10.0.0.1", vec![inbound(80), inbound(81)])];
        let desired = desired(&config);
        let changes = diff(&BTreeMap::new(), &desired);
        assert_eq!(changes.stop, []);
        assert_eq!(changes.replan, []);
        assert_eq!(
            changes.bind,
            [
                (key("web", 80), desired.inbounds[&key("web", 80)]),
                (key("web", 81), desired.inbounds[&key("web", 81)]),
            ]
        );
    }

    #[test]
    fn kept_inbounds_are_replanned_and_gone_ones_stopped() {
        let config = [dataplane("web", "10.0.0.1", vec![inbound(80), inbound(82)])];
        let desired = desired(&config);
        let running = BTreeMap::from([
            (key("web", 80), ip("10.0.0.1")),
            (key("web", 81), ip("10.0.0.1")),
        ]);
        let changes = diff(&running, &desired);
        assert_eq!(keys(&changes.stop), ["default/web:81"]);
        assert_eq!(changes.replan, [(key("web", 80), &config[0].inbounds[0])]);
        assert_eq!(
            keys(changes.bind.iter().map(|(k, _)| k)),
            ["default/web:82"]
        );
    }

    #[test]
    fn an_inbound_moved_to_another_address_is_stopped_then_bound() {
        let config = [dataplane("web", "10.0.0.2", vec![inbound(80)])];
        let desired = desired(&config);
        let running = BTreeMap::from([(key("web", 80), ip("10.0.0.1"))]);
        let changes = diff(&running, &desired);
        assert_eq!(keys(&changes.stop), ["default/web:80"]);
        assert_eq!(changes.replan, []);
        assert_eq!(
            changes.bind,
            [(key("web", 80), desired.inbounds[&key("web", 80)])]
        );
    }

    #[test]
    fn a_port_handed_to_another_dataplane_is_freed_and_bound_in_one_change() {
        let config = [dataplane("api", "10.0.0.1", vec![inbound(80)])];
        let desired = desired(&config);
        let running = BTreeMap::from([(key("web", 80), ip("10.0.0.1"))]);
        let changes = diff(&running, &desired);
        assert_eq!(keys(&changes.stop), ["default/web:80"]);
        assert_eq!(
            keys(changes.bind.iter().map(|(k, _)| k)),
            ["default/api:80"]
        );
    }

    #[test]
    fn an_empty_configuration_stops_everything() {
        let running = BTreeMap::from([
            (key("web", 80), ip("10.0.0.1")),
            (key("db", 5432), ip("10.0.0.2")),
        ]);
        let changes = diff(&running, &desired(&[]));
        assert_eq!(keys(&changes.stop), ["default/db:5432", "default/web:80"]);
        assert_eq!(changes.replan, []);
        assert_eq!(changes.bind, []);
    }
}
