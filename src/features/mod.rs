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
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageState {
    keys: FxHashMap<Value, KeyEntry>,
    states: Vec<FeatureState>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct KeyEntry {
    /// Index of the key's first feature state in `states`.
    first_state: usize,
    /// The partition the key was first seen in.
    partition: u32,
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
        }
        Ok(())
    }

    /// The key's entry, created with fresh states on first sight; a key of
    /// a source-keyed stage seen in a second partition is a conflict.
    fn entry_for(&mut self, plan: &StagePlan, row: &Row) -> Result<KeyEntry, KeyConflict> {
        let key = &row.values[plan.key_slot];
        let entry = match self.keys.get(key) {
            Some(entry) => *entry,
            None => {
                let entry = KeyEntry {
                    first_state: self.states.len(),
                    partition: row.partition,
                };
                self.states.extend(
                    plan.features
                        .iter()
                        .map(|feature| FeatureState::new(feature.agg)),
                );
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

fn render_key(key: &Value) -> String {
    match key {
        Value::Str(text) => format!("'{text}'"),
        other => format!("{other:?}"),
    }
}
