//! Exact division by a divisor fixed when a plan is built, without a division instruction.
//!
//! A check divides by the same two numbers every time (a token's scaled size and the scaled
//! clock's rate), and a 64-bit `div` costs tens of cycles, more than the rest of a check. A
//! [`Divisor`] keeps precomputed reciprocals instead, so a quotient is a multiplication and one
//! correction:
//!
//! - **64 by 64** ([`Divisor::div_rem`]): with `m = ⌊(2^64 − 1) / d⌋`, `q' = ⌊n·m / 2^64⌋` is
//!   the quotient `q` or `q − 1` for every `n < 2^64`. Proof: `m·d ≤ 2^64 − 1 < (m + 1)·d`, so
//!   `m > (2^64 − d) / d` and `n·m / 2^64 > n/d − n/2^64 > n/d − 1 ≥ q − 1`, while
//!   `n·m / 2^64 ≤ n/d`. One comparison of the remainder with `d` fixes `q − 1`.
//! - **128 by 64** ([`Divisor::div_rem_wide`], quotient below 2^64): Möller and Granlund's
//!   "Improved division by invariant integers" (IEEE Trans. Computers, 2011), algorithm 4, on
//!   the divisor shifted so that its top bit is set.
//!
//! Both are checked against the hardware's division by property tests below.

/// A divisor `d ≥ 1` and its reciprocals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Divisor {
    d: u64,
    /// `⌊(2^64 − 1) / d⌋`.
    m: u64,
    /// `d << shift`, top bit set.
    normalized: u64,
    /// `⌊(2^128 − 1) / normalized⌋ − 2^64`.
    v: u64,
    shift: u32,
}

impl Divisor {
    /// Panics on zero, which no validated plan holds.
    pub fn new(d: u64) -> Divisor {
        assert!(d > 0, "a divisor is at least 1");
        let shift = d.leading_zeros();
        let normalized = d << shift;
        // normalized ≥ 2^63, so the quotient is in [2^64, 2^65): minus 2^64 it fits.
        let v = (u128::MAX / u128::from(normalized) - (1u128 << 64)) as u64;
        Divisor {
            d,
            m: u64::MAX / d,
            normalized,
            v,
            shift,
        }
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.d
    }

    /// `(n / d, n % d)`.
    #[inline]
    pub fn div_rem(&self, n: u64) -> (u64, u64) {
        // The commonest divisor (a rate or a token of one unit) skips the multiplications.
        if self.d == 1 {
            return (n, 0);
        }
        let mut q = ((u128::from(n) * u128::from(self.m)) >> 64) as u64;
        // q ≤ n / d, so q·d ≤ n: no overflow, no underflow.
        let mut r = n - q * self.d;
        if r >= self.d {
            q += 1;
            r -= self.d;
        }
        (q, r)
    }

    /// `⌈n / d⌉`.
    #[inline]
    pub fn div_ceil(&self, n: u64) -> u64 {
        let (q, r) = self.div_rem(n);
        q + u64::from(r != 0)
    }

    /// `(n / d, n % d)` for `n < d · 2^64` (the quotient fits a `u64`).
    #[inline]
    pub fn div_rem_wide(&self, n: u128) -> (u64, u64) {
        debug_assert!(n >> 64 < u128::from(self.d));
        // n < d·2^64 ≤ 2^(128 − shift): the shift loses nothing, and the high half stays
        // below the normalized divisor, as the algorithm needs.
        let n = n << self.shift;
        let (u1, u0) = ((n >> 64) as u64, n as u64);
        let d = self.normalized;
        let q = (u128::from(self.v) * u128::from(u1)).wrapping_add(n);
        let (mut q1, q0) = (((q >> 64) as u64).wrapping_add(1), q as u64);
        let mut r = u0.wrapping_sub(q1.wrapping_mul(d));
        if r > q0 {
            q1 = q1.wrapping_sub(1);
            r = r.wrapping_add(d);
        }
        if r >= d {
            q1 += 1;
            r -= d;
        }
        (q1, r >> self.shift)
    }

    /// `⌈n / d⌉` for any `n`, kept at `u64::MAX` when larger.
    pub fn div_ceil_wide(&self, n: u128) -> u64 {
        if n >> 64 < u128::from(self.d) {
            let (q, r) = self.div_rem_wide(n);
            // q < 2^64 and q + 1 only when r > 0, which needs n > q·d: saturate the edge.
            q.saturating_add(u64::from(r != 0))
        } else {
            u64::MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn divisors() -> impl proptest::strategy::Strategy<Value = u64> {
        proptest::prop_oneof![
            1u64..=3,
            1u64..=1_000_000,
            proptest::num::u64::ANY.prop_map(|d| d.max(1)),
            (0u32..64).prop_map(|k| 1u64 << k),
            (1u32..64).prop_map(|k| (1u64 << k) - 1),
            (0u32..63).prop_map(|k| (1u64 << k) + 1),
        ]
    }

    use proptest::strategy::Strategy;

    #[test]
    fn edges() {
        for d in [1, 2, 3, 7, 1 << 32, (1 << 63) - 1, 1 << 63, u64::MAX] {
            let div = Divisor::new(d);
            for n in [0, 1, d - 1, d, d.wrapping_add(1), u64::MAX - 1, u64::MAX] {
                assert_eq!(div.div_rem(n), (n / d, n % d), "{n} / {d}");
                assert_eq!(div.div_ceil(n), n.div_ceil(d), "⌈{n} / {d}⌉");
            }
            let top = u128::from(d) << 64;
            for n in [0, 1, top - 1, top - u128::from(d), u128::from(u64::MAX)] {
                let want = ((n / u128::from(d)) as u64, (n % u128::from(d)) as u64);
                assert_eq!(div.div_rem_wide(n), want, "{n} / {d}");
            }
            assert_eq!(div.div_ceil_wide(top), u64::MAX);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        #[test]
        fn matches_hardware_division(d in divisors(), n in proptest::num::u64::ANY) {
            let div = Divisor::new(d);
            proptest::prop_assert_eq!(div.div_rem(n), (n / d, n % d));
            proptest::prop_assert_eq!(div.div_ceil(n), n.div_ceil(d));
        }

        #[test]
        fn wide_matches_u128_division(d in divisors(), hi in proptest::num::u64::ANY, lo in proptest::num::u64::ANY) {
            let div = Divisor::new(d);
            let n = (u128::from(hi % d) << 64) | u128::from(lo);
            let want = ((n / u128::from(d)) as u64, (n % u128::from(d)) as u64);
            proptest::prop_assert_eq!(div.div_rem_wide(n), want);
            let ceil = n.div_ceil(u128::from(d));
            proptest::prop_assert_eq!(u128::from(div.div_ceil_wide(n)), ceil.min(u128::from(u64::MAX)));
        }
    }
}
