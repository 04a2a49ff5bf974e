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

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Mutex;
use tideflow_connectors::Value;

/// Independent locks, so that workers claiming keys rarely wait.
const SHARDS: usize = 64;

/// Where the shard's bits start in a key's hash: just below the 7 top
/// bits hashbrown keeps as a key's tag.
const SHARD_SHIFT: u32 = 64 - 7 - SHARDS.trailing_zeros();

/// A key a stage started or stopped keeping, with the hash the stage
/// filed it under ([`super::keys::KeyIndex::hash`]): claims hash nothing
/// again, neither to find a key's shard nor inside the shard's map, nor
/// when the map grows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedKey {
    /// The key's hash in its stage's index.
    pub hash: u64,
    pub key: Value,
    /// The partition that claims or gives up the key.
    pub partition: u32,
}

/// A key as the shards' maps hold it: equal keys have equal hashes, and
/// the hash is the map's.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HashedKey {
    hash: u64,
    key: Value,
}

impl Hash for HashedKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Hands a [`HashedKey`]'s hash to the map as it is.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else still gets a hash.
        for byte in bytes {
            self.0 = self.0.rotate_left(5) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

type Shard = HashMap<HashedKey, u32, BuildHasherDefault<PassThrough>>;

/// The partition claimed by each key kept by some worker of the process.
#[derive(Debug)]
pub struct KeyClaims {
    shards: Vec<Mutex<Shard>>,
}

impl Default for KeyClaims {
    fn default() -> Self {
        KeyClaims {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl KeyClaims {
    /// Claims `claimed.key` for `claimed.partition`; a key already
    /// claimed for another partition is refused with that partition.
    pub fn claim(&self, claimed: &ClaimedKey) -> Result<(), u32> {
        // One lookup: most keys claimed are new, so the clone is needed
        // anyway.
        match self.shard(claimed.hash).entry(HashedKey {
            hash: claimed.hash,
            key: claimed.key.clone(),
        }) {
            Entry::Occupied(held) if *held.get() != claimed.partition => Err(*held.get()),
            Entry::Occupied(_) => Ok(()),
            Entry::Vacant(unclaimed) => {
                unclaimed.insert(claimed.partition);
                Ok(())
            }
        }
    }

    /// Gives up `forgotten.partition`'s claim on `forgotten.key` (kept
    /// claims of another partition stay).
    pub fn release(&self, forgotten: &ClaimedKey) {
        let mut shard = self.shard(forgotten.hash);
        if let Entry::Occupied(held) = shard.entry(HashedKey {
            hash: forgotten.hash,
            key: forgotten.key.clone(),
        }) && *held.get() == forgotten.partition
        {
            held.remove();
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The map inside places keys by the hash's low bits and tells them
        // apart within a probe by the top 7: the shard takes the 6 bits
        // below those, which no map of this size uses. (Taking the top
        // bits made every key of a shard share most of its tag, and each
        // probe compare keys several times over.)
        let index = (hash >> SHARD_SHIFT) as usize % SHARDS;
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
        let key = |partition| {
            let key = Value::Str("u1".into());
            ClaimedKey {
                hash: crate::features::keys::KeyIndex::hash(&key).get(),
                key,
                partition,
            }
        };
        assert_eq!(claims.claim(&key(3)), Ok(()));
        assert_eq!(claims.claim(&key(3)), Ok(()));
        assert_eq!(claims.claim(&key(5)), Err(3));
        // Another partition's release leaves the claim in place.
        claims.release(&key(5));
        assert_eq!(claims.claim(&key(5)), Err(3));
        claims.release(&key(3));
        assert_eq!(claims.claim(&key(5)), Ok(()));
    }
}
