//! The control plane, its CLI verbs and `meshlimit dataplane` as real processes: applies reach a
//! separate data plane and are enforced on a real backend (the latency is measured and
//! printed), the store survives `kill -9` in the middle of a stream of applies, a data plane
//! keeps enforcing while the control plane is down and catches up after, invalid applies change
//! nothing, `get -o yaml` round-trips through `apply`, a control plane bound outside loopback
//! (inside a network namespace made for the test, or on 0.0.0.0) refuses requests without its
//! token, `diagnose rate-limit` finds each problem it checks for, and `top` prints plain frames
//! when it has no terminal.
//!
//! Servers bind port 0; the control plane prints the address it got. Dataplane inbounds need
//! fixed port numbers in YAML, so the test picks free ones by binding port 0 and releasing them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[path = "support/net.rs"]
mod net;

use net::{backend, free_port};

use meshlimit_control_plane_client::client::Client;
use meshlimit_control_plane_client::wire::{SourceFile, StatusResponse};
use meshlimit_testkit::Process;
use meshlimit_testkit::fixtures::{Target, dataplane_yaml, http_limit_yaml};

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");
/// How long a test waits for something that normally takes milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

/// A control plane on `127.0.0.1:0` (or `api`), with its store at `store`.
struct ControlPlane {
    proc: Process,
    url: String,
}

impl ControlPlane {
    fn start(store: &Path, api: &str) -> ControlPlane {
        ControlPlane::start_with(store, &["--api", api])
    }

    /// `meshlimit control-plane --store STORE` with `flags`.
    fn start_with(store: &Path, flags: &[&str]) -> ControlPlane {
        let mut command = Command::new(BIN);
        command
            .arg("control-plane")
            .args(flags)
            .arg("--store")
            .arg(store);
        ControlPlane::from_command(command)
    }

    fn from_command(command: Command) -> ControlPlane {
        let mut proc = Process::spawn("control-plane", command, PATIENCE);
        let line = proc.wait_line(|l| l.contains("API listening on "));
        let url = line
            .split("API listening on ")
            .nth(1)
            .expect("the line names the URL")
            .trim()
            .to_string();
        ControlPlane { proc, url }
    }

    fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the URL has a port")
    }

    fn client(&self) -> Client {
        Client::new(&self.url, None).expect("a valid URL")
    }
}

/// `meshlimit --cp URL <args>` to completion.
fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--cp")
        .arg(url)
        .args(args)
        .env_remove("MESHLIMIT_TOKEN")
        .output()
        .expect("the meshlimit binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The status of one request on a fresh connection; 0 when the connection fails.
fn status_of(port: u16) -> u16 {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(
        stream,
        "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return 0;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends requests until one gets `want`, up to `PATIENCE`.
fn until_status(port: u16, want: u16) {
    let deadline = std::time::SystemTime::now() + PATIENCE;
    loop {
        if status_of(port) == want {
            return;
        }
        assert!(
            std::time::SystemTime::now() < deadline,
            "no {want} from port {port}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn file(name: &str, content: String) -> SourceFile {
    SourceFile {
        name: name.to_string(),
        content,
    }
}

/// A data plane process following `url`, once it enforces a store version.
fn dataplane(url: &str, name: &str) -> Process {
    let mut command = Command::new(BIN);
    command
        .args([
            "--cp",
            url,
            "dataplane",
            "--name",
            name,
            "--report-interval",
            "200ms",
        ])
        .env_remove("MESHLIMIT_TOKEN");
    let mut proc = Process::spawn(name, command, PATIENCE);
    proc.wait_line(|l| l.contains("enforcing store version"));
    proc
}

/// One whole setup: a control plane, a backend, a Dataplane resource for it and a data plane
/// process enforcing it.
struct Mesh {
    _dir: tempfile::TempDir,
    store: PathBuf,
    cp: ControlPlane,
    inbound: u16,
    dp: Process,
}

fn mesh_with_dataplane() -> Mesh {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = dir.path().join("store.redb");
    let cp = ControlPlane::start(&store, "127.0.0.1:0");
    let inbound = free_port();
    let service = backend("ok");
    runtime()
        .block_on(cp.client().apply(
            vec![file(
                "dp.yaml",
                dataplane_yaml("web-1", "web", None, inbound, service),
            )],
            false,
        ))
        .expect("the Dataplane is applied");
    let dp = dataplane(&cp.url, "web-1");
    until_status(inbound, 200);
    Mesh {
        _dir: dir,
        store,
        cp,
        inbound,
        dp,
    }
}

#[test]
#[allow(clippy::disallowed_methods)] // measures wall-clock latency across real processes
fn applies_are_enforced_by_a_separate_dataplane_process_promptly() {
    let mesh = mesh_with_dataplane();
    let client = mesh.cp.client();
    let rt = runtime();
    let mut latencies = Vec::new();
    for round in 0..10 {
        // Alternate between a limit of one request per minute (the second request gets 429)
        // and a generous one (every request passes), so each apply changes what is enforced.
        let (num, interval, want) = if round % 2 == 0 {
            (1, "1m", 429)
        } else {
            (100_000, "1s", 200)
        };
        let start = std::time::Instant::now();
        rt.block_on(client.apply(
            vec![file(
                "p.yaml",
                http_limit_yaml("web", Target::Service("web"), num, interval),
            )],
            false,
        ))
        .expect("the policy is applied");
        until_status(mesh.inbound, want);
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    eprintln!(
        "apply -> enforced by a separate data plane: min {:?}, median {median:?}, max {max:?} ({} applies)",
        latencies[0],
        latencies.len()
    );
    // The limits are pushed, not picked up on a reconnect or a heartbeat (5 s apart).
    assert!(max < Duration::from_secs(2), "{latencies:?}");
}

#[test]
fn the_store_keeps_every_acknowledged_apply_across_kill_9() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = dir.path().join("store.redb");
    let mut cp = ControlPlane::start(&store, "127.0.0.1:0");
    let client = cp.client();
    let (acked_tx, acked_rx) = mpsc::channel::<String>();
    let writer = std::thread::spawn(move || {
        let rt = runtime();
        for i in 0.. {
            let name = format!("p-{i}");
            let applied = rt.block_on(client.apply(
                vec![file(
                    "p.yaml",
                    http_limit_yaml(&name, Target::Service("web"), i + 1, "1s"),
                )],
                false,
            ));
            match applied {
                Ok(_) => {
                    if acked_tx.send(name).is_err() {
                        return;
                    }
                }
                Err(_) => return, // the control plane is gone
            }
        }
    });
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 30 {
        acknowledged.push(
            acked_rx
                .recv_timeout(PATIENCE)
                .expect("applies are acknowledged"),
        );
    }
    // Kill it while the writer keeps applying.
    cp.proc.kill();
    writer.join().expect("the writer stops");
    acknowledged.extend(acked_rx.try_iter());

    let cp = ControlPlane::start(&store, "127.0.0.1:0");
    let listed = runtime()
        .block_on(
            cp.client()
                .list(meshlimit_policy::Kind::MeshRateLimit, Some("default")),
        )
        .expect("the store opens again");
    let names: Vec<&str> = listed.iter().filter_map(|v| v["name"].as_str()).collect();
    for name in &acknowledged {
        let stored = listed
            .iter()
            .find(|v| v["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} was acknowledged but lost"));
        // Each is stored whole: p-<i> limits to i + 1 requests a second.
        let i: u64 = name["p-".len()..].parse().expect("a number");
        assert_eq!(
            stored["spec"]["rules"][0]["default"]["local"]["http"]["requestRate"]["num"],
            i + 1,
            "{stored}"
        );
    }
    // At most the one apply in flight at the kill is there without an acknowledgement.
    assert!(names.len() <= acknowledged.len() + 1, "{names:?}");
}

#[test]
fn a_dataplane_keeps_enforcing_while_the_control_plane_is_down_and_catches_up() {
    let mut mesh = mesh_with_dataplane();
    let rt = runtime();
    rt.block_on(mesh.cp.client().apply(
        vec![file(
            "p.yaml",
            http_limit_yaml("web", Target::Service("web"), 1, "1m"),
        )],
        false,
    ))
    .expect("applied");
    until_status(mesh.inbound, 429);
    let port = mesh.cp.port();

    mesh.cp.proc.kill();
    // Still enforced with the control plane gone, once the data plane has noticed.
    mesh.dp
        .wait_line(|l| l.contains("control plane unreachable"));
    for _ in 0..5 {
        assert_eq!(status_of(mesh.inbound), 429);
    }
    assert!(mesh.dp.child().try_wait().expect("status").is_none());

    // Back on the same address and store; a new apply reaches the data plane after it reconnects.
    let cp = ControlPlane::start(&mesh.store, &format!("127.0.0.1:{port}"));
    rt.block_on(cp.client().apply(
        vec![file(
            "p.yaml",
            http_limit_yaml("web", Target::Service("web"), 100_000, "1s"),
        )],
        false,
    ))
    .expect("applied after the restart");
    mesh.dp
        .wait_line(|l| l.contains("enforcing store version 3"));
    until_status(mesh.inbound, 200);
    let status: StatusResponse = rt.block_on(cp.client().status()).expect("status");
    let dp = status
        .dataplanes
        .iter()
        .find(|d| d.name == "web-1")
        .expect("the data plane is known");
    assert!(dp.connected);
}

#[test]
fn invalid_applies_change_nothing_and_report_every_problem() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cp = ControlPlane::start(&dir.path().join("store.redb"), "127.0.0.1:0");
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        http_limit_yaml("web", Target::Service("web"), 10, "1s"),
    )
    .expect("write");
    let applied = cli(&cp.url, &["apply", "-f", good.to_str().expect("utf-8")]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert_eq!(stdout(&applied), "meshratelimit/web created\n");
    let before = stdout(&cli(&cp.url, &["get", "mrl", "-o", "yaml"]));

    // A valid change and an invalid document in one apply: neither is stored.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "{}---\n{}",
            http_limit_yaml("web", Target::Service("web"), 20, "1s"),
            http_limit_yaml("other", Target::Service("web"), 0, "10ms")
        ),
    )
    .expect("write");
    let refused = cli(&cp.url, &["apply", "-f", bad.to_str().expect("utf-8")]);
    assert_eq!(refused.status.code(), Some(1));
    let err = stderr(&refused);
    let bad_name = bad.display().to_string();
    assert!(
        err.contains(&format!(
            "{bad_name}: document 2 (MeshRateLimit other): spec.rules[0].default.local.http.requestRate.num:"
        )),
        "{err}"
    );
    assert!(err.contains("requestRate.interval"), "{err}");
    // The same lines `meshlimit validate` prints.
    let validate = Command::new(BIN)
        .args(["validate", "-f", bad.to_str().expect("utf-8")])
        .output()
        .expect("validate runs");
    for line in stderr(&validate)
        .lines()
        .filter(|l| l.contains("document 2"))
    {
        assert!(err.contains(line), "{line:?} missing from {err}");
    }
    assert_eq!(stdout(&cli(&cp.url, &["get", "mrl", "-o", "yaml"])), before);
    let version = runtime()
        .block_on(cp.client().status())
        .expect("status")
        .version;
    assert_eq!(version, 1, "only the good apply moved the store");

    // Conflicting with what is stored (a mesh that does not exist) is refused too.
    let orphan = dir.path().join("orphan.yaml");
    std::fs::write(
        &orphan,
        http_limit_yaml("web", Target::Service("web"), 30, "1s")
            .replace("mesh: default", "mesh: nowhere"),
    )
    .expect("write");
    let refused = cli(&cp.url, &["apply", "-f", orphan.to_str().expect("utf-8")]);
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    assert_eq!(
        stdout(&cli(&cp.url, &["get", "mrl", "-A", "-o", "yaml"])),
        before
    );
    let status = runtime().block_on(cp.client().status()).expect("status");
    assert_eq!(status.version, version);
}

#[test]
fn get_yaml_is_accepted_back_unchanged_and_tables_are_aligned() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cp = ControlPlane::start(&dir.path().join("store.redb"), "127.0.0.1:0");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policies");
    let kubernetes = dir.path().join("kubernetes.yaml");
    std::fs::write(
        &kubernetes,
        "apiVersion: kuma.io/v1alpha1
kind: MeshRateLimit
metadata:
  name: kubernetes-form
  namespace: kuma-system
  labels:
    kuma.io/mesh: default
spec:
  targetRef:
    kind: MeshService
    name: backend
  rules:
    - default:
        local:
          tcp:
            connectionRate:
              num: 5
              interval: 1s
",
    )
    .expect("write");
    let applied = cli(
        &cp.url,
        &["apply", "-f", examples, kubernetes.to_str().expect("utf-8")],
    );
    assert!(applied.status.success(), "{}", stderr(&applied));
    let listed = stdout(&cli(
        &cp.url,
        &["get", "mrl", "kubernetes-form", "-o", "yaml"],
    ));
    assert!(
        listed.starts_with("apiVersion: kuma.io/v1alpha1\nkind: MeshRateLimit\n"),
        "{listed}"
    );

    for kind in ["mrl", "rl", "dp"] {
        let yaml = cli(&cp.url, &["get", kind, "-o", "yaml"]);
        assert!(yaml.status.success(), "{}", stderr(&yaml));
        let path = dir.path().join(format!("{kind}.yaml"));
        std::fs::write(&path, stdout(&yaml)).expect("write");
        let again = cli(&cp.url, &["apply", "-f", path.to_str().expect("utf-8")]);
        assert!(again.status.success(), "{}", stderr(&again));
        let out = stdout(&again);
        assert!(
            !out.is_empty() && out.lines().all(|l| l.ends_with(" unchanged")),
            "{out}"
        );
    }

    let table = stdout(&cli(&cp.url, &["get", "meshratelimits"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    let http_column = lines[0].find("HTTP").expect("an HTTP column");
    for line in &lines[1..] {
        assert_eq!(
            line.char_indices().nth(http_column).map(|(_, c)| c != ' '),
            Some(true),
            "{table}"
        );
    }
    let one = stdout(&cli(&cp.url, &["get", "dp", "backend-1", "-o", "json"]));
    assert!(one.starts_with('{'), "{one}");
    let json: serde_json::Value = serde_json::from_str(&one).expect("json");
    assert_eq!(json["name"], "backend-1");

    let deleted = cli(&cp.url, &["delete", "dp", "backend-1"]);
    assert_eq!(stdout(&deleted), "dataplane/backend-1 deleted\n");
    let missing = cli(&cp.url, &["delete", "dp", "backend-1"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("404"), "{}", stderr(&missing));
}

#[test]
fn describe_diagnose_stats_and_top_show_what_the_data_plane_reports() {
    let mesh = mesh_with_dataplane();
    let url = mesh.cp.url.clone();
    let rt = runtime();
    let files = vec![
        file(
            "p.yaml",
            http_limit_yaml("web", Target::Service("web"), 1, "1m"),
        ),
        file(
            "none.yaml",
            http_limit_yaml("nothing", Target::Service("web"), 5, "1s")
                .replace("name: web\n", "name: nosuch\n"),
        ),
    ];
    rt.block_on(mesh.cp.client().apply(files, false))
        .expect("applied");
    until_status(mesh.inbound, 429);
    for _ in 0..20 {
        status_of(mesh.inbound);
    }
    // Wait until the data plane's reports show the rejections over at least two reports.
    let deadline = std::time::SystemTime::now() + PATIENCE;
    loop {
        let status = rt.block_on(mesh.cp.client().status()).expect("status");
        let limited = status
            .dataplanes
            .iter()
            .flat_map(|d| &d.inbounds)
            .any(|i| i.stats.limited >= 20 && i.stats.limited_per_second > 0.0);
        if limited {
            break;
        }
        assert!(std::time::SystemTime::now() < deadline, "{status:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let described = stdout(&cli(&url, &["describe", "mrl", "web"]));
    assert!(
        described.contains("Selects 1 inbound(s) on 1 dataplane(s)"),
        "{described}"
    );
    assert!(described.contains("1/1m0s"), "{described}");

    let stats = stdout(&cli(&url, &["get", "ratelimit-stats"]));
    assert!(stats.starts_with("MESH"), "{stats}");
    let row = stats
        .lines()
        .find(|l| l.contains("web-1"))
        .expect("a row for the data plane");
    assert!(row.contains(&mesh.inbound.to_string()), "{row}");

    let top = stdout(&cli(&url, &["top", "--once"]));
    assert!(top.contains("default/web-1"), "{top}");
    assert!(top.chars().any(|c| ('▁'..='█').contains(&c)), "{top}");
    // Without a terminal (stdout is a pipe here, stdin is closed) `top` prints plain frames
    // one after another and exits after --iterations.
    let frames = Command::new(BIN)
        .args([
            "--cp",
            &url,
            "top",
            "--iterations",
            "2",
            "--interval",
            "200ms",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("top runs");
    assert!(frames.status.success(), "{}", stderr(&frames));
    let frames = stdout(&frames);
    assert_eq!(frames.matches("meshlimit top - ").count(), 2, "{frames}");
    assert!(
        !frames.contains('\x1b'),
        "no screen control in a pipe: {frames:?}"
    );
    for frame in frames.split("meshlimit top - ").skip(1) {
        let row = frame
            .lines()
            .find(|l| l.starts_with("default/web-1"))
            .unwrap_or_else(|| panic!("no row for web-1 in {frame}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        // DATAPLANE INBOUND SERVICE PROTOCOL RATE LIMITED LIMITED% ...
        assert_eq!(cells[1], mesh.inbound.to_string(), "{row}");
        assert_eq!(cells[3], "http", "{row}");
        assert_ne!(cells[6], "-", "traffic was measured: {row}");
    }
    // `get ratelimit-stats --watch` into a pipe: frames one after another, no screen control.
    let watched = Command::new(BIN)
        .args(["--cp", &url, "get", "ratelimit-stats", "--watch", "-n", "2"])
        .args(["--interval", "10ms"])
        .stdin(Stdio::null())
        .output()
        .expect("get --watch runs");
    assert!(watched.status.success(), "{}", stderr(&watched));
    let watched = stdout(&watched);
    assert_eq!(watched.matches("web-1").count(), 2, "{watched}");
    assert!(
        !watched.contains('\x1b'),
        "no screen control in a pipe: {watched:?}"
    );
    // Durations are Go-style everywhere; a bare number says which form to use.
    let bare = cli(&url, &["top", "--once", "--interval", "2"]);
    assert_eq!(bare.status.code(), Some(2), "{}", stderr(&bare));
    assert!(
        stderr(&bare).contains("write a duration such as 2s"),
        "{}",
        stderr(&bare)
    );

    let diagnosed = cli(&url, &["diagnose", "rate-limit"]);
    assert_eq!(diagnosed.status.code(), Some(1));
    let report = stdout(&diagnosed);
    assert!(
        report.contains("[problem] MeshRateLimit default/nothing selects no dataplane inbound"),
        "{report}"
    );
    assert!(report.contains("rejected over the last minute"), "{report}");
    assert!(
        report.contains("[ok]      data plane default/web-1 is connected"),
        "{report}"
    );
    assert!(report.contains("fix: "), "{report}");
}

#[test]
fn the_api_speaks_kuma_rest_with_pagination_conflicts_and_limits() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cp = ControlPlane::start_with(
        &dir.path().join("store.redb"),
        &["--api", "127.0.0.1:0", "--max-body-bytes", "4096"],
    );
    let client = cp.client();
    let rt = runtime();
    let call = |method: &str, path: &str, media: Option<&str>, body: String| {
        rt.block_on(client.call(
            method.parse().expect("a method"),
            path,
            media,
            "application/json",
            body.into(),
        ))
    };
    // PUT creates (201) from YAML, then updates (200) from JSON.
    let created = call(
        "PUT",
        "/meshes/default/meshratelimits/a",
        Some("application/yaml"),
        http_limit_yaml("a", Target::Service("web"), 1, "1s"),
    )
    .expect("created");
    assert_eq!(created.0.as_u16(), 201);
    let json = serde_json::json!({
        "type": "MeshRateLimit", "mesh": "default", "name": "a",
        "spec": {"targetRef": {"kind": "Mesh", "proxyTypes": ["Sidecar"]}, "rules": [{"default": {"local": {"tcp": {"connectionRate": {"num": 3, "interval": "1s"}}}}}]}
    });
    let updated = call(
        "PUT",
        "/meshes/default/meshratelimits/a",
        Some("application/json"),
        json.to_string(),
    )
    .expect("updated");
    assert_eq!(updated.0.as_u16(), 200);
    for name in ["b", "c"] {
        call(
            "PUT",
            &format!("/meshes/default/meshratelimits/{name}"),
            Some("application/yaml"),
            http_limit_yaml(name, Target::Service("web"), 1, "1s"),
        )
        .expect("created");
    }
    // Pagination as Kuma does it.
    let (_, page) = call(
        "GET",
        "/meshes/default/meshratelimits?size=2",
        None,
        String::new(),
    )
    .expect("a page");
    let page: serde_json::Value = serde_json::from_slice(&page).expect("json");
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        page["next"],
        "/meshes/default/meshratelimits?offset=2&size=2"
    );
    // The name in the body disagrees with the URL: 409.
    let conflict = call(
        "PUT",
        "/meshes/default/meshratelimits/x",
        Some("application/yaml"),
        http_limit_yaml("y", Target::Service("web"), 1, "1s"),
    )
    .expect_err("refused");
    assert_eq!(conflict.status(), Some(409));
    // A stale version: 409.
    let stale = rt.block_on(async {
        let request = hyper_request("PUT", &cp.url, "/meshes/default/meshratelimits/a", "\"1\"");
        request.await
    });
    assert_eq!(stale, 409);
    // Unknown: 404; invalid: 400 with the field path; too large: 413.
    let missing = call(
        "GET",
        "/meshes/default/meshratelimits/zzz",
        None,
        String::new(),
    )
    .expect_err("missing");
    assert_eq!(missing.status(), Some(404));
    let invalid = call(
        "PUT",
        "/meshes/default/meshratelimits/a",
        Some("application/yaml"),
        http_limit_yaml("a", Target::Service("web"), 0, "1s"),
    )
    .expect_err("invalid");
    assert_eq!(invalid.status(), Some(400));
    let meshlimit_control_plane_client::client::ClientError::Api { body, .. } = invalid else {
        panic!("an API error")
    };
    assert_eq!(
        body.invalid_parameters[0].field,
        "spec.rules[0].default.local.http.requestRate.num"
    );
    let large = call(
        "POST",
        "/apply",
        Some("application/yaml"),
        "#".repeat(10_000),
    )
    .expect_err("too large");
    assert_eq!(large.status(), Some(413));
}

/// A `PUT` with `If-Match: <version>` (the client does not send one), returning the status.
async fn hyper_request(method: &str, base: &str, path: &str, if_match: &str) -> u16 {
    let addr = base.trim_start_matches("http://").to_string();
    let body = http_limit_yaml("a", Target::Service("web"), 9, "1s");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/yaml\r\n\
         If-Match: {if_match}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream.write_all(request.as_bytes()).expect("send");
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    })
    .await
    .expect("the request thread")
}

/// A network namespace made for one test, holding one non-loopback address; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(address: &str) -> Netns {
        let name = format!("mlcp-{}", std::process::id());
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("ip runs");
            assert!(status.success(), "ip {args:?} failed");
        };
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        let netns = Netns { name };
        let n = netns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        // A non-loopback address that exists only inside the namespace.
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            "lo",
        ]);
        netns
    }

    /// `meshlimit <args>` inside the namespace.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, BIN])
            .args(args)
            .env_remove("MESHLIMIT_TOKEN");
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn a_control_plane_outside_loopback_requires_its_token() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = dir.path().join("store.redb");
    let store = store.to_str().expect("utf-8");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write");
    let netns = Netns::create("192.0.2.1");

    // Without a token file it refuses to start.
    let refused = netns
        .command(&["control-plane", "--api", "192.0.2.1:0", "--store", store])
        .output()
        .expect("runs");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("--token-file"),
        "{}",
        stderr(&refused)
    );

    let cp = ControlPlane::from_command(netns.command(&[
        "control-plane",
        "--api",
        "192.0.2.1:0",
        "--store",
        store,
        "--token-file",
        token_file.to_str().expect("utf-8"),
    ]));
    assert!(cp.url.starts_with("http://192.0.2.1:"), "{}", cp.url);

    let anonymous = netns
        .command(&["--cp", &cp.url, "get", "mrl"])
        .output()
        .expect("runs");
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(stderr(&anonymous).contains("401"), "{}", stderr(&anonymous));
    let wrong = netns
        .command(&["--cp", &cp.url, "--token", "guess", "get", "mrl"])
        .output()
        .expect("runs");
    assert!(stderr(&wrong).contains("401"), "{}", stderr(&wrong));

    let with_flag = netns
        .command(&["--cp", &cp.url, "--token", "s3cret-token", "get", "mrl"])
        .output()
        .expect("runs");
    assert!(with_flag.status.success(), "{}", stderr(&with_flag));
    let mut with_env = netns.command(&["--cp", &cp.url, "get", "mrl"]);
    with_env.env("MESHLIMIT_TOKEN", "s3cret-token");
    let with_env = with_env.output().expect("runs");
    assert!(with_env.status.success(), "{}", stderr(&with_env));
}

#[test]
fn a_control_plane_on_the_unspecified_address_requires_its_token() {
    // 0.0.0.0 is not loopback: the rule applies to what the API is bound to, even when a
    // client reaches it through 127.0.0.1.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = dir.path().join("store.redb");
    let refused = Command::new(BIN)
        .args(["control-plane", "--api", "0.0.0.0:0", "--store"])
        .arg(&store)
        .output()
        .expect("runs");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("--token-file"),
        "{}",
        stderr(&refused)
    );

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "open-sesame\n").expect("write");
    let token_arg = token_file.to_str().expect("a UTF-8 path");
    let cp = ControlPlane::start_with(&store, &["--api", "0.0.0.0:0", "--token-file", token_arg]);
    let local = format!("http://127.0.0.1:{}", cp.port());
    let rt = runtime();

    let anonymous = rt
        .block_on(Client::new(&local, None).expect("a URL").status())
        .expect_err("refused");
    assert_eq!(anonymous.status(), Some(401), "{anonymous}");
    let wrong = rt
        .block_on(
            Client::new(&local, Some("open-sesame-not".into()))
                .expect("a URL")
                .status(),
        )
        .expect_err("refused");
    assert_eq!(wrong.status(), Some(401), "{wrong}");
    let refused = cli(&local, &["apply", "-f", "/dev/null"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("401"), "{}", stderr(&refused));

    let status = rt
        .block_on(
            Client::new(&local, Some("open-sesame".into()))
                .expect("a URL")
                .status(),
        )
        .expect("the token opens it");
    assert_eq!(status.version, 0, "nothing was stored by refused requests");
    let with_token = Command::new(BIN)
        .args(["--cp", &local, "--token", "open-sesame", "get", "mrl"])
        .output()
        .expect("runs");
    assert!(with_token.status.success(), "{}", stderr(&with_token));
}

const RATE_LIMIT: &str = "apiVersion: kmesh.net/v1alpha1
kind: RateLimit
metadata:
  name: web-connections
spec:
  service: web
  rules:
    - maxTokens: 2
      tokensPerFill: 1
      fillInterval: 1000000000
";

#[test]
fn diagnose_finds_shadowed_limits_missing_agents_and_data_planes_not_following() {
    let mesh = mesh_with_dataplane();
    let url = mesh.cp.url.clone();
    let client = mesh.cp.client();
    let rt = runtime();
    let mesh_wide = http_limit_yaml("mesh-wide", Target::Service("web"), 100, "1s").replace(
        "    kind: MeshService\n    name: web\n",
        "    kind: Mesh\n    proxyTypes: [Sidecar]\n",
    );
    let ignored_listener = free_port();
    rt.block_on(client.apply(
        vec![
            file(
                "web-2.yaml",
                dataplane_yaml("web-2", "web", None, free_port(), free_port()),
            ),
            file(
                "web-3.yaml",
                format!(
                    "{}    - port: {}\n      state: Ignored\n      tags: {{kuma.io/service: web}}\n  listeners:\n    - {{type: ZoneIngress, address: 127.0.0.1, port: {}, name: zi}}\n",
                    dataplane_yaml("web-3", "web", None, free_port(), free_port()),
                    free_port(),
                    ignored_listener
                ),
            ),
            file("mesh-wide.yaml", mesh_wide),
            file("web.yaml", http_limit_yaml("web", Target::Service("web"), 5, "1s")),
            file("rl.yaml", RATE_LIMIT.to_string()),
        ],
        false,
    ))
    .expect("applied");

    // web-2 holds its limits stream open but reports enforcing an old store version: the way
    // a data plane that cannot apply what it receives looks from the control plane.
    let _stream = rt
        .block_on(
            client.watch::<serde_json::Value>("/meshes/default/dataplanes/web-2/limits?watch=true"),
        )
        .expect("a stream");
    rt.block_on(client.report_dataplane(
        "default",
        "web-2",
        &meshlimit_control_plane_client::wire::DataplaneReport {
            version: Some(1),
            inbounds: Vec::new(),
        },
    ))
    .expect("reported");
    // web-1 is a real data plane: wait until it reports the current version.
    let deadline = std::time::SystemTime::now() + PATIENCE;
    let version = loop {
        let status = rt.block_on(client.status()).expect("status");
        let current = status.dataplanes.iter().any(|d| {
            d.name == "web-1" && d.connected && d.acknowledged_version == Some(status.version)
        });
        if current {
            break status.version;
        }
        assert!(std::time::SystemTime::now() < deadline, "{status:?}");
        std::thread::sleep(Duration::from_millis(50));
    };

    let diagnosed = cli(&url, &["diagnose", "rate-limit"]);
    assert_eq!(diagnosed.status.code(), Some(1), "{}", stderr(&diagnosed));
    let report = stdout(&diagnosed);
    for (want, why) in [
        (
            "the http limit of MeshRateLimit mesh-wide (100/1s) is shadowed".to_string(),
            "a limit shadowed by a more specific policy",
        ),
        (
            "(more specific: web)".to_string(),
            "names the policy that wins",
        ),
        (
            "kernel limit(s) but no kernel agent is connected with its programs attached"
                .to_string(),
            "kernel limits without an agent",
        ),
        (
            "[problem] data plane default/web-3 is not connected (never connected)".to_string(),
            "a data plane that never connected",
        ),
        (
            format!(
                "[problem] data plane default/web-2 is connected but enforces store version 1, \
                 the store is at {version}"
            ),
            "a data plane behind the store",
        ),
        (
            format!(
                "[ok]      data plane default/web-1 is connected and enforces the current store \
                 version {version}"
            ),
            "a healthy data plane",
        ),
    ] {
        assert!(
            report.contains(&want),
            "{why}: {want:?} missing from\n{report}"
        );
    }
    // What a Dataplane declares and nothing enforces (an Ignored inbound, a zone-proxy
    // listener) is information, never a problem.
    for want in [
        "is in state Ignored: no proxy listens there, so no limit applies (as in Kuma)".to_string(),
        format!(
            "ZoneIngress listener zi (port {ignored_listener}) is a zone proxy listener: meshlimit does not enforce MeshRateLimit on zone proxies"
        ),
    ] {
        let line = report
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("{want:?} missing from\n{report}"));
        assert!(
            line.starts_with("[info]    Dataplane default/web-3: "),
            "{line}"
        );
    }
    // An override is how Kuma's merging is meant to work: shown, but not a problem.
    let shadowing = report
        .lines()
        .find(|l| l.contains("is shadowed"))
        .expect("the shadowed limit is shown");
    assert!(shadowing.starts_with("[info]    "), "{report}");
    assert_eq!(report.matches("fix: ").count(), 3, "{report}");
    assert!(report.ends_with(" problem(s) found.\n"), "{report}");

    // Narrowed to one data plane, the others' checks are left out.
    let focused = stdout(&cli(
        &url,
        &["diagnose", "rate-limit", "--dataplane", "web-1"],
    ));
    assert!(focused.contains("default/web-1 is connected"), "{focused}");
    assert!(!focused.contains("web-3"), "{focused}");
    assert!(!focused.contains("web-2"), "{focused}");
}

#[test]
fn files_starting_with_a_byte_order_mark_validate_and_apply() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cp = ControlPlane::start(&dir.path().join("store.redb"), "127.0.0.1:0");
    let path = dir.path().join("bom.yaml");
    let mut bytes = "\u{feff}".as_bytes().to_vec();
    bytes.extend_from_slice(http_limit_yaml("bom", Target::Service("web"), 5, "1s").as_bytes());
    std::fs::write(&path, &bytes).expect("the file");
    let shown = path.display().to_string();
    let validated = Command::new(BIN)
        .args(["validate", "-f", &shown])
        .output()
        .expect("validate runs");
    assert!(validated.status.success(), "{}", stderr(&validated));
    let applied = cli(&cp.url, &["apply", "-f", &shown]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let listed = cli(&cp.url, &["get", "meshratelimits"]);
    assert!(stdout(&listed).contains("bom"), "{}", stdout(&listed));
}

#[test]
fn the_api_listener_refuses_past_its_cap_and_answers_once_the_flood_ends() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cp = ControlPlane::start_with(
        &dir.path().join("store.redb"),
        &["--api", "127.0.0.1:0", "--api-max-connections", "4"],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], cp.port()));
    let get = |path: &str| -> Option<String> {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(PATIENCE)).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        (!text.is_empty()).then_some(text)
    };
    assert!(get("/ready").is_some_and(|t| t.starts_with("HTTP/1.1 200")));

    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(addr).expect("accepted"))
        .collect();
    let mut flood: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(addr).expect("the kernel accepts"))
        .collect();
    let mut refused = 0;
    for stream in &mut flood {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        let mut byte = [0_u8; 1];
        if matches!(stream.read(&mut byte), Ok(0)) {
            refused += 1;
        }
    }
    assert!(refused >= 45, "{refused} of 50 refused");
    drop(flood);
    drop(held);

    let mut metrics = None;
    for _ in 0..500 {
        metrics = get("/metrics");
        if metrics.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let metrics = metrics.expect("the API answers once the flood ends");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let counted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshlimit_api_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the refused counter");
    assert!(
        counted >= f64::from(refused),
        "{counted} counted, {refused} seen"
    );
}
