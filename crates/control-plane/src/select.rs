//! What a resource selects, for `describe` and `diagnose`: the effective limits it contributed
//! to, found from the `policies` each inbound records.

use meshlimit_policy::Resource;
use meshlimit_policy::effective::{DataplaneLimits, KernelLimit};

use crate::state::Snapshot;

/// The dataplanes (with only the inbounds concerned) and kernel destinations `resource` selects.
pub fn selected(
    snapshot: &Snapshot,
    resource: &Resource,
) -> (Vec<DataplaneLimits>, Vec<KernelLimit>) {
    match resource {
        Resource::MeshRateLimit(..) => {
            let dataplanes = snapshot
                .effective
                .values()
                .filter(|dp| dp.mesh == resource.mesh())
                .filter_map(|dp| {
                    let inbounds: Vec<_> = dp
                        .inbounds
                        .iter()
                        .filter(|i| i.policies.iter().any(|p| p == resource.name()))
                        .cloned()
                        .collect();
                    (!inbounds.is_empty()).then(|| DataplaneLimits {
                        inbounds,
                        ..dp.clone()
                    })
                })
                .collect();
            (dataplanes, Vec::new())
        }
        Resource::RateLimit(..) => {
            let services = rate_limit_services(resource);
            let kernel = snapshot
                .kernel
                .iter()
                .filter(|k| services.contains(&k.service))
                .cloned()
                .collect();
            (Vec::new(), kernel)
        }
        Resource::Dataplane(..) => (
            snapshot
                .effective(resource.mesh(), resource.name())
                .cloned()
                .into_iter()
                .collect(),
            Vec::new(),
        ),
        Resource::Mesh(..) => (
            snapshot
                .effective
                .values()
                .filter(|dp| dp.mesh == resource.name())
                .cloned()
                .collect(),
            Vec::new(),
        ),
    }
}

/// The services a `RateLimit` names (`spec.service`, or `spec.services[].name`), read from its
/// serialized form so this crate does not depend on the policy crate's internals.
pub fn rate_limit_services(resource: &Resource) -> Vec<String> {
    let Ok(value) = serde_json::to_value(resource) else {
        return Vec::new();
    };
    let spec = &value["spec"];
    let mut services = Vec::new();
    if let Some(service) = spec["service"].as_str() {
        services.push(service.to_string());
    }
    if let Some(list) = spec["services"].as_array() {
        services.extend(
            list.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_string)),
        );
    }
    services
}
