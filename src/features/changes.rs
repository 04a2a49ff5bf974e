//! Incremental checkpoints of a stage: what its keys changed since the
//! last checkpoint, and applying that to the state the checkpoint before
//! holds.
//!
//! A stage over long windows holds every record of them, and a backfill
//! adds records far faster than it drops them: a checkpoint each second
//! that wrote the whole state would write the same records again and
//! again, most of a run's time spent on it. A stage instead marks the
//! slots of the keys it touches, and a checkpoint writes for each marked
//! key its running aggregates and what its record ring changed (new
//! records at the back, dropped ones at the front; see
//! `numbers::RingChange`), for the slots emptied their emptiness, and the
//! clock. A restore reads the last whole part and applies each change in
//! turn by slot; when to write a whole part again is the operator's
//! choice (see [`crate::operators`]).

use super::keys::KeyIndex;
use super::numbers::{NumericKeyChange, NumericKeyChangeRef};
use super::{FeatureState, KeyState, StageClock, StageState};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize};
use tideflow_connectors::Value;

/// The key slots a stage changed since its last checkpoint.
#[derive(Clone, Debug, Default)]
pub(super) struct ChangeTracking {
    /// One bit per slot.
    changed: Vec<u64>,
    /// Bits set.
    count: usize,
    /// Records the stage held at its last whole checkpoint, to estimate
    /// what a whole part would take now.
    records_at_whole: usize,
}

impl ChangeTracking {
    /// Marks `slot` changed.
    #[inline]
    pub(super) fn mark(&mut self, slot: usize) {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if word >= self.changed.len() {
            self.changed.resize(word + 1, 0);
        }
        if self.changed[word] & bit == 0 {
            self.changed[word] |= bit;
            self.count += 1;
        }
    }

    fn is_changed(&self, slot: usize) -> bool {
        self.changed
            .get(slot / 64)
            .is_some_and(|word| word & (1 << (slot % 64)) != 0)
    }

    fn changed_slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.changed.iter().enumerate().flat_map(|(index, word)| {
            (0..64)
                .filter(move |bit| word & (1 << bit) != 0)
                .map(move |bit| index * 64 + bit)
        })
    }
}

/// What a stage changed since its last checkpoint, borrowed from it to
/// encode: its clock, each changed key by slot, and the slots emptied.
#[derive(Debug, Serialize)]
pub struct StageChangesRef<'a> {
    partition_newest: &'a [i64],
    stage_newest: i64,
    held: HeldChanges<'a>,
    vacated: Vec<u32>,
}

/// The changed keys a stage holds, each with its slot.
#[derive(Debug)]
struct HeldChanges<'a> {
    state: &'a StageState,
    tracking: &'a ChangeTracking,
    count: usize,
}

/// One changed key, borrowed.
#[derive(Debug, Serialize)]
struct KeyChangeRef<'a> {
    key: &'a Value,
    partition: u32,
    newest: i64,
    numbers: NumericKeyChangeRef<'a>,
    others: &'a [FeatureState],
}

impl Serialize for HeldChanges<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let state = self.state;
        let width = state.others.len();
        let mut sequence = serializer.serialize_seq(Some(self.count))?;
        let mut written = 0;
        let mut failed = None;
        for_each_key(&state.keys, |key, slot, partition| {
            if failed.is_some() || !self.tracking.is_changed(slot) {
                return;
            }
            written += 1;
            let change = KeyChangeRef {
                key,
                partition,
                newest: state.newest[slot],
                numbers: state.numbers.change_of(slot),
                others: &state.other_states[slot * width..(slot + 1) * width],
            };
            if let Err(error) = sequence.serialize_element(&(slot as u32, change)) {
                failed = Some(error);
            }
        });
        if let Some(error) = failed {
            return Err(error);
        }
        if written != self.count {
            // The count went out first: a different number of keys would
            // make bytes no restore reads.
            return Err(serde::ser::Error::custom(format!(
                "{written} changed keys held, {} counted",
                self.count
            )));
        }
        sequence.end()
    }
}

/// Calls `visit` with each key held, its slot and its partition.
fn for_each_key(keys: &KeyIndex, mut visit: impl FnMut(&Value, usize, u32)) {
    keys.for_each(|key, entry| visit(key, entry.slot(), entry.partition));
}

/// A [`StageChangesRef`] read back.
#[derive(Debug, Deserialize)]
pub struct StageChanges {
    partition_newest: Vec<i64>,
    stage_newest: i64,
    held: Vec<(u32, KeyChange)>,
    vacated: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct KeyChange {
    key: Value,
    partition: u32,
    newest: i64,
    numbers: NumericKeyChange,
    others: Vec<FeatureState>,
}

/// A stage's keys by the slots the stage that wrote them kept them in:
/// what its changes apply to.
#[derive(Debug, Default)]
pub struct SlottedKeys {
    clock: StageClock,
    slots: Vec<Option<KeyState>>,
}

impl SlottedKeys {
    /// Applies the changes of the next checkpoint.
    pub fn apply(&mut self, changes: StageChanges) -> Result<(), String> {
        self.clock = StageClock {
            partition_newest: changes.partition_newest,
            stage_newest: changes.stage_newest,
        };
        for slot in changes.vacated {
            if let Some(held) = self.slots.get_mut(slot as usize) {
                *held = None;
            }
        }
        for (slot, change) in changes.held {
            let slot = slot as usize;
            if slot >= self.slots.len() {
                self.slots.resize_with(slot + 1, || None);
            }
            let before = self.slots[slot].take();
            let numbers = change
                .numbers
                .apply(before.as_ref().map(|key| &key.numbers))
                .map_err(|error| {
                    format!(
                        "key {} in slot {slot}: {error}",
                        super::render_key(&change.key)
                    )
                })?;
            self.slots[slot] = Some(KeyState {
                key: change.key,
                partition: change.partition,
                newest: change.newest,
                numbers,
                others: change.others,
            });
        }
        Ok(())
    }

    /// The stage's clock and every key's state.
    pub fn into_keys(self) -> (StageClock, Vec<KeyState>) {
        (self.clock, self.slots.into_iter().flatten().collect())
    }
}

impl StageState {
    /// Tracks from now on which keys change, so that a checkpoint can
    /// write only those ([`StageState::changes`]).
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(ChangeTracking::default);
    }

    /// What changed since the last [`StageState::checkpointed`]: every
    /// key when changes are not tracked.
    pub fn changes(&self) -> Option<StageChangesRef<'_>> {
        let tracking = self.changes.as_ref()?;
        let vacated: Vec<u32> = self
            .free_slots
            .iter()
            .filter(|slot| tracking.is_changed(**slot))
            .map(|slot| *slot as u32)
            .collect();
        Some(StageChangesRef {
            partition_newest: &self.partition_newest,
            stage_newest: self.stage_newest,
            held: HeldChanges {
                state: self,
                tracking,
                count: tracking.count - vacated.len(),
            },
            vacated,
        })
    }

    /// Records that a checkpoint now holds the stage as it is: whole, or
    /// its changes since the last one.
    pub fn checkpointed(&mut self, whole: bool) {
        let Some(tracking) = self.changes.as_mut() else {
            return;
        };
        if whole {
            self.numbers.mark_all_kept();
            tracking.records_at_whole = self.numbers.held_records().0;
        } else {
            for slot in tracking.changed_slots() {
                self.numbers.mark_kept(slot);
            }
        }
        tracking.changed.fill(0);
        tracking.count = 0;
    }

    /// How many bytes of records the stage holds more (or fewer) than at
    /// its last whole checkpoint: what a whole part would take beyond
    /// that one's size.
    pub fn growth_since_whole(&self) -> i64 {
        let (held, bytes) = self.numbers.held_records();
        let at_whole = self
            .changes
            .as_ref()
            .map_or(0, |tracking| tracking.records_at_whole);
        (held as i64 - at_whole as i64) * bytes as i64
    }

    /// The stage's keys by slot, to apply changes to.
    pub fn into_slotted(mut self) -> SlottedKeys {
        let mut held = Vec::with_capacity(self.keys.len());
        for_each_key(&self.keys, |key, slot, partition| {
            held.push((key.clone(), slot, partition));
        });
        let width = self.others.len();
        let mut slots: Vec<Option<KeyState>> = Vec::new();
        slots.resize_with(self.newest.len(), || None);
        for (key, slot, partition) in held {
            slots[slot] = Some(KeyState {
                key,
                partition,
                newest: self.newest[slot],
                numbers: self.numbers.take_key(slot),
                others: self.other_states[slot * width..(slot + 1) * width].to_vec(),
            });
        }
        SlottedKeys {
            clock: StageClock {
                partition_newest: self.partition_newest,
                stage_newest: self.stage_newest,
            },
            slots,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Batch;
    use crate::features::{Agg, StagePlan, WindowFeature};
    use crate::row::Row;

    const MINUTE: i64 = 60_000;
    const BOUND_MS: i64 = MINUTE;

    fn plan() -> StagePlan {
        let feature = |slot, agg| WindowFeature {
            name: format!("f{slot}"),
            slot,
            agg,
            field: Some(1),
            window: Some(10 * MINUTE),
        };
        StagePlan {
            key_name: "user".into(),
            key_slot: 0,
            source_keyed: true,
            features: vec![feature(2, Agg::Sum), feature(3, Agg::Max)],
            key_ttl_ms: None,
        }
    }

    /// Applies records (key, minute, amount) and returns the features.
    fn apply(state: &mut StageState, records: &[(&str, i64, f64)]) -> Vec<Vec<Value>> {
        let rows = records
            .iter()
            .enumerate()
            .map(|(offset, (key, minute, amount))| Row {
                partition: 0,
                offset: offset as u64,
                time: minute * MINUTE,
                values: vec![
                    Value::Str((*key).into()),
                    Value::F64(*amount),
                    Value::Null,
                    Value::Null,
                ],
                warm_up: false,
            })
            .collect();
        let mut batch = Batch::from_rows(rows);
        state.apply_batch(&plan(), BOUND_MS, &mut batch).unwrap();
        batch
            .into_rows()
            .into_iter()
            .map(|row| row.values[2..].to_vec())
            .collect()
    }

    /// The bytes of each key's state, read back once so that rings lie
    /// alike, in order.
    fn each_encoded(keys: &[KeyState]) -> Vec<Vec<u8>> {
        let mut encoded: Vec<Vec<u8>> = keys
            .iter()
            .map(|key| {
                let read: KeyState =
                    crate::checkpoint::decode(&crate::checkpoint::encode(key)).unwrap();
                crate::checkpoint::encode(&read)
            })
            .collect();
        encoded.sort();
        encoded
    }

    /// The clock and keys a whole part and parts of changes hold.
    fn restore(whole: &[u8], changes: &[&[u8]]) -> (StageClock, Vec<KeyState>) {
        let mut slotted = crate::checkpoint::decode::<StageState>(whole)
            .unwrap()
            .into_slotted();
        for bytes in changes {
            slotted
                .apply(crate::checkpoint::decode(bytes).unwrap())
                .unwrap();
        }
        slotted.into_keys()
    }

    fn assert_same(restored: (StageClock, Vec<KeyState>), live: (StageClock, Vec<KeyState>)) {
        assert_eq!(each_encoded(&restored.1), each_encoded(&live.1));
        assert_eq!(
            crate::checkpoint::encode(&restored.0),
            crate::checkpoint::encode(&live.0)
        );
    }

    /// A sweep forgets exactly the keys whose newest record is at least
    /// the longest window and the bound behind their partition's newest
    /// (10 + 1 minutes here), and nothing while none is.
    #[test]
    fn a_sweep_forgets_exactly_the_keys_idle_past_the_window_and_bound() {
        let mut state = StageState::new(&plan());
        apply(
            &mut state,
            &[
                ("old", 0, 1.0),
                ("edge", 9, 1.0),
                ("near", 10, 1.0),
                ("a", 10, 1.0),
            ],
        );
        state.evict_idle_keys(&plan(), BOUND_MS);
        assert_eq!(state.key_count(), 4, "none is idle at minute 10");
        // At minute 11, `old` (minute 0) is exactly 11 minutes behind.
        apply(&mut state, &[("a", 11, 1.0)]);
        state.evict_idle_keys(&plan(), BOUND_MS);
        assert_eq!(state.key_count(), 3, "old is idle at minute 11");
        apply(&mut state, &[("a", 20, 1.0)]);
        state.evict_idle_keys(&plan(), BOUND_MS);
        let mut kept: Vec<String> = state
            .into_keys()
            .1
            .iter()
            .map(|key| super::super::render_key(&key.key))
            .collect();
        kept.sort();
        assert_eq!(kept, ["'a'", "'near'"]);
    }

    /// A whole part, then two parts of changes (records in order and out
    /// of it, records dropped from the front, keys forgotten, a new key in
    /// a freed slot) restore to the state they were taken from, which then
    /// computes what the state that went on computes.
    #[test]
    fn changes_on_a_whole_part_restore_the_state_exactly() {
        let mut live = StageState::new(&plan());
        live.track_changes();
        let a_minute = |key, minute| (key, minute, minute as f64 + 0.25);
        let mut start: Vec<_> = (0..6)
            .flat_map(|minute| [a_minute("a", minute), a_minute("b", minute)])
            .collect();
        start.extend([a_minute("c", 0), a_minute("c", 1)]);
        apply(&mut live, &start);
        let whole = crate::checkpoint::encode(&live);
        live.checkpointed(true);

        // `a` goes on in order, and its first two records leave the front
        // of its ring (older than the window and the bound); `b` gets a
        // record among those the checkpoint holds, then one in order; `c`
        // is left idle and forgotten, and `d` is new.
        let mut next: Vec<_> = (6..13).map(|minute| a_minute("a", minute)).collect();
        next.extend([("b", 3, 100.5), a_minute("b", 12), a_minute("d", 12)]);
        apply(&mut live, &next);
        live.evict_idle_keys(&plan(), BOUND_MS);
        let first = crate::checkpoint::encode(&live.changes().unwrap());
        live.checkpointed(false);
        let after_first = live.clone().into_keys();
        assert_same(restore(&whole, &[&first]), after_first);

        // A new key takes the forgotten key's slot.
        apply(&mut live, &[a_minute("e", 13), a_minute("a", 13)]);
        let second = crate::checkpoint::encode(&live.changes().unwrap());
        live.checkpointed(false);
        assert!(
            second.len() < whole.len() / 2,
            "{} {}",
            second.len(),
            whole.len()
        );

        let (clock, keys) = restore(&whole, &[&first, &second]);
        let mut names: Vec<String> = keys.iter().map(|key| format!("{:?}", key.key)).collect();
        names.sort();
        assert_eq!(
            names,
            ["Str(\"a\")", "Str(\"b\")", "Str(\"d\")", "Str(\"e\")"]
        );
        assert_same((clock.clone(), keys.clone()), live.clone().into_keys());
        let mut restored = StageState::from_keys(&plan(), clock, keys);
        let later = [
            a_minute("a", 15),
            ("a", 14, 7.5),
            a_minute("b", 16),
            a_minute("d", 17),
        ];
        assert_eq!(apply(&mut restored, &later), apply(&mut live, &later));
    }

    /// A change that does not fit the ring it is applied to (another
    /// checkpoint's, or damaged past its checksum) is refused.
    #[test]
    fn a_change_to_a_ring_it_does_not_fit_is_refused() {
        let mut live = StageState::new(&plan());
        live.track_changes();
        apply(&mut live, &[("a", 1, 1.0), ("a", 2, 2.0)]);
        live.checkpointed(true);
        apply(&mut live, &[("a", 3, 3.0)]);
        let change = crate::checkpoint::encode(&live.changes().unwrap());
        // Applied to an empty stage rather than the one it changed.
        let mut slotted = StageState::new(&plan()).into_slotted();
        let error = slotted
            .apply(crate::checkpoint::decode(&change).unwrap())
            .unwrap_err();
        assert!(error.contains("does not fit a ring of 0"), "{error}");
    }
}
