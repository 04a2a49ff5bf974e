//! The source operator: reads this worker's partitions, decodes records,
//! separates late ones, and advances the watermark.
//!
//! A partition that is caught up and quiet for the source's idle timeout
//! (Kafka) stops holding the watermark back, so one silent partition does
//! not stall the graph. Its records that arrive later behind the watermark
//! the others have reached are late: they go to dead letters as `late`.
//! A worker whose partitions are all idle moves its watermark up to the
//! slowest of the other workers', for the same reason.
//!
//! Partitions are read in step by event time: one whose watermark is more
//! than `time.max_partition_skew` ahead of the slowest partition of all
//! workers (the frontier of the source's output) waits until the others
//! catch up. Brokers that fill fetches from one partition first would
//! otherwise have event-time features buffer a whole backfill, and hold
//! back offset commits until every partition had been reached.

use super::BatchStream;
use crate::batch::Batch;
use crate::checkpoint::restore::{PartitionPosition, SourceCut, part_name};
use crate::checkpoint::{Cut, FINAL};
use crate::commit::OffsetLedger;
use crate::decode::Decoder;
use crate::metrics::PartitionStatus;
use crate::ordering::PartitionClock;
use crate::plan::SourcePlan;
use crate::row::LATE;
use crate::run::{Shared, Stats, Waker};
use crate::sinks::DeadLetterWriter;
use crate::{Error, Result};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tideflow_connectors::files::{discover_partitions, open_partition};
use tideflow_connectors::generator::GeneratorReader;
use tideflow_connectors::kafka::{self, OffsetCommitter};
use tideflow_connectors::{PartitionReader, Poll, RawRecord};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::probe::{Handle, Probe};

/// How many records one activation reads from a partition, at most.
const RECORDS_PER_POLL: usize = 1024;

/// How many records are read and decoded at a time.
const RECORDS_PER_CHUNK: usize = 128;

/// How soon a source whose partitions wait for slower ones looks again.
const ALIGNMENT_RECHECK: Duration = Duration::from_millis(1);

/// How soon a source whose partitions are all idle looks again at the
/// other workers' watermarks.
const IDLE_FOLLOW: Duration = Duration::from_millis(50);

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
                eprintln!(
                    "tideflow: worker {index} reads {topic} partition {partition} from offset {} ({} .. {})",
                    reader.start_offset(),
                    kafka.config.start,
                    kafka.config.end,
                );
                readers.push(Box::new(reader));
            }
            committer = kafka_committer;
        }
    }
    Ok(Assigned { readers, committer })
}

/// One assigned partition: its reader, its clock, and whether it ended.
struct Partition {
    reader: Box<dyn PartitionReader>,
    clock: PartitionClock,
    finished: bool,
    behind: bool,
    last_record: Instant,
    /// The offset of the next record to read: where a checkpoint taken
    /// now would have a restored run start.
    next_offset: u64,
}

impl Partition {
    fn position(&self) -> PartitionPosition {
        PartitionPosition {
            partition: self.reader.partition(),
            next_offset: self.next_offset,
            clock: self.clock,
            finished: self.finished,
        }
    }
}

/// How soon a source waiting for the final checkpoint looks again.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(5);

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
    partitions: &[Partition],
    dead_letters: &mut DeadLetterWriter,
) -> Result<()> {
    let Some(coordinator) = &shared.checkpoints else {
        return Ok(());
    };
    let files = dead_letters.close_epoch(cut.id)?;
    let part = SourceCut {
        partitions: partitions.iter().map(Partition::position).collect(),
        files: files.clone(),
    };
    let positions: Vec<(u32, u64)> = part
        .partitions
        .iter()
        .map(|position| (position.partition, position.next_offset))
        .collect();
    coordinator.report_positions(cut.id, &positions);
    coordinator.report(
        cut.id,
        &part_name("source", worker),
        crate::checkpoint::PartBytes::Encoded(crate::checkpoint::encode(&part)),
        files,
    )
}

impl Partition {
    /// Whether the partition holds the watermark back: not when it ended,
    /// nor when it is caught up and has been quiet for `idle_timeout`.
    fn holds_watermark(&self, idle_timeout: Option<Duration>) -> bool {
        !self.finished
            && !idle_timeout
                .is_some_and(|timeout| !self.behind && self.last_record.elapsed() >= timeout)
    }
}

/// Where the source operator sends what it cannot emit as rows, and where
/// it records progress.
#[derive(Debug)]
pub struct SourceOutputs {
    /// Dead letters, written as records are read.
    pub dead_letters: Rc<RefCell<DeadLetterWriter>>,
    /// The offsets read, for commits once outputs are durable.
    pub ledger: Option<Rc<RefCell<OffsetLedger>>>,
}

/// Builds the source operator of worker `scope.index()`.
pub fn read_source<'scope>(
    scope: Scope<'scope, i64>,
    shared: Arc<Shared>,
    readers: Vec<Box<dyn PartitionReader>>,
    outputs: SourceOutputs,
) -> BatchStream<'scope> {
    let decoder = Decoder::new(&shared.plan);
    let (bound_ms, skew_ms) = (shared.plan.bound_ms, shared.plan.skew_ms);
    let (worker, peers) = (scope.index(), scope.peers());
    let slowest = Handle::<i64>::new();
    let slowest_in_source = slowest.clone();
    let tracks_lateness = shared.plan.tracks_lateness();
    let idle_timeout = match &shared.plan.source {
        SourcePlan::Kafka(kafka) => Some(kafka.idle_timeout),
        _ => None,
    };
    let SourceOutputs {
        dead_letters,
        ledger,
    } = outputs;
    let mut partitions: Vec<Partition> = readers
        .into_iter()
        .map(|reader| {
            let restored = shared.restored.positions.get(&reader.partition()).copied();
            let finished = restored.is_some_and(|position| position.finished);
            let behind = !finished && reader.is_behind();
            if behind {
                shared.partitions_behind.fetch_add(1, Ordering::SeqCst);
            }
            Partition {
                next_offset: restored.map_or(reader.first_output_offset(), |position| {
                    position.next_offset
                }),
                clock: restored.map_or_else(PartitionClock::default, |position| position.clock),
                reader,
                finished,
                behind,
                last_record: Instant::now(),
            }
        })
        .collect();
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
            for partition in partitions.iter_mut() {
                partition.reader.set_wakeup(wake.clone());
            }
            let mut capability = Some(capability);
            let mut raw: Vec<RawRecord> = Vec::with_capacity(RECORDS_PER_POLL);
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
                    shared.abort(error);
                }
                let mut dead_letters = dead_letters.borrow_mut();
                let mut rows = Vec::new();
                let mut read_up_to: Vec<(u32, u64)> = Vec::new();
                let mut again: Option<Duration> = None;
                let read_up_to_watermark = slowest_in_source
                    .with_frontier(|frontier| frontier.first().copied())
                    .map(|slowest| {
                        // The probe sees this worker's own progress a step
                        // late; where every worker has published its
                        // watermark, their least is the same bound, now.
                        shared
                            .slowest_watermark_of_all(peers)
                            .map_or(slowest, |published| published.max(slowest))
                    })
                    .map(|slowest| slowest.saturating_add(skew_ms));
                let unfinished = partitions
                    .iter()
                    .filter(|partition| !partition.finished)
                    .count();
                'partitions: for (index, partition) in partitions
                    .iter_mut()
                    .filter(|partition| !partition.finished)
                    .enumerate()
                {
                    // Stopped, or waiting for the final checkpoint: no
                    // more reading.
                    if shared.is_aborted() || final_bookkeeping_done {
                        break;
                    }
                    if partition.holds_watermark(idle_timeout)
                        && read_up_to_watermark
                            .is_some_and(|limit| partition.clock.watermark(bound_ms) > limit)
                    {
                        // Too far ahead of the slowest partition: look again
                        // once another worker's watermark moves, or the
                        // frontier has (checked on a timer).
                        shared.wait_for_alignment(worker, Waker(wake.clone()));
                        again = Some(
                            again.map_or(ALIGNMENT_RECHECK, |other| other.min(ALIGNMENT_RECHECK)),
                        );
                        continue;
                    }
                    let (mut read, mut read_up_to_here) = (0, None);
                    // Read in small chunks, each decoded while its raw
                    // records are still in the nearest cache.
                    let polled = loop {
                        raw.clear();
                        let chunk = RECORDS_PER_CHUNK.min(RECORDS_PER_POLL - read);
                        let polled = match partition.reader.poll(&mut raw, chunk) {
                            Ok(polled) => polled,
                            Err(error) => {
                                shared.abort(Error::from(error));
                                break 'partitions;
                            }
                        };
                        // Room for what this partition still offers (a
                        // full chunk promises a full read) from each
                        // partition left: grown a row at a time, the vector
                        // would copy its rows at every doubling.
                        let offered = if raw.len() == chunk {
                            RECORDS_PER_POLL - read
                        } else {
                            raw.len()
                        };
                        rows.reserve(offered * (unfinished - index));
                        read += raw.len();
                        let first_output = partition.reader.first_output_offset();
                        let replayed = raw
                            .iter()
                            .filter(|record| record.offset < first_output)
                            .count();
                        Stats::add(&shared.stats.replayed, replayed as u64);
                        Stats::add(&shared.stats.records_in, (raw.len() - replayed) as u64);
                        if let Some(last) = raw.last() {
                            if last.offset >= first_output {
                                read_up_to_here = Some((last.partition, last.offset + 1));
                            }
                            partition.next_offset = partition.next_offset.max(last.offset + 1);
                            partition.last_record = Instant::now();
                        }
                        let chunk_read = raw.len();
                        for mut record in raw.drain(..) {
                            let warm_up = record.offset < first_output;
                            let letter = match decoder.decode(&mut record) {
                                // Behind the partition's own clock, or (after the
                                // partition was idle) behind the watermark.
                                Ok(row)
                                    if tracks_lateness
                                        && (partition.clock.is_late(row.time, bound_ms)
                                            || row.time < *held.time()) =>
                                {
                                    if warm_up {
                                        // Its dead letter was written by the run
                                        // that first read it.
                                        continue;
                                    }
                                    Stats::add(&shared.stats.late, 1);
                                    decoder.late_letter(&mut record, &row, LATE.into())
                                }
                                Ok(mut row) => {
                                    partition.clock.observe(row.time);
                                    row.warm_up = warm_up;
                                    rows.push(row);
                                    continue;
                                }
                                Err(_) if warm_up => continue,
                                Err(letter) => {
                                    Stats::add(&shared.stats.dead, 1);
                                    letter
                                }
                            };
                            if let Err(error) = dead_letters.write(&letter) {
                                shared.abort(error);
                            }
                        }
                        // A short chunk: the reader has nothing more now,
                        // and asking again at once would only say so.
                        if polled != Poll::Ready || chunk_read < chunk || read >= RECORDS_PER_POLL {
                            break polled;
                        }
                    };
                    read_up_to.extend(read_up_to_here);
                    match polled {
                        Poll::Ready => again = Some(Duration::ZERO),
                        Poll::Pending(wait) => {
                            again = Some(again.map_or(wait, |other| other.min(wait)))
                        }
                        Poll::Finished => partition.finished = true,
                    }
                    let behind = !partition.finished && partition.reader.is_behind();
                    if behind != partition.behind {
                        partition.behind = behind;
                        if behind {
                            shared.partitions_behind.fetch_add(1, Ordering::SeqCst);
                        } else {
                            shared.partitions_behind.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let (done, total) = partition.reader.progress();
                    shared.metrics.partition(
                        partition.reader.partition(),
                        PartitionStatus {
                            done,
                            total,
                            lag: partition.reader.lag(),
                            watermark: partition
                                .clock
                                .has_seen()
                                .then(|| partition.clock.watermark(bound_ms)),
                        },
                    );
                }
                if !rows.is_empty() {
                    output.session(&*held).give(Batch::from_rows(rows));
                }
                if let Some(ledger) = &ledger {
                    ledger.borrow_mut().checkpoint(*held.time(), read_up_to);
                }
                let all_finished = partitions.iter().all(|partition| partition.finished);
                if all_finished || shared.is_aborted() || shared.stop_requested() {
                    if !final_bookkeeping_done {
                        final_bookkeeping_done = true;
                        if let Err(error) = dead_letters.finish() {
                            shared.abort(error);
                        }
                        for partition in partitions.iter_mut().filter(|partition| partition.behind)
                        {
                            partition.behind = false;
                            shared.partitions_behind.fetch_sub(1, Ordering::SeqCst);
                        }
                        shared.publish_watermark(worker, None);
                    }
                    // A checkpointed run ends with a checkpoint of where
                    // its sources ended: the source holds its capability
                    // until it has cut the final one.
                    if let Some(coordinator) = &shared.checkpoints
                        && !shared.is_aborted()
                    {
                        let cut = coordinator.source_moves(worker, *held.time(), FINAL);
                        if let Some(cut) = cut
                            && let Err(error) =
                                cut_source(&shared, worker, cut, &partitions, &mut dead_letters)
                        {
                            shared.abort(error);
                        }
                        if cut.is_none_or(|cut| cut.time != FINAL) {
                            if let Some(cut) = cut {
                                held.downgrade(&cut.time);
                            }
                            activator.activate_after(CHECKPOINT_WAIT);
                            return;
                        }
                    }
                    capability = None;
                    return;
                }
                let watermark = partitions
                    .iter()
                    .filter(|partition| partition.holds_watermark(idle_timeout))
                    .map(|partition| partition.clock.watermark(bound_ms))
                    .min();
                shared.publish_watermark(worker, watermark);
                if watermark.is_none() {
                    // Every partition here is idle: follow the other workers,
                    // and look again soon to keep following them.
                    again = Some(again.map_or(IDLE_FOLLOW, |other| other.min(IDLE_FOLLOW)));
                }
                if let Some(watermark) = watermark.or_else(|| shared.slowest_active_watermark())
                    && watermark > *held.time()
                {
                    // Everything emitted so far is before the new time: a
                    // checkpoint it crosses is cut here.
                    if let Some(coordinator) = &shared.checkpoints
                        && let Some(cut) = coordinator.source_moves(worker, *held.time(), watermark)
                        && let Err(error) =
                            cut_source(&shared, worker, cut, &partitions, &mut dead_letters)
                    {
                        shared.abort(error);
                    }
                    held.downgrade(&watermark);
                }
                let wait = match again {
                    Some(Duration::ZERO) | None => Duration::ZERO,
                    // A partition about to turn idle must be looked at again
                    // when its timeout passes, data or not.
                    Some(wait) => idle_timeout.map_or(wait, |timeout| wait.min(timeout / 4)),
                };
                if wait.is_zero() {
                    activator.activate();
                } else {
                    activator.activate_after(wait);
                }
            }
        },
    );
    rows.probe_with(&slowest)
}
