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
//!
//! A connection's I/O is driven by the request that holds it (as Envoy's event loop writes
//! and reads the upstream socket in the request's own callbacks), not by a task of its own:
//! the exchange polls it until the response head, the relayed body until the end. A request
//! then wakes one task, not three, and takes no extra trips through the scheduler's queue,
//! where a proxy sharing a core with its application spends its tail latency. An idle
//! connection is polled by nobody but the pool's sweep, every few seconds, which closes those
//! the application closed meanwhile (so that they hold no descriptor); one closed since is
//! found closed when a request next looks at it, or fails unwritten and the request is
//! retried on a new one.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::Limited;
use http_body_util::combinators::MapErr;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use meshlimit_bucket::{Clock, MonotonicClock};
use tokio::net::TcpStream;

use crate::error::ClientBodyError;

/// What the application receives as a request body: the client's, its read errors marked as
/// the client's, cut at the size limit.
pub(crate) type UpstreamBody = Limited<MapErr<Incoming, fn(hyper::Error) -> ClientBodyError>>;

/// One connection's I/O, polled by the request that holds it.
type Io = Connection<TokioIo<TcpStream>, UpstreamBody>;

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
    /// When it was given back, on the coarse clock: an idle time of a minute needs no finer.
    since_ns: u64,
    lease: Lease,
}

/// A connection taken from the pool, or opened, for one exchange.
#[derive(Debug)]
pub(crate) struct Lease {
    addr: SocketAddr,
    sender: SendRequest<UpstreamBody>,
    /// Boxed once per connection, so that a lease (in every relayed response) stays small.
    io: Box<Io>,
    /// The connection's I/O has ended (closed, or failed).
    ended: bool,
    reused: bool,
}

impl Lease {
    /// Drives the connection: writes what is to be written, reads what has arrived.
    /// `Ready` once the connection has ended.
    pub(crate) fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ended {
            return Poll::Ready(());
        }
        match Pin::new(&mut *self.io).poll(cx) {
            Poll::Ready(result) => {
                if let Err(error) = result {
                    tracing::debug!(%error, "upstream connection ended with an error");
                }
                self.ended = true;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Polls the connection once with nobody to wake: it takes note of what happened meanwhile
    /// (a response ended, so it is ready for the next request; the application closed it).
    fn refresh(&mut self) {
        let _ = self.poll_io(&mut Context::from_waker(Waker::noop()));
    }

    fn usable(&self) -> bool {
        !self.ended && !self.sender.is_closed()
    }
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
    /// The idle connections, locked; a panic elsewhere while it was held leaves a queue that
    /// is still whole.
    fn idle(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

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
            let mut exchange = std::pin::pin!(lease.sender.try_send_request(request));
            // The connection first: it writes the request, and reads the response head that
            // the exchange then finds.
            let sent = std::future::poll_fn(|cx| {
                let _ = lease.poll_io(cx);
                exchange.as_mut().poll(cx)
            })
            .await;
            match sent {
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
        let mut idle = self.idle();
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
            let Some(candidate) = idle.get_mut(at).map(|idle| &mut idle.lease) else {
                break;
            };
            if candidate.addr == addr && candidate.usable() && !candidate.sender.is_ready() {
                // Nobody polled it since it was given back: it may be ready, or closed, by now.
                candidate.refresh();
            }
            if candidate.addr != addr || !candidate.usable() {
                idle.remove(at);
            } else if candidate.sender.is_ready()
                && let Some(taken) = idle.remove(at)
            {
                let mut lease = taken.lease;
                lease.reused = true;
                return Some(lease);
            }
        }
        None
    }

    /// Looks at every idle connection once: those the application closed meanwhile, and those
    /// idle for too long, are closed now rather than when a request next takes from the pool
    /// (nobody polls an idle connection, so a close would otherwise hold its descriptor).
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle();
        let now_ns = MonotonicClock.now_ns();
        idle.retain_mut(|idle| {
            idle.lease.refresh();
            idle.lease.usable() && now_ns.saturating_sub(idle.since_ns) <= IDLE_FOR_NS
        });
    }

    /// Gives a connection back after its response body was read to the end.
    pub(crate) fn give_back(&self, mut lease: Lease) {
        // Past the response's end, so that the next request finds it ready.
        lease.refresh();
        if !lease.usable() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle {
                since_ns: MonotonicClock.now_ns(),
                lease,
            });
        }
    }
}

/// A new connection to the application, its I/O driven by the request that holds it.
async fn connect(addr: SocketAddr) -> Result<Lease, ExchangeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ExchangeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, io) = http1::Builder::new()
        // One buffer, as for the client's side (see `HttpContext`).
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ExchangeError::Http)?;
    Ok(Lease {
        addr,
        sender,
        io: Box::new(io),
        ended: false,
        reused: false,
    })
}
