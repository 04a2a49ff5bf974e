//! Rows put back on the worker that read their partition, in offset order:
//! what a stage keyed by the source's key needs after a join has routed
//! rows by another key.
//!
//! Every row keeps the dataflow time it was read at (the source sends a
//! partition's rows at times that never decrease, and the join sends each
//! row at its own time), so once the frontier has passed a time, the rows
//! of each partition read before it form a prefix of the partition, all
//! here: they leave sorted by (partition, offset), each at the time it was
//! read.

use super::{BatchStream, RowStream};
use crate::batch::Batch;
use crate::row::Row;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

/// Routes rows to the worker that reads their partition and releases them
/// in offset order.
pub trait InOffsetOrder<'scope> {
    /// Rows of partition `p` on worker `p % workers`, in offset order.
    fn in_offset_order(self) -> BatchStream<'scope>;
}

impl<'scope> InOffsetOrder<'scope> for RowStream<'scope> {
    fn in_offset_order(self) -> BatchStream<'scope> {
        let by_partition = Exchange::new(|row: &Row| u64::from(row.partition));
        self.unary_frontier(by_partition, "InOffsetOrder", |capability, _info| {
            let mut capability = Some(capability);
            // Rows by the time they were read at.
            let mut waiting: std::collections::BTreeMap<i64, Vec<Row>> = Default::default();
            move |(input, frontier), output| {
                input.for_each(|time, rows| {
                    let read_at = time.least().copied().unwrap_or(i64::MIN);
                    waiting.entry(read_at).or_default().append(rows);
                });
                let Some(held) = capability.as_mut() else {
                    return;
                };
                let passed = frontier.frontier().first().copied();
                // Each time's rows leave at that time (not earlier: a
                // checkpoint's cut must find after it what was read after
                // it), in offset order; a partition's rows of earlier
                // times come before its rows of later ones.
                while let Some(entry) = waiting.first_entry() {
                    if passed.is_some_and(|passed| *entry.key() >= passed) {
                        break;
                    }
                    let at = held.delayed(&(*entry.key()).max(*held.time()));
                    let mut released = entry.remove();
                    released.sort_unstable_by_key(|row| (row.partition, row.offset));
                    output.session(&at).give(Batch::from_rows(released));
                }
                match passed {
                    Some(time) if time > *held.time() => held.downgrade(&time),
                    Some(_) => {}
                    None => capability = None,
                }
            }
        })
    }
}
