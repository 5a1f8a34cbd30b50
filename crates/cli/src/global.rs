//! Global limits shared in Redis: the proxy's [`SharedBuckets`] seam filled with
//! `meshlimit-global`'s buckets, for `meshlimit run --redis URL` and `meshlimit dataplane
//! --redis URL`. The proxy applies each policy's timeout and failure mode itself; this only
//! takes tokens.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use meshlimit_global::{GlobalBuckets, GlobalOptions, GlobalSettings};
use meshlimit_proxy::{SharedBuckets, SharedCheck, SharedError};

/// Redis's own timeout is a backstop: a policy's `timeout` (25 ms by default) is what the
/// proxy waits for, so Redis is allowed a little more.
const BACKSTOP: Duration = Duration::from_millis(250);

struct RedisBuckets(GlobalBuckets);

impl SharedBuckets for RedisBuckets {
    fn check<'a>(&'a self, key: &'a str, settings: meshlimit_bucket::Settings) -> SharedCheck<'a> {
        Box::pin(async move {
            let settings = GlobalSettings::new(settings).map_err(SharedError::new)?;
            self.0.check(key, settings).await.map_err(SharedError::new)
        })
    }
}

/// The shared buckets at `url` (`redis://host:port`). Connects on the first check, so a data
/// plane starts (and applies its failure modes) while Redis is away.
pub fn redis(url: &str) -> anyhow::Result<Arc<dyn SharedBuckets>> {
    let options = GlobalOptions {
        timeout: BACKSTOP,
        ..GlobalOptions::default()
    };
    let buckets =
        GlobalBuckets::connect_lazy(url, options).with_context(|| format!("--redis {url}"))?;
    Ok(Arc::new(RedisBuckets(buckets)))
}
