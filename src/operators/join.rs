//! The as-of join operator: events and a table's versions both routed by
//! key, each event held until the table's watermark has passed its time,
//! then given the columns of its key's version as of that time
//! ([`AsOfTable`]).
//!
//! An event leaves at the dataflow time it arrived at, not earlier, so
//! that downstream a frontier past a time still means every row read
//! before it has passed: the rows of a partition can then be put back in
//! offset order ([`super::offset_order`]) for a stage keyed by the
//! source's key. The table is settled up to the least time an event can
//! still have (the events' frontier, and the oldest event held), which
//! keeps one version per key plus those newer than that.

use super::RowStream;
use super::checkpointing::CutTracker;
use crate::checkpoint::FINAL;
use crate::checkpoint::restore::{JoinPart, JoinPartRef, part_name};
use crate::decode::fields_as_json;
use crate::joins::{AsOfTable, VersionOrder};
use crate::ordering::ReorderBuffer;
use crate::plan::JoinPlan;
use crate::row::{DeadLetter, Row};
use crate::run::{Shared, Stats};
use crate::sinks::DeadLetterWriter;
use crate::watermarks::HeldRows;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use tideflow_connectors::Value;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::{Operator, OutputBuilderSession};

/// The reason given to events of a required join without a version.
pub const NO_MATCH: &str = "no_match";

/// Joins rows with a table as of their event time.
pub trait JoinAsOf<'scope> {
    /// Adds join `index`'s columns to each row, from the version of its
    /// key in `table` (rows of the table's schema) as of the row's time;
    /// `table_key` is the table's key slot.
    fn join_as_of(
        self,
        table: RowStream<'scope>,
        join: (usize, JoinPlan, usize),
        dead_letters: Rc<RefCell<DeadLetterWriter>>,
        shared: Arc<Shared>,
    ) -> RowStream<'scope>;
}

/// What arrived at or after a cut in progress, held until the operator
/// has cut: versions of the table, or events.
#[derive(Debug)]
enum HeldBack {
    Versions(Vec<Row>),
    Events(Vec<Row>),
}

/// A join's state on one worker: the table's versions and the events
/// waiting for its watermark.
#[derive(Debug)]
struct Joining {
    join: JoinPlan,
    table_key: usize,
    versions: AsOfTable,
    waiting: ReorderBuffer,
}

impl Joining {
    /// The state restored from `part` (its waiting events sent at
    /// `start`), or an empty one.
    fn start(join: JoinPlan, table_key: usize, part: Option<JoinPart>, start: i64) -> Self {
        let mut joining = Joining {
            join,
            table_key,
            versions: AsOfTable::default(),
            waiting: ReorderBuffer::default(),
        };
        if let Some(part) = part {
            joining.versions = AsOfTable::from_entries(part.versions, part.settled);
            for row in part.waiting {
                joining.waiting.push(row, start);
            }
        }
        joining
    }

    fn take(&mut self, held: HeldBack, arrival: i64) {
        match held {
            HeldBack::Versions(rows) => {
                for row in rows {
                    insert_version(&mut self.versions, row, &self.join, self.table_key);
                }
            }
            HeldBack::Events(rows) => {
                for row in rows {
                    self.waiting.push(row, arrival);
                }
            }
        }
    }

    /// The events whose time is before `table_at` (all at the table's
    /// end), each with its arrival, joined; events of a required join
    /// without a version go to `refused`.
    fn release(
        &mut self,
        table_at: Option<i64>,
        mut refused: impl FnMut(&Row, &JoinPlan),
    ) -> Vec<(i64, Row)> {
        let on = self.join.on_slot;
        let released = self.waiting.release_with_arrivals(table_at);
        released
            .into_iter()
            .filter_map(|(arrival, mut row)| {
                let found = self.versions.lookup(row.cell(on), row.time);
                if found.is_none() && self.join.required {
                    refused(&row, &self.join);
                    return None;
                }
                add_columns(&mut row, &self.join.slots, found);
                Some((arrival, row))
            })
            .collect()
    }

    fn part(&self) -> JoinPartRef<'_> {
        JoinPartRef {
            versions: self.versions.entries(),
            settled: self.versions.settled(),
            waiting: self.waiting.rows().collect(),
        }
    }
}

impl<'scope> JoinAsOf<'scope> for RowStream<'scope> {
    fn join_as_of(
        self,
        table: RowStream<'scope>,
        (index, join, table_key): (usize, JoinPlan, usize),
        dead_letters: Rc<RefCell<DeadLetterWriter>>,
        shared: Arc<Shared>,
    ) -> RowStream<'scope> {
        let on = join.on_slot;
        let by_event_key = Exchange::new(move |row: &Row| row.cell(on).stable_hash());
        let by_table_key =
            Exchange::new(move |row: &Row| key_of_version(row, table_key).stable_hash());
        let name = format!("JoinAsOf({})", shared.plan.tables[join.table].input.name);
        let worker = self.scope().index();
        self.binary_frontier(
            table,
            by_event_key,
            by_table_key,
            &name,
            move |capability, _info| {
                let start = *capability.time();
                let mut capability = Some(capability);
                let restored = shared.restored.take_join(index, worker);
                let carried = restored.as_ref().map_or(0, |part| part.waiting.len());
                Stats::add(&shared.stats.carried, carried as u64);
                let mut joining = Joining::start(join, table_key, restored, start);
                let mut cuts = CutTracker::new(&shared, part_name(&format!("join{index}"), worker));
                let mut held_back: Vec<(i64, HeldBack)> = Vec::new();
                let mut held_rows = HeldRows::default();
                move |(events, events_frontier), (table, table_frontier), output| {
                    table.for_each(|time, rows| {
                        let arrival = time.least().copied().unwrap_or(i64::MIN);
                        let rows = HeldBack::Versions(std::mem::take(rows));
                        cuts.take_or_hold_back((arrival, rows), &mut held_back, |rows, at| {
                            joining.take(rows, at)
                        });
                    });
                    events.for_each(|time, rows| {
                        let arrival = time.least().copied().unwrap_or(i64::MIN);
                        let rows = HeldBack::Events(std::mem::take(rows));
                        cuts.take_or_hold_back((arrival, rows), &mut held_back, |rows, at| {
                            joining.take(rows, at)
                        });
                    });
                    let Some(held) = capability.as_mut() else {
                        return;
                    };
                    let refused =
                        |row: &Row, join: &JoinPlan| refuse(row, join, &shared, &dead_letters);
                    let table_at = table_frontier.frontier().first().copied();
                    // Until the join has cut, events at or past the cut's
                    // time wait: versions after the cut are held back.
                    let before_cut = before_cut(table_at, cuts.pending_time());
                    give_at_arrivals(
                        output,
                        held,
                        joining.release(before_cut, refused).into_iter(),
                    );
                    let frontier =
                        both_frontiers(&events_frontier.frontier(), &table_frontier.frontier());
                    while let Some(cut) = cuts.due(&frontier) {
                        if let Err(error) = cuts.report(cut, &joining.part(), Vec::new()) {
                            shared.control.abort(error);
                        }
                        // From here on every event leaves after the cut.
                        joining.waiting.retime_before(cut.time);
                        if *held.time() < cut.time && cut.time != FINAL {
                            held.downgrade(&cut.time);
                        }
                        for (arrival, rows) in cuts.release(&mut held_back, |(arrival, _)| *arrival)
                        {
                            joining.take(rows, arrival);
                        }
                        give_at_arrivals(
                            output,
                            held,
                            joining.release(table_at, refused).into_iter(),
                        );
                    }
                    let events_at = events_frontier.frontier().first().copied();
                    let oldest = [events_at, joining.waiting.oldest_ready()]
                        .into_iter()
                        .flatten()
                        .min();
                    if let Some(oldest) = oldest {
                        joining.versions.settle(oldest);
                    }
                    let held_back_at = held_back.iter().map(|(arrival, _)| *arrival).min();
                    let oldest = [events_at, joining.waiting.oldest_arrival(), held_back_at];
                    hold_at_oldest(&mut capability, oldest);
                    held_rows.report(
                        &shared.watermarks,
                        joining.waiting.len(),
                        &shared.stats.most_held,
                    );
                }
            },
        )
    }
}

/// How far an operator holding rows for a watermark may release them while
/// a cut is pending: not past the cut's time (except at the last cut,
/// once the input has ended), so that rows at or past it leave after the
/// cut, with those held back.
pub(super) fn before_cut(watermark: Option<i64>, pending: Option<i64>) -> Option<i64> {
    match (watermark, pending) {
        (Some(watermark), Some(time)) => Some(watermark.min(time)),
        (None, Some(time)) if time != FINAL => Some(time),
        (watermark, _) => watermark,
    }
}

/// The key of a table record: its key field, or the only value of a
/// deletion.
fn key_of_version(row: &Row, table_key: usize) -> &Value {
    match row.values.as_slice() {
        [key] => key,
        _ => row.cell(table_key),
    }
}

/// Adds a table record as a version of its key, holding the join's
/// columns; a row holding only a key (a tombstone, see
/// [`crate::decode::Decoder`]) deletes the key.
fn insert_version(versions: &mut AsOfTable, row: Row, join: &JoinPlan, table_key: usize) {
    let order = VersionOrder {
        time: row.time,
        partition: row.partition,
        offset: row.offset,
    };
    let mut values = row.values;
    if values.len() == 1 {
        let key = values.pop().unwrap_or_default();
        versions.insert(key, order, None);
        return;
    }
    let columns: Box<[Value]> = join
        .table_slots
        .iter()
        .map(|slot| {
            values
                .get_mut(*slot)
                .map(std::mem::take)
                .unwrap_or_default()
        })
        .collect();
    let key = values
        .get_mut(table_key)
        .map(std::mem::take)
        .unwrap_or_default();
    versions.insert(key, order, Some(columns));
}

/// Writes the joined columns into the row's slots (nulls without a
/// version).
fn add_columns(row: &mut Row, slots: &[usize], found: Option<&[Value]>) {
    let width = slots.iter().max().map_or(0, |slot| slot + 1);
    if row.values.len() < width {
        row.values.resize(width, Value::Null);
    }
    for (at, slot) in slots.iter().enumerate() {
        row.values[*slot] = found.map_or(Value::Null, |columns| columns[at].clone());
    }
}

/// Makes an event of a required join without a version a dead letter
/// (replayed events, whose letters an earlier run wrote, are dropped).
fn refuse(row: &Row, join: &JoinPlan, shared: &Shared, dead_letters: &RefCell<DeadLetterWriter>) {
    if row.warm_up {
        return;
    }
    let plan = &shared.plan;
    let table = &plan.tables[join.table].input.name;
    let letter = DeadLetter {
        partition: row.partition,
        offset: row.offset,
        error: format!(
            "{NO_MATCH}: table {table} has no version of {} = {} at {}",
            plan.columns[join.on_slot].name,
            crate::decode::value_to_json(row.cell(join.on_slot)),
            row.time
        ),
        raw: fields_as_json(
            &plan.columns[..plan.field_count],
            &row.values[..plan.field_count.min(row.values.len())],
        )
        .into_bytes(),
        key: None,
        headers: Vec::new(),
    };
    Stats::add(&shared.stats.dead, 1);
    if let Err(error) = dead_letters.borrow_mut().write(&letter) {
        shared.control.abort(error);
    }
}

/// The frontiers of an operator's two inputs, as one: a cut is due once
/// both have passed its time.
pub(super) fn both_frontiers(first: &[i64], second: &[i64]) -> Vec<i64> {
    first.iter().chain(second).copied().collect()
}

/// Holds `capability` at the oldest of `times` (what may still arrive or
/// leave), or drops it when there is none: the operator is done.
pub(super) fn hold_at_oldest(
    capability: &mut Option<Capability<i64>>,
    times: impl IntoIterator<Item = Option<i64>>,
) {
    let Some(held) = capability.as_mut() else {
        return;
    };
    match times.into_iter().flatten().min() {
        Some(time) if time > *held.time() => held.downgrade(&time),
        Some(_) => {}
        None => *capability = None,
    }
}

/// Sends rows each at the dataflow time it arrived at (at or after the
/// held capability), those of one time together.
pub(super) fn give_at_arrivals<'a>(
    output: &mut OutputBuilderSession<
        'a,
        i64,
        timely::container::CapacityContainerBuilder<Vec<Row>>,
    >,
    held: &Capability<i64>,
    rows: impl Iterator<Item = (i64, Row)>,
) {
    let mut by_arrival: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
    for (arrival, row) in rows {
        by_arrival.entry(arrival).or_default().push(row);
    }
    for (arrival, rows) in by_arrival {
        let at = held.delayed(&arrival.max(*held.time()));
        output.session(&at).give_iterator(rows.into_iter());
    }
}
