//! Trailing-window aggregate state for one key: the exact semantics of a
//! feature `agg(field) over W`, kept incrementally.
//!
//! For a record `r` at event time `t`, the aggregate covers the key's
//! records that precede or equal `r` in the canonical order and whose event
//! time lies in `(t - W, t]`; nulls are skipped. `count` and
//! `distinct_count` of no value are 0, any other empty aggregate is null.
//! Every value is a function of the records in the window alone: sums are
//! exact until rounded once ([`super::exact`]), and min and max order
//! values totally (`-0.0` below `0.0`, NaN above infinity), so ties and
//! NaNs do not depend on the order records came in. Records arrive in canonical order, and never more than the
//! out-of-orderness bound behind the key's newest event time (older ones are
//! late and never reach this state), which bounds what must be kept: entries
//! newer than `newest - W - bound`. In-order records (the common case) are
//! answered from running aggregates; a record behind the newest one is
//! answered by scanning the entries its window covers.
//!
//! The numeric aggregates of a key share one record list
//! ([`super::numbers`]) built on the running aggregates here; this module
//! keeps the features with state of their own: `distinct_count`, whose
//! entries are values, and `prev` / `since_prev`.

use super::exact::{ExactSum, variance};
use crate::cache;
use crate::schema::ColumnType;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::collections::hash_map;
use tideflow_connectors::Value;

/// The aggregations a window feature can compute, named in specs in
/// snake case (`distinct_count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Agg {
    /// Number of records (or of non-null values of a field).
    Count,
    /// Sum of the field.
    Sum,
    /// Arithmetic mean of the field.
    Mean,
    /// Least value of the field.
    Min,
    /// Greatest value of the field.
    Max,
    /// Population standard deviation of the field.
    Std,
    /// Number of distinct non-null values of the field.
    DistinctCount,
    /// The field's value in the key's previous record that has one.
    Prev,
    /// Event-time gap in ms to the key's previous record.
    SincePrev,
}

impl Agg {
    /// Whether the aggregation reads a field's numbers.
    pub fn needs_numeric_field(self) -> bool {
        matches!(self, Agg::Sum | Agg::Mean | Agg::Min | Agg::Max | Agg::Std)
    }

    /// How a column of this aggregation's results is best stored: the
    /// type its results have, where that does not depend on the field
    /// (`prev` gives the field's own values, kept as values).
    pub fn output_type(self) -> ColumnType {
        match self {
            Agg::Count | Agg::DistinctCount | Agg::SincePrev => ColumnType::I64,
            Agg::Prev => ColumnType::Str,
            Agg::Sum | Agg::Mean | Agg::Min | Agg::Max | Agg::Std => ColumnType::F64,
        }
    }

    /// Whether a running aggregate kept for `self` keeps more than one
    /// kept for `other` (count, then sums, then squares, then extremes):
    /// an aggregate shared by several features is kept for the one that
    /// needs the most.
    pub(super) fn keeps_more(self, other: Agg) -> bool {
        let level = |agg| match agg {
            Agg::Count | Agg::Prev | Agg::SincePrev | Agg::DistinctCount => 0,
            Agg::Sum | Agg::Mean => 1,
            Agg::Std => 2,
            Agg::Min | Agg::Max => 3,
        };
        level(self) > level(other)
    }

    fn tracks_extremes(self) -> bool {
        matches!(self, Agg::Min | Agg::Max)
    }
}

/// A window length in ms; `None` is the lifetime of the key.
pub type WindowMs = Option<i64>;

/// The state of one feature for one key, for the aggregations that are
/// not numeric (see [`super::numbers::is_numeric`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FeatureState {
    /// `prev` and `since_prev`.
    Previous(PreviousState),
    /// `distinct_count`, keeping the values themselves.
    Values(WindowState<Value>),
}

/// What a window keeps of each record: a number, or the value itself.
pub trait Sample: Clone + std::fmt::Debug {
    /// The sample from a non-null field value (`None`: counting records).
    fn from_value(value: Option<&Value>) -> Self;
    /// The sample as a number, for sums and extremes.
    fn number(&self) -> f64;
    /// The sample as a value, for distinct counts.
    fn distinct_key(&self) -> Value;
}

impl Sample for f64 {
    fn from_value(value: Option<&Value>) -> Self {
        value.and_then(Value::as_f64).unwrap_or(1.0)
    }

    fn number(&self) -> f64 {
        *self
    }

    fn distinct_key(&self) -> Value {
        Value::F64(*self)
    }
}

impl Sample for Value {
    fn from_value(value: Option<&Value>) -> Self {
        value.cloned().unwrap_or(Value::Bool(true))
    }

    fn number(&self) -> f64 {
        self.as_f64().unwrap_or(0.0)
    }

    fn distinct_key(&self) -> Value {
        self.clone()
    }
}

impl FeatureState {
    /// Fresh state for an aggregation.
    pub fn new(agg: Agg) -> Self {
        match agg {
            Agg::Prev | Agg::SincePrev => FeatureState::Previous(PreviousState::default()),
            _ => FeatureState::Values(WindowState::default()),
        }
    }

    /// Adds the record (event time `time`, field value `value`, or `None`
    /// when the feature counts records) and returns the feature's value for
    /// it.
    pub fn update(
        &mut self,
        agg: Agg,
        window: WindowMs,
        bound_ms: i64,
        time: i64,
        value: Option<&Value>,
    ) -> Value {
        match self {
            FeatureState::Previous(state) => state.update(agg, time, value),
            FeatureState::Values(state) => state.update(agg, window, bound_ms, time, value),
        }
    }
}

impl FeatureState {
    /// Asks for the entries the next update reads first (the newest, and
    /// the window's first), once the state itself is in cache.
    pub fn prefetch_entries(&self) {
        if let FeatureState::Values(state) = self {
            state.entries.back().into_iter().for_each(cache::prefetch);
            state
                .entries
                .get(state.start)
                .into_iter()
                .for_each(cache::prefetch);
        }
    }
}

/// State of `prev` / `since_prev`: the key's previous record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PreviousState {
    last_time: Option<i64>,
    last_value: Option<Value>,
}

impl PreviousState {
    fn update(&mut self, agg: Agg, time: i64, value: Option<&Value>) -> Value {
        let result = match agg {
            Agg::SincePrev => self
                .last_time
                .map_or(Value::Null, |last| Value::I64(time - last)),
            _ => self.last_value.clone().unwrap_or(Value::Null),
        };
        self.last_time = Some(time);
        if let Some(value) = value.filter(|value| !value.is_null()) {
            self.last_value = Some(value.clone());
        }
        result
    }
}

/// What a numeric aggregate keeps beside its count and sum, for `std`
/// and the extremes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Spread {
    pub(super) sum_squares: ExactSum,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Spread {
    /// Adds a sample's square and, when `extremes`, its extreme (`first`:
    /// the aggregate was empty before it).
    #[inline]
    pub(super) fn add(&mut self, number: f64, extremes: bool, first: bool) {
        self.sum_squares.add_square(number);
        if !extremes {
            return;
        }
        if first {
            (self.min, self.max) = (number, number);
        } else {
            self.min = total_min(self.min, number);
            self.max = total_max(self.max, number);
        }
    }
}

/// The lesser of two floats in IEEE total order (`-0.0` below `0.0`, NaN
/// above infinity), so that the extreme of a multiset does not depend on
/// the order it was seen in.
#[inline]
pub(super) fn total_min(kept: f64, number: f64) -> f64 {
    if number.total_cmp(&kept).is_lt() {
        number
    } else {
        kept
    }
}

/// The greater of two floats in IEEE total order (see [`total_min`]).
#[inline]
pub(super) fn total_max(kept: f64, number: f64) -> f64 {
    if number.total_cmp(&kept).is_gt() {
        number
    } else {
        kept
    }
}

/// The value of numeric aggregation `agg` over `count` samples of exact
/// sum `sum` (`count` as a float, exact below 2^53); `None` when there
/// are none (a count is 0), or when `agg` reads a spread that was not
/// kept.
#[inline]
pub(super) fn aggregate_number(
    agg: Agg,
    count: u64,
    sum: &ExactSum,
    spread: Option<&Spread>,
) -> Option<f64> {
    if count == 0 {
        return (agg == Agg::Count).then_some(0.0);
    }
    // Through a signed integer, which converts in one instruction (no
    // count reaches 2^63), to the same float.
    let n = count as i64 as f64;
    Some(match agg {
        Agg::Count => n,
        Agg::Sum => sum.value(),
        Agg::Mean => sum.value() / n,
        Agg::Min => spread?.min,
        Agg::Max => spread?.max,
        Agg::Std => variance(count, sum, &spread?.sum_squares).sqrt(),
        Agg::DistinctCount | Agg::Prev | Agg::SincePrev => return None,
    })
}

/// Running aggregates over a set of entries; what is maintained depends on
/// the aggregation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Running {
    pub(super) count: u64,
    sum: ExactSum,
    /// Squares, and lifetime extremes (never shrink) or, for finite
    /// windows, rebuilt from the monotonic deques.
    spread: Spread,
    /// Value counts, for `distinct_count` only (boxed: most features have none).
    #[serde(serialize_with = "values_in_order")]
    distinct: Option<Box<FxHashMap<Value, u32>>>,
}

/// Value counts in a checkpoint, in the values' order: the same counts
/// give the same bytes, however the set was built.
fn values_in_order<S: serde::Serializer>(
    distinct: &Option<Box<FxHashMap<Value, u32>>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    struct InOrder<'a>(&'a FxHashMap<Value, u32>);
    impl Serialize for InOrder<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut counts: Vec<(&Value, &u32)> = self.0.iter().collect();
            counts.sort_unstable_by_key(|(value, _)| *value);
            serializer.collect_map(counts)
        }
    }
    distinct.as_deref().map(InOrder).serialize(serializer)
}

impl Running {
    /// Inlined where it runs for every record: the numeric case is a few
    /// instructions, and distinct counts, which hash, are kept apart.
    ///
    /// Only what `agg` reads is kept (see [`Agg::keeps_more`]): a sum
    /// has no use for squares or extremes.
    #[inline]
    pub(super) fn add<S: Sample>(&mut self, agg: Agg, sample: &S) {
        let first = self.count == 0;
        self.count += 1;
        match agg {
            Agg::DistinctCount => self.count_distinct(sample),
            Agg::Count | Agg::Prev | Agg::SincePrev => {}
            Agg::Sum | Agg::Mean => self.sum.add(sample.number()),
            Agg::Std | Agg::Min | Agg::Max => {
                let number = sample.number();
                self.sum.add(number);
                self.spread.add(number, agg.tracks_extremes(), first);
            }
        }
    }

    #[inline(never)]
    fn count_distinct<S: Sample>(&mut self, sample: &S) {
        *self
            .distinct
            .get_or_insert_with(Default::default)
            .entry(sample.distinct_key())
            .or_insert(0) += 1;
    }

    #[inline]
    pub(super) fn remove<S: Sample>(&mut self, agg: Agg, sample: &S) {
        self.count -= 1;
        if self.count == 0 {
            // The sums are exactly zero again; clearing gives up any heap
            // form they took.
            self.sum.clear();
            self.spread.sum_squares.clear();
            if let Some(distinct) = &mut self.distinct {
                distinct.clear();
            }
            return;
        }
        match agg {
            Agg::DistinctCount => self.uncount_distinct(sample),
            Agg::Count | Agg::Prev | Agg::SincePrev => {}
            Agg::Sum | Agg::Mean => self.sum.remove(sample.number()),
            Agg::Std | Agg::Min | Agg::Max => {
                let number = sample.number();
                self.sum.remove(number);
                self.spread.sum_squares.remove_square(number);
            }
        }
    }

    #[inline(never)]
    fn uncount_distinct<S: Sample>(&mut self, sample: &S) {
        // One lookup, whether the value stays counted or goes.
        if let Some(distinct) = &mut self.distinct
            && let hash_map::Entry::Occupied(mut counted) = distinct.entry(sample.distinct_key())
        {
            if *counted.get() > 1 {
                *counted.get_mut() -= 1;
            } else {
                counted.remove();
            }
        }
    }

    /// The result of a numeric aggregation (`count` as a float, exact
    /// below 2^53), `None` when the aggregate is empty (a count is 0).
    /// Numbers go straight into a column, never through a [`Value`].
    pub(super) fn number(&self, agg: Agg) -> Option<f64> {
        aggregate_number(agg, self.count, &self.sum, Some(&self.spread))
    }

    pub(super) fn result(&self, agg: Agg) -> Value {
        match agg {
            Agg::Count => Value::I64(self.count as i64),
            Agg::DistinctCount => {
                Value::I64(self.distinct.as_ref().map_or(0, |distinct| distinct.len()) as i64)
            }
            Agg::Prev | Agg::SincePrev => Value::Null,
            _ => self.number(agg).map_or(Value::Null, Value::F64),
        }
    }
}

/// One kept record: its event time and its sample.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry<S> {
    time: i64,
    value: S,
}

/// State of a windowed aggregate for one key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowState<S> {
    /// Kept entries, sorted by event time (ties in arrival order).
    entries: VecDeque<Entry<S>>,
    /// Newest event time seen for the key (over all its records).
    newest: Option<i64>,
    /// Finite windows: index of the first entry inside `(newest - W, newest]`.
    start: usize,
    /// Finite windows: aggregates of `entries[start..]`. Lifetime: of every
    /// entry ever added.
    running: Running,
    /// Finite windows, min/max: indices of entries in the window forming the
    /// monotonic deque; rebuilt when an out-of-order entry lands in it.
    extremes: VecDeque<(i64, f64)>,
    extremes_stale: bool,
    /// Lifetime: aggregates of entries no longer kept.
    settled: Option<Box<Running>>,
}

impl<S> Default for WindowState<S> {
    fn default() -> Self {
        WindowState {
            entries: VecDeque::new(),
            newest: None,
            start: 0,
            running: Running::default(),
            extremes: VecDeque::new(),
            extremes_stale: false,
            settled: None,
        }
    }
}

impl<S: Sample> WindowState<S> {
    fn update(
        &mut self,
        agg: Agg,
        window: WindowMs,
        bound_ms: i64,
        time: i64,
        value: Option<&Value>,
    ) -> Value {
        let entry = match value {
            Some(Value::Null) => None,
            value => Some(S::from_value(value)),
        };
        self.insert(agg, window, bound_ms, time, entry);
        self.query(agg, window, time)
    }

    fn insert(&mut self, agg: Agg, window: WindowMs, bound_ms: i64, time: i64, entry: Option<S>) {
        let newest = self.newest.map_or(time, |newest| newest.max(time));
        self.newest = Some(newest);
        if let Some(value) = entry {
            let in_order = self.entries.back().is_none_or(|last| last.time <= time);
            let position = if in_order {
                self.entries.len()
            } else {
                self.entries.partition_point(|kept| kept.time <= time)
            };
            let inside_window = window.is_none_or(|w| time > newest - w);
            if inside_window {
                self.running.add(agg, &value);
                if agg.tracks_extremes() && window.is_some() {
                    if in_order {
                        push_extreme(&mut self.extremes, agg, time, value.number());
                    } else {
                        self.extremes_stale = true;
                    }
                }
            } else if position <= self.start {
                self.start += 1;
            }
            if in_order {
                self.entries.push_back(Entry { time, value });
            } else {
                self.entries.insert(position, Entry { time, value });
            }
        }
        match window {
            Some(w) => self.slide(agg, w, bound_ms, newest),
            None => self.settle(agg, bound_ms, newest),
        }
    }

    /// Finite windows: moves the window start up to `newest - w` and drops
    /// entries no non-late record can need any more.
    fn slide(&mut self, agg: Agg, w: i64, bound_ms: i64, newest: i64) {
        while let Some(entry) = self.entries.get(self.start) {
            if entry.time > newest - w {
                break;
            }
            self.running.remove(agg, &entry.value);
            self.start += 1;
        }
        while self
            .extremes
            .front()
            .is_some_and(|(time, _)| *time <= newest - w)
        {
            self.extremes.pop_front();
        }
        let horizon = newest.saturating_sub(w).saturating_sub(bound_ms);
        while self.start > 0
            && self
                .entries
                .front()
                .is_some_and(|entry| entry.time <= horizon)
        {
            self.entries.pop_front();
            self.start -= 1;
        }
    }

    /// Lifetime: folds entries older than the bound into `settled`.
    fn settle(&mut self, agg: Agg, bound_ms: i64, newest: i64) {
        let horizon = newest.saturating_sub(bound_ms);
        while let Some(entry) = self.entries.front() {
            if entry.time > horizon {
                break;
            }
            self.settled
                .get_or_insert_with(Default::default)
                .add(agg, &entry.value);
            self.entries.pop_front();
        }
    }

    fn query(&mut self, agg: Agg, window: WindowMs, time: i64) -> Value {
        if Some(time) == self.newest {
            return self.query_newest(agg, window);
        }
        let mut running = match window {
            Some(_) => Running::default(),
            None => self.settled.as_deref().cloned().unwrap_or_default(),
        };
        let low = window.map(|w| time - w);
        for entry in &self.entries {
            if entry.time > time {
                break;
            }
            if low.is_none_or(|low| entry.time > low) {
                running.add(agg, &entry.value);
            }
        }
        running.result(agg)
    }

    fn query_newest(&mut self, agg: Agg, window: WindowMs) -> Value {
        if window.is_none() || !agg.tracks_extremes() || self.running.count == 0 {
            return self.running.result(agg);
        }
        if self.extremes_stale {
            self.extremes.clear();
            for entry in self.entries.range(self.start..) {
                push_extreme(&mut self.extremes, agg, entry.time, entry.value.number());
            }
            self.extremes_stale = false;
        }
        self.extremes
            .front()
            .map_or(Value::Null, |(_, extreme)| Value::F64(*extreme))
    }
}

/// Pushes onto a monotonic deque whose front is the window's min (or max).
pub(super) fn push_extreme(extremes: &mut VecDeque<(i64, f64)>, agg: Agg, time: i64, number: f64) {
    // In total order, so that among equal values (0.0 and -0.0 compare
    // equal as numbers) the deque's front is the same whatever came first.
    let dominated = |kept: f64| {
        let order = kept.total_cmp(&number);
        if agg == Agg::Min {
            order.is_ge()
        } else {
            order.is_le()
        }
    };
    while extremes.back().is_some_and(|(_, kept)| dominated(*kept)) {
        extremes.pop_back();
    }
    extremes.push_back((time, number));
}
