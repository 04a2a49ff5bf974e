//! Oracle tests: every aggregate of a feature stage against a deliberately
//! naive reference, on random inputs with out-of-order, late and
//! duplicate-time records, nulls, awkward floats (0.1, 19.95, 1e9 and
//! cents, signed zeros, subnormals, infinities, NaN) and keys that span
//! partitions.
//!
//! The reference recomputes each feature from scratch from the records
//! that precede (or are) the current one in the stage's order and lie in
//! its window, with big integers (sums exact, rounded once by the standard
//! library's decimal parser), and every value must equal it to the bit:
//! whatever the batches, workers, sweeps for idle keys and restores from
//! serialized state the engine went through. The proptest seed is fixed
//! in the config below, so every run checks the same cases; failures
//! persist in `proptest-regressions/`.

use num_bigint::BigInt;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use tideflow::batch::Batch;
use tideflow::checkpoint;
use tideflow::features::changes::StageChanges;
use tideflow::features::{Agg, KeyState, StageClock, StagePlan, StageState, WindowFeature};
use tideflow::ordering::PartitionClock;
use tideflow::row::Row;
use tideflow_connectors::{Value, format_compact};

const BOUND_MS: i64 = 50;
const AGGS: [Agg; 9] = [
    Agg::Count,
    Agg::Sum,
    Agg::Mean,
    Agg::Min,
    Agg::Max,
    Agg::Std,
    Agg::DistinctCount,
    Agg::Prev,
    Agg::SincePrev,
];
const WINDOWS: [Option<i64>; 3] = [Some(30), Some(200), None];

/// Slots: 0 key, 1 number (nullable), 2 label (nullable), then features.
fn plan(source_keyed: bool) -> StagePlan {
    let mut features = Vec::new();
    for agg in AGGS {
        for window in WINDOWS {
            if matches!(agg, Agg::Prev | Agg::SincePrev) && window.is_some() {
                continue;
            }
            let field = match agg {
                Agg::SincePrev => None,
                Agg::DistinctCount => Some(2),
                Agg::Count if window == Some(30) => None,
                _ => Some(1),
            };
            features.push(WindowFeature {
                name: format!("{agg:?}{window:?}"),
                slot: 3 + features.len(),
                agg,
                field,
                window,
            });
        }
    }
    StagePlan {
        key_name: "key".into(),
        key_slot: 0,
        source_keyed,
        features,
        key_ttl_ms: None,
    }
}

/// The shortest `key_ttl` the plan accepts: the longest window plus the
/// bound.
const SHORTEST_TTL: i64 = 200 + BOUND_MS;

#[derive(Clone, Debug)]
struct Record {
    partition: u32,
    offset: u64,
    time: i64,
    key: u8,
    number: Option<f64>,
    label: Option<u8>,
}

/// Numbers whose float sums depend on the order they are added in, and
/// the edges of the float format.
fn awkward_number() -> impl Strategy<Value = f64> {
    let awkward = [
        0.1,
        0.2,
        0.3,
        19.95,
        -19.95,
        1e9 + 0.01,
        1e9 + 0.03,
        -1e9 - 0.02,
        0.0,
        -0.0,
        123_456.789,
        1e-300,
        -3e-310,
        1e300,
        1e17,
    ];
    prop_oneof![
        12 => (-500i32..500).prop_map(|number| f64::from(number) / 4.0),
        6 => proptest::sample::select(awkward.to_vec()),
        3 => -1e6f64..1e6,
        1 => proptest::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
    ]
}

fn records() -> impl Strategy<Value = Vec<Record>> {
    // Now and then a gap longer than the shortest key_ttl.
    let step = prop_oneof![30 => 0i64..20, 10 => -80i64..0, 1 => SHORTEST_TTL..2 * SHORTEST_TTL];
    let record = (
        0u32..3,
        step,
        0u8..4,
        proptest::option::weighted(0.85, awkward_number()),
        proptest::option::weighted(0.9, 0u8..5),
    );
    proptest::collection::vec(record, 1..160).prop_map(|raw| {
        let mut clocks = [1000i64; 3];
        let mut offsets = [0u64; 3];
        raw.into_iter()
            .map(|(partition, step, key, number, label)| {
                let p = partition as usize;
                clocks[p] += step;
                offsets[p] += 1;
                Record {
                    partition,
                    offset: offsets[p],
                    time: clocks[p],
                    key,
                    number,
                    label,
                }
            })
            .collect()
    })
}

/// Drops late records by the per-partition rule, as the source does.
fn without_late(records: &[Record]) -> Vec<Record> {
    let mut clocks = [PartitionClock::default(); 3];
    records
        .iter()
        .filter(|record| {
            let clock = &mut clocks[record.partition as usize];
            if clock.is_late(record.time, BOUND_MS) {
                return false;
            }
            clock.observe(record.time);
            true
        })
        .cloned()
        .collect()
}

fn to_row(record: &Record, width: usize) -> Row {
    let mut values = vec![Value::Null; width];
    values[0] = Value::Str(format_compact!("k{}", record.key));
    values[1] = record.number.map_or(Value::Null, Value::F64);
    values[2] = record
        .label
        .map_or(Value::Null, |label| Value::Str(format_compact!("l{label}")));
    Row {
        partition: record.partition,
        offset: record.offset,
        time: record.time,
        values,
        warm_up: false,
    }
}

/// The naive reference: recompute from every earlier record of the key.
fn reference(feature: &WindowFeature, earlier: &[&Row], row: &Row) -> Value {
    match feature.agg {
        Agg::SincePrev => {
            return earlier
                .last()
                .map_or(Value::Null, |prev| Value::I64(row.time - prev.time));
        }
        Agg::Prev => {
            let slot = feature.field.unwrap();
            return earlier
                .iter()
                .rev()
                .map(|prev| prev.values[slot].clone())
                .find(|value| !value.is_null())
                .unwrap_or(Value::Null);
        }
        _ => {}
    }
    let in_window: Vec<&Row> = earlier
        .iter()
        .copied()
        .chain([row])
        .filter(|other| {
            other.time <= row.time && feature.window.is_none_or(|w| other.time > row.time - w)
        })
        .filter(|other| {
            feature
                .field
                .is_none_or(|slot| !other.values[slot].is_null())
        })
        .collect();
    match feature.agg {
        Agg::Count => return Value::I64(in_window.len() as i64),
        _ if in_window.is_empty() && feature.agg != Agg::DistinctCount => return Value::Null,
        _ => {}
    }
    let numbers: Vec<f64> = in_window
        .iter()
        .map(|other| {
            feature
                .field
                .map_or(1.0, |slot| other.values[slot].as_f64().unwrap_or(0.0))
        })
        .collect();
    let n = numbers.len() as f64;
    let by_total_order = |a: &&f64, b: &&f64| a.total_cmp(b);
    match feature.agg {
        Agg::Sum => Value::F64(exact_sum(&numbers)),
        Agg::Mean => Value::F64(exact_sum(&numbers) / n),
        Agg::Min => Value::F64(*numbers.iter().min_by(by_total_order).unwrap()),
        Agg::Max => Value::F64(*numbers.iter().max_by(by_total_order).unwrap()),
        Agg::Std => Value::F64(exact_variance(&numbers).sqrt()),
        Agg::DistinctCount => {
            let slot = feature.field.unwrap();
            let distinct: std::collections::HashSet<_> = in_window
                .iter()
                .map(|other| other.values[slot].clone())
                .collect();
            Value::I64(distinct.len() as i64)
        }
        Agg::Count | Agg::Prev | Agg::SincePrev => unreachable!(),
    }
}

/// A finite float times 2^1074: an integer, since every float is a
/// multiple of 2^-1074.
fn scaled(number: f64) -> BigInt {
    let bits = number.to_bits();
    let biased = (bits >> 52) & 0x7ff;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, shift) = match biased {
        0 => (fraction, 0),
        _ => (fraction | (1 << 52), biased - 1),
    };
    let magnitude = BigInt::from(mantissa) << shift;
    if number.is_sign_negative() {
        -magnitude
    } else {
        magnitude
    }
}

/// `integer · 2^-exponent` rounded to the nearest float, by the standard
/// library's (correctly rounding) parser of its exact decimal expansion.
fn rounded(integer: &BigInt, exponent: u32) -> f64 {
    let decimal = integer * BigInt::from(5).pow(exponent);
    format!("{decimal}e-{exponent}").parse().unwrap()
}

/// What float addition gives for the non-finite values among `numbers`,
/// if there are any (a NaN as the canonical one, as the engine keeps
/// every NaN).
fn non_finite_sum(numbers: &[f64]) -> Option<f64> {
    let infinite: Vec<f64> = numbers.iter().copied().filter(|n| !n.is_finite()).collect();
    let sum: f64 = infinite.iter().sum();
    (!infinite.is_empty()).then_some(if sum.is_nan() { f64::NAN } else { sum })
}

/// The true sum of `numbers`, rounded once.
fn exact_sum(numbers: &[f64]) -> f64 {
    if let Some(special) = non_finite_sum(numbers) {
        return special;
    }
    let total: BigInt = numbers.iter().map(|number| scaled(*number)).sum();
    rounded(&total, 1074)
}

/// `(n·Σx² − (Σx)²) / n²`, its numerator exact and rounded once; NaN
/// with any value not finite.
fn exact_variance(numbers: &[f64]) -> f64 {
    if non_finite_sum(numbers).is_some() {
        return f64::NAN;
    }
    let scaled: Vec<BigInt> = numbers.iter().map(|number| scaled(*number)).collect();
    let total: BigInt = scaled.iter().sum();
    let squares: BigInt = scaled.iter().map(|number| number * number).sum();
    let n = numbers.len() as f64;
    let numerator = BigInt::from(numbers.len()) * squares - &total * &total;
    rounded(&numerator, 2 * 1074) / (n * n)
}

/// Feeds rows in the given order to a stage and checks each feature.
fn check_stage(ordered: Vec<Row>, plan: &StagePlan) -> Result<(), TestCaseError> {
    let mut state = StageState::new(plan);
    let mut history: Vec<Row> = Vec::new();
    for mut row in ordered {
        state
            .apply(plan, BOUND_MS, &mut row)
            .map_err(|conflict| TestCaseError::fail(format!("{conflict:?}")))?;
        let earlier: Vec<&Row> = history
            .iter()
            .filter(|other| other.values[0] == row.values[0])
            .collect();
        for feature in &plan.features {
            let expected = reference(feature, &earlier, &row);
            let engine = &row.values[feature.slot];
            prop_assert!(
                engine == &expected,
                "{} at {:?}: engine {:?}, reference {:?}",
                feature.name,
                row.canonical_order(),
                engine,
                expected
            );
        }
        history.push(row);
    }
    Ok(())
}

fn config() -> Config {
    Config {
        cases: 400,
        rng_seed: RngSeed::Fixed(0x7469_6465),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Keys spanning partitions, in (event time, partition, offset) order.
    #[test]
    fn event_time_ordered_stage_matches_reference(records in records()) {
        let kept = without_late(&records);
        let width = 3 + plan(false).features.len();
        let mut rows: Vec<Row> = kept.iter().map(|record| to_row(record, width)).collect();
        rows.sort_by_key(Row::canonical_order);
        check_stage(rows, &plan(false))?;
    }

    /// Keys bound to one partition, in offset order (out of order in time).
    #[test]
    fn offset_ordered_stage_matches_reference(records in records()) {
        let keyed: Vec<Record> = records.into_iter().map(|record| Record { key: record.partition as u8 * 4 + record.key, ..record }).collect();
        let kept = without_late(&keyed);
        let width = 3 + plan(true).features.len();
        check_stage(kept.iter().map(|record| to_row(record, width)).collect(), &plan(true))?;
    }
}

proptest! {
    // Each case runs every feature on its own: fewer cases keep the time
    // of the tests above.
    #![proptest_config(Config { cases: 100, ..config() })]

    /// Each feature in a stage of its own, where its aggregate is shared
    /// with no other feature and keeps only what it reads (a sum no
    /// squares, a finite max no more than a count beside its deque).
    #[test]
    fn features_alone_match_reference(records in records()) {
        let kept = without_late(&records);
        let full = plan(false);
        let width = 3 + full.features.len();
        let mut rows: Vec<Row> = kept.iter().map(|record| to_row(record, width)).collect();
        rows.sort_by_key(Row::canonical_order);
        for feature in &full.features {
            let alone = StagePlan { features: vec![feature.clone()], ..full.clone() };
            check_stage(rows.clone(), &alone)?;
        }
    }
}

/// How a run went through the rows: the workers the keys were spread
/// over, the sizes of the batches (cycled), the rows after which each
/// worker swept for idle keys, took a checkpoint, or took one and was
/// restored from its checkpoints, and where the run was restored onto
/// another number of workers; how often a checkpoint was whole rather
/// than the changes since the one before; and the plan's `key_ttl`.
#[derive(Clone, Debug)]
struct History {
    key_ttl_ms: Option<i64>,
    workers: usize,
    batch_sizes: Vec<usize>,
    sweeps_after: Vec<usize>,
    checkpoints_after: Vec<usize>,
    restores_after: Vec<usize>,
    whole_every: usize,
    reshape: Option<(usize, usize)>,
}

fn histories() -> impl Strategy<Value = History> {
    (
        proptest::option::of(SHORTEST_TTL..3 * SHORTEST_TTL),
        1usize..5,
        proptest::collection::vec(1usize..24, 1..12),
        proptest::collection::vec(0usize..160, 0..6),
        (
            proptest::collection::vec(0usize..160, 0..8),
            proptest::collection::vec(0usize..160, 0..6),
            1usize..4,
        ),
        proptest::option::of((0usize..160, 1usize..5)),
    )
        .prop_map(
            |(
                key_ttl_ms,
                workers,
                batch_sizes,
                sweeps_after,
                (checkpoints_after, restores_after, whole_every),
                reshape,
            )| History {
                key_ttl_ms,
                workers,
                batch_sizes,
                sweeps_after,
                checkpoints_after,
                restores_after,
                whole_every,
                reshape,
            },
        )
}

/// The worker of `workers` that keeps a key first seen in `partition`:
/// a source-keyed stage's keys stay with the worker reading their
/// partition, any other stage's go by the key's hash.
fn worker_of(plan: &StagePlan, key: &Value, partition: u32, workers: usize) -> usize {
    if plan.source_keyed {
        partition as usize % workers
    } else {
        key.stable_hash() as usize % workers
    }
}

/// Runs `ordered` (in the stage's order) through `history`: each worker
/// gets its keys' rows in order, in batches, its state is swept and
/// restored where the history says, and at the reshape point the states
/// are regrouped onto the new number of workers. Returns the rows with
/// their features, each worker's in order.
fn run_through(
    ordered: &[Row],
    plan: &StagePlan,
    history: &History,
) -> Result<Vec<Row>, TestCaseError> {
    let (split, later_workers) = history
        .reshape
        .map_or((ordered.len(), history.workers), |(at, workers)| {
            (at.min(ordered.len()), workers)
        });
    let mut states: Vec<StageState> = (0..history.workers)
        .map(|_| {
            let mut state = StageState::new(plan);
            state.track_changes();
            state
        })
        .collect();
    let mut chains: Vec<Checkpoints> = states.iter().map(|_| Checkpoints::default()).collect();
    let mut computed = run_rows((&mut states, &mut chains), &ordered[..split], plan, history)?;
    if history.reshape.is_some() {
        // Each worker checkpoints, and the new workers start from the
        // keys of all the checkpoints.
        let mut restored = Vec::new();
        for (state, chain) in states.iter_mut().zip(&mut chains) {
            chain.take(state, history.whole_every);
            restored.push(chain.restore()?);
        }
        states = StageState::regroup(plan, restored, later_workers, |key| {
            worker_of(plan, &key.key, key.partition, later_workers)
        });
        for state in &mut states {
            state.track_changes();
        }
        chains = states.iter().map(|_| Checkpoints::default()).collect();
    }
    computed.extend(run_rows(
        (&mut states, &mut chains),
        &ordered[split..],
        plan,
        history,
    )?);
    Ok(computed)
}

/// The bytes of each key's state, in order. Read back once, a ring lies
/// as every ring of its records does (where its buffer wraps shows in its
/// bytes).
fn each_encoded(keys: &[KeyState]) -> Vec<Vec<u8>> {
    let mut encoded: Vec<Vec<u8>> = keys
        .iter()
        .map(|key| {
            let read: KeyState = checkpoint::decode(&checkpoint::encode(key)).unwrap();
            checkpoint::encode(&read)
        })
        .collect();
    encoded.sort();
    encoded
}

/// A worker's checkpoints since it started or was restored: the last
/// whole one, and the changes since, as the engine writes them.
#[derive(Default)]
struct Checkpoints {
    whole: Vec<u8>,
    changes: Vec<Vec<u8>>,
    taken: usize,
}

impl Checkpoints {
    /// Takes a checkpoint of `state`: whole the first time and every
    /// `whole_every`, else its changes.
    fn take(&mut self, state: &mut StageState, whole_every: usize) {
        let whole = self.taken.is_multiple_of(whole_every);
        if whole {
            self.whole = checkpoint::encode(&*state);
            self.changes.clear();
        } else {
            let changes = state.changes().expect("the state tracks its changes");
            self.changes.push(checkpoint::encode(&changes));
        }
        state.checkpointed(whole);
        self.taken += 1;
    }

    /// The clock and keys the checkpoints hold, read back.
    fn restore(&self) -> Result<(StageClock, Vec<KeyState>), TestCaseError> {
        let failed = |error: String| TestCaseError::fail(error);
        let whole: StageState =
            checkpoint::decode(&self.whole).map_err(|error| failed(error.to_string()))?;
        let mut slotted = whole.into_slotted();
        for bytes in &self.changes {
            let changes: StageChanges =
                checkpoint::decode(bytes).map_err(|error| failed(error.to_string()))?;
            slotted.apply(changes).map_err(failed)?;
        }
        Ok(slotted.into_keys())
    }
}

/// Runs rows through one stage state per worker, each with its
/// checkpoints (see [`run_through`]).
fn run_rows(
    (states, chains): (&mut [StageState], &mut [Checkpoints]),
    rows: &[Row],
    plan: &StagePlan,
    history: &History,
) -> Result<Vec<Row>, TestCaseError> {
    let mut computed = Vec::new();
    let workers = states.len();
    for (worker, (state, chain)) in states.iter_mut().zip(chains).enumerate() {
        let mine: Vec<Row> = rows
            .iter()
            .filter(|row| worker_of(plan, &row.values[0], row.partition, workers) == worker)
            .cloned()
            .collect();
        let mut sizes = history.batch_sizes.iter().cycle();
        let mut done = 0;
        while done < mine.len() {
            let size = (*sizes.next().unwrap()).min(mine.len() - done);
            let mut batch = Batch::from_rows(mine[done..done + size].to_vec());
            state
                .apply_batch(plan, BOUND_MS, &mut batch)
                .map_err(|conflict| TestCaseError::fail(format!("{conflict:?}")))?;
            computed.extend(batch.into_rows());
            let passed =
                |points: &[usize]| points.iter().any(|at| (done..done + size).contains(at));
            if passed(&history.sweeps_after) {
                state.evict_idle_keys(plan, BOUND_MS);
            }
            if passed(&history.checkpoints_after) || passed(&history.restores_after) {
                chain.take(state, history.whole_every);
            }
            if passed(&history.restores_after) {
                let (clock, keys) = chain.restore()?;
                // The checkpoints hold the state as it is, to the byte:
                // keys forgotten stay forgotten, records dropped stay
                // dropped.
                let (live_clock, live_keys) = state.clone().into_keys();
                prop_assert_eq!(checkpoint::encode(&clock), checkpoint::encode(&live_clock));
                prop_assert_eq!(each_encoded(&keys), each_encoded(&live_keys));
                *state = StageState::from_keys(plan, clock, keys);
                state.track_changes();
                *chain = Checkpoints::default();
            }
            done += size;
        }
    }
    Ok(computed)
}

/// The key's records since its state last expired: after the last of its
/// records (or `row`) that came `key_ttl` or more after the key's newest
/// record before it.
fn since_expiry<'a>(earlier: Vec<&'a Row>, row: &Row, key_ttl_ms: Option<i64>) -> Vec<&'a Row> {
    let Some(ttl) = key_ttl_ms else {
        return earlier;
    };
    let (mut start, mut newest) = (0, None::<i64>);
    for (index, time) in earlier
        .iter()
        .map(|other| other.time)
        .chain([row.time])
        .enumerate()
    {
        if newest.is_some_and(|newest| time - newest >= ttl) {
            start = index;
        }
        newest = Some(newest.map_or(time, |newest| newest.max(time)));
    }
    earlier[start..].to_vec()
}

/// Checks every feature of every computed row against the reference over
/// the rows before it in `ordered`.
fn check_rows(ordered: &[Row], computed: &[Row], plan: &StagePlan) -> Result<(), TestCaseError> {
    prop_assert_eq!(ordered.len(), computed.len());
    for row in computed {
        let position = ordered
            .iter()
            .position(|other| other.canonical_order() == row.canonical_order())
            .unwrap();
        let earlier: Vec<&Row> = ordered[..position]
            .iter()
            .filter(|other| other.values[0] == row.values[0])
            .collect();
        let earlier = since_expiry(earlier, row, plan.key_ttl_ms);
        for feature in &plan.features {
            let expected = reference(feature, &earlier, row);
            prop_assert!(
                row.values[feature.slot] == expected,
                "{} at {:?}: engine {:?}, reference {:?}",
                feature.name,
                row.canonical_order(),
                row.values[feature.slot],
                expected
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 200, ..config() })]

    /// Any number of workers, any batch boundaries, sweeps for idle keys at
    /// any point, restores from serialized state at any point and onto
    /// another number of workers give every feature the value the
    /// reference computes from the window alone, to the bit.
    #[test]
    fn every_history_gives_the_values_of_the_window_alone(
        records in records(),
        history in histories(),
        source_keyed in any::<bool>(),
    ) {
        let records: Vec<Record> = if source_keyed {
            records
                .into_iter()
                .map(|record| Record { key: record.partition as u8 * 4 + record.key, ..record })
                .collect()
        } else {
            records
        };
        let plan = StagePlan { key_ttl_ms: history.key_ttl_ms, ..plan(source_keyed) };
        let width = 3 + plan.features.len();
        let mut ordered: Vec<Row> =
            without_late(&records).iter().map(|record| to_row(record, width)).collect();
        if !source_keyed {
            ordered.sort_by_key(Row::canonical_order);
        }
        let computed = run_through(&ordered, &plan, &history)?;
        check_rows(&ordered, &computed, &plan)?;
    }
}

#[test]
fn a_key_in_two_partitions_of_a_keyed_source_is_reported() {
    let plan = plan(true);
    let width = 3 + plan.features.len();
    let mut state = StageState::new(&plan);
    let first = Record {
        partition: 0,
        offset: 1,
        time: 10,
        key: 1,
        number: None,
        label: None,
    };
    let second = Record {
        partition: 2,
        offset: 7,
        ..first.clone()
    };
    state
        .apply(&plan, BOUND_MS, &mut to_row(&first, width))
        .unwrap();
    let conflict = state
        .apply(&plan, BOUND_MS, &mut to_row(&second, width))
        .unwrap_err();
    assert_eq!(
        (conflict.first, conflict.second, conflict.offset),
        (0, 2, 7)
    );
}

/// A long stream over many keys, with only finite windows: idle keys are
/// forgotten (memory follows the windows, not the keys ever seen), keys
/// that come back start afresh, and every result still matches the
/// reference.
#[test]
fn idle_keys_are_forgotten_without_changing_results() {
    let mut plan = plan(true);
    plan.features.retain(|feature| {
        feature.window.is_some() && !matches!(feature.agg, Agg::Prev | Agg::SincePrev)
    });
    for (index, feature) in plan.features.iter_mut().enumerate() {
        feature.slot = 3 + index;
    }
    let (held, last_phase) = run_phases_of_keys(&plan);
    assert!(
        held <= last_phase,
        "{held} keys held, {last_phase} seen in the last phase"
    );
}

/// The same stream through every feature, lifetime, `prev` and
/// `since_prev` included, with a `key_ttl`: keys expire, memory follows
/// the keys seen within the TTL, and keys that come back after it start
/// afresh, as the reference says.
#[test]
fn keys_of_lifetime_features_expire_after_the_key_ttl() {
    // A key comes back every 6 s or so within a phase, and 30 s later in
    // the phase after next: it is kept through a phase and expires
    // between them.
    let plan = StagePlan {
        key_ttl_ms: Some(20_000),
        ..plan(true)
    };
    let (held, last_phase) = run_phases_of_keys(&plan);
    assert!(
        held <= last_phase,
        "{held} keys held, {last_phase} seen in the last phase"
    );
}

/// Runs 40,000 rows in four phases of 10,000 through `plan`'s stage,
/// phases 0 and 2 (and 1 and 3) sharing their keys, so that keys come back
/// after being forgotten, checking every value against the reference.
/// Returns the keys held at the end and the keys seen in the last phase.
fn run_phases_of_keys(plan: &StagePlan) -> (usize, usize) {
    let width = 3 + plan.features.len();
    let mut state = StageState::new(plan);
    let mut histories: std::collections::HashMap<Value, Vec<Row>> =
        std::collections::HashMap::new();
    let mut last_phase = std::collections::HashSet::new();
    let mut clocks = [PartitionClock::default(); 3];
    let mut random = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    for index in 0..40_000u64 {
        let partition = (next() % 3) as u32;
        let key = next() % 700 + 1000 * ((index / 10_000) % 2);
        let time = 10_000 + index as i64 * 3 - (next() % 40) as i64;
        let clock = &mut clocks[partition as usize];
        if clock.is_late(time, BOUND_MS) {
            continue;
        }
        clock.observe(time);
        let record = Record {
            partition,
            offset: index,
            time,
            key: 0,
            number: Some((next() % 100) as f64),
            label: Some((next() % 4) as u8),
        };
        let mut row = to_row(&record, width);
        row.values[0] = Value::Str(format_compact!("k{partition}-{key}"));
        if index >= 30_000 {
            last_phase.insert(row.values[0].clone());
        }
        state.apply(plan, BOUND_MS, &mut row).unwrap();
        let history = histories.entry(row.values[0].clone()).or_default();
        let earlier = since_expiry(history.iter().collect(), &row, plan.key_ttl_ms);
        for feature in &plan.features {
            let expected = reference(feature, &earlier, &row);
            assert!(
                row.values[feature.slot] == expected,
                "{} at row {index}: engine {:?}, reference {:?}",
                feature.name,
                row.values[feature.slot],
                expected
            );
        }
        history.push(row);
    }
    assert!(last_phase.len() < histories.len());
    (state.key_count(), last_phase.len())
}
