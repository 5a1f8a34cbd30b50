//! `meshlimit validate`, run as the real binary on real files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn validate(args: &[&Path]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("validate");
    for a in args {
        cmd.arg("-f").arg(a);
    }
    cmd.output().expect("meshlimit runs")
}

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("meshlimit-validate-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn valid_examples_print_one_ok_line_per_document() {
    let out = validate(&[&repo("examples/policies")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines(&out.stdout),
        [
            "ok Dataplane backend-1",
            "ok Dataplane backend-2",
            "ok Dataplane redis-1",
            "ok RateLimit redis-connections",
            "ok MeshRateLimit backend-rate-limit",
            "ok MeshRateLimit mesh-connections",
            "ok MeshRateLimit backend-v2",
        ]
    );
}

#[test]
fn seed_examples_are_valid_with_deprecation_warnings() {
    // Every seed example names itself backend-rate-limit, so check them one file at a time.
    let dir = repo("crates/policy/tests/fixtures/seeds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 8);
    for file in files {
        let out = validate(&[&file]);
        assert!(
            out.status.success(),
            "{file:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = lines(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stdout[0].starts_with("ok MeshRateLimit") {
            assert_eq!(stdout, ["ok MeshRateLimit backend-rate-limit"]);
            assert!(
                stderr.contains("spec.from: 'from' field is deprecated, use 'rules' instead"),
                "{stderr}"
            );
        } else {
            assert!(
                stdout.iter().all(|l| l.starts_with("ok RateLimit ")),
                "{stdout:?}"
            );
            assert!(stderr.is_empty(), "{stderr}");
        }
    }
}

#[test]
fn a_bad_document_rejects_the_whole_input_with_one_line_per_problem() {
    let dir = scratch("bad");
    let file = dir.join("policies.yaml");
    std::fs::write(
        &file,
        r#"type: Mesh
name: demo
---
type: MeshRateLimit
mesh: demo
name: too-fast
spec:
  targetRef:
    kind: Mesh
    proxyTypes: [Sidecar]
  rules:
    - default:
        local:
          http:
            requestRate:
              num: 0
              interval: 10ms
            onRateLimit:
              status: 0
          tpc:
            connectionRate: {num: 1, interval: 1s}
"#,
    )
    .expect("write");
    let out = validate(&[&file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "nothing is accepted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let f = file.display();
    assert_eq!(
        lines(&out.stderr),
        [
            format!(
                "{f}: document 2 (MeshRateLimit too-fast): spec.rules[0].default.local.tpc: unknown field 'tpc' (did you mean 'tcp'?)"
            ),
            format!(
                "{f}: document 2 (MeshRateLimit too-fast): spec.rules[0].default.local.http.requestRate.num: must be greater than 0"
            ),
            format!(
                "{f}: document 2 (MeshRateLimit too-fast): spec.rules[0].default.local.http.requestRate.interval: must be greater than: 50ms"
            ),
            format!(
                "{f}: document 2 (MeshRateLimit too-fast): spec.rules[0].default.local.http.onRateLimit.status: must be greater than 0"
            ),
        ]
    );
}

#[test]
fn duplicates_across_files_point_at_both() {
    let dir = scratch("dup");
    let policy = "type: Mesh\nname: demo\n";
    std::fs::write(dir.join("a.yaml"), policy).expect("write");
    std::fs::write(
        dir.join("b.yml"),
        format!("type: Mesh\nname: other\n---\n{policy}"),
    )
    .expect("write");
    std::fs::write(dir.join("notes.txt"), "not yaml: [").expect("write");
    let out = validate(&[&dir]);
    assert_eq!(out.status.code(), Some(1));
    let a = dir.join("a.yaml");
    let b = dir.join("b.yml");
    assert_eq!(
        lines(&out.stderr),
        [format!(
            "{}: document 2 (Mesh demo): name: duplicate Mesh 'demo' (first defined in {}, document 1): names must be unique",
            b.display(),
            a.display()
        )]
    );
}

#[test]
fn yaml_syntax_errors_and_missing_files_are_problems() {
    let dir = scratch("syntax");
    let file = dir.join("broken.yaml");
    std::fs::write(&file, "type: Mesh\nname: [unclosed\n").expect("write");
    let missing = dir.join("missing.yaml");
    let out = validate(&[&file, &missing]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = lines(&out.stderr);
    assert_eq!(stderr.len(), 2, "{stderr:?}");
    assert!(
        stderr[0].starts_with(&format!("{}: document 1: invalid YAML: ", file.display())),
        "{}",
        stderr[0]
    );
    assert!(stderr[0].contains("line 3"), "{}", stderr[0]);
    assert!(
        stderr[1].starts_with(&format!("{}: cannot read file: ", missing.display())),
        "{}",
        stderr[1]
    );
}

#[test]
fn standard_input_is_read_for_dash() {
    let mut child = Command::new(BIN)
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshlimit runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"type: Mesh\nname: from-stdin\n---\ntype: Mesh\nname: Bad\n")
        .expect("write");
    let out = child.wait_with_output().expect("exits");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        lines(&out.stderr),
        [
            "<stdin>: document 2 (Mesh): name: invalid name: must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ]
    );
}

#[test]
fn no_file_is_a_usage_error() {
    let out = Command::new(BIN).arg("validate").output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn rejection_headers_that_frame_the_response_are_refused() {
    let dir = scratch("framing");
    let file = dir.join("policy.yaml");
    std::fs::write(
        &file,
        r#"type: MeshRateLimit
mesh: default
name: framing
spec:
  targetRef:
    kind: Mesh
    proxyTypes: [Sidecar]
  rules:
    - default:
        local:
          http:
            requestRate: {num: 5, interval: 10s}
            onRateLimit:
              headers:
                set:
                  - {name: content-length, value: "0"}
                  - {name: x-limited, value: "yes"}
                add:
                  - {name: transfer-encoding, value: chunked}
                  - {name: ":status", value: "200"}
"#,
    )
    .expect("write");
    let out = validate(&[&file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let at = format!(
        "{}: document 1 (MeshRateLimit framing): spec.rules[0].default.local.http.onRateLimit.headers",
        file.display()
    );
    assert_eq!(
        lines(&out.stderr),
        [
            format!(
                "{at}.set[0].name: must not be a hop-by-hop or framing header (content-length): the proxy sets it"
            ),
            format!(
                "{at}.add[0].name: must not be a hop-by-hop or framing header (transfer-encoding): the proxy sets it"
            ),
            format!(
                "{at}.add[1].name: must be 1 to 256 characters matching ^[a-z0-9!#$%&'*+\\-.^_`|~]+$ (lowercase)"
            ),
        ]
    );
}
