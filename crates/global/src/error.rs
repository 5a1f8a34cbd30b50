//! The crate's errors.

use std::time::Duration;

/// Why a connection could not be set up or a check got no answer. Every failed check comes
/// back as one of these; [`crate::GlobalBuckets::fallback`] turns it into a decision.
#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    #[error("invalid Redis URL {url:?}: {source}")]
    InvalidUrl { url: String, source: RedisFailure },
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect { url: String, source: RedisFailure },
    #[error("Redis at {url} did not accept a connection within {timeout:?}")]
    ConnectTimeout { url: String, timeout: Duration },
    #[error("invalid option: {0}")]
    InvalidOptions(String),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[source] RedisFailure),
    #[error("unexpected reply from the bucket script: {0}")]
    Reply(String),
}

/// An error of the Redis client, kept opaque so that callers do not depend on it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RedisFailure(pub(crate) redis::RedisError);

impl From<redis::RedisError> for GlobalError {
    fn from(e: redis::RedisError) -> Self {
        GlobalError::Redis(RedisFailure(e))
    }
}
