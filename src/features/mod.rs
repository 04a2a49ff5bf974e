//! Features: trailing-window aggregates grouped by key, and row
//! expressions.
//!
//! A *stage* computes all the window features that share a key. The stage
//! keyed by `source.key` sees each key's records in offset order as they
//! arrive; every other stage sees its records in (event time, partition,
//! offset) order, released by the watermark (see [`crate::ordering`]). The
//! state here is plain and serializable; the timely operators in
//! [`crate::operators`] only feed it rows.

pub mod expr;
pub mod window;

use crate::row::Row;
use rustc_hash::FxHashMap;
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
/// The feature states of all keys live in one flat vector, `features.len()`
/// per key, so that a record touches its key's states without another
/// pointer to chase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageState {
    keys: FxHashMap<Value, KeyEntry>,
    states: Vec<FeatureState>,
    /// Blocks of `states` freed by evicted keys, reused by new keys.
    free_blocks: Vec<usize>,
    /// Newest event time seen per source partition, and over all rows.
    partition_newest: Vec<i64>,
    stage_newest: i64,
    rows_since_sweep: usize,
}

/// Rows between sweeps for idle keys, at least (more when there are more
/// keys, so a sweep costs O(1) per row).
const SWEEP_EVERY_ROWS: usize = 4096;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct KeyEntry {
    /// Index of the key's first feature state in `states`.
    first_state: usize,
    /// The partition the key was first seen in.
    partition: u32,
}

impl Default for StageState {
    fn default() -> Self {
        StageState {
            keys: FxHashMap::default(),
            states: Vec::new(),
            free_blocks: Vec::new(),
            partition_newest: Vec::new(),
            stage_newest: i64::MIN,
            rows_since_sweep: 0,
        }
    }
}

impl StageState {
    /// Computes the stage's features for `row` (which must come in the
    /// stage's order) and writes them into the row's slots.
    pub fn apply(
        &mut self,
        plan: &StagePlan,
        bound_ms: i64,
        row: &mut Row,
    ) -> Result<(), KeyConflict> {
        self.apply_batch(plan, bound_ms, std::slice::from_mut(row))
    }

    /// Computes the stage's features for a batch of rows, in order.
    ///
    /// Per-key state is scattered over memory, so the work is bound by
    /// cache misses. The batch is processed in two passes: all keys are
    /// looked up first, then each row is computed while the states of a row
    /// a few places ahead are touched, so their memory arrives in parallel
    /// rather than one miss at a time (measured by benches/features.rs).
    pub fn apply_batch(
        &mut self,
        plan: &StagePlan,
        bound_ms: i64,
        rows: &mut [Row],
    ) -> Result<(), KeyConflict> {
        const LOOKAHEAD: usize = 6;
        let entries = rows
            .iter()
            .map(|row| self.entry_for(plan, row))
            .collect::<Result<Vec<_>, _>>()?;
        let width = plan.features.len();
        for (index, row) in rows.iter_mut().enumerate() {
            if let Some(ahead) = entries.get(index + LOOKAHEAD) {
                let touched = self.states[ahead.first_state..ahead.first_state + width]
                    .iter()
                    .fold(0i64, |acc, state| acc ^ state.newest_entry_time());
                std::hint::black_box(touched);
            }
            let first = entries[index].first_state;
            for (feature, state) in plan
                .features
                .iter()
                .zip(&mut self.states[first..first + width])
            {
                let value = feature.field.map(|slot| &row.values[slot]);
                let result = state.update(feature.agg, feature.window, bound_ms, row.time, value);
                row.values[feature.slot] = result;
            }
            self.observe(row.partition, row.time);
        }
        self.rows_since_sweep += rows.len();
        if self.rows_since_sweep >= self.keys.len().max(SWEEP_EVERY_ROWS) {
            self.rows_since_sweep = 0;
            self.evict_idle_keys(plan, bound_ms);
        }
        Ok(())
    }

    fn observe(&mut self, partition: u32, time: i64) {
        let index = partition as usize;
        if index >= self.partition_newest.len() {
            self.partition_newest.resize(index + 1, i64::MIN);
        }
        self.partition_newest[index] = self.partition_newest[index].max(time);
        self.stage_newest = self.stage_newest.max(time);
    }

    /// Drops keys whose every window is empty and will stay empty: keeping
    /// them would let memory grow with the number of keys ever seen rather
    /// than with the windows. Only stages whose features all have finite
    /// windows (no lifetime, `prev` or `since_prev`) can forget a key.
    ///
    /// A key is idle when its newest record is more than the longest window
    /// plus the bound behind what any later record of it can carry: its
    /// partition's newest time (offset-ordered stages, where a key lives in
    /// one partition) or the stage's newest time (event-time-ordered stages,
    /// whose rows arrive in event-time order).
    fn evict_idle_keys(&mut self, plan: &StagePlan, bound_ms: i64) {
        let Some(longest) = longest_finite_window(plan) else {
            return;
        };
        let StageState {
            keys,
            states,
            free_blocks,
            partition_newest,
            stage_newest,
            ..
        } = self;
        let width = plan.features.len();
        keys.retain(|_, entry| {
            let reference = if plan.source_keyed {
                partition_newest
                    .get(entry.partition as usize)
                    .copied()
                    .unwrap_or(i64::MIN)
            } else {
                *stage_newest
            };
            let horizon = reference.saturating_sub(longest).saturating_sub(bound_ms);
            let idle = states[entry.first_state]
                .newest_time()
                .is_some_and(|newest| newest <= horizon);
            if idle {
                for (state, feature) in states[entry.first_state..entry.first_state + width]
                    .iter_mut()
                    .zip(&plan.features)
                {
                    *state = FeatureState::new(feature.agg);
                }
                free_blocks.push(entry.first_state);
            }
            !idle
        });
    }

    /// The key's entry, created with fresh states on first sight; a key of
    /// a source-keyed stage seen in a second partition is a conflict.
    fn entry_for(&mut self, plan: &StagePlan, row: &Row) -> Result<KeyEntry, KeyConflict> {
        let key = &row.values[plan.key_slot];
        let entry = match self.keys.get(key) {
            Some(entry) => *entry,
            None => {
                let first_state = match self.free_blocks.pop() {
                    Some(first_state) => first_state,
                    None => {
                        self.states.extend(
                            plan.features
                                .iter()
                                .map(|feature| FeatureState::new(feature.agg)),
                        );
                        self.states.len() - plan.features.len()
                    }
                };
                let entry = KeyEntry {
                    first_state,
                    partition: row.partition,
                };
                self.keys.insert(key.clone(), entry);
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
        Ok(entry)
    }

    /// Number of keys held.
    pub fn key_count(&self) -> usize {
        self.keys.len()
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

fn render_key(key: &Value) -> String {
    match key {
        Value::Str(text) => format!("'{text}'"),
        other => format!("{other:?}"),
    }
}
