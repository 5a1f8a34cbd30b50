//! Facts about the running system the limiter depends on: privileges, where cgroup v2 is
//! mounted, BTF, and the monotonic clock the BPF program reads.
// Two libc calls (geteuid, clock_gettime) and one statfs: the kernel boundary.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::KernelError;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on pure v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), read from `/proc/mounts`.
pub fn cgroup2_root() -> Result<PathBuf, KernelError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|_| KernelError::NoCgroupV2)?;
    cgroup2_root_in(&mounts).ok_or(KernelError::NoCgroupV2)
}

fn cgroup2_root_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// `/proc/mounts` writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Is `path` a directory of a cgroup v2 hierarchy?
pub(crate) fn check_cgroup2(path: &Path) -> Result<(), KernelError> {
    let not_v2 = || KernelError::NotCgroupV2 {
        path: path.to_owned(),
    };
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| not_v2())?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(KernelError::Cgroup {
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 on some targets, u32 on others"
    )]
    if stat.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(not_v2());
    }
    Ok(())
}

/// Can this process load and attach cgroup BPF programs?
pub(crate) fn has_bpf_privileges() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let caps = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    // Without CAP_PERFMON the verifier also walks speculative paths and refuses the program
    // (seen with CAP_BPF + CAP_NET_ADMIN alone), so all three are needed.
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN) && has(CAP_PERFMON))
}

pub(crate) fn has_kernel_btf() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").exists()
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads, so userspace can
/// compute what a bucket holds now.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_hybrid_and_pure_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_root_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_root_in(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root_in("proc /proc proc rw 0 0\n"), None);
        let spaced = "none /mnt/my\\040cgroups cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_root_in(spaced),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        let err = check_cgroup2(Path::new("/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/ is not a directory of a cgroup v2 hierarchy"
        );
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_now_ns();
        let b = monotonic_now_ns();
        assert!(a > 0 && b >= a);
    }
}
