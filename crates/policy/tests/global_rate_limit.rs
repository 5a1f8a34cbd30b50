//! `MeshGlobalRateLimit`: validation (exact field paths and messages), round trips, matching
//! and merging, and each instance's share of the total.

use std::time::Duration;

use meshlimit_policy::{
    FailureMode, GlobalLimit, GlobalMode, HeaderValue, InboundLimits, Kind, Problem, Rate,
    Resource, ResourceSet, Source, parse_documents, share,
};
use proptest::prelude::*;

/// A MeshGlobalRateLimit document around the given `spec` body.
fn mgrl(spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("type: MeshGlobalRateLimit\nmesh: default\nname: p\nspec:\n{body}")
}

/// A spec with one `from` entry whose `default` is `conf` (YAML flow or block, indented
/// under `default:`).
fn from(conf: &str) -> String {
    let body: String = conf.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "targetRef: {{kind: MeshService, name: web}}\nfrom:\n  - targetRef: {{kind: Mesh}}\n    default:\n{body}"
    )
}

fn problems(yaml: &str) -> Vec<(String, String)> {
    match parse_documents("t.yaml", yaml) {
        Ok(p) => panic!("expected problems, got {:?}", p.resources),
        Err(problems) => problems.into_iter().map(|p| (p.path, p.message)).collect(),
    }
}

fn one(path: &str, message: &str) -> Vec<(String, String)> {
    vec![(path.to_string(), message.to_string())]
}

fn accepted(yaml: &str) -> Vec<Resource> {
    parse_documents("t.yaml", yaml)
        .unwrap_or_else(|p| panic!("{p:#?}\n{yaml}"))
        .resources
}

const DEFAULT: &str = "spec.from[0].default";

#[test]
fn kong_mesh_examples_are_accepted_as_written() {
    // Kong Mesh's documented examples, unchanged.
    let universal = r#"
type: MeshGlobalRateLimit
name: demo-rate-limit
mesh: default
spec:
  targetRef:
    kind: MeshService
    name: demo-app
  from:
    - targetRef:
        kind: Mesh
      default:
        http:
          requestRate:
            num: 100
            interval: 1s # only 1s, 1m, 1h, 24h can be specified
          onRateLimit:
            status: 423
            headers:
              set:
                - name: "x-kuma-rate-limited"
                  value: "true"
              add:
                - name: "x-kuma-header"
                  value: "true"
        mode: Limit # allowed: Limit, Shadow
        backend:
          rateLimitService:
            url: http://kong-mesh-ratelimit-service:10003
            timeout: 25ms
"#;
    let kubernetes = r#"
apiVersion: kuma.io/v1alpha1
kind: MeshGlobalRateLimit
metadata:
  name: ratelimit-backend
  namespace: kong-mesh-system
  labels:
    kuma.io/mesh: default
spec:
  targetRef:
    kind: Mesh
  from:
    - targetRef:
        kind: Mesh
      default:
        http:
          onRateLimit:
            status: 423
            headers:
              set:
                - name: x-kuma-rate-limited
                  value: 'true'
        mode: Limit
        backend:
          rateLimitService:
            url: http://kong-mesh-ratelimit-service:10003
            timeout: 25ms
"#;
    let parsed = parse_documents("kong.yaml", &format!("{universal}---{kubernetes}"))
        .unwrap_or_else(|p| panic!("{p:#?}"));
    let kinds: Vec<Kind> = parsed.resources.iter().map(Resource::kind).collect();
    assert_eq!(
        kinds,
        [Kind::MeshGlobalRateLimit, Kind::MeshGlobalRateLimit]
    );
    assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
    let Resource::MeshGlobalRateLimit(p) = &parsed.resources[1] else {
        panic!("not a MeshGlobalRateLimit");
    };
    assert_eq!(
        (p.name.as_str(), p.mesh.as_str(), p.namespace.as_deref()),
        ("ratelimit-backend", "default", Some("kong-mesh-system"))
    );
}

#[test]
fn entries_and_confs_must_say_something() {
    let cases: Vec<(String, Vec<(String, String)>)> = vec![
        (
            "targetRef: {kind: Mesh}\nfrom:\n  - targetRef: {kind: Mesh}".into(),
            one(DEFAULT, "must be defined"),
        ),
        (
            from("{}"),
            one(
                DEFAULT,
                "must have at least one defined: http, mode, backend, failureMode",
            ),
        ),
        (
            from("http: {}"),
            one(
                &format!("{DEFAULT}.http"),
                "must have at least one defined: disabled, requestRate, onRateLimit",
            ),
        ),
        (
            from("backend: {}"),
            one(
                &format!("{DEFAULT}.backend"),
                "must have at least one defined: rateLimitService",
            ),
        ),
        (
            from("backend: {rateLimitService: {}}"),
            one(
                &format!("{DEFAULT}.backend.rateLimitService"),
                "must have at least one defined: url, timeout, limitOnServiceFail",
            ),
        ),
        (
            "from:\n  - default: {mode: Limit}".into(),
            one("spec.from[0].targetRef", "must be defined"),
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(problems(&mgrl(&spec)), expected, "{spec}");
    }
}

#[test]
fn request_rates_count_in_the_windows_of_a_rate_limit_service() {
    let at = |rate: &str| mgrl(&from(&format!("http: {{requestRate: {rate}}}")));
    let path = format!("{DEFAULT}.http.requestRate");
    for bad in ["10s", "2m", "500ms", "48h", "0s"] {
        assert_eq!(
            problems(&at(&format!("{{num: 5, interval: {bad}}}"))),
            one(
                &format!("{path}.interval"),
                "only 1s, 1m, 1h or 24h can be configured"
            ),
            "{bad}"
        );
    }
    for good in ["1s", "1m", "60s", "1h", "24h", "1440m"] {
        accepted(&at(&format!("{{num: 5, interval: {good}}}")));
    }
    assert_eq!(
        problems(&at("{num: 0, interval: 1s}")),
        one(&format!("{path}.num"), "must be greater than 0")
    );
    assert_eq!(
        problems(&at("{num: 4294967296, interval: 1s}")),
        one(
            &format!("{path}.num"),
            "must be at most 4294967295, found 4294967296"
        )
    );
    assert_eq!(
        problems(&at("{interval: 1s}")),
        one(&format!("{path}.num"), "must be defined")
    );
    assert_eq!(
        problems(&at("{num: 5, interval: ten}")),
        one(
            &format!("{path}.interval"),
            "invalid duration \"ten\": expected a number"
        )
    );
}

#[test]
fn the_rejection_is_checked_as_for_mesh_rate_limit() {
    let at = |orl: &str| mgrl(&from(&format!("http: {{onRateLimit: {orl}}}")));
    let path = format!("{DEFAULT}.http.onRateLimit");
    assert_eq!(
        problems(&at("{status: 0}")),
        one(&format!("{path}.status"), "must be greater than 0")
    );
    assert_eq!(
        problems(&at("{headers: {set: [{name: X-Limited, value: v}]}}")),
        one(
            &format!("{path}.headers.set[0].name"),
            "must be 1 to 256 characters matching ^[a-z0-9!#$%&'*+\\-.^_`|~]+$ (lowercase)"
        )
    );
    assert_eq!(
        problems(&at("{headers: {add: [{name: x-a, value: \"a\\nb\"}]}}")),
        one(
            &format!("{path}.headers.add[0].value"),
            "must not contain control characters such as newlines"
        )
    );
    let many: Vec<String> = (0..17)
        .map(|i| format!("{{name: h{i}, value: v}}"))
        .collect();
    assert_eq!(
        problems(&at(&format!("{{headers: {{set: [{}]}}}}", many.join(", ")))),
        one(&format!("{path}.headers.set"), "must have at most 16 items")
    );
    assert_eq!(
        problems(&mgrl(&from("http: {disabled: \"no\"}"))),
        one(
            &format!("{DEFAULT}.http.disabled"),
            "expected true or false, found a string (\"no\")"
        )
    );
}

#[test]
fn modes_and_failure_modes_are_named_values() {
    let cases = [
        (
            "mode: limit",
            "mode",
            "value 'limit' is not supported (did you mean 'Limit'?)",
        ),
        (
            "mode: Enforce",
            "mode",
            "value 'Enforce' is not supported (expected Limit or Shadow)",
        ),
        (
            "failureMode: localshare",
            "failureMode",
            "value 'localshare' is not supported (did you mean 'LocalShare'?)",
        ),
        (
            "failureMode: FailStatic",
            "failureMode",
            "value 'FailStatic' is not supported (expected Open, Closed or LocalShare)",
        ),
        (
            "mode: 1",
            "mode",
            "expected a string, found an integer (1) (quote it to make it a string)",
        ),
    ];
    for (conf, field, message) in cases {
        assert_eq!(
            problems(&mgrl(&from(conf))),
            one(&format!("{DEFAULT}.{field}"), message),
            "{conf}"
        );
    }
    for good in [
        "mode: Shadow",
        "failureMode: LocalShare",
        "failureMode: Closed",
    ] {
        accepted(&mgrl(&from(good)));
    }
    // failureMode is limitOnServiceFail with a third choice: one entry sets one of them.
    assert_eq!(
        problems(&mgrl(&from(
            "failureMode: Open\nbackend: {rateLimitService: {limitOnServiceFail: true}}"
        ))),
        one(
            &format!("{DEFAULT}.failureMode"),
            "must not be set together with backend.rateLimitService.limitOnServiceFail (failureMode Open is limitOnServiceFail: false, Closed is true)"
        )
    );
}

#[test]
fn the_rate_limit_service_is_a_reachable_url() {
    let at = |service: &str| mgrl(&from(&format!("backend: {{rateLimitService: {service}}}")));
    let path = format!("{DEFAULT}.backend.rateLimitService");
    let url_rule = "must be an http:// or https:// URL of a host and port, without a path, such as http://ratelimit:10003";
    for bad in [
        "ratelimit:10003",
        "grpc://ratelimit:10003",
        "http://ratelimit:10003/check",
        "http://user:pw@ratelimit:10003",
        "http://ratelimit:0",
        "http://ratelimit:10003?x=1",
        "\"http:// ratelimit\"",
    ] {
        assert_eq!(
            problems(&at(&format!("{{url: {bad}}}"))),
            one(&format!("{path}.url"), url_rule),
            "{bad}"
        );
    }
    for good in [
        "http://kong-mesh-ratelimit-service.kong-mesh-system:10003",
        "https://10.0.0.7:8081/",
        "http://[::1]:10003",
    ] {
        accepted(&at(&format!("{{url: \"{good}\"}}")));
    }
    assert_eq!(
        problems(&at("{url: \"\"}")),
        one(&format!("{path}.url"), "must not be empty")
    );
    assert_eq!(
        problems(&at("{timeout: 0s}")),
        one(&format!("{path}.timeout"), "must be greater than 0")
    );
    assert_eq!(
        problems(&at("{timeout: 25}")),
        one(
            &format!("{path}.timeout"),
            "expected a duration such as \"10s\" or \"500ms\", found an integer (25)"
        )
    );
    assert_eq!(
        problems(&at("{limitOnServiceFail: 1}")),
        one(
            &format!("{path}.limitOnServiceFail"),
            "expected true or false, found an integer (1)"
        )
    );
}

#[test]
fn what_meshlimit_cannot_enforce_is_refused_not_ignored() {
    assert_eq!(
        problems(&mgrl(&from(
            "http:\n  ratelimitOnRequest:\n    - kind: OnHeader\n      name: x-tenant\n      limits: [{value: gold, requestRate: {num: 5, interval: 1s}}]"
        ))),
        one(
            &format!("{DEFAULT}.http.ratelimitOnRequest"),
            "is not supported: meshlimit enforces requestRate for the whole service, not per request header value"
        )
    );
    assert_eq!(
        problems(&mgrl(
            "rules:\n  - matches: [{sni: {type: Exact, value: web}}]\n    default: {mode: Shadow}"
        )),
        one(
            "spec.rules[0].matches",
            "is not supported for MeshGlobalRateLimit (its limit is shared by every client of the service)"
        )
    );
}

#[test]
fn target_refs_follow_kong_mesh_support_matrix() {
    let at = |top: &str| {
        mgrl(&format!(
            "targetRef: {top}\nrules:\n  - default: {{mode: Limit}}"
        ))
    };
    for top in [
        "{kind: Mesh}",
        "{kind: Mesh, proxyTypes: [Sidecar]}",
        "{kind: MeshSubset, tags: {version: v1}}",
        "{kind: MeshService, name: web}",
        "{kind: MeshGateway, name: edge}",
    ] {
        accepted(&at(top));
    }
    for (top, kind) in [
        ("{kind: Dataplane, name: dp-1}", "Dataplane"),
        (
            "{kind: MeshServiceSubset, name: web, tags: {v: a}}",
            "MeshServiceSubset",
        ),
        ("{kind: MeshHTTPRoute, name: r}", "MeshHTTPRoute"),
        (
            "{kind: MeshExternalService, name: x}",
            "MeshExternalService",
        ),
    ] {
        assert_eq!(
            problems(&at(top)),
            one(
                "spec.targetRef.kind",
                &format!("value '{kind}' is not supported")
            ),
            "{top}"
        );
    }
    // The targetRef itself is read as for every kuma.io policy.
    assert_eq!(
        problems(&at("{kind: MeshService}")),
        one(
            "spec.targetRef",
            "name or labels must be set when kind is MeshService"
        )
    );
    assert_eq!(
        problems(&at("{kind: MeshServis, name: web}")),
        one(
            "spec.targetRef.kind",
            "value 'MeshServis' is not supported (did you mean 'MeshService'?)"
        )
    );
    assert_eq!(
        problems(&mgrl(
            "from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {mode: Limit}"
        )),
        one(
            "spec.from[0].targetRef.kind",
            "value 'MeshService' is not supported"
        )
    );
}

#[test]
fn from_to_and_rules_are_placed_as_in_kuma() {
    let to = "to:\n  - targetRef: {kind: Mesh}\n    default: {mode: Limit}";
    assert_eq!(
        problems(&mgrl(&format!(
            "targetRef: {{kind: MeshService, name: web}}\n{to}"
        ))),
        one("spec.to", "must not be defined")
    );
    accepted(&mgrl(&format!(
        "targetRef: {{kind: MeshGateway, name: edge}}\n{to}"
    )));
    // Kong Mesh limits builtin gateways with from[] too.
    accepted(&mgrl(
        "targetRef: {kind: MeshGateway, name: edge}\nfrom:\n  - targetRef: {kind: Mesh}\n    default: {mode: Limit}",
    ));
    assert_eq!(
        problems(&mgrl(
            "rules:\n  - default: {mode: Limit}\nfrom:\n  - targetRef: {kind: Mesh}\n    default: {mode: Limit}"
        )),
        one(
            "spec",
            "fields 'to' and 'from' must be empty when 'rules' is defined"
        )
    );
    // `from` is Kong Mesh's way: no deprecation warning.
    let parsed = parse_documents("t", &mgrl(&from("mode: Limit"))).expect("valid");
    assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
}

#[test]
fn unknown_fields_suggest_the_nearest_name() {
    let cases = [
        (
            from("http: {reqestRate: {num: 1, interval: 1s}}"),
            format!("{DEFAULT}.http.reqestRate"),
            "unknown field 'reqestRate' (did you mean 'requestRate'?)",
        ),
        (
            from("failuremode: Open"),
            format!("{DEFAULT}.failuremode"),
            "unknown field 'failuremode' (did you mean 'failureMode'?)",
        ),
        (
            from("backend: {rateLimitServce: {url: \"http://a:1\"}}"),
            format!("{DEFAULT}.backend.rateLimitServce"),
            "unknown field 'rateLimitServce' (did you mean 'rateLimitService'?)",
        ),
        (
            from("backend: {rateLimitService: {timeout: 1s, limitOnServiceFailure: true}}"),
            format!("{DEFAULT}.backend.rateLimitService.limitOnServiceFailure"),
            "unknown field 'limitOnServiceFailure' (did you mean 'limitOnServiceFail'?)",
        ),
        (
            from("local: {http: {requestRate: {num: 1, interval: 1s}}}"),
            format!("{DEFAULT}.local"),
            "unknown field 'local' (expected one of: http, mode, backend, failureMode)",
        ),
    ];
    for (spec, path, message) in cases {
        let found = problems(&mgrl(&spec));
        assert!(
            found.contains(&(path.clone(), message.to_string())),
            "{spec}: {found:#?}"
        );
    }
}

#[test]
fn documents_name_the_kind_in_either_form() {
    assert_eq!(
        problems("type: MeshGlobalRatelimit\nname: x"),
        one(
            "type",
            "value 'MeshGlobalRatelimit' is not supported (did you mean 'MeshGlobalRateLimit'?)"
        )
    );
    assert_eq!(
        problems(
            "apiVersion: kuma.io/v1beta1\nkind: MeshGlobalRateLimit\nmetadata: {name: x}\nspec: {}"
        ),
        one(
            "apiVersion",
            "value 'kuma.io/v1beta1' is not supported for kind MeshGlobalRateLimit (expected kuma.io/v1alpha1)"
        )
    );
    assert_eq!(
        problems("apiVersion: kuma.io/v1alpha1\nkind: MeshGlobalRateLimt\nmetadata: {name: x}"),
        one(
            "kind",
            "value 'MeshGlobalRateLimt' is not supported (did you mean 'MeshGlobalRateLimit'?)"
        )
    );
    assert_eq!(
        problems("type: MeshGlobalRateLimit\nname: x"),
        one("spec", "must be defined")
    );
    assert_eq!(
        problems("type: MeshGlobalRateLimit\nname: x\nspec: {}\nnetworking: {}"),
        one(
            "networking",
            "unknown field 'networking' (expected one of: type, mesh, name, labels, spec)"
        )
    );
    // Problems name the kind and the resource.
    let err = parse_documents("t.yaml", &mgrl(&from("mode: limit"))).unwrap_err();
    assert_eq!(
        err[0].to_string(),
        "t.yaml: document 1 (MeshGlobalRateLimit p): spec.from[0].default.mode: value 'limit' is not supported (did you mean 'Limit'?)"
    );
}

#[test]
fn every_problem_of_a_document_is_reported_and_nothing_is_kept() {
    let yaml = format!(
        "{}---\n{}",
        mgrl(&from("mode: Limit")),
        mgrl(&from(
            "http:\n  requestRate: {num: 0, interval: 5s}\n  onRateLimit: {status: 0}\nmode: Block\nbackend: {rateLimitService: {url: ratelimit, timeout: 0s}}"
        ))
    );
    let found = match parse_documents("t.yaml", &yaml) {
        Ok(p) => panic!("accepted {:?}", p.resources),
        Err(p) => p,
    };
    let paths: Vec<(usize, &str)> = found
        .iter()
        .map(|p| (p.document, p.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            (2, "spec.from[0].default.http.requestRate.num"),
            (2, "spec.from[0].default.http.requestRate.interval"),
            (2, "spec.from[0].default.http.onRateLimit.status"),
            (2, "spec.from[0].default.mode"),
            (2, "spec.from[0].default.backend.rateLimitService.url"),
            (2, "spec.from[0].default.backend.rateLimitService.timeout"),
        ]
    );
}

fn set_problems(yaml: &str) -> Vec<String> {
    let parsed = parse_documents("t.yaml", yaml).expect("each document is valid");
    match ResourceSet::from_parsed(parsed) {
        Ok(_) => panic!("expected the set to be rejected"),
        Err(p) => p.iter().map(Problem::to_string).collect(),
    }
}

#[test]
fn resource_sets_check_meshes_and_names() {
    let k8s = |name: &str, mesh: &str| {
        format!(
            "apiVersion: kuma.io/v1alpha1\nkind: MeshGlobalRateLimit\nmetadata:\n  name: {name}\n  labels: {{kuma.io/mesh: {mesh}}}\nspec:\n  rules:\n    - default: {{mode: Shadow}}\n"
        )
    };
    assert_eq!(
        set_problems(&k8s("p", "prod")),
        [
            "t.yaml: document 1 (MeshGlobalRateLimit p): metadata.labels[\"kuma.io/mesh\"]: mesh 'prod' is not defined (add a Mesh named 'prod')"
        ]
    );
    assert_eq!(
        set_problems(
            &mgrl("rules:\n  - default: {mode: Shadow}").replace("mesh: default", "mesh: prod")
        ),
        [
            "t.yaml: document 1 (MeshGlobalRateLimit p): mesh: mesh 'prod' is not defined (add a Mesh named 'prod')"
        ]
    );
    assert_eq!(
        set_problems(&format!(
            "{}---\n{}",
            k8s("p", "default"),
            k8s("p", "default")
        )),
        [
            "t.yaml: document 2 (MeshGlobalRateLimit p): metadata.name: duplicate MeshGlobalRateLimit 'p' in mesh 'default' (first defined in t.yaml, document 1): names must be unique per kind and mesh"
        ]
    );
    // A MeshRateLimit of the same name is another kind.
    let both = format!(
        "{}---\ntype: MeshRateLimit\nname: p\nspec:\n  targetRef: {{kind: Dataplane}}\n  rules:\n    - default:\n        local:\n          http: {{disabled: true}}\n",
        k8s("p", "default")
    );
    ResourceSet::from_parsed(parse_documents("t.yaml", &both).expect("valid")).expect("consistent");
}

const FULL: &str = r#"
type: MeshGlobalRateLimit
mesh: default
name: full
labels: {team: edge}
spec:
  targetRef: {kind: MeshSubset, proxyTypes: [Sidecar], tags: {version: v1}}
  from:
    - targetRef: {kind: Mesh}
      default:
        http:
          disabled: false
          requestRate: {num: 60, interval: 1m}
          onRateLimit:
            status: 503
            headers:
              set: [{name: x-limited, value: "yes"}]
              add: [{name: retry-after, value: "1"}]
        mode: Shadow
        backend:
          rateLimitService:
            url: http://ratelimit:10003
            timeout: 1.5s
            limitOnServiceFail: true
    - targetRef: {kind: Mesh}
      default:
        failureMode: LocalShare
---
apiVersion: kuma.io/v1alpha1
kind: MeshGlobalRateLimit
metadata:
  name: k8s-gateway
  namespace: kong-mesh-system
  labels: {kuma.io/mesh: default}
spec:
  targetRef: {kind: MeshGateway, name: edge}
  to:
    - targetRef: {kind: Mesh}
      default:
        http: {requestRate: {num: 5, interval: 24h}}
---
type: MeshGlobalRateLimit
name: rules-form
spec:
  rules:
    - default: {backend: {rateLimitService: {url: "https://[::1]:8081"}}}
    - default: {http: {onRateLimit: {status: 429}}, failureMode: Closed}
"#;

#[test]
fn every_field_round_trips_in_its_form() {
    let resources = accepted(FULL);
    assert_eq!(resources.len(), 3);
    for r in &resources {
        let yaml = serde_yaml_ng::to_string(r).expect("serializes");
        let again =
            parse_documents("again.yaml", &yaml).unwrap_or_else(|p| panic!("{p:#?}\n{yaml}"));
        assert_eq!(again.resources, vec![r.clone()], "{yaml}");
        let json = serde_json::to_string(r).expect("serializes");
        let again =
            parse_documents("again.json", &json).unwrap_or_else(|p| panic!("{p:#?}\n{json}"));
        assert_eq!(again.resources, vec![r.clone()], "{json}");
    }
    let yaml = |i: usize| serde_yaml_ng::to_string(&resources[i]).expect("serializes");
    assert!(
        yaml(0).starts_with("type: MeshGlobalRateLimit\nmesh: default\nname: full\nlabels:\n"),
        "{}",
        yaml(0)
    );
    assert!(yaml(0).contains("      mode: Shadow\n      backend:\n        rateLimitService:\n          url: http://ratelimit:10003\n          timeout: 1.5s\n          limitOnServiceFail: true\n"), "{}", yaml(0));
    assert!(yaml(0).contains("failureMode: LocalShare"), "{}", yaml(0));
    assert!(
        yaml(1).starts_with(
            "apiVersion: kuma.io/v1alpha1\nkind: MeshGlobalRateLimit\nmetadata:\n  name: k8s-gateway\n  namespace: kong-mesh-system\n"
        ),
        "{}",
        yaml(1)
    );
    assert!(
        yaml(2).contains("spec:\n  rules:\n  - default:\n"),
        "{}",
        yaml(2)
    );
}

const DATAPLANES: &str = r#"
type: Dataplane
name: web-2
networking:
  address: 10.0.0.2
  inbound:
    - port: 8080
      tags: {kuma.io/service: web, kuma.io/protocol: http, version: v1}
---
type: Dataplane
name: web-1
networking:
  address: 10.0.0.1
  inbound:
    - port: 8080
      tags: {kuma.io/service: web, kuma.io/protocol: http, version: v1}
    - port: 6379
      tags: {kuma.io/service: cache}
---
type: Dataplane
name: web-3
networking:
  address: 10.0.0.1
  inbound:
    - port: 8081
      tags: {kuma.io/service: web, kuma.io/protocol: http, version: v2}
---
type: Dataplane
name: api-1
networking:
  address: 10.0.0.4
  inbound:
    - port: 9000
      tags: {kuma.io/service: api, kuma.io/protocol: grpc}
---
type: Mesh
name: other
---
type: Dataplane
name: web-9
mesh: other
networking:
  address: 10.0.0.9
  inbound:
    - port: 8080
      tags: {kuma.io/service: web, kuma.io/protocol: http}
"#;

/// A MeshGlobalRateLimit with one `from` entry.
fn policy(name: &str, target: &str, conf: &str) -> String {
    format!(
        "type: MeshGlobalRateLimit\nname: {name}\nspec:\n  targetRef: {target}\n  from:\n    - targetRef: {{kind: Mesh}}\n      default: {conf}\n"
    )
}

fn set(policies: &[String]) -> ResourceSet {
    let mut docs = vec![DATAPLANES.to_string()];
    docs.extend(policies.iter().cloned());
    let parsed =
        parse_documents("t.yaml", &docs.join("\n---\n")).unwrap_or_else(|p| panic!("{p:#?}"));
    ResourceSet::from_parsed(parsed).unwrap_or_else(|p| panic!("{p:#?}"))
}

fn inbound(set: &ResourceSet, mesh: &str, dp: &str, port: u16) -> InboundLimits {
    set.effective(mesh, dp)
        .expect("dataplane")
        .inbounds
        .into_iter()
        .find(|i| i.port == port)
        .expect("inbound")
}

fn global(set: &ResourceSet, dp: &str, port: u16) -> Option<GlobalLimit> {
    inbound(set, "default", dp, port).global
}

fn rate(num: u32, secs: u64) -> Rate {
    Rate::new(num, Duration::from_secs(secs)).expect("valid rate")
}

const BACKEND: &str = "{backend: {rateLimitService: {url: \"http://ratelimit:10003\", timeout: 100ms}}, http: {onRateLimit: {status: 423}}}";

#[test]
fn a_mesh_wide_backend_and_a_service_rate_merge() {
    let s = set(&[
        policy("backend", "{kind: Mesh}", BACKEND),
        policy(
            "web-limit",
            "{kind: MeshService, name: web}",
            "{http: {requestRate: {num: 10, interval: 1s}}}",
        ),
    ]);
    let g = global(&s, "web-1", 8080).expect("a global limit");
    assert_eq!(g.service, "web");
    assert_eq!(g.key, "mgrl/default/web-limit/web");
    assert_eq!(g.request_rate, rate(10, 1));
    assert_eq!(
        g.rate_limit_service.as_deref(),
        Some("http://ratelimit:10003")
    );
    assert_eq!(g.timeout, Duration::from_millis(100));
    assert_eq!(g.status, 423);
    assert_eq!(g.mode, GlobalMode::Limit);
    assert_eq!(g.failure_mode, FailureMode::Open);
    assert_eq!(g.policies, ["backend", "web-limit"]);
    // The per-instance limits and their contributors are untouched.
    let i = inbound(&s, "default", "web-1", 8080);
    assert_eq!(
        (i.http, i.tcp, i.policies),
        (None, None, Vec::<String>::new())
    );
    // HTTP only: the TCP inbound and services without a rate get nothing.
    assert_eq!(global(&s, "web-1", 6379), None);
    assert_eq!(global(&s, "api-1", 9000), None);
    // Another mesh's policies do not reach it.
    assert_eq!(inbound(&s, "other", "web-9", 8080).global, None);
}

#[test]
fn the_more_specific_policy_wins_field_by_field() {
    let s = set(&[
        policy(
            "mesh",
            "{kind: Mesh}",
            "{mode: Shadow, http: {requestRate: {num: 100, interval: 1m}, onRateLimit: {status: 503, headers: {set: [{name: a, value: \"1\"}, {name: b, value: \"2\"}]}}}, backend: {rateLimitService: {url: \"http://a:1\", limitOnServiceFail: true}}}",
        ),
        policy(
            "v1",
            "{kind: MeshSubset, tags: {version: v1}}",
            "{mode: Limit, http: {onRateLimit: {headers: {set: [{name: c, value: \"3\"}]}}}, backend: {rateLimitService: {timeout: 1s}}}",
        ),
        policy(
            "web",
            "{kind: MeshService, name: web}",
            "{http: {requestRate: {num: 7, interval: 1h}}, failureMode: LocalShare}",
        ),
    ]);
    let g = global(&s, "web-1", 8080).expect("a global limit");
    // Rates and header lists are replaced whole; the rest field by field.
    assert_eq!(g.request_rate, rate(7, 3600));
    assert_eq!(g.mode, GlobalMode::Limit);
    assert_eq!(g.status, 503);
    assert_eq!(
        g.headers.set,
        [HeaderValue::new("c", "3").expect("valid header")]
    );
    assert_eq!(g.rate_limit_service.as_deref(), Some("http://a:1"));
    assert_eq!(g.timeout, Duration::from_secs(1));
    // failureMode and limitOnServiceFail are one setting: the more specific one wins.
    assert_eq!(g.failure_mode, FailureMode::LocalShare);
    assert_eq!(g.policies, ["mesh", "v1", "web"]);
    assert_eq!(g.key, "mgrl/default/web/web");
    // web-3 is v2: the Mesh policy's Shadow mode and limitOnServiceFail stay.
    let g3 = global(&s, "web-3", 8081).expect("a global limit");
    assert_eq!(
        (g3.mode, g3.failure_mode, g3.timeout),
        (
            GlobalMode::Shadow,
            FailureMode::LocalShare,
            Duration::from_millis(25)
        )
    );
    assert_eq!(g3.headers.set.len(), 2);
}

#[test]
fn limit_on_service_fail_is_the_kong_spelling_of_the_failure_mode() {
    let with = |mesh: &str, web: &str| {
        global(
            &set(&[
                policy("mesh", "{kind: Mesh}", mesh),
                policy("web", "{kind: MeshService, name: web}", web),
            ]),
            "web-1",
            8080,
        )
        .expect("a global limit")
        .failure_mode
    };
    let rate = "http: {requestRate: {num: 1, interval: 1s}}";
    assert_eq!(
        with(
            &format!("{{{rate}, failureMode: LocalShare}}"),
            "{backend: {rateLimitService: {limitOnServiceFail: false}}}"
        ),
        FailureMode::Open
    );
    assert_eq!(
        with(
            &format!("{{{rate}, backend: {{rateLimitService: {{limitOnServiceFail: true}}}}}}"),
            "{mode: Limit}"
        ),
        FailureMode::Closed
    );
}

#[test]
fn disabled_cancels_and_names_break_ties() {
    let rate10 = "{http: {requestRate: {num: 10, interval: 1s}}}";
    let s = set(&[
        policy("all", "{kind: Mesh}", rate10),
        policy(
            "off-for-v2",
            "{kind: MeshSubset, tags: {version: v2}}",
            "{http: {disabled: true}}",
        ),
    ]);
    assert!(global(&s, "web-1", 8080).is_some());
    assert_eq!(global(&s, "web-3", 8081), None);
    // The disabled instance does not count: the two others share the total.
    assert_eq!(global(&s, "web-1", 8080).expect("limit").instances, 2);

    // Equal specificity: the lexicographically smaller name comes last and wins.
    let s = set(&[
        policy(
            "b",
            "{kind: MeshService, name: web}",
            "{http: {requestRate: {num: 2, interval: 1s}}}",
        ),
        policy(
            "a",
            "{kind: MeshService, name: web}",
            "{http: {requestRate: {num: 1, interval: 1s}}}",
        ),
    ]);
    let g = global(&s, "web-2", 8080).expect("limit");
    assert_eq!(
        (g.request_rate, g.key.as_str()),
        (rate(1, 1), "mgrl/default/a/web")
    );
    assert_eq!(g.policies, ["b", "a"]);
}

#[test]
fn instances_share_the_total_in_a_stable_order() {
    let s = set(&[policy(
        "web",
        "{kind: MeshService, name: web}",
        "{http: {requestRate: {num: 10, interval: 1s}}}",
    )]);
    // Ordered by (Dataplane name, port) whatever the order of the documents; web-3 listens
    // on another port and still shares the bucket.
    let shares: Vec<(&str, u32, u32, Rate)> = ["web-1", "web-2", "web-3"]
        .into_iter()
        .map(|dp| {
            let port = if dp == "web-3" { 8081 } else { 8080 };
            let g = global(&s, dp, port).expect("limit");
            assert_eq!(g.key, "mgrl/default/web/web");
            (dp, g.instances, g.index, g.share)
        })
        .collect();
    assert_eq!(
        shares,
        [
            ("web-1", 3, 0, rate(4, 1)),
            ("web-2", 3, 1, rate(3, 1)),
            ("web-3", 3, 2, rate(3, 1)),
        ]
    );
    // Every way of asking gives the same share.
    let all = s.all_effective();
    let web2 = all.iter().find(|d| d.dataplane == "web-2").expect("web-2");
    assert_eq!(
        web2.inbounds[0].global.as_ref().map(|g| g.share),
        Some(rate(3, 1))
    );
    let for_source = s
        .limits_for_source("default", "web-3", 8081, &Source::default())
        .expect("inbound");
    assert_eq!(for_source.global.map(|g| g.index), Some(2));

    // Different rates from different policies are different buckets, counted apart.
    let s = set(&[
        policy(
            "web",
            "{kind: MeshService, name: web}",
            "{http: {requestRate: {num: 10, interval: 1s}}}",
        ),
        policy(
            "v2",
            "{kind: MeshSubset, tags: {version: v2}}",
            "{http: {requestRate: {num: 1, interval: 1s}}}",
        ),
    ]);
    // MeshSubset is less specific than MeshService: `web` wins everywhere.
    assert_eq!(global(&s, "web-3", 8081).expect("limit").instances, 3);
    let s = set(&[
        policy(
            "all",
            "{kind: Mesh}",
            "{http: {requestRate: {num: 10, interval: 1s}}}",
        ),
        policy(
            "v2",
            "{kind: MeshSubset, tags: {version: v2}}",
            "{http: {requestRate: {num: 1, interval: 1s}}}",
        ),
    ]);
    let g1 = global(&s, "web-1", 8080).expect("limit");
    let g3 = global(&s, "web-3", 8081).expect("limit");
    assert_eq!(
        (g1.key.as_str(), g1.instances, g1.share),
        ("mgrl/default/all/web", 2, rate(5, 1))
    );
    assert_eq!(
        (g3.key.as_str(), g3.instances, g3.share),
        ("mgrl/default/v2/web", 1, rate(1, 1))
    );
}

#[test]
fn fewer_tokens_than_instances_are_spread_in_time() {
    let s = set(&[policy(
        "web",
        "{kind: MeshService, name: web}",
        "{http: {requestRate: {num: 1, interval: 1m}}}",
    )]);
    for (dp, port) in [("web-1", 8080), ("web-2", 8080), ("web-3", 8081)] {
        assert_eq!(
            global(&s, dp, port).expect("limit").share,
            Rate::new(1, Duration::from_secs(180)).expect("valid")
        );
    }
}

#[test]
fn inbounds_without_a_global_limit_serialize_as_before() {
    let s = set(&[policy(
        "web",
        "{kind: MeshService, name: web}",
        "{http: {requestRate: {num: 10, interval: 1s}}, failureMode: LocalShare}",
    )]);
    let cache = serde_json::to_value(inbound(&s, "default", "web-1", 6379)).expect("json");
    assert!(cache.get("global").is_none(), "{cache}");
    let old = r#"{"port":1,"servicePort":1,"service":"a","protocol":"tcp","http":null,"tcp":null,"policies":[]}"#;
    let read: InboundLimits = serde_json::from_str(old).expect("old JSON still reads");
    assert_eq!(read.global, None);

    let web = inbound(&s, "default", "web-1", 8080);
    let json = serde_json::to_value(&web).expect("json");
    assert_eq!(
        json["global"],
        serde_json::json!({
            "service": "web",
            "key": "mgrl/default/web/web",
            "requestRate": {"num": 10, "interval": "1s"},
            "share": {"num": 4, "interval": "1s"},
            "instances": 3,
            "index": 0,
            "mode": "Limit",
            "status": 429,
            "headers": {"set": [], "add": []},
            "timeout": "25ms",
            "failureMode": "LocalShare",
            "policy": "web",
            "policies": ["web"],
        })
    );
    let back: InboundLimits = serde_json::from_value(json).expect("reads back");
    assert_eq!(back, web);
}

/// Three to twelve Dataplanes of one service, in any order.
fn replicas(names: &[String]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "type: Dataplane\nname: {name}\nnetworking:\n  address: 10.0.1.{}\n  inbound:\n    - port: {}\n      tags: {{kuma.io/service: shop, kuma.io/protocol: http}}\n",
                i + 1,
                8000 + (i % 3)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

proptest! {
    #[test]
    fn every_instance_agrees_on_the_order_and_the_shares_add_up(
        names in proptest::sample::subsequence(
            (0..12).map(|i| format!("shop-{i:02}")).collect::<Vec<_>>(), 1..=12
        ).prop_shuffle(),
        num in 1u32..=40,
    ) {
        let yaml = format!(
            "{}---\n{}",
            replicas(&names),
            policy("shop", "{kind: MeshService, name: shop}", &format!("{{http: {{requestRate: {{num: {num}, interval: 1s}}}}}}"))
        );
        let s = ResourceSet::new(parse_documents("t", &yaml).expect("valid").resources)
            .expect("consistent");
        let mut sorted = names.clone();
        sorted.sort();
        let n = u32::try_from(names.len()).expect("few");
        let mut sum = 0u64;
        for limits in s.all_effective() {
            let g = limits.inbounds[0].global.clone().expect("limit");
            let index = sorted.iter().position(|d| *d == limits.dataplane).expect("listed");
            prop_assert_eq!((g.instances, g.index), (n, u32::try_from(index).expect("few")));
            prop_assert_eq!(g.share, share(g.request_rate, n, g.index));
            if num >= n {
                prop_assert_eq!(g.share.interval(), Duration::from_secs(1));
                sum += u64::from(g.share.num().get());
            }
        }
        if num >= n {
            prop_assert_eq!(sum, u64::from(num));
        }
    }
}
