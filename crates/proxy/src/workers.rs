//! Where connections are served: on the runtime that spawned the proxy, or on worker threads
//! of the proxy's own, each a single-threaded runtime serving the connections handed to it
//! from start to end. The accept loops stay on the spawning runtime and hand the connections
//! they admit to the workers in turn (as actix-server does): every worker gets as many, and
//! the inbound's port stays one socket, which no other process can share.
//!
//! Why not one multi-threaded runtime: its scheduler moves tasks between threads, and HTTP/2,
//! whose streams are tasks of their own, then wakes across threads on every request (a
//! futex call and cold caches each time). A worker keeps a connection, its streams and its
//! connections to the application on one thread; only the buckets and counters are shared.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use hyper::body::Incoming;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::upstream::{ExchangeError, Lease, UpstreamBody, UpstreamPool};

thread_local! {
    /// The worker this thread is (0 on every thread not started by [`Workers`]).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The worker threads connections are served on; none: the spawning runtime serves them.
/// Dropping it stops the threads (and every connection still on them).
pub(crate) struct Workers {
    handles: Vec<Handle>,
    /// The worker the next connection goes to.
    next: AtomicUsize,
    stop: CancellationToken,
    /// Each thread, and what closes once it has dropped its runtime and every task on it.
    gone: Mutex<Vec<Leaving>>,
}

impl Workers {
    /// `threads` worker threads; 0: none.
    pub(crate) fn start(threads: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(threads);
        let mut gone = Vec::with_capacity(threads);
        for index in 0..threads {
            match start_one(index, &stop) {
                Ok((handle, left)) => {
                    handles.push(handle);
                    gone.push(left);
                }
                Err(error) => {
                    // The threads started so far end.
                    stop.cancel();
                    return Err(error);
                }
            }
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            stop,
            gone: Mutex::new(gone),
        })
    }

    /// The worker to serve the next connection, in turn; `None` without workers.
    pub(crate) fn next(&self) -> Option<&Handle> {
        if self.handles.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        self.handles.get(turn % self.handles.len())
    }

    /// One pool of application connections per worker (one without workers).
    pub(crate) fn pools(&self) -> Pools {
        Pools(
            (0..self.handles.len().max(1))
                .map(|_| UpstreamPool::default())
                .collect(),
        )
    }

    /// Stops the worker threads: the connections still on them are dropped. Returns once
    /// every thread has ended.
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        let gone = std::mem::take(&mut *self.gone.lock().unwrap_or_else(PoisonError::into_inner));
        for (thread, left) in gone {
            // Closed without a value: the thread is past its runtime, so joining it now waits
            // for its last step only.
            let _ = left.await;
            let _ = thread.join();
        }
    }
}

/// A worker thread on its way out.
type Leaving = (std::thread::JoinHandle<()>, oneshot::Receiver<()>);

/// One worker thread, with its runtime built on it (a runtime dropped where the caller's is
/// running would panic): its handle, and the thread.
fn start_one(index: usize, stop: &CancellationToken) -> io::Result<(Handle, Leaving)> {
    let stopped = stop.clone();
    let (leaving, left) = oneshot::channel::<()>();
    let (built, handle) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(format!("meshlimit-wrk-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = built.send(Err(error));
                    return;
                }
            };
            let _ = built.send(Ok(runtime.handle().clone()));
            WORKER.set(index);
            runtime.block_on(stopped.cancelled());
            drop(runtime);
            drop(leaving);
        })?;
    // Waits for the thread's first step only: building a runtime takes microseconds.
    let handle = handle
        .recv()
        .map_err(|_| io::Error::other("a worker thread ended as it started"))??;
    Ok((handle, (thread, left)))
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An inbound's idle connections to its application, one pool per worker: a connection is
/// registered with the runtime of the thread that opened it, and only requests on that thread
/// take it.
#[derive(Debug)]
pub(crate) struct Pools(Box<[UpstreamPool]>);

impl Pools {
    /// The pool of the worker this thread is.
    pub(crate) fn here(&self) -> &UpstreamPool {
        // Never empty: one pool per worker, or the one.
        &self.0[WORKER.get() % self.0.len()]
    }

    /// See [`UpstreamPool::send`], on this worker's pool.
    pub(crate) fn send(
        &self,
        addr: std::net::SocketAddr,
        request: http::Request<UpstreamBody>,
    ) -> impl Future<Output = Result<(http::Response<Incoming>, Lease), ExchangeError>> + '_ {
        self.here().send(addr, request)
    }

    /// See [`UpstreamPool::give_back`], to this worker's pool.
    pub(crate) fn give_back(&self, lease: Lease) {
        self.here().give_back(lease);
    }

    /// See [`UpstreamPool::sweep`], on every worker's pool.
    pub(crate) fn sweep(&self) {
        for pool in &self.0 {
            pool.sweep();
        }
    }
}
