//! The dataflow spec: the TOML file a user writes, as it is written.
//!
//! This module only reads and shapes the text: every field is documented
//! where it is defined, unknown fields are rejected, and errors carry the
//! file, line and a hint. [`crate::plan`] turns a spec into a checked plan
//! (fields resolved to columns, features to stages); nothing downstream
//! reads the spec directly.

mod duration;
mod joins;
mod overrides;
mod source;

pub use duration::{Window, parse_duration_ms, parse_window};
pub use joins::{InputFields, InputFormat, InputType, JoinSpec, LabelSpec, TableSpec};
pub use overrides::apply_override;
pub use source::{
    FilesSourceSpec, GeneratorSourceSpec, KafkaSourceSpec, MessageFormat, SourceSpec, TimeSpec,
    WarmUp,
};

use crate::features::Agg;
use crate::plan::{Device, Policy};
use crate::schema::ColumnType;
use indexmap::IndexMap;
use serde::Deserialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A whole dataflow spec file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The dataflow's name, used in outputs and the summary.
    pub name: Spanned<String>,
    /// Where records come from.
    pub source: Spanned<SourceSpec>,
    /// The record fields and their types, in output column order:
    /// `string`, `i64`, `f64`, `bool` or `timestamp_ms`.
    pub schema: Spanned<IndexMap<String, Spanned<ColumnType>>>,
    /// Which field is the event time, and how out of order it may be.
    pub time: Spanned<TimeSpec>,
    /// Keyed tables, versioned by event time, that joins read.
    #[serde(default)]
    pub table: Vec<TableSpec>,
    /// Table columns added to each row as of its event time.
    #[serde(default)]
    pub join: Vec<JoinSpec>,
    /// Features, computed in order; each is a window aggregate or an
    /// expression over fields, joined columns and earlier features.
    #[serde(default)]
    pub feature: Vec<FeatureSpec>,
    /// The model that scores each row, if any.
    pub model: Option<Spanned<ModelSpec>>,
    /// Labels looked up after each row's time (a training-set dataflow).
    #[serde(default)]
    pub label: Vec<LabelSpec>,
    /// How rows are grouped into batches for the model and the sinks.
    #[serde(default)]
    pub batching: BatchingSpec,
    /// Where output rows go (at least one).
    #[serde(default)]
    pub sink: Vec<Spanned<SinkSpec>>,
    /// Where dead letters go; standard error if absent.
    pub dead_letters: Option<Spanned<SinkSpec>>,
    /// How long feature state is kept.
    #[serde(default)]
    pub state: StateSpec,
    /// `[drift]`: a reference profile to measure the rows against.
    pub drift: Option<DriftSpec>,
}

/// `[state]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// Where checkpoints are kept (a local directory). With it, the run
    /// takes periodic checkpoints, starts from the newest one, and writes
    /// file sinks exactly once.
    pub dir: Option<Spanned<PathBuf>>,
    /// Wall-clock time between checkpoints (default `10s`).
    pub interval: Option<Spanned<String>>,
    /// How many complete checkpoints are kept (default 3).
    pub retain: Option<usize>,
    /// How much event time may pass without a record of a key before the
    /// key's state expires (a duration; default: never). A record that
    /// comes `key_ttl` or more after its key's newest earlier record starts
    /// the key afresh: lifetime aggregates count from it, `prev` and
    /// `since_prev` are null. Must be at least the longest window plus
    /// `max_out_of_orderness`, so that finite windows never notice.
    pub key_ttl: Option<Spanned<String>>,
}

/// One `[[feature]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Output column name.
    pub name: Spanned<String>,
    /// Grouping field of an aggregate (default: `source.key`).
    pub key: Option<Spanned<String>>,
    /// `count`, `sum`, `mean`, `min`, `max`, `std`, `distinct_count`, `prev`
    /// or `since_prev`.
    pub agg: Option<Spanned<Agg>>,
    /// The aggregated field (not for `count` and `since_prev`).
    pub field: Option<Spanned<String>>,
    /// A duration (`ms`, `s`, `m`, `h`, `d`) or `lifetime` (the default).
    pub window: Option<Spanned<String>>,
    /// An expression over fields and earlier features, instead of `agg`.
    pub expr: Option<Spanned<String>>,
}

/// `[model]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The `.onnx` file, or a registry directory `NAME/` of versions
    /// `NAME/VERSION/model.onnx`.
    pub path: PathBuf,
    /// A registry's version that scores every row (default: the versions
    /// its promotions record names, each from its event time on).
    pub version: Option<Spanned<u64>>,
    /// Name recorded in `_model` (default: the file stem).
    pub name: Option<String>,
    /// The short form of the inputs: columns (fields, joined columns or
    /// features) fed to the model, in order, as one tensor of shape
    /// `[rows, len(inputs)]` (float32 for the usual model).
    pub inputs: Option<Spanned<Vec<Spanned<String>>>>,
    /// The model input that receives that tensor (default: its only input).
    pub input_name: Option<String>,
    /// The long form: `[[model.input]]`, one per model input.
    #[serde(default)]
    pub input: Vec<Spanned<ModelInputSpec>>,
    /// Output columns: `column = "model_output"` or
    /// `column = "model_output[i]"` for column `i` of a 2-D output.
    pub outputs: Spanned<IndexMap<String, Spanned<String>>>,
    /// `auto`, `cpu`, `cuda` or `cuda:N` (default `auto`).
    #[serde(default)]
    pub device: Device,
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
    #[serde(default)]
    pub on_error: OnModelError,
    /// `[model.executor]`: who runs the model's sessions.
    #[serde(default)]
    pub executor: ExecutorSpec,
    /// `[[model.shadow]]`: challengers scoring the same rows into columns
    /// of their own.
    #[serde(default)]
    pub shadow: Vec<Spanned<ShadowSpec>>,
    /// `[model.canary]`: a fraction of keys scored by another version.
    pub canary: Option<Spanned<CanarySpec>>,
}

/// `[drift]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftSpec {
    /// The profile `tideflow profile` wrote.
    pub reference: PathBuf,
}

/// `[[model.shadow]]`: a challenger.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// A version of the model's registry.
    pub version: Option<u64>,
    /// Or a model file.
    pub path: Option<PathBuf>,
    /// Appended to each output column's name for the challenger's
    /// (default `_v{version}`, or `_shadow` for a file).
    pub suffix: Option<String>,
}

/// `[model.canary]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// The registry version that scores the canary keys.
    pub version: u64,
    /// The fraction of keys, 0 to 1, by a stable hash of the key.
    pub fraction: f64,
    /// The key field (default: the source's key).
    pub key: Option<String>,
}

/// `[model.executor]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSpec {
    /// `auto` (the default: shared on a GPU, per worker on the CPU),
    /// `per_worker` or `shared`.
    #[serde(default)]
    pub mode: ExecutorMode,
    /// A shared executor scores at most this many rows together (whole
    /// batches: one larger batch is scored alone). Default 16384.
    pub max_rows: Option<Spanned<usize>>,
    /// How long a shared executor waits for other workers' batches after
    /// the first arrives. Default `2ms`.
    pub max_delay: Option<Spanned<String>>,
}

/// Who runs a model's sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorMode {
    /// Shared on a GPU, per worker on the CPU.
    #[default]
    Auto,
    /// A session per worker, scoring that worker's batches.
    PerWorker,
    /// One session per process, scoring the batches of all its workers
    /// together.
    Shared,
}

/// `[[model.input]]`: one model input and the columns that feed it, or
/// the text column tokenized into it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInputSpec {
    /// The model input's name.
    pub name: String,
    /// Columns fed to it, in order: the tensor is `[rows, len(columns)]`,
    /// or for a fixed 3-D input `[rows, a, b]` the `a * b` columns in row
    /// order. Its element type is the model's: float32, float64, int64,
    /// int32, bool or string.
    pub columns: Option<Spanned<Vec<Spanned<String>>>>,
    /// Instead of columns: a string column tokenized into this input's
    /// token ids (int64 or int32 `[rows, max_len]`).
    pub text: Option<Spanned<String>>,
    /// The `tokenizer.json` that tokenizes `text`.
    pub tokenizer: Option<PathBuf>,
    /// Tokens per row: longer texts are truncated, shorter ones padded
    /// (default: the model input's fixed width).
    pub max_len: Option<usize>,
    /// The model input that takes the attention mask (1 for a token, 0
    /// for padding), if the model has one.
    pub mask: Option<String>,
    /// The model input that takes the token type ids, if the model has one.
    pub type_ids: Option<String>,
}

/// What a batch the model fails on becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnModelError {
    /// Its rows go to the dead letters with the reason.
    #[default]
    DeadLetter,
    /// The run stops with the error.
    Stop,
}

/// `[batching]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingSpec {
    /// `micro`, `bulk` or `adaptive` (bulk while a source is behind, micro
    /// once caught up). Default `adaptive`.
    #[serde(default = "adaptive_policy")]
    pub policy: Policy,
    /// Micro-batches: flushed at `max_rows` or after `max_delay`
    /// (defaults 256 rows, `5ms`).
    #[serde(default)]
    pub micro: BatchLimitsSpec,
    /// Bulk batches: flushed at `max_rows` or after `max_delay` (default
    /// `1s`; `max_rows` unset: tuned between 512 and 16384 rows).
    #[serde(default)]
    pub bulk: BatchLimitsSpec,
}

impl Default for BatchingSpec {
    fn default() -> Self {
        BatchingSpec {
            policy: adaptive_policy(),
            micro: BatchLimitsSpec::default(),
            bulk: BatchLimitsSpec::default(),
        }
    }
}

fn adaptive_policy() -> Policy {
    Policy::Adaptive
}

/// Limits of one batching policy; what is not given takes the policy's
/// default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLimitsSpec {
    /// A batch is flushed when it holds this many rows.
    pub max_rows: Option<Spanned<usize>>,
    /// A batch is flushed when its oldest row has waited this long.
    pub max_delay: Option<Spanned<String>>,
}

/// One `[[sink]]` or the `[dead_letters]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkSpec {
    /// JSON lines, one file per worker, in directory `path`.
    Jsonl(PathSinkSpec),
    /// Parquet, one file per worker, in directory `path`.
    Parquet(ParquetSinkSpec),
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

/// `type = "parquet"`: a directory, and how its files' pages are
/// compressed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkSpec {
    /// The output directory (created if missing).
    pub path: PathBuf,
    /// `none`, `snappy`, `zstd` or `zstd(LEVEL)` (default: `none`).
    pub compression: Option<String>,
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
/// after parsing can point at a line.
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

    /// An error about the part of the spec at `span` (a byte range of the
    /// parsed text, from a [`Spanned`] value): it names the span's line,
    /// unless overrides rewrote the text, whose lines then say nothing.
    pub fn error_at(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> SpecError {
        SpecError {
            file: self.file.clone(),
            line: self
                .overrides
                .is_empty()
                .then(|| line_at(&self.text, span.start)),
            message: self.after_overrides(message.into()),
            hint: Some(hint.into()),
        }
    }

    /// An error about the spec as a whole.
    pub fn error(&self, message: impl Into<String>, hint: impl Into<String>) -> SpecError {
        SpecError {
            file: self.file.clone(),
            line: None,
            message: self.after_overrides(message.into()),
            hint: Some(hint.into()),
        }
    }

    fn after_overrides(&self, message: String) -> String {
        if self.overrides.is_empty() {
            message
        } else {
            format!("after --set {}: {message}", self.overrides.join(" --set "))
        }
    }

    /// Parses the text, applies the overrides, and deserializes the spec.
    ///
    /// With overrides, the overridden table is written back as TOML and
    /// parsed again, so that the spec keeps its spans either way (the
    /// lines of that text are not the file's, and are not reported).
    pub fn parse(&self) -> Result<Spec, SpecError> {
        if self.overrides.is_empty() {
            return toml::from_str(&self.text).map_err(|error| self.toml_error(&error));
        }
        let mut table: toml::Table =
            toml::from_str(&self.text).map_err(|error| self.toml_error(&error))?;
        for assignment in &self.overrides {
            apply_override(&mut table, assignment).map_err(|message| SpecError {
                file: self.file.clone(),
                line: None,
                message: format!("--set {assignment}: {message}"),
                hint: Some("write --set KEY=VALUE with a dotted key, array items by index: sink[0].path=out/".into()),
            })?;
        }
        let text = toml::to_string(&table).map_err(|error| {
            self.error(
                format!("the overridden spec cannot be written back as TOML: {error}"),
                "check the --set values",
            )
        })?;
        let overridden = SpecSource {
            text,
            ..self.clone()
        };
        toml::from_str(&overridden.text).map_err(|error| overridden.toml_error(&error))
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
            line: line.filter(|_| self.overrides.is_empty()),
            message: self.after_overrides(message),
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
        let SinkSpec::Jsonl(sink) = spec.sink[0].get_ref() else {
            panic!("jsonl sink")
        };
        assert_eq!(sink.path, PathBuf::from("b/"));
        let bound = spec.time.get_ref().max_out_of_orderness.as_ref();
        assert_eq!(bound.map(|bound| bound.get_ref().as_str()), Some("2s"));
    }
}
