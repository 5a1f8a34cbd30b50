//! Pinning in the BPF filesystem, so that enforcement outlives the process: the links that
//! attach `connect4`/`connect6` to the cgroup and the maps (settings, buckets, counters) are
//! pinned in one directory per cgroup. While the pins exist the kernel keeps the programs
//! attached and the buckets as they are, whether or not a limiter process runs; a new limiter
//! adopts them (same maps, its own programs swapped into the links atomically), and
//! [`remove`] lifts everything.
// BPF_OBJ_GET, BPF_LINK_UPDATE, statfs and mount: the kernel boundary.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;

use crate::error::KernelError;
use crate::shared::{BucketKey, BucketSettings, BucketState, DestCounters, DestKey};

/// Where bpffs is mounted on every distribution; mounted there when missing.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// The program links pinned, by program name.
pub(crate) const LINKS: [&str; 2] = ["connect4", "connect6"];

/// The maps pinned, with the key and value sizes this build's program uses.
pub(crate) const MAPS: [(&str, usize, usize); 4] = [
    (
        "SETTINGS",
        size_of::<DestKey>(),
        size_of::<BucketSettings>(),
    ),
    ("STATE", size_of::<BucketKey>(), size_of::<BucketState>()),
    ("COUNTERS", size_of::<u32>(), size_of::<u64>()),
    (
        "DEST_COUNTERS",
        size_of::<DestKey>(),
        size_of::<DestCounters>(),
    ),
];

/// The default pin directory of `cgroup`: `/sys/fs/bpf/meshlimit/cgroup-<id>`, where the id is
/// the cgroup's inode number (the kernel's cgroup id), so each cgroup has its own and a
/// cgroup removed and made again does not meet the old one's pins.
pub fn default_pin_dir(cgroup: &Path) -> Result<PathBuf, KernelError> {
    let meta = std::fs::metadata(cgroup).map_err(|source| KernelError::Cgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    Ok(Path::new(BPFFS_ROOT)
        .join("meshlimit")
        .join(format!("cgroup-{}", meta.ino())))
}

/// Makes `dir` ready to hold pins: bpffs mounted at [`BPFFS_ROOT`] if `dir` is below it and
/// it is not mounted yet, then the directory made.
pub(crate) fn prepare(dir: &Path) -> Result<(), KernelError> {
    let bpffs_error = |source| KernelError::Bpffs {
        path: dir.to_owned(),
        source,
    };
    if dir.starts_with(BPFFS_ROOT) && !is_bpffs(Path::new(BPFFS_ROOT)) {
        mount_bpffs(Path::new(BPFFS_ROOT)).map_err(bpffs_error)?;
    }
    // The nearest existing ancestor tells which filesystem the pins will be on.
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(dir);
    if !is_bpffs(existing) {
        return Err(bpffs_error(std::io::Error::other(format!(
            "{} is not on a BPF filesystem (mount one with `mount -t bpf bpf DIR`)",
            existing.display()
        ))));
    }
    std::fs::create_dir_all(dir).map_err(bpffs_error)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 on some targets, u32 on others"
    )]
    let magic = stat.f_type as i64;
    rc == 0 && magic == BPF_FS_MAGIC
}

fn mount_bpffs(at: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(at)?;
    let target = CString::new(at.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: all pointers are valid C strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What is pinned in `dir` already: checks that each pinned map is one this build's program
/// can use, and returns the bucket map's capacity if one is pinned.
pub(crate) fn check_pinned_maps(dir: &Path) -> Result<Option<u32>, KernelError> {
    let mut capacity = None;
    for (name, key_size, value_size) in MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| KernelError::Pinned {
            path: path.clone(),
            reason: source.to_string(),
        })?;
        let sizes = (info.key_size() as usize, info.value_size() as usize);
        if sizes != (key_size, value_size) {
            return Err(KernelError::Pinned {
                path,
                reason: format!(
                    "its entries are {} + {} bytes, this version uses {key_size} + {value_size} \
                     (pinned by another version)",
                    sizes.0, sizes.1
                ),
            });
        }
        if name == "STATE" {
            capacity = Some(info.max_entries());
        }
    }
    Ok(capacity)
}

/// Opens the pinned object (link or map) at `path`.
pub(crate) fn open(path: &Path) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: attr is a valid `bpf_attr` prefix for BPF_OBJ_GET whose pathname points at a C
    // string that outlives the call; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            std::ptr::from_ref(&attr),
            size_of::<ObjGetAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The id of the cgroup a cgroup link is attached to (its directory's inode number), or 0 if
/// the cgroup is gone.
pub(crate) fn link_cgroup_id(link: BorrowedFd<'_>) -> std::io::Result<u64> {
    /// The head of `struct bpf_link_info` with its `cgroup` member.
    #[repr(C)]
    #[derive(Default)]
    struct CgroupLinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        cgroup_id: u64,
        attach_type: u32,
        _pad2: u32,
    }
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = CgroupLinkInfo::default();
    let attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<CgroupLinkInfo>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: attr is a valid `bpf_attr.info`; the kernel writes at most info_len bytes to
    // `info`, which we own and which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            std::ptr::from_ref(&attr),
            size_of::<InfoAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.cgroup_id)
}

/// Makes the link run `program` instead of the program it runs now, in one step: no
/// `connect()` goes unchecked in between.
pub(crate) fn update_link(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> std::io::Result<()> {
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: attr is a valid `bpf_attr.link_update`; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            std::ptr::from_ref(&attr),
            size_of::<LinkUpdateAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the link's program from its cgroup now. Releasing the last reference would do it
/// too, but the kernel does that later, from a work queue: `connect()`s right after would
/// still be limited.
fn detach_link(link: BorrowedFd<'_>) -> std::io::Result<()> {
    #[repr(C)]
    struct LinkDetachAttr {
        link_fd: u32,
    }
    let attr = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
    };
    // SAFETY: attr is a valid `bpf_attr.link_detach`; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            std::ptr::from_ref(&attr),
            size_of::<LinkDetachAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes the pins of `dir`: the links first, detached at once, then the maps, then the
/// directory. True if anything was pinned there.
pub(crate) fn remove(dir: &Path) -> Result<bool, KernelError> {
    let mut removed = false;
    for name in LINKS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let pinned = |reason: std::io::Error| KernelError::Pinned {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let link = open(&path).map_err(pinned)?;
        match detach_link(link.as_fd()) {
            // ENOLINK: the cgroup went away and took the attachment with it.
            Err(err) if err.raw_os_error() != Some(libc::ENOLINK) => return Err(pinned(err)),
            _ => {}
        }
    }
    let names = LINKS.iter().copied().chain(MAPS.iter().map(|m| m.0));
    for name in names {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => removed = true,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KernelError::Bpffs {
                    path: dir.join(name),
                    source,
                });
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(KernelError::Bpffs {
                path: dir.to_owned(),
                source,
            });
        }
    }
    Ok(removed)
}
