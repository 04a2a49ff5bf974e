//! The Kafka source side: one consumer per worker, manually assigned the
//! worker's partitions, each partition read through its own queue as a
//! [`PartitionReader`], and a committer for the group's offsets.
//!
//! Start positions are resolved to offsets before the assignment, so a run
//! reports exactly where it started. A time is looked up with the brokers'
//! offsets-for-times; where a broker cannot answer, the offset is found by a
//! binary search over message timestamps (and the log says so).

use super::{
    ClientOptions, EndPosition, LOOKUP_TIMEOUT, LoggingContext, StartPosition, TopicPartitions,
    kafka_error,
};
use crate::{Error, PartitionReader, Poll, RawBody, RawRecord, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl ConsumerContext for LoggingContext {}

type Consumer_ = BaseConsumer<LoggingContext>;

/// How long an idle reader asks not to be polled, at most. Arriving
/// messages wake the reader earlier through its wake-up callback.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// A Kafka source, resolved from the spec and the command line.
#[derive(Clone, Debug)]
pub struct KafkaSourceConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topics read, in order (their partitions are numbered one after
    /// the other: see [`TopicPartitions`]).
    pub topics: Vec<String>,
    /// The consumer group offsets are committed for.
    pub group_id: String,
    /// librdkafka options, passed through verbatim.
    pub options: ClientOptions,
    /// Where each partition starts.
    pub start: StartPosition,
    /// Where each partition ends.
    pub end: EndPosition,
    /// Replay each partition from its earliest offset up to the start
    /// position, to rebuild window state, before the run's own records.
    pub warm_up: bool,
}

impl KafkaSourceConfig {
    pub(super) fn consumer(&self) -> Result<Consumer_> {
        self.options
            .client_config(&[
                ("bootstrap.servers", &self.brokers),
                ("group.id", &self.group_id),
                // Offsets are committed by the engine, only once every sink
                // has accepted the outputs up to them.
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                // Reaching the end of a partition is how a reader knows it
                // has caught up, and how `--until now` ends.
                ("enable.partition.eof", "true"),
                // Statistics carry the high watermarks the lag is measured by.
                ("statistics.interval.ms", "1000"),
            ])
            .create_with_context(LoggingContext::new(&self.options))
            .map_err(|error| self.error("cannot create a Kafka consumer", &error))
    }

    pub(super) fn error(&self, context: impl Into<String>, error: &KafkaError) -> Error {
        kafka_error(
            &self.options,
            format!(
                "{} (topic {} at {})",
                context.into(),
                self.topics.join(", "),
                self.brokers
            ),
            error,
        )
    }
}

/// Opens readers for source partitions `indexes` (numbered over the
/// source's topics by `partitions`), sharing one consumer, and a committer
/// for their offsets. Each reader starts at its resolved start position;
/// the log names it.
pub fn open_partitions(
    config: &KafkaSourceConfig,
    partitions: &Arc<TopicPartitions>,
    indexes: &[u32],
) -> Result<(Vec<KafkaPartitionReader>, Option<OffsetCommitter>)> {
    if indexes.is_empty() {
        return Ok((Vec::new(), None));
    }
    let consumer = Arc::new(config.consumer()?);
    let mut plans = Vec::with_capacity(indexes.len());
    for &index in indexes {
        let Some((topic, partition)) = partitions.locate(index) else {
            return Err(Error::Kafka {
                context: format!("source partition {index}"),
                message: format!(
                    "the topics {} have only {} partitions",
                    config.topics.join(", "),
                    partitions.len()
                ),
            });
        };
        let (low, high) = consumer
            .fetch_watermarks(topic, partition as i32, LOOKUP_TIMEOUT)
            .map_err(|error| {
                config.error(
                    format!("cannot read {topic} partition {partition}'s offsets"),
                    &error,
                )
            })?;
        let (low, high) = (low.max(0) as u64, high.max(0) as u64);
        let start = resolve_start(config, &consumer, topic, partition, low, high)?;
        let end = match config.end {
            EndPosition::Never => ReaderEnd::Never,
            EndPosition::Now => ReaderEnd::Offset(high),
            EndPosition::Time(ms) => ReaderEnd::Time(ms),
        };
        // Replayed even when the run has nothing to read from it after
        // the start: features keyed by another field than the source key
        // take their windows' records from every partition.
        let read_from = if config.warm_up { low } else { start };
        if read_from < start {
            eprintln!(
                "tideflow: replaying {topic} partition {partition} offsets {read_from}..{start} to rebuild window state (source.warm_up)"
            );
        }
        plans.push((index, topic, partition, read_from, start, high, end));
    }
    let mut assignment = TopicPartitionList::new();
    for (_, topic, partition, read_from, ..) in &plans {
        assignment
            .add_partition_offset(topic, *partition as i32, Offset::Offset(*read_from as i64))
            .map_err(|error| config.error("cannot build the assignment", &error))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|error| config.error("cannot assign partitions", &error))?;
    let mut readers = Vec::with_capacity(plans.len());
    let early = EarlyDeliveries::default();
    for (index, topic, partition, read_from, start, high, end) in plans {
        let Some(queue) = consumer.split_partition_queue(topic, partition as i32) else {
            return Err(Error::Kafka {
                context: format!("topic {topic} partition {partition}"),
                message: "librdkafka has no queue for this partition".into(),
            });
        };
        // Finished only once the replay too is done.
        let finished = matches!(end, ReaderEnd::Offset(end) if read_from >= end);
        readers.push(KafkaPartitionReader {
            index,
            topic: topic.to_owned(),
            kafka_partition: partition,
            partitions: partitions.clone(),
            queue,
            consumer: consumer.clone(),
            options: config.options.clone(),
            start,
            next_offset: read_from,
            high_at_start: high,
            end,
            finished,
            caught_up: start >= high,
            at_end: false,
            early: early.clone(),
        });
    }
    let committer = OffsetCommitter {
        consumer,
        partitions: partitions.clone(),
        options: config.options.clone(),
    };
    Ok((readers, Some(committer)))
}

/// Resolves a partition's start position to an offset in [low, high].
fn resolve_start(
    config: &KafkaSourceConfig,
    consumer: &Consumer_,
    topic: &str,
    partition: u32,
    low: u64,
    high: u64,
) -> Result<u64> {
    let offset = match &config.start {
        StartPosition::Earliest => low,
        StartPosition::Latest => high,
        StartPosition::Offsets(pairs) => pairs
            .iter()
            .find(|(listed, _)| *listed == partition)
            .map_or(low, |(_, offset)| *offset),
        StartPosition::Committed => {
            let mut wanted = TopicPartitionList::new();
            wanted.add_partition(topic, partition as i32);
            let committed = consumer
                .committed_offsets(wanted, LOOKUP_TIMEOUT)
                .map_err(|error| config.error("cannot read committed offsets", &error))?;
            match committed
                .find_partition(topic, partition as i32)
                .map(|entry| entry.offset())
            {
                Some(Offset::Offset(offset)) => offset.max(0) as u64,
                _ => {
                    eprintln!(
                        "tideflow: group {} has no committed offset for {topic} partition {partition}: starting at the earliest record",
                        config.group_id
                    );
                    low
                }
            }
        }
        StartPosition::Time(ms) => {
            offset_for_time(config, consumer, topic, partition, *ms, low, high)?
        }
    };
    Ok(offset.clamp(low, high))
}

/// The first offset whose message timestamp is at or after `ms` (the high
/// watermark if none is), asked of the brokers, or found by binary search
/// where they cannot answer.
fn offset_for_time(
    config: &KafkaSourceConfig,
    consumer: &Consumer_,
    topic: &str,
    partition: u32,
    ms: i64,
    low: u64,
    high: u64,
) -> Result<u64> {
    let mut wanted = TopicPartitionList::new();
    wanted
        .add_partition_offset(topic, partition as i32, Offset::Offset(ms))
        .map_err(|error| config.error("cannot build an offsets-for-times request", &error))?;
    let answer = consumer
        .offsets_for_times(wanted, LOOKUP_TIMEOUT)
        .ok()
        .and_then(|list| {
            let entry = list.find_partition(topic, partition as i32)?;
            entry.error().ok()?;
            Some(entry.offset())
        });
    let answer = match answer {
        Some(Offset::Offset(offset)) if offset >= 0 => Some((offset as u64).clamp(low, high)),
        Some(Offset::End) => Some(high),
        _ => None,
    };
    let probe = config.consumer()?;
    match answer {
        Some(offset) if answer_holds(config, &probe, topic, partition, ms, offset, low, high)? => {
            Ok(offset)
        }
        Some(offset) => {
            eprintln!(
                "tideflow: the brokers answered offset {offset} for time {ms} on {topic} partition {partition}, \
                 but the records around it say otherwise: finding the offset by binary search over message timestamps"
            );
            binary_search_time(config, &probe, topic, partition, ms, low, high)
        }
        None => {
            eprintln!(
                "tideflow: the brokers did not answer offsets-for-times for {topic} partition {partition}: \
                 finding the offset of {ms} by binary search over message timestamps"
            );
            binary_search_time(config, &probe, topic, partition, ms, low, high)
        }
    }
}

/// Whether `offset` is the first record at or after `ms`: the record there
/// (if any) is at or after it, and the one before (if any) is not. Brokers
/// that cannot look times up may answer anyway (librdkafka's mock cluster
/// answers the high watermark), so the answer is checked before it is used.
fn answer_holds(
    config: &KafkaSourceConfig,
    probe: &Consumer_,
    topic: &str,
    partition: u32,
    ms: i64,
    offset: u64,
    low: u64,
    high: u64,
) -> Result<bool> {
    if offset < high {
        let (_, timestamp) = first_message_from(config, probe, topic, partition, offset)?;
        if timestamp < ms {
            return Ok(false);
        }
    }
    if offset > low {
        let (found, timestamp) = first_message_from(config, probe, topic, partition, offset - 1)?;
        if found < offset && timestamp >= ms {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The first offset in [low, high) whose timestamp is at or after `ms`,
/// assuming timestamps do not decrease along the partition; `high` if none.
fn binary_search_time(
    config: &KafkaSourceConfig,
    probe: &Consumer_,
    topic: &str,
    partition: u32,
    ms: i64,
    low: u64,
    high: u64,
) -> Result<u64> {
    let (mut lo, mut hi) = (low, high);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (offset, timestamp) = first_message_from(config, probe, topic, partition, mid)?;
        if timestamp >= ms {
            hi = mid;
        } else {
            // Offsets between mid and the message read (gaps left by
            // compaction or transaction markers) hold no record.
            lo = offset + 1;
        }
    }
    Ok(lo)
}

/// The offset and timestamp of the first message at or after `offset`.
fn first_message_from(
    config: &KafkaSourceConfig,
    probe: &Consumer_,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<(u64, i64)> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64))
        .map_err(|error| config.error("cannot build a probe assignment", &error))?;
    probe
        .assign(&assignment)
        .map_err(|error| config.error("cannot assign a probe", &error))?;
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    while Instant::now() < deadline {
        match probe.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let timestamp = message
                    .timestamp()
                    .to_millis()
                    .ok_or_else(|| Error::Kafka {
                        context: format!("topic {topic} partition {partition}"),
                        message: format!(
                            "message {} has no timestamp, so no offset can be found for a time",
                            message.offset()
                        ),
                    })?;
                return Ok((message.offset() as u64, timestamp));
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(error)) => return Err(config.error("cannot read a probe message", &error)),
        }
    }
    Err(Error::Kafka {
        context: format!("topic {topic} partition {partition}"),
        message: format!("no message at offset {offset} within {LOOKUP_TIMEOUT:?}"),
    })
}

/// Where a reader stops.
#[derive(Clone, Copy, Debug)]
enum ReaderEnd {
    Never,
    Offset(u64),
    Time(i64),
}

/// One Kafka partition, read through its own queue of the worker's consumer.
pub struct KafkaPartitionReader {
    /// The source partition index (see [`TopicPartitions`]).
    index: u32,
    topic: String,
    /// The Kafka partition within the topic.
    kafka_partition: u32,
    partitions: Arc<TopicPartitions>,
    queue: rdkafka::consumer::base_consumer::PartitionQueue<LoggingContext>,
    consumer: Arc<Consumer_>,
    options: ClientOptions,
    start: u64,
    next_offset: u64,
    high_at_start: u64,
    end: ReaderEnd,
    finished: bool,
    caught_up: bool,
    /// At the end of the partition: EOF seen, no record since.
    at_end: bool,
    /// What librdkafka delivered on the consumer's main queue, by partition.
    early: EarlyDeliveries,
}

/// A message or end of partition, as a reader consumes it.
enum Fetched {
    Record(RawRecord),
    End,
    Failed(KafkaError),
}

impl Fetched {
    /// A message as a record of source partition `index`.
    fn from_message(index: u32, message: &impl Message) -> RawRecord {
        RawRecord {
            partition: index,
            offset: message.offset().max(0) as u64,
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            headers: super::headers_of(message),
            body: RawBody::Bytes(message.payload().map(<[u8]>::to_vec).unwrap_or_default()),
        }
    }
}

/// Messages and ends of partition that librdkafka delivered on the
/// consumer's main queue instead of a partition's own queue: those fetched
/// between the assignment and the split of the partition queues (librdkafka
/// undoes splits made before an assignment, so the window cannot be
/// closed). Shared by the readers of one consumer; whichever reader drains
/// the main queue keeps them here for the partition's reader, which takes
/// them before anything on its own queue, so nothing is lost or reordered.
type EarlyDeliveries =
    Arc<std::sync::Mutex<std::collections::BTreeMap<u32, std::collections::VecDeque<Fetched>>>>;

impl std::fmt::Debug for KafkaPartitionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPartitionReader")
            .field("topic", &self.topic)
            .field("partition", &self.kafka_partition)
            .field("start", &self.start)
            .field("next_offset", &self.next_offset)
            .field("high_at_start", &self.high_at_start)
            .field("end", &self.end)
            .finish()
    }
}

impl KafkaPartitionReader {
    /// The offset the reader started at.
    pub fn start_offset(&self) -> u64 {
        self.start
    }

    /// The topic and the Kafka partition read.
    pub fn topic_partition(&self) -> (&str, u32) {
        (&self.topic, self.kafka_partition)
    }

    /// Serves the consumer's events (errors, logs), which librdkafka only
    /// delivers while its main queue is polled, and keeps any message or
    /// end of partition found there for its partition's reader.
    fn serve_events(&self) -> Result<()> {
        loop {
            match self.consumer.poll(Duration::ZERO) {
                None => return Ok(()),
                Some(Ok(message)) => {
                    if let Some(index) = self
                        .partitions
                        .index_of(message.topic(), message.partition() as u32)
                    {
                        let record = Fetched::from_message(index, &message);
                        self.keep_early(index, Fetched::Record(record));
                    }
                }
                // librdkafka does not say which topic's partition ended;
                // the partition's reader learns it again from its own queue
                // once new messages arrive, or on its next end of partition.
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if !self.partitions.is_multi_topic()
                        && let Some(index) = self.partitions.index_of(&self.topic, partition as u32)
                    {
                        self.keep_early(index, Fetched::End);
                    }
                }
                Some(Err(error)) if is_fatal(&error) => {
                    return Err(kafka_error(
                        &self.options,
                        format!("topic {} partition {}", self.topic, self.kafka_partition),
                        &error,
                    ));
                }
                // Logged by the context; librdkafka retries.
                Some(Err(_)) => {}
            }
        }
    }

    fn keep_early(&self, index: u32, fetched: Fetched) {
        self.early
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(index)
            .or_default()
            .push_back(fetched);
    }

    /// The next message or end of this partition: first what arrived on
    /// the main queue, then the partition's own queue.
    fn next_fetched(&mut self) -> Option<Fetched> {
        let early = self
            .early
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_mut(&self.index)
            .and_then(|kept| kept.pop_front());
        early.or_else(|| {
            self.queue.poll(Duration::ZERO).map(|polled| match polled {
                Ok(message) => Fetched::Record(Fetched::from_message(self.index, &message)),
                Err(KafkaError::PartitionEOF(_)) => Fetched::End,
                Err(error) => Fetched::Failed(error),
            })
        })
    }

    fn past_end_time(&self, timestamp: Option<i64>) -> bool {
        matches!((self.end, timestamp), (ReaderEnd::Time(end), Some(ms)) if ms >= end)
    }
}

/// Errors after which reading cannot go on (as opposed to brokers that are
/// down or slow, which librdkafka retries on its own).
fn is_fatal(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::Fatal
        )
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

impl PartitionReader for KafkaPartitionReader {
    fn partition(&self) -> u32 {
        self.index
    }

    fn poll(&mut self, out: &mut Vec<RawRecord>, max_records: usize) -> Result<Poll> {
        if self.finished {
            return Ok(Poll::Finished);
        }
        self.serve_events()?;
        let mut taken = 0;
        while taken < max_records {
            match self.next_fetched() {
                None => break,
                Some(Fetched::Record(record)) => {
                    let offset = record.offset;
                    if self.past_end_time(record.timestamp_ms)
                        || matches!(self.end, ReaderEnd::Offset(end) if offset >= end)
                    {
                        self.finished = true;
                        break;
                    }
                    out.push(record);
                    taken += 1;
                    self.at_end = false;
                    self.next_offset = offset + 1;
                    if self.next_offset >= self.high_at_start {
                        self.caught_up = true;
                    }
                    if matches!(self.end, ReaderEnd::Offset(end) if self.next_offset >= end) {
                        self.finished = true;
                        break;
                    }
                }
                Some(Fetched::End) => {
                    self.caught_up = true;
                    self.at_end = true;
                    // The end of the partition is at or past the high
                    // watermark seen at start, whatever gaps lie before it.
                    if matches!(self.end, ReaderEnd::Offset(_)) {
                        self.finished = true;
                    }
                    break;
                }
                Some(Fetched::Failed(error)) if is_fatal(&error) => {
                    return Err(kafka_error(
                        &self.options,
                        format!("topic {} partition {}", self.topic, self.kafka_partition),
                        &error,
                    ));
                }
                // Transient (a broker down, a timeout): librdkafka retries and
                // the context has logged it; the next poll goes on.
                Some(Fetched::Failed(_)) => break,
            }
        }
        // librdkafka reports the end of a partition once; a time bound may
        // pass later, while the partition stays at its end.
        if self.at_end && matches!(self.end, ReaderEnd::Time(end) if now_ms() >= end) {
            self.finished = true;
        }
        Ok(if taken > 0 {
            Poll::Ready
        } else if self.finished {
            Poll::Finished
        } else {
            Poll::Pending(IDLE_POLL)
        })
    }

    fn is_behind(&self) -> bool {
        !self.caught_up
    }

    fn first_output_offset(&self) -> u64 {
        self.start
    }

    fn progress(&self) -> (u64, Option<u64>) {
        let done = self.next_offset.saturating_sub(self.start);
        match self.end {
            ReaderEnd::Offset(end) => (done, Some(end.saturating_sub(self.start))),
            _ => (done, None),
        }
    }

    fn lag(&self) -> Option<u64> {
        let latest = self
            .consumer
            .context()
            .high_watermark(&self.topic, self.kafka_partition as i32)
            .map_or(0, |high| high.max(0) as u64);
        Some(
            latest
                .max(self.high_at_start)
                .saturating_sub(self.next_offset),
        )
    }

    fn set_wakeup(&mut self, wake: Arc<dyn Fn() + Send + Sync>) {
        self.queue.set_nonempty_callback(move || wake());
    }
}

/// Commits offsets of one worker's partitions for the consumer group.
pub struct OffsetCommitter {
    consumer: Arc<Consumer_>,
    partitions: Arc<TopicPartitions>,
    options: ClientOptions,
}

impl std::fmt::Debug for OffsetCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetCommitter")
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl OffsetCommitter {
    /// Commits `(source partition, next offset to read)` pairs, waiting for
    /// the group coordinator to accept them.
    pub fn commit(&self, offsets: &[(u32, u64)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (index, offset) in offsets {
            let Some((topic, partition)) = self.partitions.locate(*index) else {
                continue;
            };
            list.add_partition_offset(topic, partition as i32, Offset::Offset(*offset as i64))
                .map_err(|error| kafka_error(&self.options, "cannot build a commit", &error))?;
        }
        self.consumer
            .commit(&list, CommitMode::Sync)
            .map_err(|error| kafka_error(&self.options, "cannot commit offsets", &error))
    }
}
