//! The checked plan of a dataflow: the spec with every name resolved to a
//! column slot, features grouped into stages, and every value validated.
//!
//! This is the second step of configuration (the spec is the first): the
//! engine reads only the plan, so a mistake in a spec is reported here,
//! with its line, before any record is read.

//!
//! Each part of the spec has its builder, a function from its section to
//! its part of the plan, adding the columns it defines in slot order:
//! [`source`] (fields, time, reader), [`joins`] (tables, joined columns,
//! labels), [`features`], [`model`], [`batching`], [`sinks`] and
//! [`state`].

mod batching;
mod columns;
mod features;
mod joins;
mod model;
mod sinks;
mod source;
mod state;

pub use features::Expressions;
pub use joins::{InputPlan, JoinPlan, LABEL_COMPLETE, LabelPlan, TablePlan};
pub use model::CANARY_BUCKETS;
pub use sinks::{ParquetCompression, SinkPlan};

use crate::features::StagePlan;
use crate::row::Origins;
use crate::schema::Column;
use crate::spec::{SourceSpec, Spec, SpecError, SpecSource};
use columns::Columns;
use std::path::PathBuf;
use std::time::Duration;
use tideflow_connectors::files::FileFormat;
use tideflow_connectors::generator::GeneratorConfig;
use tideflow_connectors::kafka::{KafkaSourceConfig, TopicPartitions};

/// Column names the engine adds to output rows.
pub const RESERVED_COLUMNS: [&str; 5] =
    ["_topic", "_partition", "_offset", "_model", LABEL_COMPLETE];

/// The field filled from a Kafka message's key (a string).
pub const KAFKA_KEY: &str = "kafka_key";

/// The field filled from a Kafka message's timestamp (epoch ms).
pub const KAFKA_TIMESTAMP: &str = "kafka_timestamp";

/// A checked dataflow.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The dataflow's name.
    pub name: String,
    /// Where records come from.
    pub source: SourcePlan,
    /// Every output column in slot order: fields, features, model outputs.
    pub columns: Vec<Column>,
    /// How many of the columns are schema fields (then come the joined
    /// columns).
    pub field_count: usize,
    /// Slot of the event-time field.
    pub time_slot: usize,
    /// Slots that must be present for a record to be processed (the event
    /// time and every key).
    pub required_slots: Vec<usize>,
    /// Fields filled from the transport's record metadata, not its body.
    pub metadata_slots: MetadataSlots,
    /// The slot of `source.key`, if declared.
    pub source_key_slot: Option<usize>,
    /// The out-of-orderness bound, ms.
    pub bound_ms: i64,
    /// How far ahead of the slowest partition's watermark a partition is
    /// read, ms.
    pub skew_ms: i64,
    /// Rows held for the watermark per worker before partitions are read
    /// in step by `skew_ms`.
    pub buffered_rows: u64,
    /// Window-feature stages; the source-keyed stage (if any) first.
    pub stages: Vec<StagePlan>,
    /// Expression features in spec order: (slot, expression).
    pub expressions: Expressions,
    /// Keyed tables, each read as a source of its own.
    pub tables: Vec<TablePlan>,
    /// As-of joins, in spec order: their columns follow the fields.
    pub joins: Vec<JoinPlan>,
    /// Labels: their columns come last, then [`LABEL_COMPLETE`].
    pub labels: Vec<LabelPlan>,
    /// The slot of [`LABEL_COMPLETE`], where there are labels.
    pub label_complete_slot: Option<usize>,
    /// The model, if any.
    pub model: Option<ModelPlan>,
    /// The reference profile the rows' drift is measured against.
    pub drift_reference: Option<PathBuf>,
    /// Batching policy.
    pub batching: BatchingPlan,
    /// Output sinks.
    pub sinks: Vec<SinkPlan>,
    /// Where dead letters go.
    pub dead_letters: SinkPlan,
    /// Where and how often checkpoints are taken; `None`: never.
    pub checkpoints: Option<CheckpointPlan>,
}

impl Plan {
    /// Whether records can be late: only when some feature aggregates
    /// over a window or rows are joined or labelled, since otherwise no
    /// result depends on arrival order.
    pub fn tracks_lateness(&self) -> bool {
        !self.stages.is_empty() || !self.joins.is_empty() || !self.labels.is_empty()
    }

    /// Whether rows wait for the watermark (some stage is not source-keyed).
    pub fn has_watermark_stages(&self) -> bool {
        self.stages.iter().any(|stage| !stage.source_keyed)
    }

    /// The slot of the entity key: the source's key, else the first
    /// feature stage's key.
    pub fn entity_key_slot(&self) -> Option<usize> {
        self.source_key_slot
            .or_else(|| self.stages.first().map(|stage| stage.key_slot))
    }

    /// The type of every output column, in slot order.
    pub fn column_types(&self) -> Vec<crate::schema::ColumnType> {
        self.columns.iter().map(|column| column.ty).collect()
    }

    /// The names of the schema fields, in order.
    pub fn field_names(&self) -> Vec<String> {
        self.columns[..self.field_count]
            .iter()
            .map(|column| column.name.clone())
            .collect()
    }

    /// Asks the source what the spec cannot say: how many partitions each
    /// of a Kafka source's topics has. Done once, before the workers start,
    /// so that they all number the partitions alike.
    pub fn resolve_source(&mut self) -> crate::Result<()> {
        if let SourcePlan::Kafka(kafka) = &mut self.source
            && kafka.partitions.is_none()
        {
            let partitions = TopicPartitions::discover(&kafka.config)?;
            kafka.partitions = Some(std::sync::Arc::new(partitions));
        }
        Ok(())
    }

    /// How outputs name the origin of a row.
    pub fn origins(&self) -> Origins {
        match &self.source {
            SourcePlan::Kafka(KafkaPlan {
                partitions: Some(partitions),
                ..
            }) => Origins::over_topics(partitions.clone()),
            _ => Origins::by_index(),
        }
    }
}

/// Slots of fields that come from a Kafka message's metadata.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetadataSlots {
    /// `kafka_key`: the message key as a string.
    pub key: Option<usize>,
    /// `kafka_timestamp`: the message timestamp, epoch ms.
    pub timestamp: Option<usize>,
}

/// A Kafka source, resolved.
#[derive(Clone, Debug)]
pub struct KafkaPlan {
    /// The client side: brokers, topic, group, options, start and end.
    pub config: KafkaSourceConfig,
    /// A caught-up partition quiet for this long no longer holds back the
    /// watermark.
    pub idle_timeout: Duration,
    /// How often durable progress is committed.
    pub commit_interval: Duration,
    /// The topics' partitions, asked of the brokers when a run starts
    /// (see [`Plan::resolve_source`]).
    pub partitions: Option<std::sync::Arc<TopicPartitions>>,
}

/// The source, resolved.
#[derive(Clone, Debug)]
pub enum SourcePlan {
    /// File partitions.
    Files {
        /// The spec's path (a file or a directory).
        path: PathBuf,
        /// The format.
        format: FileFormat,
        /// Longest accepted record.
        max_record_bytes: usize,
    },
    /// The generator.
    Generator(GeneratorConfig),
    /// A Kafka topic.
    Kafka(KafkaPlan),
}

/// The model stage, resolved.
#[derive(Clone, Debug)]
pub struct ModelPlan {
    /// The `.onnx` file (for a registry: of the version pinned, else of
    /// its newest).
    pub path: PathBuf,
    /// The registry the model comes from, if any.
    pub registry: Option<RegistryPlan>,
    /// Name recorded in `_model`.
    pub name: String,
    /// The model inputs and the columns that feed each.
    pub inputs: Vec<ModelInputPlan>,
    /// Output columns.
    pub outputs: Vec<OutputPlan>,
    /// Where the model runs.
    pub device: Device,
    /// Stand-in for null inputs.
    pub fill_null: f32,
    /// How many rows each ONNX Runtime run takes.
    pub run_rows: RunRows,
    /// Who runs the sessions.
    pub executor: ExecutorPlan,
    /// Challengers scoring the same rows into columns of their own.
    pub shadows: Vec<ShadowPlan>,
    /// A fraction of keys scored by another version.
    pub canary: Option<CanaryPlan>,
    /// Whether a batch the model fails on stops the run (else its rows
    /// become dead letters).
    pub stop_on_error: bool,
}

/// A model from a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryPlan {
    /// The registry directory.
    pub dir: PathBuf,
    /// The version the spec pins, which scores every row.
    pub pinned: Option<u64>,
    /// The `_model` column, which names the version that scored each row.
    pub model_slot: usize,
}

/// A challenger, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowPlan {
    /// How it is named in metrics: `v3`, or the file's stem.
    pub label: String,
    /// Its file.
    pub path: PathBuf,
    /// The champion's outputs, each into the challenger's own column.
    pub outputs: Vec<OutputPlan>,
}

/// The canary, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryPlan {
    /// The registry version scoring the canary keys.
    pub version: u64,
    /// Of 10,000 buckets of keys' stable hashes, the first this many.
    pub buckets: u64,
    /// The key.
    pub key_slot: usize,
}

/// `[model.executor]`, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecutorPlan {
    /// As the spec asks.
    pub mode: crate::spec::ExecutorMode,
    /// Rows a shared executor scores together at most.
    pub max_rows: usize,
    /// How long a shared executor waits for more batches.
    pub max_delay: Duration,
}

impl ExecutorPlan {
    /// Whether one executor per process runs the model on `device`.
    pub fn is_shared(&self, device: &str) -> bool {
        match self.mode {
            crate::spec::ExecutorMode::Auto => device.starts_with("cuda"),
            crate::spec::ExecutorMode::PerWorker => false,
            crate::spec::ExecutorMode::Shared => true,
        }
    }
}

/// One model input, resolved.
#[derive(Clone, Debug)]
pub struct ModelInputPlan {
    /// The model input fed, or `None` for the model's only input.
    pub name: Option<String>,
    /// The columns fed, in order.
    pub columns: Vec<Column>,
    /// Their slots.
    pub slots: Vec<usize>,
    /// For a text input (its one column a string column): how it is
    /// tokenized.
    pub tokens: Option<TokensPlan>,
}

/// How a text column becomes token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokensPlan {
    /// The `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Tokens per row, if the spec sets it (else the model's width).
    pub max_len: Option<usize>,
    /// The model input fed the attention mask.
    pub mask: Option<String>,
    /// The model input fed the token type ids.
    pub type_ids: Option<String>,
}

/// The default run size on a GPU: large enough that a bulk batch is not
/// slowed by the fixed cost of each run (on an H100 with the example MLP,
/// 4 workers scored 720,977 rows/s in runs of 4096 and 485,823 in runs of
/// 256, against 723,107 with one run per batch), small enough that padding
/// a micro-batch up to it adds well under a millisecond for such a model.
pub const GPU_RUN_ROWS: usize = 4096;

/// `[state]`: checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointPlan {
    /// Where checkpoints go: a local directory, or `s3://bucket/prefix`.
    pub dir: PathBuf,
    /// Wall-clock time between checkpoints.
    pub interval: std::time::Duration,
    /// Complete checkpoints kept.
    pub retain: usize,
}

/// How many rows each ONNX Runtime run takes. GPU kernels are chosen by
/// the number of rows, so a row scored in batches of different sizes may
/// get different low-order bits; runs of one fixed size (the last padded)
/// make its scores independent of the batching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunRows {
    /// One run per batch, whatever its size.
    PerBatch,
    /// Runs of exactly this many rows.
    Fixed(usize),
    /// `Fixed` on a GPU, `PerBatch` on the CPU (whose kernels compute
    /// each row alike at any batch size, which the engine checks).
    FixedOnGpu(usize),
}

impl RunRows {
    /// The fixed run size on a device, if any.
    pub fn fixed(self, on_gpu: bool) -> Option<usize> {
        match self {
            RunRows::PerBatch => None,
            RunRows::Fixed(rows) => Some(rows),
            RunRows::FixedOnGpu(rows) => on_gpu.then_some(rows),
        }
    }
}

/// One model output column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputPlan {
    /// Output column name.
    pub column: String,
    /// Slot written.
    pub slot: usize,
    /// The model output read.
    pub output: String,
    /// Column of a 2-D output, if selected.
    pub index: Option<usize>,
}

/// Where inference runs: `auto`, `cpu`, `cuda` or `cuda:N` in specs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Device {
    #[default]
    /// CUDA when the runtime and a GPU offer it, else CPU.
    Auto,
    /// CPU only.
    Cpu,
    /// The CUDA device with this index (an error if unavailable).
    Cuda(i32),
}

impl Device {
    /// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(Device::Auto),
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(0)),
            other => other.strip_prefix("cuda:")?.parse().ok().map(Device::Cuda),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Device::parse(&text)
            .ok_or_else(|| format!("unknown device '{text}': use auto, cpu, cuda or cuda:N"))
    }
}

/// Which batching limits apply: `micro`, `bulk` or `adaptive` in specs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Small batches, short deadline: low latency.
    Micro,
    /// Large batches: throughput.
    Bulk,
    /// Bulk while a source is behind, micro once caught up.
    Adaptive,
}

/// Limits of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Flush at this many rows.
    pub max_rows: usize,
    /// Flush when the oldest row has waited this long.
    pub max_delay: Duration,
}

/// The batching policy and both sets of limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchingPlan {
    /// The policy.
    pub policy: Policy,
    /// Micro-batch limits.
    pub micro: BatchLimits,
    /// Bulk limits.
    pub bulk: BatchLimits,
    /// Whether the bulk batch size is tuned as the run goes (the spec left
    /// `bulk.max_rows` unset); `bulk.max_rows` is then the largest size.
    pub tuned_bulk: bool,
}

impl Plan {
    /// The columns whose drift is measured, `(name, slot)`: the numeric
    /// columns the rows gain before they are scored and the model's
    /// outputs (joined columns, features, expressions, outputs, shadows'
    /// outputs), not schema fields, lists, labels or `_model`.
    pub fn drift_columns(&self) -> Vec<(String, usize)> {
        let labels: Vec<usize> =
            self.labels
                .iter()
                .map(|label| label.slot)
                .chain(self.label_complete_slot)
                .chain(self.model.iter().filter_map(|model| {
                    model.registry.as_ref().map(|registry| registry.model_slot)
                }))
                .collect();
        self.columns
            .iter()
            .enumerate()
            .skip(self.field_count)
            .filter(|(slot, column)| column.ty.is_numeric() && !labels.contains(slot))
            .map(|(slot, column)| (column.name.clone(), slot))
            .collect()
    }
}

/// Reads, parses and checks a spec file with `--set` overrides.
pub fn load(file: &std::path::Path, overrides: &[String]) -> Result<Plan, SpecError> {
    let mut source = SpecSource::read(file)?;
    source.overrides = overrides.to_vec();
    let spec = source.parse()?;
    Plan::from_spec(&spec, &source)
}

impl Plan {
    /// Checks a parsed spec and resolves it into a plan, part by part in
    /// the order of the columns each part adds.
    pub fn from_spec(spec: &Spec, text: &SpecSource) -> Result<Plan, SpecError> {
        let mut columns = Columns::default();
        source::schema(text, &spec.schema, &mut columns)?;
        let metadata_slots = match spec.source.get_ref() {
            SourceSpec::Kafka(kafka) => source::kafka_metadata_fields(
                &mut columns,
                (
                    kafka.key.as_deref() == Some(KAFKA_KEY),
                    spec.time.get_ref().field.get_ref() == KAFKA_TIMESTAMP,
                ),
            ),
            _ => MetadataSlots::default(),
        };
        let field_count = columns.len();
        let time = source::event_time(text, &spec.time, &columns)?;
        let source = source::source(text, &spec.source, (&columns, spec.name.get_ref()))?;
        let tables = joins::tables(text, &spec.table, &source)?;
        let joins = joins::joins(text, &spec.join, &tables, &mut columns)?;
        let inputs = features::FeatureInputs {
            source_key: spec.source.get_ref().key(),
            fields: field_count,
            readable: columns.len(),
        };
        let (mut stages, expressions) =
            features::features(text, &spec.feature, &mut columns, inputs)?;
        let key_ttl = spec.state.key_ttl.as_ref();
        features::key_ttl(text, key_ttl, &mut stages, time.bound_ms)?;
        let source_key = spec.source.get_ref().key();
        let mut model = model::model(text, spec.model.as_ref(), &mut columns, source_key)?;
        let (labels, label_complete_slot) =
            joins::labels(text, &spec.label, &source, &mut columns)?;
        // A registry's rows name their version in a column of their own,
        // last (a single file's `_model` is the same for every row).
        if let Some(registry) = model.as_mut().and_then(|model| model.registry.as_mut()) {
            registry.model_slot = columns.push("_model", crate::schema::ColumnType::Str);
        }
        let (sinks, dead_letters) = sinks::sinks(text, spec, &source)?;
        let checkpoints = state::checkpoints(text, &spec.state)?;
        let source_key_slot = inputs.source_key.and_then(|key| columns.slot_of(key));
        let mut required_slots = vec![time.slot];
        for stage in &stages {
            if !required_slots.contains(&stage.key_slot) {
                required_slots.push(stage.key_slot);
            }
        }
        Ok(Plan {
            name: spec.name.get_ref().clone(),
            source,
            columns: columns.into_vec(),
            field_count,
            time_slot: time.slot,
            required_slots,
            metadata_slots,
            source_key_slot,
            bound_ms: time.bound_ms,
            skew_ms: time.skew_ms,
            buffered_rows: time.buffered_rows,
            stages,
            expressions,
            tables,
            joins,
            labels,
            label_complete_slot,
            model,
            drift_reference: spec.drift.as_ref().map(|drift| drift.reference.clone()),
            batching: batching::batching(text, &spec.batching)?,
            sinks,
            dead_letters,
            checkpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan of a spec with a generator source, two features and a
    /// null sink, and `tables` after them.
    fn plan_with_tables(tables: &str) -> Result<Plan, SpecError> {
        let text = format!(
            r#"
name = "t"
[source]
type = "generator"
key = "user_id"
[schema]
user_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
max_out_of_orderness = "5s"
[[feature]]
name = "amount_sum_1h"
agg = "sum"
field = "amount"
window = "1h"
[[feature]]
name = "gap"
agg = "since_prev"
[[sink]]
type = "null"
{tables}
"#
        );
        let source = SpecSource {
            file: "t.toml".into(),
            text,
            overrides: Vec::new(),
        };
        Plan::from_spec(&source.parse()?, &source)
    }

    /// Rows make room for the features they carry into a stage keyed
    /// across partitions (the fraud spec's merchant stage: the user
    /// features), and no more; with no such stage, for their fields.
    #[test]
    fn key_ttl_reaches_every_stage() {
        let plan = plan_with_tables("[state]\nkey_ttl = \"30d\"").unwrap();
        assert_eq!(plan.stages[0].key_ttl_ms, Some(30 * 24 * 3_600_000));
        assert_eq!(plan_with_tables("").unwrap().stages[0].key_ttl_ms, None);
    }

    #[test]
    fn a_key_ttl_shorter_than_a_window_and_the_bound_is_refused() {
        // 1h + 5s is the least a key must be kept for the 1h sum to stay
        // exact.
        assert!(plan_with_tables("[state]\nkey_ttl = \"3605s\"").is_ok());
        let error = plan_with_tables("[state]\nkey_ttl = \"1h\"").unwrap_err();
        assert!(error.message.contains("keyed by 'user_id'"), "{error}");
        assert!(error.hint.unwrap().contains("3605000 ms"));
    }

    #[test]
    fn checkpoints_go_to_a_directory_or_s3_and_no_other_url() {
        let plan = plan_with_tables("[state]\ndir = \"s3://bucket/runs\"").unwrap();
        assert_eq!(
            plan.checkpoints.unwrap().dir,
            PathBuf::from("s3://bucket/runs")
        );
        let error = plan_with_tables("[state]\ndir = \"gs://bucket/runs\"").unwrap_err();
        assert!(error.message.contains("cannot write to"), "{error}");
        assert!(error.hint.unwrap().contains("s3://BUCKET/PREFIX"));
    }

    /// The compression of a second sink, Parquet, with `setting`.
    fn parquet_compression(setting: &str) -> Result<ParquetCompression, SpecError> {
        let plan = plan_with_tables(&format!(
            "[[sink]]\ntype = \"parquet\"\npath = \"out/\"\n{setting}"
        ))?;
        match &plan.sinks[1] {
            SinkPlan::Parquet { compression, .. } => Ok(*compression),
            other => panic!("a Parquet sink planned as {other:?}"),
        }
    }

    #[test]
    fn parquet_sinks_take_the_codecs_every_reader_takes() {
        assert_eq!(parquet_compression(""), Ok(ParquetCompression::None));
        for (setting, expected) in [
            ("none", ParquetCompression::None),
            ("snappy", ParquetCompression::Snappy),
            ("ZSTD", ParquetCompression::Zstd(1)),
            ("zstd(9)", ParquetCompression::Zstd(9)),
            ("zstd(-5)", ParquetCompression::Zstd(-5)),
        ] {
            let compression = parquet_compression(&format!("compression = \"{setting}\""));
            assert_eq!(compression, Ok(expected), "{setting}");
        }
        for (setting, complaint) in [
            ("gzip", "unknown Parquet compression 'gzip'"),
            ("zstd(23)", "from -131072 to 22, not '23'"),
            ("zstd(fast)", "not 'fast'"),
        ] {
            let error = parquet_compression(&format!("compression = \"{setting}\"")).unwrap_err();
            assert!(error.message.contains(complaint), "{setting}: {error}");
            assert!(error.hint.unwrap().contains("zstd(LEVEL)"), "{setting}");
            assert_eq!(error.line, Some(23), "{setting}: the [[sink]] line");
        }
    }

    #[test]
    fn dead_letters_take_no_parquet_compression() {
        let error = plan_with_tables(
            "[dead_letters]\ntype = \"parquet\"\npath = \"dead/\"\ncompression = \"zstd\"",
        )
        .unwrap_err();
        assert!(error.message.contains("written as JSON lines"), "{error}");
        assert!(plan_with_tables("[dead_letters]\ntype = \"parquet\"\npath = \"dead/\"").is_ok());
    }
}
