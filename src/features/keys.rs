//! The key index of a stage: each key's slot and the partition it was
//! first seen in, in one open-addressing table.
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

/// Keys and their entries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeyIndex {
    /// A power of two of buckets (none before the first key).
    buckets: Vec<Bucket>,
    /// How far a hash is shifted right to give its first bucket: 64
    /// less the bits of the bucket count.
    shift: u32,
    len: usize,
    /// Buckets of dropped keys (see [`Filed::Dropped`]).
    dropped: usize,
}

/// A bucket: what it holds, in 32 bytes (the key's hash is not kept: a
/// probe compares keys, and a rebuild hashes them again).
type Bucket = Filed;

/// What a bucket holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
enum Filed {
    /// Never a key since the table was built: a probe ends here.
    #[default]
    Empty,
    /// A key that was dropped: a probe goes on past it (a key filed
    /// after it may lie beyond), and a new key may take it.
    Dropped,
    Key(Value, KeyEntry),
}

/// The hash a key is filed under (see [`KeyIndex::hash`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHash(u64);

impl KeyHash {
    /// The hash's bits.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl KeyIndex {
    /// The hash of `key`, to look it up and to ask for its bucket.
    pub fn hash(key: &Value) -> KeyHash {
        let mut hasher = FxHasher::default();
        key.hash(&mut hasher);
        // Fibonacci hashing: the bucket comes from the product's high
        // bits, which every bit of the key's hash reaches.
        KeyHash(hasher.finish().wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

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

    /// Asks for the bucket a lookup of `hash` reads first.
    #[inline]
    pub fn prefetch(&self, hash: KeyHash) {
        if let Some(bucket) = self.buckets.get(self.home(hash)) {
            cache::prefetch_all(std::slice::from_ref(bucket));
        }
    }

    /// The entry of `key` (whose hash is `hash`), if held.
    #[inline]
    pub fn get(&self, hash: KeyHash, key: &Value) -> Option<KeyEntry> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut index = self.home(hash);
        loop {
            match &self.buckets[index] {
                Filed::Key(held, entry) if held == key => return Some(*entry),
                Filed::Empty => return None,
                _ => {}
            }
            index = (index + 1) & mask;
        }
    }

    /// Files `key` (not held) with `entry`.
    #[inline]
    pub fn insert(&mut self, hash: KeyHash, key: Value, entry: KeyEntry) {
        // A table that stays in cache is kept at most a quarter full, so
        // that a probe compares fewer keys; a larger one half full, as
        // each bucket it adds is another miss's worth of memory.
        let fill = if self.table_bytes() < SMALL_TABLE_BYTES {
            4
        } else {
            2
        };
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

    /// Keeps the keys for which `keep` holds, dropping the others.
    pub fn retain(&mut self, mut keep: impl FnMut(&Value, &KeyEntry) -> bool) {
        for bucket in &mut self.buckets {
            if let Filed::Key(key, entry) = bucket
                && !keep(key, entry)
            {
                // Marked, not emptied: it may sit inside another key's
                // probe run.
                *bucket = Filed::Dropped;
                self.len -= 1;
                self.dropped += 1;
            }
        }
    }

    /// The bucket a probe for `hash` starts at (the table is not empty).
    #[inline]
    fn home(&self, hash: KeyHash) -> usize {
        (hash.0 >> self.shift) as usize
    }

    /// Files a key not held in the first bucket of its probe that holds
    /// none.
    fn place(&mut self, hash: KeyHash, key: Value, entry: KeyEntry) {
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
            std::iter::repeat_with(Bucket::default)
                .take(buckets)
                .collect(),
        );
        for bucket in old {
            if let Filed::Key(key, entry) = bucket {
                self.place(Self::hash(&key), key, entry);
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

    /// A bucket is half a cache line, so none straddles two.
    #[test]
    fn a_bucket_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Bucket>(), 32);
    }

    /// Keys are found after the table grows and after others around them
    /// are dropped; dropped and never-filed keys are not.
    #[test]
    fn keys_are_found_through_growth_and_removal() {
        let mut index = KeyIndex::default();
        assert_eq!(index.get(KeyIndex::hash(&key(0)), &key(0)), None);
        for number in 0..1000 {
            index.insert(KeyIndex::hash(&key(number)), key(number), entry(number));
        }
        assert_eq!(index.len(), 1000);
        index.retain(|_, entry| entry.slot() % 3 != 0);
        assert_eq!(index.len(), 666);
        // New keys take dropped buckets, and the table is filed again once
        // dropped and held keys fill half of it.
        for number in 1000..1500 {
            index.insert(KeyIndex::hash(&key(number)), key(number), entry(number));
        }
        index.retain(|_, entry| entry.slot() < 1200);
        assert_eq!(index.len(), 866);
        for number in 0..1600 {
            let expected =
                (number < 1200 && (number >= 1000 || number % 3 != 0)).then(|| entry(number));
            assert_eq!(
                index.get(KeyIndex::hash(&key(number)), &key(number)),
                expected,
                "key {number}"
            );
        }
    }

    /// Keys of different types that hash alike are told apart by the key.
    #[test]
    fn a_matching_hash_is_not_taken_for_the_key() {
        let mut index = KeyIndex::default();
        let (text, number) = (Value::Str("7".into()), Value::I64(7));
        index.insert(KeyIndex::hash(&text), text.clone(), entry(1));
        // Filed under the text's hash, the number is still another key.
        assert_eq!(index.get(KeyIndex::hash(&text), &number), None);
        assert_eq!(index.get(KeyIndex::hash(&text), &text), Some(entry(1)));
    }
}
