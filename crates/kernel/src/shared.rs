//! The `#[repr(C)]` types the BPF program and userspace share. Each mirrors a struct of
//! `bpf/meshlimit.bpf.c` byte for byte; keep them in step.
// aya reads and writes map keys and values as raw bytes, which `Pod` promises is sound.
#![allow(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `AF_INET`: IPv4, also for v4-mapped IPv6 destinations (`::ffff:a.b.c.d`).
pub const FAMILY_INET: u16 = 2;
/// `AF_INET6`: native IPv6.
pub const FAMILY_INET6: u16 = 10;

/// One limited destination: the key of the settings and per-destination counter maps.
#[repr(C, align(4))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DestKey {
    /// The address in network byte order; IPv4 as v4-mapped IPv6.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
}

impl DestKey {
    /// Keys an IPv4 destination (and a v4-mapped IPv6 one) as `AF_INET` with the mapped form,
    /// so that `connect4` and a v4-mapped `connect6` find the same settings.
    pub fn new(ip: IpAddr, port: u16) -> DestKey {
        match ip {
            IpAddr::V4(v4) => DestKey {
                addr: v4.to_ipv6_mapped().octets(),
                port,
                family: FAMILY_INET,
            },
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => DestKey::new(IpAddr::V4(v4), port),
                None => DestKey {
                    addr: v6.octets(),
                    port,
                    family: FAMILY_INET6,
                },
            },
        }
    }

    pub fn ip(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.addr);
        match (self.family, v6.to_ipv4_mapped()) {
            (FAMILY_INET, Some(v4)) => IpAddr::V4(v4),
            (FAMILY_INET, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            _ => IpAddr::V6(v6),
        }
    }
}

/// One bucket: a client network namespace and a destination. The key of the state map.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub netns_cookie: u64,
    pub dest: DestKey,
    pub _pad: u32,
}

/// Token-bucket settings of one destination (interval refill), as the program reads them.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketSettings {
    pub max_tokens: u64,
    pub tokens_per_fill: u64,
    pub fill_interval_ns: u64,
}

impl From<meshlimit_policy::TokenBucket> for BucketSettings {
    fn from(bucket: meshlimit_policy::TokenBucket) -> BucketSettings {
        BucketSettings {
            max_tokens: bucket.max_tokens(),
            tokens_per_fill: bucket.tokens_per_fill(),
            fill_interval_ns: bucket.fill_interval_ns(),
        }
    }
}

/// A bucket's state (see `struct bucket_state` in the program for why it has this shape):
/// tokens are `min(max, initial_tokens + n * tokens_per_fill - consumed)` where `n` is the
/// number of whole intervals since `origin_ns`. Only `consumed` changes after creation.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    pub origin_ns: u64,
    pub settings: BucketSettings,
    pub initial_tokens: u64,
    pub consumed: u64,
}

/// Set in `consumed` while the program replaces a bucket after a settings change.
pub(crate) const SEALED: u64 = 1 << 63;

/// Connections to one destination, per CPU.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestCounters {
    pub allowed: u64,
    pub limited: u64,
}

/// Indexes of the global per-CPU counter array.
pub(crate) mod counter {
    pub const ALLOWED: u32 = 0;
    pub const LIMITED: u32 = 1;
    pub const UNTRACKED: u32 = 2;
    pub const ERRORS: u32 = 3;
}

/// The input of the `arithmetic` test program (`BPF_PROG_TEST_RUN` packet data).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct ArithmeticInput {
    pub ethernet: [u8; 14],
    pub _pad: [u8; 2],
    pub now_ns: u64,
    pub bucket: u64,
    pub settings: BucketSettings,
}

// SAFETY: all of these are plain integers and byte arrays with explicit padding fields, so
// every byte is initialised and every bit pattern is a valid value.
unsafe impl aya::Pod for DestKey {}
unsafe impl aya::Pod for BucketKey {}
unsafe impl aya::Pod for BucketSettings {}
unsafe impl aya::Pod for BucketState {}
unsafe impl aya::Pod for DestCounters {}

const _: () = {
    assert!(size_of::<DestKey>() == 20);
    assert!(size_of::<BucketKey>() == 32);
    assert!(size_of::<BucketSettings>() == 24);
    assert!(size_of::<BucketState>() == 48);
    assert!(size_of::<DestCounters>() == 16);
    assert!(size_of::<ArithmeticInput>() == 56);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_v4_mapped_share_one_key() {
        let v4 = DestKey::new("10.1.2.3".parse().unwrap(), 80);
        let mapped = DestKey::new("::ffff:10.1.2.3".parse().unwrap(), 80);
        assert_eq!(v4, mapped);
        assert_eq!(v4.family, FAMILY_INET);
        assert_eq!(&v4.addr[10..], &[0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(v4.ip(), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn native_ipv6_keeps_its_family() {
        let key = DestKey::new("fd00::7".parse().unwrap(), 8080);
        assert_eq!(key.family, FAMILY_INET6);
        assert_eq!(key.ip(), "fd00::7".parse::<IpAddr>().unwrap());
    }
}
