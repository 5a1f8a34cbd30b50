//! Kuma's matching and merging, one table row (or test) per rule of the algorithm.

use std::time::Duration;

use meshlimit_policy::{HeaderValue, InboundLimits, Rate, ResourceSet, Source, parse_documents};

const DATAPLANES: &str = r#"
type: Dataplane
name: dp-1
labels: {zone: east}
networking:
  address: 10.0.0.1
  inbound:
    - port: 8080
      name: api
      tags: {kuma.io/service: web, kuma.io/protocol: http, version: v1, team: a}
    - port: 9090
      tags: {kuma.io/service: web-admin, kuma.io/protocol: http2, version: v1}
    - port: 6379
      tags: {kuma.io/service: cache}
---
type: Dataplane
name: dp-2
labels: {zone: west}
networking:
  address: 10.0.0.2
  inbound:
    - port: 8080
      tags: {kuma.io/service: web, kuma.io/protocol: grpc, version: v2}
---
type: Dataplane
name: gw-1
networking:
  address: 10.0.0.9
  gateway:
    type: BUILTIN
    tags: {kuma.io/service: edge}
---
type: Mesh
name: other
"#;

/// A MeshRateLimit with one catch-all rule; a scope that also covers gateways (Mesh or
/// MeshSubset without proxyTypes) takes it as a `from` entry, as Kuma 2.14 refuses `rules`
/// there (meshlimit accepts such a `from`, as Kuma 2.5 did).
fn policy(name: &str, target: &str, local: &str) -> String {
    let gateways = (target.contains("kind: Mesh,")
        || target.contains("kind: Mesh}")
        || target.contains("kind: MeshSubset"))
        && !target.contains("proxyTypes");
    let entries = if gateways {
        format!("from:\n    - targetRef: {{kind: Mesh}}\n      default:\n        local: {local}\n")
    } else {
        format!("rules:\n    - default:\n        local: {local}\n")
    };
    format!("type: MeshRateLimit\nname: {name}\nspec:\n  targetRef: {target}\n  {entries}")
}

/// HTTP `num` requests per second.
fn http(num: u32) -> String {
    format!("{{http: {{requestRate: {{num: {num}, interval: 1s}}}}}}")
}

fn set(policies: &[String]) -> ResourceSet {
    let mut docs = vec![DATAPLANES.to_string()];
    docs.extend(policies.iter().cloned());
    let parsed =
        parse_documents("t.yaml", &docs.join("\n---\n")).unwrap_or_else(|p| panic!("{p:#?}"));
    ResourceSet::from_parsed(parsed).unwrap_or_else(|p| panic!("{p:#?}"))
}

fn inbound(set: &ResourceSet, dp: &str, port: u16) -> InboundLimits {
    let limits = set.effective("default", dp).expect("dataplane");
    limits
        .inbounds
        .into_iter()
        .find(|i| i.port == port)
        .expect("inbound")
}

fn http_num(i: &InboundLimits) -> Option<u32> {
    i.http.as_ref().map(|h| h.request_rate.num().get())
}

struct Case {
    rule: &'static str,
    policies: Vec<String>,
    /// (dataplane, port, expected HTTP num, expected contributing policies)
    expect: Vec<(&'static str, u16, Option<u32>, Vec<&'static str>)>,
}

#[test]
fn selection_by_target_ref_kind() {
    let cases = vec![
        Case {
            rule: "Mesh selects every inbound of every sidecar",
            policies: vec![policy("all", "{kind: Mesh}", &http(1))],
            expect: vec![
                ("dp-1", 8080, Some(1), vec!["all"]),
                ("dp-1", 9090, Some(1), vec!["all"]),
                ("dp-2", 8080, Some(1), vec!["all"]),
            ],
        },
        Case {
            rule: "an omitted targetRef means Mesh",
            policies: vec![format!(
                "type: MeshRateLimit\nname: implicit\nspec:\n  from:\n    - targetRef: {{kind: Mesh}}\n      default:\n        local: {}\n",
                http(2)
            )],
            expect: vec![
                ("dp-1", 8080, Some(2), vec!["implicit"]),
                ("dp-2", 8080, Some(2), vec!["implicit"]),
            ],
        },
        Case {
            rule: "proxyTypes [Sidecar] keeps sidecars",
            policies: vec![policy(
                "sidecars",
                "{kind: Mesh, proxyTypes: [Sidecar]}",
                &http(12),
            )],
            expect: vec![
                ("dp-1", 8080, Some(12), vec!["sidecars"]),
                ("dp-2", 8080, Some(12), vec!["sidecars"]),
            ],
        },
        Case {
            rule: "MeshSubset needs every tag on the inbound",
            policies: vec![policy(
                "v1-team-a",
                "{kind: MeshSubset, tags: {version: v1, team: a}}",
                &http(3),
            )],
            expect: vec![
                ("dp-1", 8080, Some(3), vec!["v1-team-a"]),
                ("dp-1", 9090, None, vec![]),
                ("dp-2", 8080, None, vec![]),
            ],
        },
        Case {
            rule: "MeshService selects inbounds whose kuma.io/service is the name",
            policies: vec![policy("web", "{kind: MeshService, name: web}", &http(4))],
            expect: vec![
                ("dp-1", 8080, Some(4), vec!["web"]),
                ("dp-1", 9090, None, vec![]),
                ("dp-2", 8080, Some(4), vec!["web"]),
            ],
        },
        Case {
            rule: "MeshServiceSubset needs the service and the tags",
            policies: vec![policy(
                "web-v2",
                "{kind: MeshServiceSubset, name: web, tags: {version: v2}}",
                &http(5),
            )],
            expect: vec![
                ("dp-1", 8080, None, vec![]),
                ("dp-2", 8080, Some(5), vec!["web-v2"]),
            ],
        },
        Case {
            rule: "Dataplane by name selects all its inbounds",
            policies: vec![policy("dp1", "{kind: Dataplane, name: dp-1}", &http(6))],
            expect: vec![
                ("dp-1", 8080, Some(6), vec!["dp1"]),
                ("dp-1", 9090, Some(6), vec!["dp1"]),
                ("dp-2", 8080, None, vec![]),
            ],
        },
        Case {
            rule: "Dataplane by labels",
            policies: vec![policy(
                "west",
                "{kind: Dataplane, labels: {zone: west}}",
                &http(7),
            )],
            expect: vec![
                ("dp-1", 8080, None, vec![]),
                ("dp-2", 8080, Some(7), vec!["west"]),
            ],
        },
        Case {
            rule: "sectionName narrows to one inbound, by inbound name or port",
            policies: vec![
                policy(
                    "by-name",
                    "{kind: Dataplane, name: dp-1, sectionName: api}",
                    &http(8),
                ),
                policy(
                    "by-port",
                    "{kind: Dataplane, labels: {zone: east}, sectionName: \"9090\"}",
                    &http(9),
                ),
            ],
            expect: vec![
                ("dp-1", 8080, Some(8), vec!["by-name"]),
                ("dp-1", 9090, Some(9), vec!["by-port"]),
                ("dp-2", 8080, None, vec![]),
            ],
        },
        Case {
            rule: "MeshGateway and MeshHTTPRoute select no sidecar inbound",
            policies: vec![format!(
                "type: MeshRateLimit\nname: edge\nspec:\n  targetRef: {{kind: MeshGateway, name: edge}}\n  to:\n    - targetRef: {{kind: Mesh}}\n      default:\n        local: {}\n",
                http(10)
            )],
            expect: vec![("dp-1", 8080, None, vec![]), ("dp-2", 8080, None, vec![])],
        },
        Case {
            rule: "a policy of another mesh selects nothing here",
            policies: vec![
                policy("elsewhere", "{kind: Mesh}", &http(11))
                    .replace("name: elsewhere", "name: elsewhere\nmesh: other"),
            ],
            expect: vec![("dp-1", 8080, None, vec![])],
        },
    ];
    run(cases);
}

fn run(cases: Vec<Case>) {
    for case in cases {
        let set = set(&case.policies);
        for (dp, port, num, policies) in case.expect {
            let i = inbound(&set, dp, port);
            assert_eq!(http_num(&i), num, "{}: {dp}:{port}", case.rule);
            assert_eq!(i.policies, policies, "{}: {dp}:{port}", case.rule);
        }
    }
}

#[test]
fn merge_is_field_by_field() {
    // The general policy sets status and headers; the specific one only the rate.
    let set = set(&[
        policy(
            "general",
            "{kind: Mesh}",
            "{http: {requestRate: {num: 100, interval: 1s}, onRateLimit: {status: 503, headers: {add: [{name: x-a, value: \"1\"}]}}}, tcp: {connectionRate: {num: 7, interval: 1s}}}",
        ),
        policy(
            "specific",
            "{kind: MeshService, name: web}",
            "{http: {requestRate: {num: 10, interval: 2s}}}",
        ),
    ]);
    let i = inbound(&set, "dp-1", 8080);
    let h = i.http.expect("http");
    assert_eq!(
        h.request_rate,
        Rate::new(10, Duration::from_secs(2)).expect("valid rate")
    );
    assert_eq!(h.status, 503);
    assert_eq!(
        h.headers.add,
        vec![HeaderValue::new("x-a", "1").expect("valid header")]
    );
    assert_eq!(i.tcp.expect("tcp").connection_rate.num().get(), 7);
}

#[test]
fn the_limit_names_the_policy_whose_rate_won() {
    let general = policy(
        "general",
        "{kind: Mesh}",
        "{http: {requestRate: {num: 100, interval: 1s}}}",
    );
    // A more specific policy that only changes the status leaves the rate, and its name, to
    // the general one.
    let status_only = policy(
        "status-only",
        "{kind: MeshService, name: web}",
        "{http: {onRateLimit: {status: 503}}}",
    );
    let set_of = |policies: &[String]| inbound(&set(policies), "dp-1", 8080);
    let i = set_of(&[general.clone(), status_only]);
    let h = i.http.expect("http");
    assert_eq!(
        (h.policy.as_str(), h.status.code().as_u16()),
        ("general", 503)
    );
    assert_eq!(i.policies, ["general", "status-only"]);
    // One that sets the rate takes it over.
    let i = set_of(&[
        general,
        policy("specific", "{kind: MeshService, name: web}", &http(10)),
    ]);
    assert_eq!(i.http.expect("http").policy, "specific");
}

#[test]
fn header_lists_are_replaced_whole_and_set_and_add_separately() {
    let set = set(&[
        policy(
            "general",
            "{kind: Mesh}",
            "{http: {requestRate: {num: 1, interval: 1s}, onRateLimit: {headers: {set: [{name: x-a, value: a}, {name: x-b, value: b}], add: [{name: x-c, value: c}]}}}}",
        ),
        policy(
            "specific",
            "{kind: MeshService, name: web}",
            "{http: {onRateLimit: {headers: {set: [{name: x-z, value: z}]}}}}",
        ),
    ]);
    let h = inbound(&set, "dp-1", 8080).http.expect("http");
    assert_eq!(
        h.headers.set,
        vec![HeaderValue::new("x-z", "z").expect("valid header")]
    );
    assert_eq!(
        h.headers.add,
        vec![HeaderValue::new("x-c", "c").expect("valid header")]
    );
    assert_eq!(h.status, 429, "status defaults to 429");
}

#[test]
fn rates_are_replaced_whole() {
    let set = set(&[
        policy(
            "general",
            "{kind: Mesh}",
            "{http: {requestRate: {num: 100, interval: 1m}}}",
        ),
        policy(
            "specific",
            "{kind: MeshService, name: web}",
            "{http: {requestRate: {num: 3, interval: 1s}}}",
        ),
    ]);
    let h = inbound(&set, "dp-1", 8080).http.expect("http");
    assert_eq!(
        h.request_rate,
        Rate::new(3, Duration::from_secs(1)).expect("valid rate")
    );
}

#[test]
fn disabled_cancels_and_a_more_specific_false_restores() {
    let base = policy(
        "base",
        "{kind: Mesh}",
        "{http: {requestRate: {num: 9, interval: 1s}}, tcp: {connectionRate: {num: 4, interval: 1s}}}",
    );
    let off = policy(
        "off",
        "{kind: MeshService, name: web}",
        "{http: {disabled: true}, tcp: {disabled: true}}",
    );
    let on = policy(
        "on",
        "{kind: Dataplane, name: dp-1, sectionName: api}",
        "{http: {disabled: false}}",
    );
    let s = set(&[base.clone(), off.clone()]);
    let i = inbound(&s, "dp-1", 8080);
    assert_eq!((i.http, i.tcp), (None, None));
    assert_eq!(i.policies, ["base", "off"]);
    // Dataplane ranks below MeshService, so its `disabled: false` comes first and loses...
    let s = set(&[base.clone(), off.clone(), on.clone()]);
    assert_eq!(inbound(&s, "dp-1", 8080).http, None);
    // ...while a MeshServiceSubset comes after and re-enables with the inherited rate.
    let on = policy(
        "on",
        "{kind: MeshServiceSubset, name: web, tags: {team: a}}",
        "{http: {disabled: false}}",
    );
    let s = set(&[base, off, on]);
    let i = inbound(&s, "dp-1", 8080);
    assert_eq!(http_num(&i), Some(9));
    assert_eq!(i.tcp, None);
}

#[test]
fn within_a_policy_later_from_entries_override_earlier_ones() {
    let yaml = r#"type: MeshRateLimit
name: p
spec:
  targetRef: {kind: Mesh, proxyTypes: [Sidecar]}
  from:
    - targetRef: {kind: Mesh}
      default:
        local:
          http:
            requestRate: {num: 1, interval: 1s}
            onRateLimit: {status: 503}
    - targetRef: {kind: Mesh}
      default:
        local:
          http:
            requestRate: {num: 2, interval: 1s}
"#;
    let i = inbound(&set(&[yaml.to_string()]), "dp-1", 8080);
    let h = i.http.expect("http");
    assert_eq!((h.request_rate.num().get(), h.status.as_u16()), (2, 503));
}

#[test]
fn http_limits_need_an_http_inbound_and_tcp_limits_apply_everywhere() {
    let s = set(&[policy(
        "both",
        "{kind: Mesh}",
        "{http: {requestRate: {num: 1, interval: 1s}}, tcp: {connectionRate: {num: 2, interval: 1s}}}",
    )]);
    for (dp, port, protocol_is_http) in [
        ("dp-1", 8080, true),
        ("dp-1", 9090, true),
        ("dp-2", 8080, true),
        ("dp-1", 6379, false),
    ] {
        let i = inbound(&s, dp, port);
        assert_eq!(i.http.is_some(), protocol_is_http, "{dp}:{port}");
        assert_eq!(
            i.tcp.map(|t| t.connection_rate.num().get()),
            Some(2),
            "{dp}:{port}"
        );
    }
    // A policy with only an onRateLimit (no rate) enforces nothing.
    let s = set(&[policy(
        "status-only",
        "{kind: Mesh}",
        "{http: {onRateLimit: {status: 503}}}",
    )]);
    let i = inbound(&s, "dp-1", 8080);
    assert_eq!(i.http, None);
    assert_eq!(i.policies, ["status-only"]);
}

#[test]
fn rules_with_matches_apply_to_matching_sources_over_the_catch_all() {
    let yaml = r#"type: MeshRateLimit
name: p
spec:
  targetRef: {kind: MeshService, name: web}
  rules:
    - matches: [{spiffeID: {type: Exact, value: "spiffe://default/ns/a/sa/frontend"}}]
      default: {local: {http: {requestRate: {num: 30, interval: 1s}}}}
    - matches: [{sni: {type: Exact, value: web.mesh}}]
      default: {local: {http: {requestRate: {num: 10, interval: 1s}, onRateLimit: {status: 503}}}}
    - matches: [{spiffeID: {type: Prefix, value: "spiffe://default/ns/a"}}]
      default: {local: {http: {requestRate: {num: 20, interval: 1s}}}}
    - default: {local: {http: {requestRate: {num: 1, interval: 1s}, onRateLimit: {status: 420}}}}
"#;
    let general = policy(
        "general",
        "{kind: Mesh}",
        "{tcp: {connectionRate: {num: 5, interval: 1s}}}",
    );
    let s = set(&[yaml.to_string(), general]);
    // The per-inbound limit is the catch-all one.
    let i = inbound(&s, "dp-1", 8080);
    assert_eq!(
        (http_num(&i), i.http.as_ref().map(|h| h.status.as_u16())),
        (Some(1), Some(420))
    );

    let at = |spiffe: Option<&str>, sni: Option<&str>| {
        let source = Source {
            spiffe_id: spiffe.map(String::from),
            sni: sni.map(String::from),
        };
        let i = s
            .limits_for_source("default", "dp-1", 8080, &source)
            .expect("inbound");
        let h = i.http.expect("http");
        (
            h.request_rate.num().get(),
            h.status.as_u16(),
            i.tcp.map(|t| t.connection_rate.num().get()),
        )
    };
    // Unmatched source: the catch-all.
    assert_eq!(
        at(Some("spiffe://default/ns/b/sa/x"), None),
        (1, 420, Some(5))
    );
    // SNI matches apply on zone proxies only (Kuma's plugin renders them there alone): a
    // sidecar inbound gives the catch-all.
    assert_eq!(at(None, Some("web.mesh")), (1, 420, Some(5)));
    // spiffeID Prefix over the catch-all, whose status shows through (field merge).
    assert_eq!(
        at(Some("spiffe://default/ns/a/sa/other"), Some("web.mesh")),
        (20, 420, Some(5))
    );
    // spiffeID Exact beats Prefix.
    assert_eq!(
        at(Some("spiffe://default/ns/a/sa/frontend"), None),
        (30, 420, Some(5))
    );

    let listed = s.source_limits("default", "dp-1");
    let nums: Vec<u32> = listed
        .iter()
        .map(|l| {
            l.limits
                .http
                .as_ref()
                .expect("http")
                .request_rate
                .num()
                .get()
        })
        .collect();
    assert_eq!(
        nums,
        [30, 20],
        "one entry per spiffeID match, in the order written"
    );

    // The routes Kuma's Envoy gets, most specific first, each merged over the catch-all and
    // the matches covering it.
    let routes: Vec<(String, u32, u16)> = inbound(&s, "dp-1", 8080)
        .sources
        .iter()
        .map(|r| {
            let h = r.http.as_ref().expect("limited");
            (
                r.spiffe_id.value.clone(),
                h.request_rate.num().get(),
                h.status.as_u16(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            ("spiffe://default/ns/a/sa/frontend".to_string(), 30, 420),
            ("spiffe://default/ns/a".to_string(), 20, 420),
        ]
    );
}

/// Kuma orders spiffeID routes Exact first, then longer prefixes first
/// (`compareMatchedRouteSpecificity`); a client takes the first that matches, merged over the
/// catch-all and every shorter prefix covering it.
#[test]
fn longer_spiffe_prefixes_are_more_specific() {
    let yaml = r#"type: MeshRateLimit
name: p
spec:
  targetRef: {kind: MeshService, name: web}
  rules:
    - matches: [{spiffeID: {type: Prefix, value: "spiffe://default/ns/a"}}]
      default: {local: {http: {requestRate: {num: 20, interval: 1s}}}}
    - matches: [{spiffeID: {type: Prefix, value: "spiffe://default/ns"}}]
      default: {local: {http: {requestRate: {num: 7, interval: 1s}, onRateLimit: {status: 503}}}}
    - matches: [{spiffeID: {type: Exact, value: "spiffe://default/ns/a/sa/x"}}]
      default: {local: {http: {disabled: true}}}
    - default: {local: {http: {requestRate: {num: 1, interval: 1s}}}}
"#;
    let s = set(&[yaml.to_string()]);
    let routes: Vec<(String, Option<(u32, u16)>)> = inbound(&s, "dp-1", 8080)
        .sources
        .iter()
        .map(|r| {
            (
                r.spiffe_id.value.clone(),
                r.http
                    .as_ref()
                    .map(|h| (h.request_rate.num().get(), h.status.as_u16())),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            ("spiffe://default/ns/a/sa/x".to_string(), None),
            ("spiffe://default/ns/a".to_string(), Some((20, 503))),
            ("spiffe://default/ns".to_string(), Some((7, 503))),
        ]
    );
    let num = |id: &str| {
        let source = Source {
            spiffe_id: Some(id.to_string()),
            sni: None,
        };
        s.limits_for_source("default", "dp-1", 8080, &source)
            .expect("inbound")
            .http
            .map(|h| h.request_rate.num().get())
    };
    assert_eq!(num("spiffe://default/ns/a/sa/y"), Some(20));
    assert_eq!(num("spiffe://default/ns/b"), Some(7));
    assert_eq!(num("spiffe://default/ns/a/sa/x"), None, "disabled for it");
    assert_eq!(num("spiffe://other/ns"), Some(1));
}

/// A match with both a spiffeID and an SNI needs both, and ranks above the spiffeID alone
/// (Kuma's SortRules: "ranks AND-combined matches (SNI + SpiffeID) higher than single-field
/// matches").
#[test]
fn a_match_with_spiffe_id_and_sni_needs_both_and_ranks_higher() {
    let yaml = r#"type: MeshRateLimit
name: p
spec:
  targetRef: {kind: MeshService, name: web}
  rules:
    - matches: [{spiffeID: {type: Exact, value: "spiffe://default/ns/a/sa/x"}, sni: {type: Exact, value: web.mesh}}]
      default: {local: {http: {requestRate: {num: 4, interval: 1s}}}}
    - matches: [{spiffeID: {type: Exact, value: "spiffe://default/ns/a/sa/x"}}]
      default: {local: {http: {requestRate: {num: 3, interval: 1s}}}}
    - default: {local: {http: {requestRate: {num: 1, interval: 1s}}}}
"#;
    let s = set(&[yaml.to_string()]);
    let num = |sni: Option<&str>| {
        let source = Source {
            spiffe_id: Some("spiffe://default/ns/a/sa/x".to_string()),
            sni: sni.map(String::from),
        };
        s.limits_for_source("default", "dp-1", 8080, &source)
            .expect("inbound")
            .http
            .map(|h| h.request_rate.num().get())
    };
    assert_eq!(num(Some("web.mesh")), Some(4));
    assert_eq!(num(Some("other.mesh")), Some(3));
    assert_eq!(num(None), Some(3));
    let routes: Vec<(Option<String>, Option<u32>)> = inbound(&s, "dp-1", 8080)
        .sources
        .iter()
        .map(|r| {
            (
                r.sni.clone(),
                r.http.as_ref().map(|h| h.request_rate.num().get()),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [(Some("web.mesh".to_string()), Some(4)), (None, Some(3))]
    );
}

#[test]
fn gateways_have_no_inbound_limits() {
    let s = set(&[policy("all", "{kind: Mesh}", &http(1))]);
    let gw = s.effective("default", "gw-1").expect("gateway dataplane");
    assert!(gw.inbounds.is_empty());
    assert_eq!(s.all_effective().len(), 3);
    assert!(s.effective("other", "dp-1").is_none());
}

#[test]
fn proxy_types_filter_by_the_kind_of_proxy() {
    use meshlimit_policy::matching::selects;
    use meshlimit_policy::model::{ProxyType, TargetRef, TargetRefKind};

    let s = set(&[]);
    let dataplane = |name: &str| match s.dataplane("default", name) {
        Some(d) => d.clone(),
        None => panic!("no {name}"),
    };
    let sidecar = dataplane("dp-1");
    let mut gateway = dataplane("gw-1");
    // Give the gateway an inbound-shaped entry so selection can be asked about it.
    gateway.networking.inbound = sidecar.networking.inbound.clone();
    let inbound = &sidecar.networking.inbound[0];
    let mut target = TargetRef::of(TargetRefKind::Mesh);
    for (types, on_sidecar, on_gateway) in [
        (vec![], true, true),
        (vec![ProxyType::Sidecar], true, false),
        (vec![ProxyType::Gateway], false, true),
        (vec![ProxyType::Sidecar, ProxyType::Gateway], true, true),
    ] {
        target.proxy_types = types.clone();
        assert_eq!(selects(&target, &sidecar, inbound), on_sidecar, "{types:?}");
        assert_eq!(selects(&target, &gateway, inbound), on_gateway, "{types:?}");
    }
}

/// Kuma's targetRef for kind Dataplane: `namespace` restricts it to that namespace (these
/// Dataplanes have no `k8s.kuma.io/namespace` label, so it selects nothing), and
/// `sectionName` alone selects that inbound of every Dataplane.
#[test]
fn dataplane_namespace_and_section_name_alone() {
    let s = set(&[
        policy(
            "other-ns",
            "{kind: Dataplane, name: dp-1, namespace: other}",
            &http(1),
        ),
        policy("api-only", "{kind: Dataplane, sectionName: api}", &http(7)),
    ]);
    let api = inbound(&s, "dp-1", 8080);
    assert_eq!(api.policies, ["api-only"]);
    assert_eq!(api.http.expect("limited").request_rate.num().get(), 7);
    assert!(inbound(&s, "dp-1", 9090).http.is_none());
    assert!(
        inbound(&s, "dp-2", 8080).http.is_none(),
        "dp-2's inbound has no name"
    );
}

/// The Dataplane of Kuma's matcher tests (`pkg/plugins/policies/core/matchers/testdata/
/// matchedpolicies/dataplane-kind/*.dataplane.yaml`), with HTTP inbounds.
const KUMA_DATAPLANE: &str = r#"
type: Dataplane
name: dp-1
labels: {k8s.kuma.io/namespace: kuma-demo, app: demo}
networking:
  address: 1.1.1.1
  inbound:
    - port: 8080
      name: main-port
      tags: {kuma.io/service: web, kuma.io/protocol: http, version: v1}
    - port: 8081
      name: secondary-port
      tags: {kuma.io/service: web, kuma.io/protocol: http, version: v3}
"#;

/// One row of the ordering table: the policies (name, labels, top-level targetRef), each
/// limiting HTTP to its position + 1 per second, and for each inbound the policies that apply
/// in Kuma's order (least specific first, so the last one's rate wins).
struct Order {
    rule: &'static str,
    dataplanes: &'static str,
    policies: Vec<(&'static str, &'static str, &'static str)>,
    expect: Vec<(&'static str, u16, Vec<&'static str>)>,
}

/// Which policies apply and in which order: the targetRef's kind, Dataplane details, then
/// `kuma.io/origin`, `kuma.io/policy-role` and `kuma.io/display-name`. Rows named after a
/// Kuma test translate it (inputs and expected order are Kuma's).
#[test]
fn policy_order() {
    let mesh = "{kind: Mesh}";
    let dp = "{kind: Dataplane, name: dp-1}";
    let ns = "{k8s.kuma.io/namespace: kuma-demo}";
    let rows = vec![
        Order {
            rule: "kind rank: Mesh < Dataplane < MeshSubset < MeshService < MeshServiceSubset",
            dataplanes: DATAPLANES,
            policies: vec![
                (
                    "e-subset-service",
                    "{}",
                    "{kind: MeshServiceSubset, name: web, tags: {version: v1}}",
                ),
                ("a-mesh", "{}", mesh),
                ("c-subset", "{}", "{kind: MeshSubset, tags: {version: v1}}"),
                ("b-dataplane", "{}", dp),
                ("d-service", "{}", "{kind: MeshService, name: web}"),
            ],
            expect: vec![
                (
                    "dp-1",
                    8080,
                    vec![
                        "a-mesh",
                        "b-dataplane",
                        "c-subset",
                        "d-service",
                        "e-subset-service",
                    ],
                ),
                ("dp-1", 9090, vec!["a-mesh", "b-dataplane", "c-subset"]),
                ("dp-2", 8080, vec!["a-mesh", "d-service"]),
            ],
        },
        Order {
            rule: "ties break by name, descending: the smallest name comes last and wins",
            dataplanes: DATAPLANES,
            policies: vec![
                ("alpha", "{}", "{kind: MeshService, name: web}"),
                ("beta", "{}", "{kind: MeshService, name: web}"),
                ("gamma", "{}", "{kind: MeshService, name: web}"),
            ],
            expect: vec![("dp-1", 8080, vec!["gamma", "beta", "alpha"])],
        },
        Order {
            rule: "the kind decides before kuma.io/origin: a global Dataplane policy beats a zone Mesh one",
            dataplanes: DATAPLANES,
            policies: vec![
                ("a", "{kuma.io/origin: global}", dp),
                ("b", "{kuma.io/origin: zone}", mesh),
            ],
            expect: vec![("dp-1", 8080, vec!["b", "a"])],
        },
        Order {
            rule: "the kind decides before kuma.io/policy-role",
            dataplanes: DATAPLANES,
            policies: vec![
                ("a", "{kuma.io/policy-role: producer}", dp),
                ("b", "{kuma.io/policy-role: system}", mesh),
            ],
            expect: vec![("dp-1", 8080, vec!["b", "a"])],
        },
        Order {
            rule: "inboundrules/mt-order-by-origin: global < none < zone",
            dataplanes: DATAPLANES,
            policies: vec![
                ("matched-for-rules-ccc", "{kuma.io/origin: zone}", mesh),
                ("matched-for-rules-bbb", "{}", mesh),
                ("matched-for-rules-aaa", "{kuma.io/origin: global}", mesh),
            ],
            expect: vec![(
                "dp-1",
                8080,
                vec![
                    "matched-for-rules-aaa",
                    "matched-for-rules-bbb",
                    "matched-for-rules-ccc",
                ],
            )],
        },
        Order {
            rule: "inboundrules/mt-order-by-role: system < producer < consumer (in the Dataplane's namespace)",
            dataplanes: KUMA_DATAPLANE,
            policies: vec![
                (
                    "matched-for-rules-ccc",
                    "{kuma.io/policy-role: consumer, k8s.kuma.io/namespace: kuma-demo}",
                    mesh,
                ),
                (
                    "matched-for-rules-bbb",
                    "{kuma.io/policy-role: producer}",
                    mesh,
                ),
                (
                    "matched-for-rules-aaa",
                    "{kuma.io/policy-role: system}",
                    mesh,
                ),
            ],
            expect: vec![(
                "dp-1",
                8080,
                vec![
                    "matched-for-rules-aaa",
                    "matched-for-rules-bbb",
                    "matched-for-rules-ccc",
                ],
            )],
        },
        Order {
            rule: "no kuma.io/policy-role label is the system role, below producer",
            dataplanes: DATAPLANES,
            policies: vec![
                ("a", "{kuma.io/policy-role: producer}", mesh),
                ("b", "{}", mesh),
            ],
            expect: vec![("dp-1", 8080, vec!["b", "a"])],
        },
        Order {
            rule: "origin before role",
            dataplanes: KUMA_DATAPLANE,
            policies: vec![
                (
                    "a",
                    "{kuma.io/origin: global, kuma.io/policy-role: workload-owner, k8s.kuma.io/namespace: kuma-demo}",
                    mesh,
                ),
                (
                    "b",
                    "{kuma.io/origin: zone, kuma.io/policy-role: system}",
                    mesh,
                ),
            ],
            expect: vec![("dp-1", 8080, vec!["a", "b"])],
        },
        Order {
            rule: "consumer and workload-owner policies apply in their own namespace only",
            dataplanes: KUMA_DATAPLANE,
            policies: vec![
                (
                    "elsewhere",
                    "{kuma.io/policy-role: consumer, k8s.kuma.io/namespace: other}",
                    mesh,
                ),
                ("nowhere", "{kuma.io/policy-role: workload-owner}", mesh),
                (
                    "here",
                    "{kuma.io/policy-role: workload-owner, k8s.kuma.io/namespace: kuma-demo}",
                    mesh,
                ),
            ],
            expect: vec![("dp-1", 8080, vec!["here"])],
        },
        Order {
            rule: "same rank: kuma.io/display-name decides, not the resource name",
            dataplanes: DATAPLANES,
            policies: vec![
                ("a", "{kuma.io/display-name: zz}", mesh),
                ("b", "{kuma.io/display-name: aa}", mesh),
            ],
            expect: vec![("dp-1", 8080, vec!["a", "b"])],
        },
        Order {
            rule: "inboundrules/mt-rules: the smaller name is last and wins",
            dataplanes: DATAPLANES,
            policies: vec![
                (
                    "matched-for-rules-mt-aaaaaa",
                    "{}",
                    "{kind: Mesh, proxyTypes: [Sidecar]}",
                ),
                (
                    "matched-for-rules-mt-bbbbbb",
                    "{}",
                    "{kind: Mesh, proxyTypes: [Sidecar]}",
                ),
            ],
            expect: vec![(
                "dp-1",
                8080,
                vec!["matched-for-rules-mt-bbbbbb", "matched-for-rules-mt-aaaaaa"],
            )],
        },
        Order {
            rule: "inboundrules/mt-from: from entries are ordered as rules are",
            dataplanes: DATAPLANES,
            policies: vec![
                ("matched-for-rules-mt-aaaaaa", "{}", mesh),
                ("matched-for-rules-mt-bbbbbb", "{}", mesh),
            ],
            expect: vec![(
                "dp-1",
                8080,
                vec!["matched-for-rules-mt-bbbbbb", "matched-for-rules-mt-aaaaaa"],
            )],
        },
        Order {
            rule: "inboundrules/mt-mixed: from and rules entries are ordered together",
            dataplanes: DATAPLANES,
            policies: vec![
                (
                    "matched-for-rules-mt-aaaaaa",
                    "{}",
                    "{kind: Mesh, proxyTypes: [Sidecar]}",
                ),
                ("matched-for-rules-mt-bbbbbb", "{}", mesh),
                (
                    "matched-for-rules-mt-cccccc",
                    "{}",
                    "{kind: Mesh, proxyTypes: [Sidecar]}",
                ),
            ],
            expect: vec![(
                "dp-1",
                8080,
                vec![
                    "matched-for-rules-mt-cccccc",
                    "matched-for-rules-mt-bbbbbb",
                    "matched-for-rules-mt-aaaaaa",
                ],
            )],
        },
        Order {
            rule: "matchedpolicies/dataplane-kind/select-all",
            dataplanes: KUMA_DATAPLANE,
            policies: vec![
                ("mtp-1", "{}", "{kind: Dataplane}"),
                ("mtp-2", "{}", "{kind: Dataplane}"),
            ],
            expect: vec![
                ("dp-1", 8080, vec!["mtp-2", "mtp-1"]),
                ("dp-1", 8081, vec!["mtp-2", "mtp-1"]),
            ],
        },
        Order {
            rule: "matchedpolicies/dataplane-kind/select-by-labels",
            dataplanes: KUMA_DATAPLANE,
            policies: vec![
                ("mtp-1", "{}", "{kind: Dataplane, labels: {app: demo}}"),
                ("mtp-2", "{}", "{kind: Dataplane, labels: {app: test}}"),
            ],
            expect: vec![("dp-1", 8080, vec!["mtp-1"])],
        },
        Order {
            rule: "matchedpolicies/dataplane-kind/select-by-name (the policy's namespace is the Dataplane's)",
            dataplanes: KUMA_DATAPLANE,
            policies: vec![
                ("mtp-1", ns, "{kind: Dataplane, name: dp-1}"),
                ("mtp-2", ns, "{kind: Dataplane, name: dp-2}"),
            ],
            expect: vec![("dp-1", 8080, vec!["mtp-1"])],
        },
        Order {
            rule: "by name, a policy in another namespace names a Dataplane there",
            dataplanes: KUMA_DATAPLANE,
            policies: vec![(
                "mtp-1",
                "{k8s.kuma.io/namespace: kuma-system}",
                "{kind: Dataplane, name: dp-1}",
            )],
            expect: vec![("dp-1", 8080, vec![])],
        },
        Order {
            rule: "matchedpolicies/dataplane-kind/select-by-name-and-namespace",
            dataplanes: KUMA_DATAPLANE,
            policies: vec![
                (
                    "mtp-1",
                    "{k8s.kuma.io/namespace: kuma-system, kuma.io/policy-role: system}",
                    "{kind: Dataplane, name: dp-1, namespace: kuma-demo}",
                ),
                (
                    "mtp-2",
                    "{k8s.kuma.io/namespace: kuma-system, kuma.io/policy-role: system}",
                    "{kind: Dataplane, name: dp-1, namespace: other-namespace}",
                ),
                (
                    "mtp-3",
                    "{k8s.kuma.io/namespace: kuma-system, kuma.io/policy-role: system}",
                    "{kind: Dataplane, name: dp-2, namespace: kuma-demo}",
                ),
            ],
            expect: vec![("dp-1", 8080, vec!["mtp-1"])],
        },
        Order {
            rule: "matchedpolicies/dataplane-kind/combine-name-and-labels: labels < name",
            dataplanes: KUMA_DATAPLANE,
            policies: vec![
                (
                    "mtp-1",
                    "{k8s.kuma.io/namespace: kuma-system}",
                    "{kind: Dataplane, labels: {app: demo}}",
                ),
                (
                    "mtp-2",
                    "{k8s.kuma.io/namespace: kuma-system}",
                    "{kind: Dataplane, name: dp-1, namespace: kuma-demo}",
                ),
            ],
            expect: vec![("dp-1", 8080, vec!["mtp-1", "mtp-2"])],
        },
        Order {
            rule: "matchedpolicies/dataplane-kind/combine-name-and-sectionName: no sectionName < sectionName",
            dataplanes: KUMA_DATAPLANE,
            policies: vec![
                (
                    "mtp-1",
                    "{k8s.kuma.io/namespace: kuma-system}",
                    "{kind: Dataplane, name: dp-1, namespace: kuma-demo}",
                ),
                (
                    "mtp-2",
                    "{k8s.kuma.io/namespace: kuma-system}",
                    "{kind: Dataplane, name: dp-1, namespace: kuma-demo, sectionName: main-port}",
                ),
            ],
            expect: vec![
                ("dp-1", 8080, vec!["mtp-1", "mtp-2"]),
                ("dp-1", 8081, vec!["mtp-1"]),
            ],
        },
        Order {
            // Kuma's input names three policies mtp-2; names are unique here, so the display
            // name carries it.
            rule: "matchedpolicies/dataplane-kind/combine-name-labels-sectionName",
            dataplanes: KUMA_DATAPLANE,
            policies: vec![
                (
                    "mtp-1",
                    "{k8s.kuma.io/namespace: kuma-system}",
                    "{kind: Dataplane, labels: {app: demo}}",
                ),
                (
                    "mtp-2-name-section",
                    "{k8s.kuma.io/namespace: kuma-system, kuma.io/display-name: mtp-2}",
                    "{kind: Dataplane, name: dp-1, namespace: kuma-demo, sectionName: main-port}",
                ),
                (
                    "mtp-2-labels-section",
                    "{k8s.kuma.io/namespace: kuma-system, kuma.io/display-name: mtp-2}",
                    "{kind: Dataplane, labels: {app: demo}, sectionName: main-port}",
                ),
                (
                    "mtp-2-name",
                    "{k8s.kuma.io/namespace: kuma-system, kuma.io/display-name: mtp-2}",
                    "{kind: Dataplane, name: dp-1, namespace: kuma-demo}",
                ),
            ],
            expect: vec![
                (
                    "dp-1",
                    8080,
                    vec![
                        "mtp-1",
                        "mtp-2-labels-section",
                        "mtp-2-name",
                        "mtp-2-name-section",
                    ],
                ),
                ("dp-1", 8081, vec!["mtp-1", "mtp-2-name"]),
            ],
        },
    ];
    let mut failed = Vec::new();
    for row in rows {
        let mut docs = vec![row.dataplanes.to_string()];
        for (i, (name, labels, target)) in row.policies.iter().enumerate() {
            let num = u32::try_from(i + 1).expect("few policies");
            docs.push(policy(name, target, &http(num)).replacen(
                "spec:",
                &format!("labels: {labels}\nspec:"),
                1,
            ));
        }
        let parsed = parse_documents("t.yaml", &docs.join("\n---\n"))
            .unwrap_or_else(|p| panic!("{}: {p:#?}", row.rule));
        let set = ResourceSet::from_parsed(parsed).unwrap_or_else(|p| panic!("{p:#?}"));
        for (dp, port, order) in row.expect {
            let i = inbound(&set, dp, port);
            let winner = order.last().map(|last| {
                let at = row
                    .policies
                    .iter()
                    .position(|(n, _, _)| n == last)
                    .expect("listed");
                u32::try_from(at + 1).expect("few policies")
            });
            if i.policies != order || http_num(&i) != winner {
                failed.push(format!(
                    "{} at {dp}:{port}: got {:?} ({:?}/s), want {order:?} ({winner:?}/s)",
                    row.rule,
                    i.policies,
                    http_num(&i)
                ));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
