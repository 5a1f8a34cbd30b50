//! Sockets for process tests: a minimal HTTP/1.1 backend and free ports.

#![allow(dead_code)] // Each test target uses a part.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A keep-alive backend answering every request with 200 and `body`, one thread a connection.
pub fn backend(body: &'static str) -> u16 {
    counting_backend(body).0
}

/// [`backend`], with the number of requests it has answered.
pub fn counting_backend(body: &'static str) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend");
    let port = listener.local_addr().expect("bound").port();
    let served = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&served);
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let response = response.clone();
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                let Ok(clone) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(clone);
                loop {
                    // Read one request head, then answer it.
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    if stream.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, served)
}

/// A port nothing listens on now (for a process told to listen there), below the ephemeral
/// range where parallel tests' outgoing connections would take it first (see
/// [`meshlimit_testkit::listener_port`]).
pub fn free_port() -> u16 {
    meshlimit_testkit::listener_port()
}
