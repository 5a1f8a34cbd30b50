//! The scenarios, each a few seconds long, each leaving the target as it found it.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::Report;
use crate::client::{self, Outcome, closed_now, closed_within, exchange, metric};
use crate::target::{self, Target};

pub fn all(target: &mut Target, scale: usize, report: &mut Report) {
    connection_flood(target, scale, report);
    slow_clients(target, scale, report);
    http2_after_preface(target, scale, report);
    hung_application(target, scale, report);
    bad_requests(target, scale, report);
    limit_still_exact(target, report);
    let alive = target.alive();
    let ready = client::admin_get(target.admin, "/ready").map(|(status, _)| status);
    report.check(
        "after all",
        "the process and its admin endpoint",
        "running, /ready 200",
        format!("running: {alive}, /ready: {ready:?}"),
        alive && ready == Some(200),
    );
}

/// Idle connections past the per-inbound cap: the proxy never holds more than the cap, the
/// extra ones are closed at once and counted, the admin endpoint and other inbounds keep
/// working, and the held ones are closed by the request-headers timeout. Every connection is
/// accounted for: refused by the cap or timed out, each counted.
fn connection_flood(target: &Target, scale: usize, report: &mut Report) {
    let cap = target::MAX_CONNECTIONS_PER_INBOUND;
    let attempts = 1500 * scale;
    let counted = |name: &str, labels: &str| metric(&target.metrics(), name, labels);
    let refused_before = counted("meshlimit_connections_refused_total", "");
    let timeouts_before = counted(
        "meshlimit_connection_timeouts_total",
        "timeout=\"request_headers\"",
    );
    let mut peak = 0;
    let held: Vec<TcpStream> = (0..attempts)
        .filter_map(|i| {
            // The proxy's own gauge, sampled while the flood builds up.
            if i % 250 == 0 {
                peak = peak.max(counted("meshlimit_connections_open", ""));
            }
            TcpStream::connect(target.ok).ok()
        })
        .collect();
    let connected = held.len();
    // A refused connection is closed before anything is read; an accepted one stays silent
    // until the request-headers timeout. Give the proxy a moment to accept the last ones.
    std::thread::sleep(target::HEADERS_TIMEOUT / 5);
    peak = peak.max(counted("meshlimit_connections_open", ""));
    let closed_early = held.iter().filter(|s| closed_now(s)).count();
    let open = connected - closed_early;
    report.check(
        "connection flood",
        format!("{attempts} idle connections to one inbound (cap {cap})"),
        format!("at most {cap} open at once (client's view and the proxy's gauge)"),
        format!("{open} open, {closed_early} closed at once, gauge peak {peak}"),
        open <= cap && open > 0 && peak <= cap as u64,
    );
    let ready = client::admin_get(target.admin, "/ready").map(|(s, _)| s);
    // The limited inbound's first token is spent here; `limit_still_exact` counts it.
    let other = client::get(target.limited, "/");
    report.check(
        "connection flood",
        "/ready and a request to another inbound during the flood",
        "200 and 200",
        format!("/ready {ready:?}, other inbound {other:?}"),
        ready == Some(200) && other == Outcome::Status(200),
    );
    // The held ones: closed by the request-headers timeout, none ever answered.
    let closed = held
        .iter()
        .filter(|s| closed_within(s, target::HEADERS_TIMEOUT * 2))
        .count();
    report.check(
        "connection flood",
        "the open idle connections, left silent",
        format!(
            "all closed by the {} s request-headers timeout",
            target::HEADERS_TIMEOUT.as_secs()
        ),
        format!("{closed} of {connected} closed"),
        closed == connected,
    );
    let refused = counted("meshlimit_connections_refused_total", "") - refused_before;
    let timed_out = counted(
        "meshlimit_connection_timeouts_total",
        "timeout=\"request_headers\"",
    ) - timeouts_before;
    report.check(
        "connection flood",
        "meshlimit_connections_refused_total + request-headers timeouts",
        format!("account for all {connected}, the cap refusing some"),
        format!("{refused} refused + {timed_out} timed out"),
        refused > 0 && refused + timed_out == connected as u64,
    );
    drop(held);
    let after = client::get(target.ok, "/");
    report.check(
        "connection flood",
        "a request once the flood is gone",
        "200",
        format!("{after:?}"),
        after == Outcome::Status(200),
    );
}

/// Slowloris: request heads trickled a byte at a time are cut by the request-headers timeout,
/// while other clients are served.
fn slow_clients(target: &Target, scale: usize, report: &mut Report) {
    let count = 200 * scale;
    let mut slow: Vec<TcpStream> = (0..count)
        .filter_map(|_| TcpStream::connect(target.ok).ok())
        .collect();
    let head = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Trickle: ";
    let mut cut = vec![false; slow.len()];
    // One byte per connection every 100 ms, for up to twice the timeout.
    let steps = 2 * target::HEADERS_TIMEOUT.as_millis() / 100;
    for step in 0..steps as usize {
        let byte = head.get(step).copied().unwrap_or(b'a');
        for (stream, cut) in slow.iter_mut().zip(cut.iter_mut()) {
            if !*cut && stream.write_all(&[byte]).is_err() {
                *cut = true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed = slow
        .iter()
        .zip(&cut)
        .filter(|(s, cut)| **cut || closed_within(s, Duration::from_millis(500)))
        .count();
    let during = client::get(target.ok, "/");
    report.check(
        "slow clients",
        format!(
            "{count} request heads trickled a byte per 100 ms for {} s",
            steps / 10
        ),
        format!(
            "all cut by the {} s request-headers timeout; others served",
            target::HEADERS_TIMEOUT.as_secs()
        ),
        format!(
            "{closed} of {} closed, a normal request: {during:?}",
            slow.len()
        ),
        closed == slow.len() && during == Outcome::Status(200),
    );
}

/// HTTP/2 connections that send the preface and SETTINGS, then nothing: closed by the
/// request-headers timeout like HTTP/1.1 ones.
fn http2_after_preface(target: &Target, scale: usize, report: &mut Report) {
    let count = 100 * scale;
    // The client preface and an empty SETTINGS frame (length 0, type 4, flags 0, stream 0).
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let streams: Vec<TcpStream> = (0..count)
        .filter_map(|_| {
            let mut s = TcpStream::connect(target.ok).ok()?;
            s.write_all(&preface).ok()?;
            Some(s)
        })
        .collect();
    let closed = streams
        .iter()
        .filter(|s| closed_within(s, target::HEADERS_TIMEOUT * 2))
        .count();
    report.check(
        "HTTP/2 idle after preface",
        format!("{count} connections: preface and SETTINGS, then silence"),
        "all closed by the request-headers timeout",
        format!("{closed} of {} closed", streams.len()),
        closed == streams.len() && closed > 0,
    );
}

/// An application that accepts and never answers: every request gets 504 after the upstream
/// timeout, counted, and the proxy keeps serving the other inbounds meanwhile.
fn hung_application(target: &Target, scale: usize, report: &mut Report) {
    let count = 50 * scale;
    let before = metric(&target.metrics(), "meshlimit_upstream_timeouts_total", "");
    let hung = target.hung;
    let waiting: Vec<_> = (0..count)
        .map(|_| std::thread::spawn(move || client::get(hung, "/")))
        .collect();
    let during = client::get(target.ok, "/");
    let outcomes: Vec<Outcome> = waiting.into_iter().filter_map(|t| t.join().ok()).collect();
    let gateway_timeouts = outcomes
        .iter()
        .filter(|o| **o == Outcome::Status(504))
        .count();
    let counted = metric(&target.metrics(), "meshlimit_upstream_timeouts_total", "") - before;
    report.check(
        "hung application",
        format!("{count} concurrent requests to an application that never answers"),
        "all 504 after the 1 s upstream timeout, counted; other inbounds served",
        format!("{gateway_timeouts} × 504, {counted} counted, other inbound: {during:?}"),
        gateway_timeouts == count && counted == count as u64 && during == Outcome::Status(200),
    );
}

/// Malformed and oversized requests: each gets its 4xx (never 5xx, never reaching the
/// application), and the connection does not desynchronise.
fn bad_requests(target: &Target, scale: usize, report: &mut Report) {
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(target::MAX_HEADER_BYTES * 2)
    );
    let big_body = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        target::MAX_BODY_BYTES * 2,
        "b".repeat(target::MAX_BODY_BYTES * 2)
    );
    let cases: [(&str, Vec<u8>, u16); 5] = [
        (
            "malformed chunked body",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        ("garbage request line", b"\x01\x02 nonsense\r\n\r\n".to_vec(), 400),
        ("request head over the limit", big_header.into_bytes(), 431),
        ("body over the limit", big_body.into_bytes(), 413),
        (
            "two Content-Length values",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
    ];
    for (name, bytes, want) in cases {
        let rounds = 20 * scale;
        let seen: Vec<Outcome> = (0..rounds)
            .map(|_| exchange(target.ok, &bytes, Duration::from_secs(5)))
            .collect();
        let right = seen.iter().filter(|o| **o == Outcome::Status(want)).count();
        let other = seen.iter().find(|o| **o != Outcome::Status(want));
        report.check(
            "bad requests",
            format!("{name} × {rounds}"),
            want.to_string(),
            match other {
                None => format!("{right} × {want}"),
                Some(o) => format!("{right} × {want}, also {o:?}"),
            },
            right == rounds,
        );
    }
    // Smuggling: with both Content-Length and Transfer-Encoding, chunked wins and the
    // connection closes after the answer (RFC 9112 §6.1), so a request hidden in what
    // Content-Length would have counted as body is never served.
    let smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let answers = statuses_until_close(target.ok, smuggle);
    report.check(
        "bad requests",
        "Content-Length and Transfer-Encoding both, a second request after the chunked end",
        "one answer, then the connection closed",
        answers.clone(),
        answers == "200 (closed)",
    );
    // After all that, keep-alive still frames correctly: two requests on one connection.
    report.check(
        "bad requests",
        "two pipelined requests on one connection afterwards",
        "two 200s",
        pipelined(target.ok),
        pipelined(target.ok) == "200 200",
    );
}

/// Every response status on one connection after writing `bytes`, and whether it closed.
fn statuses_until_close(addr: SocketAddr, bytes: &[u8]) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return "refused".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(bytes).is_err() {
        return "write failed".into();
    }
    let mut text = Vec::new();
    let closed = std::io::Read::read_to_end(&mut stream, &mut text).is_ok();
    let text = String::from_utf8_lossy(&text);
    let mut seen: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12))
        .collect();
    seen.push(if closed { "(closed)" } else { "(still open)" });
    seen.join(" ")
}

fn pipelined(addr: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return "refused".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let two =
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    if stream.write_all(two).is_err() {
        return "write failed".into();
    }
    let mut text = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut text);
    let text = String::from_utf8_lossy(&text);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12))
        .collect::<Vec<_>>()
        .join(" ")
}

/// After every fault, the limit is still exact: of 5 per hour, one was spent during the
/// connection flood, so 4 of 20 pass and the rest get 429.
fn limit_still_exact(target: &Target, report: &mut Report) {
    let left = target::LIMIT - 1;
    let outcomes: Vec<Outcome> = (0..20).map(|_| client::get(target.limited, "/")).collect();
    let passed = outcomes
        .iter()
        .filter(|o| **o == Outcome::Status(200))
        .count();
    let limited = outcomes
        .iter()
        .filter(|o| **o == Outcome::Status(429))
        .count();
    report.check(
        "limit after the faults",
        format!(
            "20 more requests to the inbound limited to {} per hour (1 spent)",
            target::LIMIT
        ),
        format!("{left} × 200, {} × 429", 20 - left),
        format!("{passed} × 200, {limited} × 429"),
        passed == left && limited == 20 - left,
    );
}
