//! The label operator: rows and label records both routed by the matched
//! key, each row held until the label input's watermark has passed the
//! end of its horizon (`t + horizon`), then given the label
//! ([`LabelTable`]) and whether its horizon was complete.
//!
//! In a bounded run the label input ends: the rows still held leave then.
//! Each reader of the input announces the newest event time it read
//! ([`READER_END`], sent to every worker); a row's horizon is complete
//! when the input's newest time, less its bound, is past `t + horizon`,
//! which every row released before the end satisfies too. So whether a
//! row is complete depends on the label records alone, never on when they
//! arrived.

use super::RowStream;
use super::input::READER_END;
use super::join::give_at_arrivals;
use crate::joins::{LabelTable, VersionOrder};
use crate::ordering::ReorderBuffer;
use crate::plan::LabelPlan;
use crate::row::Row;
use std::sync::Arc;
use tideflow_connectors::Value;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::{Concat, Exchange as ExchangeRows};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Filter};

/// Labels rows.
pub trait AttachLabels<'scope> {
    /// Sets the label's column of each row from `records` (the label
    /// input's rows, as its reader sends them), and ANDs whether its
    /// horizon was complete into `complete_slot`.
    fn attach_labels(
        self,
        records: RowStream<'scope>,
        label: Arc<LabelPlan>,
        complete_slot: usize,
    ) -> RowStream<'scope>;
}

impl<'scope> AttachLabels<'scope> for RowStream<'scope> {
    fn attach_labels(
        self,
        records: RowStream<'scope>,
        label: Arc<LabelPlan>,
        complete_slot: usize,
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
        self.binary_frontier(
            records,
            by_event_key,
            Pipeline,
            &name,
            move |capability, _info| {
                let mut capability = Some(capability);
                let mut labels = LabelTable::default();
                let mut waiting = ReorderBuffer::default();
                let mut newest: Option<i64> = None;
                let horizon = label.horizon_ms;
                move |(rows, rows_frontier), (records, records_frontier), output| {
                    records.for_each(|_time, records| {
                        for record in records.drain(..) {
                            if record.partition == READER_END {
                                newest = newest.max(Some(record.time));
                            } else {
                                insert_label(&mut labels, record, &label);
                            }
                        }
                    });
                    rows.for_each(|time, rows| {
                        let arrival = time.least().copied().unwrap_or(i64::MIN);
                        for row in rows.drain(..) {
                            let ready = row.time.saturating_add(horizon);
                            waiting.push_until(row, ready, arrival);
                        }
                    });
                    let Some(held) = capability.as_mut() else {
                        return;
                    };
                    let passed = records_frontier.frontier().first().copied();
                    // At the end of the input, what its newest record says.
                    let complete_before = passed.or_else(|| {
                        newest.map(|newest| newest.saturating_sub(label.input.bound_ms))
                    });
                    let released = waiting.release_with_arrivals(passed);
                    let labelled = released.into_iter().map(|(arrival, mut row)| {
                        let end = row.time.saturating_add(horizon);
                        let complete = complete_before.is_some_and(|before| end < before);
                        let value = labels
                            .lookup(row.cell(on), row.time, horizon)
                            .cloned()
                            .unwrap_or_else(|| label.default.clone());
                        set_label(&mut row, (label.slot, value), (complete_slot, complete));
                        (arrival, row)
                    });
                    give_at_arrivals(output, held, labelled);
                    let rows_at = rows_frontier.frontier().first().copied();
                    let oldest_row = waiting
                        .oldest_ready()
                        .map(|ready| ready.saturating_sub(horizon));
                    if let Some(oldest) = [rows_at, oldest_row].into_iter().flatten().min() {
                        labels.settle(oldest);
                    }
                    match [rows_at, waiting.oldest_arrival()]
                        .into_iter()
                        .flatten()
                        .min()
                    {
                        Some(time) if time > *held.time() => held.downgrade(&time),
                        Some(_) => {}
                        None => capability = None,
                    }
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
