//! `meshlimit control-plane` and `meshlimit run` as real processes on store files that are not
//! what the store wrote: damaged in the middle, truncated, or empty. Each is refused at start
//! with exit code 1 and one message that names the file and says what to do, never a panic and
//! never an empty store that would lift the limits of the data planes following it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use meshlimit_control_plane::ControlPlane;
use meshlimit_control_plane::wire::SourceFile;

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");
/// How long a refused start may take; a process still running after it is serving.
const PATIENCE: Duration = Duration::from_secs(20);

const POLICY: &str = "\
type: MeshRateLimit
mesh: default
name: backend-rate-limit
spec:
  targetRef:
    kind: Mesh
    proxyTypes: [Sidecar]
  rules:
    - default:
        local:
          http:
            requestRate:
              num: 5
              interval: 10s
";

/// A store written by the store itself, holding a few resources.
fn real_store(dir: &Path) -> PathBuf {
    let path = dir.join("store.redb");
    let cp = ControlPlane::open(&path).expect("a new store opens");
    for i in 0..20 {
        let content = POLICY.replace("backend-rate-limit", &format!("limit-{i}"));
        cp.apply(
            &[SourceFile {
                name: format!("p{i}.yaml"),
                content,
            }],
            false,
        )
        .expect("the policy is stored");
    }
    path
}

/// The ways each command is started on `store`, with addresses nothing else uses.
fn commands(store: &Path) -> [Command; 2] {
    let mut control_plane = Command::new(BIN);
    control_plane
        .args(["control-plane", "--api", "127.0.0.1:0", "--store"])
        .arg(store);
    let mut run = Command::new(BIN);
    run.args(["run", "--no-kernel", "--admin", "127.0.0.1:0", "--store"])
        .arg(store);
    [control_plane, run]
}

/// Runs `command` to its exit; one still running after [`PATIENCE`] is killed and fails the test.
fn to_exit(mut command: Command) -> Output {
    let mut child = command
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the meshlimit binary starts");
    // Polled, not timed: PATIENCE in 20 ms steps.
    let mut polls = PATIENCE.as_millis() / 20;
    while child.try_wait().expect("the child can be polled").is_none() {
        polls = polls.saturating_sub(1);
        if polls == 0 {
            child.kill().expect("the child can be killed");
            let out = child.wait_with_output().expect("the child is reaped");
            panic!(
                "{command:?} did not refuse its store: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("the child's output")
}

/// Both commands exit 1 on `store` with a message containing every one of `want`.
fn both_refuse(store: &Path, want: &[&str]) {
    let before = std::fs::read(store).expect("the store file");
    for command in commands(store) {
        let shown = format!("{command:?}");
        let out = to_exit(command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{shown}: {stderr}");
        assert!(!stderr.contains("panicked"), "{shown}: {stderr}");
        for w in want {
            assert!(stderr.contains(w), "{shown}: {w:?} missing from {stderr}");
        }
        assert!(
            out.stdout.is_empty(),
            "{shown} served: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(
        std::fs::read(store).expect("the store file"),
        before,
        "a refused store is left as it was, to be restored or inspected"
    );
}

const WHAT_TO_DO: &str = "restore it from a backup, or move it away to start with an empty store";

#[test]
fn a_store_damaged_in_the_middle_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = real_store(dir.path());
    let mut bytes = std::fs::read(&store).expect("the store file");
    assert!(bytes.len() > 16 * 4096, "the store spans pages");
    // Past the header and its commit slots, every page gets a few bytes overwritten: some of
    // them are the pages the latest commit reads.
    for page in (16 * 1024..bytes.len()).step_by(4096) {
        bytes[page + 100..page + 116].fill(0xa5);
    }
    std::fs::write(&store, &bytes).expect("the damaged copy");
    let shown = store.display().to_string();
    both_refuse(&store, &[&format!("store {shown} is damaged"), WHAT_TO_DO]);
}

#[test]
fn a_truncated_store_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = real_store(dir.path());
    let bytes = std::fs::read(&store).expect("the store file");
    std::fs::write(&store, &bytes[..bytes.len() / 2]).expect("the truncated copy");
    let shown = store.display().to_string();
    both_refuse(&store, &[&format!("store {shown} is damaged"), WHAT_TO_DO]);
}

#[test]
fn an_empty_file_is_not_a_store() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = dir.path().join("store.redb");
    std::fs::write(&store, b"").expect("an empty file");
    both_refuse(
        &store,
        &[&format!(
            "store {} is empty: not a meshlimit store; remove it to start with an empty store",
            store.display()
        )],
    );
}

#[test]
fn an_intact_store_is_served_and_a_missing_one_is_created() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let intact = real_store(dir.path());
    let missing = dir.path().join("new").join("store.redb");
    for store in [&intact, &missing] {
        let [mut command, _] = commands(store);
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the meshlimit binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let first = BufReader::new(stdout).lines().next();
        child.kill().expect("the control plane can be killed");
        child.wait().expect("the control plane is reaped");
        let first = first.and_then(Result::ok).unwrap_or_default();
        assert!(
            first.contains("API listening on "),
            "{}: {first:?}",
            store.display()
        );
    }
    assert!(missing.exists());
}
