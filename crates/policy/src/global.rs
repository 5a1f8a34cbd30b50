//! Global limits without a shared store: each live instance of a service enforces a share of
//! the total, and the shares add up to it.
//!
//! [`share`] is the whole scheme. For a total of `num` tokens per `interval` among `n`
//! instances, instance `i` (0-based, in the order every instance computes the same way: by
//! Dataplane name, then inbound port) gets:
//!
//! - when `num ≥ n`: `⌊num / n⌋` tokens per `interval`, plus one for the first `num mod n`
//!   instances. The shares add up to exactly `num` per `interval`, bursts included.
//! - when `num < n`: a share of whole tokens would be 0 for some instances, so the tokens are
//!   spread in time instead: each instance gets 1 token every `⌈interval × n / num⌉`
//!   (nanoseconds). That is exactly `num / interval` in total whenever `num` divides
//!   `interval × n` in nanoseconds (1s = 10⁹ ns, so with a whole-second interval: whenever
//!   `num`'s prime factors are 2s, 5s and factors of `n` or the number of seconds); otherwise
//!   rounding the period up keeps the sum just below the total, never above, short of it by
//!   less than one part in `interval × n / num` nanoseconds (under 10⁻⁹ for a 1s interval).
//!   Every instance keeps a burst of one token, the least it can have, so up to `n` requests
//!   can pass at once — unavoidable when every instance must be able to admit one.
//!
//! The one case that exceeds the total is beyond the engine's range: a period longer than
//! 2⁶⁴−1 ns (584 years) is held at that.

use std::time::Duration;

use crate::quota::Rate;

/// Instance `index`'s share of `total` among `instances` live instances (see the module
/// documentation). `instances` of 0 counts as 1; `index` is taken modulo `instances`.
/// Never 0 tokens.
pub fn share(total: Rate, instances: u32, index: u32) -> Rate {
    let n = instances.max(1);
    let i = index % n;
    let num = total.num().get();
    let interval = total.interval();
    if num >= n {
        let mine = num / n + u32::from(i < num % n);
        // At most `num` per the same interval: within what `total` already holds.
        return Rate::new(mine, interval).unwrap_or(total);
    }
    let spread = u128::from(total.quota().fill_interval_ns()) * u128::from(n);
    let period = spread.div_ceil(u128::from(num));
    let period = u64::try_from(period).unwrap_or(u64::MAX);
    // One token per nanosecond or slower is always a valid bucket; `total` is the fallback
    // that cannot happen.
    Rate::new(1, Duration::from_nanos(period)).unwrap_or(total)
}

/// The name of the bucket every instance of `service` limited by `policy` shares:
/// `mgrl/<mesh>/<policy>/<service>` (see [`crate::GlobalLimit::key`]).
pub fn key(mesh: &str, policy: &str, service: &str) -> String {
    format!("mgrl/{mesh}/{policy}/{service}")
}

/// The rate-limit domain of global limits' descriptors (Envoy's `ratelimit` filter `domain`).
pub const DESCRIPTOR_DOMAIN: &str = "meshlimit";
/// Entry key of a global limit's rate-limit descriptor that names the shared bucket.
pub const DESCRIPTOR_KEY: &str = "meshlimit_key";
/// Entry key of a global limit's rate-limit descriptor that carries the total:
/// `<num>/<interval in nanoseconds>`.
pub const DESCRIPTOR_RATE: &str = "meshlimit_rate";

/// Entry key of the descriptor of a global limit whose failure mode is `LocalShare`: the
/// sending instance's place and share, `<index>:<num>/<interval in nanoseconds>`, which the
/// rate-limit service enforces for that instance when Redis does not answer.
pub const DESCRIPTOR_SHARE: &str = "meshlimit_share";

/// The rate-limit descriptor an Envoy sends for a global limit: the bucket and its total, in
/// this order. The total travels with every request so that the rate-limit service needs no
/// configuration of its own (and a changed policy takes effect with the next request); the
/// key names the policy, so two totals never share a bucket unless one policy changed.
pub fn descriptor(key: &str, total: Rate) -> Vec<(String, String)> {
    vec![
        (DESCRIPTOR_KEY.to_string(), key.to_string()),
        (DESCRIPTOR_RATE.to_string(), rate_text(total)),
    ]
}

/// [`descriptor`] plus the sender's share of the total ([`DESCRIPTOR_SHARE`]), for a limit
/// that falls back to the shares when Redis fails.
pub fn descriptor_with_share(key: &str, total: Rate, share: LocalShare) -> Vec<(String, String)> {
    let mut entries = descriptor(key, total);
    entries.push((
        DESCRIPTOR_SHARE.to_string(),
        format!("{}:{}", share.index, rate_text(share.rate)),
    ));
    entries
}

fn rate_text(rate: Rate) -> String {
    format!("{}/{}", rate.num(), rate.quota().fill_interval_ns())
}

/// One instance's place among those sharing a global limit and its [`share`] of the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalShare {
    pub index: u32,
    pub rate: Rate,
}

/// A descriptor read back by [`parse_descriptor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalDescriptor {
    pub key: String,
    pub total: Rate,
    /// The sender's share, when the limit falls back to shares ([`descriptor_with_share`]).
    pub share: Option<LocalShare>,
}

/// Why [`parse_descriptor`] read no global limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// No `meshlimit_key` entry: someone else's descriptor.
    #[error("not a meshlimit descriptor")]
    Foreign,
    #[error("malformed meshlimit descriptor: {0}")]
    Invalid(String),
}

/// Reads a descriptor written by [`descriptor`] or [`descriptor_with_share`]: exactly their
/// entries, in any order.
pub fn parse_descriptor<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<GlobalDescriptor, DescriptorError> {
    let (mut key, mut rate, mut share, mut others) = (None, None, None, Vec::new());
    for (name, value) in entries {
        let slot = match name {
            DESCRIPTOR_KEY => &mut key,
            DESCRIPTOR_RATE => &mut rate,
            DESCRIPTOR_SHARE => &mut share,
            other => {
                others.push(other);
                continue;
            }
        };
        if slot.replace(value).is_some() {
            return Err(DescriptorError::Invalid(format!("{name} appears twice")));
        }
    }
    let key = key.ok_or(DescriptorError::Foreign)?;
    if !others.is_empty() {
        return Err(DescriptorError::Invalid(format!(
            "unexpected entries {others:?}"
        )));
    }
    let rate = rate.ok_or_else(|| DescriptorError::Invalid(format!("no {DESCRIPTOR_RATE}")))?;
    let total = parse_rate(DESCRIPTOR_RATE, rate)?;
    let share = share
        .map(|text| {
            let invalid = || {
                DescriptorError::Invalid(format!(
                    "{DESCRIPTOR_SHARE} {text:?} is not <index>:<num>/<interval_ns>"
                ))
            };
            let (index, rate) = text.split_once(':').ok_or_else(invalid)?;
            Ok(LocalShare {
                index: index.parse().map_err(|_| invalid())?,
                rate: parse_rate(DESCRIPTOR_SHARE, rate)?,
            })
        })
        .transpose()?;
    Ok(GlobalDescriptor {
        key: key.to_string(),
        total,
        share,
    })
}

/// `<num>/<interval_ns>`, the value of entry `name`.
fn parse_rate(name: &str, text: &str) -> Result<Rate, DescriptorError> {
    let invalid =
        || DescriptorError::Invalid(format!("{name} {text:?} is not <num>/<interval_ns>"));
    let (num, ns) = text.split_once('/').ok_or_else(invalid)?;
    let num = num.parse::<u32>().map_err(|_| invalid())?;
    let ns = ns.parse::<u64>().map_err(|_| invalid())?;
    Rate::new(num, Duration::from_nanos(ns))
        .map_err(|e| DescriptorError::Invalid(format!("{name} {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    fn rate(num: u32, interval_ns: u64) -> Rate {
        Rate::new(num, Duration::from_nanos(interval_ns)).expect("valid rate")
    }

    /// Checks every share of `total` among `n`; returns the shares.
    fn check(total: Rate, n: u32) -> Vec<Rate> {
        let shares: Vec<Rate> = (0..n).map(|i| share(total, n, i)).collect();
        let num = total.num().get();
        let t = u128::from(total.quota().fill_interval_ns());
        if num >= n {
            // Same interval, whole tokens adding up to the total.
            assert!(shares.iter().all(|s| s.interval() == total.interval()));
            let sum: u64 = shares.iter().map(|s| u64::from(s.num().get())).sum();
            assert_eq!(sum, u64::from(num), "{num}/{t}ns among {n}");
            let most = shares[0].num().get();
            assert!(shares.iter().all(|s| most - s.num().get() <= 1));
            // The remainder goes to the first instances.
            assert!(shares.windows(2).all(|w| w[0].num() >= w[1].num()));
        } else {
            // One token per the same period each; n / period ≤ num / t, and the period is
            // the shortest that keeps it so.
            let period = shares[0].quota().fill_interval_ns();
            assert!(shares.iter().all(|s| s.num().get() == 1));
            assert!(
                shares
                    .iter()
                    .all(|s| s.quota().fill_interval_ns() == period)
            );
            let (p, num, n) = (u128::from(period), u128::from(num), u128::from(n));
            if n * t / num <= u128::from(u64::MAX) {
                assert!(n * t <= num * p, "sum above the total");
                assert!(num * (p - 1) < n * t, "a shorter period would do");
                if (n * t) % num == 0 {
                    assert_eq!(n * t, num * p, "exact when it divides");
                }
            }
        }
        shares
    }

    #[test]
    fn shares_add_up_for_every_small_case() {
        for interval_ns in [1_000_000_000, 60_000_000_000, 7_000_000_001] {
            for num in 1..=64 {
                for n in 1..=64 {
                    check(rate(num, interval_ns), n);
                }
            }
        }
    }

    #[test]
    fn whole_tokens_go_to_the_first_instances() {
        let shares: Vec<u32> = check(rate(10, 1_000_000_000), 4)
            .iter()
            .map(|s| s.num().get())
            .collect();
        assert_eq!(shares, [3, 3, 2, 2]);
        assert_eq!(
            share(rate(100, 1_000_000_000), 1, 0),
            rate(100, 1_000_000_000)
        );
    }

    #[test]
    fn fewer_tokens_than_instances_are_spread_in_time() {
        // 2 per second among 8: one every 4s each, exactly.
        assert_eq!(share(rate(2, 1_000_000_000), 8, 5), rate(1, 4_000_000_000));
        // 3 per second among 4: one every 4/3 s, rounded up to the nanosecond.
        assert_eq!(share(rate(3, 1_000_000_000), 4, 0), rate(1, 1_333_333_334));
        // 1 per 24h among 3: one every 72h.
        assert_eq!(
            share(rate(1, 86_400_000_000_000), 3, 2),
            rate(1, 259_200_000_000_000)
        );
    }

    #[test]
    fn degenerate_counts_and_indexes_are_read_sensibly() {
        let total = rate(5, 1_000_000_000);
        assert_eq!(share(total, 0, 0), total);
        assert_eq!(share(total, 3, 4), share(total, 3, 1));
        // Beyond the engine's longest interval the period is held at 2^64-1 ns.
        let slow = rate(1, 86_400_000_000_000);
        assert_eq!(
            share(slow, u32::MAX, 0).quota().fill_interval_ns(),
            u64::MAX
        );
    }

    #[test]
    fn descriptors_read_back_as_written() {
        let total = rate(100, 60_000_000_000);
        let entries = descriptor("mgrl/default/p/web", total);
        assert_eq!(
            entries,
            [
                (
                    "meshlimit_key".to_string(),
                    "mgrl/default/p/web".to_string()
                ),
                ("meshlimit_rate".to_string(), "100/60000000000".to_string()),
            ]
        );
        let read = parse_descriptor(entries.iter().rev().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(
            read,
            Ok(GlobalDescriptor {
                key: "mgrl/default/p/web".into(),
                total,
                share: None,
            })
        );
        let mine = LocalShare {
            index: 2,
            rate: rate(33, 60_000_000_000),
        };
        let entries = descriptor_with_share("k", total, mine);
        assert_eq!(
            entries[2],
            (
                "meshlimit_share".to_string(),
                "2:33/60000000000".to_string()
            )
        );
        let read = parse_descriptor(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(read.map(|d| d.share), Ok(Some(mine)));
    }

    #[test]
    fn foreign_and_malformed_descriptors_are_told_apart() {
        assert_eq!(
            parse_descriptor([("generic_key", "x")]),
            Err(DescriptorError::Foreign)
        );
        for entries in [
            vec![("meshlimit_key", "k")],
            vec![("meshlimit_key", "k"), ("meshlimit_rate", "0/1000")],
            vec![("meshlimit_key", "k"), ("meshlimit_rate", "5")],
            vec![("meshlimit_key", "k"), ("meshlimit_rate", "5/x")],
            vec![("meshlimit_key", "k"), ("meshlimit_rate", "5/0")],
            vec![
                ("meshlimit_key", "k"),
                ("meshlimit_rate", "5/1"),
                ("x", "y"),
            ],
            vec![
                ("meshlimit_key", "k"),
                ("meshlimit_key", "k"),
                ("meshlimit_rate", "5/1"),
            ],
            vec![
                ("meshlimit_key", "k"),
                ("meshlimit_rate", "5/1"),
                ("meshlimit_share", "5/1"),
            ],
            vec![
                ("meshlimit_key", "k"),
                ("meshlimit_rate", "5/1"),
                ("meshlimit_share", "x:5/1"),
            ],
            vec![
                ("meshlimit_key", "k"),
                ("meshlimit_rate", "5/1"),
                ("meshlimit_share", "1:0/1"),
            ],
        ] {
            assert!(
                matches!(
                    parse_descriptor(entries.clone()),
                    Err(DescriptorError::Invalid(_))
                ),
                "{entries:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn shares_never_exceed_the_total_and_are_never_empty(
            num in 1u32..=1_000_000,
            interval_ns in prop_oneof![
                Just(1_000_000_000u64),
                Just(60_000_000_000),
                Just(3_600_000_000_000),
                Just(86_400_000_000_000),
                1u64..=1_000_000_000_000,
            ],
            n in 1u32..=2_000,
        ) {
            let shares = check(rate(num, interval_ns), n);
            prop_assert!(shares.iter().all(|s| s.num().get() >= 1));
        }
    }
}
