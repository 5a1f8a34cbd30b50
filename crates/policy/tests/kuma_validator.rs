//! Kuma 2.14's own validator cases, one row each, named as upstream names them: the
//! MeshRateLimit validator (`pkg/plugins/policies/meshratelimit/api/v1alpha1/
//! validator_test.go`) and the generic targetRef validator (`pkg/core/resources/apis/mesh/
//! validators_test.go`, "TargetRef Validator"), each targetRef case placed where a
//! MeshRateLimit accepts the kinds the case allows. Inputs and expected violations are Kuma's;
//! where meshlimit deliberately differs the row says so.

use meshlimit_policy::parse_documents;

/// A universal-form MeshRateLimit around a spec written at column 0.
fn doc(spec: &str) -> String {
    let body: String = spec
        .trim_start_matches('\n')
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    format!("type: MeshRateLimit\nmesh: default\nname: p\nspec:\n{body}")
}

const FULL_FROM: &str = "
from:
  - targetRef:
      kind: Mesh
    default:
      local:
        http:
          requestRate:
            num: 100
            interval: 10s
        tcp:
          connectionRate:
            num: 100
            interval: 100ms";

/// "should pass validation": every entry is accepted.
#[test]
fn kuma_should_pass_validation() {
    let web = "targetRef:\n  kind: MeshService\n  name: web-frontend\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "full example",
            format!(
                "{web}from:\n  - targetRef:\n      kind: Mesh\n    default:\n      local:\n        http:\n          disabled: false\n          requestRate:\n            num: 100\n            interval: 10s\n          onRateLimit:\n            status: 123\n            headers:\n              add:\n              - name: \"test\"\n                value: \"123\"\n        tcp:\n          disabled: false\n          connectionRate:\n            num: 100\n            interval: 100ms"
            ),
        ),
        (
            "full example, only http",
            format!(
                "{web}from:\n  - targetRef:\n      kind: Mesh\n    default:\n      local:\n        http:\n          requestRate:\n            num: 100\n            interval: 10s\n          onRateLimit:\n            status: 123\n            headers:\n              set:\n              - name: \"test\"\n                value: \"123\""
            ),
        ),
        (
            "full example, only tcp",
            format!(
                "{web}from:\n  - targetRef:\n      kind: Mesh\n    default:\n      local:\n        tcp:\n          disabled: false\n          connectionRate:\n            num: 100\n            interval: 100ms"
            ),
        ),
        ("minimal example", format!("{web}{FULL_FROM}")),
        (
            "disable rate limit",
            format!(
                "{web}from:\n  - targetRef:\n      kind: Mesh\n    default:\n      local:\n        http:\n          disabled: true\n        tcp:\n          disabled: true"
            ),
        ),
        (
            "gateway example",
            format!(
                "targetRef:\n  kind: MeshGateway\n  name: edge\n{}",
                FULL_FROM.replace("from:", "to:")
            ),
        ),
        (
            "gateway example and targeting MeshHTTPRoute",
            format!(
                "targetRef:\n  kind: MeshHTTPRoute\n  name: http-route-1\n{}",
                FULL_FROM.replace("from:", "to:")
            ),
        ),
        (
            "rules example with sni match",
            "targetRef:\n  kind: Dataplane\nrules:\n  - matches:\n      - sni:\n          type: Exact\n          value: backend.mesh\n    default:\n      local:\n        http:\n          requestRate:\n            num: 100\n            interval: 10s".into(),
        ),
    ];
    let mut failed = Vec::new();
    for (name, spec) in &cases {
        if let Err(problems) = parse_documents("t.yaml", &doc(spec)) {
            failed.push(format!("{name}: {problems:?}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Upstream's entry name, the spec, and the violations (field path, message) expected.
type Case = (&'static str, String, Vec<(&'static str, &'static str)>);

/// "should validate all fields and return as much individual errors as possible".
#[test]
fn kuma_should_validate_all_fields() {
    let web = "targetRef:\n  kind: MeshService\n  name: web-frontend\n";
    let cases: Vec<Case> = vec![
        (
            "unsupported kind in from selector",
            format!(
                "{web}from:\n  - targetRef:\n      kind: MeshGatewayRoute\n    default:\n      local:\n        http:\n          requestRate:\n            num: 10\n            interval: 10s"
            ),
            vec![(
                "spec.from[0].targetRef.kind",
                "value 'MeshGatewayRoute' is not supported",
            )],
        ),
        (
            "not allow invalid values",
            format!(
                "{web}from:\n- targetRef:\n    kind: Mesh\n  default:\n    local:\n      http:\n        requestRate:\n          num: 0\n          interval: 49ms\n      tcp:\n        connectionRate:\n          num: 0\n          interval: 49ms"
            ),
            vec![
                (
                    "spec.from[0].default.local.http.requestRate.num",
                    "must be greater than 0",
                ),
                (
                    "spec.from[0].default.local.http.requestRate.interval",
                    "must be greater than: 50ms",
                ),
                (
                    "spec.from[0].default.local.tcp.connectionRate.num",
                    "must be greater than 0",
                ),
                (
                    "spec.from[0].default.local.tcp.connectionRate.interval",
                    "must be greater than: 50ms",
                ),
            ],
        ),
        (
            "not allow from to be MeshService for tcp",
            format!(
                "{web}from:\n- targetRef:\n    kind: MeshService\n    name: backend\n  default:\n    local:\n      tcp:\n        connectionRate:\n          num: 100\n          interval: 500ms"
            ),
            vec![(
                "spec.from[0].targetRef.kind",
                "value 'MeshService' is not supported",
            )],
        ),
        (
            "not allow from to be MeshService when http and tcp set",
            format!(
                "{web}from:\n- targetRef:\n    kind: MeshService\n    name: backend\n  default:\n    local:\n      http:\n        requestRate:\n          num: 100\n          interval: 500ms\n      tcp:\n        connectionRate:\n          num: 100\n          interval: 500ms"
            ),
            vec![(
                "spec.from[0].targetRef.kind",
                "value 'MeshService' is not supported",
            )],
        ),
        (
            "not allow from to be MeshService",
            format!(
                "{web}from:\n- targetRef:\n    kind: MeshService\n    name: backend\n  default:\n    local:\n      http:\n        requestRate:\n          num: 100\n          interval: 500ms"
            ),
            vec![(
                "spec.from[0].targetRef.kind",
                "value 'MeshService' is not supported",
            )],
        ),
        (
            "empty default",
            format!("{web}from:\n- targetRef:\n    kind: Mesh\n  default: {{}}"),
            vec![("spec.from[0].default.local", "must be defined")],
        ),
        (
            "sectionName with outbound policy",
            "targetRef:\n  kind: Dataplane\n  sectionName: test\nto:\n- targetRef:\n    kind: Mesh\n  default: {}".into(),
            vec![
                (
                    "spec.targetRef.sectionName",
                    "can only be used with inbound policies",
                ),
                ("spec.to", "must not be defined"),
            ],
        ),
        (
            "neither tcp or http defined",
            format!("{web}from:\n- targetRef:\n    kind: Mesh\n  default:\n    local: {{}}"),
            vec![(
                "spec.from[0].default.local",
                "must have at least one defined: tcp, http",
            )],
        ),
        (
            "empty tcp",
            format!(
                "{web}from:\n- targetRef:\n    kind: Mesh\n  default:\n    local:\n      tcp: {{}}"
            ),
            vec![(
                "spec.from[0].default.local.tcp",
                "must have at least one defined: disabled, connectionRate",
            )],
        ),
        (
            "empty http",
            format!(
                "{web}from:\n- targetRef:\n    kind: Mesh\n  default:\n    local:\n      http: {{}}"
            ),
            vec![(
                "spec.from[0].default.local.http",
                "must have at least one defined: disabled, requestRate, onRateLimit",
            )],
        ),
        (
            "invalid gateway example",
            format!("targetRef:\n  kind: MeshGateway\n  name: edge\n{FULL_FROM}"),
            vec![(
                "spec.from",
                "must not be defined when the scope includes a Gateway, select only proxyType Sidecar or select only gateways and use spec.to",
            )],
        ),
        (
            "mixing from with rules",
            "targetRef:\n  kind: Mesh\nfrom:\n  - targetRef:\n      kind: Mesh\n    default:\n      local:\n        http:\n          requestRate:\n            num: 100\n            interval: 10s\nrules:\n  - default:\n      local:\n        http:\n          requestRate:\n            num: 100\n            interval: 10s".into(),
            vec![
                (
                    "spec",
                    "fields 'to' and 'from' must be empty when 'rules' is defined",
                ),
                ("spec.rules", "must not be defined"),
                (
                    "spec.from",
                    "must not be defined when the scope includes a Gateway, select only proxyType Sidecar or select only gateways and use spec.to",
                ),
            ],
        ),
        (
            "invalid gateway example when targeting MeshHTTPRoute",
            format!("targetRef:\n  kind: MeshHTTPRoute\n  name: http-route-1\n{FULL_FROM}"),
            vec![(
                "spec.from",
                "must not be defined when the scope includes a Gateway, select only proxyType Sidecar or select only gateways and use spec.to",
            )],
        ),
        (
            "spiffeID match with tcp rule",
            "targetRef:\n  kind: Dataplane\nrules:\n  - matches:\n      - spiffeID:\n          type: Exact\n          value: spiffe://default/client\n    default:\n      local:\n        tcp:\n          connectionRate:\n            num: 100\n            interval: 100ms".into(),
            vec![(
                "spec.rules[0].default.local.tcp",
                "can't be specified when matches contain spiffeID because this field cannot be conditioned on source identity",
            )],
        ),
        (
            "spiffeID match with unsupported type",
            "targetRef:\n  kind: Dataplane\nrules:\n  - matches:\n      - spiffeID:\n          type: Unknown\n          value: spiffe://default/client\n    default:\n      local:\n        http:\n          requestRate:\n            num: 100\n            interval: 10s".into(),
            vec![(
                "spec.rules[0].matches[0].spiffeID.type",
                "unrecognized type \"Unknown\", supported values are: Exact, Prefix",
            )],
        ),
    ];
    let mut failed = Vec::new();
    for (name, spec, want) in &cases {
        let got: Vec<(String, String)> = match parse_documents("t.yaml", &doc(spec)) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.into_iter().map(|p| (p.path, p.message)).collect(),
        };
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        if got != want {
            failed.push(format!("{name}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Where a generic targetRef case sits in a MeshRateLimit, given the kinds it allows.
#[derive(Clone, Copy)]
enum At {
    /// The top-level targetRef of a policy without a role label (Kuma's system role: every
    /// top-level kind, MeshGateway listener tags allowed), with no entries.
    Top,
    /// The same, with a `rules` entry: an inbound policy (Kuma's `IsInboundPolicy`).
    TopInbound,
    /// The top-level targetRef of a `kuma.io/policy-role: producer` policy: no gateway kinds.
    TopProducer,
    /// `from[0].targetRef` of a Dataplane-scoped policy: kind Mesh only.
    From,
}

/// The upstream entry, where it sits, the targetRef (YAML, column 0), and the violations
/// (Kuma's field path under `targetRef`, message); no violations: it must pass.
type RefCase = (
    &'static str,
    At,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

fn placed(at: At, target: &str) -> (String, String) {
    let indented: String = target
        .trim_matches('\n')
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    let entry = "- default:\n    local:\n      http:\n        disabled: true\n";
    match at {
        At::Top => (format!("targetRef:\n{indented}"), "spec.targetRef".into()),
        At::TopInbound => (
            format!("targetRef:\n{indented}rules:\n{entry}"),
            "spec.targetRef".into(),
        ),
        At::TopProducer => (format!("targetRef:\n{indented}"), "spec.targetRef".into()),
        At::From => {
            let nested: String = indented.lines().map(|l| format!("  {l}\n")).collect();
            (
                format!(
                    "targetRef:\n  kind: Dataplane\nfrom:\n- targetRef:\n{nested}  default:\n    local:\n      http:\n        disabled: true\n"
                ),
                "spec.from[0].targetRef".into(),
            )
        }
    }
}

/// "TargetRef Validator": "should pass validation with" and "should return as much
/// individual errors as possible with". Not translated, as no MeshRateLimit place allows what
/// they need: "Mesh when it's not supported" (every place takes Mesh), "MeshGateway and no
/// tags allowed" (where MeshGateway is allowed, listener tags are), and the two
/// MeshExternalService cases (no MeshRateLimit place takes that kind).
#[test]
fn kuma_target_ref_validator() {
    use At::*;
    let cases: Vec<RefCase> = vec![
        // should pass validation with
        ("Mesh", Top, "kind: Mesh", vec![]),
        (
            "MeshSubset with tags",
            Top,
            "kind: MeshSubset\ntags:\n  kuma.io/zone: us-east\n  validTagName: foo",
            vec![],
        ),
        ("MeshSubset without tags", Top, "kind: MeshSubset", vec![]),
        (
            "MeshService",
            Top,
            "kind: MeshService\nname: backend",
            vec![],
        ),
        ("Dataplane", Top, "kind: Dataplane", vec![]),
        (
            "Dataplane by name",
            Top,
            "kind: Dataplane\nname: backend-asb3210d",
            vec![],
        ),
        (
            "Dataplane by labels",
            Top,
            "kind: Dataplane\nlabels:\n  app: demo-app",
            vec![],
        ),
        (
            "Dataplane with sectionName",
            TopInbound,
            "kind: Dataplane\nname: backend-asb3210d\nsectionName: http-port",
            vec![],
        ),
        (
            "MeshGateway",
            Top,
            "kind: MeshGateway\nname: gateway1\ntags:\n  listener: one",
            vec![],
        ),
        (
            "MeshGateway with period",
            Top,
            "kind: MeshGateway\nname: gateway.namespace",
            vec![],
        ),
        (
            "MeshGateway with slash in tags",
            Top,
            "kind: MeshGateway\nname: gateway.namespace\ntags:\n  port: http/443",
            vec![],
        ),
        (
            "MeshHTTPRoute",
            Top,
            "kind: MeshHTTPRoute\nname: http-route1",
            vec![],
        ),
        (
            "MeshServiceSubset",
            Top,
            "kind: MeshServiceSubset\nname: backend\ntags:\n  version: v1",
            vec![],
        ),
        (
            "MeshServiceSubset without tags",
            Top,
            "kind: MeshServiceSubset\nname: backend",
            vec![],
        ),
        (
            "MeshServiceSubset with empty tags",
            Top,
            "kind: MeshServiceSubset\nname: backend\ntags: {}",
            vec![],
        ),
        (
            "MeshService with name and namespace",
            Top,
            "kind: MeshService\nname: backend\nnamespace: test-ns",
            vec![],
        ),
        (
            "MeshService with labels",
            Top,
            "kind: MeshService\nlabels:\n  kuma.io/zone: east",
            vec![],
        ),
        (
            "MeshService with name, namespace and sectionName",
            Top,
            "kind: MeshService\nname: backend\nnamespace: test-ns\nsectionName: http-port",
            vec![],
        ),
        // should return as much individual errors as possible with
        (
            "empty",
            Top,
            "{}",
            vec![("targetRef.kind", "must be defined")],
        ),
        (
            "Mesh with mesh and tags",
            Top,
            "kind: Mesh\nmesh: mesh-1\ntags:\n  tag1: value1",
            vec![
                ("targetRef.mesh", "must not be set with kind Mesh"),
                ("targetRef.tags", "must not be set with kind Mesh"),
            ],
        ),
        (
            "Mesh with name",
            Top,
            "kind: Mesh\nname: mesh-1",
            vec![(
                "targetRef.name",
                "using name with kind Mesh is not yet supported",
            )],
        ),
        (
            "MeshSubset when it's not supported",
            From,
            "kind: MeshSubset",
            vec![("targetRef.kind", "value 'MeshSubset' is not supported")],
        ),
        (
            "MeshSubset with name",
            Top,
            "kind: MeshSubset\nname: mesh-1",
            vec![("targetRef.name", "must not be set with kind MeshSubset")],
        ),
        (
            "MeshSubset with empty tag name",
            Top,
            "kind: MeshSubset\ntags:\n  \"\": value1",
            vec![("targetRef.tags", "tag name must be non-empty")],
        ),
        (
            "MeshSubset with invalid tag name",
            Top,
            "kind: MeshSubset\ntags:\n  invalidTag*: value1",
            vec![(
                "targetRef.tags[\"invalidTag*\"]",
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            )],
        ),
        (
            "MeshSubset with empty tag value",
            Top,
            "kind: MeshSubset\ntags:\n  tag1: \"\"",
            vec![("targetRef.tags[\"tag1\"]", "tag value must be non-empty")],
        ),
        (
            "MeshSubset with invalid tag value",
            Top,
            "kind: MeshSubset\ntags:\n  tag1: invalidValue?",
            vec![(
                "targetRef.tags[\"tag1\"]",
                "tag value must consist of alphanumeric characters, dots, dashes and underscores",
            )],
        ),
        (
            "MeshService when it's not supported",
            From,
            "kind: MeshService",
            vec![("targetRef.kind", "value 'MeshService' is not supported")],
        ),
        (
            "MeshService with mesh",
            Top,
            "kind: MeshService\nname: backend\nmesh: mesh-1",
            vec![("targetRef.mesh", "must not be set with kind MeshService")],
        ),
        (
            "MeshService without name with tags",
            Top,
            "kind: MeshService\ntags:\n  tag1: value1",
            vec![
                ("targetRef.tags", "must not be set with kind MeshService"),
                (
                    "targetRef",
                    "name or labels must be set when kind is MeshService",
                ),
            ],
        ),
        (
            "MeshService with invalid name",
            Top,
            "kind: MeshService\nname: \"*\"",
            vec![(
                "targetRef.name",
                "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'.",
            )],
        ),
        (
            "MeshService with proxyTypes",
            Top,
            "kind: MeshService\nname: \"test\"\nproxyTypes: [\"Sidecar\"]",
            vec![(
                "targetRef.proxyTypes",
                "must not be set with kind MeshService",
            )],
        ),
        (
            "MeshServiceSubset with proxyTypes",
            Top,
            "kind: MeshServiceSubset\nname: \"test\"\nproxyTypes: [\"Sidecar\"]",
            vec![(
                "targetRef.proxyTypes",
                "must not be set with kind MeshServiceSubset",
            )],
        ),
        (
            "MeshGateway with proxyTypes",
            Top,
            "kind: MeshGateway\nname: \"test\"\nproxyTypes: [\"Sidecar\"]",
            vec![(
                "targetRef.proxyTypes",
                "must not be set with kind MeshGateway",
            )],
        ),
        (
            "Mesh with empty proxyTypes",
            Top,
            "kind: Mesh\nproxyTypes: []",
            vec![(
                "targetRef.proxyTypes",
                "must be undefined or have at least one element",
            )],
        ),
        (
            "Mesh with one proxyTypes",
            Top,
            "kind: Mesh\nproxyTypes: [\"Sidecar\"]",
            vec![],
        ),
        ("Mesh with no proxyTypes", Top, "kind: Mesh", vec![]),
        (
            "MeshGateway when it's not supported",
            TopProducer,
            "kind: MeshGateway",
            vec![("targetRef.kind", "value 'MeshGateway' is not supported")],
        ),
        (
            "MeshGateway with mesh",
            Top,
            "kind: MeshGateway\nname: gateway1\nmesh: mesh-1",
            vec![("targetRef.mesh", "must not be set with kind MeshGateway")],
        ),
        (
            "MeshGateway without name with empty tags",
            Top,
            "kind: MeshGateway\ntags: {}",
            vec![("targetRef.name", "must be set when kind is MeshGateway")],
        ),
        (
            "MeshGateway with invalid name",
            Top,
            "kind: MeshGateway\nname: \"*\"",
            vec![(
                "targetRef.name",
                "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'.",
            )],
        ),
        (
            "MeshServiceSubset when it's not supported",
            From,
            "kind: MeshServiceSubset",
            vec![(
                "targetRef.kind",
                "value 'MeshServiceSubset' is not supported",
            )],
        ),
        (
            "MeshServiceSubset without name with empty tags",
            Top,
            "kind: MeshServiceSubset\ntags: {}",
            vec![(
                "targetRef.name",
                "must be set when kind is MeshServiceSubset",
            )],
        ),
        (
            "MeshServiceSubset with invalid name with empty tags",
            Top,
            "kind: MeshServiceSubset\nname: \"*\"\ntags: {}",
            vec![(
                "targetRef.name",
                "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'.",
            )],
        ),
        (
            "MeshServiceSubset with mesh",
            Top,
            "kind: MeshServiceSubset\nname: backend\nmesh: mesh-1\ntags:\n  version: v1",
            vec![(
                "targetRef.mesh",
                "must not be set with kind MeshServiceSubset",
            )],
        ),
        (
            "MeshGatewayRoute when it's not supported",
            Top,
            "kind: MeshGatewayRoute",
            vec![(
                "targetRef.kind",
                "value 'MeshGatewayRoute' is not supported",
            )],
        ),
        (
            "MeshService should not combine name with labels",
            Top,
            "kind: MeshService\nname: test\nlabels:\n  kuma.io/zone: east",
            vec![(
                "targetRef.labels",
                "either labels or name and namespace must be specified",
            )],
        ),
        (
            "MeshService should not combine name/namespace with labels",
            Top,
            "kind: MeshService\nnamespace: test-ns\nlabels:\n  kuma.io/zone: east",
            vec![(
                "targetRef.labels",
                "either labels or name and namespace must be specified",
            )],
        ),
        (
            "MeshService should not combine name and namespace with labels",
            Top,
            "kind: MeshService\nname: test\nnamespace: test-ns\nlabels:\n  kuma.io/zone: east",
            vec![(
                "targetRef.labels",
                "either labels or name and namespace must be specified",
            )],
        ),
        (
            "MeshService should have name when labels are not specified",
            Top,
            "kind: MeshService\nnamespace: test-ns",
            vec![(
                "targetRef",
                "name or labels must be set when kind is MeshService",
            )],
        ),
        (
            "MeshHTTPRoute should have name or labels",
            Top,
            "kind: MeshHTTPRoute",
            vec![(
                "targetRef",
                "name or labels must be set when kind is MeshHTTPRoute",
            )],
        ),
        (
            "Mesh should not be used with namespace or labels or sectionName",
            Top,
            "kind: Mesh\nnamespace: test-ns\nlabels:\n  kuma.io/zone: east\nsectionName: port-http",
            vec![
                ("targetRef.labels", "must not be set with kind Mesh"),
                ("targetRef.namespace", "must not be set with kind Mesh"),
                ("targetRef.sectionName", "must not be set with kind Mesh"),
            ],
        ),
        (
            "MeshSubset should not be used with namespace or labels or sectionName",
            Top,
            "kind: MeshSubset\nnamespace: test-ns\nlabels:\n  kuma.io/zone: east\nsectionName: port-http",
            vec![
                ("targetRef.labels", "must not be set with kind MeshSubset"),
                (
                    "targetRef.namespace",
                    "must not be set with kind MeshSubset",
                ),
                (
                    "targetRef.sectionName",
                    "must not be set with kind MeshSubset",
                ),
            ],
        ),
        (
            "MeshServiceSubset should not be used with namespace or labels or sectionName",
            Top,
            "kind: MeshServiceSubset\nname: test\nnamespace: test-ns\nlabels:\n  kuma.io/zone: east\nsectionName: port-http",
            vec![
                (
                    "targetRef.labels",
                    "must not be set with kind MeshServiceSubset",
                ),
                (
                    "targetRef.namespace",
                    "must not be set with kind MeshServiceSubset",
                ),
                (
                    "targetRef.sectionName",
                    "must not be set with kind MeshServiceSubset",
                ),
            ],
        ),
        (
            "Dataplane both labels and name",
            Top,
            "kind: Dataplane\nname: test\nnamespace: test-ns\nlabels:\n  kuma.io/zone: east",
            vec![(
                "targetRef.labels",
                "either labels or name and namespace must be specified",
            )],
        ),
        (
            "Dataplane with tags and mesh",
            Top,
            "kind: Dataplane\nname: test\nnamespace: test-ns\nmesh: mesh-1\ntags:\n  app: demo",
            vec![
                ("targetRef.tags", "must not be set with kind Dataplane"),
                ("targetRef.mesh", "must not be set with kind Dataplane"),
            ],
        ),
        (
            "Dataplane with proxyTypes",
            Top,
            "kind: Dataplane\nname: test\nnamespace: test-ns\nproxyTypes: [\"Sidecar\"]",
            vec![(
                "targetRef.proxyTypes",
                "must not be set with kind Dataplane",
            )],
        ),
        // Upstream's second entry of this name: a sectionName outside an inbound policy.
        (
            "Dataplane with proxyTypes (sectionName)",
            Top,
            "kind: Dataplane\nname: test\nsectionName: http-port",
            vec![(
                "targetRef.sectionName",
                "can only be used with inbound policies",
            )],
        ),
    ];
    let mut failed = Vec::new();
    for (name, at, target, want) in &cases {
        let (spec, prefix) = placed(*at, target);
        let mut yaml = doc(&spec);
        if matches!(at, At::TopProducer) {
            yaml = yaml.replacen(
                "spec:",
                "labels:\n  kuma.io/policy-role: producer\nspec:",
                1,
            );
        }
        let got: Vec<(String, String)> = match parse_documents("t.yaml", &yaml) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.into_iter().map(|p| (p.path, p.message)).collect(),
        };
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(p, m)| (p.replacen("targetRef", &prefix, 1), m.to_string()))
            .collect();
        if got != want {
            failed.push(format!("{name}:\n  got  {got:?}\n  want {want:?}\n{yaml}"));
        }
    }
    assert_eq!(cases.len(), 58, "every translated upstream case is a row");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Kuma's MeshRateLimit `validateTop`: a policy of another role than system (here producer)
/// may not target gateways; without the label (Kuma's system role) it may.
#[test]
fn kuma_top_level_kinds_depend_on_the_policy_role() {
    let gateway = "targetRef:\n  kind: MeshGateway\n  name: edge\n";
    let route = "targetRef:\n  kind: MeshHTTPRoute\n  name: r\n";
    for (spec, kind) in [(gateway, "MeshGateway"), (route, "MeshHTTPRoute")] {
        assert!(parse_documents("t.yaml", &doc(spec)).is_ok(), "{kind}");
        let system =
            doc(spec).replacen("spec:", "labels:\n  kuma.io/policy-role: system\nspec:", 1);
        assert!(parse_documents("t.yaml", &system).is_ok(), "{kind} system");
        for role in ["producer", "consumer", "workload-owner"] {
            let labelled = doc(spec).replacen(
                "spec:",
                &format!("labels:\n  kuma.io/policy-role: {role}\nspec:"),
                1,
            );
            let problems = parse_documents("t.yaml", &labelled).expect_err("refused");
            let got: Vec<(String, String)> =
                problems.into_iter().map(|p| (p.path, p.message)).collect();
            assert_eq!(
                got,
                [(
                    "spec.targetRef.kind".to_string(),
                    format!("value '{kind}' is not supported")
                )],
                "{kind} {role}"
            );
        }
    }
}
