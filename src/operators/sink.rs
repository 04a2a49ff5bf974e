//! The sink operator: writes each batch of rows to every sink of the plan,
//! and tells the rest of the worker how far its outputs are durable.
//!
//! Its output stream carries no data: the operator holds a capability at
//! the oldest time whose rows may not yet be durable (written since the
//! last sync, or not yet acknowledged by Kafka brokers). A probe on that
//! stream is therefore the *durable frontier* of all sinks of all workers,
//! which is what source offsets may be committed up to.

use super::RowStream;
use crate::run::{Shared, Stats};
use crate::sinks::RowWriter;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Stream, operators::probe::Handle};
use timely::dataflow::operators::Probe;

/// Writes rows to sinks.
pub trait WriteRows {
    /// Writes every row to every writer; finishes them at the end of input.
    /// With `sync_interval`, writers are synced that often and the returned
    /// probe follows the durable frontier; without, it follows the input.
    fn write_rows(
        self,
        writers: Vec<Box<dyn RowWriter>>,
        shared: Arc<Shared>,
        sync_interval: Option<Duration>,
    ) -> Handle<i64>;
}

impl WriteRows for RowStream<'_> {
    fn write_rows(
        self,
        mut writers: Vec<Box<dyn RowWriter>>,
        shared: Arc<Shared>,
        sync_interval: Option<Duration>,
    ) -> Handle<i64> {
        let scope = self.scope();
        let durable: Stream<'_, i64, Vec<()>> = self.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            "Sink",
            move |capability, info| {
                let activator = scope.activator_for(info.address.clone());
                let mut capability = Some(capability);
                // Every row before this time has been written and synced.
                let mut synced_before = i64::MIN;
                let mut last_sync = Instant::now();
                move |(input, frontier), _output| {
                    input.for_each(|time, rows| {
                        if shared.is_aborted() {
                            return;
                        }
                        for writer in writers.iter_mut() {
                            if let Err(error) = writer.write(time.least().copied().unwrap_or(i64::MIN), rows) {
                                shared.abort(error);
                                return;
                            }
                        }
                        Stats::add(&shared.stats.rows_out, rows.len() as u64);
                    });
                    let Some(held) = capability.as_mut() else {
                        return;
                    };
                    let input_frontier = frontier.frontier().first().copied();
                    if input_frontier.is_none() {
                        for writer in writers.iter_mut() {
                            if let Err(error) = writer.finish() {
                                shared.abort(error);
                            }
                        }
                        capability = None;
                        return;
                    }
                    let Some(interval) = sync_interval else {
                        held.downgrade(&input_frontier.expect("checked above"));
                        return;
                    };
                    if last_sync.elapsed() >= interval {
                        for writer in writers.iter_mut() {
                            if let Err(error) = writer.sync() {
                                shared.abort(error);
                            }
                        }
                        synced_before = input_frontier.expect("checked above");
                        last_sync = Instant::now();
                    }
                    let durable_before = writers
                        .iter()
                        .filter_map(|writer| writer.oldest_undurable())
                        .fold(synced_before, i64::min);
                    if durable_before > *held.time() {
                        held.downgrade(&durable_before);
                    }
                    if *held.time() < input_frontier.expect("checked above") {
                        // Nothing may arrive to wake the operator: look again
                        // when the next sync is due.
                        activator.activate_after(interval.saturating_sub(last_sync.elapsed()));
                    }
                }
            },
        );
        let (probe, _) = durable.probe();
        probe
    }
}
