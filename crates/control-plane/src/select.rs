//! What a resource selects, for `describe` and `diagnose`: the effective limits it contributed
//! to, found from the `policies` each inbound records.

use meshlimit_policy::Resource;
use meshlimit_policy::effective::{DataplaneLimits, KernelLimit};

use crate::store_state::StoreState;

/// The dataplanes (with only the inbounds concerned) and kernel destinations `resource` selects.
pub fn selected(
    snapshot: &StoreState,
    resource: &Resource,
) -> (Vec<DataplaneLimits>, Vec<KernelLimit>) {
    match resource {
        Resource::MeshRateLimit(..) | Resource::MeshGlobalRateLimit(..) => {
            let global = matches!(resource, Resource::MeshGlobalRateLimit(..));
            let dataplanes = snapshot
                .effective
                .values()
                .filter(|dp| dp.mesh == resource.mesh())
                .filter_map(|dp| {
                    let inbounds: Vec<_> = dp
                        .inbounds
                        .iter()
                        .filter(|i| {
                            // A global limit records its contributors apart.
                            let policies = match (&i.global, global) {
                                (Some(g), true) => &g.policies,
                                (None, true) => return false,
                                (_, false) => &i.policies,
                            };
                            policies.iter().any(|p| p == resource.name())
                        })
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

/// The services a `RateLimit` names (`spec.service`, or `spec.services[].name`); nothing for
/// other kinds.
pub fn rate_limit_services(resource: &Resource) -> Vec<String> {
    match resource {
        Resource::RateLimit(rl) => rl.services.iter().map(|s| s.name.clone()).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Resource {
        crate::model::parse_one("test.yaml", text).expect("valid")
    }

    #[test]
    fn a_rate_limit_names_its_services_in_either_form() {
        let single = one("apiVersion: kmesh.net/v1alpha1
kind: RateLimit
metadata:
  name: one
spec:
  service: redis
  rules:
    - {maxTokens: 20, tokensPerFill: 2, fillInterval: 1000000000}
");
        assert_eq!(rate_limit_services(&single), ["redis"]);

        let listed = one("apiVersion: kmesh.net/v1alpha1
kind: RateLimit
metadata:
  name: many
spec:
  services:
    - name: redis
      rules:
        - {maxTokens: 20, tokensPerFill: 2, fillInterval: 1000000000}
    - name: postgres
      rules:
        - {maxTokens: 5, tokensPerFill: 1, fillInterval: 1000000000}
");
        assert_eq!(rate_limit_services(&listed), ["redis", "postgres"]);

        let mesh = one("type: Mesh\nname: demo\n");
        assert!(rate_limit_services(&mesh).is_empty());
    }
}
