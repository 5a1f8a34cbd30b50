//! meshlimit-kernel: connection rate limits enforced in the kernel. A BPF program in C
//! (`bpf/meshlimit.bpf.c`, compiled by clang in `build.rs`) hooks `connect()` for IPv4 and
//! IPv6 sockets of a cgroup v2 subtree and refuses with `EPERM` connections to a limited
//! destination whose token bucket (one per client network namespace and destination, in an LRU
//! map, interval refill, updated by compare-and-swap) is empty.
//!
//! A library in three parts: the program, the `#[repr(C)]` types both sides share
//! (`shared.rs`), and the loader. Start with [`KernelLimiter`] (`limiter.rs`): `attach` a
//! cgroup, [`KernelLimiter::apply`] the policy engine's `KernelLimit`s, read `stats`/`counters`,
//! and [`render_prometheus`] them. [`KernelLimiter::attach_pinned`] pins the program links and
//! maps in bpffs (`pins.rs`) so enforcement outlives the process; `lock.rs` keeps it to one
//! limiter per cgroup. `arithmetic.rs` runs the program's token arithmetic with
//! injected time so it can be checked against the userspace engine. Where the limits come from
//! and how they are served is the caller's business (`meshlimit run` and `meshlimit agent`).

mod arithmetic;
mod error;
mod limiter;
mod limits;
mod lock;
mod pins;
mod shared;
mod stats;
mod system;

pub use arithmetic::ArithmeticProbe;
pub use error::KernelError;
pub use limiter::{Adopted, BucketInfo, KernelLimiter, LimiterOptions, remove_pins};
pub use limits::LimitError;
pub use pins::{BPFFS_ROOT, default_pin_dir};
pub use shared::BucketSettings;
pub use stats::{Counters, DestinationStats, render_prometheus};
pub use system::{cgroup2_root, monotonic_now_ns};
