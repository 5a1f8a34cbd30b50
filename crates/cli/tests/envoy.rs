//! Envoy with meshlimit, as real processes: `meshlimit envoy bootstrap` checked by a real Envoy,
//! and `meshlimit control-plane --xds` feeding that Envoy what `meshlimit apply` stores (limits
//! enforced, changes followed, rejected configurations shown at `GET /xds` and by `diagnose`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use meshlimit_testkit::{Answer, EnvoyProcess, envoy_binary, listener_port};

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");

fn meshlimit(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("meshlimit runs")
}

fn bootstrap(args: &[&str]) -> String {
    let out = meshlimit(&[&["envoy", "bootstrap"], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

struct Killed(Child);

struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bootstrap_names_the_node_and_the_xds_server() {
    let yaml = bootstrap(&[
        "--dataplane",
        "backend-1",
        "--mesh",
        "prod",
        "--xds",
        "10.1.2.3:15678",
    ]);
    // The structure is checked by the library's tests and by Envoy below; here, the flags.
    for expected in [
        "id: prod.backend-1",
        "address: 10.1.2.3",
        "port_value: 15678",
        "port_value: 9901",
        "type: STATIC",
    ] {
        assert!(
            yaml.contains(expected),
            "{expected:?} missing from:\n{yaml}"
        );
    }
}

#[test]
fn bad_arguments_are_explained() {
    let out = meshlimit(&["envoy", "bootstrap", "--dataplane", "a", "--xds", "nowhere"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--xds") && err.contains("nowhere") && err.contains("no port"),
        "{err}"
    );
    let out = meshlimit(&["envoy", "bootstrap", "--dataplane", " "]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dataplane must not be empty"));
}

#[test]
fn envoy_accepts_the_bootstrap_and_dials_the_xds_server_over_http2() {
    let xds = TcpListener::bind("127.0.0.1:0").expect("bind");
    let xds_address = xds.local_addr().expect("address").to_string();
    let yaml = bootstrap(&[
        "--dataplane",
        "web-1",
        "--xds",
        &xds_address,
        "--admin-port",
        "0",
    ]);
    let config = std::env::temp_dir().join(format!(
        "meshlimit-envoy-bootstrap-{}-{}.yaml",
        std::process::id(),
        xds.local_addr().expect("address").port()
    ));
    std::fs::write(&config, &yaml).expect("write bootstrap");
    let _cleanup = Removed(config.clone());

    let validated = Command::new(envoy_binary())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&config)
        .arg("--disable-hot-restart")
        .output()
        .expect("Envoy runs");
    assert!(
        validated.status.success(),
        "Envoy rejects the bootstrap:\n{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let _envoy = Killed(
        Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Envoy"),
    );
    // Envoy dials ADS at start-up; poll for its connection against a deadline.
    xds.set_nonblocking(true).expect("non-blocking");
    let deadline = std::time::SystemTime::now() + Duration::from_secs(15);
    let mut connection = loop {
        match xds.accept() {
            Ok((connection, _)) => break connection,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::SystemTime::now() < deadline,
                    "Envoy never dialed the xDS server"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    connection.set_nonblocking(false).expect("blocking");
    connection
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut preface = [0u8; 24];
    connection
        .read_exact(&mut preface)
        .expect("Envoy speaks first");
    assert_eq!(
        &preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "gRPC needs HTTP/2"
    );
}

// ---------------------------------------------------------------------------------------------
// `meshlimit control-plane --xds`: a real control plane, `meshlimit apply`, and a real Envoy
// started with the bootstrap of `meshlimit envoy bootstrap`.
// ---------------------------------------------------------------------------------------------

/// How long a condition may take before a test gives up (Envoy starts in about a second).
const PATIENCE: Duration = Duration::from_secs(15);

/// Polls `check` every few milliseconds until it yields a value, failing after `limit`.
fn poll<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = SystemTime::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            SystemTime::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `GET path` on a fresh connection (see [`meshlimit_testkit::http_get`]).
fn http_get(address: SocketAddr, path: &str) -> std::io::Result<Answer> {
    meshlimit_testkit::http_get(address, path, PATIENCE)
}

fn get_inbound(port: u16) -> Answer {
    http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/").expect("a request through Envoy")
}

/// A backend answering `200 backend` to every request, counting them.
fn backend() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend");
    let port = listener.local_addr().expect("bound").port();
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nbackend",
                );
            });
        }
    });
    (port, served)
}

/// `meshlimit control-plane --api 127.0.0.1:0 --xds 127.0.0.1:0`, killed when dropped (its
/// log is printed when the test fails).
struct ControlPlane {
    _process: Killed,
    dir: tempfile::TempDir,
    url: String,
    api: SocketAddr,
    xds: SocketAddr,
}

impl ControlPlane {
    fn start() -> ControlPlane {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let xds_file = dir.path().join("xds-address");
        let log = std::fs::File::create(dir.path().join("control-plane.log")).expect("a log file");
        let mut child = Command::new(BIN)
            .args([
                "control-plane",
                "--api",
                "127.0.0.1:0",
                "--xds",
                "127.0.0.1:0",
            ])
            .arg("--store")
            .arg(dir.path().join("store.redb"))
            .arg("--xds-address-file")
            .arg(&xds_file)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("the control plane starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let process = Killed(child);
        // Every stdout line goes to a channel, read to the end so the process never writes
        // into a closed pipe.
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut url, mut xds) = (None, None);
        while url.is_none() || xds.is_none() {
            let line = lines
                .recv_timeout(PATIENCE)
                .expect("the control plane prints its addresses");
            if let Some(rest) = line.split("API listening on ").nth(1) {
                url = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("xDS listening on ") {
                xds = Some(rest.trim().parse::<SocketAddr>().expect("an address"));
            }
        }
        let url = url.expect("the control plane prints its API URL");
        let xds = xds.expect("the control plane prints its xDS address");
        assert_ne!(xds.port(), 0, "the real port is printed");
        let written = std::fs::read_to_string(&xds_file).expect("the xDS address file");
        assert_eq!(written.trim(), xds.to_string());
        let api = url
            .trim_start_matches("http://")
            .parse()
            .expect("the URL holds an address");
        ControlPlane {
            _process: process,
            dir,
            url,
            api,
            xds,
        }
    }

    /// What the control plane logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control-plane.log")).unwrap_or_default()
    }

    /// `meshlimit --cp URL <args>` to completion.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--cp")
            .arg(&self.url)
            .args(args)
            .env_remove("MESHLIMIT_TOKEN")
            .output()
            .expect("meshlimit runs")
    }

    /// `meshlimit apply -f` of `yaml`, which must succeed.
    fn apply(&self, name: &str, yaml: &str) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).expect("write the resource file");
        let out = self.cli(&["apply", "-f", path.to_str().expect("a UTF-8 path")]);
        assert!(
            out.status.success(),
            "apply {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `GET /xds`: every Envoy node as the control plane sees it.
    fn xds_status(&self) -> meshlimit_xds::XdsStatus {
        let answer = http_get(self.api, "/xds").expect("GET /xds");
        assert_eq!(answer.status, 200, "{}", answer.body);
        serde_json::from_str(&answer.body).expect("GET /xds is the status JSON")
    }

    fn node(&self, node: &str) -> Option<meshlimit_xds::NodeStatus> {
        self.xds_status().nodes.into_iter().find(|n| n.node == node)
    }

    /// Waits until `node` runs the control plane's current version of everything.
    fn wait_in_sync(&self, node: &str) -> meshlimit_xds::NodeStatus {
        poll(&format!("{node} in sync"), PATIENCE, || {
            self.node(node)
                .filter(|n| n.streams > 0 && n.in_sync() && n.listeners.current_version != "0")
        })
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- control plane log ---\n{}", self.log());
        }
    }
}

/// An Envoy started with the bootstrap `meshlimit envoy bootstrap` prints, killed when dropped
/// (its log is printed when the test fails).
struct Envoy {
    process: EnvoyProcess,
}

impl Envoy {
    fn start(dataplane: &str, xds: SocketAddr) -> Envoy {
        let yaml = bootstrap(&[
            "--dataplane",
            dataplane,
            "--xds",
            &xds.to_string(),
            "--admin-port",
            "0",
        ]);
        Envoy {
            process: EnvoyProcess::start(&yaml, listener_port(), PATIENCE),
        }
    }

    /// An Envoy counter (0 when Envoy has not created it yet).
    fn counter(&self, name: &str) -> u64 {
        let answer =
            http_get(self.process.admin, &format!("/stats?filter=^{name}$")).expect("admin");
        answer
            .body
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn dataplane_yaml(name: &str, inbounds: &[(u16, u16)]) -> String {
    let mut yaml = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"
    );
    for (port, service_port) in inbounds {
        yaml.push_str(&format!(
            "    - port: {port}
      servicePort: {service_port}
      tags:
        kuma.io/service: web
        kuma.io/protocol: http
"
        ));
    }
    yaml
}

/// A MeshRateLimit on service `web`: `num` requests per hour (so refill during a test is
/// negligible and exactly `num` are admitted), rejected with `status` and the headers.
fn policy_yaml(num: u32, status: u16, set: (&str, &str), add: &[(&str, &str)]) -> String {
    let add: String = add
        .iter()
        .map(|(name, value)| {
            format!("                  - name: {name}\n                    value: {value}\n")
        })
        .collect();
    format!(
        "type: MeshRateLimit
mesh: default
name: web-limit
spec:
  targetRef:
    kind: MeshService
    name: web
  rules:
    - default:
        local:
          http:
            requestRate:
              num: {num}
              interval: 1h
            onRateLimit:
              status: {status}
              headers:
                set:
                  - name: {}
                    value: {}
                add:
{add}",
        set.0, set.1
    )
}

/// Waits until something accepts connections on `port` (an Envoy listener once active).
fn wait_listening(port: u16) {
    poll(&format!("a listener on {port}"), PATIENCE, || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

#[test]
fn envoy_fed_by_the_control_plane_enforces_applied_limits_and_follows_changes() {
    let cp = ControlPlane::start();
    let (service, served) = backend();
    let port = listener_port();
    // One apply, one commit: Envoy's first configuration already holds the limit.
    cp.apply(
        "resources.yaml",
        &format!(
            "{}---\n{}",
            dataplane_yaml("web-1", &[(port, service)]),
            policy_yaml(
                5,
                503,
                ("x-limit", "v1"),
                &[("x-note", "one"), ("x-note", "two")],
            ),
        ),
    );
    let envoy = Envoy::start("web-1", cp.xds);
    let status = cp.wait_in_sync("default.web-1");
    assert!(status.known, "{status:?}");
    wait_listening(port);

    // The bucket holds 5: exactly 5 reach the backend, the rest get the policy's answer.
    let statuses: Vec<u16> = (0..8).map(|_| get_inbound(port).status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 503, 503, 503]);
    let rejected = get_inbound(port);
    assert_eq!(rejected.status, 503);
    assert_eq!(rejected.header("x-limit"), ["v1"]);
    assert_eq!(rejected.header("x-note"), ["one", "two"]);
    assert_eq!(served.load(Ordering::SeqCst), 5);
    let stat = |name: &str| envoy.counter(&format!("inbound_{port}.http_local_rate_limit.{name}"));
    assert_eq!(stat("ok"), 5);
    assert_eq!(stat("rate_limited"), 4);

    // A changed limit: the control plane pushes it on commit, and Envoy's next connection gets
    // the new bucket (2, full) and the new answer.
    cp.apply("policy.yaml", &policy_yaml(2, 429, ("x-limit", "v2"), &[]));
    #[allow(clippy::disallowed_methods)] // wall-clock latency across real processes
    let applied = std::time::Instant::now();
    let first = poll(
        "Envoy admitting under the new limit",
        Duration::from_secs(1),
        || {
            let answer = get_inbound(port);
            (answer.status != 503).then_some(answer)
        },
    );
    let latency = applied.elapsed();
    eprintln!("apply -> Envoy enforcing the new limit: {latency:?}");
    assert_eq!(first.status, 200, "{first:?}");
    let second = get_inbound(port);
    let third = get_inbound(port);
    assert_eq!((second.status, third.status), (200, 429), "{third:?}");
    assert_eq!(third.header("x-limit"), ["v2"]);
    assert!(third.header("x-note").is_empty(), "{third:?}");
    assert_eq!(served.load(Ordering::SeqCst), 7);

    let status = cp.wait_in_sync("default.web-1");
    assert_eq!(status.listeners.nacks, 0, "{status:?}");
    assert_ne!(
        status.listeners.acked_version, status.clusters.acked_version,
        "only the listener changed: {status:?}"
    );
}

#[test]
fn a_configuration_envoy_rejects_is_shown_at_xds_and_by_diagnose() {
    let cp = ControlPlane::start();
    let (service, _) = backend();
    let port = listener_port();
    cp.apply(
        "resources.yaml",
        &format!(
            "{}---\n{}",
            dataplane_yaml("web-1", &[(port, service)]),
            policy_yaml(100, 429, ("x-limit", "yes"), &[])
        ),
    );
    let _envoy = Envoy::start("web-1", cp.xds);
    let good = cp.wait_in_sync("default.web-1");
    wait_listening(port);

    let diagnose = |cp: &ControlPlane| {
        let out = cp.cli(&["diagnose", "rate-limit", "--dataplane", "web-1"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let report = diagnose(&cp);
    assert!(
        report.contains("[ok]      no Envoy node rejected its configuration (1 connected over xDS, 1 running the current version)"),
        "{report}"
    );

    // A second inbound on a port another process holds: Envoy cannot bind it and rejects the
    // listeners (NACK), keeping the ones it runs.
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("bound").port();
    cp.apply(
        "dp.yaml",
        &dataplane_yaml("web-1", &[(port, service), (taken, service)]),
    );
    let rejected = poll("a NACK at GET /xds", PATIENCE, || {
        cp.node("default.web-1")
            .filter(|n| n.listeners.rejected_current())
    });
    let nack = rejected.listeners.last_nack.clone().expect("a NACK");
    assert!(
        nack.message.contains(&format!("127.0.0.1:{taken}")),
        "Envoy's reason names the address: {nack:?}"
    );
    assert!(!nack.nonce.is_empty());
    assert_eq!(rejected.listeners.nacks, 1);
    assert_eq!(
        rejected.listeners.acked_version,
        good.listeners.acked_version
    );
    assert!(!rejected.in_sync());
    assert_eq!(get_inbound(port).status, 200, "Envoy keeps serving");
    // The control plane logs the rejection with everything needed to find its cause.
    let logged = poll("the NACK in the control plane's log", PATIENCE, || {
        cp.log()
            .lines()
            .find(|l| l.contains("Envoy rejected a configuration (NACK)"))
            .map(str::to_string)
    });
    for field in [
        "WARN".to_string(),
        "node=\"default.web-1\"".to_string(),
        "type_url=\"type.googleapis.com/envoy.config.listener.v3.Listener\"".to_string(),
        format!("version=\"{}\"", nack.version),
        format!("nonce=\"{}\"", nack.nonce),
        format!("cannot bind '127.0.0.1:{taken}'"),
    ] {
        assert!(logged.contains(&field), "{field} missing from: {logged}");
    }

    let report = diagnose(&cp);
    let expected = format!(
        "[problem] Envoy node default.web-1 rejected configuration: listeners version {} (nonce {}): {}",
        nack.version,
        nack.nonce,
        nack.message.trim_end()
    );
    assert!(report.contains(&expected), "{expected}\nnot in:\n{report}");
    assert!(
        report.contains("fix: Envoy keeps running its last accepted listeners"),
        "{report}"
    );

    // Fixed: the inbound moves to a free port; Envoy accepts and the problem is gone.
    drop(holder);
    let moved = listener_port();
    cp.apply(
        "dp.yaml",
        &dataplane_yaml("web-1", &[(port, service), (moved, service)]),
    );
    let fixed = cp.wait_in_sync("default.web-1");
    assert_eq!(fixed.listeners.nacks, 1, "the count stays: {fixed:?}");
    wait_listening(moved);
    assert_eq!(get_inbound(moved).status, 200);
    let report = diagnose(&cp);
    assert!(
        report.contains("[ok]      no Envoy node rejected its configuration"),
        "{report}"
    );
    // Envoy follows over xDS, not the limits stream: not reported as a missing data plane.
    assert!(
        report.contains("data plane default/web-1 is an Envoy sidecar connected over xDS"),
        "{report}"
    );
    assert!(!report.contains("is not connected"), "{report}");
}

#[test]
fn xds_stays_on_loopback_unless_allowed_and_its_status_needs_the_api_token() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = meshlimit(&[
        "control-plane",
        "--api",
        "127.0.0.1:0",
        "--xds",
        "0.0.0.0:0",
        "--store",
        dir.path().join("store.redb").to_str().expect("UTF-8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve xDS on 0.0.0.0:0") && err.contains("--xds-allow-remote"),
        "{err}"
    );

    // With a token, GET /xds is guarded like the rest of the API.
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("write the token");
    let api_file = dir.path().join("api");
    let _cp = Killed(
        Command::new(BIN)
            .args([
                "control-plane",
                "--api",
                "127.0.0.1:0",
                "--xds",
                "127.0.0.1:0",
            ])
            .arg("--store")
            .arg(dir.path().join("store.redb"))
            .arg("--token-file")
            .arg(&token)
            .arg("--address-file")
            .arg(&api_file)
            .stdout(Stdio::null())
            .spawn()
            .expect("the control plane starts"),
    );
    let api: SocketAddr = poll("the API address file", PATIENCE, || {
        std::fs::read_to_string(&api_file)
            .ok()?
            .trim()
            .trim_start_matches("http://")
            .parse()
            .ok()
    });
    let answer = http_get(api, "/xds").expect("GET /xds");
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(answer.header("www-authenticate"), ["Bearer"]);

    let mut stream = TcpStream::connect(api).expect("connect");
    write!(
        stream,
        "GET /xds HTTP/1.1\r\nHost: cp\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("{\"nodes\":[]}"), "{text}");
}

#[test]
fn an_envoy_waiting_for_its_dataplane_gets_it_once_applied() {
    let cp = ControlPlane::start();
    let _envoy = Envoy::start("web-9", cp.xds);
    let waiting = poll("the Envoy's node at GET /xds", PATIENCE, || {
        cp.node("default.web-9").filter(|n| n.streams > 0)
    });
    assert!(!waiting.known, "{waiting:?}");
    let out = cp.cli(&["diagnose", "rate-limit"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(
            "[problem] Envoy node default.web-9 is connected but no Dataplane has that node id"
        ),
        "{report}"
    );

    let (service, served) = backend();
    let port = listener_port();
    // One commit, so the first version Envoy runs already holds the limit.
    cp.apply(
        "resources.yaml",
        &format!(
            "{}---\n{}",
            dataplane_yaml("web-9", &[(port, service)]),
            policy_yaml(1, 429, ("x-limit", "yes"), &[])
        ),
    );
    let running = cp.wait_in_sync("default.web-9");
    assert!(running.known, "{running:?}");
    wait_listening(port);
    assert_eq!(get_inbound(port).status, 200);
    assert_eq!(get_inbound(port).status, 429);
    assert_eq!(served.load(Ordering::SeqCst), 1);
}
