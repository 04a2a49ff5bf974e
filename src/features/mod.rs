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
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageState {
    keys: FxHashMap<Value, KeyState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyState {
    partition: u32,
    features: Vec<FeatureState>,
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
        let key = &row.values[plan.key_slot];
        let state = match self.keys.get_mut(key) {
            Some(state) => state,
            None => {
                let fresh = KeyState {
                    partition: row.partition,
                    features: plan
                        .features
                        .iter()
                        .map(|feature| FeatureState::new(feature.agg))
                        .collect(),
                };
                self.keys.entry(key.clone()).or_insert(fresh)
            }
        };
        if plan.source_keyed && state.partition != row.partition {
            return Err(KeyConflict {
                key: render_key(key),
                first: state.partition,
                second: row.partition,
                offset: row.offset,
            });
        }
        for (feature, feature_state) in plan.features.iter().zip(&mut state.features) {
            let value = feature.field.map(|slot| &row.values[slot]);
            let result =
                feature_state.update(feature.agg, feature.window, bound_ms, row.time, value);
            row.values[feature.slot] = result;
        }
        Ok(())
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
