//! The command line's shared conventions: `--cp`/`--token` only on commands that contact a
//! control plane, environment hints that do not pretend a variable is set, and one duration
//! form for every duration flag, the same proxy flags on `run` and `dataplane`.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");

fn meshlimit(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("MESHLIMIT_CP")
        .env_remove("MESHLIMIT_TOKEN")
        .output()
        .expect("meshlimit runs")
}

fn help(command: &str) -> String {
    let out = meshlimit(&[command, "--help"]);
    assert!(out.status.success(), "{command} --help");
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn control_plane_options_are_shown_only_where_they_are_used() {
    for command in [
        "agent",
        "dataplane",
        "apply",
        "get",
        "describe",
        "delete",
        "diagnose",
        "top",
    ] {
        let text = help(command);
        assert!(text.contains("--cp <CP>"), "{command} lacks --cp:\n{text}");
        assert!(text.contains("--token <TOKEN>"), "{command} lacks --token");
        // The hint names the variable without showing an (unset, empty) value.
        assert!(text.contains("[env: MESHLIMIT_CP]"), "{command}:\n{text}");
        assert!(!text.contains("MESHLIMIT_CP="), "{command}:\n{text}");
    }
    for command in [
        "simulate",
        "validate",
        "inspect",
        "run",
        "control-plane",
        "envoy",
    ] {
        let text = help(command);
        assert!(!text.contains("--cp"), "{command} shows --cp:\n{text}");
        assert!(
            !text.contains("--token <"),
            "{command} shows --token:\n{text}"
        );
    }
    let top = String::from_utf8(meshlimit(&["--help"]).stdout).unwrap();
    assert!(!top.contains("--cp"), "top-level help shows --cp:\n{top}");
}

#[test]
fn cp_before_the_subcommand_still_works_and_is_refused_where_it_means_nothing() {
    // The older form reaches the address it names (nothing listens on port 1).
    let before = meshlimit(&["--cp", "http://127.0.0.1:1", "get", "mrl"]);
    assert_eq!(before.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&before.stderr).contains("http://127.0.0.1:1/"));
    let after = meshlimit(&["get", "mrl", "--cp", "http://127.0.0.1:1"]);
    assert!(String::from_utf8_lossy(&after.stderr).contains("http://127.0.0.1:1/"));

    let pointless = meshlimit(&["--cp", "http://127.0.0.1:1", "man"]);
    assert_eq!(pointless.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&pointless.stderr).contains("does not contact a control plane"),
        "{}",
        String::from_utf8_lossy(&pointless.stderr)
    );
    let unknown = meshlimit(&["validate", "--cp", "x", "-f", "x.yaml"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn every_duration_flag_takes_the_same_go_style_form() {
    let cases: [&[&str]; 5] = [
        &["dataplane", "--name", "a", "--report-interval"],
        &["run", "--report-interval"],
        &["run", "--drain-timeout"],
        &["run", "--request-headers-timeout"],
        &["get", "ratelimit-stats", "--watch", "--interval"],
    ];
    for case in cases {
        // A bare number is refused with the form to use.
        let bare = meshlimit(&[case, &["2"]].concat());
        let stderr = String::from_utf8_lossy(&bare.stderr);
        assert_eq!(bare.status.code(), Some(2), "{case:?}: {stderr}");
        assert!(
            stderr.contains("has no unit: write a duration such as 2s or 2ms"),
            "{case:?}: {stderr}"
        );
        let unknown_unit = meshlimit(&[case, &["2 fortnights"]].concat());
        assert_eq!(unknown_unit.status.code(), Some(2), "{case:?}");
    }
    // Where zero makes no sense, zero is refused too.
    let zero = meshlimit(&["dataplane", "--name", "a", "--report-interval", "0s"]);
    assert_eq!(zero.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("must be longer than 0"));
}

#[test]
fn the_control_plane_logs_through_the_same_setup_as_run() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "control-plane",
            "--api",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--store",
        ])
        .arg(dir.path().join("store.redb"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut events = Vec::new();
    for line in stderr.lines().map_while(Result::ok) {
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let listening = event["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("API listening on http://127.0.0.1:"));
        events.push(event);
        if listening {
            break;
        }
    }
    // The address is also on stdout, one line, for scripts.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.starts_with("meshlimit control plane: API listening on http://"),
        "{first}"
    );
    let last = events.last().expect("events");
    assert_eq!(last["level"], "INFO");
    assert!(
        last["timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("20"))
    );
}

#[test]
fn run_and_dataplane_take_the_same_proxy_flags() {
    let (run, dataplane) = (help("run"), help("dataplane"));
    for flag in [
        "--rate-limit-headers[=<STYLE>]",
        "--max-request-header-bytes <BYTES>",
        "--max-request-body-bytes <BYTES>",
        "--upstream-timeout <DURATION>",
        "--request-headers-timeout <DURATION>",
        "--idle-timeout <DURATION>",
        "--max-connections <N>",
        "--max-connections-per-inbound <N>",
        "--forward-connect",
        "--worker-threads <N>",
    ] {
        assert!(run.contains(flag), "run lacks {flag}:\n{run}");
        assert!(
            dataplane.contains(flag),
            "dataplane lacks {flag}:\n{dataplane}"
        );
    }
    // The header style is checked where it is parsed.
    let out = meshlimit(&["run", "--rate-limit-headers=draft-99", "--help"]);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("draft-99") && error.contains("x-ratelimit"),
        "{error}"
    );
    // So is the thread count, on both.
    for command in ["run", "dataplane"] {
        let out = meshlimit(&[command, "--worker-threads", "0", "--help"]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(
            error.contains("--worker-threads") && error.contains("1.."),
            "{command}: {error}"
        );
    }
}
