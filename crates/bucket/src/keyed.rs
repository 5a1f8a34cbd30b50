//! A bounded table of buckets, one per key, all with the same settings.
//!
//! Every key behaves as if it had its own bucket since clock time 0, full until first used
//! (interval buckets top up at whole multiples of `fill_interval` from 0). A bucket that is full
//! again is indistinguishable from one never used, so dropping it changes nothing: that is how
//! the table evicts idle keys, exactly. Only when a shard is full of keys that are all still
//! refilling does it drop a busy one (the one closest to full), and counts that separately.
//!
//! The table is split into shards, each a `hashbrown` table behind a `parking_lot` read-write
//! lock. A check on a known key takes the read lock and one compare-and-swap on the key's
//! state word; new keys, eviction and rebasing take the write lock.
//!
//! A table with [wide](crate::Settings::is_wide) settings keeps each key's state in a 128-bit
//! word updated by a 16-byte compare-and-swap instead (lock-free where the CPU has one); keys
//! still only share the shard's read lock, and bounds and idle eviction work the same. Its
//! states are relative to a fixed origin, which 128 bits allow for every clock value, so its
//! shards never rebase. The settings are fixed per table, so the representation is chosen
//! once, and narrow tables store 8 bytes per key.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;
use parking_lot::RwLock;
use portable_atomic::AtomicU128;

use crate::Decision;
use crate::arith::{self, Level, Plan, Step, WidePlan, WideStep};
use crate::settings::Settings;

/// Occupied entries examined per insert into a full shard.
const EVICTION_SCAN: usize = 32;
/// Most shards a table is split into.
const MAX_SHARDS: usize = 64;
/// Fewest keys per shard when a table is small (keeps shards from filling unevenly).
const MIN_SHARD_CAPACITY: usize = 256;

/// Buckets per key, bounded to `capacity` keys. See the module documentation.
pub struct KeyedBuckets<K> {
    inner: Inner<K>,
}

enum Inner<K> {
    Narrow(Table<K, AtomicU64>),
    Wide(Table<K, WideCell>),
}

/// One key's bucket state and the arithmetic on it; the table is generic over it.
trait Cell: Send + Sync + Sized {
    type Plan: Copy + Send + Sync;

    fn full(plan: &Self::Plan) -> Self;
    fn settings(plan: &Self::Plan) -> Settings;
    /// One check; `None` when the shard must rebase first.
    fn take(&self, plan: &Self::Plan, origin: u64, now_ns: u64) -> Option<Decision>;
    fn level(&self, plan: &Self::Plan, origin: u64, now_ns: u64) -> Level;
    /// Whether `now_ns` is too far past `origin` for the cells of a shard.
    fn needs_rebase(plan: &Self::Plan, origin: u64, now_ns: u64) -> bool;
    fn rebase_origin(plan: &Self::Plan, origin: u64, now_ns: u64) -> u64;
    /// Re-expresses the state relative to `to` (see [`arith::shift`]).
    fn shift(&mut self, plan: &Self::Plan, from: u64, to: u64);
}

impl Cell for AtomicU64 {
    type Plan = Plan;

    fn full(plan: &Plan) -> Self {
        AtomicU64::new(plan.full_payload())
    }

    fn settings(plan: &Plan) -> Settings {
        plan.settings()
    }

    /// The compare-and-swap loop on one key's state.
    #[inline]
    fn take(&self, plan: &Plan, origin: u64, now_ns: u64) -> Option<Decision> {
        let mut current = self.load(Ordering::Relaxed);
        loop {
            match arith::step(plan, origin, current, now_ns) {
                Step::Admit { payload, answer } => {
                    // The word publishes nothing but itself (the plan never changes and the
                    // shard's lock orders rebases), so Relaxed suffices: a compare-and-swap of
                    // any ordering replaces exactly the value this check computed from.
                    match self.compare_exchange_weak(
                        current,
                        payload,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => return Some(plan.answer(answer)),
                        Err(actual) => current = actual,
                    }
                }
                Step::Deny(decision) => return Some(decision),
                Step::Rebase => return None,
            }
        }
    }

    fn level(&self, plan: &Plan, origin: u64, now_ns: u64) -> Level {
        arith::level(plan, origin, self.load(Ordering::Relaxed), now_ns)
    }

    fn needs_rebase(plan: &Plan, origin: u64, now_ns: u64) -> bool {
        now_ns.saturating_sub(origin) >= plan.rebase_at
    }

    fn rebase_origin(plan: &Plan, origin: u64, now_ns: u64) -> u64 {
        arith::rebase_origin(plan, origin, now_ns)
    }

    fn shift(&mut self, plan: &Plan, from: u64, to: u64) {
        let payload = self.get_mut();
        *payload = arith::shift(plan, *payload, from, to);
    }
}

/// A wide key's 105-bit state (see [`arith::wide_take`]), updated with one 16-byte
/// compare-and-swap like a narrow key's word.
struct WideCell(AtomicU128);

impl Cell for WideCell {
    type Plan = WidePlan;

    fn full(plan: &WidePlan) -> Self {
        WideCell(AtomicU128::new(plan.full_state()))
    }

    fn settings(plan: &WidePlan) -> Settings {
        plan.settings()
    }

    #[inline]
    fn take(&self, plan: &WidePlan, origin: u64, now_ns: u64) -> Option<Decision> {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            match arith::wide_take(plan, origin, current, now_ns) {
                // Relaxed, as for a narrow key's word.
                WideStep::Admit { payload, answer } => match self.0.compare_exchange_weak(
                    current,
                    payload,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(plan.answer(answer)),
                    Err(actual) => current = actual,
                },
                WideStep::Deny(decision) => return Some(decision),
            }
        }
    }

    fn level(&self, plan: &WidePlan, origin: u64, now_ns: u64) -> Level {
        arith::wide_level(plan, origin, self.0.load(Ordering::Relaxed), now_ns)
    }

    fn needs_rebase(_: &WidePlan, _: u64, _: u64) -> bool {
        false
    }

    fn rebase_origin(_: &WidePlan, origin: u64, _: u64) -> u64 {
        origin
    }

    fn shift(&mut self, _: &WidePlan, _: u64, _: u64) {}
}

struct Table<K, C: Cell> {
    plan: C::Plan,
    hasher: foldhash::fast::RandomState,
    shards: Box<[Padded<ShardLock<K, C>>]>,
    shard_capacity: usize,
    evicted: AtomicU64,
    evicted_active: AtomicU64,
}

#[repr(align(128))]
struct Padded<T>(T);

type ShardLock<K, C> = RwLock<Shard<K, C>>;

struct Shard<K, C> {
    /// Payloads are relative to this clock value.
    origin: u64,
    table: HashTable<Entry<K, C>>,
    /// Where the next eviction scan starts.
    cursor: usize,
}

struct Entry<K, C> {
    key: K,
    state: C,
}

/// Dispatches a call to the table of either representation.
macro_rules! with_table {
    ($self:expr, $t:ident => $body:expr) => {
        match &$self.inner {
            Inner::Narrow($t) => $body,
            Inner::Wide($t) => $body,
        }
    };
}

impl<K: Hash + Eq + Clone + Send + Sync> KeyedBuckets<K> {
    /// A table for at most `capacity` keys (at least 1), split evenly across its shards.
    pub fn new(settings: Settings, capacity: usize) -> Self {
        let inner = if settings.is_wide() {
            Inner::Wide(Table::new(WidePlan::new(settings), capacity))
        } else {
            Inner::Narrow(Table::new(Plan::new(settings), capacity))
        };
        KeyedBuckets { inner }
    }

    /// Takes one token from `key`'s bucket if there is one.
    #[inline]
    pub fn check(&self, key: &K, now_ns: u64) -> Decision {
        with_table!(self, t => t.check(key, now_ns))
    }

    /// Keys tracked now (idle ones included until they are evicted).
    pub fn len(&self) -> usize {
        with_table!(self, t => t.shards.iter().map(|s| s.0.read().table.len()).sum())
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys the table holds.
    pub fn capacity(&self) -> usize {
        with_table!(self, t => t.shard_capacity * t.shards.len())
    }

    /// The settings every key's bucket has.
    pub fn settings(&self) -> Settings {
        match &self.inner {
            Inner::Narrow(t) => AtomicU64::settings(&t.plan),
            Inner::Wide(t) => WideCell::settings(&t.plan),
        }
    }

    /// Keys dropped so far: idle ones (no behaviour change) and busy ones pushed out by a full
    /// table (see [`KeyedBuckets::evicted_while_active`]).
    pub fn evicted(&self) -> u64 {
        with_table!(self, t => t.evicted.load(Ordering::Relaxed))
    }

    /// Keys dropped while their bucket was still refilling because the table was full of
    /// busy keys. Each such key starts again with a full bucket: raise the capacity if this grows.
    pub fn evicted_while_active(&self) -> u64 {
        with_table!(self, t => t.evicted_active.load(Ordering::Relaxed))
    }

    /// Drops every idle key (bucket full at `now_ns`); returns how many. Optional: inserts
    /// evict on their own when a shard is full.
    pub fn evict_idle(&self, now_ns: u64) -> usize {
        with_table!(self, t => t.evict_idle(now_ns))
    }
}

impl<K: Hash + Eq + Clone + Send + Sync, C: Cell> Table<K, C> {
    fn new(plan: C::Plan, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let shards = (capacity / MIN_SHARD_CAPACITY)
            .max(1)
            .next_power_of_two()
            .min(MAX_SHARDS);
        let shard_capacity = (capacity / shards).max(1);
        Table {
            plan,
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..shards)
                .map(|_| {
                    Padded(RwLock::new(Shard {
                        origin: 0,
                        table: HashTable::new(),
                        cursor: 0,
                    }))
                })
                .collect(),
            shard_capacity,
            evicted: AtomicU64::new(0),
            evicted_active: AtomicU64::new(0),
        }
    }

    #[inline]
    fn check(&self, key: &K, now_ns: u64) -> Decision {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[self.shard_index(hash)].0;
        {
            let shard = shard.read();
            if let Some(entry) = shard.table.find(hash, |e| e.key == *key)
                && let Some(decision) = entry.state.take(&self.plan, shard.origin, now_ns)
            {
                return decision;
            }
        }
        self.check_exclusive(shard, hash, key, now_ns)
    }

    fn evict_idle(&self, now_ns: u64) -> usize {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.0.write();
            let origin = shard.origin;
            let plan = self.plan;
            shard.table.retain(|e| {
                let idle = e.state.level(&plan, origin, now_ns).full;
                dropped += usize::from(idle);
                !idle
            });
        }
        self.evicted.fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    fn shard_index(&self, hash: u64) -> usize {
        // hashbrown places entries by the low bits and tags them with the top 7: use others.
        (hash >> 32) as usize & (self.shards.len() - 1)
    }

    #[cold]
    fn check_exclusive(
        &self,
        shard: &ShardLock<K, C>,
        hash: u64,
        key: &K,
        now_ns: u64,
    ) -> Decision {
        let mut guard = shard.write();
        let shard = &mut *guard;
        loop {
            if C::needs_rebase(&self.plan, shard.origin, now_ns) {
                self.rebase(shard, now_ns);
            }
            let entry = match shard.table.find(hash, |e| e.key == *key) {
                Some(entry) => entry,
                None => {
                    if shard.table.len() >= self.shard_capacity {
                        self.make_room(shard, now_ns);
                    }
                    let entry = Entry {
                        key: key.clone(),
                        state: C::full(&self.plan),
                    };
                    shard
                        .table
                        .insert_unique(hash, entry, |e| self.hasher.hash_one(&e.key))
                        .into_mut()
                }
            };
            // Just rebased, so the step cannot ask for a rebase; loop defensively anyway.
            if let Some(decision) = entry.state.take(&self.plan, shard.origin, now_ns) {
                return decision;
            }
        }
    }

    /// Moves a shard's origin to `now_ns`, re-expressing every payload, and drops the keys that
    /// are idle there.
    fn rebase(&self, shard: &mut Shard<K, C>, now_ns: u64) {
        let plan = self.plan;
        let from = shard.origin;
        let to = C::rebase_origin(&plan, from, now_ns);
        let mut dropped = 0u64;
        shard.table.retain(|e| {
            e.state.shift(&plan, from, to);
            let idle = e.state.level(&plan, to, now_ns).full;
            dropped += u64::from(idle);
            !idle
        });
        shard.origin = to;
        shard.cursor = 0;
        self.evicted.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Frees at least one place in a full shard: drops the idle keys among the next few
    /// entries, or failing that the busy key closest to full among them.
    fn make_room(&self, shard: &mut Shard<K, C>, now_ns: u64) {
        let buckets = shard.table.num_buckets();
        let mut index = shard.cursor;
        let mut examined = 0;
        let mut dropped = 0u64;
        let mut fullest: Option<(usize, u128)> = None;
        for _ in 0..buckets {
            if examined == EVICTION_SCAN {
                break;
            }
            index = (index + 1) % buckets;
            let Some(entry) = shard.table.get_bucket(index) else {
                continue;
            };
            examined += 1;
            let level = entry.state.level(&self.plan, shard.origin, now_ns);
            if level.full {
                if let Ok(entry) = shard.table.get_bucket_entry(index) {
                    entry.remove();
                    dropped += 1;
                }
            } else if fullest.is_none_or(|(_, scaled)| level.scaled > scaled) {
                fullest = Some((index, level.scaled));
            }
        }
        shard.cursor = index;
        if dropped == 0
            && let Some((index, _)) = fullest
            && let Ok(entry) = shard.table.get_bucket_entry(index)
        {
            entry.remove();
            dropped = 1;
            self.evicted_active.fetch_add(1, Ordering::Relaxed);
        }
        self.evicted.fetch_add(dropped, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::settings::Refill;

    const S: u64 = 1_000_000_000;

    fn settings(refill: Refill) -> Settings {
        Settings::new(2, 1, Duration::from_secs(1), refill).unwrap()
    }

    proptest::proptest! {
        /// A shard rebases while its keys are refilling, triggered by any of them: nothing
        /// changes for any key.
        #[test]
        fn rebasing_mid_activity_matches_the_model(
            max in proptest::prop_oneof![1u64..50, 1u64..=(1 << 40)],
            per_fill in proptest::prop_oneof![1u64..10, 1u64..=(1 << 32)],
            interval in proptest::prop_oneof![1u64..100, 1u64..10_000_000_000],
            smooth in proptest::bool::ANY,
            lead in 0u64..200,
            arrivals in proptest::collection::vec((0u8..3, 0u64..400), 1..100),
        ) {
            let refill = if smooth { Refill::Smooth } else { Refill::Interval };
            let Ok(s) = Settings::new(max, per_fill, Duration::from_nanos(interval), refill) else {
                return Ok(());
            };
            let plan = Plan::new(s);
            let table = KeyedBuckets::new(s, 16);
            let mut models = std::collections::HashMap::new();
            let unit = (interval / per_fill).max(1);
            // The first arrival rebases the empty shard to (about) its own time, so arrivals
            // starting there run into the next rebase point.
            let start = 1u64 << 20;
            let _ = table.check(&u8::MAX, start);
            let origin = with_table!(table, t => t.shards[0].0.read().origin);
            // A wide table never rebases (rebase_at 0 marks it): it just runs from its origin.
            let rebase_after = plan.rebase_at.saturating_sub(1);
            if rebase_after >= u64::MAX - (1 << 32) {
                return Ok(()); // never rebases within the clock's range
            }
            let mut now = origin + rebase_after.saturating_sub(lead * unit / 4);
            for (key, gap) in arrivals {
                now = now.saturating_add(gap * unit / 100);
                let model = models.entry(key).or_insert_with(|| {
                    crate::model::ReferenceBucket::new(max, per_fill, interval, refill, 0)
                });
                proptest::prop_assert_eq!(table.check(&key, now), model.decision(now), "key {} at {}", key, now);
            }
        }
    }

    #[test]
    fn keys_have_independent_buckets() {
        let t = KeyedBuckets::new(settings(Refill::Smooth), 100);
        assert!(t.check(&"a", 0).admitted());
        assert!(t.check(&"a", 0).admitted());
        assert!(!t.check(&"a", 0).admitted());
        assert!(t.check(&"b", 0).admitted());
        assert_eq!(t.len(), 2);
        assert!(t.check(&"a", S).admitted());
    }

    #[test]
    fn a_full_shard_drops_idle_keys_first() {
        for refill in [Refill::Smooth, Refill::Interval] {
            let t = KeyedBuckets::new(settings(refill), 4);
            assert_eq!(t.capacity(), 4);
            for k in 0..4u32 {
                assert!(t.check(&k, 10 * S).admitted());
            }
            // Key 0 drains; keys 1..3 are idle again two seconds later.
            assert!(t.check(&0, 10 * S).admitted());
            assert!(t.check(&4, 12 * S).admitted());
            assert!(t.len() <= 4);
            assert!(t.evicted() >= 1);
            assert_eq!(t.evicted_while_active(), 0);
            // Key 0 kept its (refilled) bucket: 2 tokens, then none.
            assert!(t.check(&0, 12 * S).admitted());
            assert!(t.check(&0, 12 * S).admitted());
            assert!(!t.check(&0, 12 * S).admitted(), "{refill:?}");
        }
    }

    #[test]
    fn a_wide_table_keeps_its_bounds_and_evicts_idle_keys_exactly() {
        // 2^40 tokens at 2^32 per (2^32 + 1) ns: wide; an empty bucket refills in ~1100 s.
        let s = Settings::new(
            1 << 40,
            1 << 32,
            Duration::from_nanos((1 << 32) + 1),
            Refill::Smooth,
        )
        .unwrap();
        assert!(s.is_wide());
        let t = KeyedBuckets::new(s, 4);
        assert_eq!(t.settings(), s);
        for k in 0..4u32 {
            assert_eq!(t.check(&k, 10 * S).remaining(), (1 << 40) - 1);
        }
        assert_eq!(t.check(&0, 10 * S).remaining(), (1 << 40) - 2);
        // Keys 1..3 are idle (full) again 2000 s later; key 0 took its second token later on.
        assert_eq!(t.check(&0, 1000 * S).remaining(), (1 << 40) - 1);
        assert!(t.check(&4, 2000 * S).admitted());
        assert!(t.len() <= 4);
        assert!(t.evicted() >= 1);
        assert_eq!(t.evicted_while_active(), 0);
        // A table full of busy keys drops the fullest one, and stays bounded.
        for k in 10..20u32 {
            t.check(&k, 2000 * S);
        }
        assert!(t.len() <= t.capacity());
        assert!(t.evicted_while_active() > 0);
        let held = t.len();
        assert_eq!(t.evict_idle(u64::MAX), held);
        assert!(t.is_empty());
    }

    #[test]
    fn a_table_full_of_busy_keys_stays_bounded() {
        let t = KeyedBuckets::new(settings(Refill::Smooth), 300);
        for k in 0..10_000u32 {
            t.check(&k, 0);
            t.check(&k, 0);
        }
        assert!(t.len() <= t.capacity());
        assert!(t.capacity() <= 300);
        assert_eq!(t.evicted() as usize, 10_000 - t.len());
        assert_eq!(t.evicted_while_active(), t.evicted());
        let held = t.len();
        assert_eq!(t.evict_idle(10 * S), held);
        assert!(t.is_empty());
    }
}
