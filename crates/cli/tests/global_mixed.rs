//! One `MeshGlobalRateLimit` total shared by a mixed mesh, as real processes: two
//! `meshlimit dataplane --redis URL` proxies that take tokens from Redis themselves, and one
//! real Envoy (fed by `meshlimit control-plane --xds`) that asks the control plane's
//! rate-limit service (`--rls ADDR --redis URL`), which takes them from the same Redis.
//!
//! Both paths name the bucket `GlobalLimit::key` (`mgrl/<mesh>/<policy>/<service>`) under
//! `GlobalOptions`' default key prefix (`meshlimit:`), and both build it from the policy's
//! rate (a smooth bucket of `num` tokens refilled at `num` per interval), so requests spread
//! over the three instances spend one total: exactly `num` are admitted, whichever instance
//! they reach. The interval is one hour, so refill during the test is negligible.
//!
//! Servers bind port 0 and print what they got; the Dataplanes' inbound ports are fixed in
//! YAML, so they are picked free beforehand (below the ephemeral range, see `meshlimit_testkit::listener_port`).
//! Readiness is established without sending a request through any instance (each admitted
//! request spends a token): the proxies' `/ready` and `/config`, Envoy's `/ready`,
//! `/listeners` and `/clusters`, and the control plane's `GET /xds`.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

#[path = "support/net.rs"]
mod net;

use meshlimit_testkit::fixtures::dataplane_yaml;
use meshlimit_testkit::redis::RedisServer;
use meshlimit_testkit::{Answer, EnvoyProcess, Process, listener_port};

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");
/// How long a condition may take before the test gives up (Envoy starts in about a second).
const PATIENCE: Duration = Duration::from_secs(20);

/// The total: 9 requests an hour for every instance of `web` together.
const TOTAL: usize = 9;
/// Requests sent, round-robin over the three instances.
const REQUESTS: usize = 30;
/// The policy's rejection status.
const REJECTED: u16 = 423;
const POLICY: &str = "web-total";

/// Polls `check` every few milliseconds until it yields a value; fails after `PATIENCE`, with
/// `what` and the last thing `check` saw.
fn poll<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = SystemTime::now() + PATIENCE;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => assert!(
                SystemTime::now() < deadline,
                "timed out after {PATIENCE:?} waiting for {what}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `GET path` on a fresh connection (see [`meshlimit_testkit::http_get`]).
fn http_get(address: SocketAddr, path: &str) -> std::io::Result<Answer> {
    meshlimit_testkit::http_get(address, path, PATIENCE)
}

/// `GET url` (`http://HOST:PORT/path`), for admin endpoints: the status and the body, or why
/// there is none.
fn get_url(url: &str) -> Result<Answer, String> {
    let rest = url.strip_prefix("http://").ok_or("not an http:// URL")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |at| rest.split_at(at));
    let address: SocketAddr = authority.parse().map_err(|e| format!("{authority}: {e}"))?;
    http_get(address, path).map_err(|e| format!("GET {url}: {e}"))
}

/// The total for every instance of `web`, counted by the rate-limit service at `rls`. The
/// generous timeout covers Envoy's first call, which also opens its connection to the service.
fn policy_yaml(rls: SocketAddr) -> String {
    format!(
        "type: MeshGlobalRateLimit
mesh: default
name: {POLICY}
spec:
  targetRef:
    kind: MeshService
    name: web
  from:
    - targetRef:
        kind: Mesh
      default:
        http:
          requestRate:
            num: {TOTAL}
            interval: 1h
          onRateLimit:
            status: {REJECTED}
        mode: Limit
        backend:
          rateLimitService:
            url: http://{rls}
            timeout: 2s
"
    )
}

/// A `meshlimit dataplane` for `name`, once it enforces store `version` with its inbound bound.
struct Dataplane {
    _proc: Process,
    admin: String,
}

impl Dataplane {
    fn start(cp: &str, redis: &str, name: &str, port: u16, version: u64) -> Self {
        let mut command = Command::new(BIN);
        command.args([
            "--cp",
            cp,
            "dataplane",
            "--name",
            name,
            "--redis",
            redis,
            "--report-interval",
            "200ms",
        ]);
        let mut proc = Process::spawn(name, command, PATIENCE);
        let admin = proc.wait_value("admin listening on ", Some(';'));
        let enforcing = format!("enforcing store version {version}:");
        proc.wait_line(|l| l.contains(&enforcing));
        let dataplane = Dataplane { _proc: proc, admin };
        // Ready: the configuration applied with every inbound bound, and it holds the global
        // limit. No request is sent: each admitted one would spend a token of the total.
        poll(&format!("{name} ready"), || {
            let ready = get_url(&format!("{}/ready", dataplane.admin))?;
            (ready.status == 200)
                .then_some(())
                .ok_or(format!("/ready: {} {}", ready.status, ready.body))
        });
        let config = get_url(&format!("{}/config", dataplane.admin)).expect("/config");
        assert!(
            config.body.contains(&bucket()),
            "{name} does not enforce the global limit: {}",
            config.body
        );
        poll(&format!("{name} accepting on {port}"), || {
            TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        dataplane
    }

    /// Its `/metrics` lines about global limits (for a failure message).
    fn global_metrics(&self) -> String {
        let metrics = get_url(&format!("{}/metrics", self.admin))
            .map(|a| a.body)
            .unwrap_or_else(|e| e);
        metrics
            .lines()
            .filter(|l| l.starts_with("meshlimit_global"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The shared bucket's name, `GlobalLimit::key`.
fn bucket() -> String {
    format!("mgrl/default/{POLICY}/web")
}

#[test]
fn meshlimit_proxies_and_an_envoy_share_one_global_total_in_redis() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let redis = RedisServer::start();

    // The control plane: API, xDS for the Envoy, and the rate-limit service over `redis`.
    let mut command = Command::new(BIN);
    command
        .args([
            "control-plane",
            "--api",
            "127.0.0.1:0",
            "--xds",
            "127.0.0.1:0",
        ])
        .args(["--rls", "127.0.0.1:0", "--redis", &redis.url(), "--store"])
        .arg(dir.path().join("store.redb"));
    let mut cp = Process::spawn("control-plane", command, PATIENCE);
    let url = cp.wait_value("API listening on ", None);
    let api: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .expect("the URL holds an address");
    let xds: SocketAddr = cp
        .wait_value("xDS listening on ", None)
        .parse()
        .expect("an xDS address");
    let rls: SocketAddr = cp
        .wait_value("rate-limit service listening on ", None)
        .parse()
        .expect("a rate-limit service address");

    // Three instances of `web` in front of one application, and the total, in one apply.
    let (service, served) = net::counting_backend("backend");
    let names = ["web-1", "web-2", "web-3"];
    let ports = names.map(|_| listener_port());
    let mut resources: Vec<String> = names
        .iter()
        .zip(ports)
        .map(|(name, port)| dataplane_yaml(name, "web", None, port, service))
        .collect();
    resources.push(policy_yaml(rls));
    let file = dir.path().join("resources.yaml");
    std::fs::write(&file, resources.join("---\n")).expect("write the resources");
    let applied = Command::new(BIN)
        .args(["--cp", &url, "apply", "-f"])
        .arg(&file)
        .env_remove("MESHLIMIT_TOKEN")
        .output()
        .expect("meshlimit apply runs");
    assert!(
        applied.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let status = get_url(&format!("{url}/status")).expect("GET /status");
    assert_eq!(status.status, 200, "{}", status.body);
    let status: serde_json::Value = serde_json::from_str(&status.body).expect("status JSON");
    let version = status["version"].as_u64().expect("a store version");

    // web-1 and web-2: meshlimit's proxy, taking tokens from Redis itself.
    let dataplanes = [
        Dataplane::start(&url, &redis.url(), names[0], ports[0], version),
        Dataplane::start(&url, &redis.url(), names[1], ports[1], version),
    ];

    // web-3: a real Envoy, asking the rate-limit service.
    let bootstrap = Command::new(BIN)
        .args(["envoy", "bootstrap", "--dataplane", names[2]])
        .args(["--xds", &xds.to_string(), "--admin-port", "0"])
        .output()
        .expect("meshlimit envoy bootstrap runs");
    assert!(
        bootstrap.status.success(),
        "{}",
        String::from_utf8_lossy(&bootstrap.stderr)
    );
    let bootstrap = String::from_utf8(bootstrap.stdout).expect("UTF-8");
    let envoy = EnvoyProcess::start(&bootstrap, listener_port(), PATIENCE);
    let admin = format!("http://{}", envoy.admin);
    let node = format!("default.{}", names[2]);
    poll(&format!("{node} running the current configuration"), || {
        let answer = http_get(api, "/xds").map_err(|e| e.to_string())?;
        let status: meshlimit_xds::XdsStatus =
            serde_json::from_str(&answer.body).map_err(|e| format!("{e}: {}", answer.body))?;
        status
            .nodes
            .iter()
            .find(|n| n.node == node)
            .filter(|n| n.known && n.streams > 0 && n.in_sync())
            .filter(|n| n.listeners.current_version != "0")
            .map(drop)
            .ok_or(format!("{:?}", status.nodes))
    });
    let rls_cluster = meshlimit_xds::resources::ServiceAddress::parse(&format!("http://{rls}"))
        .expect("the service's URL")
        .cluster_name();
    let envoy_port = ports[2];
    poll(
        "Envoy live with its listener and the service's cluster",
        || {
            let ready = get_url(&format!("{admin}/ready"))?;
            if ready.status != 200 {
                return Err(format!("/ready: {} {}", ready.status, ready.body));
            }
            let listeners = get_url(&format!("{admin}/listeners"))?.body;
            if !listeners.contains(&format!("127.0.0.1:{envoy_port}")) {
                return Err(format!("/listeners: {listeners}"));
            }
            let clusters = get_url(&format!("{admin}/clusters"))?.body;
            let healthy = format!("::127.0.0.1:{}::health_flags::healthy", rls.port());
            if !clusters
                .lines()
                .any(|l| l.starts_with(&format!("{rls_cluster}::")) && l.contains(&healthy))
            {
                return Err(format!("/clusters: {clusters}"));
            }
            TcpStream::connect(("127.0.0.1", envoy_port))
                .map(drop)
                .map_err(|e| format!("connect to {envoy_port}: {e}"))
        },
    );
    assert_eq!(served.load(Ordering::SeqCst), 0, "no request was sent yet");

    // Round-robin over the three: the first TOTAL are admitted, wherever they go.
    let mut statuses = Vec::new();
    for i in 0..REQUESTS {
        let instance = i % names.len();
        let address = SocketAddr::from(([127, 0, 0, 1], ports[instance]));
        let answer = http_get(address, "/")
            .unwrap_or_else(|e| panic!("request {i} to {}: {e}", names[instance]));
        statuses.push((names[instance], answer.status));
    }

    let admitted = statuses.iter().filter(|(_, s)| *s == 200).count();
    let rejected = statuses.iter().filter(|(_, s)| *s == REJECTED).count();
    let per_instance: Vec<String> = names
        .iter()
        .map(|name| {
            let of = |want| {
                statuses
                    .iter()
                    .filter(|(n, s)| n == name && *s == want)
                    .count()
            };
            format!("{name}: {} admitted, {} rejected", of(200), of(REJECTED))
        })
        .collect();
    let envoy_stats = get_url(&format!("{admin}/stats?filter=%5C.ratelimit%5C."))
        // Chunked: keep the `name: value` lines, not the chunk sizes.
        .map(|a| {
            a.body
                .lines()
                .filter(|l| l.contains(": "))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|e| e);
    let why = format!(
        "{per_instance:?}\nstatuses: {statuses:?}\n\
         Redis keys: {:?}\nRedis clients: {:?}\n\
         web-1 /metrics:\n{}\nweb-2 /metrics:\n{}\nEnvoy ratelimit stats:\n{envoy_stats}",
        redis.command(&["KEYS", "*"]),
        redis.command(&["CLIENT", "LIST"]),
        dataplanes[0].global_metrics(),
        dataplanes[1].global_metrics(),
    );
    assert_eq!(
        (admitted, rejected),
        (TOTAL, REQUESTS - TOTAL),
        "one total across the three instances\n{why}"
    );
    let expected: Vec<u16> = (0..REQUESTS)
        .map(|i| if i < TOTAL { 200 } else { REJECTED })
        .collect();
    assert_eq!(
        statuses.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        expected,
        "the first {TOTAL} are admitted, whichever instance they reach\n{why}"
    );
    assert_eq!(
        served.load(Ordering::SeqCst),
        TOTAL as u64,
        "the backend saw only the admitted requests\n{why}"
    );
    // One bucket in Redis, under the default prefix: both paths spent it.
    let keys = redis.command(&["KEYS", "*"]);
    let name = format!("meshlimit:{{{}}}", bucket());
    assert_eq!(
        keys,
        format!("*1\r\n${}\r\n{name}\r\n", name.len()),
        "{why}"
    );

    // `diagnose` sees the store healthy, then, with Redis gone, the failed checks of each
    // meshlimit proxy (from their reports) and what the failure mode decided.
    let diagnose = || {
        let out = Command::new(BIN)
            .args(["--cp", &url, "diagnose", "rate-limit"])
            .env_remove("MESHLIMIT_TOKEN")
            .output()
            .expect("meshlimit diagnose runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    poll("diagnose: the global limits' store healthy", || {
        let (_, out) = diagnose();
        out.contains("[ok]      global limits on 2 inbound(s): no check of a shared store failed")
            .then_some(())
            .ok_or(out)
    });
    redis.kill();
    for port in &ports[..2] {
        let address = SocketAddr::from(([127, 0, 0, 1], *port));
        for _ in 0..2 {
            http_get(address, "/").expect("an answer without Redis");
        }
    }
    let out = poll("diagnose: the failed checks", || {
        let (code, out) = diagnose();
        let failed = |name| {
            out.lines().any(|l| {
                l.starts_with(&format!("[problem] default/{name} inbound "))
                    && l.contains("2 check(s) of its global limit failed in the shared store")
            })
        };
        (code == Some(1) && failed("web-1") && failed("web-2"))
            .then_some(out.clone())
            .ok_or(out)
    });
    assert!(
        out.contains("fix: check that the data plane reaches Redis"),
        "{out}"
    );
}
