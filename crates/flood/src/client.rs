//! Raw HTTP over blocking sockets with read timeouts, so that no scenario can hang: what a
//! hostile client sends is written byte for byte, and answers are read as far as they go.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How a connection ended up.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status arrived.
    Status(u16),
    /// The proxy closed the connection without a response.
    Closed,
    /// Nothing within the wait.
    Silent,
    /// Connecting failed.
    Refused,
}

/// Sends `bytes` on a new connection and reads the first response's status, waiting at most
/// `wait`.
pub fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Outcome {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, wait) else {
        return Outcome::Refused;
    };
    let _ = stream.set_read_timeout(Some(wait));
    if stream.write_all(bytes).is_err() {
        return read_status(&mut stream);
    }
    read_status(&mut stream)
}

/// A plain `GET /` that closes, the request every scenario uses to see the proxy still works.
pub fn get(addr: SocketAddr, path: &str) -> Outcome {
    let request = format!("GET {path} HTTP/1.1\r\nHost: flood\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes(), Duration::from_secs(5))
}

/// The status of the response on `stream`, or how it ended.
pub fn read_status(stream: &mut TcpStream) -> Outcome {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) if head.is_empty() => return Outcome::Closed,
            Ok(0) => break,
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if head.windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            Err(e) if is_timeout(&e) => {
                return if head.is_empty() {
                    Outcome::Silent
                } else {
                    break_status(&head)
                };
            }
            Err(_) if head.is_empty() => return Outcome::Closed,
            Err(_) => break,
        }
    }
    break_status(&head)
}

fn break_status(head: &[u8]) -> Outcome {
    let line = String::from_utf8_lossy(head);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .map_or(Outcome::Closed, Outcome::Status)
}

/// Waits up to `wait` for the peer to close `stream` (EOF or reset) without sending a
/// response; true when it did.
pub fn closed_within(stream: &TcpStream, wait: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(wait));
    let mut buf = [0u8; 512];
    let mut reader = stream;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if is_timeout(&e) => return false,
            Err(_) => return true,
        }
    }
}

/// Whether the peer has already closed `stream` (without waiting).
pub fn closed_now(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut buf = [0u8; 1];
    let mut reader = stream;
    let closed = match reader.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !is_timeout(&e),
    };
    let _ = stream.set_nonblocking(false);
    closed
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The body of a plain GET on the admin listener (`/metrics`, `/ready`), with its status.
pub fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut text = Vec::new();
    stream.read_to_end(&mut text).ok()?;
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Some((
        status,
        if chunked {
            dechunk(body)?
        } else {
            body.to_string()
        },
    ))
}

/// The payload of a chunked body (sizes in hex, each chunk followed by CRLF, ended by 0).
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// The sum of every sample of `family` in Prometheus text whose labels contain `labels`.
pub fn metric(text: &str, family: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
