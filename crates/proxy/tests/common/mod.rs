//! Shared pieces of the proxy's integration tests: a real upstream application, a proxy
//! driven by a fake clock, and small HTTP clients over real sockets.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshlimit_bucket::FakeClock;
use meshlimit_policy::Versioned;
use meshlimit_policy::effective::{
    DataplaneLimits, HeaderValue, HttpLimit, InboundLimits, Protocol, Rate, RejectHeaders, TcpLimit,
};
use meshlimit_proxy::{Admin, Proxy, ProxyOptions, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// An HTTP/1.1 application on 127.0.0.1:0 that counts the requests reaching it and the
/// connections they came on. It answers `<method> <path> host=<host>`; `/hold` waits for
/// `release` before answering.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    pub release: Arc<Notify>,
    pub arrived: Arc<Notify>,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

pub async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let arrived = Arc::new(Notify::new());
    let connections = Arc::new(AtomicUsize::new(0));
    let (h, r, a, c) = (
        hits.clone(),
        release.clone(),
        arrived.clone(),
        connections.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let (hits, release, arrived) = (h.clone(), r.clone(), a.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (hits, release, arrived) = (hits.clone(), release.clone(), arrived.clone());
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let host = request
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap_or("?").to_owned())
                            .unwrap_or_default();
                        let hop = request.headers().contains_key("x-hop");
                        let line = format!(
                            "{} {} host={host} hop={hop}",
                            request.method(),
                            request.uri()
                        );
                        if request.uri().path() == "/hold" {
                            arrived.notify_one();
                            release.notified().await;
                        }
                        let _ = request.into_body().collect().await;
                        let mut response = Response::new(Full::new(Bytes::from(line)));
                        response
                            .headers_mut()
                            .insert("x-upstream", http::HeaderValue::from_static("1"));
                        response
                            .headers_mut()
                            .insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        connections,
        release,
        arrived,
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub fn http_limit(num: u32, interval: Duration, status: u16) -> HttpLimit {
    HttpLimit {
        policy: "limit".into(),
        request_rate: Rate::new(num, interval).expect("valid rate"),
        status: meshlimit_policy::RejectStatus::new(status).expect("an HTTP status"),
        headers: RejectHeaders {
            set: vec![HeaderValue::new("x-kuma-rate-limited", "true").expect("valid header")],
            add: vec![],
        },
    }
}

pub fn tcp_limit(num: u32, interval: Duration) -> TcpLimit {
    TcpLimit {
        connection_rate: Rate::new(num, interval).expect("valid rate"),
    }
}

/// One Dataplane on 127.0.0.1 with one inbound on port 0 (the system picks).
pub fn dataplane(
    name: &str,
    service_port: u16,
    protocol: Protocol,
    http: Option<HttpLimit>,
    tcp: Option<TcpLimit>,
) -> DataplaneLimits {
    DataplaneLimits {
        dataplane: name.into(),
        mesh: "default".into(),
        address: "127.0.0.1".into(),
        inbounds: vec![InboundLimits {
            port: 0,
            service_port,
            service: name.into(),
            protocol,
            http,
            tcp,
            policies: vec!["test-policy".into()],
            global: None,
            sources: Vec::new(),
        }],
        kernel: vec![],
    }
}

pub struct Harness {
    pub proxy: Proxy,
    pub limits: watch::Sender<Versioned<Vec<DataplaneLimits>>>,
    pub clock: FakeClock,
    pub status: watch::Receiver<Status>,
}

impl Harness {
    /// A proxy on a fake clock: buckets and, unless `options` has its own, the latency
    /// histograms.
    pub async fn start(config: Vec<DataplaneLimits>, mut options: ProxyOptions) -> Harness {
        let clock = FakeClock::new(1_000_000_000);
        if options.latency_clock.is_none() {
            options.latency_clock = Some(Arc::new(clock.clone()));
        }
        let (limits, receiver) = watch::channel(Versioned::new(1, config));
        let proxy =
            Proxy::spawn(options, Arc::new(clock.clone()), receiver).expect("starting the proxy");
        let mut status = proxy.status();
        status.wait_for(|s| s.generation >= 1).await.unwrap();
        Harness {
            proxy,
            limits,
            clock,
            status,
        }
    }

    /// One HTTP inbound of `dataplane`, in front of the application on `app_port`, with no limit.
    pub async fn unlimited_http(name: &str, app_port: u16, options: ProxyOptions) -> Harness {
        Harness::start(
            vec![dataplane(name, app_port, Protocol::Http, None, None)],
            options,
        )
        .await
    }

    /// Applies `config` and waits until the proxy has.
    pub async fn apply(&mut self, config: Vec<DataplaneLimits>) -> Status {
        let version = self.limits.borrow().version.unwrap_or(0) + 1;
        self.limits.send_replace(Versioned::new(version, config));
        self.status
            .wait_for(|s| s.version >= Some(version))
            .await
            .unwrap()
            .clone()
    }

    /// Where the inbound of `dataplane` listens.
    pub fn addr(&self, dataplane: &str) -> SocketAddr {
        self.status
            .borrow()
            .listeners
            .iter()
            .find(|l| l.key.dataplane == dataplane)
            .unwrap_or_else(|| panic!("no listener for {dataplane}"))
            .local_addr
    }
}

/// One HTTP/1.1 keep-alive connection.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        H1 { sender }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(
            Request::get(path)
                .header("host", "backend.test")
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Reply {
        self.try_send(request).await.unwrap()
    }

    pub async fn try_send(&mut self, request: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        Ok(Reply::read(response).await)
    }
}

/// An HTTP/2 connection (prior knowledge, as gRPC clients do).
pub async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn read(response: Response<Incoming>) -> Reply {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// GET over a fresh connection with no keep-alive, as a plain client would.
pub async fn get_once(addr: SocketAddr, path: &str) -> Reply {
    H1::connect(addr).await.get(path).await
}

/// Reads `/metrics` etc. from the admin endpoint.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Reply {
    H1::connect(addr).await.get(path).await
}

pub fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status.as_u16()).collect()
}

/// The proxy's `/metrics`, from an admin endpoint on 127.0.0.1:0 that lives as long as the
/// test's runtime.
pub async fn metrics(proxy: &Proxy) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Admin::for_proxy(proxy).serve(listener, std::future::pending()));
    admin_get(addr, "/metrics").await.body
}

/// An application on 127.0.0.1:0 that reads each request head, then answers with `reply`
/// (raw bytes, possibly nothing) and, when `close` is set, closes the connection; otherwise
/// it keeps reading until the proxy closes it. Each connection it sees closed by the proxy
/// is sent on the returned channel.
pub async fn raw_upstream(
    reply: &'static [u8],
    close: bool,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, closed_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = closed.send(());
                            return;
                        }
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(reply).await;
                if close {
                    return;
                }
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = closed.send(());
            });
        }
    });
    (addr, closed_rx)
}
