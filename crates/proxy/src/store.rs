//! The interface to a store of buckets shared by every instance of a service, which enforces a
//! `MeshGlobalRateLimit` exactly across instances. The proxy knows only this trait; the binary
//! adapts a concrete store (Redis) to it.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use meshlimit_bucket::{Decision, Settings};

/// What [`SharedBuckets::check`] returns: a boxed future, so that the trait stays usable as
/// `dyn SharedBuckets` without an `async_trait` dependency.
pub type SharedCheck<'a> = Pin<Box<dyn Future<Output = Result<Decision, SharedError>> + Send + 'a>>;

/// Buckets kept outside the proxy and shared by every instance of a service.
///
/// The proxy bounds every check with the global limit's `timeout` and drops the future when
/// it expires, so an implementation needs no timeout of its own (one it has anyway is fine)
/// and must tolerate being cancelled at any await point.
pub trait SharedBuckets: Send + Sync + 'static {
    /// Takes one token from the bucket named `key` (`mgrl/<mesh>/<policy>/<service>`), whose
    /// configuration is `settings` (the total for every instance together).
    fn check<'a>(&'a self, key: &'a str, settings: Settings) -> SharedCheck<'a>;
}

/// Why a shared store gave no decision. The proxy counts it and applies the global limit's
/// failure mode; the cause is only logged.
#[derive(Debug)]
pub struct SharedError(Box<dyn Error + Send + Sync + 'static>);

impl SharedError {
    pub fn new(cause: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> SharedError {
        SharedError(cause.into())
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cause is the source, so that error chains name it once.
        f.write_str("the shared bucket store gave no decision")
    }
}

impl Error for SharedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.0.as_ref())
    }
}
