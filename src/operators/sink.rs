//! The sink operator: writes each batch of rows to every sink of the plan,
//! and makes the outputs durable when its input ends.

use super::RowStream;
use crate::run::{Shared, Stats};
use crate::sinks::RowWriter;
use std::sync::Arc;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

/// Writes rows to sinks.
pub trait WriteRows {
    /// Writes every row to every writer; finishes them at the end of input.
    fn write_rows(self, writers: Vec<Box<dyn RowWriter>>, shared: Arc<Shared>);
}

impl WriteRows for RowStream<'_> {
    fn write_rows(self, mut writers: Vec<Box<dyn RowWriter>>, shared: Arc<Shared>) {
        let mut finished = false;
        self.sink(Pipeline, "Sink", move |(input, frontier)| {
            input.for_each(|_time, rows| {
                if shared.is_aborted() {
                    return;
                }
                for writer in writers.iter_mut() {
                    if let Err(error) = writer.write(rows) {
                        shared.abort(error);
                        return;
                    }
                }
                Stats::add(&shared.stats.rows_out, rows.len() as u64);
            });
            if frontier.is_empty() && !finished {
                finished = true;
                for writer in writers.iter_mut() {
                    if let Err(error) = writer.finish() {
                        shared.abort(error);
                    }
                }
            }
        });
    }
}
