//! `meshlimit inspect`, run as the real binary on the example resource files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies")
}

fn inspect(extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("inspect")
        .arg("-f")
        .arg(examples())
        .args(extra)
        .output()
        .expect("meshlimit runs")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

#[test]
fn json_is_the_contract_shape_with_merged_limits() {
    let out = inspect(&["--dataplane", "backend-2", "-o", "json"]);
    assert_eq!(
        json_of(&out),
        json!({
            "dataplane": "backend-2",
            "mesh": "default",
            "address": "127.0.0.2",
            "inbounds": [{
                "port": 18080,
                "servicePort": 8080,
                "service": "backend",
                "protocol": "http",
                // backend-v2 (MeshServiceSubset) replaces the rate; the status and headers of
                // backend-rate-limit (MeshSubset, less specific) remain.
                "http": {
                    "requestRate": {"num": 2, "interval": "10s"},
                    "policy": "backend-v2",
                    "status": 423,
                    "headers": {
                        "set": [{"name": "x-kuma-rate-limited", "value": "true"}],
                        "add": []
                    }
                },
                "tcp": {"connectionRate": {"num": 100, "interval": "1s"}},
                "policies": ["mesh-connections", "backend-rate-limit", "backend-v2"],
                // The route Kuma's Envoy gets for backend-v2's spiffeID rule: its rate over
                // the inbound's status and headers.
                "sources": [{
                    "spiffeId": {"type": "Exact", "value": "spiffe://default/frontend"},
                    "http": {
                        "requestRate": {"num": 50, "interval": "10s"},
                        "policy": "backend-v2",
                        "status": 423,
                        "headers": {
                            "set": [{"name": "x-kuma-rate-limited", "value": "true"}],
                            "add": []
                        }
                    }
                }]
            }],
            "kernel": []
        })
    );
}

#[test]
fn json_shows_kernel_limits_towards_the_instance() {
    let out = inspect(&["--dataplane", "redis-1", "--mesh", "default", "-o", "json"]);
    let v = json_of(&out);
    assert_eq!(v["inbounds"][0]["protocol"], "tcp");
    assert_eq!(v["inbounds"][0]["http"], serde_json::Value::Null);
    assert_eq!(
        v["kernel"],
        json!([{
            "service": "redis",
            "address": "127.0.0.3",
            "port": 16379,
            "maxTokens": 20,
            "tokensPerFill": 2,
            "fillIntervalNs": 1_000_000_000u64
        }])
    );
}

#[test]
fn table_puts_each_limit_in_words() {
    let out = inspect(&["--dataplane", "backend-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "Dataplane backend-1 (mesh default, address 127.0.0.1)"
    );
    assert!(lines[1].starts_with("PORT"), "{table}");
    let row: Vec<&str> = lines[2]
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        row,
        [
            "18080->8080",
            "backend",
            "http",
            "5 requests per 10s, 423 + 1 header",
            "100 connections per 1s",
            "mesh-connections, backend-rate-limit",
        ]
    );
    assert_eq!(
        lines.len(),
        3,
        "no per-source or kernel sections for backend-1: {table}"
    );
}

#[test]
fn table_lists_per_source_rules_and_kernel_limits() {
    let out = inspect(&["--dataplane", "backend-2"]);
    let table = String::from_utf8(out.stdout).expect("utf-8");
    assert!(table.contains("Per-source rules"), "{table}");
    let source_row = table
        .lines()
        .find(|l| l.contains("spiffe://default/frontend"))
        .expect("a row for the spiffeID match");
    assert!(
        source_row.contains("50 requests per 10s, 423 + 1 header"),
        "{source_row}"
    );

    let out = inspect(&["--dataplane", "redis-1"]);
    let table = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        table.contains("127.0.0.3:16379   redis     burst 20, 2 connections every 1s"),
        "{table}"
    );
    assert!(
        table.contains("16379->6379   redis     tcp        none"),
        "{table}"
    );
}

#[test]
fn unknown_dataplane_or_mesh_fails_and_names_the_known_ones() {
    let out = inspect(&["--dataplane", "backend-3"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no Dataplane 'backend-3' in mesh 'default' (the files define: backend-1 (mesh default), backend-2 (mesh default), redis-1 (mesh default))"),
        "{stderr}"
    );
    let out = inspect(&["--dataplane", "backend-1", "--mesh", "other"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn invalid_files_fail_like_validate() {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policy/tests/fixtures/broken/unknown-field.yaml");
    let out = Command::new(BIN)
        .arg("inspect")
        .arg("-f")
        .arg(&policy)
        .args(["--dataplane", "x"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(": document 1 (MeshRateLimit typo): spec.rules[0].default.local.http.requestrate: unknown field 'requestrate' (did you mean 'requestRate'?)"),
        "{stderr}"
    );
}

#[test]
fn envoy_shows_the_listeners_and_clusters_xds_sends() {
    let out = inspect(&["--dataplane", "backend-2", "--envoy"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("utf-8");
    // What the xDS server generates from the limits `-o json` shows.
    let limits: meshlimit_policy::DataplaneLimits = serde_json::from_value(json_of(&inspect(&[
        "--dataplane",
        "backend-2",
        "-o",
        "json",
    ])))
    .expect("the JSON is DataplaneLimits");
    assert_eq!(yaml, meshlimit_xds::render_yaml(&limits));
    // And in it, the merged limits of json_is_the_contract_shape_with_merged_limits: 100
    // connections per second in front, then 2 requests per 10s answered with 423 and a header.
    for expected in [
        "# Envoy resources for Dataplane backend-2 in mesh default (xDS node id default.backend-2)\n",
        "  - name: inbound:127.0.0.2:18080\n",
        "      - name: envoy.filters.network.local_ratelimit\n",
        "          token_bucket:\n            max_tokens: 100\n            tokens_per_fill: 100\n            fill_interval: 1s\n",
        "          - name: envoy.filters.http.local_ratelimit\n",
        "              status:\n                code: Locked\n              token_bucket:\n                max_tokens: 2\n                tokens_per_fill: 2\n                fill_interval: 10s\n",
        "                  key: x-kuma-rate-limited\n",
        "  - name: localhost:8080\n",
    ] {
        assert!(
            yaml.contains(expected),
            "{expected:?} missing from:\n{yaml}"
        );
    }
}

#[test]
fn envoy_output_is_yaml_only() {
    let out = inspect(&["--dataplane", "backend-1", "--envoy", "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'--envoy' cannot be used with '--output"),
        "{stderr}"
    );
}

/// What a Dataplane declares that nothing enforces (an inbound in state Ignored, a zone-proxy
/// listener) is listed under the table, and on standard error beside JSON or Envoy output.
#[test]
fn what_is_not_enforced_is_said() {
    let dir =
        std::env::temp_dir().join(format!("meshlimit-inspect-ignored-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let file = dir.join("dp.yaml");
    std::fs::write(
        &file,
        "type: Dataplane\nname: zp\nnetworking:\n  address: 127.0.0.2\n  inbound:\n    - port: 8080\n      tags: {kuma.io/service: web, kuma.io/protocol: http}\n    - port: 8081\n      state: Ignored\n      tags: {kuma.io/service: web, kuma.io/protocol: http}\n  listeners:\n    - {type: ZoneEgress, address: 127.0.0.2, port: 10002, name: ze}\n",
    )
    .expect("written");
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .arg("inspect")
            .arg("-f")
            .arg(&file)
            .args(["--dataplane", "zp"])
            .args(extra)
            .output()
            .expect("meshlimit runs")
    };
    let ignored = "inbound 8081 (web) is in state Ignored: no proxy listens there, so no limit applies (as in Kuma)";
    let listener = "ZoneEgress listener ze (port 10002) is a zone proxy listener: meshlimit does not enforce MeshRateLimit on zone proxies (Kuma does), so its traffic is not limited";

    let table = run(&[]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(&format!("\nNot enforced:\n  - {ignored}\n  - {listener}\n")),
        "{text}"
    );
    let rows = text.split("Not enforced:").next().unwrap_or_default();
    assert!(
        !rows.lines().any(|l| l.starts_with("8081")),
        "the Ignored inbound has no row: {text}"
    );

    let json = run(&["-o", "json"]);
    let value = json_of(&json);
    assert_eq!(value["inbounds"].as_array().map(Vec::len), Some(1));
    let err = String::from_utf8_lossy(&json.stderr);
    assert!(err.contains(ignored) && err.contains(listener), "{err}");

    let envoy = run(&["--envoy"]);
    assert!(envoy.status.success());
    let err = String::from_utf8_lossy(&envoy.stderr);
    assert!(err.starts_with("not enforced:\n"), "{err}");
    let yaml = String::from_utf8_lossy(&envoy.stdout);
    assert!(
        !yaml.contains("8081"),
        "no Envoy listener for the Ignored inbound: {yaml}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
