//! The key index of a stage: each key's slot and the partition it was
//! first seen in, in one open-addressing table. The claims of keys across
//! workers ([`super::claims`]) file their keys in the same kind of table.
//!
//! With many keys, looking a key up misses the cache: its bucket lies
//! anywhere in megabytes. hashbrown's tables give no way to ask for a
//! bucket before the lookup, so a chunk of rows would wait on each miss in
//! turn. Here a key's first bucket follows from its hash alone: a stage
//! hashes a chunk's keys, asks for their buckets ([`KeyIndex::prefetch`]),
//! and then looks them up from the cache. Buckets hold the key and its
//! entry in 32 bytes, so none straddles two cache lines, and are probed
//! linearly; the table is kept at most half full (a quarter while it fits
//! in cache), so a probe reads one bucket or two. Dropping idle keys marks their buckets
//! rather than filing the rest again, which at a million keys allocated and
//! wrote a new table at every sweep. (Features bench workload, one worker,
//! CPU time, best of eight interleaved runs, hashbrown's table against
//! this one: 1595 against 1459 ms at 1k keys, 2530 against 2362 at 100k,
//! 1526 against 1371 at 1M.)

use crate::cache;
use rustc_hash::FxHasher;
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use tideflow_connectors::Value;

/// Tables below this size are kept a quarter full rather than half (see
/// [`KeyIndex::insert`]).
const SMALL_TABLE_BYTES: usize = 1 << 20;

/// What the index keeps for a key: 8 bytes, so that a bucket (the key
/// and its entry) is 32 and never straddles two cache lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// The key's slot in the stage's per-key state.
    slot: u32,
    /// The partition the key was first seen in.
    pub partition: u32,
}

impl KeyEntry {
    /// The entry of a key in `slot`, first seen in `partition`.
    pub fn new(slot: usize, partition: u32) -> Self {
        KeyEntry {
            // Each key holds over a hundred bytes of state: memory runs out
            // long before a worker's stage holds 2^32 of them.
            slot: u32::try_from(slot).expect("fewer than 2^32 keys in a stage of one worker"),
            partition,
        }
    }

    /// The key's slot in the stage's per-key state.
    pub fn slot(&self) -> usize {
        self.slot as usize
    }
}

/// Keys and their entries (by default a stage's [`KeyEntry`]; what an
/// entry holds must be small enough for a bucket to stay 32 bytes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyIndex<E = KeyEntry> {
    /// A power of two of buckets (none before the first key).
    buckets: Vec<Filed<E>>,
    /// How far a hash is shifted right to give its first bucket: 64
    /// less the bits of the bucket count.
    shift: u32,
    len: usize,
    /// Buckets of dropped keys (see [`Filed::Dropped`]).
    dropped: usize,
}

impl<E> Default for KeyIndex<E> {
    fn default() -> Self {
        KeyIndex {
            buckets: Vec::new(),
            shift: 0,
            len: 0,
            dropped: 0,
        }
    }
}

/// What a bucket holds, in 32 bytes (the key's hash is not kept: a probe
/// compares keys, and a rebuild hashes them again).
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Filed<E> {
    /// Never a key since the table was built: a probe ends here.
    Empty,
    /// A key that was dropped: a probe goes on past it (a key filed
    /// after it may lie beyond), and a new key may take it.
    Dropped,
    Key(Value, E),
}

/// The hash a key is filed under (see [`KeyHash::of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHash(u64);

impl KeyHash {
    /// The hash of `key`, to look it up and to ask for its bucket.
    pub fn of(key: &Value) -> KeyHash {
        let mut hasher = FxHasher::default();
        key.hash(&mut hasher);
        // Fibonacci hashing: the bucket comes from the product's high
        // bits, which every bit of the key's hash reaches.
        KeyHash(hasher.finish().wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// A hash [`KeyHash::of`] gave, from its bits.
    pub fn from_bits(bits: u64) -> KeyHash {
        KeyHash(bits)
    }

    /// The hash's bits.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<E: Copy> KeyIndex<E> {
    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the table's buckets.
    pub fn table_bytes(&self) -> usize {
        std::mem::size_of_val(self.buckets.as_slice())
    }

    /// Whether the table is small enough to stay in cache: then asking
    /// for its buckets ([`KeyIndex::prefetch`]) only costs instructions.
    pub fn stays_in_cache(&self) -> bool {
        self.table_bytes() < SMALL_TABLE_BYTES
    }

    /// Asks for the bucket a lookup of `hash` reads first.
    #[inline]
    pub fn prefetch(&self, hash: KeyHash) {
        if let Some(bucket) = self.buckets.get(self.home(hash)) {
            cache::prefetch_all(std::slice::from_ref(bucket));
        }
    }

    /// The entry of `key` (whose hash is `hash`), if held.
    #[inline]
    pub fn get(&self, hash: KeyHash, key: &Value) -> Option<E> {
        match self.buckets.get(self.find(hash, key)?) {
            Some(Filed::Key(_, entry)) => Some(*entry),
            _ => None,
        }
    }

    /// The bucket holding `key`, if held.
    #[inline]
    fn find(&self, hash: KeyHash, key: &Value) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut index = self.home(hash);
        loop {
            match &self.buckets[index] {
                Filed::Key(held, _) if held == key => return Some(index),
                Filed::Empty => return None,
                _ => {}
            }
            index = (index + 1) & mask;
        }
    }

    /// Files `key` (not held) with `entry`.
    #[inline]
    pub fn insert(&mut self, hash: KeyHash, key: Value, entry: E) {
        // A table that stays in cache is kept at most a quarter full, so
        // that a probe compares fewer keys; a larger one half full, as
        // each bucket it adds is another miss's worth of memory.
        let fill = if self.stays_in_cache() { 4 } else { 2 };
        if (self.len + self.dropped + 1) * fill > self.buckets.len() {
            // Full of dropped keys rather than held ones: the same size,
            // without them, will do.
            let buckets = if self.len * fill * 2 < self.buckets.len() {
                self.buckets.len()
            } else {
                (self.buckets.len() * 2).max(16)
            };
            self.rebuild(buckets);
        }
        self.place(hash, key, entry);
        self.len += 1;
    }

    /// Makes room for `additional` more keys at once. Keys filed in the
    /// order of another table's buckets come sorted by hash: filed one by
    /// one into a table that grows on the way, they would all crowd the
    /// low buckets of each smaller table and make one long probe
    /// (restoring a million keys took seconds, not milliseconds).
    pub fn reserve(&mut self, additional: usize) {
        let wanted = self.len + self.dropped + additional;
        let mut buckets = self.buckets.len().max(16);
        // The larger tables' fill: half full.
        while wanted * 2 > buckets {
            buckets *= 2;
        }
        if buckets > self.buckets.len() {
            self.rebuild(buckets);
        }
    }

    /// Calls `visit` with each key held and its entry, in bucket order.
    pub fn for_each(&self, mut visit: impl FnMut(&Value, &E)) {
        for bucket in &self.buckets {
            if let Filed::Key(key, entry) = bucket {
                visit(key, entry);
            }
        }
    }

    /// Keeps the keys for which `keep` holds, dropping the others.
    pub fn retain(&mut self, mut keep: impl FnMut(&Value, &E) -> bool) {
        for index in 0..self.buckets.len() {
            if let Filed::Key(key, entry) = &self.buckets[index]
                && !keep(key, entry)
            {
                self.drop_bucket(index);
            }
        }
    }

    /// Drops `key` (whose hash is `hash`) if held, and returns its entry.
    pub fn remove(&mut self, hash: KeyHash, key: &Value) -> Option<E> {
        let index = self.find(hash, key)?;
        let Filed::Key(_, entry) = self.buckets[index] else {
            return None;
        };
        self.drop_bucket(index);
        Some(entry)
    }

    fn drop_bucket(&mut self, index: usize) {
        // Marked, not emptied: it may sit inside another key's probe run.
        self.buckets[index] = Filed::Dropped;
        self.len -= 1;
        self.dropped += 1;
    }

    /// The bucket a probe for `hash` starts at (the table is not empty).
    #[inline]
    fn home(&self, hash: KeyHash) -> usize {
        (hash.0 >> self.shift) as usize
    }

    /// Files a key not held in the first bucket of its probe that holds
    /// none.
    fn place(&mut self, hash: KeyHash, key: Value, entry: E) {
        let mask = self.buckets.len() - 1;
        let mut index = self.home(hash);
        while let Filed::Key(..) = self.buckets[index] {
            index = (index + 1) & mask;
        }
        if let Filed::Dropped = self.buckets[index] {
            self.dropped -= 1;
        }
        self.buckets[index] = Filed::Key(key, entry);
    }

    /// Files every held key again in a table of `buckets` buckets.
    fn rebuild(&mut self, buckets: usize) {
        self.shift = 64 - buckets.trailing_zeros();
        self.dropped = 0;
        let old = std::mem::replace(
            &mut self.buckets,
            std::iter::repeat_with(|| Filed::Empty)
                .take(buckets)
                .collect(),
        );
        for bucket in old {
            if let Filed::Key(key, entry) = bucket {
                self.place(KeyHash::of(&key), key, entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(number: usize) -> Value {
        Value::Str(format!("u{number}").into())
    }

    fn entry(number: usize) -> KeyEntry {
        KeyEntry::new(number, (number % 7) as u32)
    }

    /// The most buckets in a row that hold keys: how far a probe can go.
    fn longest_run<E: Copy>(index: &KeyIndex<E>) -> usize {
        let (mut longest, mut run) = (0, 0);
        for bucket in &index.buckets {
            run = if let Filed::Key(..) = bucket {
                run + 1
            } else {
                0
            };
            longest = longest.max(run);
        }
        longest
    }

    /// Keys filed in another table's bucket order (sorted by hash, as a
    /// restore gives them) into a table reserved for all of them stay in
    /// short runs. Filed one by one into a table that grows on the way,
    /// the first twentieth of them crowd the lowest twentieth of each
    /// smaller table in one run that every later key probes through: the
    /// work grows with the square of the keys.
    #[test]
    fn keys_in_another_tables_order_make_short_probes_after_a_reserve() {
        let mut sorted: Vec<(KeyHash, Value)> = (0..50_000)
            .map(|number| (KeyHash::of(&key(number)), key(number)))
            .collect();
        sorted.sort_by_key(|(hash, _)| hash.get());
        let mut reserved = KeyIndex::<u32>::default();
        reserved.reserve(sorted.len());
        let mut grown = KeyIndex::<u32>::default();
        let twentieth = sorted.len() / 20;
        for (number, (hash, key)) in sorted.iter().enumerate() {
            if number == twentieth {
                assert!(longest_run(&reserved) < 100, "{}", longest_run(&reserved));
                assert!(longest_run(&grown) > 1_000, "{}", longest_run(&grown));
            }
            reserved.insert(*hash, key.clone(), number as u32);
            grown.insert(*hash, key.clone(), number as u32);
        }
        for (number, (hash, key)) in sorted.iter().enumerate() {
            assert_eq!(reserved.get(*hash, key), Some(number as u32));
        }
    }

    /// A bucket is half a cache line, so none straddles two.
    #[test]
    fn a_bucket_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Filed<KeyEntry>>(), 32);
        assert_eq!(std::mem::size_of::<Filed<u32>>(), 32);
    }

    /// A removed key is no longer found, and keys filed past its bucket
    /// still are.
    #[test]
    fn a_removed_key_leaves_the_others_found() {
        let mut index = KeyIndex::<u32>::default();
        for number in 0..100 {
            index.insert(KeyHash::of(&key(number)), key(number), number as u32);
        }
        for number in (0..100).step_by(2) {
            assert_eq!(
                index.remove(KeyHash::of(&key(number)), &key(number)),
                Some(number as u32)
            );
        }
        assert_eq!(index.remove(KeyHash::of(&key(0)), &key(0)), None);
        assert_eq!(index.len(), 50);
        for number in 0..100 {
            let expected = (number % 2 == 1).then_some(number as u32);
            assert_eq!(index.get(KeyHash::of(&key(number)), &key(number)), expected);
        }
    }

    /// Keys are found after the table grows and after others around them
    /// are dropped; dropped and never-filed keys are not.
    #[test]
    fn keys_are_found_through_growth_and_removal() {
        let mut index = KeyIndex::<KeyEntry>::default();
        assert_eq!(index.get(KeyHash::of(&key(0)), &key(0)), None);
        for number in 0..1000 {
            index.insert(KeyHash::of(&key(number)), key(number), entry(number));
        }
        assert_eq!(index.len(), 1000);
        index.retain(|_, entry| entry.slot() % 3 != 0);
        assert_eq!(index.len(), 666);
        // New keys take dropped buckets, and the table is filed again once
        // dropped and held keys fill half of it.
        for number in 1000..1500 {
            index.insert(KeyHash::of(&key(number)), key(number), entry(number));
        }
        index.retain(|_, entry| entry.slot() < 1200);
        assert_eq!(index.len(), 866);
        for number in 0..1600 {
            let expected =
                (number < 1200 && (number >= 1000 || number % 3 != 0)).then(|| entry(number));
            assert_eq!(
                index.get(KeyHash::of(&key(number)), &key(number)),
                expected,
                "key {number}"
            );
        }
    }

    /// Keys of different types that hash alike are told apart by the key.
    #[test]
    fn a_matching_hash_is_not_taken_for_the_key() {
        let mut index = KeyIndex::<KeyEntry>::default();
        let (text, number) = (Value::Str("7".into()), Value::I64(7));
        index.insert(KeyHash::of(&text), text.clone(), entry(1));
        // Filed under the text's hash, the number is still another key.
        assert_eq!(index.get(KeyHash::of(&text), &number), None);
        assert_eq!(index.get(KeyHash::of(&text), &text), Some(entry(1)));
    }
}
