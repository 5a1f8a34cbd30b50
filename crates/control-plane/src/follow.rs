//! Followers of the local store: the limits of every committed store version, as the data paths
//! in this process (`meshlimit run`'s proxies and kernel limiter, the xDS server) consume them —
//! the same `watch` of [`Versioned`] values a remote data plane gets from
//! `meshlimit_control_plane_client::follow`. A store version that leaves the limits as they were
//! moves only the version.

use std::sync::Arc;

use meshlimit_policy::Versioned;
use meshlimit_policy::effective::{DataplaneLimits, KernelLimit};
use tokio::sync::watch;

use crate::state::ControlPlane;
use crate::store_state::StoreState;

/// Every Dataplane's effective limits (what the proxies of `meshlimit run` and the xDS server
/// serve).
pub fn dataplanes(cp: &ControlPlane) -> watch::Receiver<Versioned<Vec<DataplaneLimits>>> {
    follow(cp, |s| s.effective.values().cloned().collect())
}

/// Every kernel limit (what a kernel limiter on this host enforces).
pub fn kernel(cp: &ControlPlane) -> watch::Receiver<Versioned<Vec<KernelLimit>>> {
    follow(cp, |s| s.kernel.clone())
}

/// Needs a Tokio runtime: a task maps each store state; it ends when every receiver is gone.
fn follow<T>(cp: &ControlPlane, select: fn(&StoreState) -> T) -> watch::Receiver<Versioned<T>>
where
    T: PartialEq + Send + Sync + 'static,
{
    let mut snapshots = cp.subscribe();
    let first: Arc<StoreState> = snapshots.borrow_and_update().clone();
    let (tx, rx) = watch::channel(Versioned::new(first.version, select(&first)));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
            let snapshot = snapshots.borrow_and_update().clone();
            let value = select(&snapshot);
            tx.send_if_modified(|current| {
                let changed = current.value != value || current.version != Some(snapshot.version);
                if current.value != value {
                    current.value = value;
                }
                current.version = Some(snapshot.version);
                changed
            });
        }
    });
    rx
}
