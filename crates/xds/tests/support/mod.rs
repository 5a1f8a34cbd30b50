//! A real Envoy fed by an in-process xDS server, real backends and a plain HTTP/1.1 client.
//! Waiting is always polling for a condition against a deadline, never sleeping blindly.

#![allow(dead_code)] // each test binary uses its own part of the kit

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meshlimit_policy::effective::{
    DataplaneLimits, HeaderValue, HttpLimit, InboundLimits, Protocol, Rate, RejectHeaders, TcpLimit,
};
use meshlimit_testkit::{EnvoyProcess, parse_response_head};
use meshlimit_xds::{Bootstrap, XdsHandle, XdsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any condition may take before a test gives up (Envoy starts in about a second).
pub const DEADLINE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(10);

/// A port for Envoy to listen on (below the kernel's ephemeral range, see
/// [`meshlimit_testkit::listener_port`]).
pub fn free_port() -> u16 {
    meshlimit_testkit::listener_port()
}

/// Polls `check` until it yields a value, or fails the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let result = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    match result {
        Ok(value) => value,
        Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
    }
}

/// The in-process xDS server on a loopback port.
pub async fn start_xds() -> (XdsHandle, SocketAddr) {
    let (server, handle) = XdsServer::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind xDS");
    let address = listener.local_addr().expect("xDS address");
    tokio::spawn(async move {
        if let Err(err) = server.serve(listener).await {
            panic!("xDS server failed: {err}");
        }
    });
    (handle, address)
}

/// An Envoy process, killed when dropped.
pub struct Envoy {
    process: EnvoyProcess,
    pub admin: SocketAddr,
}

impl Envoy {
    /// Starts Envoy for `dataplane` with meshlimit's bootstrap pointing at `xds`.
    pub async fn start(mesh: &str, dataplane: &str, xds: SocketAddr) -> Envoy {
        let bootstrap = Bootstrap {
            mesh: mesh.into(),
            dataplane: dataplane.into(),
            xds: xds.to_string().parse().expect("xDS address"),
            admin_address: "127.0.0.1".into(),
            admin_port: 0,
        };
        Envoy::start_with(&bootstrap.to_yaml()).await
    }

    pub async fn start_with(bootstrap_yaml: &str) -> Envoy {
        let yaml = bootstrap_yaml.to_string();
        // Waiting for Envoy blocks: off the runtime, which keeps serving xDS meanwhile.
        let process =
            tokio::task::spawn_blocking(move || EnvoyProcess::start(&yaml, free_port(), DEADLINE))
                .await
                .expect("Envoy started");
        Envoy {
            admin: process.admin,
            process,
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub async fn admin_get(&self, path: &str) -> String {
        let response = http_get(self.admin, path).await.expect("admin request");
        assert_eq!(response.status, 200, "admin {path}: {}", response.body);
        response.body
    }

    /// Counters and gauges whose name contains `filter`.
    pub async fn stats(&self, filter: &str) -> HashMap<String, u64> {
        let text = self.admin_get(&format!("/stats?filter={filter}")).await;
        text.lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    pub async fn config_dump(&self) -> serde_json::Value {
        let text = self.admin_get("/config_dump").await;
        serde_json::from_str(&text).expect("config_dump is JSON")
    }

    /// The active dynamic listener named `name` as Envoy holds it: (version, listener).
    pub async fn active_listener(&self, name: &str) -> Option<(String, serde_json::Value)> {
        let dump = self.config_dump().await;
        find_dynamic(&dump, "dynamic_listeners", name, |l| {
            let active = l.get("active_state")?;
            Some((
                active.get("version_info")?.as_str()?.to_string(),
                active.get("listener")?.clone(),
            ))
        })
    }

    /// The dynamic cluster named `name`: (version, cluster).
    pub async fn active_cluster(&self, name: &str) -> Option<(String, serde_json::Value)> {
        let dump = self.config_dump().await;
        find_dynamic(&dump, "dynamic_active_clusters", name, |c| {
            Some((
                c.get("version_info")?.as_str()?.to_string(),
                c.get("cluster")?.clone(),
            ))
        })
    }

    /// Waits until Envoy runs every listener generated for `limits`, exactly as
    /// `render_yaml` shows it. (Envoy keeps a listener's `version_info` across in-place
    /// filter-chain updates, so the content, not the version, tells an update was applied.)
    /// An active listener's socket is already listening: no probe connection is needed (a
    /// connection limit would count it).
    pub async fn wait_running(&self, limits: &DataplaneLimits) {
        let expected = rendered(limits);
        for listener in expected["listeners"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let name = listener["name"].as_str().unwrap_or_default().to_string();
            let mut last = None;
            let matched = tokio::time::timeout(DEADLINE, async {
                loop {
                    let running = self.active_listener(&name).await.map(|(_, l)| l);
                    if running.as_ref() == Some(&listener) {
                        return;
                    }
                    last = running;
                    tokio::time::sleep(POLL).await;
                }
            })
            .await;
            assert!(
                matched.is_ok(),
                "Envoy does not run listener {name} as rendered after {DEADLINE:?}.\n\
                 rendered: {listener:#}\nrunning: {last:#?}"
            );
        }
    }
}

/// `render_yaml`'s listeners and clusters, each with the `@type` Envoy's dump adds.
pub fn rendered(limits: &DataplaneLimits) -> serde_json::Value {
    let yaml = meshlimit_xds::render_yaml(limits);
    let mut doc: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("rendered YAML parses");
    let mut resources = doc["static_resources"].take();
    for (field, type_url) in [
        ("listeners", meshlimit_xds::resources::LISTENER_TYPE),
        ("clusters", meshlimit_xds::resources::CLUSTER_TYPE),
    ] {
        if let Some(items) = resources[field].as_array_mut() {
            for item in items {
                item["@type"] = serde_json::Value::from(type_url);
            }
        }
    }
    resources
}

fn find_dynamic<T>(
    dump: &serde_json::Value,
    field: &str,
    name: &str,
    pick: impl Fn(&serde_json::Value) -> Option<T>,
) -> Option<T> {
    dump.get("configs")?.as_array()?.iter().find_map(|config| {
        config.get(field)?.as_array()?.iter().find_map(|item| {
            let named = item
                .pointer("/active_state/listener/name")
                .or_else(|| item.pointer("/cluster/name"))?;
            if named == name { pick(item) } else { None }
        })
    })
}

/// An HTTP/1.1 answer.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names, in order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// `GET path` on a fresh connection with `Connection: close`. The body is read by its length
/// (not to EOF: after a local reply Envoy waits up to a second for the client to close first).
pub async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "connection closed before the headers: {:?}",
                String::from_utf8_lossy(&raw)
            )));
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let (status, headers) = parse_response_head(&head)?;
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = raw.split_off(head_end + 4);
    let chunked = value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = value("content-length").and_then(|v| v.parse::<usize>().ok());
    loop {
        let complete = match (chunked, length) {
            (true, _) => body.ends_with(b"0\r\n\r\n"),
            (false, Some(length)) => body.len() >= length,
            (false, None) => false,
        };
        if complete {
            break;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&body).to_string();
    let body = if chunked { dechunk(&body) } else { body };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// Sends `count` requests one after another; returns their statuses.
pub async fn statuses(port: u16, count: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        statuses.push(http_get(address, "/").await.expect("request").status);
    }
    statuses
}

/// A backend answering every request `200 backend`, counting them.
pub async fn http_backend() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let port = listener.local_addr().expect("backend address").port();
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nbackend",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (port, served)
}

/// A TCP backend echoing what it reads, counting connections.
pub async fn echo_backend() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let port = listener.local_addr().expect("backend address").port();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    (port, accepted)
}

pub fn rate(num: u32, interval: Duration) -> Rate {
    Rate::new(num, interval).expect("valid rate")
}

pub fn header(name: &str, value: &str) -> HeaderValue {
    HeaderValue::new(name, value).expect("valid header")
}

pub fn http_limit(
    num: u32,
    status: u16,
    set: Vec<HeaderValue>,
    add: Vec<HeaderValue>,
) -> HttpLimit {
    HttpLimit {
        policy: "limit".into(),
        request_rate: rate(num, Duration::from_secs(3600)),
        status: meshlimit_policy::RejectStatus::new(status).expect("an HTTP status"),
        headers: RejectHeaders { set, add },
    }
}

pub fn tcp_limit(num: u32) -> TcpLimit {
    TcpLimit {
        connection_rate: rate(num, Duration::from_secs(3600)),
    }
}

pub fn inbound(port: u16, service_port: u16, protocol: Protocol) -> InboundLimits {
    InboundLimits {
        port,
        service_port,
        service: "web".into(),
        protocol,
        http: None,
        tcp: None,
        policies: vec!["test".into()],
        global: None,
        sources: Vec::new(),
    }
}

pub fn dataplane(name: &str, inbounds: Vec<InboundLimits>) -> DataplaneLimits {
    DataplaneLimits {
        dataplane: name.into(),
        mesh: "default".into(),
        address: "127.0.0.1".into(),
        inbounds,
        kernel: vec![],
    }
}
