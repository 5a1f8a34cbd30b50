//! A real `redis-server` for the tests and the bench: its own process on a free loopback
//! port, nothing persisted, killed when dropped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

/// The binary: `MESHLIMIT_REDIS_SERVER`, else `redis-server` from `PATH`.
pub fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MESHLIMIT_REDIS_SERVER") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server not found on PATH: run `scripts/setup redis` (or set \
                 MESHLIMIT_REDIS_SERVER); meshlimit's global-limit tests need a real Redis"
            )
        })
}

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A server on a free port. Redis cannot bind port 0 and report it, so the port comes
    /// from binding 0 and letting go; another process may take it meanwhile, hence the tries.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut last = String::new();
        for _ in 0..10 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            match Self::start_on(port, extra) {
                Ok(server) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start in 10 tries; the last said: {last}");
    }

    /// A server on `port` (e.g. again after [`RedisServer::kill`]), ready for commands.
    pub fn start_on(port: u16, extra: &[&str]) -> Result<RedisServer, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("redis.log")).map_err(|e| e.to_string())?;
        let port_arg = port.to_string();
        let child = Command::new(redis_server_binary())
            .args(["--port", &port_arg, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", redis_server_binary().display()))?;
        let mut server = RedisServer { child, port, dir };
        server.wait_ready()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server at once (SIGKILL: no goodbye to clients) and waits for it to exit.
    pub fn kill(mut self) {
        self.stop();
    }

    /// One command over a fresh connection, answered as RESP text (for checks of what the
    /// server holds, independent of the client under test).
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(request.as_bytes()).expect("send");
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        // Replies here are small: read until a complete one has arrived.
        loop {
            let n = stream.read(&mut buf).expect("read");
            reply.extend_from_slice(&buf[..n]);
            if n == 0 || complete(&reply) {
                break;
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        for _ in 0..1000 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("redis-server exited ({status}): {}", self.log()));
            }
            if let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) {
                let mut pong = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut pong).is_ok()
                    && &pong == b"+PONG\r\n"
                {
                    return Ok(());
                }
            }
            sleep(Duration::from_millis(10));
        }
        self.stop();
        Err(format!("redis-server not ready after 10 s: {}", self.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `reply` holds one whole RESP reply of the simple kinds these tests read.
fn complete(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    match text.chars().next() {
        Some('$') => text
            .split_once("\r\n")
            .and_then(|(len, rest)| len[1..].parse::<i64>().ok().map(|n| (n, rest)))
            .is_some_and(|(n, rest)| n < 0 || rest.len() >= n as usize + 2),
        Some('*') => text.ends_with("\r\n"),
        Some(_) => text.ends_with("\r\n"),
        None => false,
    }
}
