//! Which partition each key of a keyed source lives in, shared by the
//! workers of a process.
//!
//! A stage keyed by `source.key` computes each key's features where the
//! key's partition is read, without sending rows to other workers: the
//! declaration says a key lives in one partition. That declaration is
//! checked rather than trusted. A worker sees only its own partitions, so
//! each key a worker starts keeping is claimed here for its partition, and
//! a key claimed for another partition stops the run before any row of it
//! leaves, just as when one worker sees both partitions. A key forgotten
//! for being idle gives up its claim.

use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use tideflow_connectors::Value;

/// Independent locks, so that workers claiming keys rarely wait.
const SHARDS: usize = 64;

/// Where the shard's bits start in a key's hash: just below the 7 top
/// bits hashbrown keeps as a key's tag.
const SHARD_SHIFT: u32 = 64 - 7 - SHARDS.trailing_zeros();

/// The partition claimed by each key kept by some worker of the process.
#[derive(Debug)]
pub struct KeyClaims {
    shards: Vec<Mutex<FxHashMap<Value, u32>>>,
}

impl Default for KeyClaims {
    fn default() -> Self {
        KeyClaims {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl KeyClaims {
    /// Claims `key` for `partition`; a key already claimed for another
    /// partition is refused with that partition.
    pub fn claim(&self, key: &Value, partition: u32) -> Result<(), u32> {
        // One lookup: most keys claimed are new, so the clone is needed
        // anyway.
        match self.shard(key).entry(key.clone()) {
            Entry::Occupied(claimed) if *claimed.get() != partition => Err(*claimed.get()),
            Entry::Occupied(_) => Ok(()),
            Entry::Vacant(unclaimed) => {
                unclaimed.insert(partition);
                Ok(())
            }
        }
    }

    /// Gives up `partition`'s claim on `key` (kept claims of another
    /// partition stay).
    pub fn release(&self, key: &Value, partition: u32) {
        let mut shard = self.shard(key);
        if shard.get(key) == Some(&partition) {
            shard.remove(key);
        }
    }

    fn shard(&self, key: &Value) -> std::sync::MutexGuard<'_, FxHashMap<Value, u32>> {
        let mut hasher = rustc_hash::FxHasher::default();
        key.hash(&mut hasher);
        // The map inside hashes with the same function, places keys by
        // the low bits and tells them apart within a probe by the top 7:
        // the shard takes the 6 bits below those, which no map of this
        // size uses. (Taking the top bits made every key of a shard share
        // most of its tag, and each probe compare keys several times over.)
        let index = (hasher.finish() >> SHARD_SHIFT) as usize % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_belongs_to_the_partition_that_claimed_it_until_released() {
        let claims = KeyClaims::default();
        let key = Value::Str("u1".into());
        assert_eq!(claims.claim(&key, 3), Ok(()));
        assert_eq!(claims.claim(&key, 3), Ok(()));
        assert_eq!(claims.claim(&key, 5), Err(3));
        // Another partition's release leaves the claim in place.
        claims.release(&key, 5);
        assert_eq!(claims.claim(&key, 5), Err(3));
        claims.release(&key, 3);
        assert_eq!(claims.claim(&key, 5), Ok(()));
    }
}
