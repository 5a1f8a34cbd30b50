//! The agent's admin endpoint: `GET /metrics` (Prometheus text) and `GET /stats` (JSON rows).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tiny_http::{Header, Method, Response, Server};

use crate::limiter::KernelLimiter;
use crate::stats::render_prometheus;

pub struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl AdminServer {
    pub fn start(
        addr: SocketAddr,
        limiter: Arc<Mutex<KernelLimiter>>,
    ) -> Result<AdminServer, String> {
        let server = Server::http(addr).map_err(|err| err.to_string())?;
        let addr = server.server_addr().to_ip().ok_or("not an IP listener")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("meshlimit-admin".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(100)) {
                        let response = respond(request.method(), request.url(), &limiter);
                        // The client may have gone away: nothing to do about it.
                        let _ = request.respond(response);
                    }
                }
            })
            .map_err(|err| err.to_string())?;
        Ok(AdminServer { addr, stop, thread })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn respond(
    method: &Method,
    url: &str,
    limiter: &Mutex<KernelLimiter>,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let path = url.split('?').next().unwrap_or(url);
    if *method != Method::Get {
        return text(405, "only GET is served here\n".into());
    }
    let limiter = limiter
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match path {
        "/metrics" => match limiter
            .stats()
            .and_then(|stats| Ok((stats, limiter.counters()?)))
        {
            Ok((stats, counters)) => text(200, render_prometheus(&stats, &counters)).with_header(
                header("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
            ),
            Err(err) => text(500, format!("{err}\n")),
        },
        "/stats" => match limiter
            .stats()
            .map(|stats| serde_json::to_string_pretty(&stats))
        {
            Ok(Ok(json)) => {
                text(200, json + "\n").with_header(header("Content-Type", "application/json"))
            }
            Ok(Err(err)) => text(500, format!("{err}\n")),
            Err(err) => text(500, format!("{err}\n")),
        },
        _ => text(404, "not found: try /metrics or /stats\n".into()),
    }
}

fn text(status: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body).with_status_code(status)
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}
