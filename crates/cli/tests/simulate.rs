//! `meshlimit simulate` through the real binary: output format, both refill modes, the rate
//! shorthand, standard input, exit status 2 with the offending line for bad input, and the
//! `--policy` mode (the effective HTTP limit of one inbound, from the example and seed files).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn meshlimit(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshlimit"))
        .arg("simulate")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start meshlimit");
    let mut input = child.stdin.take().expect("stdin");
    // A command that fails on its flags exits without reading its input: a closed pipe is fine.
    match input.write_all(stdin.unwrap_or("").as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.expect("write stdin"),
    }
    drop(input);
    child.wait_with_output().expect("meshlimit runs")
}

/// A trace file in a fresh temporary directory (removed at the end of the test process).
struct Trace {
    dir: PathBuf,
    path: PathBuf,
}

impl Trace {
    fn new(name: &str, contents: &str) -> Trace {
        let dir =
            std::env::temp_dir().join(format!("meshlimit-simulate-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("trace.txt");
        std::fs::write(&path, contents).expect("write trace");
        Trace { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Bursts of 15 at 0 s, 10 at 5.03 s, 7.54 s and 10.55 s: the times of the Envoy 1.40
/// measurement of `10 per 10s`.
fn envoy_bursts() -> String {
    let mut trace = String::new();
    for (offset, count) in [("0", 15), ("5030", 10), ("7540", 10), ("10550", 10)] {
        for _ in 0..count {
            trace.push_str(offset);
            trace.push('\n');
        }
    }
    trace
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 errors")
}

/// Admissions per distinct offset, in trace order.
fn admitted_per_offset(text: &str) -> Vec<(String, usize)> {
    let mut per: Vec<(String, usize)> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with("admitted")) {
        let (offset, verdict) = line.split_once(' ').expect("'<offset> <verdict>'");
        assert!(verdict == "allow" || verdict == "deny", "{line}");
        match per.last_mut() {
            Some((o, n)) if o == offset => *n += usize::from(verdict == "allow"),
            _ => per.push((offset.to_string(), usize::from(verdict == "allow"))),
        }
    }
    per
}

#[test]
fn smooth_refill_admits_what_envoy_admits() {
    let trace = Trace::new("smooth", &envoy_bursts());
    let out = meshlimit(
        &[
            "--max-tokens",
            "10",
            "--tokens-per-fill",
            "10",
            "--fill-interval",
            "10s",
            "--arrivals",
            trace.path(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 46);
    assert_eq!(
        admitted_per_offset(&text),
        [
            ("0".to_string(), 10),
            ("5030".to_string(), 5),
            ("7540".to_string(), 2),
            ("10550".to_string(), 3)
        ]
    );
    assert!(text.starts_with("0 allow\n"));
    assert!(text.ends_with("10550 deny\nadmitted 20 of 45\n"), "{text}");
}

#[test]
fn interval_refill_and_the_rate_shorthand() {
    let trace = Trace::new("interval", &envoy_bursts());
    // Whole intervals: nothing comes back until 10 s, then all 10.
    let out = meshlimit(
        &[
            "--rate",
            "10/10s",
            "--refill",
            "interval",
            "--arrivals",
            trace.path(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        admitted_per_offset(&text),
        [
            ("0".to_string(), 10),
            ("5030".to_string(), 0),
            ("7540".to_string(), 0),
            ("10550".to_string(), 10)
        ]
    );
    assert!(text.ends_with("admitted 20 of 45\n"));
}

#[test]
fn reads_standard_input_and_admits_at_the_exact_accrual_instant() {
    // 3 per second, one at most: after the first, the next token accrues at 333.333333⅓ ms.
    let out = meshlimit(
        &["--rate", "1/333333333ns", "--arrivals", "-"],
        Some("0\n333.333332\n333.333333\n# a comment\n\n666.666666\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "0 allow\n333.333332 deny\n333.333333 allow\n666.666666 allow\nadmitted 3 of 4\n"
    );
    let out = meshlimit(
        &[
            "--max-tokens",
            "1",
            "--tokens-per-fill",
            "3",
            "--fill-interval",
            "1s",
            "--arrivals",
            "-",
        ],
        Some("0\n333.333333\n333.333334\n"),
    );
    assert_eq!(
        stdout(&out),
        "0 allow\n333.333333 deny\n333.333334 allow\nadmitted 2 of 3\n"
    );
}

#[test]
fn malformed_or_decreasing_lines_exit_2_naming_the_line() {
    let trace = Trace::new("malformed", "0\n10\nsoon\n20\n");
    let out = meshlimit(&["--rate", "5/10s", "--arrivals", trace.path()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no partial output");
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:3:", trace.path())), "{err}");
    assert!(err.contains("\"soon\""), "{err}");

    let out = meshlimit(&["--rate", "5/10s", "--arrivals", "-"], Some("5\n4.999\n"));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("<stdin>:2:"), "{err}");
    assert!(err.contains("before the previous arrival"), "{err}");
}

#[test]
fn bad_flags_exit_2_with_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["--arrivals", "-"], "no bucket given"),
        (&["--rate", "5", "--arrivals", "-"], "NUM/DUR"),
        (&["--rate", "5/10", "--arrivals", "-"], "missing unit"),
        (
            &["--rate", "0/10s", "--arrivals", "-"],
            "max_tokens must be at least 1",
        ),
        (
            &["--max-tokens", "5", "--arrivals", "-"],
            "--tokens-per-fill",
        ),
        (
            &["--rate", "5/1s", "--max-tokens", "5", "--arrivals", "-"],
            "cannot be used with",
        ),
        (
            &["--rate", "5/1s", "--refill", "burst", "--arrivals", "-"],
            "unknown refill mode",
        ),
        (
            &["--rate", "5/1s", "--arrivals", "/nonexistent/trace"],
            "cannot open",
        ),
    ];
    for (args, reason) in cases {
        let out = meshlimit(args, Some("0\n"));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(reason), "{args:?}: {}", stderr(&out));
    }
}

/// A file of the repository (examples and policy fixtures).
fn repo_file(relative: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    assert!(path.exists(), "{}", path.display());
    path.to_str().expect("utf-8 path").to_string()
}

const SEED_HTTP: &str = "crates/policy/tests/fixtures/seeds/mrl-http-2.9.yaml";
const SEED_TCP: &str = "crates/policy/tests/fixtures/seeds/mrl-tcp-2.9.yaml";
const DATAPLANES: &str = "examples/policies/dataplanes.yaml";

#[test]
fn policy_mode_simulates_the_seed_http_limit_like_its_rate() {
    let trace = Trace::new("policy-seed", &envoy_bursts());
    let out = meshlimit(
        &[
            "--policy",
            &repo_file(SEED_HTTP),
            &repo_file(DATAPLANES),
            "--dataplane",
            "backend-1",
            "--inbound",
            "18080",
            "--arrivals",
            trace.path(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let (first, rest) = text.split_once('\n').expect("a first line");
    assert_eq!(
        first,
        "# Dataplane backend-1 (mesh default), inbound 18080 (service backend): HTTP limit 5 \
         requests per 10s, smooth refill, rejected with 423; MeshRateLimits on this inbound: \
         backend-rate-limit"
    );
    // 5 per 10 s, smooth: 5 at once, then 2.515 tokens by 5.03 s, 1.77 by 7.54 s (0.515 kept
    // plus 1.255), 2.275 by 10.55 s.
    assert_eq!(
        admitted_per_offset(rest),
        [
            ("0".to_string(), 5),
            ("5030".to_string(), 2),
            ("7540".to_string(), 1),
            ("10550".to_string(), 2)
        ]
    );
    assert!(rest.ends_with("admitted 10 of 45\n"), "{rest}");
    // The seed uses the deprecated `from`: the warning goes to stderr, as validate prints it.
    assert!(
        stderr(&out).contains("'from' field is deprecated"),
        "{}",
        stderr(&out)
    );

    // The same bucket given by flags decides every arrival the same way.
    let by_flags = meshlimit(&["--rate", "5/10s", "--arrivals", trace.path()], None);
    assert_eq!(stdout(&by_flags), rest);
}

#[test]
fn policy_mode_merges_policies_and_reads_them_from_standard_input() {
    let trace = Trace::new("policy-merge", "0\n0\n0\n0\n1000\n");
    let policies = std::fs::read_to_string(repo_file("examples/policies/mesh-rate-limits.yaml"))
        .expect("read example policies");
    let base = [
        "--policy",
        "-",
        &repo_file(DATAPLANES),
        "--dataplane",
        "backend-2",
        "--inbound",
        "18080",
        "--arrivals",
        trace.path(),
    ];
    // backend v2 gets the tighter 2 per 10 s, and the status of the less specific policy.
    let out = meshlimit(&base, Some(&policies));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text.lines().next(),
        Some(
            "# Dataplane backend-2 (mesh default), inbound 18080 (service backend): HTTP limit 2 \
             requests per 10s, smooth refill, rejected with 423; MeshRateLimits on this inbound: \
             mesh-connections, backend-rate-limit, backend-v2 (clients matching rules[].matches \
             get other limits: see --spiffe-id, --sni)"
        )
    );
    assert!(
        text.ends_with("0 allow\n0 allow\n0 deny\n0 deny\n1000 deny\nadmitted 2 of 5\n"),
        "{text}"
    );

    // The trusted client of the `matches` rule gets 50 per 10 s.
    let mut trusted = base.to_vec();
    trusted.extend(["--spiffe-id", "spiffe://default/frontend"]);
    let out = meshlimit(&trusted, Some(&policies));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "# Dataplane backend-2 (mesh default), inbound 18080 (service backend) for a client \
             with spiffeID spiffe://default/frontend: HTTP limit 50 requests per 10s,"
        ),
        "{text}"
    );
    assert!(text.ends_with("admitted 5 of 5\n"), "{text}");
}

#[test]
fn connections_mode_simulates_the_inbounds_tcp_limit() {
    // The seed's TCP policy: 5 connections per 10 s, a token every 2 s.
    let seed_tcp = repo_file(SEED_TCP);
    let dataplanes = repo_file(DATAPLANES);
    let arrivals = "0\n1\n2\n3\n4\n5\n1999\n2000\n2001\n";
    let out = meshlimit(
        &[
            "--policy",
            &seed_tcp,
            &dataplanes,
            "--dataplane",
            "backend-1",
            "--inbound",
            "18080",
            "--connections",
            "--arrivals",
            "-",
        ],
        Some(arrivals),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.contains("inbound 18080 (service backend): TCP limit 5 connections per 10s"),
        "{header}"
    );
    let verdicts: Vec<&str> = lines.collect();
    assert_eq!(
        verdicts,
        [
            "0 allow",
            "1 allow",
            "2 allow",
            "3 allow",
            "4 allow",
            "5 deny",
            "1999 deny",
            "2000 allow",
            "2001 deny",
            "admitted 6 of 9",
        ]
    );
}

#[test]
fn policy_mode_exits_2_when_there_is_no_http_limit_to_simulate() {
    let examples = repo_file("examples/policies");
    let dataplanes = repo_file(DATAPLANES);
    let seed_tcp = repo_file(SEED_TCP);
    let cases: &[(&[&str], &[&str])] = &[
        (
            &[
                "--policy",
                &examples,
                "--dataplane",
                "backend-9",
                "--inbound",
                "18080",
            ],
            &[
                "no Dataplane 'backend-9' in mesh 'default'",
                "backend-1 (mesh default), backend-2 (mesh default), redis-1 (mesh default)",
            ],
        ),
        (
            &[
                "--policy",
                &examples,
                "--dataplane",
                "backend-1",
                "--inbound",
                "18080",
                "--mesh",
                "prod",
            ],
            &["no Dataplane 'backend-1' in mesh 'prod'"],
        ),
        (
            &[
                "--policy",
                &examples,
                "--dataplane",
                "backend-1",
                "--inbound",
                "8080",
            ],
            &[
                "Dataplane 'backend-1' has no inbound on port 8080 (its inbounds: 18080 (service backend))",
            ],
        ),
        (
            &[
                "--policy",
                &examples,
                "--dataplane",
                "redis-1",
                "--inbound",
                "16379",
            ],
            &[
                "inbound 16379 of Dataplane 'redis-1' (service redis, tcp) has no HTTP request limit: \
                 it has a TCP connection limit of 100 connections per 1s instead (from mesh-connections); \
                 add --connections to replay the arrivals as connections",
            ],
        ),
        (
            &[
                "--policy",
                &seed_tcp,
                &dataplanes,
                "--dataplane",
                "backend-1",
                "--inbound",
                "18080",
            ],
            &[
                "(service backend, http) has no HTTP request limit: it has a TCP connection limit of 5 connections per 10s instead",
            ],
        ),
        (
            &[
                "--policy",
                &dataplanes,
                "--dataplane",
                "backend-1",
                "--inbound",
                "18080",
            ],
            &["has no HTTP request limit: no MeshRateLimit selects it"],
        ),
        (
            &[
                "--policy",
                &dataplanes,
                "--dataplane",
                "backend-1",
                "--inbound",
                "18080",
                "--connections",
            ],
            &["has no TCP connection limit: no MeshRateLimit selects it"],
        ),
    ];
    for (args, reasons) in cases {
        let mut args = args.to_vec();
        args.extend(["--arrivals", "-"]);
        let out = meshlimit(&args, Some("0\n"));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}: {}", stdout(&out));
        for reason in *reasons {
            assert!(stderr(&out).contains(reason), "{args:?}: {}", stderr(&out));
        }
    }
}

#[test]
fn policy_mode_rejects_invalid_files_and_mixed_flags() {
    let broken = repo_file("crates/policy/tests/fixtures/broken/unknown-field.yaml");
    let dataplanes = repo_file(DATAPLANES);
    let policy = [
        "--policy",
        &dataplanes,
        "--dataplane",
        "backend-1",
        "--inbound",
        "18080",
    ];
    let with = |extra: &[&'static str]| {
        let mut args = policy.to_vec();
        args.extend_from_slice(extra);
        args
    };
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec![
                "--policy",
                &broken,
                "--dataplane",
                "x",
                "--inbound",
                "1",
                "--arrivals",
                "-",
            ],
            format!(
                "the policy files are not valid:\n  {broken}: document 1 (MeshRateLimit typo): \
                 spec.rules[0].default.local.http.requestrate"
            ),
        ),
        (
            with(&["--rate", "5/10s", "--arrivals", "-"]),
            "cannot be used with".to_string(),
        ),
        (
            with(&["--refill", "interval", "--arrivals", "-"]),
            "cannot be used with".to_string(),
        ),
        (
            vec![
                "--policy",
                &dataplanes,
                "--dataplane",
                "backend-1",
                "--arrivals",
                "-",
            ],
            "--inbound <PORT>".to_string(),
        ),
        (
            vec![
                "--dataplane",
                "backend-1",
                "--rate",
                "5/10s",
                "--arrivals",
                "-",
            ],
            "--policy <PATH>".to_string(),
        ),
        (
            vec!["--mesh", "prod", "--rate", "5/10s", "--arrivals", "-"],
            "--policy <PATH>".to_string(),
        ),
        (
            vec![
                "--policy",
                "-",
                "--dataplane",
                "backend-1",
                "--inbound",
                "18080",
                "--arrivals",
                "-",
            ],
            "both read standard input".to_string(),
        ),
    ];
    for (args, reason) in cases {
        let out = meshlimit(&args, Some("0\n"));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(&reason), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn policy_mode_simulates_this_instances_share_of_a_global_limit_after_the_local_one() {
    let dataplane = |name: &str, port: u16| {
        format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  \
             inbound:\n    - port: {port}\n      servicePort: 9000\n      tags:\n        \
             kuma.io/service: web\n        kuma.io/protocol: http\n---\n"
        )
    };
    let resources = format!(
        "{}{}type: MeshGlobalRateLimit\nmesh: default\nname: web-total\nspec:\n  targetRef:\n    \
         kind: MeshService\n    name: web\n  from:\n    - targetRef:\n        kind: Mesh\n      \
         default:\n        http:\n          requestRate: {{num: 3, interval: 1h}}\n---\ntype: \
         MeshRateLimit\nmesh: default\nname: local\nspec:\n  targetRef:\n    kind: Mesh\n    \
         proxyTypes: [Sidecar]\n  rules:\n    - default:\n        local:\n          http:\n            requestRate: {{num: \
         1, interval: 1s}}\n",
        dataplane("web-1", 8080),
        dataplane("web-2", 8081)
    );
    let policy = Trace::new("global-policy", &resources);
    // The local limit (1 a second) first; the global share of web-1 is 2 of the total 3.
    let trace = Trace::new("global-arrivals", "0\n0\n1000\n2000\n3000\n");
    let out = meshlimit(
        &[
            "--policy",
            policy.path(),
            "--dataplane",
            "web-1",
            "--inbound",
            "8080",
            "--arrivals",
            trace.path(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "# Dataplane web-1 (mesh default), inbound 8080 (service web): HTTP limit 1 requests \
             per 1s, smooth refill, rejected with 429; MeshRateLimits on this inbound: local; \
             then global limit 3 requests per 1h0m0s in total, this instance's share 2 requests \
             per 1h0m0s (1 of 2 instances), rejected with 429; MeshGlobalRateLimits: web-total\n"
        ),
        "{text}"
    );
    assert_eq!(
        text.lines().skip(1).collect::<Vec<_>>(),
        [
            "0 allow",
            "0 deny",
            "1000 allow",
            "2000 deny",
            "3000 deny",
            "admitted 2 of 5"
        ]
    );
}
