//! The system under attack: a `meshlimit run` with one Dataplane of three HTTP inbounds —
//! `ok` in front of a real application, `hung` in front of one that accepts and never answers,
//! `limited` with a MeshRateLimit of 5 requests per hour — and tight timeouts and caps so that
//! each fault shows within seconds.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::Report;
use crate::client::{self, Outcome};

/// Caps and timeouts the scenarios are written against.
pub const MAX_CONNECTIONS: usize = 1000;
pub const MAX_CONNECTIONS_PER_INBOUND: usize = 400;
/// Long enough for a debug build on a busy machine to accept the whole flood first.
pub const HEADERS_TIMEOUT: Duration = Duration::from_secs(5);
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_HEADER_BYTES: usize = 8192;
pub const MAX_BODY_BYTES: usize = 65536;
/// Requests the `limited` inbound admits per hour.
pub const LIMIT: usize = 5;

pub struct Target {
    child: Child,
    pub admin: SocketAddr,
    pub ok: SocketAddr,
    pub hung: SocketAddr,
    pub limited: SocketAddr,
    _dir: tempfile::TempDir,
    /// Connections the hung application holds, never answered.
    _held: Arc<Mutex<Vec<TcpStream>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Target {
    pub fn start(meshlimit: &Path) -> anyhow::Result<Target> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let app = runtime.block_on(application())?;
        let held = Arc::new(Mutex::new(Vec::new()));
        let hung_app = hung_application(Arc::clone(&held))?;

        let dir = tempfile::tempdir()?;
        let resources = dir.path().join("resources");
        std::fs::create_dir(&resources)?;
        let ports = [free_port()?, free_port()?, free_port()?];
        std::fs::write(
            resources.join("flood.yaml"),
            resources_yaml(ports, app.port(), hung_app.port()),
        )?;
        let address_file = dir.path().join("address");
        let log = std::fs::File::create(dir.path().join("meshlimit.log"))?;
        let child = Command::new(meshlimit)
            .arg("run")
            .arg("--resources")
            .arg(&resources)
            .arg("--store")
            .arg(dir.path().join("store.redb"))
            .arg("--address-file")
            .arg(&address_file)
            .args([
                "--admin",
                "127.0.0.1:0",
                "--no-kernel",
                "--worker-threads",
                "1",
            ])
            .args(["--max-connections", &MAX_CONNECTIONS.to_string()])
            .args([
                "--max-connections-per-inbound",
                &MAX_CONNECTIONS_PER_INBOUND.to_string(),
            ])
            .arg("--request-headers-timeout")
            .arg(format!("{}ms", HEADERS_TIMEOUT.as_millis()))
            .arg("--upstream-timeout")
            .arg(format!("{}ms", UPSTREAM_TIMEOUT.as_millis()))
            .args(["--max-request-header-bytes", &MAX_HEADER_BYTES.to_string()])
            .args(["--max-request-body-bytes", &MAX_BODY_BYTES.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", meshlimit.display()))?;
        let mut target = Target {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            ok: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            hung: SocketAddr::from(([127, 0, 0, 1], ports[1])),
            limited: SocketAddr::from(([127, 0, 0, 1], ports[2])),
            _dir: dir,
            _held: held,
            _runtime: runtime,
        };
        target.admin = target.wait_for_admin(&address_file)?;
        for _ in 0..200 {
            if client::get(target.ok, "/") == Outcome::Status(200) {
                return Ok(target);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("the ok inbound never answered 200: {}", target.log())
    }

    fn wait_for_admin(&mut self, address_file: &Path) -> anyhow::Result<SocketAddr> {
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("meshlimit run exited ({status}): {}", self.log());
            }
            let text = std::fs::read_to_string(address_file).unwrap_or_default();
            if let Some(addr) = text.trim().strip_prefix("http://") {
                return Ok(addr.parse()?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("meshlimit run wrote no address in 20 s: {}", self.log())
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `/metrics` as text (empty when it cannot be read).
    pub fn metrics(&self) -> String {
        client::admin_get(self.admin, "/metrics").map_or_else(String::new, |(_, body)| body)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("meshlimit.log")).unwrap_or_default()
    }

    /// SIGTERM, and a check that it drains and exits 0.
    pub fn stop(&mut self, report: &mut Report) {
        use rustix::process::{Pid, Signal, kill_process};
        let pid = Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = kill_process(pid, Signal::TERM);
        }
        let mut exit = None;
        for _ in 0..400 {
            exit = self.child.try_wait().ok().flatten();
            if exit.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        report.check(
            "shutdown",
            "SIGTERM after every scenario",
            "exits 0 within 20 s",
            exit.map_or("still running".to_string(), |s| s.to_string()),
            exit.is_some_and(|s| s.success()),
        );
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real HTTP/1.1 application: reads the whole body, answers 200 `ok`.
async fn application() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: hyper::Request<Incoming>| async move {
                    let _ = request.into_body().collect().await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// An application that accepts and then never reads nor answers.
fn hung_application(held: Arc<Mutex<Vec<TcpStream>>>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            if let Ok(mut held) = held.lock() {
                held.push(stream);
            }
        }
    });
    Ok(addr)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn resources_yaml(ports: [u16; 3], app: u16, hung: u16) -> String {
    let inbound = |port: u16, service_port: u16, service: &str| {
        format!(
            "    - port: {port}\n      servicePort: {service_port}\n      tags:\n        kuma.io/service: {service}\n        kuma.io/protocol: http\n"
        )
    };
    format!(
        "type: Dataplane\nmesh: default\nname: flood\nnetworking:\n  address: 127.0.0.1\n  inbound:\n{}{}{}---\n\
         type: MeshRateLimit\nmesh: default\nname: flood-limited\nspec:\n  targetRef:\n    kind: MeshSubset\n    proxyTypes: [Sidecar]\n    tags:\n      kuma.io/service: flood-limited\n  \
         rules:\n    - default:\n        local:\n          http:\n            requestRate:\n              num: {LIMIT}\n              interval: 1h\n",
        inbound(ports[0], app, "flood-ok"),
        inbound(ports[1], hung, "flood-hung"),
        inbound(ports[2], app, "flood-limited"),
    )
}
