//! One limiter per cgroup: an exclusive `flock` on the cgroup's own directory, held for the
//! limiter's lifetime. Two limiters on one cgroup would share (or replace) each other's
//! programs and report each other's counters; the second is refused instead, naming the first.
//!
//! The cgroup directory is the lock because it is the one thing every limiter of that cgroup
//! opens, whatever its pin directory, also from another container (the hierarchy is mounted
//! from the host, read-only is enough for `flock`). The kernel drops the lock when its holder
//! dies, so a crash never leaves a stale lock behind.
// flock(2): the kernel boundary.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::KernelError;

/// Takes the lock on `cgroup`, whose directory `dir` is open; fails at once if another
/// process holds it.
pub(crate) fn acquire(cgroup: &Path, dir: &File) -> Result<(), KernelError> {
    // SAFETY: flock on a descriptor we own; it changes nothing but the lock.
    let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(KernelError::Cgroup {
            path: cgroup.to_owned(),
            source: error,
        });
    }
    let holder = dir.metadata().ok().and_then(|meta| {
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        flock_holder(&locks, meta.dev(), meta.ino())
    });
    Err(KernelError::CgroupBusy {
        cgroup: cgroup.to_owned(),
        holder,
    })
}

/// The pid holding a `FLOCK` on the inode `(dev, ino)`, from the text of `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:26:728 0 EOF`; device numbers in hex).
fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    locks
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Waiters are listed as `1: -> FLOCK ...`: only the holder line has FLOCK second.
            if fields.get(1) != Some(&"FLOCK") {
                return None;
            }
            let pid: u32 = fields.get(4)?.parse().ok()?;
            let mut id = fields.get(5)?.split(':');
            let found = (
                u32::from_str_radix(id.next()?, 16).ok()?,
                u32::from_str_radix(id.next()?, 16).ok()?,
                id.next()?.parse::<u64>().ok()?,
            );
            (found == (major, minor, ino)).then_some(pid)
        })
        // A holder outside our pid namespace is listed as pid 0: unknown, not pid 0.
        .filter(|pid| *pid != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_found_by_device_and_inode() {
        let locks = "1: FLOCK  ADVISORY  WRITE 31267 00:26:728 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 999 00:26:728 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 555 fe:00:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 4242 fe:00:77 0 EOF\n";
        assert_eq!(
            flock_holder(locks, libc::makedev(0, 0x26), 728),
            Some(31267)
        );
        assert_eq!(flock_holder(locks, libc::makedev(0xfe, 0), 77), Some(4242));
        assert_eq!(flock_holder(locks, libc::makedev(0xfe, 0), 78), None);
        assert_eq!(flock_holder("garbage\n\n", 1, 1), None);
        let elsewhere = "1: FLOCK  ADVISORY  WRITE 0 00:26:728 0 EOF\n";
        assert_eq!(flock_holder(elsewhere, libc::makedev(0, 0x26), 728), None);
    }
}
