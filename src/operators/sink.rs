//! The sink operator: writes each batch of rows to every sink of the plan,
//! and tells the rest of the worker how far its outputs are durable.
//!
//! Its output stream carries no data: the operator holds a capability that
//! trails its input frontier until the rows before it are durable. Every
//! sync interval it syncs its writers, noting the input frontier `f` then;
//! once each writer reports that sync durable (files at once, Kafka once
//! the brokers acknowledge), the capability moves to `f`. Upstream
//! operators hold a capability for every row they still hold, so `f` also
//! covers rows that were re-timed on the way. A probe on the output is thus
//! the *durable frontier* of all sinks of all workers: source offsets read
//! before it may be committed.

use super::BatchStream;
use super::checkpointing::CutTracker;
use crate::batch::Batch;
use crate::checkpoint::restore::{SinkCut, part_name};
use crate::run::{Shared, Stats};
use crate::sinks::RowWriter;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Stream, operators::probe::Handle};

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

impl WriteRows for BatchStream<'_> {
    fn write_rows(
        self,
        mut writers: Vec<Box<dyn RowWriter>>,
        shared: Arc<Shared>,
        sync_interval: Option<Duration>,
    ) -> Handle<i64> {
        let scope = self.scope();
        let worker = scope.index();
        let sink_names: Vec<String> = shared
            .plan
            .sinks
            .iter()
            .map(|sink| sink.describe())
            .collect();
        let durable: Stream<'_, i64, Vec<()>> = self
            .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                Pipeline,
                "Sink",
                move |capability, info| {
                    let activator = scope.activator_for(info.address.clone());
                    let mut capability = Some(capability);
                    // Syncs not yet durable: each writer's epoch, and the input
                    // frontier when the sync was made.
                    let mut pending: VecDeque<(Vec<u64>, i64)> = VecDeque::new();
                    let mut last_sync = Instant::now();
                    // In a checkpointed run, rows after the cut in
                    // progress wait until the epoch's files are closed.
                    let mut cuts = CutTracker::new(&shared, part_name("sink", worker));
                    let mut held_back: Vec<(i64, Vec<Batch>)> = Vec::new();
                    move |(input, frontier), _output| {
                        input.for_each(|time, batches| {
                            let arrival = time.least().copied().unwrap_or(i64::MIN);
                            if cuts.holds_back(arrival) {
                                held_back.push((arrival, std::mem::take(batches)));
                                return;
                            }
                            write_all(&mut writers, &sink_names, &shared, batches);
                        });
                        while let Some(cut) = cuts.due(&frontier.frontier()) {
                            let closed: Result<Vec<_>, _> = writers
                                .iter_mut()
                                .map(|writer| writer.close_epoch(cut.id))
                                .collect();
                            let reported = closed.and_then(|outputs| {
                                let part = SinkCut::of(outputs);
                                let files = part.files.clone();
                                cuts.report(cut, &part, files).map(|_| ())
                            });
                            if let Err(error) = reported {
                                shared.control.abort(error);
                            }
                            let released = cuts.release(&mut held_back, |(arrival, _)| *arrival);
                            for (_, mut batches) in released {
                                write_all(&mut writers, &sink_names, &shared, &mut batches);
                            }
                        }
                        let Some(held) = capability.as_mut() else {
                            return;
                        };
                        let input_frontier = frontier.frontier().first().copied();
                        if input_frontier.is_none() {
                            for writer in writers.iter_mut() {
                                if let Err(error) = writer.finish() {
                                    shared.control.abort(error);
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
                            let epochs: Result<Vec<u64>, _> =
                                writers.iter_mut().map(|writer| writer.sync()).collect();
                            match epochs {
                                Ok(epochs) => pending
                                    .push_back((epochs, input_frontier.expect("checked above"))),
                                Err(error) => shared.control.abort(error),
                            }
                            last_sync = Instant::now();
                        }
                        while let Some((epochs, synced_before)) = pending.front() {
                            let durable = writers
                                .iter()
                                .zip(epochs)
                                .all(|(writer, epoch)| writer.is_durable(*epoch));
                            if !durable {
                                break;
                            }
                            if *synced_before > *held.time() {
                                held.downgrade(synced_before);
                            }
                            pending.pop_front();
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

/// Writes batches to every writer, unless the run has stopped.
fn write_all(
    writers: &mut [Box<dyn RowWriter>],
    sink_names: &[String],
    shared: &Shared,
    batches: &mut Vec<Batch>,
) {
    for batch in batches.drain(..) {
        if shared.control.is_aborted() {
            return;
        }
        write_batch(writers, sink_names, shared, &batch);
    }
}

/// Writes a batch to every writer and counts it.
fn write_batch(
    writers: &mut [Box<dyn RowWriter>],
    sink_names: &[String],
    shared: &Shared,
    batch: &Batch,
) {
    for (writer, name) in writers.iter_mut().zip(sink_names) {
        if let Err(error) = writer.write(batch) {
            shared.control.abort(error);
            return;
        }
        shared.metrics.sink_wrote(name, batch.len() as u64);
    }
    Stats::add(&shared.stats.rows_out, batch.len() as u64);
    let now_ms = epoch_ms();
    shared.metrics.event_to_output_seconds.observe_all(
        batch
            .rows()
            .iter()
            .map(|row| (now_ms - row.time) as f64 / 1000.0),
    );
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}
