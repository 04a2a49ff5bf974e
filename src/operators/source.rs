//! The source operator: a timely shell around the worker's
//! [`Intake`](crate::intake::Intake), which reads its partitions, decodes
//! records and separates late ones. The shell emits the rows at its
//! dataflow time, counts what each round read, and moves its time as
//! [`super::source_time`] decides (to the intake's watermark, cutting the
//! checkpoints it crosses).
//!
//! Once the process holds more rows for the watermark than its budget
//! (`time.max_buffered_rows`, see [`crate::watermarks`]), partitions are
//! read in step by event time: one whose watermark is more than
//! `time.max_partition_skew` ahead of the slowest partition of all workers
//! (the frontier of the source's output) waits until the others catch up.
//! Brokers that fill fetches from one partition first would otherwise have
//! event-time features buffer a whole backfill. Under the budget every
//! partition reads freely.

use super::BatchStream;
use super::source_time;
use crate::Result;
use crate::batch::Batch;
use crate::checkpoint::Cut;
use crate::checkpoint::restore::{PartitionPosition, SinkCut, SourceCut, part_name};
use crate::commit::OffsetLedger;
use crate::decode::Decoder;
use crate::intake::{Intake, IntakeRules, Round};
use crate::plan::SourcePlan;
use crate::run::{Shared, Stats};
use crate::sinks::DeadLetterWriter;
use crate::watermarks::Waker;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tideflow_connectors::files::{discover_partitions, open_partition};
use tideflow_connectors::generator::GeneratorReader;
use tideflow_connectors::kafka::{self, OffsetCommitter};
use tideflow_connectors::{PartitionReader, Poll, RawRecord};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::probe::{Handle, Probe};

/// The partitions one worker reads, and the committer of their offsets
/// where the source has committed progress (Kafka).
pub struct Assigned {
    /// One reader per partition.
    pub readers: Vec<Box<dyn PartitionReader>>,
    /// Commits the group's offsets.
    pub committer: Option<OffsetCommitter>,
}

impl std::fmt::Debug for Assigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let partitions: Vec<u32> = self
            .readers
            .iter()
            .map(|reader| reader.partition())
            .collect();
        f.debug_struct("Assigned")
            .field("partitions", &partitions)
            .field("committer", &self.committer)
            .finish()
    }
}

/// A description of the source for dead-letter headers and messages.
pub fn origin(plan: &SourcePlan) -> String {
    match plan {
        SourcePlan::Files { path, .. } => path.display().to_string(),
        SourcePlan::Generator(_) => "generator".into(),
        SourcePlan::Kafka(kafka) => kafka.config.topics.join(","),
    }
}

/// Opens the readers of the partitions assigned to worker `index` of
/// `peers`: partition `p` goes to worker `p % peers`.
pub fn open_assigned(
    plan: &SourcePlan,
    columns: &[String],
    index: usize,
    peers: usize,
) -> Result<Assigned> {
    let mut readers: Vec<Box<dyn PartitionReader>> = Vec::new();
    let mut committer = None;
    match plan {
        SourcePlan::Files {
            path,
            format,
            max_record_bytes,
        } => {
            for (partition, file) in discover_partitions(path, *format)?.iter().enumerate() {
                if partition % peers == index {
                    readers.push(open_partition(
                        file,
                        partition as u32,
                        *format,
                        columns,
                        *max_record_bytes,
                    )?);
                }
            }
        }
        SourcePlan::Generator(config) => {
            for partition in 0..config.partitions {
                if partition as usize % peers == index {
                    readers.push(Box::new(GeneratorReader::open(config, partition, columns)?));
                }
            }
        }
        SourcePlan::Kafka(kafka) => {
            let partitions = match &kafka.partitions {
                Some(partitions) => partitions.clone(),
                None => Arc::new(kafka::TopicPartitions::discover(&kafka.config)?),
            };
            let mine: Vec<u32> = (0..partitions.len())
                .filter(|partition| *partition as usize % peers == index)
                .collect();
            let (kafka_readers, kafka_committer) =
                kafka::open_partitions(&kafka.config, &partitions, &mine)?;
            for reader in kafka_readers {
                let (topic, partition) = reader.topic_partition();
                // Offsets given per partition (a checkpoint's, or the
                // spec's) are not repeated on every partition's line.
                let start = match &kafka.config.start {
                    kafka::StartPosition::Offsets(_) => "given offsets".to_owned(),
                    start => start.to_string(),
                };
                eprintln!(
                    "tideflow: worker {index} reads {topic} partition {partition} from offset {} ({start} .. {})",
                    reader.start_offset(),
                    kafka.config.end,
                );
                readers.push(Box::new(reader));
            }
            committer = kafka_committer;
        }
    }
    Ok(Assigned { readers, committer })
}

/// A partition reader that skips the records before a restored position
/// (files and the generator, which cannot start at an offset).
struct ResumeAt {
    reader: Box<dyn PartitionReader>,
    next_offset: u64,
}

impl PartitionReader for ResumeAt {
    fn partition(&self) -> u32 {
        self.reader.partition()
    }

    fn poll(
        &mut self,
        out: &mut Vec<RawRecord>,
        max_records: usize,
    ) -> tideflow_connectors::Result<Poll> {
        let kept_from = out.len();
        loop {
            let polled = self.reader.poll(out, max_records)?;
            let mut index = kept_from;
            while index < out.len() {
                if out[index].offset < self.next_offset {
                    out.remove(index);
                } else {
                    index += 1;
                }
            }
            if out.len() > kept_from || polled != Poll::Ready {
                return Ok(polled);
            }
        }
    }

    fn is_behind(&self) -> bool {
        self.reader.is_behind()
    }

    fn progress(&self) -> (u64, Option<u64>) {
        self.reader.progress()
    }

    fn first_output_offset(&self) -> u64 {
        self.reader.first_output_offset()
    }

    fn lag(&self) -> Option<u64> {
        self.reader.lag()
    }

    fn set_wakeup(&mut self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) {
        self.reader.set_wakeup(wake);
    }
}

/// Wraps the readers of partitions restored from a checkpoint so that
/// they start after its position.
pub fn resume_at_restored(
    readers: Vec<Box<dyn PartitionReader>>,
    positions: &std::collections::BTreeMap<u32, PartitionPosition>,
) -> Vec<Box<dyn PartitionReader>> {
    readers
        .into_iter()
        .map(|mut reader| match positions.get(&reader.partition()) {
            Some(position)
                if position.next_offset > reader.first_output_offset()
                    && !reader.seek(position.next_offset) =>
            {
                Box::new(ResumeAt {
                    reader,
                    next_offset: position.next_offset,
                }) as Box<dyn PartitionReader>
            }
            _ => reader,
        })
        .collect()
}

/// Takes the source's part of a checkpoint: its partitions' positions and
/// the dead-letter files of the epoch.
fn cut_source(
    shared: &Shared,
    worker: usize,
    cut: Cut,
    intake: &Intake,
    dead_letters: &mut DeadLetterWriter,
) -> Result<()> {
    let Some(coordinator) = &shared.checkpoints else {
        return Ok(());
    };
    let closed = dead_letters.close_epoch(cut.id)?;
    let files = closed.files.clone();
    let part = SourceCut {
        partitions: intake.positions(),
        dead_letters: SinkCut::of_dead_letters(closed),
    };
    let positions: Vec<(u32, u64)> = part
        .partitions
        .iter()
        .map(|position| (position.partition, position.next_offset))
        .collect();
    coordinator.report_positions(cut.id, &positions);
    let bytes = crate::checkpoint::encode(&part);
    coordinator.report(cut.id, &part_name("source", worker), (bytes, false), files)
}

/// Where the source operator sends what it cannot emit as rows, where it
/// records progress, and what else it reads in step with.
#[derive(Debug)]
pub struct SourceOutputs {
    /// Dead letters, written as records are read.
    pub dead_letters: Rc<RefCell<DeadLetterWriter>>,
    /// The offsets read, for commits once outputs are durable.
    pub ledger: Option<Rc<RefCell<OffsetLedger>>>,
    /// The frontiers of the tables the rows are joined with: the source
    /// reads at most `max_partition_skew` ahead of them as of its own
    /// slowest partition, since rows ahead of a table wait for it.
    pub tables: Vec<Handle<i64>>,
}

/// Builds the source operator of worker `scope.index()`.
pub fn read_source<'scope>(
    scope: Scope<'scope, i64>,
    shared: Arc<Shared>,
    readers: Vec<Box<dyn PartitionReader>>,
    outputs: SourceOutputs,
) -> BatchStream<'scope> {
    let rules = IntakeRules {
        decoder: Decoder::new(&shared.plan),
        bound_ms: shared.plan.bound_ms,
        tracks_lateness: shared.plan.tracks_lateness(),
        idle_timeout: match &shared.plan.source {
            SourcePlan::Kafka(kafka) => Some(kafka.idle_timeout),
            _ => None,
        },
        columnar: true,
    };
    let skew_ms = shared.plan.skew_ms;
    let (worker, peers) = (scope.index(), scope.peers());
    let slowest = Handle::<i64>::new();
    let slowest_in_source = slowest.clone();
    let SourceOutputs {
        dead_letters,
        ledger,
        tables,
    } = outputs;
    let mut intake = Intake::new(readers, rules, &shared.restored.positions);
    report_partitions(&shared, &intake);
    shared
        .partitions_behind
        .fetch_add(intake.behind(), Ordering::SeqCst);
    if let Some(coordinator) = &shared.checkpoints {
        coordinator.source_starts(worker, i64::MIN);
    }
    let mut final_bookkeeping_done = false;
    let rows = source::<i64, CapacityContainerBuilder<Vec<Batch>>, _, _>(
        scope,
        "Source",
        move |capability, info| {
            let activator = scope.activator_for(info.address.clone());
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                // Fails only once the dataflow has shut down.
                let _ = wake.activate();
            });
            intake.set_wakeup(wake.clone());
            let mut capability = Some(capability);
            move |output| {
                let Some(held) = capability.as_mut() else {
                    return;
                };
                // A checkpoint that cannot be stored stops the run.
                if let Some(error) = shared
                    .checkpoints
                    .as_ref()
                    .and_then(|coordinator| coordinator.take_failure())
                {
                    shared.control.abort(error);
                }
                let mut dead_letters = dead_letters.borrow_mut();
                // Under the budget of held rows, reading ahead costs little
                // memory: every partition reads freely.
                let in_step = shared.watermarks.over_held_rows_budget();
                let read_limit = in_step
                    .then(|| slowest_in_source.with_frontier(|frontier| frontier.first().copied()))
                    .flatten()
                    .map(|slowest| {
                        // The probe sees this worker's own progress a step
                        // late; where every worker has published its
                        // watermark, their least is the same bound, now.
                        shared
                            .watermarks
                            .slowest_of_all(peers)
                            .map_or(slowest, |published| published.max(slowest))
                    })
                    .map(|slowest| {
                        // Tables that have ended hold nothing back.
                        let tables = tables.iter().filter_map(|table| {
                            table.with_frontier(|frontier| frontier.first().copied())
                        });
                        tables.fold(slowest, i64::min).saturating_add(skew_ms)
                    });
                // Stopped, or waiting for the final checkpoint: no more
                // reading.
                let round = if shared.control.is_aborted() || final_bookkeeping_done {
                    Round::default()
                } else {
                    intake.read_round(*held.time(), read_limit, &mut dead_letters)
                };
                count_round(&shared, worker, &intake, &round, &wake);
                if let Some(error) = round.error {
                    shared.control.abort(error);
                }
                if !round.batch.is_empty() {
                    output.session(&*held).give(round.batch);
                }
                if let Some(ledger) = &ledger {
                    ledger
                        .borrow_mut()
                        .checkpoint(*held.time(), round.read_up_to);
                }
                let finished = intake.all_finished()
                    || shared.control.is_aborted()
                    || shared.control.stop_requested();
                let at = (worker, *held.time());
                let step = if finished {
                    if !final_bookkeeping_done {
                        final_bookkeeping_done = true;
                        report_partitions(&shared, &intake);
                        if let Err(error) = dead_letters.finish() {
                            shared.control.abort(error);
                        }
                        shared
                            .partitions_behind
                            .fetch_sub(intake.stop_being_behind(), Ordering::SeqCst);
                        shared.watermarks.publish(worker, None);
                    }
                    // A run stopping on an error takes no last checkpoint.
                    let checkpoints = shared
                        .checkpoints
                        .as_deref()
                        .filter(|_| !shared.control.is_aborted());
                    // With no other source reading, at least as far as its
                    // own partitions got: a source that finished in its first
                    // round (restored near its end) would otherwise stay at
                    // its start, and inputs read in step with it (tables,
                    // labels) would wait for it forever.
                    if checkpoints.is_some() {
                        shared
                            .watermarks
                            .wait_to_follow(worker, Waker(wake.clone()));
                    }
                    let follow = shared
                        .watermarks
                        .slowest_active()
                        .or_else(|| intake.final_watermark());
                    source_time::when_finished(checkpoints, at, follow)
                } else {
                    let watermark = intake.watermark();
                    shared.watermarks.publish(worker, watermark);
                    if watermark.is_none() {
                        shared
                            .watermarks
                            .wait_to_follow(worker, Waker(wake.clone()));
                    }
                    source_time::while_reading(
                        shared.checkpoints.as_deref(),
                        at,
                        watermark,
                        || shared.watermarks.slowest_active(),
                        (round.again, intake.idle_timeout()),
                    )
                };
                if let Some(cut) = step.cut
                    && let Err(error) = cut_source(&shared, worker, cut, &intake, &mut dead_letters)
                {
                    shared.control.abort(error);
                }
                let Some(to) = step.to else {
                    capability = None;
                    return;
                };
                held.downgrade(&to);
                if step.wait.is_zero() {
                    activator.activate();
                } else {
                    activator.activate_after(step.wait);
                }
            }
        },
    );
    rows.probe_with(&slowest)
}

/// Adds what a round read to the run's counts, partitions behind and
/// metrics, and waits for alignment where a partition had to.
fn count_round(
    shared: &Shared,
    worker: usize,
    intake: &Intake,
    round: &Round,
    wake: &Arc<dyn Fn() + Send + Sync>,
) {
    Stats::add(&shared.stats.records_in, round.records_in);
    Stats::add(&shared.stats.replayed, round.replayed);
    Stats::add(&shared.stats.late, round.late);
    Stats::add(&shared.stats.dead, round.dead);
    if round.behind_change > 0 {
        shared
            .partitions_behind
            .fetch_add(round.behind_change as usize, Ordering::SeqCst);
    } else if round.behind_change < 0 {
        shared.partitions_behind.fetch_sub(
            round.behind_change.unsigned_abs() as usize,
            Ordering::SeqCst,
        );
    }
    if round.waited_for_alignment {
        // Looked at again once another worker's watermark moves, or the
        // frontier has (checked on a timer).
        shared
            .watermarks
            .wait_for_alignment(worker, Waker(wake.clone()));
    }
    if round.records_in + round.replayed > 0 {
        report_partitions(shared, intake);
    }
}

/// Publishes each partition's progress, lag and watermark to the metrics:
/// after a round that read, and at the start and end of the run, so a
/// partition that a stopped run never read from still shows its lag.
fn report_partitions(shared: &Shared, intake: &Intake) {
    for (partition, status) in intake.statuses() {
        shared.metrics.partition(partition, status);
    }
}
