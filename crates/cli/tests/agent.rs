//! `meshlimit agent` as a process, as root: it attaches to a cgroup made for the test, a
//! client in that cgroup and in a network namespace of its own connects, and the test edits the
//! resource directory while the agent runs, or applies to a `meshlimit control-plane` process
//! the agent follows (the latency from an acknowledged apply to the limit in the kernel is
//! measured and printed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

#[path = "support/sandbox.rs"]
mod sandbox;

use meshlimit_control_plane_client::client::Client;
use meshlimit_control_plane_client::wire::SourceFile;
use sandbox::Sandbox;

const PORT: u16 = 7001;
const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");

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

/// A [`Sandbox`], a resource directory and a pin directory of its own on bpffs, removed on
/// drop.
struct Fixture {
    sandbox: Sandbox,
    resources: PathBuf,
    pins: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let sandbox = Sandbox::new(&format!("mla-{tag}"));
        let resources = std::env::temp_dir().join(&sandbox.netns);
        std::fs::create_dir_all(&resources).unwrap();
        std::fs::write(resources.join("dataplane.yaml"), DATAPLANE).unwrap();
        std::fs::write(resources.join("ratelimit.yaml"), RATE_LIMIT).unwrap();
        let pins = Path::new("/sys/fs/bpf").join(format!("meshlimit-test-{}", sandbox.netns));
        Fixture {
            sandbox,
            resources,
            pins,
        }
    }

    /// `meshlimit agent --detach` for this fixture's cgroup and pins: `(exit code, stderr)`.
    fn detach(&self) -> (Option<i32>, String) {
        let out = Command::new(BIN)
            .args(["agent", "--detach", "--cgroup"])
            .arg(&self.sandbox.cgroup)
            .arg("--pin-dir")
            .arg(&self.pins)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The command of an agent following the resource directory.
    fn agent_command(&self) -> Command {
        let mut command = Command::new(BIN);
        command
            .args([
                "agent",
                "--admin",
                "127.0.0.1:0",
                "--poll-interval",
                "50ms",
                "--resources",
            ])
            .arg(&self.resources)
            .arg("--cgroup")
            .arg(&self.sandbox.cgroup)
            .arg("--pin-dir")
            .arg(&self.pins);
        command
    }

    /// What `n` connects to the limited destination met (see [`Sandbox::connect`]).
    fn connect(&self, n: usize) -> String {
        self.sandbox.connect(PORT, n)
    }

    fn agent(&self) -> Agent {
        Agent::spawn(self.agent_command())
    }

    /// An agent following the control plane at `url`, as `test-agent`.
    fn agent_following(&self, url: &str) -> Agent {
        let mut command = Command::new(BIN);
        command
            .args([
                "--cp",
                url,
                "agent",
                "--name",
                "test-agent",
                "--admin",
                "127.0.0.1:0",
                "--report-interval",
                "200ms",
                "--cgroup",
            ])
            .arg(&self.sandbox.cgroup)
            .arg("--pin-dir")
            .arg(&self.pins)
            .env_remove("MESHLIMIT_TOKEN");
        Agent::spawn(command)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.resources);
        // Lifts what a test left pinned (its agents are gone by now).
        let _ = self.detach();
    }
}

struct Agent {
    child: Child,
    lines: Receiver<String>,
    admin: Option<SocketAddr>,
    /// Every line before the admin address.
    startup: Vec<String>,
}

impl Agent {
    fn spawn(mut command: Command) -> Agent {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
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
            startup: Vec::new(),
        };
        let line = agent.wait_for("admin on http://");
        let addr = line.rsplit("http://").next().unwrap().parse().unwrap();
        agent.admin = Some(addr);
        agent
    }

    /// The line the agent said at start (before its admin address) containing `text`.
    fn said_at_start(&self, text: &str) -> &str {
        self.startup
            .iter()
            .find(|line| line.contains(text))
            .unwrap_or_else(|| panic!("the agent never said {text:?}; it said {:#?}", self.startup))
    }

    /// The next stderr line containing `text` (every line the agent writes is an event).
    fn wait_for(&mut self, text: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => {
                    if self.admin.is_none() {
                        self.startup.push(line.clone());
                    }
                    seen.push(line)
                }
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

    /// SIGTERM, then the exit status once the agent said it stopped (its pins stay).
    fn terminate(self) -> std::process::ExitStatus {
        self.terminate_saying("stopped; the limits stay enforced from the pins in")
    }

    /// SIGTERM, then the exit status once the agent said `last`.
    fn terminate_saying(mut self, last: &str) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.wait_for(last);
        self.child.wait().unwrap()
    }

    /// SIGKILL: the agent gets no chance to clean up.
    fn kill_9(mut self) {
        self.signal("-KILL");
        self.child.wait().unwrap();
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

    // SIGTERM: a clean exit; the pinned programs go on enforcing with the empty bucket...
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(fixture.connect(1), "E");
    // ...until --detach removes them.
    let (code, said) = fixture.detach();
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("detached: removed the pins in"), "{said}");
    assert_eq!(fixture.connect(2), "CC");
    assert!(!fixture.pins.exists());
}

#[test]
fn a_second_agent_on_the_same_cgroup_is_refused_naming_the_first() {
    let fixture = Fixture::new("twice");
    let mut first = fixture.agent();
    first.wait_for("enforcing limits on 1 destination(s)");

    let second = fixture.agent_command().output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    let expected = format!(
        "another meshlimit process (pid {}) enforces kernel limits on cgroup {}: only one may; \
         stop it first",
        first.child.id(),
        fixture.sandbox.cgroup.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    // So is --detach while the first runs; the first is untouched by both.
    let (code, said) = fixture.detach();
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&expected), "{said}");
    assert_eq!(fixture.connect(3), "CCE");
    let metrics = first.get("/metrics");
    let allowed = format!(
        "meshlimit_kernel_connections_total{{service=\"web\",address=\"127.0.0.1\",port=\"{PORT}\",decision=\"allowed\"}} 2"
    );
    assert!(metrics.lines().any(|l| l == allowed), "{metrics}");
    first.kill_9();
}

#[test]
fn enforcement_and_tokens_survive_kill_9_and_a_restart_adopts_them() {
    let fixture = Fixture::new("kill");
    let mut agent = fixture.agent();
    agent.said_at_start("programs and maps pinned in");
    agent.wait_for("enforcing limits on 1 destination(s)");
    assert_eq!(fixture.connect(1), "C"); // 1 token left of 2
    agent.kill_9();

    // No agent runs: still limited, from the same bucket.
    assert_eq!(fixture.connect(2), "CE");
    assert_eq!(fixture.connect(1), "E");

    // A new agent adopts the pins: the bucket is not refilled, the counters go on.
    let mut agent = fixture.agent();
    let adopted = agent.said_at_start("adopted the pins in").to_owned();
    assert!(
        adopted.contains("2 program link(s), 1 destination(s), 1 bucket(s) with their tokens"),
        "{adopted}"
    );
    agent.wait_for("enforcing limits on 1 destination(s)");
    assert_eq!(fixture.connect(2), "EE");
    let stats: serde_json::Value = serde_json::from_str(&agent.get("/stats")).unwrap();
    assert_eq!(
        (&stats[0]["allowed"], &stats[0]["limited"]),
        (&2.into(), &4.into())
    );

    // It applies its own limits to the adopted maps: a larger bucket keeps the 0 tokens.
    std::fs::write(
        fixture.resources.join("ratelimit.yaml"),
        RATE_LIMIT.replace("maxTokens: 2", "maxTokens: 5"),
    )
    .unwrap();
    agent.wait_for("enforcing limits on 1 destination(s)");
    assert_eq!(fixture.connect(1), "E");

    // Detach removes the enforcement (after the agent is gone).
    agent.kill_9();
    let (code, said) = fixture.detach();
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(fixture.connect(3), "CCC");
    let (code, said) = fixture.detach();
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("nothing was pinned in"), "{said}");
}

#[test]
fn the_agent_refuses_to_start_without_privileges() {
    let fixture = Fixture::new("nobody");
    let out = Command::new(BIN)
        .args(["agent", "--admin", "127.0.0.1:0", "--resources"])
        .arg(&fixture.resources)
        .arg("--cgroup")
        .arg(&fixture.sandbox.cgroup)
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
    let out = Command::new(BIN)
        .args(["agent", "--admin", "127.0.0.1:0", "--resources"])
        .arg(&fixture.resources)
        .arg("--cgroup")
        .arg(&fixture.sandbox.cgroup)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid resources in") && stderr.contains("ratelimit.yaml"),
        "{stderr}"
    );
    assert!(Path::new(&fixture.sandbox.cgroup).exists());
}

/// A `meshlimit control-plane` process on `api` with its store at `store`; killed (SIGKILL)
/// when dropped.
struct ControlPlane {
    child: Child,
    url: String,
}

impl ControlPlane {
    fn start(store: &Path, api: &str) -> ControlPlane {
        let child = Command::new(BIN)
            .args(["control-plane", "--api", api, "--store"])
            .arg(store)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Killed and reaped on drop, also when it never gets to listen.
        let mut cp = ControlPlane {
            child,
            url: String::new(),
        };
        let stdout = BufReader::new(cp.child.stdout.take().unwrap());
        let (tx, lines) = channel();
        // Keep reading after the address so the control plane never writes to a closed pipe.
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) {
            if let Some(url) = line.split("API listening on ").nth(1) {
                cp.url = url.trim().to_owned();
                return cp;
            }
            seen.push(line);
        }
        panic!("the control plane never listened; it said {seen:#?}");
    }

    fn client(&self) -> Client {
        Client::new(&self.url, None).unwrap()
    }

    fn apply(&self, name: &str, content: &str) {
        runtime()
            .block_on(self.client().apply(
                vec![SourceFile {
                    name: name.to_owned(),
                    content: content.to_owned(),
                }],
                false,
            ))
            .unwrap();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `meshlimit --cp URL <args>` to completion: `(exit code, stdout)`.
fn cli(url: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("--cp")
        .arg(url)
        .args(args)
        .env_remove("MESHLIMIT_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// How many destinations the agent's kernel limiter holds, per its admin `/stats`.
fn destinations(agent: &Agent) -> usize {
    let stats: serde_json::Value = serde_json::from_str(&agent.get("/stats")).unwrap();
    stats.as_array().map_or(0, Vec::len)
}

/// Polls until the agent holds `want` destinations; returns how long that took.
#[allow(clippy::disallowed_methods)] // measures wall-clock latency across real processes
fn until_destinations(agent: &Agent, want: usize, since: std::time::Instant) -> Duration {
    loop {
        if destinations(agent) == want {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "the agent never held {want} destination(s)"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
#[allow(clippy::disallowed_methods)] // measures wall-clock latency across real processes
fn the_agent_follows_the_control_plane_and_keeps_its_limits_while_it_is_down() {
    let fixture = Fixture::new("cp");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.redb");
    let mut cp = ControlPlane::start(&store, "127.0.0.1:0");
    cp.apply("dataplane.yaml", DATAPLANE);
    let mut agent = fixture.agent_following(&cp.url);
    agent.wait_for("limits on 0 destination(s)");
    assert_eq!(fixture.connect(3), "CCC");

    // Apply and delete the RateLimit a few times: each change reaches the kernel of the
    // separate agent process promptly.
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let start = std::time::Instant::now();
        cp.apply("ratelimit.yaml", RATE_LIMIT);
        latencies.push(until_destinations(&agent, 1, start));
        let (code, out) = cli(&cp.url, &["delete", "rl", "web-connections"]);
        assert_eq!(code, Some(0), "{out}");
        until_destinations(&agent, 0, std::time::Instant::now());
    }
    latencies.sort();
    eprintln!(
        "apply -> limit in the kernel of a separate agent process: min {:?}, median {:?}, max {:?} ({} applies)",
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies.len()
    );
    // Pushed, not picked up on a reconnect or a heartbeat (5 s apart).
    assert!(latencies[latencies.len() - 1] < Duration::from_secs(2));

    // Enforced: maxTokens connections pass, the next gets EPERM.
    cp.apply("ratelimit.yaml", RATE_LIMIT);
    agent.wait_for("limits on 1 destination(s)");
    assert_eq!(fixture.connect(3), "CCE");

    // The agent's reports reach the control plane: stats and diagnose see it.
    let rt = runtime();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = rt.block_on(cp.client().status()).unwrap();
        let reported = status.agents.iter().any(|a| {
            a.name == "test-agent"
                && a.connected
                && a.attached
                && a.acknowledged_version == Some(status.version)
                && a.destinations
                    .iter()
                    .any(|d| d.port == PORT && d.stats.allowed == 2 && d.stats.limited == 1)
        });
        if reported {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, stats) = cli(&cp.url, &["get", "ratelimit-stats"]);
    assert_eq!(code, Some(0), "{stats}");
    let row = stats
        .lines()
        .find(|l| l.starts_with("test-agent"))
        .unwrap_or_else(|| panic!("no row for the agent in\n{stats}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..7],
        [
            "test-agent",
            "web",
            &format!("127.0.0.1:{PORT}"),
            "3",
            "2",
            "1",
            "0"
        ],
        "{stats}"
    );
    let (_, diagnosed) = cli(&cp.url, &["diagnose", "rate-limit"]);
    assert!(
        diagnosed.contains("[ok]      kernel agent(s) attached: test-agent"),
        "{diagnosed}"
    );

    // The control plane goes away: the agent keeps enforcing its last limits.
    let port = cp.url.rsplit(':').next().unwrap().to_owned();
    cp.kill();
    agent.wait_for("control plane unreachable");
    assert_eq!(fixture.connect(1), "E");
    assert!(agent.child.try_wait().unwrap().is_none());

    // Back on the same address and store: the agent reconnects and catches up.
    let cp = ControlPlane::start(&store, &format!("127.0.0.1:{port}"));
    let (code, out) = cli(&cp.url, &["delete", "rl", "web-connections"]);
    assert_eq!(code, Some(0), "{out}");
    agent.wait_for("limits on 0 destination(s)");
    assert_eq!(fixture.connect(3), "CCC");

    let status = agent.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn the_agent_takes_its_limits_from_exactly_one_source() {
    let both = Command::new(BIN)
        .args(["--cp", "http://127.0.0.1:1", "agent", "--resources", "."])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(stderr.contains("mutually exclusive"), "{stderr}");

    let neither = Command::new(BIN)
        .arg("agent")
        .env_remove("MESHLIMIT_CP")
        .output()
        .unwrap();
    assert_eq!(neither.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&neither.stderr);
    assert!(
        stderr.contains("--resources DIR") && stderr.contains("--cp URL"),
        "{stderr}"
    );
}

#[test]
fn the_agent_takes_durations_and_the_kernel_buckets_flag_run_uses() {
    // Go-style durations, positive, with a unit.
    for (flag, value, said) in [
        ("--poll-interval", "0s", "must be longer than 0"),
        ("--report-interval", "0.2", "has no unit"),
    ] {
        let out = Command::new(BIN)
            .args(["agent", "--resources", ".", flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{flag} {value}: {stderr}");
    }
    let help = Command::new(BIN)
        .args(["agent", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--kernel-buckets <N>") && help.contains("--poll-interval <DURATION>"),
        "{help}"
    );
    assert!(
        !help.contains("--buckets") && !help.contains("--poll-ms"),
        "{help}"
    );

    // --kernel-buckets sizes the bucket map; the old --buckets and --poll-ms still work.
    let fixture = Fixture::new("flags");
    let mut command = fixture.agent_command();
    command.args(["--kernel-buckets", "16"]);
    let mut agent = Agent::spawn(command);
    agent.wait_for("enforcing limits on 1 destination(s)");
    agent.kill_9();
    let mut command = Command::new(BIN);
    command
        .args(["agent", "--admin", "127.0.0.1:0", "--buckets", "32"])
        .args(["--poll-ms", "50", "--resources"])
        .arg(&fixture.resources)
        .arg("--cgroup")
        .arg(&fixture.sandbox.cgroup)
        .arg("--pin-dir")
        .arg(&fixture.pins);
    let mut agent = Agent::spawn(command);
    let adopted = agent.said_at_start("adopted the pins in").to_owned();
    assert!(
        adopted.contains("keeps its capacity of 16 (--kernel-buckets 32 applies after --detach)"),
        "{adopted}"
    );
    agent.wait_for("enforcing limits on 1 destination(s)");
    // --poll-ms 50 still follows edits.
    std::fs::remove_file(fixture.resources.join("ratelimit.yaml")).unwrap();
    agent.wait_for("enforcing limits on 0 destination(s)");
    agent.kill_9();
}

#[test]
fn with_no_pin_the_programs_live_as_long_as_the_agent() {
    let fixture = Fixture::new("nopin");
    let mut command = Command::new(BIN);
    command
        .args(["agent", "--admin", "127.0.0.1:0", "--no-pin", "--resources"])
        .arg(&fixture.resources)
        .arg("--cgroup")
        .arg(&fixture.sandbox.cgroup);
    let mut agent = Agent::spawn(command);
    agent.wait_for("enforcing limits on 1 destination(s)");
    assert!(
        agent.startup.iter().all(|l| !l.contains("pinned")),
        "{:?}",
        agent.startup
    );
    assert_eq!(fixture.connect(3), "CCE");
    let status = agent.terminate_saying("detached");
    assert!(status.success(), "{status}");
    assert_eq!(fixture.connect(2), "CC");
    let default_pins = Path::new("/sys/fs/bpf/meshlimit").join(format!(
        "cgroup-{}",
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&fixture.sandbox.cgroup).unwrap())
    ));
    assert!(!default_pins.exists());
}
