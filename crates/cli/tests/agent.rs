//! `meshlimit agent` as a process, as root: it attaches to a cgroup made for the test, a
//! client in that cgroup and in a network namespace of its own connects, and the test edits the
//! resource directory while the agent runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

const PORT: u16 = 7001;

const DATAPLANE: &str = "type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
    - port: 7001
      servicePort: 7002
      tags:
        kuma.io/service: web
";

const RATE_LIMIT: &str = "apiVersion: kmesh.net/v1alpha1
kind: RateLimit
metadata:
  name: web-connections
spec:
  service: web
  rules:
    - maxTokens: 2
      tokensPerFill: 1
      fillInterval: 3600000000000
";

/// A network namespace, a cgroup v2 directory and a resource directory, removed on drop.
struct Fixture {
    netns: String,
    cgroup: PathBuf,
    resources: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let id = format!("mla-{tag}-{}", std::process::id());
        assert!(
            Command::new("ip")
                .args(["netns", "add", &id])
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new("ip")
                .args(["-n", &id, "link", "set", "lo", "up"])
                .status()
                .unwrap()
                .success()
        );
        let cgroup = cgroup2_root().join(&id);
        std::fs::create_dir(&cgroup).unwrap();
        let resources = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&resources).unwrap();
        std::fs::write(resources.join("dataplane.yaml"), DATAPLANE).unwrap();
        std::fs::write(resources.join("ratelimit.yaml"), RATE_LIMIT).unwrap();
        Fixture {
            netns: id,
            cgroup,
            resources,
        }
    }

    /// Connects `n` times to 127.0.0.1:PORT from a shell inside the cgroup and the namespace.
    /// Nothing listens there, so a connect the limiter lets through is refused by the peer
    /// ("C") and one it stops fails with EPERM ("E").
    fn connect(&self, n: usize) -> String {
        let script = format!(
            "echo $BASHPID > {procs}
             for i in $(seq {n}); do
               if err=$( {{ exec 3<>/dev/tcp/127.0.0.1/{PORT}; }} 2>&1 ); then echo X; continue; fi
               case $err in *'not permitted'*) echo E;; *'refused'*) echo C;; *) echo \"X $err\";; esac
             done",
            procs = self.cgroup.join("cgroup.procs").display()
        );
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["bash", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .collect()
    }

    fn agent(&self) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshlimit"))
            .args([
                "agent",
                "--admin",
                "127.0.0.1:0",
                "--poll-ms",
                "50",
                "--resources",
            ])
            .arg(&self.resources)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Agent {
            child,
            lines,
            admin: None,
        };
        let line = agent.wait_for("admin on http://");
        let addr = line.rsplit("http://").next().unwrap().parse().unwrap();
        agent.admin = Some(addr);
        agent
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.resources);
    }
}

struct Agent {
    child: Child,
    lines: Receiver<String>,
    admin: Option<SocketAddr>,
}

impl Agent {
    /// The next stderr line containing `text` (every line the agent writes is an event).
    fn wait_for(&mut self, text: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("the agent never said {text:?}; it said {seen:#?}")
                }
            }
        }
    }

    fn get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(self.admin.unwrap()).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response.split_once("\r\n\r\n").unwrap().1.to_owned()
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        self.wait_for("detached");
        self.child.wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .expect("cgroup2 mounted");
    PathBuf::from(line.split_whitespace().nth(1).unwrap())
}

#[test]
fn the_agent_enforces_reports_follows_edits_and_detaches() {
    let fixture = Fixture::new("main");
    let mut agent = fixture.agent();
    agent.wait_for("enforcing limits on 1 destination(s)");

    assert_eq!(fixture.connect(3), "CCE");

    let metrics = agent.get("/metrics");
    let labels = format!("service=\"web\",address=\"127.0.0.1\",port=\"{PORT}\"");
    for line in [
        format!("meshlimit_kernel_connections_total{{{labels},decision=\"allowed\"}} 2"),
        format!("meshlimit_kernel_connections_total{{{labels},decision=\"limited\"}} 1"),
        format!("meshlimit_kernel_tokens{{{labels}}} 0"),
        "meshlimit_kernel_untracked_total 0".to_owned(),
        "meshlimit_kernel_errors_total 0".to_owned(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    let stats: serde_json::Value = serde_json::from_str(&agent.get("/stats")).unwrap();
    let row = &stats[0];
    assert_eq!(
        (
            &row["service"],
            &row["port"],
            &row["total"],
            &row["limited"],
            &row["tokensAvailable"]
        ),
        (&"web".into(), &PORT.into(), &3.into(), &1.into(), &0.into())
    );

    // An invalid edit is reported and ignored: the limit stays.
    let broken = fixture.resources.join("broken.yaml");
    std::fs::write(&broken, "apiVersion: kmesh.net/v1alpha1\nkind: RateLimit\nmetadata:\n  name: bad\nspec:\n  service: web\n  rules:\n    - maxTokens: 0\n").unwrap();
    let ignored = agent.wait_for("change ignored");
    let problem = agent.wait_for("broken.yaml");
    assert!(ignored.contains("previous limits kept"), "{ignored}");
    assert!(problem.contains("document 1"), "{problem}");
    assert_eq!(fixture.connect(1), "E");

    // Removing the RateLimit lifts the limit.
    std::fs::remove_file(&broken).unwrap();
    std::fs::remove_file(fixture.resources.join("ratelimit.yaml")).unwrap();
    agent.wait_for("enforcing limits on 0 destination(s)");
    assert_eq!(fixture.connect(3), "CCC");

    // Back again, with a fresh bucket.
    std::fs::write(fixture.resources.join("ratelimit.yaml"), RATE_LIMIT).unwrap();
    agent.wait_for("enforcing limits on 1 destination(s)");
    assert_eq!(fixture.connect(3), "CCE");

    // SIGTERM: a clean exit, and the programs are gone (the empty bucket no longer applies).
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(fixture.connect(2), "CC");
}

#[test]
fn the_agent_refuses_to_start_without_privileges() {
    let fixture = Fixture::new("nobody");
    let out = Command::new(env!("CARGO_BIN_EXE_meshlimit"))
        .args(["agent", "--admin", "127.0.0.1:0", "--resources"])
        .arg(&fixture.resources)
        .arg("--cgroup")
        .arg(&fixture.cgroup)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not enough privileges to load eBPF programs: run as root"),
        "{stderr}"
    );
}

#[test]
fn the_agent_refuses_invalid_resources_at_start() {
    let fixture = Fixture::new("invalid");
    std::fs::write(
        fixture.resources.join("ratelimit.yaml"),
        RATE_LIMIT.replace("fillInterval: 3600000000000", "fillInterval: 0"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshlimit"))
        .args(["agent", "--admin", "127.0.0.1:0", "--resources"])
        .arg(&fixture.resources)
        .arg("--cgroup")
        .arg(&fixture.cgroup)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid resources in") && stderr.contains("ratelimit.yaml"),
        "{stderr}"
    );
    assert!(Path::new(&fixture.cgroup).exists());
}
