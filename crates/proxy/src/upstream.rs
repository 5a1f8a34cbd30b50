//! Connections to the application: HTTP/1.1, kept open and reused, in one small pool per
//! inbound. A request takes an idle connection that is ready (the most recently used first,
//! whose socket is warm), or opens one; its response body, once relayed to its end, gives the
//! connection back. A request that could not be written on a reused connection (the
//! application closed it meanwhile) is sent once more on a new one, as hyper's pooled client
//! does.
//!
//! Why not hyper-util's pooled client: on every request it clones its configuration and the
//! pool key several times, locks a shared pool map and, for HTTP/1.1, spawns a task that waits
//! for the connection to be ready again; here a request costs one uncontended lock to take a
//! connection and one to give it back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::Limited;
use http_body_util::combinators::MapErr;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use meshlimit_bucket::{Clock, MonotonicClock};
use tokio::net::TcpStream;

use crate::error::ClientBodyError;

/// What the application receives as a request body: the client's, its read errors marked as
/// the client's, cut at the size limit.
pub(crate) type UpstreamBody = Limited<MapErr<Incoming, fn(hyper::Error) -> ClientBodyError>>;

/// Idle connections kept per inbound; more than that are closed when given back.
const MAX_IDLE: usize = 1024;

/// How long an idle connection is kept, as the pooled client this replaces was configured: one
/// unused for longer is closed when a request next takes from the pool (until then, or until
/// the application closes it, it stays open).
const IDLE_FOR: Duration = Duration::from_secs(60);
const IDLE_FOR_NS: u64 = IDLE_FOR.as_nanos() as u64;

/// The idle connections to one inbound's application.
#[derive(Debug, Default)]
pub(crate) struct UpstreamPool {
    idle: Mutex<VecDeque<Idle>>,
}

#[derive(Debug)]
struct Idle {
    addr: SocketAddr,
    /// When it was given back, on the coarse clock: an idle time of a minute needs no finer.
    since_ns: u64,
    sender: SendRequest<UpstreamBody>,
}

/// A connection taken from the pool, or opened, for one exchange.
#[derive(Debug)]
pub(crate) struct Lease {
    addr: SocketAddr,
    sender: SendRequest<UpstreamBody>,
    reused: bool,
}

/// Why an exchange with the application failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("connecting to the application")]
    Connect(#[source] std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl UpstreamPool {
    /// Sends `request` to the application at `addr`; the response head and the connection,
    /// to give back with [`UpstreamPool::give_back`] once the response body has been read.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        mut request: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), ExchangeError> {
        loop {
            let mut lease = match self.take(addr) {
                Some(lease) => lease,
                None => connect(addr).await?,
            };
            match lease.sender.try_send_request(request).await {
                Ok(response) => return Ok((response, lease)),
                Err(mut error) => match error.take_message() {
                    // Not written: the application closed the idle connection meanwhile.
                    Some(unsent) if lease.reused => request = unsent,
                    _ => return Err(ExchangeError::Http(error.into_error())),
                },
            }
        }
    }

    /// An idle connection to `addr` ready for a request, the most recently used first. Closed,
    /// stale and foreign ones go; one not ready yet (still sending the previous request's
    /// body, or not yet past the previous response) stays for later.
    fn take(&self, addr: SocketAddr) -> Option<Lease> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now_ns = MonotonicClock.now_ns();
        while idle
            .front()
            .is_some_and(|oldest| now_ns.saturating_sub(oldest.since_ns) > IDLE_FOR_NS)
        {
            idle.pop_front();
        }
        let mut at = idle.len();
        while at > 0 {
            at -= 1;
            let candidate = &idle[at];
            if candidate.addr != addr || candidate.sender.is_closed() {
                idle.remove(at);
            } else if candidate.sender.is_ready() {
                let taken = idle.remove(at).expect("an index within the queue");
                return Some(Lease {
                    addr,
                    sender: taken.sender,
                    reused: true,
                });
            }
        }
        None
    }

    /// Gives a connection back after its response body was read to the end.
    pub(crate) fn give_back(&self, lease: Lease) {
        if lease.sender.is_closed() {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle {
                addr: lease.addr,
                since_ns: MonotonicClock.now_ns(),
                sender: lease.sender,
            });
        }
    }
}

/// A new connection to the application, its I/O driven by a task of its own.
async fn connect(addr: SocketAddr) -> Result<Lease, ExchangeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ExchangeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ExchangeError::Http)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    Ok(Lease {
        addr,
        sender,
        reused: false,
    })
}
