//! Oracle tests of the join state: the as-of table and the label table
//! against a naive scan of every record, on random changelogs with
//! out-of-order versions, deletions, ties in time across partitions, keys
//! without versions, and labels before, inside, after and exactly at the
//! bounds of a row's horizon.
//!
//! The engine's protocol is replayed step by step: at each step the
//! table's watermark moves; every record before it has arrived (some
//! records after it arrive early, as a fast partition sends them), in a
//! shuffled order; events before it are looked up (labels: events whose
//! horizon ends before it), and the table is settled. Some steps pass the
//! state through its checkpoint form. Every answer must equal the scan's.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use tideflow::joins::{AsOfTable, LabelTable, VersionOrder};
use tideflow_connectors::Value;

/// One changelog or label record, before it is given an offset.
#[derive(Clone, Debug)]
struct Record {
    key: u8,
    time: i64,
    partition: u32,
    /// `None`: a deletion (tables) or unused (labels).
    value: Option<i64>,
    /// Arrives this many steps before the step its time requires.
    early: usize,
}

/// A record with the offset its partition gave it.
#[derive(Clone, Debug)]
struct Placed {
    record: Record,
    offset: u64,
}

impl Placed {
    fn order(&self) -> VersionOrder {
        VersionOrder {
            time: self.record.time,
            partition: self.record.partition,
            offset: self.offset,
        }
    }

    fn key(&self) -> Value {
        key(self.record.key)
    }
}

fn key(key: u8) -> Value {
    Value::Str(format!("k{key}").into())
}

fn records(deletions: bool) -> impl Strategy<Value = Vec<Record>> {
    let record = (
        0..4u8,
        0..120i64,
        0..3u32,
        0..100i64,
        prop::bool::weighted(if deletions { 0.15 } else { 0.0 }),
        0..3usize,
    )
        .prop_map(|(key, time, partition, value, deleted, early)| Record {
            key,
            time,
            partition,
            value: (!deleted).then_some(value),
            early,
        });
    prop::collection::vec(record, 0..60)
}

/// Offsets in generation order within each partition.
fn place(records: Vec<Record>) -> Vec<Placed> {
    let mut next = [0u64; 3];
    records
        .into_iter()
        .map(|record| {
            let offset = next[record.partition as usize];
            next[record.partition as usize] += 1;
            Placed { record, offset }
        })
        .collect()
}

/// Events: (key, time); key 5 never has a record.
fn events() -> impl Strategy<Value = Vec<(u8, i64)>> {
    prop::collection::vec((0..6u8, 0..130i64), 1..40)
}

/// Watermark steps, increasing, the last past every time.
fn steps() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(0..200i64, 1..8).prop_map(|mut steps| {
        steps.push(i64::MAX);
        steps.sort_unstable();
        steps.dedup();
        steps
    })
}

/// The step at which a record whose time is `time` must have arrived: the
/// first whose watermark is past it, less how early it came.
fn arrival_step(steps: &[i64], time: i64, early: usize) -> usize {
    let required = steps.partition_point(|watermark| *watermark <= time);
    required.saturating_sub(early)
}

/// The naive as-of answer: the greatest version at or before `time`.
fn as_of_by_scan(placed: &[Placed], event: (u8, i64)) -> Option<i64> {
    placed
        .iter()
        .filter(|placed| placed.record.key == event.0 && placed.record.time <= event.1)
        .max_by_key(|placed| placed.order())
        .and_then(|placed| placed.record.value)
}

/// The naive label: the greatest record within `[time, time + horizon]`.
fn label_by_scan(placed: &[Placed], event: (u8, i64), horizon: i64) -> Option<i64> {
    placed
        .iter()
        .filter(|placed| {
            placed.record.key == event.0
                && placed.record.time >= event.1
                && placed.record.time <= event.1 + horizon
        })
        .max_by_key(|placed| placed.order())
        .and_then(|placed| placed.record.value)
}

/// A shuffle decided by the case's numbers, so that records arrive in an
/// order unrelated to their generation.
fn shuffled<T>(mut items: Vec<T>, seed: u64) -> Vec<T> {
    let mut state = seed | 1;
    for at in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(at, (state % (at as u64 + 1)) as usize);
    }
    items
}

fn as_of_through_checkpoint(table: &AsOfTable) -> AsOfTable {
    let entries: Vec<_> = table
        .entries()
        .into_iter()
        .map(|(key, versions)| (key.clone(), versions.to_vec()))
        .collect();
    let bytes = tideflow::checkpoint::encode(&entries);
    let entries: Vec<(Value, Vec<tideflow::joins::Version>)> =
        tideflow::checkpoint::decode(&bytes).expect("the table decodes");
    AsOfTable::from_entries(entries, table.settled())
}

fn labels_through_checkpoint(table: &LabelTable) -> LabelTable {
    let entries: Vec<_> = table
        .entries()
        .into_iter()
        .map(|(key, records)| (key.clone(), records.to_vec()))
        .collect();
    let bytes = tideflow::checkpoint::encode(&entries);
    let entries: Vec<(Value, Vec<tideflow::joins::LabelRecord>)> =
        tideflow::checkpoint::decode(&bytes).expect("the labels decode");
    LabelTable::from_entries(entries, table.settled())
}

fn config() -> Config {
    Config {
        cases: 500,
        rng_seed: RngSeed::Fixed(0x6a6f_696e),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn as_of_lookups_equal_a_scan_of_every_version(
        records in records(true),
        events in events(),
        steps in steps(),
        seed in any::<u64>(),
        checkpoint_at in 0..8usize,
    ) {
        let placed = place(records);
        let mut table = AsOfTable::default();
        let mut pending: Vec<(u8, i64)> = events;
        let mut arrived = vec![false; placed.len()];
        for (step, watermark) in steps.iter().enumerate() {
            let due: Vec<usize> = (0..placed.len())
                .filter(|at| !arrived[*at] && arrival_step(&steps, placed[*at].record.time, placed[*at].record.early) <= step)
                .collect();
            for at in shuffled(due, seed ^ step as u64) {
                arrived[at] = true;
                let record = &placed[at];
                let columns = record.record.value.map(|value| vec![Value::I64(value)].into_boxed_slice());
                table.insert(record.key(), record.order(), columns);
            }
            let (ready, waiting): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(_, time)| time < watermark);
            pending = waiting;
            for event in ready {
                let found = table.lookup(&key(event.0), event.1).map(|columns| match columns[0] {
                    Value::I64(value) => value,
                    ref other => panic!("a column of {other:?}"),
                });
                prop_assert_eq!(found, as_of_by_scan(&placed, event), "event {:?} at step {}", event, step);
            }
            // Every lookup still to come is at or after the least pending
            // time and the watermark.
            let settle = pending.iter().map(|(_, time)| *time).min().unwrap_or(*watermark).min(*watermark);
            table.settle(settle);
            // Memory follows what lookups can still reach: of the versions
            // before the settled time, each key keeps one, not a deletion.
            let settled = table.settled().unwrap_or(i64::MIN);
            for (key, versions) in table.entries() {
                let before: Vec<_> = versions.iter().filter(|version| version.order.time < settled).collect();
                prop_assert!(before.len() <= 1 && before.iter().all(|version| version.columns.is_some()), "{key:?}: {versions:?}");
            }
            if step == checkpoint_at {
                table = as_of_through_checkpoint(&table);
            }
        }
        prop_assert!(pending.is_empty());
    }

    #[test]
    fn labels_equal_a_scan_of_every_record_in_the_horizon(
        records in records(false),
        events in events(),
        steps in steps(),
        seed in any::<u64>(),
        horizon in prop::sample::select(vec![0i64, 1, 10, 40]),
        checkpoint_at in 0..8usize,
    ) {
        let placed = place(records);
        let mut labels = LabelTable::default();
        let mut pending: Vec<(u8, i64)> = events;
        let mut arrived = vec![false; placed.len()];
        for (step, watermark) in steps.iter().enumerate() {
            let due: Vec<usize> = (0..placed.len())
                .filter(|at| !arrived[*at] && arrival_step(&steps, placed[*at].record.time, placed[*at].record.early) <= step)
                .collect();
            for at in shuffled(due, seed ^ step as u64) {
                arrived[at] = true;
                let record = &placed[at];
                let value = Value::I64(record.record.value.unwrap_or_default());
                labels.insert(record.key(), record.order(), value);
            }
            let (ready, waiting): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|(_, time)| time + horizon < *watermark);
            pending = waiting;
            for event in ready {
                let found = labels.lookup(&key(event.0), event.1, horizon).map(|value| match value {
                    Value::I64(value) => *value,
                    other => panic!("a label of {other:?}"),
                });
                prop_assert_eq!(found, label_by_scan(&placed, event, horizon), "event {:?} at step {}", event, step);
            }
            // Rows still to come are at or after the least pending time,
            // and (arriving now) at or after the watermark.
            let settle = pending.iter().map(|(_, time)| *time).min().unwrap_or(*watermark).min(*watermark);
            labels.settle(settle);
            // No record before the settled time is kept.
            let settled = labels.settled().unwrap_or(i64::MIN);
            for (key, records) in labels.entries() {
                prop_assert!(records.iter().all(|record| record.order.time >= settled), "{key:?}: {records:?}");
            }
            if step == checkpoint_at {
                labels = labels_through_checkpoint(&labels);
            }
        }
        prop_assert!(pending.is_empty());
    }
}
