//! meshlimit-kernel: connection rate limits enforced in the kernel. A BPF program in C
//! (`bpf/meshlimit.bpf.c`, compiled by clang in `build.rs`) hooks `connect()` for IPv4 and
//! IPv6 sockets of a cgroup v2 subtree and refuses with `EPERM` connections to a limited
//! destination whose token bucket (one per client network namespace and destination, in an LRU
//! map, interval refill, updated by compare-and-swap) is empty.
//!
//! Start with [`KernelLimiter`] (`limiter.rs`): `attach` a cgroup, `set_limits` from the policy
//! engine's `KernelLimit`s, read `stats`/`counters`, and [`render_prometheus`] them. The types
//! both sides share are in `shared.rs`; `arithmetic.rs` runs the program's token arithmetic
//! with injected time so it can be checked against the userspace engine. [`agent`] is the
//! long-running agent behind `meshlimit agent`.

pub mod agent;
mod arithmetic;
mod error;
mod limiter;
mod limits;
mod shared;
mod stats;
mod system;

pub use arithmetic::ArithmeticProbe;
pub use error::KernelError;
pub use limiter::{BucketInfo, KernelLimiter, LimiterOptions};
pub use limits::LimitError;
pub use shared::BucketSettings;
pub use stats::{Counters, DestinationStats, render_prometheus};
pub use system::{cgroup2_root, monotonic_now_ns};
