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
//!
//! With many keys, nearly every row starts one, and a claim is a random
//! access into megabytes of claims. So a batch's keys are claimed shard by
//! shard: each shard is locked once, its keys' buckets are asked for
//! together (as a stage asks for its own, see [`super::keys`]), then the
//! keys are filed from the cache.

use super::keys::{KeyHash, KeyIndex};
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, MutexGuard};
use tideflow_connectors::Value;

/// Independent locks, so that workers claiming keys rarely wait.
const SHARDS: usize = 64;

/// Where a key's shard lies in its hash: a shard's table picks a key's
/// bucket from the hash's top bits (as many as its size needs), and only a
/// table of over 2^26 buckets would reach down to these.
const SHARD_SHIFT: u32 = 32;

/// A key a stage started or stopped keeping, with the hash the stage
/// filed it under ([`KeyHash::of`]): claims hash nothing again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedKey {
    /// The key's hash in its stage's index.
    pub hash: u64,
    pub key: Value,
    /// The partition that claims or gives up the key.
    pub partition: u32,
}

impl ClaimedKey {
    fn shard(&self) -> usize {
        (self.hash >> SHARD_SHIFT) as usize % SHARDS
    }
}

/// A key refused to the partition claiming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The key's position among those claimed together.
    pub position: usize,
    /// The partition that holds the key.
    pub holder: u32,
}

/// The partition claimed by each key kept by some worker of the process.
#[derive(Debug)]
pub struct KeyClaims {
    shards: Vec<Mutex<KeyIndex<u32>>>,
}

impl Default for KeyClaims {
    fn default() -> Self {
        KeyClaims {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl KeyClaims {
    /// Claims each key for its partition. A key already claimed for
    /// another partition is refused: the first such key in `keys`' order
    /// is returned (the others are claimed all the same).
    pub fn claim_all<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k ClaimedKey>,
    ) -> Result<(), Refusal> {
        let mut first_refused: Option<Refusal> = None;
        self.visit_by_shard(keys, |claims, position, claimed| {
            let hash = KeyHash::from_bits(claimed.hash);
            match claims.get(hash, &claimed.key) {
                Some(holder) if holder != claimed.partition => {
                    if first_refused.is_none_or(|refused| position < refused.position) {
                        first_refused = Some(Refusal { position, holder });
                    }
                }
                Some(_) => {}
                None => claims.insert(hash, claimed.key.clone(), claimed.partition),
            }
        });
        first_refused.map_or(Ok(()), Err)
    }

    /// Gives up each key's claim by its partition (claims of another
    /// partition stay).
    pub fn release_all<'k>(&self, keys: impl IntoIterator<Item = &'k ClaimedKey>) {
        self.visit_by_shard(keys, |claims, _, forgotten| {
            let hash = KeyHash::from_bits(forgotten.hash);
            if claims.get(hash, &forgotten.key) == Some(forgotten.partition) {
                claims.remove(hash, &forgotten.key);
            }
        });
    }

    /// Claims one key (see [`KeyClaims::claim_all`]); refused, the
    /// partition that holds it.
    pub fn claim(&self, claimed: &ClaimedKey) -> Result<(), u32> {
        self.claim_all([claimed]).map_err(|refused| refused.holder)
    }

    /// Gives up one key's claim (see [`KeyClaims::release_all`]).
    pub fn release(&self, forgotten: &ClaimedKey) {
        self.release_all([forgotten]);
    }

    /// Calls `visit` with each key, its position in `keys`, and its
    /// shard's claims, a shard at a time: the shard is locked once, and its
    /// keys' buckets are asked for before the first visit.
    fn visit_by_shard<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k ClaimedKey>,
        mut visit: impl FnMut(&mut KeyIndex<u32>, usize, &'k ClaimedKey),
    ) {
        let keys: Vec<&ClaimedKey> = keys.into_iter().collect();
        let Some(first) = keys.first() else {
            return;
        };
        // The positions of the keys, ordered by shard (a counting sort):
        // shard `s`'s are `by_shard[starts[s]..starts[s + 1]]`.
        let mut starts = [0; SHARDS + 1];
        for key in &keys {
            starts[key.shard() + 1] += 1;
        }
        for shard in 0..SHARDS {
            starts[shard + 1] += starts[shard];
        }
        let mut next = starts;
        let mut by_shard = vec![0; keys.len()];
        for (position, key) in keys.iter().enumerate() {
            by_shard[next[key.shard()]] = position;
            next[key.shard()] += 1;
        }
        // Starting where the batch's first key lies, workers claiming at
        // the same moment rarely walk the shards in step, each waiting on
        // the other's lock.
        for step in 0..SHARDS {
            let shard = (first.shard() + step) % SHARDS;
            let positions = &by_shard[starts[shard]..starts[shard + 1]];
            if positions.is_empty() {
                continue;
            }
            let mut claims = self.lock(shard);
            if !claims.stays_in_cache() {
                for position in positions {
                    claims.prefetch(KeyHash::from_bits(keys[*position].hash));
                }
            }
            for position in positions {
                visit(&mut claims, *position, keys[*position]);
            }
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, KeyIndex<u32>> {
        self.shards[shard]
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
                hash: crate::features::keys::KeyHash::of(&key).get(),
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

    /// Claimed together, keys spread over every shard; the refusal named
    /// is the first in the keys' order, wherever its shard lies, and the
    /// other keys are claimed all the same.
    #[test]
    fn claims_of_many_keys_name_the_first_refused() {
        let claims = KeyClaims::default();
        let key = |number: usize, partition| {
            let key = Value::Str(format!("u{number}").into());
            ClaimedKey {
                hash: KeyHash::of(&key).get(),
                key,
                partition,
            }
        };
        let held: Vec<ClaimedKey> = (0..1000).map(|number| key(number, 0)).collect();
        let shards: std::collections::BTreeSet<usize> =
            held.iter().map(ClaimedKey::shard).collect();
        assert_eq!(shards.len(), SHARDS);
        assert_eq!(claims.claim_all(&held), Ok(()));
        // Keys 7 and 3 are held by partition 0; 2000 onwards are new.
        let wanted: Vec<ClaimedKey> = [2000, 2001, 7, 2002, 3, 2003]
            .into_iter()
            .map(|number| key(number, 1))
            .collect();
        let refused = claims.claim_all(&wanted);
        assert_eq!(
            refused,
            Err(Refusal {
                position: 2,
                holder: 0
            })
        );
        assert_eq!(claims.claim(&key(2003, 2)), Err(1));
        claims.release_all(&held[..10]);
        assert_eq!(claims.claim_all(&wanted), Ok(()));
        assert_eq!(claims.claim(&key(10, 1)), Err(0));
    }
}
