//! Features: trailing-window aggregates grouped by key, and row
//! expressions.
//!
//! A *stage* computes all the window features that share a key. The stage
//! keyed by `source.key` sees each key's records in offset order as they
//! arrive; every other stage sees its records in (event time, partition,
//! offset) order, released by the watermark (see [`crate::ordering`]). The
//! state here is plain and serializable; the timely operators in
//! [`crate::operators`] only feed it rows.

pub mod changes;
pub mod claims;
pub mod exact;
pub mod expr;
pub mod keys;
pub mod numbers;
pub mod window;

use crate::batch::{Batch, Cells, RowCells};
use crate::cache;
use crate::row::Row;
use claims::ClaimedKey;
use keys::{KeyEntry, KeyHash, KeyIndex};
use numbers::{NumericKey, NumericState, Prefetch};
use serde::{Deserialize, Serialize};
use tideflow_connectors::Value;
pub use window::{Agg, FeatureState, WindowMs};

/// A window feature, resolved to column slots.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowFeature {
    /// Output column name.
    pub name: String,
    /// Slot the value is written to.
    pub slot: usize,
    /// The aggregation.
    pub agg: Agg,
    /// Slot of the aggregated field; `None` counts records.
    pub field: Option<usize>,
    /// Window length in ms; `None` is lifetime.
    pub window: WindowMs,
}

/// All window features of one key.
#[derive(Clone, Debug, PartialEq)]
pub struct StagePlan {
    /// Name of the key field.
    pub key_name: String,
    /// Slot of the key field.
    pub key_slot: usize,
    /// Whether the key is `source.key` (offset order, no watermark wait).
    pub source_keyed: bool,
    /// The features, in spec order.
    pub features: Vec<WindowFeature>,
    /// Event time (ms) without a record after which a key's state expires:
    /// its next record starts it afresh. `None`: never.
    pub key_ttl_ms: Option<i64>,
}

/// A key seen in two partitions of a source keyed by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyConflict {
    /// The key, rendered.
    pub key: String,
    /// The partition that had it first.
    pub first: u32,
    /// The other partition.
    pub second: u32,
    /// The offset of the record in `second`.
    pub offset: u64,
}

/// Per-key state of one stage: what a worker keeps for the keys routed to it.
///
/// Each key has a slot. Its numeric window features live in a
/// [`NumericState`] (one record list per key, shared by the features);
/// `distinct_count`, `prev` and `since_prev` keep a [`FeatureState`] each,
/// in one flat vector, `others.len()` per key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageState {
    keys: KeyIndex,
    /// Newest event time per key slot (`i64::MIN` before its first record).
    newest: Vec<i64>,
    numbers: NumericState,
    /// Stage indices of the features that keep a [`FeatureState`].
    others: Vec<usize>,
    other_states: Vec<FeatureState>,
    /// Slots freed by evicted keys, reused by new keys.
    free_slots: Vec<usize>,
    /// Newest event time seen per source partition, and over all rows.
    partition_newest: Vec<i64>,
    stage_newest: i64,
    rows_since_sweep: usize,
    /// Keys started and forgotten since [`StageState::take_key_changes`],
    /// kept only once [`StageState::track_key_changes`] was called.
    key_changes: Option<KeyChanges>,
    /// The slots changed since the last checkpoint, tracked only once
    /// [`StageState::track_changes`] was called; a checkpoint writes
    /// them, not what it wrote before.
    #[serde(skip)]
    changes: Option<changes::ChangeTracking>,
}

/// One key's whole state in a stage, on its own: what moves between
/// workers when a checkpoint is restored onto another number of them
/// (see [`StageState::regroup`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyState {
    /// The key.
    pub key: Value,
    /// The partition it was first seen in (a source-keyed stage's key
    /// lives in it).
    pub partition: u32,
    newest: i64,
    numbers: NumericKey,
    others: Vec<FeatureState>,
}

/// What a stage knows of event time apart from its keys: the newest time
/// per partition and over all its rows, which decide when idle keys go.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageClock {
    partition_newest: Vec<i64>,
    stage_newest: i64,
}

impl StageClock {
    /// The clock of stages that together saw what each saw.
    fn merge(&mut self, other: &StageClock) {
        if other.partition_newest.len() > self.partition_newest.len() {
            self.partition_newest
                .resize(other.partition_newest.len(), i64::MIN);
        }
        for (mine, theirs) in self
            .partition_newest
            .iter_mut()
            .zip(&other.partition_newest)
        {
            *mine = (*mine).max(*theirs);
        }
        self.stage_newest = self.stage_newest.max(other.stage_newest);
    }
}

/// Keys a stage started keeping (with the partition and offset of their
/// first record) and forgot (with their partition).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeyChanges {
    /// Keys started, each with the offset of its first row.
    pub started: Vec<(ClaimedKey, u64)>,
    /// Keys forgotten.
    pub forgotten: Vec<ClaimedKey>,
}

/// Up to this many bytes of key headers (see
/// [`StageState::header_bytes_per_key`]), a stage's headers stay in cache
/// and prefetching them only costs instructions (features bench workload,
/// one worker, CPU time with the headers prefetched against without, best
/// of five interleaved runs: 1.04 and 1.11 at 1k keys, 290 KB of headers;
/// 1.00 at 3k keys; 0.97 at 6k keys).
const HEADERS_CACHED_BYTES: usize = 1 << 20;

/// Rows between sweeps for idle keys, at least (more when there are more
/// keys, so a sweep costs O(1) per row).
const SWEEP_EVERY_ROWS: usize = 4096;

impl StageState {
    /// Empty state for a stage.
    pub fn new(plan: &StagePlan) -> Self {
        StageState {
            keys: KeyIndex::default(),
            newest: Vec::new(),
            numbers: NumericState::new(&plan.features),
            others: (0..plan.features.len())
                .filter(|index| !numbers::is_numeric(plan.features[*index].agg))
                .collect(),
            other_states: Vec::new(),
            free_slots: Vec::new(),
            partition_newest: Vec::new(),
            stage_newest: i64::MIN,
            rows_since_sweep: 0,
            key_changes: None,
            changes: None,
        }
    }

    /// Records from now on the keys started and forgotten (for claims of
    /// keys across workers; see [`claims`]).
    pub fn track_key_changes(&mut self) {
        self.key_changes.get_or_insert_with(KeyChanges::default);
    }

    /// The keys started and forgotten since the last call (nothing unless
    /// tracked).
    pub fn take_key_changes(&mut self) -> KeyChanges {
        self.key_changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Computes the stage's features for `row` (which must come in the
    /// stage's order) and writes them into the row's slots.
    pub fn apply(
        &mut self,
        plan: &StagePlan,
        bound_ms: i64,
        row: &mut Row,
    ) -> Result<(), KeyConflict> {
        let mut batch = Batch::from_rows(vec![std::mem::take(row)]);
        let applied = self.apply_batch(plan, bound_ms, &mut batch);
        if let Some(computed) = batch.into_rows().pop() {
            *row = computed;
        }
        applied
    }

    /// Computes the stage's features for a batch of rows, in order, and
    /// adds them to the batch as columns.
    ///
    /// With many keys, per-key state is scattered over memory and the
    /// work is bound by cache misses. A chunk of rows at a time, the keys
    /// are hashed and their buckets in the key index asked for (once the
    /// index outgrows the cache), the keys are looked up, then tight loops
    /// ask for the state the chunk's rows
    /// will touch (the key headers and newest times, then the records they
    /// point at), so that many fetches are in flight at once, and the rows
    /// are computed from the cache. A chunk is small enough that its rows
    /// and their state stay in cache between the passes. The records are
    /// asked for whatever the number of keys (features bench workload, one
    /// worker, CPU time without the passes against with both, best of five
    /// interleaved runs: 1.01 at 1k keys, 1.04 at 3k, 1.36 at 6k, 1.62 at
    /// 100k); the headers only once they outgrow the cache (over 1 MiB).
    pub fn apply_batch(
        &mut self,
        plan: &StagePlan,
        bound_ms: i64,
        batch: &mut Batch,
    ) -> Result<(), KeyConflict> {
        const CHUNK_ROWS: usize = 128;
        // The key and fields are read where they are held: in the batch's
        // columns (as decoded) or in the rows (after an exchange).
        let rows = batch.rows();
        let fields = batch.readers();
        let key_cells = batch.cells(plan.key_slot);
        let mut columns: Vec<Cells> = plan
            .features
            .iter()
            .map(|feature| Cells::for_type(feature.agg.output_type(), rows.len()))
            .collect();
        let (mut keys, mut hashes, mut slots) = (
            Vec::with_capacity(CHUNK_ROWS),
            Vec::with_capacity(CHUNK_ROWS),
            Vec::with_capacity(CHUNK_ROWS),
        );
        for (chunk, rows) in rows.chunks(CHUNK_ROWS).enumerate() {
            let first = chunk * CHUNK_ROWS;
            keys.clear();
            keys.extend((first..first + rows.len()).map(|index| key_cells.value(index)));
            hashes.clear();
            hashes.extend(keys.iter().map(|key| KeyHash::of(key)));
            // Like the headers (see `read_ahead`), buckets that stay in
            // cache anyway are not asked for.
            if !self.keys.stays_in_cache() {
                for hash in &hashes {
                    self.keys.prefetch(*hash);
                }
            }
            slots.clear();
            for ((row, key), hash) in rows.iter().zip(&keys).zip(&hashes) {
                slots.push(self.slot_for(plan, row, key, *hash)?);
            }
            self.read_ahead(&slots);
            for (index, (row, slot)) in rows.iter().zip(&slots).enumerate() {
                if self.has_expired(plan, *slot, row.time) {
                    self.reset_slot(plan, *slot);
                }
                if let Some(changes) = &mut self.changes {
                    changes.mark(*slot);
                }
                let newest = self.newest[*slot].max(row.time);
                self.newest[*slot] = newest;
                let row_fields = fields.row(first + index);
                self.numbers
                    .update(*slot, bound_ms, newest, row.time, &row_fields, &mut columns);
                self.update_others(plan, bound_ms, *slot, row.time, &row_fields, &mut columns);
                self.observe(row.partition, row.time);
            }
        }
        let count = rows.len();
        for (cells, feature) in columns.into_iter().zip(&plan.features) {
            batch.set_cells(feature.slot, cells);
        }
        self.rows_since_sweep += count;
        if self.rows_since_sweep >= self.keys.len().max(SWEEP_EVERY_ROWS) {
            self.rows_since_sweep = 0;
            self.evict_idle_keys(plan, bound_ms);
        }
        Ok(())
    }

    /// Whether the key in `slot` has gone `key_ttl` of event time without
    /// a record before one at `time`: decided by the records alone, so the
    /// same whenever sweeps for idle keys happen (a sweep forgets only keys
    /// whose next record would find them expired).
    #[inline]
    fn has_expired(&self, plan: &StagePlan, slot: usize, time: i64) -> bool {
        let newest = self.newest[slot];
        plan.key_ttl_ms
            .is_some_and(|ttl| newest != i64::MIN && time.saturating_sub(newest) >= ttl)
    }

    /// Asks for the state the rows of a chunk will touch, in two passes
    /// (headers, then the records they point at), so that the fetches
    /// overlap rather than come one row at a time. Headers that stay in
    /// cache anyway are not asked for.
    fn read_ahead(&self, slots: &[usize]) {
        let width = self.others.len();
        let headers_bytes = self.keys.len() * self.header_bytes_per_key();
        for slot in slots
            .iter()
            .filter(|_| headers_bytes > HEADERS_CACHED_BYTES)
        {
            cache::prefetch(&self.newest[*slot]);
            cache::prefetch_all(&self.other_states[slot * width..(slot + 1) * width]);
            self.numbers.prefetch(*slot, Prefetch::Headers);
        }
        for slot in slots {
            for state in &self.other_states[slot * width..(slot + 1) * width] {
                state.prefetch_entries();
            }
            self.numbers.prefetch(*slot, Prefetch::Records);
        }
    }

    /// Bytes of fixed-size state per key: its newest time and the headers
    /// of its features' state.
    fn header_bytes_per_key(&self) -> usize {
        std::mem::size_of::<i64>()
            + self.others.len() * std::mem::size_of::<FeatureState>()
            + self.numbers.header_bytes_per_key()
    }

    fn update_others(
        &mut self,
        plan: &StagePlan,
        bound_ms: i64,
        slot: usize,
        time: i64,
        fields: &RowCells<'_, '_>,
        columns: &mut [Cells],
    ) {
        let width = self.others.len();
        let states = &mut self.other_states[slot * width..(slot + 1) * width];
        for (index, state) in self.others.iter().zip(states) {
            let feature = &plan.features[*index];
            let value = feature.field.map(|slot| fields.value(slot));
            columns[*index].push(state.update(
                feature.agg,
                feature.window,
                bound_ms,
                time,
                value.as_deref(),
            ));
        }
    }

    fn observe(&mut self, partition: u32, time: i64) {
        let index = partition as usize;
        if index >= self.partition_newest.len() {
            self.partition_newest.resize(index + 1, i64::MIN);
        }
        self.partition_newest[index] = self.partition_newest[index].max(time);
        self.stage_newest = self.stage_newest.max(time);
    }

    /// Drops keys whose every window is empty and will stay empty, or that
    /// have expired (`key_ttl`): keeping them would let memory grow with
    /// the number of keys ever seen rather than with the windows. A stage
    /// with lifetime, `prev` or `since_prev` features forgets keys only
    /// with a `key_ttl`.
    ///
    /// A key is idle when its newest record is more than the longest window
    /// plus the bound behind what any later record of it can carry: its
    /// partition's newest time (offset-ordered stages, where a key lives in
    /// one partition) or the stage's newest time (event-time-ordered stages,
    /// whose rows arrive in event-time order).
    pub fn evict_idle_keys(&mut self, plan: &StagePlan, bound_ms: i64) {
        let Some(longest) = longest_finite_window(plan).or(plan.key_ttl_ms) else {
            return;
        };
        let StageState {
            keys,
            newest,
            partition_newest,
            stage_newest,
            key_changes,
            ..
        } = self;
        // Most sweeps find no key idle (none does in a backfill shorter
        // than its windows). One pass over the newest times, in slot
        // order, says so without walking the key table, whose buckets lie
        // in megabytes and each read its key's newest time from anywhere.
        // A free slot's newest time is `i64::MIN`; a key's is its last
        // record's.
        let latest = if plan.source_keyed {
            partition_newest.iter().copied().max().unwrap_or(i64::MIN)
        } else {
            *stage_newest
        };
        let latest_horizon = latest.saturating_sub(longest).saturating_sub(bound_ms);
        if !newest
            .iter()
            .any(|time| *time != i64::MIN && *time <= latest_horizon)
        {
            return;
        }
        let mut evicted = Vec::new();
        keys.retain(|key, entry| {
            let reference = if plan.source_keyed {
                partition_newest
                    .get(entry.partition as usize)
                    .copied()
                    .unwrap_or(i64::MIN)
            } else {
                *stage_newest
            };
            let horizon = reference.saturating_sub(longest).saturating_sub(bound_ms);
            let idle = newest[entry.slot()] <= horizon;
            if idle {
                evicted.push(entry.slot());
                if let Some(changes) = key_changes {
                    changes.forgotten.push(ClaimedKey {
                        hash: KeyHash::of(key).get(),
                        key: key.clone(),
                        partition: entry.partition,
                    });
                }
            }
            !idle
        });
        // The evicted keys' state has long left the cache: asked for a
        // chunk at a time, its fetches overlap.
        for chunk in evicted.chunks(64) {
            for slot in chunk {
                self.numbers.prefetch(*slot, Prefetch::Headers);
            }
            for slot in chunk {
                self.reset_slot(plan, *slot);
                self.free_slots.push(*slot);
            }
        }
    }

    /// Fresh state in `slot`: a new slot at the end, or a freed one.
    fn reset_slot(&mut self, plan: &StagePlan, slot: usize) {
        if let Some(changes) = &mut self.changes {
            changes.mark(slot);
        }
        let fresh = self
            .others
            .iter()
            .map(|index| FeatureState::new(plan.features[*index].agg));
        let width = self.others.len();
        if slot == self.newest.len() {
            self.newest.push(i64::MIN);
            self.other_states.extend(fresh);
        } else {
            self.newest[slot] = i64::MIN;
            for (state, fresh) in self.other_states[slot * width..(slot + 1) * width]
                .iter_mut()
                .zip(fresh)
            {
                *state = fresh;
            }
        }
        self.numbers.reset(slot);
    }

    /// The key's slot, with fresh state on first sight; a key of a
    /// source-keyed stage seen in a second partition is a conflict.
    fn slot_for(
        &mut self,
        plan: &StagePlan,
        row: &Row,
        key: &Value,
        hash: KeyHash,
    ) -> Result<usize, KeyConflict> {
        let entry = match self.keys.get(hash, key) {
            Some(entry) => entry,
            None => {
                let slot = self.free_slots.pop().unwrap_or(self.newest.len());
                if slot == self.newest.len() {
                    self.reset_slot(plan, slot);
                }
                let entry = KeyEntry::new(slot, row.partition);
                self.keys.insert(hash, key.clone(), entry);
                if let Some(changes) = &mut self.key_changes {
                    let started = ClaimedKey {
                        hash: hash.get(),
                        key: key.clone(),
                        partition: row.partition,
                    };
                    changes.started.push((started, row.offset));
                }
                entry
            }
        };
        if plan.source_keyed && entry.partition != row.partition {
            return Err(KeyConflict {
                key: render_key(key),
                first: entry.partition,
                second: row.partition,
                offset: row.offset,
            });
        }
        Ok(entry.slot())
    }

    /// Number of keys held.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Records every key held as started, so that the next
    /// [`StageState::take_key_changes`] claims them: a stage restored from
    /// a checkpoint claims the keys it brought.
    pub fn restart_key_claims(&mut self) {
        let mut started = Vec::new();
        self.keys.retain(|key, entry| {
            started.push((
                ClaimedKey {
                    hash: KeyHash::of(key).get(),
                    key: key.clone(),
                    partition: entry.partition,
                },
                0,
            ));
            true
        });
        self.key_changes
            .get_or_insert_with(KeyChanges::default)
            .started
            .extend(started);
    }

    /// The stage's clock and each key's state, apart.
    pub fn into_keys(self) -> (StageClock, Vec<KeyState>) {
        self.into_slotted().into_keys()
    }

    /// A stage holding these keys, with this clock.
    pub fn from_keys(plan: &StagePlan, clock: StageClock, keys: Vec<KeyState>) -> Self {
        let mut state = StageState::new(plan);
        state.partition_newest = clock.partition_newest;
        state.stage_newest = clock.stage_newest;
        let width = state.others.len();
        state.keys.reserve(keys.len());
        state.numbers.reserve(keys.len());
        state.newest.reserve(keys.len());
        state.other_states.reserve(keys.len() * width);
        for (slot, key) in keys.into_iter().enumerate() {
            state.reset_slot(plan, slot);
            state.newest[slot] = key.newest;
            state.numbers.put_key(slot, key.numbers);
            state.other_states[slot * width..(slot + 1) * width].clone_from_slice(&key.others);
            let hash = KeyHash::of(&key.key);
            state
                .keys
                .insert(hash, key.key, KeyEntry::new(slot, key.partition));
        }
        state
    }

    /// The states of `parts` workers made from the states of some other
    /// number of workers (each its clock and keys, as
    /// [`StageState::into_keys`] gives them): each key goes to the part
    /// `route` names, and every part gets the clock of all of them
    /// together. Features then compute exactly what they would have on
    /// the old workers.
    pub fn regroup(
        plan: &StagePlan,
        states: Vec<(StageClock, Vec<KeyState>)>,
        parts: usize,
        route: impl Fn(&KeyState) -> usize,
    ) -> Vec<StageState> {
        let mut clock = StageClock {
            stage_newest: i64::MIN,
            ..StageClock::default()
        };
        // Each part's share of the keys, room made for at once.
        let share = states.iter().map(|(_, keys)| keys.len()).sum::<usize>() / parts.max(1);
        let mut routed: Vec<Vec<KeyState>> = (0..parts)
            .map(|_| Vec::with_capacity(share + share / 8))
            .collect();
        for (theirs, keys) in states {
            clock.merge(&theirs);
            for key in keys {
                routed[route(&key) % parts].push(key);
            }
        }
        routed
            .into_iter()
            .map(|keys| StageState::from_keys(plan, clock.clone(), keys))
            .collect()
    }
}

/// The longest window of a stage whose features all have finite windows.
fn longest_finite_window(plan: &StagePlan) -> Option<i64> {
    plan.features
        .iter()
        .map(|feature| match feature.agg {
            Agg::Prev | Agg::SincePrev => None,
            _ => feature.window,
        })
        .try_fold(0, |longest, window| {
            window.map(|window| longest.max(window))
        })
}

/// A key as error messages show it.
pub(crate) fn render_key(key: &Value) -> String {
    match key {
        Value::Str(text) => format!("'{text}'"),
        other => format!("{other:?}"),
    }
}
