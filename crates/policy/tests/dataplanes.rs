//! Dataplanes as Kuma 2.14 writes them: inbounds in state `Ignored` and embedded zone-proxy
//! `listeners` (Kuma's own cases from `pkg/core/resources/apis/mesh/dataplane_validator_test.go`,
//! named as upstream names them), and what meshlimit enforces on them: nothing, said so.

use meshlimit_policy::model::{NotEnforced, Resource};
use meshlimit_policy::{ResourceSet, parse_documents};

fn problems(yaml: &str) -> Vec<(String, String)> {
    match parse_documents("t.yaml", yaml) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.into_iter().map(|p| (p.path, p.message)).collect(),
    }
}

/// Kuma's "should pass validation" listener entries and "should validate all fields" listener
/// and gateway entries. Not translated: "builtin gateway listeners and probes both rejected"
/// (meshlimit's Dataplane has no probes).
#[test]
fn kuma_dataplane_listener_cases() {
    let head = "type: Dataplane\nname: dp-1\nmesh: default\nnetworking:\n  address: 192.168.0.1\n";
    let http_inbound = "  inbound:\n    - port: 8080\n      name: http\n      tags:\n        kuma.io/service: backend\n";
    let listener = |kind: &str, address: &str, port: &str, name: &str| {
        let mut l = format!("    - type: {kind}\n");
        if !address.is_empty() {
            l.push_str(&format!("      address: {address}\n"));
        }
        l.push_str(&format!("      port: {port}\n"));
        if !name.is_empty() {
            l.push_str(&format!("      name: {name}\n"));
        }
        l
    };
    type Case = (&'static str, String, Vec<(&'static str, &'static str)>);
    let cases: Vec<Case> = vec![
        (
            "dataplane with a single zone-ingress listener",
            format!(
                "{head}{http_inbound}  listeners:\n{}",
                listener("ZoneIngress", "192.168.0.1", "10001", "zi-main")
            ),
            vec![],
        ),
        (
            "dataplane with a zone-egress listener only (zone-proxy-only)",
            format!(
                "{head}  listeners:\n{}",
                listener("ZoneEgress", "192.168.0.1", "10002", "ze-main")
            ),
            vec![],
        ),
        (
            "dataplane with multiple listeners of the same type on distinct ports",
            format!(
                "{head}  listeners:\n{}{}",
                listener("ZoneIngress", "192.168.0.1", "10001", "zi-a"),
                listener("ZoneIngress", "192.168.0.1", "10003", "zi-b")
            ),
            vec![],
        ),
        (
            "dataplane with listener without name",
            format!(
                "{head}  listeners:\n{}",
                listener("ZoneIngress", "192.168.0.1", "10001", "")
            ),
            vec![],
        ),
        (
            "networking: delegated gateway must not have listeners",
            format!(
                "{head}  gateway:\n    tags:\n      kuma.io/service: kong\n  listeners:\n{}",
                listener("ZoneEgress", "192.168.0.1", "10002", "ze-port")
            ),
            vec![(
                "networking.listeners",
                "listeners cannot be defined for delegated gateways",
            )],
        ),
        (
            "networking: builtin gateway must not have listeners",
            format!(
                "{head}  gateway:\n    type: BUILTIN\n    tags:\n      kuma.io/service: gateway\n  listeners:\n{}",
                listener("ZoneEgress", "192.168.0.1", "10002", "ze-port")
            ),
            vec![(
                "networking.listeners",
                "listeners cannot be defined for builtin gateways",
            )],
        ),
        (
            "listener missing address",
            format!(
                "{head}{http_inbound}  listeners:\n{}",
                listener("ZoneIngress", "", "10001", "zi-main")
            ),
            vec![("networking.listeners[0].address", "address can't be empty")],
        ),
        (
            "listener with port 0",
            format!(
                "{head}{http_inbound}  listeners:\n{}",
                listener("ZoneIngress", "192.168.0.1", "0", "zi-main")
            ),
            vec![(
                "networking.listeners[0].port",
                "port must be in the range [1, 65535]",
            )],
        ),
        (
            "listener with port > 65535",
            format!(
                "{head}{http_inbound}  listeners:\n{}",
                listener("ZoneIngress", "192.168.0.1", "65536", "zi-main")
            ),
            vec![(
                "networking.listeners[0].port",
                "port must be in the range [1, 65535]",
            )],
        ),
        (
            "listener with invalid address",
            format!(
                "{head}{http_inbound}  listeners:\n{}",
                listener("ZoneIngress", "not-valid!", "10001", "zi-main")
            ),
            vec![(
                "networking.listeners[0].address",
                "address has to be valid IP address or domain name",
            )],
        ),
        (
            "listener name collides with inbound name",
            format!(
                "{head}{http_inbound}  listeners:\n{}",
                listener("ZoneIngress", "192.168.0.1", "10001", "http")
            ),
            vec![(
                "networking.listeners[0].name",
                "name \"http\" must be unique across inbounds and listeners",
            )],
        ),
        (
            "two listeners with same name",
            format!(
                "{head}  listeners:\n{}{}",
                listener("ZoneIngress", "192.168.0.1", "10001", "zi-main"),
                listener("ZoneIngress", "192.168.0.1", "10002", "zi-main")
            ),
            vec![(
                "networking.listeners[1].name",
                "name \"zi-main\" must be unique across inbounds and listeners",
            )],
        ),
        (
            "two listeners on same address:port with different types",
            format!(
                "{head}  listeners:\n{}{}",
                listener("ZoneIngress", "192.168.0.1", "10001", "zi-main"),
                listener("ZoneEgress", "192.168.0.1", "10001", "ze-main")
            ),
            vec![(
                "networking.listeners[1]",
                "address:port 192.168.0.1:10001 is used by listeners of different types",
            )],
        ),
        (
            "two listeners of the same type on same address:port",
            format!(
                "{head}  listeners:\n{}{}",
                listener("ZoneIngress", "192.168.0.1", "10001", "zi-main"),
                listener("ZoneIngress", "192.168.0.1", "10001", "zi-secondary")
            ),
            vec![(
                "networking.listeners[1]",
                "address:port 192.168.0.1:10001 is already used by another listener",
            )],
        ),
        (
            "listener address:port collides with inbound",
            format!(
                "{head}{http_inbound}  listeners:\n{}",
                listener("ZoneIngress", "192.168.0.1", "8080", "zi-main")
            ),
            vec![(
                "networking.listeners[0]",
                "address:port 192.168.0.1:8080 collides with an inbound listener",
            )],
        ),
    ];
    let mut failed = Vec::new();
    for (name, yaml, want) in &cases {
        let got = problems(yaml);
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        if got != want {
            failed.push(format!("{name}:\n  got  {got:?}\n  want {want:?}\n{yaml}"));
        }
    }
    assert_eq!(cases.len(), 15);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(
        problems(&format!(
            "{head}  listeners:\n    - {{type: ZoneIngres, address: 192.168.0.1, port: 1}}\n"
        )),
        [(
            "networking.listeners[0].type".to_string(),
            "value 'ZoneIngres' is not supported (did you mean 'ZoneIngress'?)".to_string()
        )]
    );
    assert_eq!(
        problems(&format!(
            "{head}  listeners:\n    - {{address: 192.168.0.1, port: 1}}\n"
        )),
        [(
            "networking.listeners[0].type".to_string(),
            "type must be ZoneIngress or ZoneEgress".to_string()
        )]
    );
}

const ZONE_PROXY: &str = r#"
type: Dataplane
name: dp-1
networking:
  address: 127.0.0.2
  inbound:
    - port: 8080
      tags: {kuma.io/service: web, kuma.io/protocol: http}
    - port: 8081
      state: Ignored
      tags: {kuma.io/service: web, kuma.io/protocol: http}
    - port: 8082
      state: NotReady
      tags: {kuma.io/service: web-admin, kuma.io/protocol: http}
  listeners:
    - {type: ZoneIngress, address: 127.0.0.2, port: 10001, name: zi-main}
    - {type: ZoneEgress, address: 127.0.0.2, port: 10002}
---
type: MeshRateLimit
name: everything
spec:
  targetRef: {kind: Mesh, proxyTypes: [Sidecar]}
  rules:
    - default:
        local:
          http:
            requestRate: {num: 5, interval: 1s}
---
type: MeshGlobalRateLimit
name: total
spec:
  targetRef: {kind: Mesh}
  rules:
    - default:
        http:
          requestRate: {num: 10, interval: 1s}
---
apiVersion: kmesh.net/v1alpha1
kind: RateLimit
metadata:
  name: web-connections
spec:
  service: web
  rules:
    - {maxTokens: 1, tokensPerFill: 1, fillInterval: 1000000000}
"#;

/// An `Ignored` inbound is accepted and never enforced: no local, global or kernel limit, and
/// it is no instance of a global limit; a `NotReady` one is enforced (Kuma still configures
/// it). Listeners are parsed, written back, and enforced nowhere; both are reported.
#[test]
fn ignored_inbounds_and_zone_listeners_are_accepted_and_reported_as_not_enforced() {
    let parsed = parse_documents("t.yaml", ZONE_PROXY).unwrap_or_else(|p| panic!("{p:#?}"));
    let set = ResourceSet::from_parsed(parsed.clone()).unwrap_or_else(|p| panic!("{p:#?}"));
    let limits = set.effective("default", "dp-1").expect("dataplane");
    let ports: Vec<u16> = limits.inbounds.iter().map(|i| i.port).collect();
    assert_eq!(ports, [8080, 8082], "the Ignored inbound is not enforced");
    assert!(limits.inbounds.iter().all(|i| i.http.is_some()));
    let web = limits.inbounds[0].global.as_ref().expect("global limit");
    assert_eq!(
        (web.instances, web.share),
        (1, web.request_rate),
        "the Ignored inbound of the same service is no instance"
    );
    let kernel: Vec<u16> = limits.kernel.iter().map(|k| k.port).collect();
    assert_eq!(kernel, [8080], "no kernel limit on the Ignored inbound");
    assert!(set.source_limits("default", "dp-1").is_empty());

    let Some(Resource::Dataplane(dp)) = parsed.resources.first() else {
        panic!("a Dataplane first");
    };
    let notes: Vec<String> = dp.not_enforced().iter().map(ToString::to_string).collect();
    assert_eq!(
        notes,
        [
            "inbound 8081 (web) is in state Ignored: no proxy listens there, so no limit applies (as in Kuma)",
            "ZoneIngress listener zi-main (port 10001) is a zone proxy listener: meshlimit does not enforce MeshRateLimit on zone proxies (Kuma does), so its traffic is not limited",
            "ZoneEgress listener 10002 (port 10002) is a zone proxy listener: meshlimit does not enforce MeshRateLimit on zone proxies (Kuma does), so its traffic is not limited",
        ]
    );
    assert!(matches!(
        dp.not_enforced()[0],
        NotEnforced::IgnoredInbound { port: 8081, .. }
    ));

    // Written back, the state and the listeners survive.
    let yaml = serde_yaml_ng::to_string(&parsed.resources[0]).expect("serializes");
    assert!(yaml.contains("state: Ignored"), "{yaml}");
    assert!(yaml.contains("type: ZoneIngress"), "{yaml}");
    let again = parse_documents("again.yaml", &yaml).expect("parses again");
    assert_eq!(again.resources[0], parsed.resources[0]);

    assert_eq!(
        problems(&ZONE_PROXY.replace("state: Ignored", "state: Ignore")),
        [(
            "networking.inbound[1].state".to_string(),
            "value 'Ignore' is not supported (did you mean 'Ignored'?)".to_string()
        )]
    );
}

/// Kuma's generic targetRef validator accepts a MeshService by `labels` ("MeshService with
/// labels"), and its matcher selects sidecar inbounds by the MeshService name only, so such a
/// policy selects none: accepted, with a warning, and it limits nothing.
#[test]
fn a_mesh_service_by_labels_is_accepted_and_selects_no_inbound() {
    let yaml = format!(
        "{}---\ntype: MeshRateLimit\nname: by-labels\nspec:\n  targetRef:\n    kind: MeshService\n    labels: {{app: web}}\n  rules:\n    - default:\n        local:\n          http:\n            requestRate: {{num: 1, interval: 1s}}\n",
        ZONE_PROXY.split("---").next().expect("the Dataplane")
    );
    let parsed = parse_documents("t.yaml", &yaml).unwrap_or_else(|p| panic!("{p:#?}"));
    let warnings: Vec<(String, String)> = parsed
        .warnings
        .iter()
        .map(|w| (w.path.clone(), w.message.clone()))
        .collect();
    assert_eq!(
        warnings,
        [(
            "spec.targetRef.labels".to_string(),
            "a MeshService selected by labels selects no inbound: Kuma 2.14 matches inbounds to a MeshService by its name (the kuma.io/service tag), and so does meshlimit; this policy limits nothing".to_string()
        )]
    );
    let set = ResourceSet::from_parsed(parsed).expect("consistent");
    let limits = set.effective("default", "dp-1").expect("dataplane");
    assert!(
        limits
            .inbounds
            .iter()
            .all(|i| i.http.is_none() && i.policies.is_empty())
    );
}
