//! The dataflow spec: the TOML file a user writes, as it is written.
//!
//! This module only reads and shapes the text: every field is documented
//! where it is defined, unknown fields are rejected, and errors carry the
//! file, line and a hint. [`crate::plan`] turns a spec into a checked plan
//! (fields resolved to columns, features to stages); nothing downstream
//! reads the spec directly.

mod duration;
mod overrides;

pub use duration::{Window, parse_duration_ms, parse_window};
pub use overrides::apply_override;

use indexmap::IndexMap;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A whole dataflow spec file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The dataflow's name, used in outputs and the summary.
    pub name: String,
    /// Where records come from.
    pub source: SourceSpec,
    /// The record fields and their types, in output column order:
    /// `string`, `i64`, `f64`, `bool` or `timestamp_ms`.
    pub schema: IndexMap<String, String>,
    /// Which field is the event time, and how out of order it may be.
    pub time: TimeSpec,
    /// Features, computed in order; each is a window aggregate or an
    /// expression over fields and earlier features.
    #[serde(default)]
    pub feature: Vec<FeatureSpec>,
    /// The model that scores each row, if any.
    pub model: Option<ModelSpec>,
    /// How rows are grouped into batches for the model and the sinks.
    #[serde(default)]
    pub batching: BatchingSpec,
    /// Where output rows go (at least one).
    #[serde(default)]
    pub sink: Vec<SinkSpec>,
    /// Where dead letters go; standard error if absent.
    pub dead_letters: Option<SinkSpec>,
    /// How long feature state is kept.
    #[serde(default)]
    pub state: StateSpec,
}

/// `[state]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// Where checkpoints are kept (a local directory). With it, the run
    /// takes periodic checkpoints, starts from the newest one, and writes
    /// file sinks exactly once.
    pub dir: Option<PathBuf>,
    /// Wall-clock time between checkpoints (default `10s`).
    pub interval: Option<String>,
    /// How many complete checkpoints are kept (default 3).
    pub retain: Option<usize>,
    /// How much event time may pass without a record of a key before the
    /// key's state expires (a duration; default: never). A record that
    /// comes `key_ttl` or more after its key's newest earlier record starts
    /// the key afresh: lifetime aggregates count from it, `prev` and
    /// `since_prev` are null. Must be at least the longest window plus
    /// `max_out_of_orderness`, so that finite windows never notice.
    pub key_ttl: Option<String>,
}

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
    pub format: String,
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
    #[serde(default = "json_format")]
    pub format: String,
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
    pub warm_up: Option<String>,
    /// librdkafka options, passed through verbatim (`security.protocol`,
    /// `sasl.*`, `ssl.*`, ...). Secret values never appear in logs.
    #[serde(default)]
    pub options: IndexMap<String, toml::Value>,
}

fn json_format() -> String {
    "json".to_owned()
}

/// `[time]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSpec {
    /// The event-time field (type `timestamp_ms` or `i64`, epoch ms).
    pub field: String,
    /// How far behind its partition's newest event time a record may be
    /// and still count (default `0s`). Older records are late.
    #[serde(default = "zero_duration")]
    pub max_out_of_orderness: String,
    /// How far a partition's watermark may run ahead of the slowest
    /// partition's (over all workers) before the source stops reading it
    /// until the others catch up (default `10s`). Bounds what event-time
    /// features buffer when partitions are fetched unevenly.
    #[serde(default = "default_partition_skew")]
    pub max_partition_skew: String,
}

fn default_partition_skew() -> String {
    "10s".to_owned()
}

fn zero_duration() -> String {
    "0s".to_owned()
}

/// One `[[feature]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Output column name.
    pub name: String,
    /// Grouping field of an aggregate (default: `source.key`).
    pub key: Option<String>,
    /// `count`, `sum`, `mean`, `min`, `max`, `std`, `distinct_count`, `prev`
    /// or `since_prev`.
    pub agg: Option<String>,
    /// The aggregated field (not for `count` and `since_prev`).
    pub field: Option<String>,
    /// A duration (`ms`, `s`, `m`, `h`, `d`) or `lifetime` (the default).
    pub window: Option<String>,
    /// An expression over fields and earlier features, instead of `agg`.
    pub expr: Option<String>,
}

/// `[model]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The `.onnx` file.
    pub path: PathBuf,
    /// Name recorded in `_model` (default: the file stem).
    pub name: Option<String>,
    /// Columns (fields or features) fed to the model, in order, as one
    /// float32 tensor of shape `[rows, len(inputs)]`.
    pub inputs: Vec<String>,
    /// The model input that receives that tensor (default: its only input).
    pub input_name: Option<String>,
    /// Output columns: `column = "model_output"` or
    /// `column = "model_output[i]"` for column `i` of a 2-D output.
    pub outputs: IndexMap<String, String>,
    /// `auto`, `cpu`, `cuda` or `cuda:N` (default `auto`).
    #[serde(default = "auto_device")]
    pub device: String,
    /// The value fed to the model in place of a null input (default 0).
    #[serde(default)]
    pub fill_null: f32,
    /// Rows in every ONNX Runtime run: batches are split into runs of
    /// this many rows, the last one padded, so that a row's scores do not
    /// depend on its batch's size. `0`: one run per batch, whatever its
    /// size. Default: 4096 on a GPU (whose kernels change with the number
    /// of rows), `0` on the CPU.
    pub run_rows: Option<usize>,
    /// What a batch the model fails on becomes: `dead_letter` (the
    /// default: each of its rows goes to the dead letters with the reason,
    /// and the run goes on) or `stop` (the run stops with the error).
    #[serde(default = "dead_letter")]
    pub on_error: String,
}

fn dead_letter() -> String {
    "dead_letter".to_owned()
}

fn auto_device() -> String {
    "auto".to_owned()
}

/// `[batching]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingSpec {
    /// `micro`, `bulk` or `adaptive` (bulk while a source is behind, micro
    /// once caught up). Default `adaptive`.
    #[serde(default = "adaptive_policy")]
    pub policy: String,
    /// Micro-batches: flushed at `max_rows` or after `max_delay`
    /// (defaults 256 rows, `5ms`).
    #[serde(default = "micro_default")]
    pub micro: BatchLimitsSpec,
    /// Bulk batches: flushed at `max_rows` or after `max_delay`
    /// (defaults 16384 rows, `1s`).
    #[serde(default = "bulk_default")]
    pub bulk: BatchLimitsSpec,
}

impl Default for BatchingSpec {
    fn default() -> Self {
        BatchingSpec {
            policy: adaptive_policy(),
            micro: micro_default(),
            bulk: bulk_default(),
        }
    }
}

fn adaptive_policy() -> String {
    "adaptive".to_owned()
}

fn micro_default() -> BatchLimitsSpec {
    BatchLimitsSpec {
        max_rows: Some(256),
        max_delay: Some("5ms".into()),
    }
}

fn bulk_default() -> BatchLimitsSpec {
    BatchLimitsSpec {
        max_rows: Some(16384),
        max_delay: Some("1s".into()),
    }
}

/// Limits of one batching policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLimitsSpec {
    /// A batch is flushed when it holds this many rows.
    pub max_rows: Option<usize>,
    /// A batch is flushed when its oldest row has waited this long.
    pub max_delay: Option<String>,
}

/// One `[[sink]]` or the `[dead_letters]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkSpec {
    /// JSON lines, one file per worker, in directory `path`.
    Jsonl(PathSinkSpec),
    /// Parquet, one file per worker, in directory `path`.
    Parquet(PathSinkSpec),
    /// JSON lines on standard output.
    Stdout(NoOptions),
    /// JSON lines on standard error.
    Stderr(NoOptions),
    /// Rows are counted and dropped (benchmarks).
    Null(NoOptions),
    /// JSON messages to a Kafka topic.
    Kafka(KafkaSinkSpec),
}

/// `type = "kafka"` for a sink or the dead letters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSpec {
    /// `bootstrap.servers` (default: the Kafka source's).
    pub brokers: Option<String>,
    /// The topic written.
    pub topic: String,
    /// librdkafka producer options, passed through verbatim (default: the
    /// Kafka source's options where they are client-wide, such as security).
    #[serde(default)]
    pub options: IndexMap<String, toml::Value>,
}

/// A sink writing into a directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSinkSpec {
    /// The output directory (created if missing).
    pub path: PathBuf,
}

/// A sink without options.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// A spec that could not be read or is inconsistent: where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The spec file.
    pub file: PathBuf,
    /// 1-based line of the problem, where one can be pointed at.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message)?,
            None => write!(f, "{}: {}", self.file.display(), self.message)?,
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// The text of a spec and where it came from, kept so that errors found
/// after parsing can still point at a line.
#[derive(Clone, Debug)]
pub struct SpecSource {
    /// The spec file.
    pub file: PathBuf,
    /// Its text.
    pub text: String,
    /// `--set` overrides applied, as given.
    pub overrides: Vec<String>,
}

impl SpecSource {
    /// Reads a spec file.
    pub fn read(file: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(file).map_err(|error| SpecError {
            file: file.to_owned(),
            line: None,
            message: format!("cannot read the spec: {error}"),
            hint: Some(
                "pass the path of a dataflow .toml file, such as dataflows/fraud.toml".into(),
            ),
        })?;
        Ok(SpecSource {
            file: file.to_owned(),
            text,
            overrides: Vec::new(),
        })
    }

    /// An error about this spec, pointing at the first line that contains
    /// `needle` (when given and found).
    pub fn error(
        &self,
        needle: Option<&str>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> SpecError {
        let line = needle.and_then(|needle| self.line_of(needle));
        SpecError {
            file: self.file.clone(),
            line,
            message: message.into(),
            hint,
        }
    }

    /// The 1-based line of the first occurrence of `needle`, preferring an
    /// occurrence as a quoted TOML string.
    pub fn line_of(&self, needle: &str) -> Option<usize> {
        let quoted = format!("\"{needle}\"");
        let at = self.text.find(&quoted).or_else(|| self.text.find(needle))?;
        Some(line_at(&self.text, at))
    }

    /// Parses the text, applies the overrides, and deserializes the spec.
    pub fn parse(&self) -> Result<Spec, SpecError> {
        let mut table: toml::Table =
            toml::from_str(&self.text).map_err(|error| self.toml_error(&error))?;
        if self.overrides.is_empty() {
            return toml::from_str(&self.text).map_err(|error| self.toml_error(&error));
        }
        for assignment in &self.overrides {
            apply_override(&mut table, assignment).map_err(|message| SpecError {
                file: self.file.clone(),
                line: None,
                message: format!("--set {assignment}: {message}"),
                hint: Some("write --set KEY=VALUE with a dotted key, array items by index: sink[0].path=out/".into()),
            })?;
        }
        Spec::deserialize(table).map_err(|error| SpecError {
            file: self.file.clone(),
            line: None,
            message: format!(
                "after --set {}: {}",
                self.overrides.join(" --set "),
                error.message()
            ),
            hint: Some("check the overridden keys against the spec reference in the README".into()),
        })
    }

    fn toml_error(&self, error: &toml::de::Error) -> SpecError {
        let mut line = error.span().map(|span| line_at(&self.text, span.start));
        // Inside tagged tables (source, sink) the parser points at the
        // table; point at the unknown key itself when it can be found.
        if let Some(name) = error
            .message()
            .split("unknown field `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
        {
            let key_line = self.text.lines().position(|text| {
                text.trim_start()
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            });
            line = key_line.map(|index| index + 1).or(line);
        }
        let message = error.message().trim().to_owned();
        let hint = if message.contains("unknown field") {
            Some("remove the field or fix its spelling; the README lists every field".to_owned())
        } else if message.contains("unknown variant") {
            Some("use one of the values the message lists".to_owned())
        } else if message.contains("missing field") {
            Some("add the field; the README's spec reference says what it means".to_owned())
        } else {
            None
        };
        SpecError {
            file: self.file.clone(),
            line,
            message,
            hint,
        }
    }
}

fn line_at(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())]
        .bytes()
        .filter(|byte| *byte == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> SpecSource {
        SpecSource {
            file: "t.toml".into(),
            text: text.into(),
            overrides: Vec::new(),
        }
    }

    const MINIMAL: &str = r#"
name = "t"
[source]
type = "files"
path = "x.jsonl"
format = "jsonl"
[schema]
ts = "timestamp_ms"
[time]
field = "ts"
"#;

    #[test]
    fn unknown_fields_are_rejected_with_their_line() {
        let text = MINIMAL.replace("format = \"jsonl\"", "format = \"jsonl\"\nkye = \"user\"");
        let error = source(&text).parse().unwrap_err();
        assert_eq!(error.line, Some(7), "{error}");
        assert!(error.message.contains("unknown field `kye`"), "{error}");
        assert!(error.hint.is_some());
    }

    #[test]
    fn overrides_reach_nested_tables_and_arrays() {
        let text = format!("{MINIMAL}\n[[sink]]\ntype = \"jsonl\"\npath = \"a/\"\n");
        let mut spec_source = source(&text);
        spec_source.overrides = vec![
            "sink[0].path=b/".into(),
            "time.max_out_of_orderness=\"2s\"".into(),
        ];
        let spec = spec_source.parse().unwrap();
        let SinkSpec::Jsonl(sink) = &spec.sink[0] else {
            panic!("jsonl sink")
        };
        assert_eq!(sink.path, PathBuf::from("b/"));
        assert_eq!(spec.time.max_out_of_orderness, "2s");
    }
}
