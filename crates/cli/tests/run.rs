//! `meshlimit run` as a real process on a temporary resource directory: it enforces the
//! seed's policy on a real backend, serves its admin endpoint, applies edits live, ignores an
//! invalid edit, and stops cleanly on SIGTERM.
//!
//! Ports: the Dataplane inbounds need fixed numbers in YAML, so the test picks free ones by
//! binding port 0 and releasing it; the admin endpoint binds port 0 and the test reads the
//! address from the log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A backend answering every request with 200 and `hello`, on its own thread.
fn backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    // Read one request head.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n"
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

fn dataplane_yaml(name: &str, port: u16, service_port: u16) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {port}\n      servicePort: {service_port}\n      tags:\n        kuma.io/service: {name}\n        app: {name}\n        kuma.io/protocol: http\n"
    )
}

/// The seed's `backend-rate-limit`, with a status and an interval of our choosing (an hour, so
/// that no token comes back while the test runs).
fn policy_yaml(status: u16) -> String {
    format!(
        r#"type: MeshRateLimit
mesh: default
name: backend-rate-limit
spec:
  targetRef:
    kind: MeshSubset
    proxyTypes: ["Sidecar"]
    tags:
      app: backend
  from:
    - targetRef:
        kind: Mesh
      default:
        local:
          http:
            requestRate:
              num: 5
              interval: 1h
            onRateLimit:
              status: {status}
              headers:
                set:
                  - name: "x-kuma-rate-limited"
                    value: "true"
"#
    )
}

struct Meshlimit {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Meshlimit {
    fn start(dir: &Path) -> Meshlimit {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshlimit"))
            .args(["run", "--resources"])
            .arg(dir)
            .args([
                "--admin",
                "127.0.0.1:0",
                "--worker-threads",
                "1",
                "--watch-interval",
                "100ms",
            ])
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
        Meshlimit { child, log }
    }

    fn logged(&self, needle: &str) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    fn admin(&self) -> SocketAddr {
        let mut line = None;
        eventually("the admin endpoint to be announced", || {
            line = self.logged("admin listening");
            line.is_some()
        });
        let line = line.unwrap();
        let address = line
            .split("address=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        address.parse().unwrap()
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

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("meshlimit-run-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn run_enforces_reloads_and_stops_cleanly() {
    let dir = temp_dir();
    let service_port = backend();
    let port = free_port();
    std::fs::write(
        dir.join("backend.yaml"),
        dataplane_yaml("backend", port, service_port),
    )
    .unwrap();
    std::fs::write(dir.join("policy.yaml"), policy_yaml(423)).unwrap();

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
        r#"meshlimit_http_requests_total{{mesh="default",dataplane="backend",inbound="{port}",decision="allowed"}} 5"#
    );
    let limited = format!(
        r#"meshlimit_http_requests_total{{mesh="default",dataplane="backend",inbound="{port}",decision="limited"}} 2"#
    );
    assert!(
        metrics.contains(&allowed) && metrics.contains(&limited),
        "{metrics}"
    );
    let config = get(admin, "/config").unwrap().body;
    assert!(
        config.contains("\"dataplane\": \"backend\"") && config.contains("backend-rate-limit"),
        "{config}"
    );

    // A live edit: same rate (the empty bucket stays empty), new status.
    std::fs::write(dir.join("policy.yaml"), policy_yaml(429)).unwrap();
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
        meshlimit.logged("do not validate").is_some()
    });
    assert_eq!(get(inbound, "/").unwrap().status, 429);
    assert!(
        meshlimit.log_text().contains("policy.yaml"),
        "the report names the file:\n{}",
        meshlimit.log_text()
    );
    std::fs::write(dir.join("policy.yaml"), policy_yaml(429)).unwrap();

    // A new Dataplane gets a listener; its backend is not selected by the policy.
    let other_port = free_port();
    std::fs::write(
        dir.join("other.yaml"),
        dataplane_yaml("other", other_port, service_port),
    )
    .unwrap();
    let other: SocketAddr = ([127, 0, 0, 1], other_port).into();
    eventually("the new Dataplane to listen", || {
        get(other, "/").is_ok_and(|r| r.status == 200)
    });
    for _ in 0..10 {
        assert_eq!(get(other, "/").unwrap().status, 200);
    }

    // SIGTERM: a clean exit.
    let pid = meshlimit.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut exit = None;
    eventually("meshlimit to exit", || {
        exit = meshlimit.child.try_wait().unwrap();
        exit.is_some()
    });
    assert!(exit.unwrap().success(), "{}", meshlimit.log_text());
    assert!(TcpStream::connect(inbound).is_err(), "stopped listening");
    let _ = std::fs::remove_dir_all(&dir);
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
        .args(["run", "--resources"])
        .arg(&dir)
        .args(["--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
