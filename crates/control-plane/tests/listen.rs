//! The API listener against clients that hold connections: past the cap new connections are
//! closed at once and counted, and the API answers again as soon as the flood ends; a client
//! that sends no request head (or half of one, or nothing after a request) is closed after the
//! request-headers timeout, while a watch stream that lasts longer is not cut. Real sockets;
//! every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use meshlimit_control_plane::listen::{ServeOptions, serve_with};
use meshlimit_control_plane::{ApiConfig, ControlPlane, Metrics, api};

/// Serves the API with `options` from a thread of its own; returns `host:port`.
fn serve(options: ServeOptions, heartbeat: Duration) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cp = ControlPlane::open(&dir.path().join("store.redb")).expect("the store opens");
    let config = ApiConfig {
        serve_ops: true,
        heartbeat,
        metrics: options.metrics.clone().unwrap_or_default(),
        ..ApiConfig::default()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("bound").to_string();
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
            let _ = serve_with(listener, api::router(cp, config), options).await;
        });
    });
    (addr, dir)
}

/// The status of `GET path` on a fresh connection; `None` when the connection is closed
/// without an answer.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Whether the server closes `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream
        .set_read_timeout(Some(within))
        .expect("a read timeout");
    let mut buf = [0_u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer (e.g. 408) before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false, // timed out: still open
        }
    }
}

fn refused_total(addr: &str) -> f64 {
    let (status, body) = get(addr, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix("meshlimit_api_connections_refused_total "))
        .and_then(|v| v.parse().ok())
        .expect("the refused counter")
}

#[test]
fn past_the_cap_connections_are_refused_and_counted_and_the_api_answers_after() {
    let options = ServeOptions {
        max_connections: 8,
        request_headers_timeout: Some(Duration::from_secs(60)),
        metrics: Some(Metrics::new()),
    };
    let (addr, _dir) = serve(options, Duration::from_secs(5));
    assert_eq!(get(&addr, "/").map(|a| a.0), Some(200));
    assert_eq!(refused_total(&addr), 0.0);

    // Eight silent connections hold every slot once the server has accepted them.
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(&addr).expect("accepted"));
    }
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(TcpStream::connect(&addr).expect("the kernel accepts"));
    }
    // Every connection past the cap is closed at once (none of them sent anything).
    let mut closed = 0;
    for stream in &mut flood {
        if closed_within(stream, Duration::from_secs(5)) {
            closed += 1;
        }
    }
    assert!(closed >= 32, "only {closed} of 40 refused");
    assert_eq!(
        get(&addr, "/"),
        None,
        "a fresh request while the cap is held"
    );

    drop(flood);
    drop(held);
    // The slots come back as the server sees the held connections close.
    let mut answered = None;
    for _ in 0..500 {
        answered = get(&addr, "/");
        if answered.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        answered.map(|a| a.0),
        Some(200),
        "the API answers after the flood"
    );
    let refused = refused_total(&addr);
    assert!(refused >= 33.0, "{refused} refused connections counted");
}

#[test]
fn silent_and_slow_clients_are_closed_after_the_request_headers_timeout() {
    let options = ServeOptions {
        max_connections: 64,
        request_headers_timeout: Some(Duration::from_millis(300)),
        metrics: None,
    };
    let (addr, _dir) = serve(options, Duration::from_millis(50));

    let mut silent = TcpStream::connect(&addr).expect("accepted");
    assert!(closed_within(&mut silent, Duration::from_secs(5)), "silent");

    let mut slow = TcpStream::connect(&addr).expect("accepted");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: cp\r\n")
        .expect("half a head");
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)),
        "half a head"
    );

    // After a whole request and its answer, a keep-alive connection left silent is closed too.
    let mut idle = TcpStream::connect(&addr).expect("accepted");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: cp\r\n\r\n")
        .expect("a request");
    let mut reader = BufReader::new(idle.try_clone().expect("a clone"));
    let mut status = String::new();
    reader.read_line(&mut status).expect("an answer");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut rest = Vec::new();
    reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    // Reads the answer's remainder, then the close.
    let ended = reader.read_to_end(&mut rest).is_ok();
    assert!(ended, "the idle connection is closed");

    // A watch stream is one long request: it outlives the timeout many times over.
    let mut watch = TcpStream::connect(&addr).expect("accepted");
    watch
        .write_all(b"GET /kernel-limits?watch=true HTTP/1.1\r\nHost: cp\r\n\r\n")
        .expect("a watch");
    watch
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut reader = BufReader::new(watch);
    let mut heartbeats = 0;
    let mut line = String::new();
    // 30 heartbeats 50 ms apart: 1.5 s, five times the timeout.
    while heartbeats < 30 {
        line.clear();
        let n = reader.read_line(&mut line).expect("the stream stays open");
        assert!(n > 0, "the stream was closed after {heartbeats} heartbeats");
        if line.contains("\"heartbeat\"") {
            heartbeats += 1;
        }
    }
}
