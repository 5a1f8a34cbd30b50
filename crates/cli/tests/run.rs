//! `meshlimit run` as a real process on a temporary resource directory and a store of its own:
//! it enforces the seed's policy on a real backend, serves the control plane's API and the
//! admin routes on one listener, follows edits of the directory and writes through the API
//! live, ignores an invalid edit, stops cleanly on SIGTERM and, as root, runs the kernel
//! limiter on a cgroup made for the test.
//!
//! Ports: the Dataplane inbounds need fixed numbers in YAML, so the test picks free ones by
//! binding port 0 and releasing it; the listener binds port 0 and the test reads its URL from
//! `--address-file`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "support/net.rs"]
mod net;
#[path = "support/sandbox.rs"]
mod sandbox;

use meshlimit_testkit::fixtures::{backend_limit_yaml, dataplane_yaml};
use net::{backend, free_port};
use sandbox::Sandbox;

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    get_with(addr, path, "")
}

/// The same, with extra header lines (each ending in CRLF).
fn get_with(addr: SocketAddr, path: &str, headers: &str) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n{headers}\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

/// Polls `check` until it holds, failing after a generous deadline.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("gave up after 20 s waiting for: {what}");
}

struct Meshlimit {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    address_file: PathBuf,
}

impl Meshlimit {
    /// `meshlimit run --resources DIR` with its store in `DIR/../<dir name>.store`, the
    /// kernel limiter off.
    fn start(dir: &Path) -> Meshlimit {
        Meshlimit::start_with(dir, &["--no-kernel"])
    }

    fn start_with(dir: &Path, extra: &[&str]) -> Meshlimit {
        Meshlimit::start_under(&[], dir, extra)
    }

    /// The same, started through `wrapper` (a program and its arguments, given the command
    /// line to run), e.g. `prlimit`.
    fn start_under(wrapper: &[&str], dir: &Path, extra: &[&str]) -> Meshlimit {
        let state = state_dir(dir);
        let address_file = state.join(format!("address-{}", std::process::id()));
        let _ = std::fs::remove_file(&address_file);
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_meshlimit"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_meshlimit")),
        };
        let store = if extra.contains(&"--store") {
            Vec::new()
        } else {
            vec!["--store".into(), state.join("store.redb").into_os_string()]
        };
        let mut child = command
            .args(["run", "--resources"])
            .arg(dir)
            .args(store)
            .arg("--address-file")
            .arg(&address_file)
            .args(if extra.contains(&"--admin") {
                &[][..]
            } else {
                &["--admin", "127.0.0.1:0"][..]
            })
            .args([
                "--worker-threads",
                "1",
                "--watch-interval",
                "100ms",
                "--report-interval",
                "100ms",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Meshlimit {
            child,
            log,
            address_file,
        }
    }

    fn logged(&self, needle: &str) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// The listener's address, from `--address-file`.
    fn admin(&self) -> SocketAddr {
        let mut url = String::new();
        eventually("the address file to be written", || {
            url = std::fs::read_to_string(&self.address_file).unwrap_or_default();
            !url.is_empty()
        });
        url.trim().strip_prefix("http://").unwrap().parse().unwrap()
    }

    fn url(&self) -> String {
        format!("http://{}", self.admin())
    }

    /// SIGTERM, then waits for a successful exit.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut exit = None;
        eventually("meshlimit to exit", || {
            exit = self.child.try_wait().unwrap();
            exit.is_some()
        });
        assert!(exit.unwrap().success(), "{}", self.log_text());
    }

    fn child_alive(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|exit| exit.is_none())
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Meshlimit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh resource directory, with a sibling directory for its store and address file.
fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("meshlimit-run-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(state_dir(&dir)).unwrap();
    dir
}

fn state_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap().to_owned();
    name.push(".state");
    dir.with_file_name(name)
}

fn remove_dirs(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(state_dir(dir));
}

/// `meshlimit --cp URL <args>`: stdout on success, the whole output in the panic otherwise.
fn cli(url: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_meshlimit"))
        .args(["--cp", url])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "meshlimit {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn run_enforces_reloads_and_stops_cleanly() {
    let dir = temp_dir();
    let service_port = backend("hello");
    let port = free_port();
    std::fs::write(
        dir.join("backend.yaml"),
        dataplane_yaml("backend", "backend", Some("backend"), port, service_port),
    )
    .unwrap();
    std::fs::write(dir.join("policy.yaml"), backend_limit_yaml(Some(423))).unwrap();

    let mut meshlimit = Meshlimit::start(&dir);
    let admin = meshlimit.admin();
    eventually("/ready", || {
        get(admin, "/ready").is_ok_and(|r| r.status == 200)
    });
    let inbound: SocketAddr = ([127, 0, 0, 1], port).into();

    // The seed's policy: 5 pass, then 423 with the header, never reaching the backend.
    let replies: Vec<Reply> = (0..7).map(|_| get(inbound, "/").unwrap()).collect();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 423, 423]);
    assert_eq!(replies[0].body, "hello");
    assert!(
        replies[6].head.contains("x-kuma-rate-limited: true"),
        "{}",
        replies[6].head
    );

    let metrics = get(admin, "/metrics").unwrap().body;
    let allowed = format!(
        r#"meshlimit_http_requests_total{{mesh="default",dataplane="backend",inbound="{port}",decision="allowed",policy="backend-rate-limit"}} 5"#
    );
    let limited = format!(
        r#"meshlimit_http_requests_total{{mesh="default",dataplane="backend",inbound="{port}",decision="limited",policy="backend-rate-limit"}} 2"#
    );
    assert!(
        metrics.contains(&allowed) && metrics.contains(&limited),
        "{metrics}"
    );
    // One process, one build_info, though the control plane and the proxy both serve here.
    let build_info = format!(
        "meshlimit_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("meshlimit_build_info"))
            .collect::<Vec<_>>(),
        [build_info.as_str()],
        "{metrics}"
    );
    let config = get(admin, "/config").unwrap().body;
    assert!(
        config.contains("\"dataplane\": \"backend\"") && config.contains("backend-rate-limit"),
        "{config}"
    );

    // A live edit: same rate (the empty bucket stays empty), new status.
    std::fs::write(dir.join("policy.yaml"), backend_limit_yaml(Some(429))).unwrap();
    eventually("the new status to apply", || {
        get(inbound, "/").unwrap().status == 429
    });

    // An invalid edit is reported and ignored: the last good configuration stays.
    std::fs::write(
        dir.join("policy.yaml"),
        "type: MeshRateLimit\nmesh: default\nname: broken\nspec: [unclosed\n",
    )
    .unwrap();
    eventually("the invalid edit to be reported", || {
        meshlimit.logged("does not validate").is_some()
    });
    assert_eq!(get(inbound, "/").unwrap().status, 429);
    assert!(
        meshlimit.log_text().contains("policy.yaml"),
        "the report names the file:\n{}",
        meshlimit.log_text()
    );
    std::fs::write(dir.join("policy.yaml"), backend_limit_yaml(Some(429))).unwrap();

    // A new Dataplane gets a listener; its backend is not selected by the policy.
    let other_port = free_port();
    std::fs::write(
        dir.join("other.yaml"),
        dataplane_yaml("other", "other", Some("other"), other_port, service_port),
    )
    .unwrap();
    let other: SocketAddr = ([127, 0, 0, 1], other_port).into();
    eventually("the new Dataplane to listen", || {
        get(other, "/").is_ok_and(|r| r.status == 200)
    });
    for _ in 0..10 {
        assert_eq!(get(other, "/").unwrap().status, 200);
    }

    assert!(
        meshlimit
            .logged("kernel limits off (--no-kernel)")
            .is_some(),
        "{}",
        meshlimit.log_text()
    );

    // SIGTERM: a clean exit.
    meshlimit.stop();
    assert!(TcpStream::connect(inbound).is_err(), "stopped listening");
    remove_dirs(&dir);
}

/// The value of the first sample of `name` whose line contains `labels`.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<u64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .find(|line| line[name.len()..].starts_with(['{', ' ']))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A process with few file descriptors (soft 150, hard 200) flooded with more connections than
/// it has descriptors: it raises its soft limit and says so, caps its client connections below
/// the limit, refuses the rest (counted), keeps its API and admin listener serving, and serves
/// the inbound again once the flood is gone. Without the cap the inbound takes every
/// descriptor and the listener cannot accept.
#[test]
fn a_connection_flood_beyond_the_descriptor_limit_leaves_the_listener_serving() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let dir = temp_dir();
    let service_port = backend("hello");
    let port = free_port();
    std::fs::write(
        dir.join("backend.yaml"),
        dataplane_yaml("backend", "backend", Some("backend"), port, service_port),
    )
    .unwrap();
    let mut meshlimit = Meshlimit::start_under(
        &["prlimit", "--nofile=150:200", "--"],
        &dir,
        // Flooding connections send nothing: they must stay for the whole test.
        &["--no-kernel", "--request-headers-timeout", "5m"],
    );
    let admin = meshlimit.admin();
    eventually("/ready", || {
        get(admin, "/ready").is_ok_and(|r| r.status == 200)
    });
    let logged = meshlimit.logged("open file limit").unwrap_or_default();
    assert!(
        logged.contains("open file limit: 200 (hard limit 200, soft limit raised to it)"),
        "{}",
        meshlimit.log_text()
    );
    let inbound: SocketAddr = ([127, 0, 0, 1], port).into();

    // (200 - 256 reserved, at least 64) / 2 = 32 client connections at most.
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(inbound).ok())
        .collect();
    assert!(flood.len() > 200, "only {} connections opened", flood.len());
    let mut metrics = String::new();
    eventually("the flood to be refused beyond the cap", || {
        metrics = get(admin, "/metrics").map(|r| r.body).unwrap_or_default();
        sample(&metrics, "meshlimit_process_connections_open", "") == Some(32)
            && sample(
                &metrics,
                "meshlimit_connections_refused_total",
                "cap=\"process\"",
            )
            .is_some_and(|refused| refused + 32 >= flood.len() as u64)
    });
    assert_eq!(
        sample(&metrics, "meshlimit_process_connections_max", ""),
        Some(32)
    );
    // The API and the admin routes answer while the inbound is saturated.
    assert_eq!(get(admin, "/ready").unwrap().status, 200);
    assert_eq!(get(admin, "/meshes").unwrap().status, 200);
    assert!(
        !get(inbound, "/").is_ok_and(|r| r.status != 0),
        "a connection beyond the cap is closed unanswered"
    );

    drop(flood);
    eventually("the inbound to answer again", || {
        get(inbound, "/").is_ok_and(|r| r.status == 200 && r.body == "hello")
    });
    assert!(meshlimit.child_alive());
    remove_dirs(&dir);
}

#[test]
fn run_refuses_an_invalid_directory_with_the_file_and_reason() {
    let dir = temp_dir();
    std::fs::write(
        dir.join("bad.yaml"),
        "type: Dataplane\nmesh: default\nname: x\nnetworking: {}\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_meshlimit"))
        .args(["run", "--no-kernel", "--resources"])
        .arg(&dir)
        .arg("--store")
        .arg(state_dir(&dir).join("store.redb"))
        .args(["--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    remove_dirs(&dir);
}

#[test]
fn a_store_seeded_from_another_directory_serves_only_the_new_one() {
    let (first, second) = (temp_dir(), temp_dir());
    let store = state_dir(&first).join("shared.redb");
    let store_arg = store.to_str().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    std::fs::write(
        first.join("a.yaml"),
        dataplane_yaml("app-a", "app-a", Some("app-a"), port_a, 9),
    )
    .unwrap();
    std::fs::write(
        second.join("b.yaml"),
        dataplane_yaml("app-b", "app-b", Some("app-b"), port_b, 9),
    )
    .unwrap();

    let mut run_a = Meshlimit::start_with(&first, &["--no-kernel", "--store", store_arg]);
    let url = run_a.url();
    assert!(
        run_a.logged(&format!("store {store_arg}: new")).is_some(),
        "{}",
        run_a.log_text()
    );
    // A resource written through the API is not the directory's: it stays.
    let policy = first.join("api-only.yaml");
    std::fs::write(&policy, api_only_policy()).unwrap();
    cli(&url, &["apply", "-f", policy.to_str().unwrap()]);
    std::fs::remove_file(&policy).unwrap();
    run_a.stop();

    let mut run_b = Meshlimit::start_with(&second, &["--no-kernel", "--store", store_arg]);
    let url = run_b.url();
    eventually("the account of the store", || {
        run_b
            .logged("1 seeded from a resource directory, 1 written through the API")
            .is_some()
    });
    assert!(
        run_b.logged("the store was seeded from ").is_some(),
        "{}",
        run_b.log_text()
    );
    let dataplanes = cli(&url, &["get", "dp"]);
    assert!(dataplanes.contains("app-b"), "{dataplanes}");
    assert!(!dataplanes.contains("app-a"), "{dataplanes}");
    assert!(cli(&url, &["get", "mrl"]).contains("api-only"));
    run_b.stop();
    remove_dirs(&first);
    remove_dirs(&second);
}

#[test]
fn get_json_and_yaml_lists_apply_back_unchanged() {
    let dir = temp_dir();
    std::fs::write(dir.join("policy.yaml"), backend_limit_yaml(Some(429))).unwrap();
    let mut meshlimit = Meshlimit::start(&dir);
    let url = meshlimit.url();
    let second = state_dir(&dir).join("second.yaml");
    std::fs::write(&second, api_only_policy()).unwrap();
    cli(&url, &["apply", "-f", second.to_str().unwrap()]);
    let yaml = cli(&url, &["get", "mrl", "-o", "yaml"]);
    assert!(
        yaml.contains("api-only") && yaml.contains("backend-rate-limit"),
        "{yaml}"
    );

    for format in ["json", "yaml"] {
        let listed = state_dir(&dir).join(format!("listed.{format}"));
        std::fs::write(&listed, cli(&url, &["get", "mrl", "-o", format])).unwrap();
        cli(&url, &["delete", "mrl", "api-only"]);
        assert!(!cli(&url, &["get", "mrl"]).contains("api-only"));
        let applied = cli(&url, &["apply", "-f", listed.to_str().unwrap()]);
        assert!(
            applied.contains("meshratelimit/api-only created"),
            "{applied}"
        );
        assert!(
            applied.contains("meshratelimit/backend-rate-limit unchanged"),
            "{applied}"
        );
        assert_eq!(cli(&url, &["get", "mrl", "-o", "yaml"]), yaml, "{format}");
    }
    meshlimit.stop();
    remove_dirs(&dir);
}

#[test]
fn diagnose_tells_a_kernel_limiter_off_on_purpose_from_a_problem() {
    let dir = temp_dir();
    let port = free_port();
    std::fs::write(
        dir.join("dp.yaml"),
        dataplane_yaml("redis", "redis", Some("redis"), port, 9)
            .replace("kuma.io/protocol: http", "kuma.io/protocol: tcp"),
    )
    .unwrap();
    std::fs::write(
        dir.join("rl.yaml"),
        "apiVersion: kmesh.net/v1alpha1\nkind: RateLimit\nmetadata:\n  name: redis-connections\n\
         spec:\n  service: redis\n  rules:\n    - maxTokens: 20\n      tokensPerFill: 2\n      \
         fillInterval: 1000000000\n",
    )
    .unwrap();
    let mut meshlimit = Meshlimit::start(&dir);
    let url = meshlimit.url();
    let mut diagnosed = String::new();
    eventually("the kernel limiter's report", || {
        diagnosed = cli(&url, &["diagnose", "rate-limit"]);
        diagnosed.contains("the kernel limiter is off there on purpose")
    });
    assert!(
        diagnosed.contains("[info]    1 kernel limit(s) not enforced on "),
        "{diagnosed}"
    );
    assert!(!diagnosed.contains("[problem]"), "{diagnosed}");
    assert!(diagnosed.contains("No problem found."), "{diagnosed}");
    meshlimit.stop();
    remove_dirs(&dir);
}

#[test]
fn log_format_json_writes_one_json_object_per_event() {
    let dir = temp_dir();
    std::fs::write(dir.join("policy.yaml"), backend_limit_yaml(Some(429))).unwrap();
    let mut meshlimit = Meshlimit::start_with(&dir, &["--no-kernel", "--log-format", "json"]);
    meshlimit.admin();
    eventually("the listening event", || {
        meshlimit.logged("admin listening").is_some()
    });
    meshlimit.stop();
    let log = meshlimit.log_text();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    let listening = events
        .iter()
        .find(|e| e["fields"]["message"] == "admin listening")
        .unwrap_or_else(|| panic!("no admin listening event in {log}"));
    assert_eq!(listening["level"], "INFO");
    assert!(
        listening["timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("20"))
    );
    assert!(
        listening["fields"]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    assert!(
        events.iter().any(|e| e["fields"]["message"] == "stopped"),
        "{log}"
    );
    remove_dirs(&dir);
}

/// The seed's policy under another name, selecting nothing `run` serves: written through the
/// API only.
fn api_only_policy() -> String {
    backend_limit_yaml(Some(429))
        .replace("name: backend-rate-limit", "name: api-only")
        .replace("app: backend", "app: nobody")
}

/// What `get ratelimit-stats -o json` says of one inbound of one Dataplane.
fn inbound_stats(url: &str, dataplane: &str) -> Option<serde_json::Value> {
    let status: serde_json::Value =
        serde_json::from_str(&cli(url, &["get", "ratelimit-stats", "-o", "json"])).unwrap();
    status["dataplanes"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == dataplane)?["inbounds"]
        .get(0)
        .cloned()
}

#[test]
fn writes_through_the_api_and_directory_edits_change_enforcement_live() {
    let dir = temp_dir();
    let service_port = backend("hello");
    let port = free_port();
    std::fs::write(
        dir.join("backend.yaml"),
        dataplane_yaml("backend", "backend", Some("backend"), port, service_port),
    )
    .unwrap();
    std::fs::write(dir.join("policy.yaml"), backend_limit_yaml(Some(423))).unwrap();

    // A cgroup that does not exist: the kernel limiter cannot attach, `run` says so and carries on.
    let mut meshlimit = Meshlimit::start_with(&dir, &["--cgroup", "/nonexistent/meshlimit"]);
    let url = meshlimit.url();
    let admin = meshlimit.admin();
    eventually("/ready", || {
        get(admin, "/ready").is_ok_and(|r| r.status == 200)
    });
    let line = meshlimit.logged("kernel limits not enforced: ").unwrap();
    assert!(line.contains("or pass --no-kernel"), "{line}");
    let inbound: SocketAddr = ([127, 0, 0, 1], port).into();
    let statuses: Vec<u16> = (0..6).map(|_| get(inbound, "/").unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 423]);

    // `meshlimit apply` against the run process: same rate (the empty bucket stays empty), new
    // status, enforced at once.
    let state = state_dir(&dir);
    std::fs::write(state.join("policy-429.yaml"), backend_limit_yaml(Some(429))).unwrap();
    std::fs::write(state.join("api-only.yaml"), api_only_policy()).unwrap();
    let applied = cli(
        &url,
        &[
            "apply",
            "-f",
            state.join("policy-429.yaml").to_str().unwrap(),
        ],
    );
    assert!(applied.contains("configured"), "{applied}");
    eventually("the applied status to be enforced", || {
        get(inbound, "/").unwrap().status == 429
    });
    cli(
        &url,
        &["apply", "-f", state.join("api-only.yaml").to_str().unwrap()],
    );

    // The counters reach the control plane's stats, as a remote data plane's would.
    eventually("the stats to show the limited requests", || {
        inbound_stats(&url, "backend")
            .is_some_and(|s| s["allowed"] == 5 && s["limited"].as_u64() >= Some(2))
    });
    let table = cli(&url, &["get", "ratelimit-stats"]);
    assert!(
        table.contains("backend") && table.contains(&port.to_string()),
        "{table}"
    );

    // Removing the policy's file deletes the policy from the store: the limit lifts. The
    // resource written through the API stays.
    std::fs::remove_file(dir.join("policy.yaml")).unwrap();
    eventually("the limit to lift", || {
        get(inbound, "/").unwrap().status == 200
    });
    let listed = cli(&url, &["get", "meshratelimits"]);
    assert!(
        !listed.contains("backend-rate-limit") && listed.contains("api-only"),
        "{listed}"
    );

    // Back in the directory, then removed while `run` is stopped: deleted at the next start.
    std::fs::write(dir.join("policy.yaml"), backend_limit_yaml(Some(423))).unwrap();
    eventually("the policy to be stored again", || {
        cli(&url, &["get", "meshratelimits"]).contains("backend-rate-limit")
    });
    meshlimit.stop();
    std::fs::remove_file(dir.join("policy.yaml")).unwrap();
    let mut meshlimit = Meshlimit::start(&dir);
    let url = meshlimit.url();
    let listed = cli(&url, &["get", "meshratelimits"]);
    assert!(
        !listed.contains("backend-rate-limit") && listed.contains("api-only"),
        "{listed}"
    );
    meshlimit.stop();
    remove_dirs(&dir);
}

#[test]
fn run_attaches_the_kernel_limiter_and_reports_its_counters() {
    let dir = temp_dir();
    let port = free_port();
    let mut dataplane = dataplane_yaml("web-1", "web-1", Some("web-1"), port, free_port());
    dataplane = dataplane.replace("kuma.io/service: web-1", "kuma.io/service: web");
    std::fs::write(dir.join("web.yaml"), dataplane).unwrap();
    std::fs::write(
        dir.join("ratelimit.yaml"),
        "apiVersion: kmesh.net/v1alpha1
kind: RateLimit
metadata:
  name: web-connections
spec:
  service: web
  rules:
    - maxTokens: 2
      tokensPerFill: 1
      fillInterval: 3600000000000
",
    )
    .unwrap();
    let sandbox = Sandbox::new("mlrun");
    let cgroup = sandbox.cgroup.to_str().unwrap().to_owned();
    let mut meshlimit = Meshlimit::start_with(&dir, &["--cgroup", &cgroup]);
    let url = meshlimit.url();
    assert!(
        meshlimit
            .logged(&format!("kernel limiter attached to cgroup {cgroup}"))
            .is_some(),
        "{}",
        meshlimit.log_text()
    );

    // The limits are in the kernel before the listener is announced.
    assert_eq!(sandbox.connect(port, 4), "CCEE");
    let metrics = get(meshlimit.admin(), "/metrics").unwrap().body;
    for decision in ["allowed", "limited"] {
        let line = format!(
            r#"meshlimit_kernel_connections_total{{service="web",address="127.0.0.1",port="{port}",decision="{decision}"}} 2"#
        );
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(
        metrics.contains(&format!(
            r#"meshlimit_kernel_tokens{{service="web",address="127.0.0.1",port="{port}"}} 0"#
        )),
        "{metrics}"
    );
    eventually("the stats to show the kernel destination", || {
        let status: serde_json::Value =
            serde_json::from_str(&cli(&url, &["get", "ratelimit-stats", "-o", "json"])).unwrap();
        status["agents"].as_array().is_some_and(|agents| {
            agents.iter().any(|a| {
                a["attached"] == true
                    && a["destinations"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|d| d["limited"] == 2 && d["port"] == port))
            })
        })
    });

    // Lifting the limit through the API reaches the kernel at once.
    cli(&url, &["delete", "ratelimit", "web-connections"]);
    eventually("the kernel limit to lift", || {
        sandbox.connect(port, 1) == "C"
    });
    // And applying it again puts it back (a new bucket, full).
    cli(
        &url,
        &["apply", "-f", dir.join("ratelimit.yaml").to_str().unwrap()],
    );
    eventually("the kernel limit to be back", || {
        sandbox.connect(port, 1) == "E"
    });

    meshlimit.stop();
    eventually("the detach to be reported", || {
        meshlimit.logged("kernel limiter detached").is_some()
    });
    assert_eq!(
        sandbox.connect(port, 1),
        "C",
        "detached: nothing is limited"
    );
    remove_dirs(&dir);
}

#[test]
fn a_listener_beyond_loopback_needs_a_token_for_the_api_and_the_admin_routes() {
    let dir = temp_dir();
    let state = state_dir(&dir);
    std::fs::write(
        dir.join("backend.yaml"),
        dataplane_yaml(
            "backend",
            "backend",
            Some("backend"),
            free_port(),
            free_port(),
        ),
    )
    .unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_meshlimit"))
        .args(["run", "--no-kernel", "--admin", "0.0.0.0:0", "--store"])
        .arg(state.join("store.redb"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("without --token-file"), "{stderr}");

    let token_file = state.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let mut meshlimit = Meshlimit::start_with(
        &dir,
        &[
            "--no-kernel",
            "--admin",
            "0.0.0.0:0",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let port = meshlimit.admin().port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let bearer = "Authorization: Bearer s3cret\r\n";
    eventually("/ready with the token", || {
        get_with(addr, "/ready", bearer).is_ok_and(|r| r.status == 200)
    });
    for path in ["/metrics", "/ready", "/config", "/meshes"] {
        assert_eq!(
            get(addr, path).unwrap().status,
            401,
            "{path} without a token"
        );
    }
    assert_eq!(get_with(addr, "/metrics", bearer).unwrap().status, 200);
    let listed = cli(
        &format!("http://{addr}"),
        &["--token", "s3cret", "get", "dataplanes"],
    );
    assert!(listed.contains("backend"), "{listed}");
    meshlimit.stop();
    remove_dirs(&dir);
}

/// Three Dataplanes of service `web` and a `MeshGlobalRateLimit` of 10 an hour for all of them.
fn global_resources(dir: &Path, ports: [u16; 3], service_port: u16, failure_mode: &str) {
    for (i, port) in ports.iter().enumerate() {
        std::fs::write(
            dir.join(format!("web-{i}.yaml")),
            format!(
                "type: Dataplane\nmesh: default\nname: web-{i}\nnetworking:\n  address: \
                 127.0.0.1\n  inbound:\n    - port: {port}\n      servicePort: {service_port}\n      \
                 tags:\n        kuma.io/service: web\n        kuma.io/protocol: http\n"
            ),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("global.yaml"),
        format!(
            "type: MeshGlobalRateLimit\nmesh: default\nname: web-total\nspec:\n  targetRef:\n    \
             kind: MeshService\n    name: web\n  from:\n    - targetRef:\n        kind: Mesh\n      \
             default:\n        http:\n          requestRate: {{num: 10, interval: 1h}}\n          \
             onRateLimit: {{status: 423}}\n        failureMode: {failure_mode}\n"
        ),
    )
    .unwrap();
}

/// How many of `counts[i]` requests to instance `i` are admitted (200), instance by instance.
fn admitted(ports: [u16; 3], counts: [usize; 3]) -> [usize; 3] {
    let mut out = [0; 3];
    for i in 0..3 {
        let inbound: SocketAddr = ([127, 0, 0, 1], ports[i]).into();
        out[i] = (0..counts[i])
            .filter(|_| get(inbound, "/").unwrap().status == 200)
            .count();
    }
    out
}

#[test]
fn a_global_limit_is_one_total_in_redis_and_a_share_per_instance_without() {
    let service_port = backend("web");
    // `/ready` answers 200 once every inbound listens.
    let ready = |meshlimit: &Meshlimit| {
        let admin = meshlimit.admin();
        eventually("/ready", || {
            get(admin, "/ready").is_ok_and(|r| r.status == 200)
        });
        admin
    };

    // In Redis: one bucket for the three instances, however the load is spread.
    let redis = meshlimit_testkit::redis::RedisServer::start();
    let dir = temp_dir();
    let ports = [free_port(), free_port(), free_port()];
    global_resources(&dir, ports, service_port, "Closed");
    let mut meshlimit = Meshlimit::start_with(&dir, &["--no-kernel", "--redis", &redis.url()]);
    let admin = ready(&meshlimit);
    let shared = admitted(ports, [8, 4, 3]);
    assert_eq!(shared.iter().sum::<usize>(), 10, "{shared:?}");
    assert_eq!(shared, [8, 2, 0]);

    // Redis gone: `failureMode: Closed` rejects (each check gives up after the policy's 25 ms
    // timeout; the proxy's tests hold that bound), counted.
    redis.kill();
    assert_eq!(admitted(ports, [2, 2, 2]), [0, 0, 0]);
    let metrics = get(admin, "/metrics").unwrap().body;
    assert!(
        metrics.contains("meshlimit_global_store_errors_total"),
        "{metrics}"
    );
    meshlimit.stop();
    remove_dirs(&dir);

    // Without Redis: each instance enforces its exact share of the total, 4 + 3 + 3.
    let dir = temp_dir();
    let ports = [free_port(), free_port(), free_port()];
    global_resources(&dir, ports, service_port, "Open");
    let mut meshlimit = Meshlimit::start(&dir);
    ready(&meshlimit);
    assert_eq!(admitted(ports, [6, 6, 6]), [4, 3, 3]);
    meshlimit.stop();
    remove_dirs(&dir);
}
