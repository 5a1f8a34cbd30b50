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
use meshlimit_testkit::fixtures::{Target, http_limit_yaml};

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");
/// How long a refused start may take; a process still running after it is serving.
const PATIENCE: Duration = Duration::from_secs(20);

/// A store written by the store itself, holding a few resources.
fn real_store(dir: &Path) -> PathBuf {
    let path = dir.join("store.redb");
    let cp = ControlPlane::open(&path).expect("a new store opens");
    for i in 0..20 {
        let content = http_limit_yaml(&format!("limit-{i}"), Target::Sidecars, 5, "10s");
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

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped (even when the test
/// fails), so that a full disk can be made and freed without touching anything else.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix(&format!("meshlimit-enospc-{}-", std::process::id()))
            .tempdir()
            .expect("a mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CAP_SYS_ADMIN): {status}"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("the filler file");
        let chunk = vec![0x5a_u8; 16 * 1024];
        // Bounded: the tmpfs is a few MiB.
        for _ in 0..100_000 {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // What is left in a page, byte by byte.
        while file.write(&[0]).is_ok_and(|n| n == 1) {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A `meshlimit control-plane` on `store`, killed when dropped.
struct Server {
    child: std::process::Child,
    addr: String,
}

impl Server {
    fn start(store: &Path) -> Server {
        let [mut command, _] = commands(store);
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the meshlimit binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let addr = first
            .split("API listening on http://")
            .nth(1)
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .trim()
            .to_string();
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer: status, `Content-Type`, body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// One request on a fresh connection.
fn http(addr: &str, method: &str, path: &str, body: &str) -> Answer {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("the API accepts");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("a read timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: cp\r\nContent-Type: application/yaml\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("the request is sent");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a whole answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: body.to_string(),
    }
}

/// `count` policies named `<prefix>-<i>` in one multi-document body.
fn policies(prefix: &str, count: usize) -> String {
    (0..count)
        .map(|i| http_limit_yaml(&format!("{prefix}-{i}"), Target::Sidecars, 5, "10s"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The names of every stored MeshRateLimit, by paging through the list.
fn stored_names(addr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut next = Some("/meshratelimits?size=1000".to_string());
    while let Some(path) = next {
        let answer = http(addr, "GET", &path, "");
        assert_eq!(answer.status, 200, "{}", answer.body);
        let page: serde_json::Value = serde_json::from_str(&answer.body).expect("a JSON page");
        for item in page["items"].as_array().expect("items") {
            names.push(item["name"].as_str().expect("a name").to_string());
        }
        next = page["next"].as_str().map(str::to_string);
    }
    names.sort();
    names
}

/// The value of a sample line `name value` in Prometheus text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok())?
    })
}

#[test]
fn a_full_disk_refuses_writes_with_503_and_the_store_recovers_once_space_is_back() {
    let disk = Tmpfs::mount("4m");
    let store = disk.path().join("store.redb");
    let server = Server::start(&store);
    let addr = server.addr.clone();

    let seeded = http(&addr, "POST", "/apply", &policies("seeded", 20));
    assert_eq!(seeded.status, 200, "{}", seeded.body);
    assert_eq!(http(&addr, "GET", "/ready", "").status, 200);
    let before = stored_names(&addr);
    assert_eq!(before.len(), 20);

    let filler = disk.fill();
    let big = policies("late", 400);
    let refused = http(&addr, "POST", "/apply", &big);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.content_type, "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&refused.body).expect("problem JSON");
    assert_eq!(problem["status"], 503);
    assert_eq!(problem["title"], "Store unavailable");
    let detail = problem["detail"].as_str().expect("a detail");
    assert!(detail.contains("No space left on device"), "{detail}");
    assert!(detail.contains("nothing was changed"), "{detail}");

    let ready = http(&addr, "GET", "/ready", "");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("store not writable"), "{}", ready.body);
    let status: serde_json::Value =
        serde_json::from_str(&http(&addr, "GET", "/status", "").body).expect("status JSON");
    assert_eq!(status["store"]["writable"], false, "{status}");
    let metrics = http(&addr, "GET", "/metrics", "").body;
    assert_eq!(sample(&metrics, "meshlimit_store_writable"), Some(0.0));
    let errors = sample(&metrics, "meshlimit_store_write_errors_total").expect("write errors");
    assert!(errors >= 1.0, "{metrics}");
    // Reads still answer, with everything acknowledged.
    assert_eq!(stored_names(&addr), before);
    // `diagnose` names it as a problem, with the way out.
    let diagnosed = std::process::Command::new(BIN)
        .args(["diagnose", "rate-limit", "--cp", &format!("http://{addr}")])
        .output()
        .expect("diagnose runs");
    let text = String::from_utf8_lossy(&diagnosed.stdout);
    assert_eq!(diagnosed.status.code(), Some(1), "{text}");
    assert!(
        text.contains("[problem] the store refuses writes: "),
        "{text}"
    );
    assert!(text.contains("No space left on device"), "{text}");

    // Still full: the retry is refused the same way, and nothing is lost.
    assert_eq!(http(&addr, "POST", "/apply", &big).status, 503);

    std::fs::remove_file(&filler).expect("space is freed");
    let accepted = http(&addr, "POST", "/apply", &big);
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert_eq!(http(&addr, "GET", "/ready", "").status, 200);
    let metrics = http(&addr, "GET", "/metrics", "").body;
    assert_eq!(sample(&metrics, "meshlimit_store_writable"), Some(1.0));
    let after = stored_names(&addr);
    assert_eq!(after.len(), 420);
    assert!(before.iter().all(|n| after.contains(n)));

    // And all of it is on disk: a restart serves the same.
    drop(server);
    let restarted = Server::start(&store);
    assert_eq!(stored_names(&restarted.addr), after);
}
