//! The numeric window features of a key (count, sum, mean, min, max, std)
//! over one shared list of the key's records.
//!
//! A stage's numeric features differ only in their field, their window and
//! what they read from the aggregate, so a key keeps its records once (an
//! event time and one sample per aggregated field, in one ring buffer) and
//! each distinct (field, window) pair keeps a cursor into that list and a
//! running aggregate. A record then touches one buffer instead of one per
//! feature, which is what bounds throughput when the keys outgrow the cache.
//! The semantics are exactly those of [`super::window`]: the same entries
//! are added and removed in the same order, so every result is the same to
//! the bit.

use super::exact::ExactSum;
use super::window::{Agg, Running, Spread, WindowMs, aggregate_number, push_extreme};
use crate::batch::{Cells, RowCells};
use crate::cache;
use crate::features::WindowFeature;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::ops::Range;
use tideflow_connectors::Value;

/// The sample of a null field value: a NaN payload no data value carries,
/// since real NaNs are stored as the canonical one.
const NULL_SAMPLE: u64 = 0x7ff8_dead_beef_0001;

/// How a stage's numeric features map onto columns, groups and extremes;
/// resolved once from the stage plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct NumericLayout {
    /// Row slots of the aggregated fields, one sample column each.
    columns: Vec<usize>,
    /// One running aggregate per distinct (column, window).
    groups: Vec<GroupPlan>,
    /// The numeric features, in stage order.
    features: Vec<NumericFeature>,
    /// Number of min/max features over finite windows (each keeps a
    /// monotonic deque).
    extremes: usize,
    /// Number of groups with [`GroupExtras`].
    extra_groups: usize,
    /// The min/max features over finite windows, each with its monotonic
    /// deque, in stage order.
    extreme_plans: Vec<ExtremePlan>,
    /// The longest finite window; records older than this plus the bound
    /// are needed by no group (lifetime groups fold them in first).
    longest_finite: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct GroupPlan {
    /// Sample column, or `None` to count every record.
    column: Option<usize>,
    window: WindowMs,
    /// The aggregation the running aggregate is kept for: that of the
    /// group's feature that needs the most of it (see [`Agg::keeps_more`]).
    keeps: Agg,
    /// Index of the group's [`GroupExtras`] among the key's: groups that
    /// keep squares or extremes, and lifetime groups.
    extras: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct NumericFeature {
    /// The feature's index in its stage: the column it is written to.
    output: usize,
    agg: Agg,
    group: usize,
    /// Index of the feature's monotonic deque (finite min/max only).
    extremes: Option<usize>,
}

/// A min/max feature over a finite window, kept by a monotonic deque.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ExtremePlan {
    agg: Agg,
    group: usize,
    /// Index of its deque among the key's.
    index: usize,
}

impl NumericLayout {
    /// The layout of the numeric features among `features` (those for
    /// which [`is_numeric`] holds).
    fn new(features: &[WindowFeature]) -> Self {
        let mut layout = NumericLayout::default();
        let numeric = features
            .iter()
            .enumerate()
            .filter(|(_, feature)| is_numeric(feature.agg));
        for (output, feature) in numeric {
            let column = feature.field.map(|slot| {
                layout
                    .columns
                    .iter()
                    .position(|kept| *kept == slot)
                    .unwrap_or_else(|| {
                        layout.columns.push(slot);
                        layout.columns.len() - 1
                    })
            });
            let group = layout
                .groups
                .iter()
                .position(|group| group.column == column && group.window == feature.window)
                .unwrap_or_else(|| {
                    layout.groups.push(GroupPlan {
                        column,
                        window: feature.window,
                        keeps: Agg::Count,
                        extras: None,
                    });
                    layout.groups.len() - 1
                });
            // A finite min/max reads its monotonic deque, not the
            // aggregate's extremes, and needs no more than the count.
            let kept_by_deque =
                matches!(feature.agg, Agg::Min | Agg::Max) && feature.window.is_some();
            let needs = if kept_by_deque {
                Agg::Count
            } else {
                feature.agg
            };
            if needs.keeps_more(layout.groups[group].keeps) {
                layout.groups[group].keeps = needs;
            }
            let extremes = kept_by_deque.then(|| {
                layout.extreme_plans.push(ExtremePlan {
                    agg: feature.agg,
                    group,
                    index: layout.extremes,
                });
                layout.extremes += 1;
                layout.extremes - 1
            });
            layout.features.push(NumericFeature {
                output,
                agg: feature.agg,
                group,
                extremes,
            });
            if let Some(window) = feature.window {
                layout.longest_finite = Some(layout.longest_finite.unwrap_or(0).max(window));
            }
        }
        for group in &mut layout.groups {
            if group.keeps.keeps_more(Agg::Sum) || group.window.is_none() {
                group.extras = Some(layout.extra_groups);
                layout.extra_groups += 1;
            }
        }
        layout
    }

    /// Whether the stage has numeric features at all.
    fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Words per record in the ring: the time, then one per column.
    fn stride(&self) -> usize {
        1 + self.columns.len()
    }
}

/// Whether an aggregation is kept by [`NumericState`] (the others keep state
/// of their own: `distinct_count` the values, `prev`/`since_prev` the last
/// record).
pub fn is_numeric(agg: Agg) -> bool {
    !matches!(agg, Agg::DistinctCount | Agg::Prev | Agg::SincePrev)
}

/// The numeric window state of a stage's keys, in flat blocks indexed by
/// key slot (a record ring, then the key's groups and extremes side by
/// side), so a key's state is found without chasing a pointer per feature.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NumericState {
    layout: NumericLayout,
    rings: Vec<RecordRing>,
    groups: Vec<WindowGroup>,
    extras: Vec<GroupExtras>,
    extremes: Vec<Extremes>,
}

impl NumericState {
    /// Empty state for a stage's features.
    pub fn new(features: &[WindowFeature]) -> Self {
        NumericState {
            layout: NumericLayout::new(features),
            ..NumericState::default()
        }
    }

    /// Makes room for `keys` more keys, so that filing many at once (a
    /// restore) grows each vector once rather than by doubling, each
    /// growth a copy into freshly faulted memory.
    pub fn reserve(&mut self, keys: usize) {
        if self.layout.is_empty() {
            return;
        }
        self.rings.reserve(keys);
        self.groups.reserve(keys * self.layout.groups.len());
        self.extras.reserve(keys * self.layout.extra_groups);
        self.extremes.reserve(keys * self.layout.extremes);
    }

    /// Gives key slot `slot` fresh state: the next new slot, or one freed
    /// by an evicted key.
    pub fn reset(&mut self, slot: usize) {
        if self.layout.is_empty() {
            return;
        }
        let (groups, extras, extremes) = (
            self.layout.groups.len(),
            self.layout.extra_groups,
            self.layout.extremes,
        );
        if slot == self.rings.len() {
            self.rings.push(RecordRing::default());
            self.groups
                .resize_with((slot + 1) * groups, WindowGroup::default);
            self.extras
                .resize_with((slot + 1) * extras, GroupExtras::default);
            self.extremes
                .resize_with((slot + 1) * extremes, Extremes::default);
            return;
        }
        // A freed slot keeps its buffers for the key that takes it next:
        // where keys come and go, freeing them and allocating them again
        // cost more than the records themselves.
        self.rings[slot].clear();
        self.groups[slot * groups..(slot + 1) * groups].fill_with(WindowGroup::default);
        self.extras[slot * extras..(slot + 1) * extras].fill_with(GroupExtras::default);
        for extremes in &mut self.extremes[slot * extremes..(slot + 1) * extremes] {
            extremes.deque.clear();
            extremes.stale = false;
        }
    }

    /// Takes the state of the key in `slot` out, leaving the slot empty
    /// (to move the key to another stage: see [`NumericState::put_key`]).
    pub fn take_key(&mut self, slot: usize) -> NumericKey {
        if self.layout.is_empty() {
            return NumericKey::default();
        }
        let (groups, extras, extremes) = self.blocks(slot);
        NumericKey {
            ring: std::mem::take(&mut self.rings[slot]),
            groups: self.groups[groups].iter_mut().map(std::mem::take).collect(),
            extras: self.extras[extras].iter_mut().map(std::mem::take).collect(),
            extremes: self.extremes[extremes]
                .iter_mut()
                .map(std::mem::take)
                .collect(),
        }
    }

    /// Gives key slot `slot`, freshly [`reset`](NumericState::reset), the
    /// state of a key taken from a stage with the same features.
    pub fn put_key(&mut self, slot: usize, key: NumericKey) {
        if self.layout.is_empty() {
            return;
        }
        let (groups, extras, extremes) = self.blocks(slot);
        self.rings[slot] = key.ring;
        self.groups[groups].clone_from_slice(&key.groups);
        self.extras[extras].clone_from_slice(&key.extras);
        self.extremes[extremes].clone_from_slice(&key.extremes);
    }

    /// What the key in `slot` changed since the last checkpoint.
    pub fn change_of(&self, slot: usize) -> NumericKeyChangeRef<'_> {
        let (groups, extras, extremes) = self.blocks(slot);
        NumericKeyChangeRef {
            ring: RingChangeRef {
                ring: self.rings.get(slot),
            },
            groups: self.groups.get(groups).unwrap_or_default(),
            extras: self.extras.get(extras).unwrap_or_default(),
            extremes: self.extremes.get(extremes).unwrap_or_default(),
        }
    }

    /// Records that a checkpoint now holds the key in `slot` as it is.
    pub fn mark_kept(&mut self, slot: usize) {
        if let Some(ring) = self.rings.get_mut(slot) {
            ring.mark_kept();
        }
    }

    /// Records that a checkpoint now holds every key as it is.
    pub fn mark_all_kept(&mut self) {
        self.rings.iter_mut().for_each(RecordRing::mark_kept);
    }

    /// Records held over all keys, and the bytes each takes in a
    /// checkpoint.
    pub fn held_records(&self) -> (usize, usize) {
        let held = self.rings.iter().map(RecordRing::len).sum();
        (held, self.layout.stride() * std::mem::size_of::<u64>())
    }

    /// Where the groups, extras and extremes of the key in `slot` lie in
    /// their flat vectors.
    fn blocks(&self, slot: usize) -> (Range<usize>, Range<usize>, Range<usize>) {
        let block = |width: usize| slot * width..(slot + 1) * width;
        (
            block(self.layout.groups.len()),
            block(self.layout.extra_groups),
            block(self.layout.extremes),
        )
    }

    /// Adds a record of the key in `slot` (event time `time`, fields in
    /// `values`; the key's newest time, this record included, is
    /// `newest`, at most `bound_ms` ahead of `time`) and appends every
    /// numeric feature's value for it to the feature's column (`columns`
    /// has one per feature of the stage, in stage order).
    pub fn update(
        &mut self,
        slot: usize,
        bound_ms: i64,
        newest: i64,
        time: i64,
        fields: &RowCells<'_, '_>,
        columns: &mut [Cells],
    ) {
        if self.layout.is_empty() {
            return;
        }
        let (groups, extras, extremes) = (
            self.layout.groups.len(),
            self.layout.extra_groups,
            self.layout.extremes,
        );
        KeyNumbers {
            layout: &self.layout,
            ring: &mut self.rings[slot],
            groups: &mut self.groups[slot * groups..(slot + 1) * groups],
            extras: &mut self.extras[slot * extras..(slot + 1) * extras],
            extremes: &mut self.extremes[slot * extremes..(slot + 1) * extremes],
        }
        .update(bound_ms, newest, time, fields, columns);
    }

    /// Bytes of fixed-size state per key: the ring's header, the running
    /// aggregates (with their extras) and the deque headers.
    pub fn header_bytes_per_key(&self) -> usize {
        if self.layout.is_empty() {
            return 0;
        }
        std::mem::size_of::<RecordRing>()
            + self.layout.groups.len() * std::mem::size_of::<WindowGroup>()
            + self.layout.extra_groups * std::mem::size_of::<GroupExtras>()
            + self.layout.extremes * std::mem::size_of::<Extremes>()
    }

    /// Asks for the memory the next update of `slot` will touch, in two
    /// steps a few rows apart: first the key's headers, then, with those
    /// in cache, the records they point at (the newest, each window's
    /// first, and the ends of the monotonic deques).
    pub fn prefetch(&self, slot: usize, step: Prefetch) {
        let Some(ring) = self.rings.get(slot) else {
            return;
        };
        let groups = &self.groups[slot * self.layout.groups.len()..][..self.layout.groups.len()];
        let extras = &self.extras[slot * self.layout.extra_groups..][..self.layout.extra_groups];
        let extremes = &self.extremes[slot * self.layout.extremes..][..self.layout.extremes];
        match step {
            Prefetch::Headers => {
                cache::prefetch(ring);
                cache::prefetch_all(groups);
                cache::prefetch_all(extras);
                cache::prefetch_all(extremes);
            }
            Prefetch::Records => {
                let stride = self.layout.stride();
                // Where the record will be written: its line is a new one
                // once in every few records, and cold then.
                if ring.len < ring.capacity {
                    cache::prefetch(ring.entry(stride, ring.len()));
                }
                for group in groups.iter().filter(|group| group.start < ring.len()) {
                    cache::prefetch(ring.entry(stride, group.start));
                }
                for deque in extremes.iter().map(|extremes| &extremes.deque) {
                    deque.front().into_iter().for_each(cache::prefetch);
                    deque.back().into_iter().for_each(cache::prefetch);
                }
            }
        }
    }
}

/// One key's numeric state on its own, as [`NumericState::take_key`]
/// gives it: to move a key between stages of different workers when a
/// checkpoint is restored onto another number of them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NumericKey {
    ring: RecordRing,
    groups: Vec<WindowGroup>,
    extras: Vec<GroupExtras>,
    extremes: Vec<Extremes>,
}

/// What one key's numeric state changed since the last checkpoint,
/// borrowed from its stage to encode: its ring's change (see
/// [`RingChangeRef`]) and its running aggregates and deques whole.
#[derive(Debug, Serialize)]
pub struct NumericKeyChangeRef<'a> {
    ring: RingChangeRef<'a>,
    groups: &'a [WindowGroup],
    extras: &'a [GroupExtras],
    extremes: &'a [Extremes],
}

/// A [`NumericKeyChangeRef`] read back.
#[derive(Debug, Deserialize)]
pub struct NumericKeyChange {
    ring: RingChange,
    groups: Vec<WindowGroup>,
    extras: Vec<GroupExtras>,
    extremes: Vec<Extremes>,
}

impl NumericKeyChange {
    /// The key's state after the change, from its state before (`None`:
    /// the key had no state then, or another key held its slot).
    pub fn apply(self, base: Option<&NumericKey>) -> Result<NumericKey, String> {
        let ring = match base {
            Some(base) => self.ring.apply(&base.ring)?,
            None => self.ring.apply(&RecordRing::default())?,
        };
        Ok(NumericKey {
            ring,
            groups: self.groups,
            extras: self.extras,
            extremes: self.extremes,
        })
    }
}

/// What [`NumericState::prefetch`] asks for.
#[derive(Clone, Copy, Debug)]
pub enum Prefetch {
    /// The key's ring header, running aggregates (with their extras) and
    /// deque headers.
    Headers,
    /// The records the headers point at.
    Records,
}

/// One key's part of a [`NumericState`].
struct KeyNumbers<'state> {
    layout: &'state NumericLayout,
    ring: &'state mut RecordRing,
    groups: &'state mut [WindowGroup],
    extras: &'state mut [GroupExtras],
    extremes: &'state mut [Extremes],
}

/// A running aggregate over one column and window: the count and exact
/// sum every group keeps. What few groups need beyond them lives apart, in
/// [`GroupExtras`], so that a key's groups share a cache line or two.
///
/// The sums are exact ([`ExactSum`]), so results are the same to the bit
/// as those of [`super::window`] and of any other history of the window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct WindowGroup {
    /// Finite windows: ring index of the first record inside
    /// `(newest - W, newest]`.
    start: usize,
    /// Non-null samples aggregated: finite windows, from `start` on;
    /// lifetime, every one ever added.
    count: u64,
    sum: ExactSum,
}

/// The rest of a group's aggregate, for groups that keep squares (`std`)
/// or extremes (lifetime `min`/`max`), and for lifetime groups.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct GroupExtras {
    spread: Spread,
    /// Lifetime: aggregate of the samples no longer in the ring.
    settled: Option<Box<Running>>,
}

impl WindowGroup {
    /// Adds a sample to the count and sum; returns whether it is the
    /// first, for the group's extras (see [`GroupExtras::add`]).
    #[inline]
    fn add(&mut self, keeps: Agg, number: f64) -> bool {
        let first = self.count == 0;
        self.count += 1;
        if keeps.keeps_more(Agg::Count) {
            self.sum.add(number);
        }
        first
    }

    /// Removes a sample added before; returns whether the aggregate is
    /// now empty, for the group's extras (see [`GroupExtras::remove`]).
    #[inline]
    fn remove(&mut self, keeps: Agg, number: f64) -> bool {
        self.count -= 1;
        if self.count == 0 {
            // The sum is exactly zero again; clearing gives up any heap
            // form it took.
            self.sum.clear();
        } else if keeps.keeps_more(Agg::Count) {
            self.sum.remove(number);
        }
        self.count == 0
    }

    /// The value of a feature reading the group (as [`Running::number`]);
    /// `None` when the aggregate is empty. The layout gives every group
    /// whose features read squares or extremes its extras.
    fn number(&self, agg: Agg, extras: Option<&GroupExtras>) -> Option<f64> {
        aggregate_number(
            agg,
            self.count,
            &self.sum,
            extras.map(|extras| &extras.spread),
        )
    }
}

impl GroupExtras {
    /// Adds a sample's square and, for min/max, its extreme (`first`: the
    /// group was empty before it).
    fn add(&mut self, keeps: Agg, number: f64, first: bool) {
        if keeps.keeps_more(Agg::Sum) {
            self.spread.add(number, keeps.keeps_more(Agg::Std), first);
        }
    }

    /// Removes a sample's square (`emptied`: the group is now empty).
    fn remove(&mut self, keeps: Agg, number: f64, emptied: bool) {
        if emptied {
            self.spread.sum_squares.clear();
        } else if keeps.keeps_more(Agg::Sum) {
            self.spread.sum_squares.remove_square(number);
        }
    }
}

/// The monotonic deque of a min/max over a finite window: (time, value),
/// its front the extreme; rebuilt when an out-of-order record lands in it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Extremes {
    deque: VecDeque<(i64, f64)>,
    stale: bool,
}

impl KeyNumbers<'_> {
    fn update(
        &mut self,
        bound_ms: i64,
        newest: i64,
        time: i64,
        fields: &RowCells<'_, '_>,
        columns: &mut [Cells],
    ) {
        let layout = self.layout;
        let stride = layout.stride();
        // The ring holds every record of the key not yet forgotten, and
        // never forgets the newest, so the record is in order (at or after
        // the ring's last) exactly when it is the newest: known without
        // reading the ring's tail, which is likely not in cache.
        let in_order = time == newest;
        let position = if in_order {
            self.ring.len()
        } else {
            self.ring.partition_point(stride, time)
        };
        let samples = self.ring.insert(stride, position, time);
        for (sample, slot) in samples.iter_mut().zip(&layout.columns) {
            *sample = to_sample(&fields.value(*slot));
        }
        self.add_and_slide(newest, time, position, in_order);
        self.forget(bound_ms, newest);
        for feature in &layout.features {
            // An in-order count is the running count itself, not a float
            // made of it and converted back.
            let count =
                (feature.agg == Agg::Count && in_order).then(|| self.groups[feature.group].count);
            let number = match count {
                Some(_) => None,
                None => self.query(feature, newest, time),
            };
            let column = &mut columns[feature.output];
            match (feature.agg, count) {
                (_, Some(count)) => column.push_i64(Some(count as i64)),
                (Agg::Count, None) => column.push_i64(number.map(|count| count as i64)),
                _ => column.push_f64(number),
            }
        }
    }

    /// Adds the record at `position` to each group and extreme whose
    /// window holds it, then moves each finite window's start up to
    /// `newest - W`: one pass over the groups, since each is on its own.
    fn add_and_slide(&mut self, newest: i64, time: i64, position: usize, in_order: bool) {
        let layout = self.layout;
        let stride = layout.stride();
        let entry = self.ring.base(stride, position);
        // A record at the newest time is inside every window (windows are
        // longer than zero); only one behind it needs the comparison.
        let inside = |plan: &GroupPlan| in_order || plan.window.is_none_or(|w| time > newest - w);
        for (group, plan) in self.groups.iter_mut().zip(&layout.groups) {
            if !inside(plan) {
                // Landed before the window's start.
                group.start += 1;
            } else if let Some(number) = self.ring.sample_at(entry, plan.column) {
                let first = group.add(plan.keeps, number);
                if let Some(index) = plan.extras {
                    self.extras[index].add(plan.keeps, number, first);
                }
            }
            let Some(w) = plan.window else {
                continue;
            };
            while group.start < self.ring.len() {
                let first = self.ring.base(stride, group.start);
                if self.ring.words[first] as i64 > newest - w {
                    break;
                }
                if let Some(number) = self.ring.sample_at(first, plan.column) {
                    let emptied = group.remove(plan.keeps, number);
                    if let Some(index) = plan.extras {
                        self.extras[index].remove(plan.keeps, number, emptied);
                    }
                }
                group.start += 1;
            }
        }
        for extreme in &layout.extreme_plans {
            let plan = &layout.groups[extreme.group];
            let extremes = &mut self.extremes[extreme.index];
            if let Some(number) = self.ring.sample_at(entry, plan.column)
                && inside(plan)
            {
                if in_order {
                    push_extreme(&mut extremes.deque, extreme.agg, time, number);
                } else {
                    extremes.stale = true;
                }
            }
            let Some(w) = plan.window else {
                continue;
            };
            while extremes
                .deque
                .front()
                .is_some_and(|(time, _)| *time <= newest - w)
            {
                extremes.deque.pop_front();
            }
        }
    }

    /// Drops records no non-late record can need any more: older than the
    /// longest finite window plus the bound (or the bound alone when every
    /// window is lifetime). Lifetime groups fold them into `settled` first.
    fn forget(&mut self, bound_ms: i64, newest: i64) {
        let layout = self.layout;
        let stride = layout.stride();
        let horizon = newest
            .saturating_sub(layout.longest_finite.unwrap_or(0))
            .saturating_sub(bound_ms);
        while self.ring.len > 0 && self.ring.time(stride, 0) <= horizon {
            for (group, plan) in self.groups.iter_mut().zip(&layout.groups) {
                if plan.window.is_some() {
                    group.start -= 1;
                } else if let (Some(number), Some(index)) =
                    (self.ring.sample(stride, 0, plan.column), plan.extras)
                {
                    self.extras[index]
                        .settled
                        .get_or_insert_with(Default::default)
                        .add(plan.keeps, &number);
                }
            }
            self.ring.pop_front();
        }
    }

    /// The feature's value for a record at `time` (see [`Running::number`]).
    fn query(&mut self, feature: &NumericFeature, newest: i64, time: i64) -> Option<f64> {
        let layout = self.layout;
        let plan = &layout.groups[feature.group];
        let group = &self.groups[feature.group];
        if time != newest {
            return self.scan(feature, time);
        }
        let (Some(index), true) = (feature.extremes, group.count > 0) else {
            let extras = plan.extras.map(|index| &self.extras[index]);
            return group.number(feature.agg, extras);
        };
        let stride = layout.stride();
        let extremes = &mut self.extremes[index];
        if extremes.stale {
            extremes.deque.clear();
            for position in group.start..self.ring.len() {
                if let Some(number) = self.ring.sample(stride, position, plan.column) {
                    let time = self.ring.time(stride, position);
                    push_extreme(&mut extremes.deque, feature.agg, time, number);
                }
            }
            extremes.stale = false;
        }
        extremes.deque.front().map(|(_, extreme)| *extreme)
    }

    /// The value for a record behind the key's newest: computed from the
    /// records its own window covers.
    fn scan(&self, feature: &NumericFeature, time: i64) -> Option<f64> {
        let layout = self.layout;
        let plan = &layout.groups[feature.group];
        let stride = layout.stride();
        let mut running = match plan.window {
            Some(_) => Running::default(),
            None => plan
                .extras
                .and_then(|index| self.extras[index].settled.as_deref())
                .cloned()
                .unwrap_or_default(),
        };
        let low = plan.window.map(|w| time - w);
        for position in 0..self.ring.len() {
            let kept = self.ring.time(stride, position);
            if kept > time {
                break;
            }
            if low.is_none_or(|low| kept > low)
                && let Some(number) = self.ring.sample(stride, position, plan.column)
            {
                running.add(feature.agg, &number);
            }
        }
        running.number(feature.agg)
    }
}

/// A field value as a sample: its number, 1 for a non-null value that is
/// not a number (what `count(field)` needs), or the null marker.
fn to_sample(value: &Value) -> u64 {
    match value {
        Value::Null => NULL_SAMPLE,
        value => match value.as_f64() {
            Some(number) if number.is_nan() => f64::NAN.to_bits(),
            Some(number) => number.to_bits(),
            None => 1.0f64.to_bits(),
        },
    }
}

/// The records of one key, oldest first, in one ring buffer of fixed-size
/// entries: the event time, then one sample per column. The entry size
/// (the stride) is the stage's, passed in rather than stored per key.
///
/// The header takes 32 bytes, so that a key's never straddles two cache
/// lines: entry counts are 32-bit (at 16 bytes an entry at least, 2^32 of
/// one key's records would take 64 GiB).
///
/// For incremental checkpoints (see [`RingChange`]) the ring knows how
/// many records it ever dropped from its front (which also places its
/// oldest record: no separate head) and how many at its front are as the
/// last checkpoint holds them.
#[derive(Clone, Debug, Default)]
struct RecordRing {
    /// `capacity * stride` words.
    words: Box<[u64]>,
    /// Entries the words hold: a power of two (or zero), kept rather than
    /// divided out of `words.len()` on every access.
    capacity: u32,
    /// Records ever dropped from the front, wrapping: the oldest record
    /// is entry `popped % capacity` (a power of two divides 2^32, so the
    /// wrap keeps the place).
    popped: u32,
    len: u32,
    /// Records at the front that the last checkpoint holds as they are
    /// now: dropping from the front and inserting behind them keeps them;
    /// inserting among them cuts them short at the insertion.
    kept: u32,
}

impl RecordRing {
    /// Number of records held.
    fn len(&self) -> usize {
        self.len as usize
    }

    /// Word index of entry `position`.
    fn base(&self, stride: usize, position: usize) -> usize {
        ((self.popped as usize + position) & (self.capacity as usize).wrapping_sub(1)) * stride
    }

    fn time(&self, stride: usize, position: usize) -> i64 {
        *self.entry(stride, position) as i64
    }

    /// The first word of entry `position` (its time).
    fn entry(&self, stride: usize, position: usize) -> &u64 {
        &self.words[self.base(stride, position)]
    }

    /// The sample of `column` (`None`: counting records, which every entry
    /// is) at `position`; `None` when the field was null.
    fn sample(&self, stride: usize, position: usize, column: Option<usize>) -> Option<f64> {
        self.sample_at(self.base(stride, position), column)
    }

    /// [`RecordRing::sample`] of the entry at word index `base`.
    fn sample_at(&self, base: usize, column: Option<usize>) -> Option<f64> {
        let Some(column) = column else {
            return Some(1.0);
        };
        let word = self.words[base + 1 + column];
        (word != NULL_SAMPLE).then(|| f64::from_bits(word))
    }

    /// The first position whose time is after `time` (records of equal
    /// time keep their arrival order).
    fn partition_point(&self, stride: usize, time: i64) -> usize {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = (low + high) / 2;
            if self.time(stride, middle) <= time {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// Inserts an entry at `position` with its time set, and returns its
    /// sample words to fill.
    fn insert(&mut self, stride: usize, position: usize, time: i64) -> &mut [u64] {
        if self.len == self.capacity {
            self.grow(stride);
        }
        self.len += 1;
        if position < self.kept as usize {
            self.kept = position as u32;
        }
        // Entries after the position move one place towards the back.
        for moved in (position + 1..self.len()).rev() {
            let (to, from) = (self.base(stride, moved), self.base(stride, moved - 1));
            self.words.copy_within(from..from + stride, to);
        }
        let base = self.base(stride, position);
        self.words[base] = time as u64;
        &mut self.words[base + 1..base + stride]
    }

    /// Forgets every entry, keeping the buffer.
    fn clear(&mut self) {
        self.len = 0;
        self.kept = 0;
    }

    fn pop_front(&mut self) {
        self.popped = self.popped.wrapping_add(1);
        self.len -= 1;
        self.kept = self.kept.saturating_sub(1);
    }

    /// Doubles the capacity, each entry at its place in the larger buffer.
    fn grow(&mut self, stride: usize) {
        let capacity = (self.capacity * 2).max(4);
        let (first, second) = self.runs(stride, 0);
        let mut grown = RecordRing::from_runs(stride, capacity, self.popped, [first, second]);
        grown.kept = self.kept;
        *self = grown;
    }

    /// A ring of `capacity` entries holding the entries of `runs` (whole
    /// entries, oldest first), having dropped `popped` from its front.
    fn from_runs(stride: usize, capacity: u32, popped: u32, runs: [&[u64]; 2]) -> Self {
        let len = (runs[0].len() + runs[1].len()) / stride.max(1);
        debug_assert!(len <= capacity as usize);
        let mut ring = RecordRing {
            words: vec![0; capacity as usize * stride].into_boxed_slice(),
            capacity,
            popped,
            len: len as u32,
            kept: 0,
        };
        // Whole entries, copied in at most two pieces each side of the
        // buffer's end.
        let start = ring.base(stride, 0);
        let mut at = start;
        for run in runs {
            let mut rest = run;
            while !rest.is_empty() {
                let room = (ring.words.len() - at).min(rest.len());
                ring.words[at..at + room].copy_from_slice(&rest[..room]);
                rest = &rest[room..];
                at = (at + room) % ring.words.len();
            }
        }
        ring
    }

    /// The words of the entries from `position` on, oldest first, in two
    /// runs: up to the end of the buffer, and from its start.
    fn runs(&self, stride: usize, position: usize) -> (&[u64], &[u64]) {
        if position >= self.len() {
            return (&[], &[]);
        }
        let start = self.base(stride, position);
        let end = start + (self.len() - position) * stride;
        if end <= self.words.len() {
            (&self.words[start..end], &[])
        } else {
            (&self.words[start..], &self.words[..end - self.words.len()])
        }
    }

    /// The stride of a ring that holds words (0 for one that never did).
    fn stride(&self) -> usize {
        self.words
            .len()
            .checked_div(self.capacity as usize)
            .unwrap_or(0)
    }

    /// Records that from now on every record held is as a checkpoint
    /// holds it.
    fn mark_kept(&mut self) {
        self.kept = self.len;
    }
}

/// A ring in a checkpoint: its entry count, the records it dropped, then
/// its entries oldest first, every word as 8 little-endian bytes, in two
/// byte strings (the ring's two runs: up to the end of its buffer, and
/// from its start). The words go out as they lie in memory, where varints
/// would cost a loop per word (and ten bytes for most floats' bits); the
/// capacity the ring had is not kept.
impl Serialize for RecordRing {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (first, second) = self.runs(self.stride(), 0);
        (
            self.len,
            self.popped,
            LittleEndian(first),
            LittleEndian(second),
        )
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RecordRing {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (len, popped, RingWords(first), RingWords(second)) =
            <(u32, u32, RingWords, RingWords)>::deserialize(deserializer)?;
        RecordRing::from_parts(len, popped, [&first, &second]).map_err(serde::de::Error::custom)
    }
}

impl RecordRing {
    /// A ring of `len` entries, having dropped `popped`, from the words
    /// of its entries (in runs, oldest first) as a checkpoint holds them.
    fn from_parts(len: u32, popped: u32, runs: [&[u64]; 2]) -> Result<Self, String> {
        let words = runs[0].len() + runs[1].len();
        if len == 0 {
            return match words {
                0 => Ok(RecordRing {
                    popped,
                    ..RecordRing::default()
                }),
                _ => Err(format!("an empty ring cannot hold {words} words")),
            };
        }
        if words == 0
            || !words.is_multiple_of(len as usize)
            || !runs[0].len().is_multiple_of(words / len as usize)
        {
            return Err(format!("a ring of {len} records cannot hold {words} words"));
        }
        // As grown by doubling: a power of two, at least 4.
        let capacity = len.next_power_of_two().max(4);
        Ok(RecordRing::from_runs(
            words / len as usize,
            capacity,
            popped,
            runs,
        ))
    }
}

/// What a key's ring changed since the last checkpoint: the records
/// dropped from its front (as its count of drops now), how many of the
/// records the checkpoint holds then follow unchanged, and the records
/// after them. A ring whose records only arrive in order and leave from
/// the front (most keys) changes by its new records alone.
#[derive(Debug)]
struct RingChangeRef<'a> {
    /// The ring (`None`: the stage keeps none).
    ring: Option<&'a RecordRing>,
}

impl Serialize for RingChangeRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let empty = RecordRing::default();
        let ring = self.ring.unwrap_or(&empty);
        let (first, second) = ring.runs(ring.stride(), ring.kept as usize);
        (
            ring.len,
            ring.popped,
            ring.kept,
            LittleEndian(first),
            LittleEndian(second),
        )
            .serialize(serializer)
    }
}

/// A [`RingChangeRef`] read back, to apply to the ring it changed.
#[derive(Debug)]
struct RingChange {
    len: u32,
    popped: u32,
    kept: u32,
    appended: [Vec<u64>; 2],
}

impl<'de> Deserialize<'de> for RingChange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (len, popped, kept, RingWords(first), RingWords(second)) =
            <(u32, u32, u32, RingWords, RingWords)>::deserialize(deserializer)?;
        if kept > len {
            return Err(serde::de::Error::custom(format!(
                "a ring of {len} records cannot keep {kept}"
            )));
        }
        Ok(RingChange {
            len,
            popped,
            kept,
            appended: [first, second],
        })
    }
}

impl RingChange {
    /// The ring `base` became.
    fn apply(self, base: &RecordRing) -> Result<RecordRing, String> {
        let [first, second] = &self.appended;
        if self.kept == 0 {
            return RecordRing::from_parts(self.len, self.popped, [first, second]);
        }
        let dropped = self.popped.wrapping_sub(base.popped) as usize;
        if dropped + self.kept as usize > base.len() {
            return Err(format!(
                "a change keeping {} records after dropping {dropped} does not fit a ring of {}",
                self.kept,
                base.len()
            ));
        }
        let stride = base.stride();
        let appended = first.len() + second.len();
        if appended != (self.len - self.kept) as usize * stride {
            return Err(format!(
                "{} new records of {stride} words cannot be {appended} words",
                self.len - self.kept
            ));
        }
        let (kept_first, kept_second) = base.runs(stride, dropped);
        let kept_words = self.kept as usize * stride;
        let kept_first = &kept_first[..kept_first.len().min(kept_words)];
        let kept_second = &kept_second[..kept_words - kept_first.len()];
        let mut words = Vec::with_capacity(self.len as usize * stride);
        for run in [kept_first, kept_second, first, second] {
            words.extend_from_slice(run);
        }
        RecordRing::from_parts(self.len, self.popped, [&words, &[]])
    }
}

/// Words written as one byte string, 8 little-endian bytes each.
struct LittleEndian<'a>(&'a [u64]);

impl Serialize for LittleEndian<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if cfg!(target_endian = "little") {
            serializer.serialize_bytes(bytemuck::cast_slice(self.0))
        } else {
            let bytes: Vec<u8> = self.0.iter().flat_map(|word| word.to_le_bytes()).collect();
            serializer.serialize_bytes(&bytes)
        }
    }
}

/// Words read back from what [`LittleEndian`] wrote.
struct RingWords(Vec<u64>);

impl<'de> Deserialize<'de> for RingWords {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(RingWordsVisitor)
    }
}

struct RingWordsVisitor;

impl<'de> serde::de::Visitor<'de> for RingWordsVisitor {
    type Value = RingWords;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a ring's words as bytes, 8 a word")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<RingWords, E> {
        if !bytes.len().is_multiple_of(8) {
            return Err(E::custom(format!(
                "{} bytes are not whole words",
                bytes.len()
            )));
        }
        let words = bytes
            .chunks_exact(8)
            .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("chunks of 8")))
            .collect();
        Ok(RingWords(words))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnType;

    fn times(ring: &RecordRing, stride: usize) -> Vec<i64> {
        (0..ring.len())
            .map(|position| ring.time(stride, position))
            .collect()
    }

    /// A ring's header is half a cache line, so none straddles two.
    #[test]
    fn a_ring_header_is_32_bytes() {
        assert_eq!(std::mem::size_of::<RecordRing>(), 32);
    }

    /// Entries keep time order through growth, wrap-around and insertion
    /// behind the newest, with their samples alongside.
    #[test]
    fn the_ring_keeps_records_in_order_across_growth_and_wrap_around() {
        let stride = 2;
        let mut ring = RecordRing::default();
        let push = |ring: &mut RecordRing, time: i64| {
            let position = ring.partition_point(stride, time);
            ring.insert(stride, position, time)[0] = (time * 10) as u64;
        };
        for time in 0..5 {
            push(&mut ring, time);
        }
        for _ in 0..3 {
            ring.pop_front();
        }
        // Wrapped around the end of the buffer: an insertion moves entries
        // across the wrap, then the buffer grows.
        for time in [5, 6, 8, 9, 7, 10, 11, 3] {
            push(&mut ring, time);
        }
        assert_eq!(times(&ring, stride), vec![3, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        let samples: Vec<u64> = (0..ring.len())
            .map(|position| ring.words[ring.base(stride, position) + 1])
            .collect();
        assert_eq!(samples, vec![30, 30, 40, 50, 60, 70, 80, 90, 100, 110]);
    }

    /// A checkpoint holds a ring's records in order, unwrapped, without
    /// the room it had to grow into.
    #[test]
    fn a_wrapped_ring_reads_back_with_the_same_records_and_only_their_bytes() {
        let stride = 3;
        let mut ring = RecordRing::default();
        for time in 0..7 {
            let words = ring.insert(stride, time as usize, time);
            words.copy_from_slice(&[f64::to_bits(time as f64 + 0.1), u64::MAX - time as u64]);
        }
        for _ in 0..5 {
            ring.pop_front();
        }
        for time in 7..11 {
            let position = ring.len();
            ring.insert(stride, position, time)[0] = 1.5f64.to_bits();
        }
        assert!(
            ring.popped % ring.capacity + ring.len > ring.capacity,
            "wrapped"
        );
        let bytes = crate::checkpoint::encode(&ring);
        let back: RecordRing = crate::checkpoint::decode(&bytes).unwrap();
        let entries = |ring: &RecordRing| -> Vec<Vec<u64>> {
            (0..ring.len())
                .map(|position| {
                    let base = ring.base(stride, position);
                    ring.words[base..base + stride].to_vec()
                })
                .collect()
        };
        assert_eq!(entries(&back), entries(&ring));
        assert_eq!(times(&back, stride), (5..11).collect::<Vec<i64>>());
        let first_run = (ring.capacity - ring.popped % ring.capacity) as usize * stride * 8;
        let second_run = ring.len() * stride * 8 - first_run;
        assert!(first_run < 128 && second_run < 128);
        // (The count, the records dropped, each run's length, the words.)
        assert_eq!(bytes.len(), 1 + 1 + 1 + 1 + ring.len() * stride * 8);
        let torn = &bytes[..bytes.len() - 3];
        assert!(crate::checkpoint::decode::<RecordRing>(torn).is_err());
    }

    /// Nulls are kept as records (a count of records sees them) but skipped
    /// by every aggregate of the field.
    #[test]
    fn null_samples_are_skipped_by_aggregates_of_their_field() {
        let feature = |slot, agg, field| WindowFeature {
            name: format!("f{slot}"),
            slot,
            agg,
            field,
            window: Some(1_000),
        };
        let features = [
            feature(1, Agg::Count, None),
            feature(2, Agg::Count, Some(0)),
            feature(3, Agg::Sum, Some(0)),
            feature(4, Agg::Max, Some(0)),
        ];
        let mut state = NumericState::new(&features);
        state.reset(0);
        let mut newest = i64::MIN;
        let mut columns: Vec<Cells> = (0..features.len())
            .map(|_| Cells::for_type(ColumnType::Str, 3))
            .collect();
        for (time, amount) in [(1, Value::F64(2.0)), (2, Value::Null), (3, Value::F64(5.0))] {
            newest = newest.max(time);
            let record = crate::batch::Batch::from_rows(vec![crate::row::Row {
                values: vec![amount],
                ..Default::default()
            }]);
            state.update(0, 0, newest, time, &record.readers().row(0), &mut columns);
        }
        let columns: Vec<Vec<Value>> = columns.into_iter().map(Cells::into_values).collect();
        let results: Vec<Vec<Value>> = (0..3)
            .map(|record| {
                columns
                    .iter()
                    .map(|column| column[record].clone())
                    .collect()
            })
            .collect();
        // (count, count of the field, sum, max) after each record: the null
        // counts as a record and nowhere else.
        use Value::{F64, I64};
        assert_eq!(
            results[1..],
            [
                [I64(2), I64(1), F64(2.0), F64(2.0)],
                [I64(3), I64(2), F64(7.0), F64(5.0)],
            ]
        );
    }
}
