//! The label operator: rows and label records both routed by the matched
//! key, each row held until the label input's watermark has passed the
//! end of its horizon (`t + horizon`), then given the label
//! ([`LabelTable`]) and whether its horizon was complete.
//!
//! In a bounded run the label input ends: the rows still held leave then.
//! Each reader of the input announces the newest event time it read
//! ([`READER_END`], sent to every worker); a row's horizon is complete
//! when the input's newest time, less its bound, is past `t + horizon`,
//! which every row released while a reader still reads satisfies too. So
//! whether a row is complete depends on the label records alone, never
//! on when they arrived.

use super::RowStream;
use super::checkpointing::CutTracker;
use super::input::READER_END;
use super::join::{before_cut, both_frontiers, give_at_arrivals, hold_at_oldest};
use crate::checkpoint::FINAL;
use crate::checkpoint::restore::{LabelPart, LabelPartRef, part_name};
use crate::joins::{LabelTable, VersionOrder};
use crate::ordering::ReorderBuffer;
use crate::plan::LabelPlan;
use crate::row::Row;
use crate::run::{Shared, Stats};
use crate::watermarks::HeldRows;
use std::sync::Arc;
use tideflow_connectors::Value;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::{Concat, Exchange as ExchangeRows};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Filter};

/// Labels rows.
pub trait AttachLabels<'scope> {
    /// Sets label `index`'s column of each row from `records` (the label
    /// input's rows, as its reader sends them), and ANDs whether its
    /// horizon was complete into `complete_slot`.
    fn attach_labels(
        self,
        records: RowStream<'scope>,
        label: (usize, Arc<LabelPlan>),
        complete_slot: usize,
        shared: Arc<Shared>,
    ) -> RowStream<'scope>;
}

/// What arrived at or after a cut in progress, held until the operator
/// has cut: label records, or rows.
#[derive(Debug)]
enum HeldBack {
    Records(Vec<Row>),
    Rows(Vec<Row>),
}

/// A label's state on one worker: the records, the rows waiting for their
/// horizon, and the newest time the input's readers announced.
#[derive(Debug)]
struct Labelling {
    label: Arc<LabelPlan>,
    complete_slot: usize,
    labels: LabelTable,
    waiting: ReorderBuffer,
    newest: Option<i64>,
    /// How many of the input's readers (one per worker) have ended.
    ended: usize,
    readers: usize,
}

impl Labelling {
    /// The state restored from `part` (its waiting rows sent at `start`),
    /// or an empty one.
    fn start(
        (label, complete_slot): (Arc<LabelPlan>, usize),
        readers: usize,
        part: Option<LabelPart>,
        start: i64,
    ) -> Self {
        let mut labelling = Labelling {
            label,
            complete_slot,
            labels: LabelTable::default(),
            waiting: ReorderBuffer::default(),
            newest: None,
            ended: 0,
            readers,
        };
        if let Some(part) = part {
            labelling.labels = LabelTable::from_entries(part.records, part.settled);
            labelling.newest = part.newest;
            for row in part.waiting {
                labelling.wait(row, start);
            }
        }
        labelling
    }

    fn wait(&mut self, row: Row, arrival: i64) {
        let ready = row.time.saturating_add(self.label.horizon_ms);
        self.waiting.push_until(row, ready, arrival);
    }

    fn take(&mut self, held: HeldBack, arrival: i64) {
        match held {
            HeldBack::Records(records) => {
                for record in records {
                    if record.partition == READER_END {
                        self.newest = self.newest.max(Some(record.time));
                        self.ended += 1;
                    } else {
                        insert_label(&mut self.labels, record, &self.label);
                    }
                }
            }
            HeldBack::Rows(rows) => {
                for row in rows {
                    self.wait(row, arrival);
                }
            }
        }
    }

    /// The rows whose horizon ends before `passed` (all at the input's
    /// end), each with its arrival, labelled.
    ///
    /// While a reader still reads, the input's time is at most its newest
    /// record's less the bound: a row released by it has a complete
    /// horizon. Once every reader has ended (and after that the input's
    /// time may follow the events, in a checkpointed run), what their
    /// newest records say decides.
    fn release(&mut self, passed: Option<i64>) -> Vec<(i64, Row)> {
        let label = &self.label;
        let complete_before = if self.ended >= self.readers {
            self.newest
                .map(|newest| newest.saturating_sub(label.input.bound_ms))
        } else {
            passed
        };
        let released = self.waiting.release_with_arrivals(passed);
        released
            .into_iter()
            .map(|(arrival, mut row)| {
                let end = row.time.saturating_add(label.horizon_ms);
                let complete = complete_before.is_some_and(|before| end < before);
                let value = self
                    .labels
                    .lookup(row.cell(label.on_slot), row.time, label.horizon_ms)
                    .cloned()
                    .unwrap_or_else(|| label.default.clone());
                set_label(
                    &mut row,
                    (label.slot, value),
                    (self.complete_slot, complete),
                );
                (arrival, row)
            })
            .collect()
    }

    /// Drops the records no row still to come can take: rows come at or
    /// after `rows_at` and the oldest waiting row.
    fn settle(&mut self, rows_at: Option<i64>) {
        let oldest_row = self
            .waiting
            .oldest_ready()
            .map(|ready| ready.saturating_sub(self.label.horizon_ms));
        if let Some(oldest) = [rows_at, oldest_row].into_iter().flatten().min() {
            self.labels.settle(oldest);
        }
    }

    fn part(&self) -> LabelPartRef<'_> {
        LabelPartRef {
            records: self.labels.entries(),
            settled: self.labels.settled(),
            waiting: self.waiting.rows().collect(),
            newest: self.newest,
        }
    }
}

impl<'scope> AttachLabels<'scope> for RowStream<'scope> {
    fn attach_labels(
        self,
        records: RowStream<'scope>,
        (index, label): (usize, Arc<LabelPlan>),
        complete_slot: usize,
        shared: Arc<Shared>,
    ) -> RowStream<'scope> {
        let key_slot = label.key_slot;
        let ends = records
            .clone()
            .filter(|row| row.partition == READER_END)
            .broadcast();
        let records = records
            .filter(|row| row.partition != READER_END)
            .exchange(move |row: &Row| row.cell(key_slot).stable_hash())
            .concat(ends);
        let on = label.on_slot;
        let by_event_key = Exchange::new(move |row: &Row| row.cell(on).stable_hash());
        let name = format!("Label({})", label.input.name);
        let (worker, peers) = (self.scope().index(), self.scope().peers());
        self.binary_frontier(
            records,
            by_event_key,
            Pipeline,
            &name,
            move |capability, _info| {
                let start = *capability.time();
                let mut capability = Some(capability);
                let restored = shared.restored.take_label(index, worker);
                let carried = restored.as_ref().map_or(0, |part| part.waiting.len());
                Stats::add(&shared.stats.carried, carried as u64);
                // One reader of the input on every worker.
                let mut labelling =
                    Labelling::start((label, complete_slot), peers, restored, start);
                let mut cuts =
                    CutTracker::new(&shared, part_name(&format!("label{index}"), worker));
                let mut held_rows = HeldRows::default();
                let mut held_back: Vec<(i64, HeldBack)> = Vec::new();
                move |(rows, rows_frontier), (records, records_frontier), output| {
                    records.for_each(|time, records| {
                        let arrival = time.least().copied().unwrap_or(i64::MIN);
                        let records = HeldBack::Records(std::mem::take(records));
                        cuts.take_or_hold_back((arrival, records), &mut held_back, |held, at| {
                            labelling.take(held, at)
                        });
                    });
                    rows.for_each(|time, rows| {
                        let arrival = time.least().copied().unwrap_or(i64::MIN);
                        let rows = HeldBack::Rows(std::mem::take(rows));
                        cuts.take_or_hold_back((arrival, rows), &mut held_back, |held, at| {
                            labelling.take(held, at)
                        });
                    });
                    let Some(held) = capability.as_mut() else {
                        return;
                    };
                    let passed = records_frontier.frontier().first().copied();
                    let before_cut = before_cut(passed, cuts.pending_time());
                    give_at_arrivals(output, held, labelling.release(before_cut).into_iter());
                    let frontier =
                        both_frontiers(&rows_frontier.frontier(), &records_frontier.frontier());
                    while let Some(cut) = cuts.due(&frontier) {
                        if let Err(error) = cuts.report(cut, &labelling.part(), Vec::new()) {
                            shared.control.abort(error);
                        }
                        labelling.waiting.retime_before(cut.time);
                        if *held.time() < cut.time && cut.time != FINAL {
                            held.downgrade(&cut.time);
                        }
                        for (arrival, held) in cuts.release(&mut held_back, |(arrival, _)| *arrival)
                        {
                            labelling.take(held, arrival);
                        }
                        give_at_arrivals(output, held, labelling.release(passed).into_iter());
                    }
                    let rows_at = rows_frontier.frontier().first().copied();
                    labelling.settle(rows_at);
                    let held_back_at = held_back.iter().map(|(arrival, _)| *arrival).min();
                    let oldest = [rows_at, labelling.waiting.oldest_arrival(), held_back_at];
                    hold_at_oldest(&mut capability, oldest);
                    held_rows.report(
                        &shared.watermarks,
                        labelling.waiting.len(),
                        &shared.stats.most_held,
                    );
                }
            },
        )
    }
}

fn insert_label(labels: &mut LabelTable, record: Row, label: &LabelPlan) {
    let order = VersionOrder {
        time: record.time,
        partition: record.partition,
        offset: record.offset,
    };
    let mut values = record.values;
    let mut take = |slot: usize| values.get_mut(slot).map(std::mem::take).unwrap_or_default();
    let value = take(label.value_slot);
    labels.insert(take(label.key_slot), order, value);
}

/// Writes the label and ANDs its completeness into the row.
fn set_label(
    row: &mut Row,
    (slot, value): (usize, Value),
    (complete_slot, complete): (usize, bool),
) {
    let width = slot.max(complete_slot) + 1;
    if row.values.len() < width {
        row.values.resize(width, Value::Null);
    }
    row.values[slot] = value;
    let before = !matches!(row.values[complete_slot], Value::Bool(false));
    row.values[complete_slot] = Value::Bool(before && complete);
}
