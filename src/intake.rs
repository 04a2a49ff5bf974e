//! What a worker's source holds and does, apart from timely: its
//! partitions with their readers, lateness clocks and positions, and a
//! round of reading that turns records into rows and dead letters.
//!
//! The source operator ([`crate::operators::source`]) is a thin shell
//! around an [`Intake`]: it asks for a round at its current dataflow
//! time, emits the rows, counts what the round reports, and moves its
//! capability to [`Intake::watermark`]. The positions a checkpoint takes
//! are [`Intake::positions`], and a restored run starts each partition
//! from the position and clock its checkpoint gave it.
//!
//! A partition that is caught up and quiet for the source's idle timeout
//! (Kafka) stops holding the watermark back, so one silent partition does
//! not stall the graph. Its records that arrive later behind the watermark
//! the others have reached are late: they go to dead letters as `late`.
//! A round is given a read limit while partitions are read in step (the
//! source decides when): a partition whose watermark is past it waits.
//!
//! Where rows go into columns, a partition is read the cheapest way its
//! reader offers: chunks of columns (Parquet), whole lines of its read
//! buffer, each JSON record of the common shape scanned where it lies
//! (JSONL), or polled records. Whatever does not fit the fast way (a
//! record of another shape or type, a late one, a line across the
//! buffer's end) is decoded as a record, to the same row or dead letter.

use crate::batch::Batch;
use crate::checkpoint::restore::PartitionPosition;
use crate::decode::{Decoder, FlatCell};
use crate::metrics::PartitionStatus;
use crate::ordering::PartitionClock;
use crate::row::{LATE, Row};
use crate::schema::ColumnType;
use crate::sinks::DeadLetterWriter;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tideflow_connectors::{ColumnChunk, PartitionReader, Poll, RawBody, RawRecord, Value};

/// How many records one round reads from a partition, at most.
const RECORDS_PER_POLL: usize = 1024;

/// How many records are read and decoded at a time.
const RECORDS_PER_CHUNK: usize = 128;

/// How soon a round whose partitions wait for slower ones looks again.
pub const ALIGNMENT_RECHECK: Duration = Duration::from_millis(1);

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

    /// Whether the partition holds the watermark back: not when it ended,
    /// nor when it is caught up and has been quiet for `idle_timeout`.
    fn holds_watermark(&self, idle_timeout: Option<Duration>) -> bool {
        !self.finished
            && !idle_timeout
                .is_some_and(|timeout| !self.behind && self.last_record.elapsed() >= timeout)
    }
}

/// How a source reads: its decoder and its event-time rules.
#[derive(Debug)]
pub struct IntakeRules {
    /// Turns records into rows, or dead letters.
    pub decoder: Decoder,
    /// `time.max_out_of_orderness`, ms.
    pub bound_ms: i64,
    /// Whether late records are told apart (the plan has event time).
    pub tracks_lateness: bool,
    /// After how long without records a caught-up partition stops holding
    /// the watermark back (Kafka).
    pub idle_timeout: Option<Duration>,
    /// Whether rounds hold their schema fields in typed columns (the
    /// dataflow's source) rather than in each row (tables and labels,
    /// whose rows are kept one by one).
    pub columnar: bool,
}

/// What a round of reading gave.
#[derive(Debug, Default)]
pub struct Round {
    /// Rows decoded, partition by partition: their schema fields in
    /// columns where the rules say so.
    pub batch: Batch,
    /// Per partition read, the offset after its last record read (warm-up
    /// records aside).
    pub read_up_to: Vec<(u32, u64)>,
    /// When to read again: at once (`ZERO`), after a wait, or only when
    /// woken (`None`).
    pub again: Option<Duration>,
    /// Records read (warm-up records aside).
    pub records_in: u64,
    /// Records replayed to rebuild window state.
    pub replayed: u64,
    /// Late records, written as dead letters.
    pub late: u64,
    /// Other dead letters.
    pub dead: u64,
    /// Whether a partition waited for slower ones.
    pub waited_for_alignment: bool,
    /// How many more partitions are behind than before the round.
    pub behind_change: i64,
    /// The first failure of a reader or of the dead letters; the round
    /// stopped there.
    pub error: Option<Error>,
}

/// A worker's partitions and how it reads them.
pub struct Intake {
    partitions: Vec<Partition>,
    rules: IntakeRules,
    raw: Vec<RawRecord>,
    /// The schema field types, for a round's columns.
    field_types: Vec<ColumnType>,
    /// One record's fields on their way into the columns.
    fields: FieldBuffers,
}

/// One record's fields on their way into a round's columns: scanned from
/// a JSON record of the common shape, or else decoded as values.
#[derive(Default)]
struct FieldBuffers {
    scanned: Vec<FlatCell>,
    values: Vec<Value>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("partitions", &self.positions())
            .finish()
    }
}

impl Intake {
    /// Reads `readers` by `rules`, each partition from its position in
    /// `restored` (a checkpoint's) when it has one.
    pub fn new(
        readers: Vec<Box<dyn PartitionReader>>,
        rules: IntakeRules,
        restored: &BTreeMap<u32, PartitionPosition>,
    ) -> Self {
        let partitions = readers
            .into_iter()
            .map(|reader| {
                // A partition that had ended at the checkpoint reads on
                // from its position: a bounded input that has not grown
                // gives nothing more, one that has (a topic read `until =
                // "now"` again) gives what came since.
                let restored = restored.get(&reader.partition()).copied();
                Partition {
                    next_offset: restored.map_or(reader.first_output_offset(), |position| {
                        position.next_offset
                    }),
                    clock: restored.map_or_else(PartitionClock::default, |position| position.clock),
                    behind: reader.is_behind(),
                    reader,
                    finished: false,
                    last_record: Instant::now(),
                }
            })
            .collect();
        Intake {
            partitions,
            field_types: rules.decoder.field_types(),
            rules,
            raw: Vec::with_capacity(RECORDS_PER_POLL),
            fields: FieldBuffers::default(),
        }
    }

    /// After how long without records a caught-up partition stops
    /// holding the watermark back.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.rules.idle_timeout
    }

    /// How many partitions are behind their end (catching up).
    pub fn behind(&self) -> usize {
        self.partitions
            .iter()
            .filter(|partition| partition.behind)
            .count()
    }

    /// Has every reader call `wake` when it has records again.
    pub fn set_wakeup(&mut self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) {
        for partition in self.partitions.iter_mut() {
            partition.reader.set_wakeup(wake.clone());
        }
    }

    /// Whether every partition has ended.
    pub fn all_finished(&self) -> bool {
        self.partitions.iter().all(|partition| partition.finished)
    }

    /// Where each partition stands: what a checkpoint records.
    pub fn positions(&self) -> Vec<PartitionPosition> {
        self.partitions.iter().map(Partition::position).collect()
    }

    /// The least watermark of the partitions that hold it back; `None`
    /// when none does (all ended or idle).
    pub fn watermark(&self) -> Option<i64> {
        self.partitions
            .iter()
            .filter(|partition| partition.holds_watermark(self.rules.idle_timeout))
            .map(|partition| partition.clock.watermark(self.rules.bound_ms))
            .min()
    }

    /// The greatest event time any partition has shown, if any.
    pub fn newest_time(&self) -> Option<i64> {
        self.partitions
            .iter()
            .filter(|partition| partition.clock.has_seen())
            .map(|partition| partition.clock.watermark(0))
            .max()
    }

    /// The watermark of every partition together once all have ended:
    /// the least of their last watermarks, if any partition saw an event.
    pub fn final_watermark(&self) -> Option<i64> {
        self.partitions
            .iter()
            .filter(|partition| partition.clock.has_seen())
            .map(|partition| partition.clock.watermark(self.rules.bound_ms))
            .min()
    }

    /// Each partition's progress, lag and watermark, for the metrics.
    pub fn statuses(&self) -> impl Iterator<Item = (u32, PartitionStatus)> + '_ {
        self.partitions.iter().map(|partition| {
            let (done, total) = partition.reader.progress();
            (
                partition.reader.partition(),
                PartitionStatus {
                    done,
                    total,
                    lag: partition.reader.lag(),
                    watermark: partition
                        .clock
                        .has_seen()
                        .then(|| partition.clock.watermark(self.rules.bound_ms)),
                },
            )
        })
    }

    /// Reads a round: up to [`RECORDS_PER_POLL`] records of each
    /// unfinished partition whose watermark is not past `read_limit`.
    /// Rows whose event time is before `held` (the source's dataflow
    /// time, which idle partitions no longer hold back) or behind their
    /// partition's clock are late. Dead letters go to `dead_letters`.
    pub fn read_round(
        &mut self,
        held: i64,
        read_limit: Option<i64>,
        dead_letters: &mut DeadLetterWriter,
    ) -> Round {
        let mut round = Round::default();
        if self.rules.columnar {
            round.batch = Batch::with_fields(&self.field_types, 0);
        }
        let unfinished = self
            .partitions
            .iter()
            .filter(|partition| !partition.finished)
            .count();
        let (rules, raw, fields) = (&self.rules, &mut self.raw, &mut self.fields);
        for (index, partition) in self
            .partitions
            .iter_mut()
            .filter(|partition| !partition.finished)
            .enumerate()
        {
            if partition.holds_watermark(rules.idle_timeout)
                && read_limit.is_some_and(|limit| partition.clock.watermark(rules.bound_ms) > limit)
            {
                // Too far ahead of the slowest partition: look again once
                // another's watermark moves.
                round.waited_for_alignment = true;
                round.again = Some(
                    round
                        .again
                        .map_or(ALIGNMENT_RECHECK, |other| other.min(ALIGNMENT_RECHECK)),
                );
                continue;
            }
            let remaining = unfinished - index;
            let polled = match read_partition(
                partition,
                rules,
                raw,
                fields,
                held,
                remaining,
                &mut round,
                dead_letters,
            ) {
                Ok(polled) => polled,
                Err(error) => {
                    round.error = Some(error);
                    return round;
                }
            };
            match polled {
                Poll::Ready => round.again = Some(Duration::ZERO),
                Poll::Pending(wait) => {
                    round.again = Some(round.again.map_or(wait, |other| other.min(wait)))
                }
                Poll::Finished => partition.finished = true,
            }
            let behind = !partition.finished && partition.reader.is_behind();
            if behind != partition.behind {
                partition.behind = behind;
                round.behind_change += if behind { 1 } else { -1 };
            }
        }
        round
    }

    /// Marks every partition as no longer behind (the source has ended)
    /// and returns how many were.
    pub fn stop_being_behind(&mut self) -> usize {
        let mut were = 0;
        for partition in self
            .partitions
            .iter_mut()
            .filter(|partition| partition.behind)
        {
            partition.behind = false;
            were += 1;
        }
        were
    }
}

/// Reads one partition's share of a round: as columns where its reader
/// delivers them and the round's rows are columns, otherwise record by
/// record.
#[allow(clippy::too_many_arguments)]
fn read_partition(
    partition: &mut Partition,
    rules: &IntakeRules,
    raw: &mut Vec<RawRecord>,
    fields: &mut FieldBuffers,
    held: i64,
    remaining: usize,
    round: &mut Round,
    dead_letters: &mut DeadLetterWriter,
) -> Result<Poll> {
    let mut reading = Reading {
        rules,
        held,
        round,
        dead_letters,
        fields,
    };
    if rules.columnar && partition.reader.columnar().is_some() {
        reading.columns(partition, remaining)
    } else if rules.columnar && partition.reader.lines().is_some() {
        reading.lines(partition, raw, remaining)
    } else {
        reading.records(partition, raw, remaining)
    }
}

/// A partition's share of a round being read: where its rows, counts and
/// dead letters go.
struct Reading<'round> {
    rules: &'round IntakeRules,
    held: i64,
    round: &'round mut Round,
    dead_letters: &'round mut DeadLetterWriter,
    /// One record's fields on their way into the columns.
    fields: &'round mut FieldBuffers,
}

impl Reading<'_> {
    /// Reads record by record, in small chunks, each decoded while its raw
    /// records are still in the nearest cache.
    fn records(
        &mut self,
        partition: &mut Partition,
        raw: &mut Vec<RawRecord>,
        remaining: usize,
    ) -> Result<Poll> {
        let mut read = 0;
        let polled = loop {
            let chunk = RECORDS_PER_CHUNK.min(RECORDS_PER_POLL - read);
            let (polled, chunk_read) = self.poll_chunk(partition, raw, chunk, remaining, read)?;
            read += chunk_read;
            // A short chunk: the reader has nothing more now, and asking
            // again at once would only say so.
            if polled != Poll::Ready || chunk_read < chunk || read >= RECORDS_PER_POLL {
                break polled;
            }
        };
        Ok(polled)
    }

    /// Polls up to `chunk` records (`read` of the round's share read
    /// before) and decodes them; returns the poll and how many came.
    fn poll_chunk(
        &mut self,
        partition: &mut Partition,
        raw: &mut Vec<RawRecord>,
        chunk: usize,
        remaining: usize,
        read: usize,
    ) -> Result<(Poll, usize)> {
        raw.clear();
        let polled = partition.reader.poll(raw, chunk)?;
        // Room for what this partition still offers (a full chunk
        // promises a full read) from each partition left: grown a row at
        // a time, the vector would copy its rows at every doubling.
        let offered = if raw.len() == chunk {
            RECORDS_PER_POLL - read
        } else {
            raw.len()
        };
        self.round
            .batch
            .reserve_rows(self.round.batch.len() + offered * remaining);
        let first_output = partition.reader.first_output_offset();
        if let Some(last) = raw.last() {
            self.note_read(partition, last.partition, last.offset, first_output);
        }
        let chunk_read = raw.len();
        for record in raw.drain(..) {
            let warm_up = record.offset < first_output;
            self.count(warm_up);
            self.record(&mut partition.clock, record, warm_up)?;
        }
        Ok((polled, chunk_read))
    }

    /// Notes that the partition's records up to `last` were read.
    fn note_read(&mut self, partition: &mut Partition, id: u32, last: u64, first_output: u64) {
        if last >= first_output {
            // A partition's chunks are read one after another: one entry
            // for them all.
            match self.round.read_up_to.last_mut() {
                Some((seen, up_to)) if *seen == id => *up_to = last + 1,
                _ => self.round.read_up_to.push((id, last + 1)),
            }
        }
        partition.next_offset = partition.next_offset.max(last + 1);
        partition.last_record = Instant::now();
    }

    /// Reads lines where they lie in the reader's buffer: a JSON record of
    /// the common shape that is on time goes from its line into the
    /// round's columns, without a copy; any other line becomes a record
    /// (a copy of it), decoded to its row or its dead letter. A line that
    /// does not lie whole in the buffer is polled.
    fn lines(
        &mut self,
        partition: &mut Partition,
        raw: &mut Vec<RawRecord>,
        remaining: usize,
    ) -> Result<Poll> {
        let first_output = partition.reader.first_output_offset();
        self.round
            .batch
            .reserve_rows(self.round.batch.len() + RECORDS_PER_POLL * remaining);
        let mut read = 0;
        while read < RECORDS_PER_POLL {
            let Partition { reader, clock, .. } = &mut *partition;
            let reader = reader.lines().expect("a reader of lines");
            let mut lines = reader.whole_lines()?;
            while read < RECORDS_PER_POLL
                && let Some(line) = lines.next_line()
            {
                read += 1;
                let (id, offset) = (lines.partition(), lines.next_offset() - 1);
                let warm_up = offset < first_output;
                self.count(warm_up);
                if !(self.rules.columnar && self.take_flat(clock, id, offset, line, warm_up)) {
                    let record = RawRecord {
                        partition: id,
                        offset,
                        timestamp_ms: None,
                        key: None,
                        headers: Vec::new(),
                        body: RawBody::Bytes(line.to_vec()),
                    };
                    self.record(clock, record, warm_up)?;
                }
            }
            let (id, next_offset, taken) = (lines.partition(), lines.next_offset(), lines.taken());
            reader.consume_lines(taken);
            if taken.lines > 0 {
                self.note_read(partition, id, next_offset - 1, first_output);
                continue;
            }
            // The next line is not whole in the buffer, is over-long, or
            // the file has ended: polled as a record.
            let (polled, polled_read) = self.poll_chunk(partition, raw, 1, remaining, read)?;
            read += polled_read;
            if polled != Poll::Ready || polled_read == 0 {
                return Ok(polled);
            }
        }
        Ok(Poll::Ready)
    }

    /// Reads chunks of columns: each row whose fields fit the schema and
    /// that is on time goes from the chunk's columns into the round's; any
    /// other is decoded from its record, to its dead letter.
    fn columns(&mut self, partition: &mut Partition, remaining: usize) -> Result<Poll> {
        let first_output = partition.reader.first_output_offset();
        let mut read = 0;
        let mut read_up_to = None;
        while read < RECORDS_PER_POLL {
            let reader = partition
                .reader
                .columnar()
                .expect("a reader that delivers columns");
            let Some(chunk) = reader.next_chunk(RECORDS_PER_POLL - read)? else {
                break;
            };
            read += chunk.len();
            self.round
                .batch
                .reserve_rows(self.round.batch.len() + chunk.len() * remaining);
            let end = chunk.first_offset + chunk.len() as u64;
            if end > first_output {
                read_up_to = Some((chunk.partition, end));
            }
            partition.next_offset = partition.next_offset.max(end);
            partition.last_record = Instant::now();
            self.chunk(partition, &chunk, first_output)?;
        }
        self.round.read_up_to.extend(read_up_to);
        Ok(if read == 0 {
            Poll::Finished
        } else {
            Poll::Ready
        })
    }

    /// Takes the rows of one chunk of columns.
    fn chunk(
        &mut self,
        partition: &mut Partition,
        chunk: &ColumnChunk,
        first_output: u64,
    ) -> Result<()> {
        let rules = self.rules;
        let fields = rules.decoder.chunk_fields(chunk);
        for row in 0..chunk.len() {
            let offset = chunk.first_offset + row as u64;
            let warm_up = offset < first_output;
            self.count(warm_up);
            let on_time = fields.as_ref().and_then(|fields| {
                let time = fields.time(row)?;
                let late = rules.tracks_lateness
                    && (partition.clock.is_late(time, rules.bound_ms) || time < self.held);
                (!late).then_some((fields, time))
            });
            match on_time {
                Some((fields, time)) => {
                    partition.clock.observe(time);
                    let origin = Row {
                        partition: chunk.partition,
                        offset,
                        time,
                        values: Vec::new(),
                        warm_up,
                    };
                    self.round.batch.push_cells(origin, fields.cells(row));
                }
                None => self.record(&mut partition.clock, chunk.record(row), warm_up)?,
            }
        }
        Ok(())
    }

    /// Counts a record read: the run's own, or replayed to rebuild state.
    fn count(&mut self, warm_up: bool) {
        if warm_up {
            self.round.replayed += 1;
        } else {
            self.round.records_in += 1;
        }
    }

    /// Takes a JSON record of the common shape that is on time straight
    /// into the round's columns; false where it must be decoded (to a
    /// row, a late record's dead letter or another).
    #[inline]
    fn take_flat(
        &mut self,
        clock: &mut PartitionClock,
        partition: u32,
        offset: u64,
        bytes: &[u8],
        warm_up: bool,
    ) -> bool {
        let rules = self.rules;
        let Some((time, text)) = rules.decoder.scan_flat(bytes, &mut self.fields.scanned) else {
            return false;
        };
        if rules.tracks_lateness && (clock.is_late(time, rules.bound_ms) || time < self.held) {
            return false;
        }
        clock.observe(time);
        let origin = Row {
            partition,
            offset,
            time,
            values: Vec::new(),
            warm_up,
        };
        let cells = self.fields.scanned.iter().map(|cell| cell.cell(text));
        self.round.batch.push_cells(origin, cells);
        true
    }

    /// Decodes one record into a row of the round, or a dead letter.
    fn record(
        &mut self,
        clock: &mut PartitionClock,
        mut record: RawRecord,
        warm_up: bool,
    ) -> Result<()> {
        let rules = self.rules;
        if rules.columnar
            && let RawBody::Bytes(bytes) = &record.body
            && self.take_flat(clock, record.partition, record.offset, bytes, warm_up)
        {
            return Ok(());
        }
        let fields = &mut self.fields.values;
        let decoded = if rules.columnar {
            rules
                .decoder
                .decode_fields(&mut record, fields)
                .map(|time| Row {
                    partition: record.partition,
                    offset: record.offset,
                    time,
                    values: Vec::new(),
                    warm_up,
                })
        } else {
            rules.decoder.decode(&mut record).map(|mut row| {
                row.warm_up = warm_up;
                row
            })
        };
        let letter = match decoded {
            // Behind the partition's own clock, or (after the partition
            // was idle) behind the watermark.
            Ok(row)
                if rules.tracks_lateness
                    && (clock.is_late(row.time, rules.bound_ms) || row.time < self.held) =>
            {
                if warm_up {
                    // Its dead letter was written by the run that first
                    // read it.
                    return Ok(());
                }
                self.round.late += 1;
                let decoded_fields = if rules.columnar {
                    &fields[..]
                } else {
                    &row.values
                };
                rules
                    .decoder
                    .late_letter(&mut record, decoded_fields, LATE.into())
            }
            Ok(mut row) => {
                clock.observe(row.time);
                if rules.columnar {
                    self.round.batch.push_fields(row, fields);
                } else {
                    self.round.batch.push_row(std::mem::take(&mut row));
                }
                return Ok(());
            }
            Err(_) if warm_up => return Ok(()),
            Err(letter) => {
                self.round.dead += 1;
                letter
            }
        };
        self.dead_letters.write(&letter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::source::{open_assigned, resume_at_restored};
    use crate::plan::{Plan, SinkPlan, SourcePlan};
    use crate::row::Origins;
    use std::collections::BTreeSet;

    /// The shipped generator dataflow with `count` records on 3
    /// partitions, 5% of them up to 3 s out of order against a bound of
    /// 1 s: some are late (its features make lateness matter).
    fn plan(count: u64) -> Plan {
        let spec =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/fraud_generator.toml");
        let overrides = [
            "source.partitions=3".to_owned(),
            format!("source.count={count}"),
            "time.max_out_of_orderness=\"1s\"".to_owned(),
        ];
        crate::plan::load(&spec, &overrides).unwrap()
    }

    fn intake(plan: &Plan, restored: &BTreeMap<u32, PartitionPosition>, columnar: bool) -> Intake {
        let readers = open_assigned(&plan.source, &plan.field_names(), 0, 1)
            .unwrap()
            .readers;
        let rules = IntakeRules {
            decoder: Decoder::new(plan),
            bound_ms: plan.bound_ms,
            tracks_lateness: plan.tracks_lateness(),
            idle_timeout: None,
            columnar,
        };
        Intake::new(resume_at_restored(readers, restored), rules, restored)
    }

    fn discard() -> DeadLetterWriter {
        DeadLetterWriter::open(&SinkPlan::Null, (0, ""), "generator", Origins::by_index()).unwrap()
    }

    /// Reads rounds, as the source operator does, until every partition
    /// has ended or `rounds` have been read; returns the origins of the
    /// rows with their fields and the number of late records.
    fn read(intake: &mut Intake, rounds: usize) -> (BTreeMap<(u32, u64), Vec<Value>>, u64) {
        let (mut rows, mut late) = (BTreeMap::new(), 0);
        for _ in 0..rounds {
            if intake.all_finished() {
                break;
            }
            let round = intake.read_round(i64::MIN, None, &mut discard());
            assert!(round.error.is_none(), "{:?}", round.error);
            assert_eq!(round.dead, 0);
            late += round.late;
            for row in round.batch.into_rows() {
                let origin = (row.partition, row.offset);
                assert!(rows.insert(origin, row.values).is_none(), "read twice");
            }
        }
        (rows, late)
    }

    /// The generator's records that are not late by their partition's
    /// clock (more than the bound behind the newest before them).
    fn on_time(plan: &Plan) -> BTreeSet<(u32, u64)> {
        let SourcePlan::Generator(config) = &plan.source else {
            unreachable!("a generator plan")
        };
        let mut on_time = BTreeSet::new();
        for partition in 0..config.partitions {
            let mut newest = i64::MIN;
            for offset in 0..config.partition_count(partition).unwrap() {
                let (_, _, _, time) = config.record(partition, offset);
                if time >= newest.saturating_sub(plan.bound_ms) {
                    newest = newest.max(time);
                    on_time.insert((partition, offset));
                }
            }
        }
        on_time
    }

    #[test]
    fn every_record_is_a_row_or_late_and_positions_follow_the_reads() {
        let plan = plan(6_000);
        let mut intake = intake(&plan, &BTreeMap::new(), true);
        let (rows, late) = read(&mut intake, usize::MAX);
        let expected = on_time(&plan);
        assert!(late > 0, "the test data has late records");
        assert_eq!(rows.keys().copied().collect::<BTreeSet<_>>(), expected);
        assert_eq!(rows.len() as u64 + late, 6_000);
        // Fields read through columns are those decoded row by row.
        let (by_row, _) = read(
            &mut self::intake(&plan, &BTreeMap::new(), false),
            usize::MAX,
        );
        assert_eq!(rows, by_row);
        assert!(rows.values().all(|fields| fields.len() == plan.field_count));
        let SourcePlan::Generator(config) = &plan.source else {
            unreachable!("a generator plan")
        };
        for position in intake.positions() {
            assert_eq!(
                Some(position.next_offset),
                config.partition_count(position.partition)
            );
        }
    }

    /// Reads three rounds, then the rest with an intake restored from the
    /// first's positions: the rows read (a row read by both fails) and
    /// the late records of both.
    fn read_in_two_runs(plan: &Plan) -> (BTreeMap<(u32, u64), Vec<Value>>, u64) {
        let mut first = intake(plan, &BTreeMap::new(), true);
        let (mut rows, mut late) = read(&mut first, 3);
        let positions: BTreeMap<u32, PartitionPosition> = first
            .positions()
            .into_iter()
            .map(|position| (position.partition, position))
            .collect();
        assert!(!first.all_finished(), "three rounds read part of the input");
        let mut second = intake(plan, &positions, true);
        let (more, more_late) = read(&mut second, usize::MAX);
        for (origin, fields) in more {
            assert!(
                rows.insert(origin, fields).is_none(),
                "{origin:?} read by both"
            );
        }
        late += more_late;
        (rows, late)
    }

    #[test]
    fn an_intake_restored_from_positions_reads_on_where_the_first_stopped() {
        let plan = plan(30_000);
        let (rows, late) = read_in_two_runs(&plan);
        // The clocks came with the positions: the same records are late.
        assert_eq!(
            rows.keys().copied().collect::<BTreeSet<_>>(),
            on_time(&plan)
        );
        assert_eq!(rows.len() as u64 + late, 30_000);
    }

    /// A Parquet source's plan over two files of `rows` rows each, 2% of
    /// them late against a bound of 1 s, and the directory holding them.
    fn parquet_plan(rows: i64) -> (Plan, tempfile::TempDir) {
        use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        for file in 0..2 {
            let times = (0..rows).map(|row| 1_000 * row - if row % 50 == 7 { 5_000 } else { 0 });
            let batch = RecordBatch::try_from_iter([
                (
                    "user_id",
                    Arc::new(StringArray::from_iter_values(
                        (0..rows).map(|row| format!("u{}", row % 9)),
                    )) as ArrayRef,
                ),
                (
                    "amount",
                    Arc::new(Float64Array::from_iter_values(
                        (0..rows).map(|row| row as f64),
                    )),
                ),
                ("ts", Arc::new(Int64Array::from_iter_values(times))),
            ])
            .unwrap();
            let path = dir.path().join(format!("p{file}.parquet"));
            let mut writer = parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(path).unwrap(),
                batch.schema(),
                None,
            )
            .unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
        let spec = format!(
            "name = \"p\"\n[source]\ntype = \"files\"\npath = \"{}\"\nformat = \"parquet\"\n\
             key = \"user_id\"\n[schema]\nuser_id = \"string\"\namount = \"f64\"\n\
             ts = \"timestamp_ms\"\n[time]\nfield = \"ts\"\nmax_out_of_orderness = \"1s\"\n\
             [[feature]]\nname = \"amount_sum_1m\"\nagg = \"sum\"\nfield = \"amount\"\n\
             window = \"1m\"\n[[sink]]\ntype = \"null\"\n[dead_letters]\ntype = \"null\"\n",
            dir.path().display()
        );
        let spec_path = dir.path().join("spec.toml");
        std::fs::write(&spec_path, spec).unwrap();
        (crate::plan::load(&spec_path, &[]).unwrap(), dir)
    }

    /// Parquet read as columns gives the rows record-by-record reading
    /// gives, and a run restored from positions reads on where the first
    /// stopped (its readers seek), with the same records late.
    #[test]
    fn parquet_columns_read_as_records_and_restore_where_they_stopped() {
        let (plan, _dir) = parquet_plan(5_000);
        let (rows, late) = read(&mut intake(&plan, &BTreeMap::new(), true), usize::MAX);
        let (by_record, late_by_record) =
            read(&mut intake(&plan, &BTreeMap::new(), false), usize::MAX);
        assert_eq!((&rows, late), (&by_record, late_by_record));
        assert_eq!(rows.len() as u64 + late, 10_000);
        assert!(late > 0);

        assert_eq!(read_in_two_runs(&plan), (rows, late));
    }
}
