//! One case per validation rule: the exact field path and message, as `validate` prints them.

use meshlimit_policy::{Problem, ResourceSet, parse_documents};

/// A MeshRateLimit document around the given `spec` body (indented by the caller as YAML
/// under `spec:`).
/// A MeshRateLimit around `spec`; without a targetRef, `rules` get a sidecar scope (Kuma 2.14
/// refuses `rules` on a scope that also covers gateways, as an omitted targetRef does).
fn mrl(spec: &str) -> String {
    let scoped;
    let spec = if spec.contains("rules:")
        && !spec.contains("targetRef: {")
        && !spec.starts_with("targetRef:")
        && !spec.contains("\ntargetRef:")
    {
        scoped = format!("targetRef: {{kind: Mesh, proxyTypes: [Sidecar]}}\n{spec}");
        scoped.as_str()
    } else {
        spec
    };
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("type: MeshRateLimit\nmesh: default\nname: p\nspec:\n{body}")
}

fn problems(yaml: &str) -> Vec<(String, String)> {
    match parse_documents("t.yaml", yaml) {
        Ok(p) => panic!("expected problems, got {:?}", p.resources),
        Err(problems) => problems.into_iter().map(|p| (p.path, p.message)).collect(),
    }
}

fn warnings(yaml: &str) -> Vec<(String, String)> {
    match parse_documents("t.yaml", yaml) {
        Ok(p) => p
            .warnings
            .into_iter()
            .map(|p| (p.path, p.message))
            .collect(),
        Err(problems) => panic!("expected no problems, got {problems:#?}"),
    }
}

fn set_problems(yaml: &str) -> Vec<String> {
    let parsed = parse_documents("t.yaml", yaml).expect("each document is valid");
    match ResourceSet::from_parsed(parsed) {
        Ok(_) => panic!("expected the set to be rejected"),
        Err(p) => p.iter().map(Problem::to_string).collect(),
    }
}

/// Kubernetes' DNS-1123 subdomain rule, which Kuma applies to every name.
const NAME_RULE: &str = "invalid name: must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)";

fn one(path: &str, message: &str) -> Vec<(String, String)> {
    vec![(path.to_string(), message.to_string())]
}

const LOCAL: &str = "spec.rules[0].default.local";

#[test]
fn local_must_be_defined() {
    assert_eq!(
        problems(&mrl("rules:\n  - default: {}")),
        one(LOCAL, "must be defined")
    );
    // A rule with no `default` at all reads the same way, as in Kuma.
    assert_eq!(
        problems(&mrl("rules:\n  - {}")),
        one(LOCAL, "must be defined")
    );
}

#[test]
fn local_needs_tcp_or_http() {
    assert_eq!(
        problems(&mrl("rules:\n  - default:\n      local: {}")),
        one(LOCAL, "must have at least one defined: tcp, http")
    );
}

#[test]
fn empty_http_and_tcp_are_rejected() {
    assert_eq!(
        problems(&mrl("rules:\n  - default:\n      local:\n        http: {}")),
        one(
            &format!("{LOCAL}.http"),
            "must have at least one defined: disabled, requestRate, onRateLimit"
        )
    );
    assert_eq!(
        problems(&mrl("rules:\n  - default:\n      local:\n        tcp: {}")),
        one(
            &format!("{LOCAL}.tcp"),
            "must have at least one defined: disabled, connectionRate"
        )
    );
}

#[test]
fn rate_num_must_be_positive() {
    assert_eq!(
        problems(&mrl(
            "rules:\n  - default:\n      local:\n        http:\n          requestRate: {num: 0, interval: 1s}"
        )),
        one(
            &format!("{LOCAL}.http.requestRate.num"),
            "must be greater than 0"
        )
    );
    assert_eq!(
        problems(&mrl(
            "rules:\n  - default:\n      local:\n        tcp:\n          connectionRate: {num: -3, interval: 1s}"
        )),
        one(
            &format!("{LOCAL}.tcp.connectionRate.num"),
            "must not be negative, found -3"
        )
    );
}

#[test]
fn rate_interval_must_exceed_50ms() {
    let at = |interval: &str| {
        mrl(&format!(
            "rules:\n  - default:\n      local:\n        http:\n          requestRate: {{num: 1, interval: {interval}}}"
        ))
    };
    for bad in ["50ms", "10ms", "0s", "\"0\""] {
        assert_eq!(
            problems(&at(bad)),
            one(
                &format!("{LOCAL}.http.requestRate.interval"),
                "must be greater than: 50ms"
            ),
            "{bad}"
        );
    }
    for good in ["51ms", "1s", "1m30s"] {
        assert!(parse_documents("t", &at(good)).is_ok(), "{good}");
    }
    assert_eq!(
        problems(&at("ten")),
        one(
            &format!("{LOCAL}.http.requestRate.interval"),
            "invalid duration \"ten\": expected a number"
        )
    );
}

#[test]
fn status_must_be_a_4xx_or_5xx() {
    let at = |status: &str| {
        mrl(&format!(
            "targetRef: {{kind: Mesh, proxyTypes: [Sidecar]}}\nrules:\n  - default:\n      local:\n        http:\n          onRateLimit: {{status: {status}}}"
        ))
    };
    // Kuma: `ValidateIntegerGreaterThanZeroOrNil` on onRateLimit.status.
    assert_eq!(
        problems(&at("0")),
        one(
            &format!("{LOCAL}.http.onRateLimit.status"),
            "must be greater than 0"
        )
    );
    // Kuma accepts these; Envoy's local_ratelimit answers 429 for a status below 400.
    for low in ["1", "200", "302", "399"] {
        assert_eq!(
            warnings(&at(low)),
            one(
                &format!("{LOCAL}.http.onRateLimit.status"),
                &format!(
                    "status {low} is below 400: Envoy answers 429 instead, and so does meshlimit"
                )
            ),
            "{low}"
        );
        let dp = "type: Dataplane\nname: dp\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 80\n      tags: {kuma.io/service: web, kuma.io/protocol: http}\n---\n";
        let rate = at(low).replace(
            "\n            onRateLimit:",
            "\n            requestRate: {num: 1, interval: 1s}\n            onRateLimit:",
        );
        let parsed = parse_documents("t", &format!("{dp}{rate}")).expect("accepted");
        let set = ResourceSet::from_parsed(parsed).expect("consistent");
        let limits = set.effective("default", "dp").expect("dataplane");
        let http = limits.inbounds[0].http.as_ref().expect("an HTTP limit");
        assert_eq!(http.status.code().as_u16(), 429, "{low}");
    }
    for bad in ["600", "99999999999"] {
        assert_eq!(
            problems(&at(bad)),
            one(
                &format!("{LOCAL}.http.onRateLimit.status"),
                "must be in inclusive range [400, 599]"
            ),
            "{bad}"
        );
    }
    for good in ["400", "429", "503", "599"] {
        assert!(parse_documents("t", &at(good)).is_ok(), "{good}");
    }
}

#[test]
fn from_and_to_entries_take_only_kind_mesh() {
    let from = "from:\n  - targetRef: {kind: MeshService, name: web}\n    default:\n      local:\n        tcp: {disabled: true}";
    assert_eq!(
        problems(&mrl(&format!(
            "targetRef: {{kind: Mesh, proxyTypes: [Sidecar]}}\n{from}"
        ))),
        one(
            "spec.from[0].targetRef.kind",
            "value 'MeshService' is not supported"
        )
    );
    let to = "to:\n  - targetRef: {kind: MeshSubset}\n    default:\n      local:\n        tcp: {disabled: true}";
    assert_eq!(
        problems(&mrl(&format!(
            "targetRef: {{kind: MeshGateway, name: edge}}\n{to}"
        ))),
        one(
            "spec.to[0].targetRef.kind",
            "value 'MeshSubset' is not supported"
        )
    );
    assert_eq!(
        problems(&mrl(
            "from:\n  - default:\n      local:\n        tcp: {disabled: true}"
        )),
        one("spec.from[0].targetRef", "must be defined")
    );
}

#[test]
fn from_and_rules_must_not_target_gateways() {
    let from = "from:\n  - targetRef: {kind: Mesh}\n    default:\n      local:\n        tcp: {disabled: true}";
    let gateway = "must not be defined when the scope includes a Gateway, select only proxyType Sidecar or select only gateways and use spec.to";
    for top in [
        "{kind: MeshGateway, name: edge}",
        "{kind: Mesh, proxyTypes: [Gateway]}",
        "{kind: MeshSubset, proxyTypes: [Sidecar, Gateway]}",
    ] {
        assert_eq!(
            problems(&mrl(&format!("targetRef: {top}\n{from}"))),
            one("spec.from", gateway),
            "{top}"
        );
    }
    assert_eq!(
        problems(&mrl(&format!(
            "targetRef: {{kind: MeshHTTPRoute, name: r}}\n{from}"
        ))),
        // Kuma 2.14 reports a MeshHTTPRoute scope as one that includes gateways.
        one("spec.from", gateway)
    );
    let rules = "rules:\n  - default:\n      local:\n        tcp: {disabled: true}";
    for top in [
        "{kind: MeshGateway, name: edge}",
        "{kind: MeshHTTPRoute, name: r}",
        "{kind: Mesh, proxyTypes: [Gateway]}",
    ] {
        assert_eq!(
            problems(&mrl(&format!("targetRef: {top}\n{rules}"))),
            one("spec.rules", "must not be defined"),
            "{top}"
        );
    }
}

#[test]
fn to_needs_a_gateway_scope() {
    let to = "to:\n  - targetRef: {kind: Mesh}\n    default:\n      local:\n        tcp: {disabled: true}";
    for top in [
        "{kind: MeshService, name: web}",
        "{kind: Mesh, proxyTypes: [Sidecar]}",
        "{kind: Dataplane, name: dp-1}",
    ] {
        assert_eq!(
            problems(&mrl(&format!("targetRef: {top}\n{to}"))),
            one("spec.to", "must not be defined"),
            "{top}"
        );
    }
    for top in [
        "{kind: MeshGateway, name: edge}",
        "{kind: Mesh}",
        "{kind: Mesh, proxyTypes: [Gateway]}",
    ] {
        assert!(
            parse_documents("t", &mrl(&format!("targetRef: {top}\n{to}"))).is_ok(),
            "{top}"
        );
    }
}

#[test]
fn rules_exclude_from_and_to() {
    let yaml = mrl(
        "targetRef: {kind: Mesh, proxyTypes: [Sidecar]}\nrules:\n  - default:\n      local:\n        tcp: {disabled: true}\nfrom:\n  - targetRef: {kind: Mesh}\n    default:\n      local:\n        tcp: {disabled: true}",
    );
    assert_eq!(
        problems(&yaml),
        one(
            "spec",
            "fields 'to' and 'from' must be empty when 'rules' is defined"
        )
    );
}

#[test]
fn spiffe_id_matches_cannot_limit_tcp() {
    let yaml = mrl(
        "targetRef: {kind: Mesh, proxyTypes: [Sidecar]}\nrules:\n  - matches:\n      - spiffeID: {type: Exact, value: spiffe://default/web}\n    default:\n      local:\n        tcp:\n          connectionRate: {num: 1, interval: 1s}",
    );
    assert_eq!(
        problems(&yaml),
        one(
            "spec.rules[0].default.local.tcp",
            "can't be specified when matches contain spiffeID because this field cannot be conditioned on source identity"
        )
    );
    // SNI matches may limit TCP.
    let sni = yaml.replace(
        "spiffeID: {type: Exact, value: spiffe://default/web}",
        "sni: {type: Exact, value: web.local}",
    );
    assert!(parse_documents("t", &sni).is_ok());
}

#[test]
fn matches_are_checked() {
    let at = |m: &str| {
        mrl(&format!(
            "targetRef: {{kind: Mesh, proxyTypes: [Sidecar]}}\nrules:\n  - matches:\n      - {m}\n    default:\n      local:\n        http: {{disabled: true}}"
        ))
    };
    let base = "spec.rules[0].matches[0]";
    assert_eq!(
        problems(&at("{}")),
        one(base, "must specify at least one of 'spiffeID' or 'sni'")
    );
    assert_eq!(
        problems(&at("sni: {type: Prefix, value: a}")),
        one(
            &format!("{base}.sni.type"),
            "unrecognized type \"Prefix\", supported values are: Exact"
        )
    );
    // Kuma's ValidateMatch: the value must parse as a SPIFFE ID (go-spiffe's reasons), an SNI
    // as a DNS-1123 subdomain; a missing type "must be set".
    let spiffe = format!("{base}.spiffeID");
    for (m, path, message) in [
        (
            "spiffeID: {type: Exact, value: web}",
            spiffe.clone(),
            "must be a valid Spiffe ID: scheme is missing or invalid",
        ),
        (
            "spiffeID: {type: Exact}",
            spiffe.clone(),
            "must be a valid Spiffe ID: cannot be empty",
        ),
        (
            "spiffeID: {type: Prefix, value: \"spiffe://default/ns/\"}",
            spiffe.clone(),
            "must be a valid Spiffe ID: path cannot have a trailing slash",
        ),
        (
            "spiffeID: {value: \"spiffe://default/ns\"}",
            format!("{spiffe}.type"),
            "must be set",
        ),
        (
            "sni: {value: web.mesh}",
            format!("{base}.sni.type"),
            "must be set",
        ),
        (
            "sni: {type: Exact}",
            format!("{base}.sni.value"),
            "must be set",
        ),
        (
            "sni: {type: Exact, value: Web_Mesh}",
            format!("{base}.sni.value"),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ),
    ] {
        assert_eq!(problems(&at(m)), one(&path, message), "{m}");
    }
    // Kuma takes a spiffeID and an SNI in one entry (both must match), and refuses TCP there.
    let both = "{spiffeID: {type: Exact, value: \"spiffe://default/web\"}, sni: {type: Exact, value: web.mesh}}";
    assert!(parse_documents("t.yaml", &at(both)).is_ok());
    let tcp = at(both).replace("http: {disabled: true}", "tcp: {disabled: true}");
    assert_eq!(
        problems(&tcp),
        one(
            "spec.rules[0].default.local.tcp",
            "can't be specified when matches contain spiffeID because this field cannot be conditioned on source identity"
        )
    );
}

#[test]
fn from_is_deprecated_and_an_implicit_gateway_scope_is_flagged() {
    let from = "from:\n  - targetRef: {kind: Mesh}\n    default:\n      local:\n        tcp: {disabled: true}";
    assert_eq!(
        warnings(&mrl(&format!(
            "targetRef: {{kind: Mesh, proxyTypes: [Sidecar]}}\n{from}"
        ))),
        one(
            "spec.from",
            "'from' field is deprecated, use 'rules' instead"
        )
    );
    let w = warnings(&mrl(from));
    assert_eq!(w.len(), 2);
    assert_eq!(w[1].0, "spec.targetRef");
    assert!(
        w[1].1
            .starts_with("the scope also includes gateways, where 'from' does not apply"),
        "{}",
        w[1].1
    );
}

#[test]
fn header_names_values_and_counts_are_checked() {
    let at = |set: &str| {
        mrl(&format!(
            "rules:\n  - default:\n      local:\n        http:\n          onRateLimit:\n            headers:\n              set: {set}"
        ))
    };
    let path = format!("{LOCAL}.http.onRateLimit.headers.set");
    let name_rule = "must be 1 to 256 characters matching ^[a-z0-9!#$%&'*+\\-.^_`|~]+$ (lowercase)";
    for bad in ["X-Limited", "", "a b", "ä"] {
        assert_eq!(
            problems(&at(&format!("[{{name: \"{bad}\", value: v}}]"))),
            one(&format!("{path}[0].name"), name_rule),
            "{bad:?}"
        );
    }
    let long = "a".repeat(257);
    assert_eq!(
        problems(&at(&format!("[{{name: {long}, value: v}}]"))),
        one(&format!("{path}[0].name"), name_rule)
    );
    assert!(
        parse_documents(
            "t",
            &at(&format!("[{{name: {}, value: v}}]", "a".repeat(256)))
        )
        .is_ok()
    );
    assert_eq!(
        problems(&at("[{name: x-a, value: \"a\\r\\nb: c\"}]")),
        one(
            &format!("{path}[0].value"),
            "must not contain control characters such as newlines"
        )
    );
    let many: Vec<String> = (0..17)
        .map(|i| format!("{{name: h{i}, value: v}}"))
        .collect();
    assert_eq!(
        problems(&at(&format!("[{}]", many.join(", ")))),
        one(&path, "must have at most 16 items")
    );
    assert!(parse_documents("t", &at(&format!("[{}]", many[..16].join(", ")))).is_ok());
}

#[test]
fn headers_that_frame_the_response_are_refused() {
    let at = |list: &str, name: &str| {
        mrl(&format!(
            "rules:\n  - default:\n      local:\n        http:\n          onRateLimit:\n            headers:\n              {list}: [{{name: \"{name}\", value: v}}]"
        ))
    };
    for list in ["set", "add"] {
        let path = format!("{LOCAL}.http.onRateLimit.headers.{list}[0].name");
        for name in [
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "host",
        ] {
            assert_eq!(
                problems(&at(list, name)),
                one(
                    &path,
                    &format!(
                        "must not be a hop-by-hop or framing header ({name}): the proxy sets it"
                    )
                ),
                "{list} {name}"
            );
        }
        // Pseudo-headers are not tokens.
        for name in [":status", ":authority"] {
            assert_eq!(
                problems(&at(list, name)),
                one(
                    &path,
                    "must be 1 to 256 characters matching ^[a-z0-9!#$%&'*+\\-.^_`|~]+$ (lowercase)"
                ),
                "{list} {name}"
            );
        }
        // Names that only contain a framing header's name are fine.
        for name in ["x-content-length", "content-type", "tes", "retry-after"] {
            assert!(
                parse_documents("t", &at(list, name)).is_ok(),
                "{list} {name}"
            );
        }
    }
}

#[test]
fn top_level_target_kinds_and_their_fields() {
    let at = |top: &str| {
        mrl(&format!(
            "targetRef: {top}\nrules:\n  - default:\n      local:\n        http: {{disabled: true}}"
        ))
    };
    assert_eq!(
        problems(&at("{kind: MeshExternalService, name: x}")),
        one(
            "spec.targetRef.kind",
            "value 'MeshExternalService' is not supported"
        )
    );
    assert_eq!(
        problems(&at("{kind: MeshSubsett}")),
        one(
            "spec.targetRef.kind",
            "value 'MeshSubsett' is not supported (did you mean 'MeshSubset'?)"
        )
    );
    assert_eq!(
        problems(&at("{kind: Mesh, proxyTypes: [Sidecar], name: x}")),
        one(
            "spec.targetRef.name",
            "using name with kind Mesh is not yet supported"
        )
    );
    assert_eq!(
        problems(&at("{kind: MeshService}")),
        one(
            "spec.targetRef",
            "name or labels must be set when kind is MeshService"
        )
    );
    assert_eq!(
        problems(&at("{kind: MeshService, name: web, proxyTypes: [Sidecar]}")),
        one(
            "spec.targetRef.proxyTypes",
            "must not be set with kind MeshService"
        )
    );
    assert_eq!(
        problems(&at("{kind: Dataplane, name: a, labels: {app: b}}")),
        one(
            "spec.targetRef.labels",
            "either labels or name and namespace must be specified"
        )
    );
    // Kuma: a Dataplane targetRef with only sectionName selects that inbound of every
    // Dataplane in an inbound policy.
    assert!(parse_documents("t.yaml", &at("{kind: Dataplane, sectionName: http}")).is_ok());
    assert_eq!(
        problems(&at("{kind: Mesh, proxyTypes: [Sidecar, Sidecars]}")),
        one(
            "spec.targetRef.proxyTypes[1]",
            "value 'Sidecars' is not supported (expected Sidecar or Gateway)"
        )
    );
    assert_eq!(
        problems(&at("{kind: Mesh, proxyTypes: []}")),
        [
            (
                "spec.targetRef.proxyTypes".to_string(),
                "must be undefined or have at least one element".to_string()
            ),
            // With no proxy type given, the scope includes gateways.
            ("spec.rules".to_string(), "must not be defined".to_string())
        ]
    );
    assert_eq!(
        problems(&at(
            "{kind: MeshSubset, proxyTypes: [Sidecar], tags: {app: \"\"}}"
        )),
        one(
            "spec.targetRef.tags[\"app\"]",
            "tag value must be non-empty"
        )
    );
}

#[test]
fn unknown_fields_suggest_the_nearest_name() {
    let cases = [
        (
            "spek: {}",
            "spek",
            "unknown field 'spek' (did you mean 'spec'?)",
        ),
        (
            "spec:\n  rule: []",
            "spec.rule",
            "unknown field 'rule' (did you mean 'rules'?)",
        ),
        (
            "spec:\n  targetRef: {kind: Dataplane}\n  rules:\n    - defaults: {}",
            "spec.rules[0].defaults",
            "unknown field 'defaults' (did you mean 'default'?)",
        ),
        (
            "spec:\n  targetRef: {kind: Dataplane}\n  rules:\n    - default:\n        local:\n          http:\n            requestRate: {num: 1, intervall: 1s}",
            "spec.rules[0].default.local.http.requestRate.intervall",
            "unknown field 'intervall' (did you mean 'interval'?)",
        ),
        (
            "spec:\n  targetRef: {kind: Dataplane}\n  rules:\n    - default:\n        local:\n          tcp: {connectionrate: {num: 1, interval: 1s}, burst: 3}",
            "spec.rules[0].default.local.tcp.connectionrate",
            "unknown field 'connectionrate' (did you mean 'connectionRate'?)",
        ),
    ];
    for (body, path, message) in cases {
        let yaml = format!("type: MeshRateLimit\nname: p\n{body}");
        let found = problems(&yaml);
        assert!(
            found.contains(&(path.to_string(), message.to_string())),
            "{body}: {found:#?}"
        );
    }
    assert!(
        problems("type: MeshRateLimit\nname: p\nspec: {}\nzzzzzz: 1").contains(&(
            "zzzzzz".into(),
            "unknown field 'zzzzzz' (expected one of: type, mesh, name, labels, spec)".into()
        ))
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    let at = |rate: &str| {
        mrl(&format!(
            "rules:\n  - default:\n      local:\n        http:\n          requestRate: {rate}"
        ))
    };
    let path = format!("{LOCAL}.http.requestRate");
    assert_eq!(
        problems(&at("{num: \"5\", interval: 1s}")),
        one(
            &format!("{path}.num"),
            "expected an integer, found a string (\"5\")"
        )
    );
    assert_eq!(
        problems(&at("{num: 5, interval: 10}")),
        one(
            &format!("{path}.interval"),
            "expected a duration such as \"10s\" or \"500ms\", found an integer (10)"
        )
    );
    assert_eq!(
        problems(&at("[5, 1s]")),
        one(&path, "expected a mapping, found a list")
    );
    assert_eq!(
        problems(&mrl(
            "rules:\n  - default:\n      local:\n        http: {disabled: \"yes\"}"
        )),
        one(
            &format!("{LOCAL}.http.disabled"),
            "expected true or false, found a string (\"yes\")"
        )
    );
    assert_eq!(
        problems(&mrl(
            "targetRef: {kind: MeshSubset, tags: {version: 2}}\nrules: []"
        )),
        one(
            "spec.targetRef.tags[\"version\"]",
            "expected a string, found an integer (2) (quote it to make it a string)"
        )
    );
    assert_eq!(
        problems(&mrl("rules: {}")),
        one("spec.rules", "expected a list, found a mapping")
    );
    // A list is a list of resources (as `get -o json` prints); each item must be one.
    assert_eq!(
        problems("- a\n- [b]"),
        [
            (
                "[0]",
                "expected a mapping (a resource), found a string (\"a\")"
            ),
            ("[1]", "expected a mapping (a resource), found a list")
        ]
        .map(|(p, m)| (p.to_string(), m.to_string()))
    );
    assert_eq!(
        problems(&format!("- {}", mrl("rules: {}").replace('\n', "\n  "))),
        one("[0].spec.rules", "expected a list, found a mapping")
    );
}

#[test]
fn documents_need_a_known_kind_and_a_name() {
    assert_eq!(
        problems("name: x"),
        one(
            "",
            "not a resource: expected 'type' (Kuma universal form) or 'apiVersion' and 'kind' (Kubernetes form)"
        )
    );
    assert_eq!(
        problems("type: MeshRatelimit\nname: x"),
        one(
            "type",
            "value 'MeshRatelimit' is not supported (did you mean 'MeshRateLimit'?)"
        )
    );
    assert_eq!(
        problems("type: RateLimit\nname: x"),
        one(
            "type",
            "value 'RateLimit' is not supported: a kernel RateLimit is written with apiVersion: kmesh.net/v1alpha1 and kind: RateLimit"
        )
    );
    assert_eq!(problems("type: Mesh"), one("name", "must be defined"));
    assert_eq!(problems("type: Mesh\nname: Prod"), one("name", NAME_RULE));
    assert_eq!(
        problems("apiVersion: kuma.io/v1beta1\nkind: MeshRateLimit\nmetadata: {name: x}\nspec: {}"),
        one(
            "apiVersion",
            "value 'kuma.io/v1beta1' is not supported for kind MeshRateLimit (expected kuma.io/v1alpha1)"
        )
    );
    assert_eq!(
        problems("apiVersion: kuma.io/v1alpha1\nkind: MeshRateLimit\nspec: {}"),
        one("metadata.name", "must be defined")
    );
    assert_eq!(
        problems("type: MeshRateLimit\nname: x"),
        one("spec", "must be defined")
    );
}

#[test]
fn kubernetes_form_takes_the_mesh_from_its_label() {
    let parsed = parse_documents(
        "t",
        "apiVersion: kuma.io/v1alpha1\nkind: MeshRateLimit\nmetadata:\n  name: p\n  namespace: kuma-demo\n  labels:\n    kuma.io/mesh: demo\nspec:\n  targetRef: {kind: Dataplane}\n  rules:\n    - default:\n        local:\n          http: {disabled: true}",
    )
    .expect("valid");
    let r = &parsed.resources[0];
    assert_eq!((r.name(), r.mesh()), ("p", "demo"));
}

#[test]
fn rate_limit_values_must_be_positive_and_intervals_at_least_1ms() {
    let at = |rule: &str| {
        format!(
            "apiVersion: kmesh.net/v1alpha1\nkind: RateLimit\nmetadata: {{name: r}}\nspec:\n  service: s\n  rules:\n    - {rule}"
        )
    };
    let p = "spec.rules[0]";
    assert_eq!(
        problems(&at(
            "{maxTokens: 0, tokensPerFill: 1, fillInterval: 1000000}"
        )),
        one(&format!("{p}.maxTokens"), "must be greater than 0")
    );
    assert_eq!(
        problems(&at(
            "{maxTokens: 1, tokensPerFill: 0, fillInterval: 1000000}"
        )),
        one(&format!("{p}.tokensPerFill"), "must be greater than 0")
    );
    for bad in ["0", "999999"] {
        assert_eq!(
            problems(&at(&format!(
                "{{maxTokens: 1, tokensPerFill: 1, fillInterval: {bad}}}"
            ))),
            one(
                &format!("{p}.fillInterval"),
                "must be at least 1000000 (1ms, in nanoseconds)"
            )
        );
    }
    assert_eq!(
        problems(&at("{maxTokens: 1, tokensPerFill: 1, fillInterval: -5}")),
        one(
            &format!("{p}.fillInterval"),
            "must not be negative, found -5"
        )
    );
    assert_eq!(
        problems(&at("{maxTokens: 1, tokensPerFill: 1}")),
        one(&format!("{p}.fillInterval"), "must be defined")
    );
    assert!(
        parse_documents(
            "t",
            &at("{maxTokens: 1, tokensPerFill: 1, fillInterval: 1000000}")
        )
        .is_ok()
    );
    assert_eq!(
        problems(&at("{maxTokens: 1, tokensPerFill: 1, fillInterval: 1s}")),
        one(
            &format!("{p}.fillInterval"),
            "expected an integer, found a string (\"1s\")"
        )
    );
}

#[test]
fn rate_limit_forms_are_exclusive_and_complete() {
    let doc = |spec: &str| {
        format!(
            "apiVersion: kmesh.net/v1alpha1\nkind: RateLimit\nmetadata: {{name: r}}\nspec: {spec}"
        )
    };
    let rule = "{maxTokens: 1, tokensPerFill: 1, fillInterval: 1000000}";
    assert_eq!(
        problems(&doc(&format!(
            "{{service: a, rules: [{rule}], services: [{{name: b, rules: [{rule}]}}]}}"
        ))),
        one(
            "spec.services",
            "must not be defined together with 'service' and 'rules' (use one form)"
        )
    );
    assert_eq!(
        problems(&doc("{}")),
        one("spec", "must have at least one defined: service, services")
    );
    assert_eq!(
        problems(&doc("{service: a}")),
        one("spec.rules", "must be defined")
    );
    assert_eq!(
        problems(&doc("{service: a, rules: []}")),
        one("spec.rules", "must have at least one element")
    );
    assert_eq!(
        problems(&doc(&format!("{{service: a, rules: [{rule}, {rule}]}}"))),
        one(
            "spec.rules[1]",
            "only one rule per service is supported (the kernel keeps one token bucket per destination)"
        )
    );
    assert_eq!(
        problems(&doc(&format!(
            "{{services: [{{name: a, rules: [{rule}]}}, {{name: a, rules: [{rule}]}}]}}"
        ))),
        one(
            "spec.services[1].name",
            "service 'a' is already listed at spec.services[0]"
        )
    );
    assert_eq!(
        problems(&doc("{services: []}")),
        one("spec.services", "must have at least one element")
    );
}

#[test]
fn dataplanes_need_an_address_and_unique_inbound_ports() {
    let dp = |networking: &str| format!("type: Dataplane\nname: d\nnetworking: {networking}");
    let inbound = "{port: 8080, tags: {kuma.io/service: web}}";
    assert_eq!(
        problems(&dp(&format!("{{inbound: [{inbound}]}}"))),
        one("networking.address", "must be defined")
    );
    assert_eq!(
        problems(&dp(&format!(
            "{{address: \"10.0.0.300\", inbound: [{inbound}]}}"
        ))),
        one(
            "networking.address",
            "'10.0.0.300' is not a valid IP address or domain name"
        )
    );
    assert_eq!(
        problems(&dp(&format!(
            "{{address: 10.0.0.1, inbound: [{inbound}, {inbound}]}}"
        ))),
        one(
            "networking.inbound[1].port",
            "port 8080 is already used by networking.inbound[0]"
        )
    );
    assert_eq!(
        problems(&dp(
            "{address: 10.0.0.1, inbound: [{port: 0, tags: {kuma.io/service: web}}]}"
        )),
        one(
            "networking.inbound[0].port",
            "must be in inclusive range [1, 65535]"
        )
    );
    assert_eq!(
        problems(&dp(
            "{address: 10.0.0.1, inbound: [{port: 80, servicePort: 65536, tags: {kuma.io/service: web}}]}"
        )),
        one(
            "networking.inbound[0].servicePort",
            "must be in inclusive range [1, 65535]"
        )
    );
    assert_eq!(
        problems(&dp(
            "{address: 10.0.0.1, inbound: [{port: 80, tags: {app: web}}]}"
        )),
        one(
            "networking.inbound[0].tags",
            "mandatory tag \"kuma.io/service\" is missing"
        )
    );
    assert_eq!(
        problems(&dp("{address: 10.0.0.1}")),
        one(
            "networking",
            "has to contain at least one inbound interface, listener or gateway"
        )
    );
    assert!(
        parse_documents(
            "t",
            &dp(&format!("{{address: backend.local, inbound: [{inbound}]}}"))
        )
        .is_ok()
    );
    assert!(
        parse_documents(
            "t",
            &dp(&format!("{{address: \"::1\", inbound: [{inbound}]}}"))
        )
        .is_ok()
    );
}

#[test]
fn names_are_unique_per_kind_and_mesh() {
    let mesh_policy = |name: &str, mesh: &str| {
        format!(
            "type: MeshRateLimit\nname: {name}\nmesh: {mesh}\nspec:\n  targetRef: {{kind: Dataplane}}\n  rules:\n    - default:\n        local:\n          http: {{disabled: true}}\n"
        )
    };
    let yaml = [
        "type: Mesh\nname: demo\n".to_string(),
        mesh_policy("p", "default"),
        mesh_policy("p", "demo"),
        "type: Dataplane\nname: p\nnetworking: {address: 10.0.0.1, inbound: [{port: 1, tags: {kuma.io/service: a}}]}\n".into(),
        mesh_policy("p", "default"),
    ]
    .join("---\n");
    assert_eq!(
        set_problems(&yaml),
        [
            "t.yaml: document 5 (MeshRateLimit p): name: duplicate MeshRateLimit 'p' in mesh 'default' (first defined in t.yaml, document 2): names must be unique per kind and mesh"
        ]
    );
}

#[test]
fn meshes_must_exist() {
    let yaml = "type: Dataplane\nname: d\nmesh: prod\nnetworking: {address: 10.0.0.1, inbound: [{port: 1, tags: {kuma.io/service: a}}]}\n";
    assert_eq!(
        set_problems(yaml),
        [
            "t.yaml: document 1 (Dataplane d): mesh: mesh 'prod' is not defined (add a Mesh named 'prod')"
        ]
    );
    assert!(
        ResourceSet::from_parsed(
            parse_documents("t", &format!("type: Mesh\nname: prod\n---\n{yaml}")).expect("valid")
        )
        .is_ok()
    );
}

#[test]
fn a_service_has_at_most_one_kernel_limit() {
    let rl = |name: &str| {
        format!(
            "apiVersion: kmesh.net/v1alpha1\nkind: RateLimit\nmetadata: {{name: {name}}}\nspec:\n  service: web\n  rules: [{{maxTokens: 1, tokensPerFill: 1, fillInterval: 1000000}}]\n"
        )
    };
    assert_eq!(
        set_problems(&format!("{}---\n{}", rl("a"), rl("b"))),
        [
            "t.yaml: document 2 (RateLimit b): spec.service: service 'web' already has a kernel rate limit in RateLimit 'a' (the kernel keeps one bucket per destination)"
        ]
    );
}

#[test]
fn every_problem_of_a_document_is_reported_at_once() {
    let yaml = mrl(
        "targetRef: {kind: MeshServic, name: web}\nrules:\n  - default:\n      local:\n        http:\n          requestRate: {num: 0, interval: 1ms}\n          onRateLimit: {status: 0}\n        tcp: {}",
    );
    let found = problems(&yaml);
    let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.targetRef.kind",
            "spec.rules[0].default.local.http.requestRate.num",
            "spec.rules[0].default.local.http.requestRate.interval",
            "spec.rules[0].default.local.http.onRateLimit.status",
            "spec.rules[0].default.local.tcp",
        ]
    );
}

#[test]
fn a_destination_has_at_most_one_kernel_bucket() {
    // Each RateLimit lists a service of its own first, so the conflict is at services[1].
    let rl = |name: &str, service: &str, max: u64| {
        format!(
            "apiVersion: kmesh.net/v1alpha1\nkind: RateLimit\nmetadata: {{name: {name}}}\nspec:\n  services:\n    - name: only-{name}\n      rules: [{{maxTokens: 1, tokensPerFill: 1, fillInterval: 1000000}}]\n    - name: {service}\n      rules: [{{maxTokens: {max}, tokensPerFill: 1, fillInterval: 1000000}}]\n"
        )
    };
    let dp = |name: &str, address: &str, service: &str| {
        format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n    - port: 80\n      tags: {{kuma.io/service: {service}}}\n"
        )
    };
    // Two services on one address and port (written as IPv4 and as v4-mapped IPv6), limited
    // differently: the kernel could enforce only one of them.
    let yaml = [
        dp("web-1", "10.0.0.1", "web"),
        dp("api-1", "::ffff:10.0.0.1", "api"),
        rl("a", "web", 5),
        rl("b", "api", 7),
    ]
    .join("---\n");
    assert_eq!(
        set_problems(&yaml),
        [
            "t.yaml: document 4 (RateLimit b): spec.services[1].name: service 'api' reaches 10.0.0.1:80 (Dataplane 'api-1'), which RateLimit 'a' already limits for service 'web' in mesh 'default' with other settings (maxTokens 7, tokensPerFill 1, fillInterval 1000000 here, maxTokens 5, tokensPerFill 1, fillInterval 1000000 there): the kernel keeps one token bucket per destination, so give both the same settings or give the Dataplanes different addresses or ports"
        ]
    );
    // The same settings share the one bucket; distinct destinations do not meet.
    let same = yaml.replace("maxTokens: 7", "maxTokens: 5");
    let distinct = yaml.replace("::ffff:10.0.0.1", "10.0.0.2");
    for ok in [same, distinct] {
        let set = ResourceSet::from_parsed(parse_documents("t.yaml", &ok).expect("valid"))
            .expect("consistent");
        assert_eq!(set.kernel_limits().len(), 2);
    }
}

/// Issue: names `.`, `..` and leading/trailing `-` were accepted. Kuma (and Kubernetes) take
/// a DNS-1123 subdomain: labels of `[a-z0-9-]` starting and ending alphanumeric, joined by `.`.
#[test]
fn names_are_dns1123_subdomains() {
    for bad in [
        ".", "..", "-a", "a-", "a..b", ".a", "a.", "a_b", "A", "a*", "\"*\"", "a.-b", "a-.b",
    ] {
        assert_eq!(
            problems(&format!("type: Mesh\nname: {bad}")),
            one("name", NAME_RULE),
            "{bad}"
        );
        assert_eq!(
            problems(&format!(
                "type: MeshRateLimit\nmesh: {bad}\nname: p\nspec: {{}}"
            )),
            one("mesh", NAME_RULE),
            "mesh {bad}"
        );
    }
    for good in [
        "a",
        "\"0\"",
        "a-b",
        "a.b",
        "a--b.c-d",
        "web-1.default",
        "x9",
    ] {
        assert!(
            parse_documents("t.yaml", &format!("type: Mesh\nname: {good}")).is_ok(),
            "{good}"
        );
    }
    assert_eq!(
        problems(&format!("type: Mesh\nname: {}", "a".repeat(254))),
        one("name", "must be at most 253 characters")
    );
}

/// Kuma's generic targetRef validator (`ValidateTargetRef`): `mesh` is refused with every
/// kind, and the kinds naming another resource take only Kuma's name characters.
#[test]
fn target_ref_mesh_and_name_follow_kuma() {
    let at = |target: &str| mrl(&format!("targetRef: {target}\nto: []"));
    for (target, kind) in [
        ("{kind: Mesh, mesh: other}", "Mesh"),
        (
            "{kind: MeshSubset, tags: {app: a}, mesh: other}",
            "MeshSubset",
        ),
        ("{kind: MeshService, name: web, mesh: other}", "MeshService"),
        ("{kind: Dataplane, name: dp-1, mesh: other}", "Dataplane"),
        (
            "{kind: MeshGateway, name: edge, mesh: other}",
            "MeshGateway",
        ),
    ] {
        assert_eq!(
            problems(&at(target)),
            one(
                "spec.targetRef.mesh",
                &format!("must not be set with kind {kind}")
            ),
            "{target}"
        );
    }
    let name_rule =
        "invalid characters: must consist of lower case alphanumeric characters, '-', '.' and '_'.";
    for bad in ["\"*\"", "Web", "web/1", "a b"] {
        assert_eq!(
            problems(&at(&format!("{{kind: MeshService, name: {bad}}}"))),
            one("spec.targetRef.name", name_rule),
            "{bad}"
        );
    }
    // Legacy service names carry underscores (`backend_kuma-demo_svc_8080`).
    assert!(
        parse_documents(
            "t.yaml",
            &at("{kind: MeshService, name: backend_kuma-demo_svc_8080}")
        )
        .is_ok()
    );
}

/// Kuma's `validateTagKeyValues` (`ValidateTags` for MeshSubset, `ValidateSelector` for
/// MeshServiceSubset and MeshGateway): its messages, an empty tag name reported at `tags`.
#[test]
fn target_ref_tags_follow_kuma() {
    let at = |target: &str| mrl(&format!("targetRef: {target}\nto: []"));
    let name_rule =
        "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores";
    let cases: &[(&str, &str, &str)] = &[
        (
            "{kind: MeshSubset, tags: {\"\": a}}",
            "spec.targetRef.tags",
            "tag name must be non-empty",
        ),
        (
            "{kind: MeshSubset, tags: {\"a b\": a}}",
            "spec.targetRef.tags[\"a b\"]",
            name_rule,
        ),
        (
            "{kind: MeshSubset, tags: {app: \"*\"}}",
            "spec.targetRef.tags[\"app\"]",
            "tag value must consist of alphanumeric characters, dots, dashes and underscores",
        ),
        (
            "{kind: MeshSubset, tags: {app: a/b}}",
            "spec.targetRef.tags[\"app\"]",
            "tag value must consist of alphanumeric characters, dots, dashes and underscores",
        ),
        (
            "{kind: MeshServiceSubset, name: web, tags: {app: \"a b\"}}",
            "spec.targetRef.tags[\"app\"]",
            "tag value must consist of alphanumeric characters, dots, dashes, slashes and underscores or be \"*\"",
        ),
    ];
    for (target, path, message) in cases {
        assert_eq!(problems(&at(target)), one(path, message), "{target}");
    }
    for good in [
        "{kind: MeshSubset, tags: {kuma.io/zone: east, version: v1.2_x:y}}",
        "{kind: MeshServiceSubset, name: web, tags: {version: \"*\"}}",
        "{kind: MeshServiceSubset, name: web, tags: {path: a/b}}",
    ] {
        assert!(parse_documents("t.yaml", &at(good)).is_ok(), "{good}");
    }
}
