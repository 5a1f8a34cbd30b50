//! Envoy resources for Kuma's MeshRateLimit plugin cases (`pkg/plugins/policies/meshratelimit/
//! plugin/v1alpha1/plugin_test.go`), written as policies, compared with golden files of ours
//! in `tests/golden/`. Kuma's own golden files are for its listener layout; ours keep its
//! substance: which routes, which filter state, which limits. `MESHLIMIT_BLESS=1` rewrites
//! them after a deliberate change.

use std::path::Path;

use meshlimit_policy::{ResourceSet, parse_documents};

const DATAPLANE: &str = "type: Dataplane
name: backend-1
networking:
  address: 127.0.0.1
  inbound:
    - port: 17777
      servicePort: 17778
      tags: {kuma.io/service: backend, kuma.io/protocol: http}
";

fn rendered(policy: &str) -> String {
    let parsed = parse_documents("case.yaml", &format!("{DATAPLANE}---\n{policy}"))
        .unwrap_or_else(|p| panic!("{p:#?}"));
    let set = ResourceSet::from_parsed(parsed).unwrap_or_else(|p| panic!("{p:#?}"));
    let limits = set
        .effective("default", "backend-1")
        .expect("the dataplane");
    meshlimit_xds::render_yaml(&limits)
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("MESHLIMIT_BLESS").is_some() {
        std::fs::write(&path, actual).expect("golden file written");
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (MESHLIMIT_BLESS=1 writes it)", path.display()));
    assert_eq!(actual, expected, "{} differs", path.display());
}

/// "inbound listener with catch-all and rules[].matches[].spiffeID": the catch-all limit on
/// the inbound's route, and in front of it a copy matching the client's SPIFFE ID by prefix
/// with that rule's limit (Kuma's input prefix ends in '/', which its validator refuses for a
/// SPIFFE ID; here it does not).
#[test]
fn inbound_matches_spiffeid_and_catchall() {
    let yaml = rendered(
        "type: MeshRateLimit
name: backend
spec:
  targetRef: {kind: MeshService, name: backend}
  rules:
    - default:
        local:
          http:
            requestRate: {num: 100, interval: 10s}
    - matches:
        - spiffeID: {type: Prefix, value: \"spiffe://default/ns/clients\"}
      default:
        local:
          http:
            requestRate: {num: 5, interval: 1s}
            onRateLimit: {status: 429}
",
    );
    golden("inbound_matches_spiffeid_and_catchall.yaml", &yaml);
}

/// SNI matches are for zone proxy listeners (Kuma's "zone egress listener with
/// rules[].matches[].sni"); on a sidecar inbound Kuma renders nothing for them, and neither
/// does meshlimit: only the catch-all limit is there.
#[test]
fn sni_matches_leave_a_sidecar_inbound_alone() {
    let with_sni = rendered(
        "type: MeshRateLimit
name: backend
spec:
  targetRef: {kind: MeshService, name: backend}
  rules:
    - default:
        local:
          http:
            requestRate: {num: 100, interval: 10s}
    - matches:
        - sni: {type: Exact, value: backend.mesh}
      default:
        local:
          http:
            requestRate: {num: 5, interval: 1s}
",
    );
    let without = rendered(
        "type: MeshRateLimit
name: backend
spec:
  targetRef: {kind: MeshService, name: backend}
  rules:
    - default:
        local:
          http:
            requestRate: {num: 100, interval: 10s}
",
    );
    assert_eq!(with_sni, without);
    assert!(!with_sni.contains("set_filter_state"), "{with_sni}");
}

/// Exact before Prefix, with an SNI before without, longer prefixes first (Kuma's SortRules
/// and compareMatchedRouteSpecificity); each copy merges the catch-all and every match covering
/// it; a disabled client limit gets a config enabled for no request; a match with an SNI also
/// matches the requested server name.
#[test]
fn spiffeid_routes_are_ordered_and_merged_as_kuma_does() {
    let yaml = rendered(
        "type: MeshRateLimit
name: backend
spec:
  targetRef: {kind: MeshService, name: backend}
  rules:
    - default:
        local:
          http:
            requestRate: {num: 100, interval: 10s}
            onRateLimit: {status: 503, headers: {set: [{name: x-limited, value: \"yes\"}]}}
    - matches:
        - spiffeID: {type: Prefix, value: \"spiffe://default/ns\"}
      default:
        local:
          http:
            requestRate: {num: 7, interval: 1s}
    - matches:
        - spiffeID: {type: Exact, value: \"spiffe://default/ns/clients/sa/a\"}
        - spiffeID: {type: Prefix, value: \"spiffe://default/ns/clients\"}
      default:
        local:
          http:
            onRateLimit: {status: 429}
    - matches:
        - spiffeID: {type: Exact, value: \"spiffe://default/ns/clients/sa/b\"}
      default:
        local:
          http: {disabled: true}
    - matches:
        - spiffeID: {type: Prefix, value: \"spiffe://default/ns\"}
          sni: {type: Exact, value: backend.mesh}
      default:
        local:
          http:
            requestRate: {num: 9, interval: 1s}
",
    );
    golden("spiffeid_routes_ordered_and_merged.yaml", &yaml);
}
