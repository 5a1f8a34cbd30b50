//! A resource serializes back to the form it was written in, and that text parses to the
//! same resource (YAML and JSON alike).

use meshlimit_policy::{Resource, load_paths, parse_documents};

fn all_examples() -> Vec<Resource> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut resources = load_paths(&[format!("{root}/tests/fixtures/seeds")])
        .expect("seeds")
        .resources;
    resources.extend(
        load_paths(&[format!("{root}/../../examples/policies")])
            .expect("examples")
            .resources,
    );
    resources.extend(
        parse_documents(
            "extra.yaml",
            r#"apiVersion: kuma.io/v1alpha1
kind: MeshRateLimit
metadata:
  name: k8s-form
  namespace: kuma-demo
  labels:
    kuma.io/mesh: default
spec:
  targetRef:
    kind: Dataplane
    labels: {app: web}
    sectionName: http
  rules:
    - matches:
        - spiffeID: {type: Prefix, value: "spiffe://default/ns/a"}
        - sni: {type: Exact, value: web.mesh}
        - spiffeID: {type: Exact, value: "spiffe://default/ns/b"}
          sni: {type: Exact, value: web.mesh}
      default:
        local:
          http:
            disabled: false
            onRateLimit:
              headers:
                add: [{name: retry-after, value: "1"}]
---
type: Dataplane
name: gw
networking:
  address: gw.local
  advertisedAddress: 203.0.113.9
  gateway: {type: BUILTIN, tags: {kuma.io/service: edge}}
  outbound:
    - port: 10001
      address: 127.0.0.1
      tags: {kuma.io/service: web}
---
type: Mesh
name: demo
labels: {team: platform}
"#,
        )
        .expect("valid")
        .resources,
    );
    resources
}

#[test]
fn yaml_round_trip() {
    let resources = all_examples();
    assert_eq!(resources.len(), 18);
    for r in &resources {
        let yaml = serde_yaml_ng::to_string(r).expect("serializes");
        let again =
            parse_documents("again.yaml", &yaml).unwrap_or_else(|p| panic!("{p:#?}\n{yaml}"));
        assert_eq!(again.resources, vec![r.clone()], "{yaml}");
    }
}

#[test]
fn json_round_trip() {
    for r in &all_examples() {
        let json = serde_json::to_string(r).expect("serializes");
        let again =
            parse_documents("again.json", &json).unwrap_or_else(|p| panic!("{p:#?}\n{json}"));
        assert_eq!(again.resources, vec![r.clone()], "{json}");
    }
}

#[test]
fn forms_are_kept() {
    let resources = all_examples();
    let yaml = |name: &str| {
        let r = resources
            .iter()
            .find(|r| r.name() == name)
            .expect("present");
        serde_yaml_ng::to_string(r).expect("serializes")
    };
    assert!(yaml("k8s-form").starts_with("apiVersion: kuma.io/v1alpha1\nkind: MeshRateLimit\nmetadata:\n  name: k8s-form\n  namespace: kuma-demo\n"));
    assert!(
        yaml("k8s-form").contains("- spiffeID:\n        type: Prefix"),
        "{}",
        yaml("k8s-form")
    );
    assert!(
        yaml("backend-v2")
            .starts_with("type: MeshRateLimit\nmesh: default\nname: backend-v2\nspec:\n")
    );
    assert!(yaml("example-rate-limit").contains("spec:\n  service: sample-service\n  rules:\n"));
    assert!(yaml("complex-rate-limit").contains("spec:\n  services:\n  - name: user-service\n"));
    assert_eq!(
        yaml("demo"),
        "type: Mesh\nname: demo\nlabels:\n  team: platform\n"
    );
}
