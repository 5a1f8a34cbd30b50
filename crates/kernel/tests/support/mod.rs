//! Isolation for kernel tests: each test gets its own network namespace and its own cgroup v2
//! directory, and runs its connecting threads inside both.
//!
//! The test process moves itself into a cgroup of its own (a "threaded domain"); each sandbox
//! is a threaded child cgroup, so a single worker thread (and the threads it spawns) can join
//! it without moving the rest of the test harness. Network namespaces are per thread too.
#![allow(dead_code, reason = "each test binary uses a different part")]
// setns(2) and gettid(2): the kernel boundary of the test harness.
#![allow(unsafe_code)]

use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// The cgroup this test process lives in, with threaded children for the sandboxes.
fn process_cgroup() -> &'static Path {
    static CGROUP: OnceLock<PathBuf> = OnceLock::new();
    CGROUP.get_or_init(|| {
        let root = meshlimit_kernel::cgroup2_root().expect("cgroup v2 is mounted");
        remove_stale(&root);
        let dir = root.join(format!("meshlimit-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create the test process cgroup");
        fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .expect("join the test process cgroup");
        dir
    })
}

/// Cgroups left by earlier test processes that have exited.
fn remove_stale(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("meshlimit-test-") else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        if let Ok(children) = fs::read_dir(entry.path()) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = fs::remove_dir(child.path());
            }
        }
        let _ = fs::remove_dir(entry.path());
    }
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace (`ip netns add`) with loopback up; deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("mlt");
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Netns { name };
        run(Command::new("ip").args(["-n", &netns.name, "link", "set", "lo", "up"]));
        netns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &Path) {
    let file = File::open(path).expect("open the netns");
    // SAFETY: setns on a namespace fd we hold open; it only changes this thread's netns.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Moves the calling thread (only) into the threaded cgroup at `dir`.
fn enter_cgroup(dir: &Path) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    fs::write(dir.join("cgroup.threads"), tid.to_string()).expect("join the test cgroup");
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A threaded cgroup under the test process's cgroup; removed on drop.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new() -> Cgroup {
        let path = process_cgroup().join(unique("t"));
        fs::create_dir(&path).expect("create a test cgroup");
        fs::write(path.join("cgroup.type"), "threaded").expect("make the test cgroup threaded");
        Cgroup { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The last thread may still be leaving: retry briefly on EBUSY.
        for _ in 0..100 {
            match fs::remove_dir(&self.path) {
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => return,
            }
        }
    }
}

/// Runs `work` on a fresh thread inside `netns` and, if given, `cgroup`. Sockets it (and the
/// threads it spawns) creates belong to both.
pub fn run_in<T: Send + 'static>(
    netns: &Netns,
    cgroup: Option<&Cgroup>,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let netns = netns.path();
    let cgroup = cgroup.map(|c| c.path.clone());
    std::thread::spawn(move || {
        enter_netns(&netns);
        if let Some(dir) = cgroup {
            enter_cgroup(&dir);
        }
        work()
    })
    .join()
    .expect("sandboxed work panicked")
}

/// A TCP listener that accepts and closes connections in the background, so that clients
/// never wait on a full backlog. Stops on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Must be called in the namespace the server belongs to.
    pub fn bind(addr: &str) -> Server {
        let listener = TcpListener::bind(addr).expect("bind a test server");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => drop(stream),
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(err) => panic!("accept: {err}"),
                }
            }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What `connect()` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Connected,
    /// Refused by the limiter.
    Eperm,
    /// Let through by the limiter, refused by the peer (no listener).
    Refused,
}

pub fn connect(addr: SocketAddr) -> Outcome {
    match TcpStream::connect(addr) {
        Ok(_) => Outcome::Connected,
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => Outcome::Eperm,
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => Outcome::Refused,
        Err(err) => panic!("connect {addr}: unexpected {err}"),
    }
}

/// Counts of each outcome over `n` connects.
pub fn connect_n(addr: SocketAddr, n: usize) -> (usize, usize) {
    let mut connected = 0;
    let mut eperm = 0;
    for _ in 0..n {
        match connect(addr) {
            Outcome::Connected | Outcome::Refused => connected += 1,
            Outcome::Eperm => eperm += 1,
        }
    }
    (connected, eperm)
}

fn run(command: &mut Command) {
    let status = command.status().expect("run ip (iproute2)");
    assert!(status.success(), "{command:?} failed: {status}");
}

pub fn limit(
    service: &str,
    addr: SocketAddr,
    max: u64,
    per_fill: u64,
    interval_ns: u64,
) -> meshlimit_policy::effective::KernelLimit {
    meshlimit_policy::effective::KernelLimit {
        service: service.to_owned(),
        address: addr.ip().to_string(),
        port: addr.port(),
        bucket: meshlimit_policy::TokenBucket::new(max, per_fill, interval_ns)
            .expect("valid bucket"),
    }
}

pub const HOUR_NS: u64 = 3_600_000_000_000;

/// Pins a new BPF hash map with `key_size`/`value_size` byte entries at `path` (on bpffs): a
/// stand-in for a map pinned by another version of the program.
pub fn pin_hash_map(path: &Path, key_size: u32, value_size: u32) {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        _rest: [u32; 16],
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let create = MapCreate {
        map_type: BPF_MAP_TYPE_HASH,
        key_size,
        value_size,
        max_entries: 1,
        _rest: [0; 16],
    };
    // SAFETY: a valid `bpf_attr` for BPF_MAP_CREATE; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            std::ptr::from_ref(&create),
            size_of::<MapCreate>() as libc::c_uint,
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = ObjPin {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: a valid `bpf_attr` for BPF_OBJ_PIN whose path outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            std::ptr::from_ref(&pin),
            size_of::<ObjPin>() as libc::c_uint,
        )
    };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: we own the descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}
