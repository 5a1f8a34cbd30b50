//! The kernel limiter through real `connect()` calls, as root: each test has its own network
//! namespace and cgroup, attaches the programs to that cgroup only, and connects from threads
//! inside (and outside) it.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use meshlimit_kernel::{Counters, KernelLimiter, LimiterOptions, monotonic_now_ns};
use support::{Cgroup, HOUR_NS, Netns, Outcome, Server, connect, connect_n, limit, run_in};

struct Sandbox {
    // Field order: detach before the cgroup and namespace go away.
    limiter: KernelLimiter,
    cgroup: Cgroup,
    netns: Netns,
}

fn sandbox() -> Sandbox {
    sandbox_with(LimiterOptions::default())
}

fn sandbox_with(options: LimiterOptions) -> Sandbox {
    let netns = Netns::new();
    let cgroup = Cgroup::new();
    let limiter =
        KernelLimiter::attach_with(cgroup.path(), options).expect("attach to the test cgroup");
    Sandbox {
        limiter,
        cgroup,
        netns,
    }
}

impl Sandbox {
    fn server(&self, addr: &str) -> Server {
        let addr = addr.to_owned();
        run_in(&self.netns, None, move || Server::bind(&addr))
    }

    /// Runs `work` in this sandbox's netns and cgroup.
    fn inside<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(&self.netns, Some(&self.cgroup), work)
    }
}

#[test]
fn a_burst_gets_exactly_max_tokens_then_eperm() {
    let mut sb = sandbox();
    let server = sb.server("127.0.0.1:0");
    sb.limiter
        .apply(&[limit("web", server.addr, 5, 1, HOUR_NS)])
        .unwrap();

    let addr = server.addr;
    let outcomes = sb.inside(move || (0..8).map(|_| connect(addr)).collect::<Vec<_>>());
    let expected: Vec<Outcome> =
        [[Outcome::Connected; 5].as_slice(), &[Outcome::Eperm; 3]].concat();
    assert_eq!(outcomes, expected);

    assert_eq!(
        sb.limiter.counters().unwrap(),
        Counters {
            allowed: 5,
            limited: 3,
            untracked: 0,
            errors: 0
        }
    );
    let stats = sb.limiter.stats().unwrap();
    assert_eq!(stats.len(), 1);
    let row = &stats[0];
    assert_eq!(
        (row.service.as_str(), row.address.as_str(), row.port),
        ("web", "127.0.0.1", addr.port())
    );
    assert_eq!(
        (
            row.total,
            row.allowed,
            row.limited,
            row.tokens_available,
            row.clients
        ),
        (8, 5, 3, 0, 1)
    );
}

#[test]
fn refill_restores_exactly_tokens_per_fill_per_interval() {
    const INTERVAL: u64 = 300_000_000;
    let mut sb = sandbox();
    let server = sb.server("127.0.0.1:0");
    let addr = server.addr;
    sb.limiter
        .apply(&[limit("web", addr, 3, 2, INTERVAL)])
        .unwrap();

    assert_eq!(sb.inside(move || connect_n(addr, 4)), (3, 1));
    // The bucket's origin is the kernel clock reading of its first connect; tokens come back
    // at whole intervals after it.
    let origin = only_bucket(&sb.limiter).origin_ns;

    // Interval 1: exactly tokensPerFill come back.
    assert_eq!(burst_within_interval(&sb, addr, origin, 1, INTERVAL), 2);
    // Interval 3: 2 x 2 tokens, capped at maxTokens = 3.
    assert_eq!(burst_within_interval(&sb, addr, origin, 3, INTERVAL), 3);
    // Interval 4: the cap's loss is not made up later: again exactly tokensPerFill.
    assert_eq!(burst_within_interval(&sb, addr, origin, 4, INTERVAL), 2);
    assert_eq!(only_bucket(&sb.limiter).origin_ns, origin);
    let counters = sb.limiter.counters().unwrap();
    assert_eq!((counters.allowed, counters.limited), (3 + 2 + 3 + 2, 4));
}

/// Waits (by the kernel's clock) until interval `k` after `origin` has begun, then connects
/// until refused and returns how many got through. The burst must fit within interval `k` for
/// its count to be exact; readings before and after prove that it did.
fn burst_within_interval(
    sb: &Sandbox,
    addr: SocketAddr,
    origin: u64,
    k: u64,
    interval: u64,
) -> usize {
    let start = origin + k * interval;
    let now = monotonic_now_ns();
    if now < start {
        std::thread::sleep(Duration::from_nanos(start - now));
    }
    let (got, before, after) = sb.inside(move || {
        let before = monotonic_now_ns();
        let mut got = 0;
        while connect(addr) != Outcome::Eperm {
            got += 1;
        }
        (got, before, monotonic_now_ns())
    });
    assert!(before >= start, "the burst started before interval {k}");
    assert!(
        after < start + interval,
        "the burst spilled into the next interval ({} ns)",
        after - before
    );
    got
}

fn only_bucket(limiter: &KernelLimiter) -> meshlimit_kernel::BucketInfo {
    let mut buckets = limiter.buckets().unwrap();
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    buckets.remove(0)
}

#[test]
fn eight_threads_never_over_admit() {
    let mut sb = sandbox();
    let server = sb.server("127.0.0.1:0");
    let addr = server.addr;
    sb.limiter
        .apply(&[limit("web", addr, 40, 1, HOUR_NS)])
        .unwrap();

    let (connected, eperm) = sb.inside(move || {
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let barrier = barrier.clone();
                // Spawned from inside: the threads share this thread's cgroup and netns.
                std::thread::spawn(move || {
                    barrier.wait();
                    connect_n(addr, 150)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    assert_eq!((connected, eperm), (40, 8 * 150 - 40));
    assert_eq!(
        sb.limiter.counters().unwrap(),
        Counters {
            allowed: 40,
            limited: 1160,
            untracked: 0,
            errors: 0
        }
    );
}

#[test]
fn ipv6_and_v4_mapped_destinations_are_limited() {
    let mut sb = sandbox();
    // Dual-stack: reachable as 127.0.0.1, ::ffff:127.0.0.1 and ::1 on one port.
    let server = sb.server("[::]:0");
    let port = server.addr.port();
    let v4: SocketAddr = ([127, 0, 0, 1], port).into();
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let destinations = sb
        .limiter
        .apply(&[
            limit("v4", v4, 4, 1, HOUR_NS),
            limit("v6", v6, 2, 1, HOUR_NS),
        ])
        .unwrap();
    assert_eq!(destinations, 2);

    let outcomes = sb.inside(move || {
        // IPv4 and v4-mapped IPv6 sockets share the 127.0.0.1 bucket.
        let shared = [v4, mapped, v4, mapped, mapped, v4].map(connect);
        let native = [v6, v6, v6].map(connect);
        (shared, native)
    });
    use Outcome::{Connected as C, Eperm as E};
    assert_eq!(outcomes, ([C, C, C, C, E, E], [C, C, E]));
    let stats = sb.limiter.stats().unwrap();
    let rows: Vec<_> = stats
        .iter()
        .map(|r| (r.address.as_str(), r.allowed, r.limited))
        .collect();
    assert_eq!(rows, [("127.0.0.1", 4, 2), ("::1", 2, 1)]);
}

#[test]
fn other_cgroups_and_unlimited_destinations_are_untouched() {
    let mut sb = sandbox();
    let limited = sb.server("127.0.0.1:0");
    let unlimited = sb.server("127.0.0.1:0");
    let (l, u) = (limited.addr, unlimited.addr);
    sb.limiter.apply(&[limit("web", l, 2, 1, HOUR_NS)]).unwrap();

    // Same netns, outside the cgroup: no limit at all.
    assert_eq!(run_in(&sb.netns, None, move || connect_n(l, 20)), (20, 0));
    // A sibling cgroup is not below the attached one either.
    let sibling = Cgroup::new();
    assert_eq!(
        run_in(&sb.netns, Some(&sibling), move || connect_n(l, 20)),
        (20, 0)
    );
    // Inside: the unlimited destination is untouched and not counted.
    assert_eq!(sb.inside(move || connect_n(u, 20)), (20, 0));
    assert_eq!(sb.limiter.counters().unwrap(), Counters::default());
    // The limited one still has its whole burst.
    assert_eq!(sb.inside(move || connect_n(l, 3)), (2, 1));
}

#[test]
fn each_client_namespace_has_its_own_bucket() {
    let mut sb = sandbox();
    let server = sb.server("127.0.0.1:0");
    let addr = server.addr;
    let other = Netns::new();
    let other_server = run_in(&other, None, move || Server::bind(&addr.to_string()));
    sb.limiter
        .apply(&[limit("web", addr, 3, 1, HOUR_NS)])
        .unwrap();

    assert_eq!(sb.inside(move || connect_n(addr, 5)), (3, 2));
    assert_eq!(
        run_in(&other, Some(&sb.cgroup), move || connect_n(addr, 5)),
        (3, 2)
    );
    let mut cookies: Vec<u64> = sb
        .limiter
        .buckets()
        .unwrap()
        .iter()
        .map(|b| b.netns_cookie)
        .collect();
    cookies.dedup();
    assert_eq!(cookies.len(), 2);
    let row = &sb.limiter.stats().unwrap()[0];
    assert_eq!((row.allowed, row.limited, row.clients), (6, 4, 2));
    drop(other_server);
}

#[test]
fn removing_the_policy_lifts_the_limit_at_once() {
    let mut sb = sandbox();
    let server = sb.server("127.0.0.1:0");
    let addr = server.addr;
    let policy = [limit("web", addr, 2, 1, HOUR_NS)];
    assert_eq!(sb.limiter.apply(&policy).unwrap(), 1);
    assert_eq!(sb.inside(move || connect_n(addr, 3)), (2, 1));

    assert_eq!(sb.limiter.apply(&[]).unwrap(), 0);
    assert_eq!(sb.inside(move || connect_n(addr, 10)), (10, 0));
    assert!(sb.limiter.buckets().unwrap().is_empty());
    assert!(sb.limiter.stats().unwrap().is_empty());

    // Back again: a fresh, full bucket.
    sb.limiter.apply(&policy).unwrap();
    assert_eq!(sb.inside(move || connect_n(addr, 3)), (2, 1));
}

#[test]
fn changed_settings_keep_the_bucket_clamped_to_the_new_maximum() {
    let mut sb = sandbox();
    let server = sb.server("127.0.0.1:0");
    let addr = server.addr;
    sb.limiter
        .apply(&[limit("web", addr, 10, 1, HOUR_NS)])
        .unwrap();
    assert_eq!(sb.inside(move || connect_n(addr, 4)), (4, 0)); // 6 left
    sb.limiter
        .apply(&[limit("web", addr, 3, 1, HOUR_NS)])
        .unwrap();
    assert_eq!(sb.inside(move || connect_n(addr, 5)), (3, 2));
}

#[test]
fn invalid_settings_are_refused_and_change_nothing() {
    let mut sb = sandbox();
    let server = sb.server("127.0.0.1:0");
    let addr = server.addr;
    sb.limiter
        .apply(&[limit("web", addr, 1, 1, HOUR_NS)])
        .unwrap();
    let err = sb
        .limiter
        .apply(&[
            limit("web", addr, 5, 1, HOUR_NS),
            limit("api", addr, 6, 1, HOUR_NS),
        ])
        .unwrap_err();
    // (A bucket of zero tokens or interval cannot even be built: the policy engine refuses it.)
    assert_eq!(
        err.to_string(),
        format!(
            "invalid limits: 127.0.0.1:{} is limited twice with different settings (services \
             web and api)",
            addr.port()
        )
    );
    assert_eq!(sb.inside(move || connect_n(addr, 2)), (1, 1));
}

#[test]
fn the_lru_bound_holds_with_more_keys_than_capacity() {
    const CAPACITY: u32 = 16;
    let mut sb = sandbox_with(LimiterOptions {
        bucket_capacity: CAPACITY,
    });
    // No listeners needed: an admitted connect to a closed port is refused by the peer.
    let limits: Vec<_> = (0..64u16)
        .map(|i| limit("many", ([127, 0, 0, 1], 20_000 + i).into(), 1, 1, HOUR_NS))
        .collect();
    sb.limiter.apply(&limits).unwrap();

    let outcomes = sb.inside(|| {
        (0..64u16)
            .map(|i| connect(([127, 0, 0, 1], 20_000 + i).into()))
            .collect::<Vec<_>>()
    });
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Refused),
        "{outcomes:?}"
    );
    let buckets = sb.limiter.buckets().unwrap();
    assert!(
        !buckets.is_empty() && buckets.len() <= CAPACITY as usize,
        "{} buckets",
        buckets.len()
    );
    // Every connect was tracked: eviction made room, nothing failed open.
    assert_eq!(
        sb.limiter.counters().unwrap(),
        Counters {
            allowed: 64,
            limited: 0,
            untracked: 0,
            errors: 0
        }
    );
    // The most recent bucket is kept (and empty).
    assert_eq!(
        sb.inside(|| connect(([127, 0, 0, 1], 20_063).into())),
        Outcome::Eperm
    );
}

#[test]
fn attaching_to_a_directory_that_is_not_a_cgroup_is_refused() {
    let err = KernelLimiter::attach(std::path::Path::new("/tmp")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/tmp is not a directory of a cgroup v2 hierarchy"
    );
}

#[test]
fn the_unspecified_address_is_limited_as_the_loopback_it_reaches() {
    let mut sb = sandbox();
    // Dual-stack: 0.0.0.0:P and [::]:P reach it over loopback.
    let server = sb.server("[::]:0");
    let port = server.addr.port();
    let v4: SocketAddr = ([127, 0, 0, 1], port).into();
    let any4: SocketAddr = ([0, 0, 0, 0], port).into();
    let mapped_any: SocketAddr = format!("[::ffff:0.0.0.0]:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let any6: SocketAddr = format!("[::]:{port}").parse().unwrap();
    sb.limiter
        .apply(&[
            limit("v4", v4, 3, 1, HOUR_NS),
            limit("v6", v6, 2, 1, HOUR_NS),
        ])
        .unwrap();

    let outcomes = sb.inside(move || {
        let shared = [any4, mapped_any, any4, v4, any4].map(connect);
        let native = [any6, v6, any6, v6].map(connect);
        (shared, native)
    });
    use Outcome::{Connected as C, Eperm as E};
    assert_eq!(outcomes, ([C, C, C, E, E], [C, C, E, E]));
    let stats = sb.limiter.stats().unwrap();
    let rows: Vec<_> = stats
        .iter()
        .map(|r| (r.address.as_str(), r.allowed, r.limited))
        .collect();
    assert_eq!(rows, [("127.0.0.1", 3, 2), ("::1", 2, 2)]);
}

#[test]
fn the_unspecified_address_from_a_bound_socket_is_its_source_address() {
    let mut sb = sandbox();
    let server = sb.server("[::]:0");
    let port = server.addr.port();
    // The kernel routes 0.0.0.0 to the bound source address, here 127.0.0.2; and `::` from a
    // socket bound to a v4-mapped address to 127.0.0.1.
    let second: SocketAddr = ([127, 0, 0, 2], port).into();
    let loopback: SocketAddr = ([127, 0, 0, 1], port).into();
    sb.limiter
        .apply(&[
            limit("second", second, 2, 1, HOUR_NS),
            limit("loopback", loopback, 1, 1, HOUR_NS),
        ])
        .unwrap();
    let any4: SocketAddr = ([0, 0, 0, 0], port).into();
    let any6: SocketAddr = format!("[::]:{port}").parse().unwrap();
    let mapped_source: SocketAddr = "[::ffff:127.0.0.1]:0".parse().unwrap();
    let outcomes = sb.inside(move || {
        let from_second = [0; 3].map(|_| connect_from(([127, 0, 0, 2], 0).into(), any4));
        let from_mapped = [0; 2].map(|_| connect_from(mapped_source, any6));
        (from_second, from_mapped)
    });
    use Outcome::{Connected as C, Eperm as E};
    assert_eq!(outcomes, ([C, C, E], [C, E]));
}

/// `connect()` to `to` from a socket bound to `from` first.
fn connect_from(from: SocketAddr, to: SocketAddr) -> Outcome {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(from), Type::STREAM, None).unwrap();
    socket.bind(&from.into()).unwrap();
    match socket.connect(&to.into()) {
        Ok(()) => Outcome::Connected,
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => Outcome::Eperm,
        Err(err) => panic!("connect {to} from {from}: {err}"),
    }
}

#[test]
fn a_second_limiter_on_the_same_cgroup_is_refused_naming_the_first() {
    let sb = sandbox();
    let err = KernelLimiter::attach(sb.cgroup.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "another meshlimit process (pid {}) enforces kernel limits on cgroup {}: only one \
             may; stop it first",
            std::process::id(),
            sb.cgroup.path().display()
        )
    );
    // The first still works, and once it is gone the cgroup is free again.
    drop(sb.limiter);
    KernelLimiter::attach(sb.cgroup.path()).expect("attach after the first is gone");
}

/// A pin directory of its own on bpffs, removed on drop.
struct PinDir(std::path::PathBuf);

impl PinDir {
    fn new() -> PinDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PinDir(
            std::path::Path::new(meshlimit_kernel::BPFFS_ROOT)
                .join(format!("meshlimit-test-{}-{n}", std::process::id())),
        )
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn pinned_enforcement_and_tokens_outlive_the_limiter_until_the_pins_are_removed() {
    let netns = Netns::new();
    let cgroup = Cgroup::new();
    let pins = PinDir::new();
    let server = run_in(&netns, None, || Server::bind("127.0.0.1:0"));
    let addr = server.addr;
    let inside = |n| run_in(&netns, Some(&cgroup), move || connect_n(addr, n));
    let policy = [limit("web", addr, 5, 1, HOUR_NS)];

    let mut first =
        KernelLimiter::attach_pinned(cgroup.path(), LimiterOptions::default(), &pins.0).unwrap();
    assert_eq!(first.adopted(), None);
    first.apply(&policy).unwrap();
    assert_eq!(inside(3), (3, 0)); // 2 tokens left
    drop(first);

    // No limiter: still enforced, from the same bucket.
    assert_eq!(inside(1), (1, 0));

    // A new limiter adopts the pins: the bucket keeps its last token and the counters go on.
    let options = LimiterOptions {
        bucket_capacity: 1_000,
    };
    let mut second = KernelLimiter::attach_pinned(cgroup.path(), options, &pins.0).unwrap();
    let adopted = second.adopted().expect("the pins are adopted");
    assert_eq!(
        (adopted.links, adopted.destinations, adopted.buckets),
        (2, 1, 1)
    );
    assert_eq!(adopted.bucket_capacity, 65_536);
    assert_eq!(second.apply(&policy).unwrap(), 1);
    assert_eq!(inside(3), (1, 2));
    let row = &second.stats().unwrap()[0];
    assert_eq!(
        (row.service.as_str(), row.allowed, row.limited),
        ("web", 5, 2)
    );

    // Removing the pins is refused while a limiter holds the cgroup...
    let busy = meshlimit_kernel::remove_pins(cgroup.path(), &pins.0).unwrap_err();
    assert!(busy.to_string().contains("only one may"), "{busy}");
    drop(second);
    // ...and lifts every limit once it is done.
    assert!(meshlimit_kernel::remove_pins(cgroup.path(), &pins.0).unwrap());
    assert!(!pins.0.exists());
    assert_eq!(inside(10), (10, 0));
    assert!(!meshlimit_kernel::remove_pins(cgroup.path(), &pins.0).unwrap());
}

#[test]
fn adopting_applies_the_new_limits_to_the_pinned_maps() {
    let netns = Netns::new();
    let cgroup = Cgroup::new();
    let pins = PinDir::new();
    let a = run_in(&netns, None, || Server::bind("127.0.0.1:0"));
    let b = run_in(&netns, None, || Server::bind("127.0.0.1:0"));
    let (a, b) = (a.addr, b.addr);
    let inside = |addr, n| run_in(&netns, Some(&cgroup), move || connect_n(addr, n));

    let mut first =
        KernelLimiter::attach_pinned(cgroup.path(), LimiterOptions::default(), &pins.0).unwrap();
    first
        .apply(&[limit("a", a, 2, 1, HOUR_NS), limit("b", b, 2, 1, HOUR_NS)])
        .unwrap();
    assert_eq!(inside(a, 2), (2, 0));
    drop(first);

    // The new configuration drops b and shrinks a: the pinned maps follow it.
    let mut second =
        KernelLimiter::attach_pinned(cgroup.path(), LimiterOptions::default(), &pins.0).unwrap();
    assert_eq!(second.adopted().map(|a| a.destinations), Some(2));
    second.apply(&[limit("a", a, 1, 1, HOUR_NS)]).unwrap();
    assert_eq!(inside(a, 2), (0, 2));
    assert_eq!(inside(b, 5), (5, 0));
    drop(second);
    meshlimit_kernel::remove_pins(cgroup.path(), &pins.0).unwrap();
}

#[test]
fn the_largest_fill_is_served_every_second_and_every_30_days() {
    const SECOND: u64 = 1_000_000_000;
    const DAYS_30: u64 = 30 * 24 * 3_600 * SECOND;
    let mut sb = sandbox();
    let fast = sb.server("127.0.0.1:0");
    let slow = sb.server("127.0.0.1:0");
    let (f, s) = (fast.addr, slow.addr);
    // 2^32 tokens per fill: more tokens than nanoseconds in the interval for `fast`.
    sb.limiter
        .apply(&[
            limit("fast", f, 3, 1 << 32, SECOND),
            limit("slow", s, 2, 1 << 32, DAYS_30),
        ])
        .unwrap();
    assert_eq!(sb.inside(move || connect_n(s, 3)), (2, 1));
    assert_eq!(sb.inside(move || connect_n(f, 4)), (3, 1));
    let origin = sb
        .limiter
        .buckets()
        .unwrap()
        .into_iter()
        .find(|b| b.port == f.port())
        .unwrap()
        .origin_ns;
    // The next second: full again (capped at 3), exactly.
    assert_eq!(burst_within_interval(&sb, f, origin, 1, SECOND), 3);
    assert_eq!(sb.inside(move || connect_n(s, 1)), (0, 1));
    assert_eq!(sb.limiter.counters().unwrap().errors, 0);
}

#[test]
fn a_bucket_is_rebased_after_2_pow_20_intervals_and_keeps_its_phase() {
    const INTERVAL: u64 = 1_000; // 2^20 intervals: about 1.05 s
    let mut sb = sandbox();
    let server = sb.server("127.0.0.1:0");
    let addr = server.addr;
    sb.limiter
        .apply(&[limit("web", addr, 2, 1, INTERVAL)])
        .unwrap();
    assert_eq!(sb.inside(move || connect_n(addr, 1)), (1, 0));
    let origin = only_bucket(&sb.limiter).origin_ns;
    // Past 2^20 intervals by the kernel's clock (bounded: at most 3 s of waiting).
    let rebase_at = origin + (1 << 20) * INTERVAL;
    for _ in 0..30 {
        if monotonic_now_ns() > rebase_at {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(monotonic_now_ns() > rebase_at);
    assert_eq!(sb.inside(move || connect_n(addr, 1)), (1, 0));
    let rebased = only_bucket(&sb.limiter).origin_ns;
    assert!(rebased >= rebase_at, "origin {origin} -> {rebased}");
    assert_eq!((rebased - origin) % INTERVAL, 0, "a phase boundary");
    assert_eq!(sb.limiter.counters().unwrap().errors, 0);
}

#[test]
fn the_pins_of_another_cgroup_are_not_adopted() {
    let (mine, other) = (Cgroup::new(), Cgroup::new());
    let pins = PinDir::new();
    let first =
        KernelLimiter::attach_pinned(other.path(), LimiterOptions::default(), &pins.0).unwrap();
    drop(first);
    let err = KernelLimiter::attach_pinned(mine.path(), LimiterOptions::default(), &pins.0)
        .unwrap_err()
        .to_string();
    let link = pins.0.join("connect4");
    assert!(
        err.starts_with(&format!(
            "cannot adopt the pinned {}: it is attached to cgroup id",
            link.display()
        )) && err.contains(&format!("not to {}", mine.path().display())),
        "{err}"
    );
    meshlimit_kernel::remove_pins(other.path(), &pins.0).unwrap();
}

#[test]
fn maps_pinned_by_an_incompatible_version_are_refused_with_the_way_out() {
    let cgroup = Cgroup::new();
    let pins = PinDir::new();
    std::fs::create_dir_all(&pins.0).unwrap();
    let state = pins.0.join("STATE");
    support::pin_hash_map(&state, 32, 40);
    let err = KernelLimiter::attach_pinned(cgroup.path(), LimiterOptions::default(), &pins.0)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot adopt the pinned {}: its entries are 32 + 40 bytes, this version uses 32 + \
             48 (pinned by another version); remove the pins with `meshlimit agent --detach` \
             first",
            state.display()
        )
    );
    // Nothing was attached: the cgroup is free, and the pins come off.
    meshlimit_kernel::remove_pins(cgroup.path(), &pins.0).unwrap();
    assert!(!pins.0.exists());
}
