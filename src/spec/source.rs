//! `[source]` and `[time]`: where a dataflow's records come from and which
//! of their fields is the event time.

use indexmap::IndexMap;
use serde::Deserialize;
use std::path::PathBuf;
use tideflow_connectors::files::FileFormat;
use toml::Spanned;

/// The source of records.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceSpec {
    /// A file, or a directory whose files are the partitions in name order.
    Files(FilesSourceSpec),
    /// Synthetic, deterministic card transactions.
    Generator(GeneratorSourceSpec),
    /// A Kafka topic.
    Kafka(KafkaSourceSpec),
}

impl SourceSpec {
    /// The field the source's partitions are keyed by, if declared.
    pub fn key(&self) -> Option<&str> {
        match self {
            SourceSpec::Files(files) => files.key.as_deref(),
            SourceSpec::Generator(generator) => generator.key.as_deref(),
            SourceSpec::Kafka(kafka) => kafka.key.as_deref(),
        }
    }
}

/// `[source] type = "files"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSourceSpec {
    /// A file, or a directory: each file one partition, in name order.
    /// Relative paths are taken from the spec file's directory's parent
    /// when they do not exist relative to the working directory.
    pub path: PathBuf,
    /// `jsonl` or `parquet`.
    pub format: FileFormat,
    /// The field the partitions are keyed by (checked at run time: a key
    /// seen in two partitions stops the run).
    pub key: Option<String>,
    /// Lines longer than this many bytes become dead letters (default 1 MiB).
    pub max_record_bytes: Option<usize>,
}

/// `[source] type = "generator"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSourceSpec {
    /// The field the partitions are keyed by; the generator keys by `user_id`.
    pub key: Option<String>,
    /// Seed of all random choices (default 42).
    pub seed: Option<u64>,
    /// Distinct users (default 1000).
    pub users: Option<u64>,
    /// Distinct merchants (default 100).
    pub merchants: Option<u64>,
    /// Partitions (default 4).
    pub partitions: Option<u32>,
    /// Total records, or `"unlimited"` (default 100000).
    pub count: Option<toml::Value>,
    /// Records per second over all partitions (default: as fast as possible).
    pub rate: Option<f64>,
    /// Event time of the first record, epoch ms (default 1700000000000).
    pub start_ms: Option<i64>,
    /// Event-time gap between consecutive records, ms (default 10).
    pub spacing_ms: Option<f64>,
    /// Fraction of records moved back in event time (default 0).
    pub disorder_fraction: Option<f64>,
    /// How far back such records move at most, as a duration (default 0s).
    pub disorder_max: Option<String>,
}

/// The formats of Kafka message values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    /// One JSON object per message value.
    #[default]
    Json,
}

/// How window state is rebuilt when a Kafka source starts after the
/// beginning of its topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarmUp {
    /// Replay each partition from its earliest retained offset.
    #[default]
    Earliest,
    /// Start with empty windows.
    #[serde(rename = "none")]
    Empty,
}

/// `[source] type = "kafka"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic to read (or `topics`).
    pub topic: Option<String>,
    /// Several topics read as one source: their partitions are numbered
    /// one after the other, and outputs carry `_topic`.
    pub topics: Option<Vec<String>>,
    /// The message format: `json` (one object per message value).
    #[serde(default)]
    pub format: MessageFormat,
    /// The field the topic's partitions are keyed by (checked at run time).
    /// `kafka_key` keys by the message key.
    pub key: Option<String>,
    /// The consumer group offsets are committed for (default
    /// `tideflow-<name>`). Partitions are assigned by tideflow, not by the
    /// group.
    pub group_id: Option<String>,
    /// Start position: `earliest`, `latest`, `committed` (default), an
    /// RFC 3339 time, epoch ms, or `partition:offset,...`. `--from` overrides.
    pub from: Option<String>,
    /// End: `never` (default, live), `now` (the high watermarks at start),
    /// or a time. `--until` overrides.
    pub until: Option<String>,
    /// A caught-up partition without a record for this long stops holding
    /// back the watermark (default `5s`); its records that arrive later
    /// behind the watermark are late.
    pub idle_timeout: Option<String>,
    /// How often consumed offsets are committed once outputs are durable
    /// (default `1s`).
    pub commit_interval: Option<String>,
    /// How window state is rebuilt when a run starts after the beginning
    /// of its topic (`committed`, `latest`, a time, offsets): `earliest`
    /// (default) replays each partition from its earliest retained offset
    /// up to the start position, without output, so features are exactly
    /// those of a backfill; `none` starts with empty windows.
    #[serde(default)]
    pub warm_up: WarmUp,
    /// librdkafka options, passed through verbatim (`security.protocol`,
    /// `sasl.*`, `ssl.*`, ...). Secret values never appear in logs.
    #[serde(default)]
    pub options: IndexMap<String, toml::Value>,
}

/// `[time]`, and the `time` table of a `[[table]]` or `[[label]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSpec {
    /// The event-time field (type `timestamp_ms` or `i64`, epoch ms), or
    /// `kafka_timestamp` for the message timestamp of a Kafka input.
    pub field: Spanned<String>,
    /// How far behind its partition's newest event time a record may be
    /// and still count (default `0s`). Older records are late.
    pub max_out_of_orderness: Option<Spanned<String>>,
    /// How far a partition's watermark may run ahead of the slowest
    /// partition's (over all workers) before the source stops reading it
    /// until the others catch up (default `10s`). Bounds what event-time
    /// features buffer when partitions are fetched unevenly. Applies only
    /// while the rows held for the watermark exceed `max_buffered_rows`.
    pub max_partition_skew: Option<Spanned<String>>,
    /// How many rows per worker event-time stages, joins and labels may
    /// hold for the watermark before partitions are read in step by
    /// `max_partition_skew` (default 262144; `[time]` of the source only).
    pub max_buffered_rows: Option<Spanned<u64>>,
}
