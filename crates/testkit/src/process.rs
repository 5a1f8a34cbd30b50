//! A `meshlimit` (or any) process under test: every line it writes, stdout and stderr alike,
//! arrives on one channel (a log line is found wherever the process writes it), the lines are
//! kept for the failure message, and the process is killed when dropped. And
//! [`listener_port`], a port for a process to listen on that parallel tests do not take.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime};

pub struct Process {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// Everything written so far, in arrival order, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    patience: Duration,
}

impl Process {
    /// Starts `command` with stdin closed and both outputs read to the end (so the process
    /// never writes into a closed pipe). `patience` bounds every wait.
    pub fn spawn(name: &str, mut command: Command, patience: Duration) -> Process {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        forward(stdout, tx.clone(), Arc::clone(&log));
        forward(stderr, tx, Arc::clone(&log));
        Process {
            name: name.to_string(),
            child,
            lines,
            seen: Vec::new(),
            log,
            patience,
        }
    }

    /// Waits for a line matching `want` (lines already seen count too); fails the test if the
    /// process exits or the patience runs out first.
    pub fn wait_line(&mut self, want: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| want(l)) {
            return line.clone();
        }
        let deadline = SystemTime::now() + self.patience;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // What it wrote last may still be in the pipe.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                panic!("{} exited ({status}); it wrote:\n{}", self.name, self.log());
            }
            let left = deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
                Err(e) => panic!(
                    "{}: no expected line ({e}); it wrote:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
    }

    /// The text after `prefix` on the first line holding it, up to `end` if given.
    pub fn wait_value(&mut self, prefix: &str, end: Option<char>) -> String {
        let line = self.wait_line(|l| l.contains(prefix));
        let rest = line
            .split(prefix)
            .nth(1)
            .expect("the line holds the prefix");
        let value = match end {
            Some(end) => rest.split(end).next().unwrap_or(rest),
            None => rest,
        };
        value.trim().to_string()
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} wrote ---\n{}", self.name, self.log());
        }
    }
}

fn forward(
    from: impl Read + Send + 'static,
    to: mpsc::Sender<String>,
    log: Arc<Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if let Ok(mut log) = log.lock() {
                log.push(line.clone());
            }
            let _ = to.send(line);
        }
    });
}

/// A port for a process to listen on, below the kernel's ephemeral range: ports picked by
/// binding port 0 come from that range, where parallel tests' outgoing connections and
/// backends take ports all the time, so a port released for another process to bind may be
/// gone by then. Spread by process id, each checked free by binding it once.
pub fn listener_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const LOWEST: u64 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST).max(1_000);
    let start = u64::from(std::process::id()) * 211 % span;
    for _ in 0..span {
        let port = LOWEST + (start + NEXT.fetch_add(7, Ordering::SeqCst)) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOWEST} and {}", LOWEST + span)
}
