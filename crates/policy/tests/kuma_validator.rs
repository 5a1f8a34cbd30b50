//! Kuma's own MeshRateLimit validator cases (`pkg/plugins/policies/meshratelimit/api/v1alpha1/
//! validator_test.go`), one row each, named as upstream names them. Inputs and expected
//! violations are Kuma's; where meshlimit deliberately differs the row says so.

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
            "invalid gateway example when targeting MeshHTTPRoute",
            format!("targetRef:\n  kind: MeshHTTPRoute\n  name: http-route-1\n{FULL_FROM}"),
            // Kuma's wording is the Gateway one; meshlimit names the route.
            vec![(
                "spec.from",
                "must not be defined when spec.kind is MeshHTTPRoute",
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
