//! Drift: how far the distribution of each feature and model output has
//! moved from a reference.
//!
//! `tideflow profile SPEC` runs a spec over bounded input and keeps a
//! sample of its rows: the `SAMPLE_ROWS` rows of smallest hash of their
//! origin (partition, offset), a set that does not depend on the order in
//! which workers see them, so a profile is the same on any number of
//! workers. Each numeric column's bins are the deciles of its sample
//! (fewer where values repeat), and the reference is the sample's share
//! in each bin, plus the share of nulls. A run whose spec names the
//! profile (`[drift] reference`) counts its rows into the same bins and
//! reports, per column, the population stability index
//! `PSI = Σ (live − reference) · ln(live / reference)` over the bins, each
//! share floored at `SHARE_FLOOR` so that an empty bin does not make it
//! infinite. Below 0.1 is usually read as stable, above 0.25 as a shift.

use crate::batch::Batch;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::Mutex;

/// Rows a profile keeps as its sample.
pub const SAMPLE_ROWS: usize = 100_000;

/// Bins per column (at most; repeated values merge bins).
pub const BINS: usize = 10;

/// The least share a bin is taken to have in the PSI.
pub const SHARE_FLOOR: f64 = 1e-4;

/// A reference profile, as saved by `tideflow profile`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Rows in the sample.
    pub rows: u64,
    /// Per profiled column.
    pub columns: Vec<ColumnProfile>,
}

/// One column's bins and its reference shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    /// The column.
    pub name: String,
    /// Bin `i` holds values `v` with `edges[i - 1] <= v < edges[i]`.
    pub edges: Vec<f64>,
    /// The share of the sample in each of the `edges.len() + 1` bins, then
    /// the share of nulls.
    pub shares: Vec<f64>,
}

impl ColumnProfile {
    /// The bin of a value; nulls (and NaN) in the last.
    fn bin(&self, value: Option<f64>) -> usize {
        match value {
            Some(value) if !value.is_nan() => self.edges.partition_point(|edge| *edge <= value),
            _ => self.edges.len() + 1,
        }
    }
}

/// The population stability index of `live` counts against `reference`
/// shares, each share floored at `SHARE_FLOOR`.
pub fn psi(reference: &[f64], live: &[u64]) -> f64 {
    let total: u64 = live.iter().sum();
    if total == 0 {
        return 0.0;
    }
    reference
        .iter()
        .zip(live)
        .map(|(expected, count)| {
            let expected = expected.max(SHARE_FLOOR);
            let actual = (*count as f64 / total as f64).max(SHARE_FLOOR);
            (actual - expected) * (actual / expected).ln()
        })
        .sum()
}

/// What a run does with the drift of its rows: samples them for a
/// profile, or counts them against a reference.
#[derive(Debug)]
pub enum Drift {
    /// `tideflow profile`.
    Profiling(Mutex<Sample>),
    /// A run with `[drift] reference`.
    Monitoring(Mutex<Monitor>),
}

impl Drift {
    /// Profiling the columns `(name, slot)`.
    pub fn profiling(columns: Vec<(String, usize)>) -> Drift {
        Drift::Profiling(Mutex::new(Sample {
            columns,
            rows: BinaryHeap::new(),
        }))
    }

    /// Monitoring against the profile at `path`, its columns found among
    /// `columns` (name to slot).
    pub fn monitoring(path: &Path, columns: &[(String, usize)]) -> Result<Drift> {
        let fail = |message: String| {
            Error::Runtime(format!("drift reference {}: {message}", path.display()))
        };
        let text = std::fs::read_to_string(path).map_err(|error| {
            fail(format!(
                "{error}; write one with `tideflow profile SPEC --out {}`",
                path.display()
            ))
        })?;
        let profile: Profile =
            serde_json::from_str(&text).map_err(|error| fail(error.to_string()))?;
        let mut monitored = Vec::new();
        for column in profile.columns {
            let slot = columns
                .iter()
                .find(|(name, _)| *name == column.name)
                .map(|(_, slot)| *slot)
                .ok_or_else(|| {
                    fail(format!(
                        "profiles column '{}', which the spec does not have; profile the spec again",
                        column.name
                    ))
                })?;
            let counts = vec![0; column.shares.len()];
            monitored.push((column, slot, counts));
        }
        Ok(Drift::Monitoring(Mutex::new(Monitor {
            columns: monitored,
        })))
    }

    /// Takes the scored rows of `batch` into account.
    pub fn observe(&self, batch: &Batch) {
        match self {
            Drift::Profiling(sample) => lock(sample).observe(batch),
            Drift::Monitoring(monitor) => lock(monitor).observe(batch),
        }
    }

    /// Per column, the PSI of the rows so far (monitoring; none while
    /// profiling).
    pub fn psi(&self) -> Vec<(String, f64)> {
        match self {
            Drift::Profiling(_) => Vec::new(),
            Drift::Monitoring(monitor) => lock(monitor)
                .columns
                .iter()
                .map(|(column, _, counts)| (column.name.clone(), psi(&column.shares, counts)))
                .collect(),
        }
    }

    /// The profile of the sample (profiling).
    pub fn profile(&self) -> Option<Profile> {
        match self {
            Drift::Profiling(sample) => Some(lock(sample).profile()),
            Drift::Monitoring(_) => None,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The rows of smallest origin hash seen so far, with their values of the
/// profiled columns.
#[derive(Debug)]
pub struct Sample {
    columns: Vec<(String, usize)>,
    /// A max-heap by hash: the largest is the first to go.
    rows: BinaryHeap<SampledRow>,
}

/// A sampled row: its origin's hash and its values of the profiled columns.
#[derive(Debug)]
struct SampledRow {
    hash: u64,
    values: Vec<Option<f64>>,
}

/// Ordered by hash alone (origins are distinct; their hashes, 64 bits of
/// a bijective mix of partition and offset, practically so).
impl Ord for SampledRow {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.hash.cmp(&other.hash)
    }
}

impl PartialOrd for SampledRow {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SampledRow {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
    }
}

impl Eq for SampledRow {}

impl Sample {
    fn observe(&mut self, batch: &Batch) {
        for (index, row) in batch.rows().iter().enumerate() {
            let hash = origin_hash(row.partition, row.offset);
            let full = self.rows.len() >= SAMPLE_ROWS;
            if full && self.rows.peek().is_some_and(|largest| hash >= largest.hash) {
                continue;
            }
            let values = self
                .columns
                .iter()
                .map(|(_, slot)| batch.value(*slot, index).as_f64())
                .collect();
            self.rows.push(SampledRow { hash, values });
            if self.rows.len() > SAMPLE_ROWS {
                self.rows.pop();
            }
        }
    }

    fn profile(&self) -> Profile {
        let columns = self
            .columns
            .iter()
            .enumerate()
            .map(|(index, (name, _))| {
                let values: Vec<Option<f64>> =
                    self.rows.iter().map(|row| row.values[index]).collect();
                column_profile(name, &values)
            })
            .collect();
        Profile {
            rows: self.rows.len() as u64,
            columns,
        }
    }
}

/// A well-mixed hash of a row's origin.
fn origin_hash(partition: u32, offset: u64) -> u64 {
    let mut z = (u64::from(partition) << 48) ^ offset ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A column's deciles as bin edges, and the sample's shares in the bins.
fn column_profile(name: &str, values: &[Option<f64>]) -> ColumnProfile {
    let mut present: Vec<f64> = values
        .iter()
        .flatten()
        .copied()
        .filter(|value| !value.is_nan())
        .collect();
    present.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = (1..BINS)
        .filter_map(|decile| present.get(decile * present.len() / BINS).copied())
        .collect();
    edges.dedup();
    let mut profile = ColumnProfile {
        name: name.to_owned(),
        edges,
        shares: Vec::new(),
    };
    let mut counts = vec![0u64; profile.edges.len() + 2];
    for value in values {
        counts[profile.bin(*value)] += 1;
    }
    let total = values.len().max(1) as f64;
    profile.shares = counts.iter().map(|count| *count as f64 / total).collect();
    profile
}

/// The counts of a run's rows in each profiled column's bins.
#[derive(Debug)]
pub struct Monitor {
    columns: Vec<(ColumnProfile, usize, Vec<u64>)>,
}

impl Monitor {
    fn observe(&mut self, batch: &Batch) {
        for (column, slot, counts) in &mut self.columns {
            for index in 0..batch.len() {
                counts[column.bin(batch.value(*slot, index).as_f64())] += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_distribution_has_no_drift_and_a_shift_has_some() {
        let values: Vec<Option<f64>> = (0..1000).map(|index| Some(f64::from(index))).collect();
        let profile = column_profile("x", &values);
        assert_eq!(profile.edges.len(), BINS - 1);
        let count = |values: &[Option<f64>]| {
            let mut counts = vec![0; profile.shares.len()];
            for value in values {
                counts[profile.bin(*value)] += 1;
            }
            counts
        };
        assert!(psi(&profile.shares, &count(&values)).abs() < 1e-12);
        let shifted: Vec<Option<f64>> = values.iter().map(|v| v.map(|v| v + 300.0)).collect();
        assert!(psi(&profile.shares, &count(&shifted)) > 0.25);
        // Nulls have a bin of their own.
        let nulls = vec![None; 10];
        assert!(psi(&profile.shares, &count(&nulls)) > 1.0);
    }
}
