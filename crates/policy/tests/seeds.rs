//! Every YAML example of the two seed documents parses unchanged, and means what the seeds say.

use std::time::Duration;

use meshlimit_policy::{
    HeaderValue, Kind, Protocol, Rate, Resource, ResourceSet, load_paths, parse_documents,
};

const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seeds");

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{SEEDS}/{name}")).expect("fixture exists")
}

#[test]
fn every_seed_example_parses() {
    let parsed = load_paths(&[SEEDS]).unwrap_or_else(|p| panic!("seed examples rejected: {p:#?}"));
    assert_eq!(parsed.resources.len(), 8);
    let kinds: Vec<Kind> = parsed.resources.iter().map(Resource::kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == Kind::MeshRateLimit).count(),
        6
    );
    assert_eq!(kinds.iter().filter(|k| **k == Kind::RateLimit).count(), 2);
    // Each MeshRateLimit example uses the deprecated `from`.
    let deprecated = parsed
        .warnings
        .iter()
        .filter(|w| w.message == "'from' field is deprecated, use 'rules' instead")
        .count();
    assert_eq!(deprecated, 6);
    assert!(parsed.warnings.iter().all(|w| w.path.starts_with("spec.")));
}

#[test]
fn http_seed_limits_backend_to_5_per_10s_with_423_and_a_header() {
    for file in [
        "mrl-http-2.5.yaml",
        "mrl-http-2.6.yaml",
        "mrl-http-2.9.yaml",
    ] {
        let mut parsed = parse_documents(file, &read(file)).expect("valid");
        parsed.resources.push(backend_dataplane());
        let set = ResourceSet::new(parsed.resources).expect("consistent");
        let limits = set
            .effective("default", "backend-1")
            .expect("dataplane exists");
        let inbound = &limits.inbounds[0];
        assert_eq!(inbound.protocol, Protocol::Http);
        let http = inbound.http.as_ref().expect("an HTTP limit");
        assert_eq!(
            http.request_rate,
            Rate::new(5, Duration::from_secs(10)).expect("valid rate")
        );
        assert_eq!(http.status, 423);
        assert_eq!(
            http.headers.set,
            vec![HeaderValue::new("x-kuma-rate-limited", "true").expect("valid header")]
        );
        assert!(http.headers.add.is_empty());
        assert_eq!(inbound.tcp, None);
        assert_eq!(inbound.policies, vec!["backend-rate-limit".to_string()]);
    }
}

#[test]
fn tcp_seed_limits_backend_connections_to_5_per_10s() {
    for file in ["mrl-tcp-2.5.yaml", "mrl-tcp-2.6.yaml", "mrl-tcp-2.9.yaml"] {
        let mut parsed = parse_documents(file, &read(file)).expect("valid");
        parsed.resources.push(backend_dataplane());
        let set = ResourceSet::new(parsed.resources).expect("consistent");
        let limits = set
            .effective("default", "backend-1")
            .expect("dataplane exists");
        let tcp = limits.inbounds[0].tcp.as_ref().expect("a TCP limit");
        assert_eq!(
            tcp.connection_rate,
            Rate::new(5, Duration::from_secs(10)).expect("valid rate")
        );
        assert_eq!(limits.inbounds[0].http, None);
    }
}

#[test]
fn kmesh_seeds_resolve_to_inbound_addresses() {
    let mut parsed = load_paths(&[
        format!("{SEEDS}/ratelimit-basic.yaml"),
        format!("{SEEDS}/ratelimit-advanced.yaml"),
    ])
    .expect("valid");
    let dps = parse_documents(
        "dataplanes.yaml",
        r#"
type: Dataplane
name: sample-1
networking:
  address: 10.0.0.1
  inbound:
    - port: 8080
      tags: {kuma.io/service: sample-service}
---
type: Dataplane
name: users-1
networking:
  address: 10.0.0.2
  inbound:
    - port: 9000
      servicePort: 19000
      tags: {kuma.io/service: user-service}
    - port: 9001
      tags: {kuma.io/service: payment-service}
"#,
    )
    .expect("valid");
    parsed.resources.extend(dps.resources);
    let set = ResourceSet::new(parsed.resources).expect("consistent");
    let kernel = set.kernel_limits();
    let summary: Vec<(String, String, u16, u64, u64, u64)> = kernel
        .iter()
        .map(|k| {
            (
                k.service.clone(),
                k.address.clone(),
                k.port,
                k.bucket.max_tokens(),
                k.bucket.tokens_per_fill(),
                k.bucket.fill_interval_ns(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "sample-service".into(),
                "10.0.0.1".into(),
                8080,
                100,
                10,
                1_000_000_000
            ),
            (
                "user-service".into(),
                "10.0.0.2".into(),
                9000,
                50,
                5,
                500_000_000
            ),
            (
                "payment-service".into(),
                "10.0.0.2".into(),
                9001,
                20,
                2,
                1_000_000_000
            ),
        ]
    );
    let users = set.effective("default", "users-1").expect("exists");
    assert_eq!(users.kernel.len(), 2);
}

fn backend_dataplane() -> Resource {
    parse_documents(
        "dp.yaml",
        r#"
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 192.168.0.2
  inbound:
    - port: 8080
      servicePort: 18080
      tags:
        kuma.io/service: backend
        kuma.io/protocol: http
        app: backend
"#,
    )
    .expect("valid")
    .resources
    .remove(0)
}
