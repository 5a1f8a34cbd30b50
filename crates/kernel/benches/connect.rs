//! What the kernel limiter costs a `connect()` to 127.0.0.1, and what a kernel rejection costs
//! compared with a userspace one (accept, then close). Needs root. Run with `scripts/bench-kernel`
//! or `cargo bench -p meshlimit-kernel --bench connect [-- ROUNDS CONNECTS]`.
//!
//! The scenarios are interleaved round by round (so drift hits them all alike) and each is
//! reported as the median over rounds of the mean time per connection. The benchmark thread
//! switches between two threaded cgroups: one with the programs attached, one without.
// gettid(2): the kernel boundary of the benchmark.
#![allow(unsafe_code)]

use std::fs;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use meshlimit_kernel::{KernelLimiter, cgroup2_root, monotonic_now_ns};
use meshlimit_policy::KernelLimit;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    NoProgram,
    AttachedUnlimited,
    LimitedAllowed,
    KernelRejected,
    UserspaceRejected,
}

const SCENARIOS: [(Scenario, &str); 5] = [
    (Scenario::NoProgram, "connect, no program"),
    (
        Scenario::AttachedUnlimited,
        "connect, attached, destination unlimited",
    ),
    (Scenario::LimitedAllowed, "connect, limited and allowed"),
    (Scenario::KernelRejected, "rejected in the kernel (EPERM)"),
    (
        Scenario::UserspaceRejected,
        "rejected in userspace (accept + close)",
    ),
];

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(15) as usize;
    let per_round = args.get(1).copied().unwrap_or(2_000) as usize;

    let cgroups = Cgroups::new();
    let mut limiter = KernelLimiter::attach(&cgroups.limited).expect("attach (run as root)");
    let unlimited = Server::start();
    let limited = Server::start();
    let rejecting = Server::start();
    let exhausted: SocketAddr = ([127, 0, 0, 1], 9).into();
    limiter
        .apply(&[
            // Never runs dry within a benchmark: every connect takes a token and gets through.
            limit(limited.addr, 1 << 40),
            limit(exhausted, 1),
        ])
        .expect("set limits");
    cgroups.enter(&cgroups.limited);
    assert!(TcpStream::connect(exhausted).is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused));

    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); SCENARIOS.len()];
    for _ in 0..rounds {
        for (i, (scenario, _)) in SCENARIOS.iter().enumerate() {
            let (cgroup, target) = match scenario {
                Scenario::NoProgram => (&cgroups.plain, unlimited.addr),
                Scenario::AttachedUnlimited => (&cgroups.limited, unlimited.addr),
                Scenario::LimitedAllowed => (&cgroups.limited, limited.addr),
                Scenario::KernelRejected => (&cgroups.limited, exhausted),
                Scenario::UserspaceRejected => (&cgroups.plain, rejecting.addr),
            };
            cgroups.enter(cgroup);
            let start = monotonic_now_ns();
            for _ in 0..per_round {
                one_connection(*scenario, target);
            }
            samples[i].push((monotonic_now_ns() - start) as f64 / per_round as f64);
        }
    }
    cgroups.enter(&cgroups.plain);
    let counters = limiter.counters().expect("counters");
    drop(limiter);

    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    println!(
        "kernel limiter, {rounds} rounds x {per_round} connections per scenario (median of round means)"
    );
    for ((_, name), ns) in SCENARIOS.iter().zip(&medians) {
        println!("  {name:<44} {:>8.2} us", ns / 1000.0);
    }
    let base = medians[0];
    println!("added to an allowed connect:");
    println!(
        "  attached, unlimited destination   {:+.2} us  (ratio {:.3})",
        (medians[1] - base) / 1000.0,
        medians[1] / base
    );
    println!(
        "  limited and allowed               {:+.2} us  (ratio {:.3})",
        (medians[2] - base) / 1000.0,
        medians[2] / base
    );
    println!("rejection per connection:");
    println!(
        "  userspace / kernel                {:.1}x",
        medians[4] / medians[3]
    );
    println!(
        "kernel counters: allowed {} limited {}",
        counters.allowed, counters.limited
    );
}

fn one_connection(scenario: Scenario, target: SocketAddr) {
    match (scenario, TcpStream::connect(target)) {
        (Scenario::KernelRejected, Err(err)) if err.raw_os_error() == Some(libc::EPERM) => {}
        (Scenario::UserspaceRejected, Ok(mut stream)) => {
            // The client learns of the rejection when the server's close arrives.
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                Ok(0) => {}
                Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
                other => panic!("expected the server to close, got {other:?}"),
            }
        }
        (Scenario::KernelRejected | Scenario::UserspaceRejected, other) => {
            panic!("unexpected {other:?}")
        }
        (_, Ok(stream)) => reset_on_close(&stream),
        (_, Err(err)) => panic!("connect {target}: {err}"),
    }
}

/// Closes with a reset instead of leaving the client's port in TIME_WAIT: thousands of those
/// would make the kernel's ephemeral port search, not the limiter, dominate the figures.
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a linger struct we own from a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

fn limit(addr: SocketAddr, max_tokens: u64) -> KernelLimit {
    KernelLimit {
        service: "bench".into(),
        address: addr.ip().to_string(),
        port: addr.port(),
        bucket: meshlimit_policy::TokenBucket::new(max_tokens, 1, 3_600_000_000_000)
            .expect("valid bucket"),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The process in a cgroup of its own, with two threaded children the benchmark thread moves
/// between. Removed on drop.
struct Cgroups {
    root: PathBuf,
    process: PathBuf,
    plain: PathBuf,
    limited: PathBuf,
}

impl Cgroups {
    fn new() -> Cgroups {
        let root = cgroup2_root().expect("cgroup v2");
        let process = root.join(format!("meshlimit-bench-{}", std::process::id()));
        fs::create_dir(&process).expect("create the benchmark cgroup");
        fs::write(process.join("cgroup.procs"), std::process::id().to_string()).expect("join it");
        let child = |name: &str| {
            let path = process.join(name);
            fs::create_dir(&path).expect("create a child cgroup");
            fs::write(path.join("cgroup.type"), "threaded").expect("make it threaded");
            path
        };
        let (plain, limited) = (child("plain"), child("limited"));
        Cgroups {
            root,
            process,
            plain,
            limited,
        }
    }

    fn enter(&self, cgroup: &Path) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        fs::write(cgroup.join("cgroup.threads"), tid.to_string()).expect("move the thread");
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let _ = fs::write(
            self.root.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        for dir in [&self.plain, &self.limited, &self.process] {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Accepts connections on 127.0.0.1 in the background and closes them at once: for the
/// allowed scenarios the client has already closed its end; for the userspace rejection the
/// client waits for this close, as it would behind a userspace limiter.
struct Server {
    addr: SocketAddr,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A backlog that holds a whole round: a client must never wait on a full queue (a
        // dropped SYN costs a one-second retransmission) when this thread is slow to accept.
        // SAFETY: listen on a listening socket we own only changes its backlog.
        let rc = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
        assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
        Server { addr }
    }
}
