//! What `meshlimit validate` accepts, every data path serves, on the boundary of the ranges:
//! hourly and monthly quotas that Kuma accepts (the bucket engine's wide path), and the
//! `RateLimit` range the kernel serves (the engine's whole range; beyond it validation reports
//! the field instead of the kernel refusing the set later). The proxy's half runs through real sockets in the proxy crate's
//! `tests/quota.rs`; here: `validate`, `inspect` (the proxy's and Envoy's view) and `simulate`.

use meshlimit_testkit::fixtures::{Target, dataplane_yaml, http_limit_yaml};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn meshlimit(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshlimit"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshlimit runs");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("meshlimit exits")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A file of `contents` in a fresh directory of this test's.
fn file(test: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshlimit-quota-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("resources.yaml");
    std::fs::write(&path, contents).expect("write resources");
    path
}

fn resources(num: u64, interval: &str) -> String {
    format!(
        "{}---\n{}",
        dataplane_yaml("backend-1", "backend", None, 18080, 18081),
        http_limit_yaml("quota", Target::Sidecars, num, interval)
    )
}

#[test]
fn quotas_kuma_accepts_validate_and_every_view_of_them_agrees() {
    // (num, interval as written, as Go prints it back, in seconds)
    for (num, interval, printed, seconds) in [
        (100_001u64, "1h", "1h0m0s", 3600u64),
        (17, "720h", "720h0m0s", 2_592_000),
        (4_294_967_295, "720h", "720h0m0s", 2_592_000),
        (1, "2562047h", "2562047h0m0s", 9_223_369_200),
    ] {
        let path = file("views", &resources(num, interval));
        let path = path.to_str().expect("utf-8 path");
        let validated = meshlimit(&["validate", "-f", path], None);
        assert!(
            validated.status.success(),
            "{num}/{interval}: {}",
            text(&validated.stderr)
        );

        // What the proxy enforces.
        let inspected = meshlimit(
            &[
                "inspect",
                "-f",
                path,
                "--dataplane",
                "backend-1",
                "-o",
                "json",
            ],
            None,
        );
        assert!(inspected.status.success(), "{}", text(&inspected.stderr));
        let json: serde_json::Value =
            serde_json::from_slice(&inspected.stdout).expect("inspect JSON");
        let rate = &json["inbounds"][0]["http"]["requestRate"];
        assert_eq!(rate["num"], num, "{json}");
        assert_eq!(rate["interval"], printed, "{json}");

        // What an Envoy sidecar is sent: the same bucket.
        let envoy = meshlimit(
            &["inspect", "-f", path, "--dataplane", "backend-1", "--envoy"],
            None,
        );
        assert!(envoy.status.success(), "{}", text(&envoy.stderr));
        let yaml = text(&envoy.stdout);
        assert!(yaml.contains(&format!("max_tokens: {num}")), "{yaml}");
        assert!(
            yaml.contains(&format!("fill_interval: {seconds}s")),
            "{yaml}"
        );
    }
}

#[test]
fn an_hourly_quota_of_100001_admits_exactly_its_burst_in_the_simulator() {
    let path = file("simulate", &resources(100_001, "1h"));
    let path = path.to_str().expect("utf-8 path");
    // 100002 arrivals at once, one more when a token is due (3600 s / 100001 = 35.99964… ms).
    let mut arrivals = "0\n".repeat(100_002);
    arrivals.push_str("35.999640\n35.999641\n");
    let out = meshlimit(
        &[
            "simulate",
            "--policy",
            path,
            "--dataplane",
            "backend-1",
            "--inbound",
            "18080",
            "--arrivals",
            "-",
        ],
        Some(&arrivals),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let last: Vec<&str> = stdout.lines().rev().take(3).collect();
    assert_eq!(
        last,
        [
            "admitted 100002 of 100004",
            "35.999641 allow",
            "35.999640 deny"
        ],
        "{}",
        &stdout[..stdout.len().min(400)]
    );
}

#[test]
fn kernel_rates_are_served_up_to_the_engines_limits_and_refused_past_them() {
    let rate_limit = |max: u64, per_fill: u64, interval: u64| {
        format!(
            "apiVersion: kmesh.net/v1alpha1\nkind: RateLimit\nmetadata: {{name: r}}\nspec:\n  \
             service: s\n  rules: [{{maxTokens: {max}, tokensPerFill: {per_fill}, fillInterval: \
             {interval}}}]\n"
        )
    };
    // At the boundaries: the largest bucket and fill, every millisecond (the shortest
    // fillInterval) or every 30 days.
    for interval in [1_000_000, 30 * 24 * 3_600_000_000_000u64] {
        let ok = file("kernel-ok", &rate_limit(1 << 40, 1 << 32, interval));
        let out = meshlimit(&["validate", "-f", ok.to_str().expect("utf-8")], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // Past them, each refused at its field.
    for (max, per_fill, field) in [
        ((1u64 << 40) + 1, 1, "maxTokens"),
        (10, (1 << 32) + 1, "tokensPerFill"),
    ] {
        let bad = file("kernel-bad", &rate_limit(max, per_fill, 1_000_000));
        let out = meshlimit(&["validate", "-f", bad.to_str().expect("utf-8")], None);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        let report = text(&out.stdout) + &text(&out.stderr);
        assert!(
            report.contains(&format!("spec.rules[0].{field}")),
            "{field}: {report}"
        );
    }
}
