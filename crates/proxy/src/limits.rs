//! How many connections the proxy holds: a cap for the process and one per inbound, taken as a
//! permit at accept and given back when the connection ends; and the file-descriptor limit the
//! process-wide cap is derived from.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Descriptors kept out of the inbounds' reach: the admin endpoint's connections, the store,
/// logs, the runtime's own, the shared bucket store's.
const RESERVED_FDS: u64 = 256;

/// A count of open connections with a ceiling.
#[derive(Debug)]
pub(crate) struct Cap {
    open: AtomicUsize,
    max: usize,
}

impl Cap {
    pub(crate) fn new(max: usize) -> Arc<Cap> {
        Arc::new(Cap {
            open: AtomicUsize::new(0),
            max,
        })
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// One more, unless the cap is reached.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(self)))
    }
}

/// One connection counted in a [`Cap`] until dropped.
#[derive(Debug)]
struct Slot(Arc<Cap>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Process,
    Inbound,
}

/// A connection counted in the process's cap and its inbound's, for as long as it lives.
#[derive(Debug)]
pub(crate) struct Permit {
    _process: Slot,
    _inbound: Slot,
}

/// Counts a new connection in both caps, or says which one is full (and counts it in none).
pub(crate) fn admit(process: &Arc<Cap>, inbound: &Arc<Cap>) -> Result<Permit, Refused> {
    let process = process.take().ok_or(Refused::Process)?;
    let inbound = inbound.take().ok_or(Refused::Inbound)?;
    Ok(Permit {
        _process: process,
        _inbound: inbound,
    })
}

/// The soft and hard limits on open file descriptors, after raising the soft one to the hard
/// one where the system allows it (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
    /// Whether the soft limit was raised.
    pub raised: bool,
}

/// Raises the soft limit on open file descriptors to the hard limit (a failure leaves it as
/// it was) and returns the limits in force. Call once at start, before serving.
pub fn raise_fd_limit() -> FdLimit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let wanted = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    let raised = before.current != before.maximum && setrlimit(Resource::Nofile, wanted).is_ok();
    let now = getrlimit(Resource::Nofile);
    FdLimit {
        soft: now.current,
        hard: now.maximum,
        raised,
    }
}

/// The process-wide cap for a soft descriptor limit: every proxied connection may hold two
/// descriptors (the client's and an upstream one), after a reserve for everything else.
pub fn default_max_connections(soft_fd_limit: Option<u64>) -> usize {
    let Some(soft) = soft_fd_limit else {
        return 1 << 20;
    };
    let usable = soft.saturating_sub(RESERVED_FDS).max(64) / 2;
    usize::try_from(usable).unwrap_or(usize::MAX)
}

/// The soft descriptor limit in force now.
pub(crate) fn soft_fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cap_refuses_and_a_dropped_permit_frees_its_slots() {
        let process = Cap::new(2);
        let inbound = Cap::new(1);
        let elsewhere = Cap::new(usize::MAX);
        let first = admit(&process, &inbound).expect("room");
        assert_eq!(admit(&process, &inbound).unwrap_err(), Refused::Inbound);
        // The refusal took no slot of the process's cap.
        assert_eq!(process.open(), 1);
        let other = admit(&process, &elsewhere).expect("room in the process");
        assert_eq!(admit(&process, &elsewhere).unwrap_err(), Refused::Process);
        drop(first);
        assert_eq!((process.open(), inbound.open()), (1, 0));
        assert!(admit(&process, &inbound).is_ok());
        drop(other);
    }

    #[test]
    fn the_default_cap_leaves_a_reserve_and_two_descriptors_per_connection() {
        assert_eq!(default_max_connections(Some(1024)), 384);
        assert_eq!(default_max_connections(Some(1_048_576)), 524_160);
        assert_eq!(default_max_connections(Some(100)), 32);
        assert_eq!(default_max_connections(None), 1 << 20);
    }
}
