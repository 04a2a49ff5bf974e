//! The checked plan of a dataflow: the spec with every name resolved to a
//! column slot, features grouped into stages, and every value validated.
//!
//! This is the second step of configuration (the spec is the first): the
//! engine reads only the plan, so a mistake in a spec is reported here,
//! with its line, before any record is read.

use crate::features::expr::Expr;
use crate::features::{Agg, StagePlan, WindowFeature};
use crate::row::Origins;
use crate::schema::{Column, ColumnType};
use crate::spec::{self, SinkSpec, SourceSpec, Spec, SpecError, SpecSource, Window};
use std::path::PathBuf;
use std::time::Duration;
use tideflow_connectors::files::FileFormat;
use tideflow_connectors::generator::{GENERATOR_FIELDS, GeneratorConfig};
use tideflow_connectors::kafka::{
    ClientOptions, KafkaSourceConfig, StartPosition, TopicPartitions,
};

/// Column names the engine adds to every output row.
pub const RESERVED_COLUMNS: [&str; 4] = ["_topic", "_partition", "_offset", "_model"];

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
    /// How many of the columns are schema fields.
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
    /// Window-feature stages; the source-keyed stage (if any) first.
    pub stages: Vec<StagePlan>,
    /// Expression features in spec order: (slot, expression).
    pub expressions: Vec<(usize, Expr)>,
    /// The model, if any.
    pub model: Option<ModelPlan>,
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
    /// over a window, since otherwise no result depends on arrival order.
    pub fn tracks_lateness(&self) -> bool {
        !self.stages.is_empty()
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
    /// The `.onnx` file.
    pub path: PathBuf,
    /// Name recorded in `_model`.
    pub name: String,
    /// Slots fed to the model, in order.
    pub input_slots: Vec<usize>,
    /// Names of those columns (for messages).
    pub input_columns: Vec<String>,
    /// The model input receiving the tensor, if named in the spec.
    pub input_name: Option<String>,
    /// Output columns.
    pub outputs: Vec<OutputPlan>,
    /// Where the model runs.
    pub device: Device,
    /// Stand-in for null inputs.
    pub fill_null: f32,
    /// How many rows each ONNX Runtime run takes.
    pub run_rows: RunRows,
    /// Whether a batch the model fails on stops the run (else its rows
    /// become dead letters).
    pub stop_on_error: bool,
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

/// Where inference runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
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

/// Which batching limits apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

/// A sink, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkPlan {
    /// JSONL files in a directory.
    Jsonl(PathBuf),
    /// Parquet files in a directory.
    Parquet(PathBuf),
    /// JSONL on standard output.
    Stdout,
    /// JSONL on standard error.
    Stderr,
    /// Count and drop.
    Null,
    /// JSON messages to a Kafka topic.
    Kafka {
        /// `bootstrap.servers`.
        brokers: String,
        /// The topic.
        topic: String,
        /// Producer options (secrets redacted in `Debug`).
        options: ClientOptions,
    },
}

/// Prefixes of librdkafka options that only consumers take.
const CONSUMER_ONLY_OPTIONS: &[&str] = &[
    "fetch.",
    "group.",
    "auto.",
    "enable.auto.",
    "enable.partition.eof",
    "isolation.level",
    "max.poll.",
    "session.timeout.",
    "heartbeat.",
    "partition.assignment.",
    "queued.",
    "check.crcs",
];

impl SinkPlan {
    fn from_spec(sink: &SinkSpec, source: &SourcePlan) -> Result<Self, String> {
        Ok(match sink {
            SinkSpec::Jsonl(path) => SinkPlan::Jsonl(path.path.clone()),
            SinkSpec::Parquet(path) => SinkPlan::Parquet(path.path.clone()),
            SinkSpec::Stdout(_) => SinkPlan::Stdout,
            SinkSpec::Stderr(_) => SinkPlan::Stderr,
            SinkSpec::Null(_) => SinkPlan::Null,
            SinkSpec::Kafka(kafka) => {
                let source = match source {
                    SourcePlan::Kafka(plan) => Some(&plan.config),
                    _ => None,
                };
                let brokers = match (&kafka.brokers, source) {
                    (Some(brokers), _) => brokers.clone(),
                    (None, Some(source)) => source.brokers.clone(),
                    (None, None) => {
                        return Err(format!(
                            "the kafka sink to {} needs brokers (the source is not Kafka)",
                            kafka.topic
                        ));
                    }
                };
                // The sink inherits the source's connection and security
                // options, not its consumer settings (librdkafka warns about
                // those on a producer).
                let mut options = ClientOptions::default();
                for (key, value) in source.iter().flat_map(|source| source.options.pairs()) {
                    if !CONSUMER_ONLY_OPTIONS
                        .iter()
                        .any(|prefix| key.starts_with(prefix))
                    {
                        options.set(key, value);
                    }
                }
                for (key, value) in client_options(&kafka.options)?.pairs() {
                    options.set(key, value);
                }
                SinkPlan::Kafka {
                    brokers,
                    topic: kafka.topic.clone(),
                    options,
                }
            }
        })
    }

    /// A short description for messages and the summary.
    pub fn describe(&self) -> String {
        match self {
            SinkPlan::Jsonl(path) => format!("jsonl {}", path.display()),
            SinkPlan::Parquet(path) => format!("parquet {}", path.display()),
            SinkPlan::Stdout => "stdout".into(),
            SinkPlan::Stderr => "stderr".into(),
            SinkPlan::Null => "null".into(),
            SinkPlan::Kafka { brokers, topic, .. } => format!("kafka {topic} at {brokers}"),
        }
    }
}

/// librdkafka options from a spec table: strings, numbers and booleans, as
/// text.
fn client_options(
    table: &indexmap::IndexMap<String, toml::Value>,
) -> Result<ClientOptions, String> {
    let mut options = ClientOptions::default();
    for (key, value) in table {
        let text = match value {
            toml::Value::String(text) => text.clone(),
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Float(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            _ => {
                return Err(format!(
                    "option '{key}' must be a string, number or boolean"
                ));
            }
        };
        options.set(key.clone(), text);
    }
    Ok(options)
}

/// Expression features in spec order: (slot, expression).
type Expressions = Vec<(usize, Expr)>;

/// Reads, parses and checks a spec file with `--set` overrides.
pub fn load(file: &std::path::Path, overrides: &[String]) -> Result<Plan, SpecError> {
    let mut source = SpecSource::read(file)?;
    source.overrides = overrides.to_vec();
    let spec = source.parse()?;
    Plan::from_spec(&spec, &source)
}

impl Plan {
    /// Checks a parsed spec and resolves it into a plan.
    pub fn from_spec(spec: &Spec, text: &SpecSource) -> Result<Plan, SpecError> {
        Builder {
            spec,
            text,
            columns: Vec::new(),
            field_count: 0,
        }
        .build()
    }
}

struct Builder<'a> {
    spec: &'a Spec,
    text: &'a SpecSource,
    columns: Vec<Column>,
    /// Schema fields (and metadata fields) come first among the columns.
    field_count: usize,
}

impl Builder<'_> {
    fn fail<T>(
        &self,
        needle: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Result<T, SpecError> {
        Err(self.text.error(Some(needle), message, Some(hint.into())))
    }

    fn slot_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|column| column.name == name)
    }

    fn build(mut self) -> Result<Plan, SpecError> {
        self.schema()?;
        self.kafka_metadata_fields();
        let field_count = self.columns.len();
        self.field_count = field_count;
        let (time_slot, bound_ms, skew_ms) = self.time()?;
        let source = self.source()?;
        let (mut stages, expressions) = self.features()?;
        self.key_ttl(&mut stages, bound_ms)?;
        let checkpoints = self.checkpoints()?;
        let model = self.model()?;
        let batching = self.batching()?;
        if self.spec.sink.is_empty() {
            return self.fail(
                "name",
                "the dataflow has no [[sink]]",
                "add [[sink]] type = \"jsonl\" path = \"out/\" (or stdout, parquet)",
            );
        }
        let sinks = self
            .spec
            .sink
            .iter()
            .map(|sink| self.sink(sink, &source))
            .collect::<Result<Vec<_>, _>>()?;
        let dead_letters = match &self.spec.dead_letters {
            Some(sink) => self.sink(sink, &source)?,
            None => SinkPlan::Stderr,
        };
        let metadata_slots = match source {
            SourcePlan::Kafka(_) => MetadataSlots {
                key: self.slot_of(KAFKA_KEY).filter(|slot| *slot < field_count),
                timestamp: self
                    .slot_of(KAFKA_TIMESTAMP)
                    .filter(|slot| *slot < field_count),
            },
            _ => MetadataSlots::default(),
        };
        let source_key_slot = self.spec.source.key().and_then(|key| self.slot_of(key));
        let mut required_slots = vec![time_slot];
        required_slots.extend(stages.iter().map(|stage| stage.key_slot));
        required_slots.dedup();
        Ok(Plan {
            name: self.spec.name.clone(),
            source,
            columns: self.columns,
            field_count,
            time_slot,
            required_slots,
            bound_ms,
            skew_ms,
            stages,
            expressions,
            model,
            batching,
            sinks,
            dead_letters,
            metadata_slots,
            source_key_slot,
            checkpoints,
        })
    }

    fn schema(&mut self) -> Result<(), SpecError> {
        if self.spec.schema.is_empty() {
            return self.fail(
                "[schema]",
                "the schema is empty",
                "list each field as name = \"type\" under [schema]",
            );
        }
        for (name, type_name) in &self.spec.schema {
            let Some(ty) = ColumnType::parse(type_name) else {
                return self.fail(
                    type_name,
                    format!("field '{name}' has unknown type '{type_name}'"),
                    "use string, i64, f64, bool or timestamp_ms",
                );
            };
            if RESERVED_COLUMNS.contains(&name.as_str()) {
                return self.fail(
                    name,
                    format!("'{name}' is a column the engine adds"),
                    "rename the field",
                );
            }
            self.columns.push(Column {
                name: name.clone(),
                ty,
            });
        }
        Ok(())
    }

    fn sink(&self, sink: &SinkSpec, source: &SourcePlan) -> Result<SinkPlan, SpecError> {
        SinkPlan::from_spec(sink, source).or_else(|message| {
            self.fail(
                "type = \"kafka\"",
                message,
                "give the sink brokers = \"host:port\" and string option values",
            )
        })
    }

    /// Adds `kafka_key` and `kafka_timestamp` to the fields of a Kafka
    /// source where the spec uses them without declaring them.
    fn kafka_metadata_fields(&mut self) {
        let SourceSpec::Kafka(kafka) = &self.spec.source else {
            return;
        };
        let used = [
            (
                KAFKA_KEY,
                kafka.key.as_deref() == Some(KAFKA_KEY),
                ColumnType::Str,
            ),
            (
                KAFKA_TIMESTAMP,
                self.spec.time.field == KAFKA_TIMESTAMP,
                ColumnType::TimestampMs,
            ),
        ];
        for (name, is_used, ty) in used {
            if is_used && self.slot_of(name).is_none() {
                self.columns.push(Column {
                    name: name.to_owned(),
                    ty,
                });
            }
        }
    }

    fn time(&self) -> Result<(usize, i64, i64), SpecError> {
        let field = &self.spec.time.field;
        let Some(slot) = self.slot_of(field) else {
            return self.fail(
                field,
                format!("time.field '{field}' is not in [schema]"),
                "add it to [schema] as timestamp_ms",
            );
        };
        if !matches!(
            self.columns[slot].ty,
            ColumnType::TimestampMs | ColumnType::I64
        ) {
            return self.fail(
                field,
                format!("time.field '{field}' is not a timestamp"),
                "declare it as timestamp_ms (epoch milliseconds)",
            );
        }
        let bound = &self.spec.time.max_out_of_orderness;
        let bound_ms = spec::parse_duration_ms(bound)
            .or_else(|message| self.fail(bound, message, "write a duration such as \"5s\""))?;
        let skew = &self.spec.time.max_partition_skew;
        let skew_ms = spec::parse_duration_ms(skew)
            .or_else(|message| self.fail(skew, message, "write a duration such as \"10s\""))?;
        Ok((slot, bound_ms, skew_ms))
    }

    fn source(&self) -> Result<SourcePlan, SpecError> {
        if let Some(key) = self.spec.source.key() {
            self.key_slot(key, "source.key")?;
        }
        match &self.spec.source {
            SourceSpec::Files(files) => {
                let format = match files.format.as_str() {
                    "jsonl" => FileFormat::Jsonl,
                    "parquet" => FileFormat::Parquet,
                    other => {
                        return self.fail(
                            other,
                            format!("unknown file format '{other}'"),
                            "use jsonl or parquet",
                        );
                    }
                };
                Ok(SourcePlan::Files {
                    path: files.path.clone(),
                    format,
                    max_record_bytes: files.max_record_bytes.unwrap_or(1 << 20),
                })
            }
            SourceSpec::Generator(generator) => self.generator(generator),
            SourceSpec::Kafka(kafka) => self.kafka(kafka),
        }
    }

    fn kafka(&self, spec: &spec::KafkaSourceSpec) -> Result<SourcePlan, SpecError> {
        if spec.format != "json" {
            return self.fail(
                &spec.format,
                format!("unknown Kafka message format '{}'", spec.format),
                "use format = \"json\" (one JSON object per message value)",
            );
        }
        let topics = match (&spec.topic, &spec.topics) {
            (Some(topic), None) => vec![topic.clone()],
            (None, Some(topics)) if !topics.is_empty() => topics.clone(),
            (Some(_), Some(_)) => {
                return self.fail(
                    "topics",
                    "the Kafka source names both topic and topics",
                    "keep one: topic = \"a\" or topics = [\"a\", \"b\"]",
                );
            }
            (None, _) => {
                return self.fail(
                    "[source]",
                    "the Kafka source names no topic",
                    "add topic = \"name\" or topics = [\"a\", \"b\"]",
                );
            }
        };
        if let Some(twice) = topics
            .iter()
            .enumerate()
            .find_map(|(at, topic)| topics[..at].contains(topic).then_some(topic))
        {
            return self.fail(
                twice,
                format!("topic {twice} is listed twice"),
                "list each topic once",
            );
        }
        let from = spec.from.as_deref().unwrap_or("committed");
        let start: StartPosition = from
            .parse()
            .or_else(|message| self.fail(from, message, "see --from in the README"))?;
        if topics.len() > 1 && matches!(start, StartPosition::Offsets(_)) {
            return self.fail(
                from,
                "explicit partition:offset pairs name the partitions of one topic, \
                 and this source reads several",
                "start several topics from earliest, latest, committed or a time",
            );
        }
        let until = spec.until.as_deref().unwrap_or("never");
        let end = until
            .parse()
            .or_else(|message| self.fail(until, message, "see --until in the README"))?;
        let warm_up = match spec.warm_up.as_deref().unwrap_or("earliest") {
            "earliest" => true,
            "none" => false,
            other => {
                return self.fail(
                    other,
                    format!("warm_up '{other}' is not earliest or none"),
                    "earliest rebuilds window state from the topic's history; none starts empty",
                );
            }
        };
        let duration = |text: &Option<String>, default: &str| -> Result<Duration, SpecError> {
            let text = text.as_deref().unwrap_or(default);
            let ms = spec::parse_duration_ms(text)
                .or_else(|message| self.fail(text, message, "write a duration such as \"5s\""))?;
            Ok(Duration::from_millis(ms.max(0) as u64))
        };
        let options = client_options(&spec.options).or_else(|message| {
            self.fail(
                "[source.options]",
                message,
                "quote the value: key = \"value\"",
            )
        })?;
        Ok(SourcePlan::Kafka(KafkaPlan {
            config: KafkaSourceConfig {
                brokers: spec.brokers.clone(),
                topics,
                group_id: spec
                    .group_id
                    .clone()
                    .unwrap_or_else(|| format!("tideflow-{}", self.spec.name)),
                options,
                start,
                end,
                warm_up,
            },
            idle_timeout: duration(&spec.idle_timeout, "5s")?,
            commit_interval: duration(&spec.commit_interval, "1s")?,
            partitions: None,
        }))
    }

    fn generator(&self, spec: &spec::GeneratorSourceSpec) -> Result<SourcePlan, SpecError> {
        for column in &self.columns {
            if !GENERATOR_FIELDS
                .iter()
                .any(|(name, _)| *name == column.name)
            {
                let known: Vec<_> = GENERATOR_FIELDS
                    .iter()
                    .map(|(name, ty)| format!("{name} = \"{ty}\""))
                    .collect();
                return self.fail(
                    &column.name,
                    format!("the generator has no field '{}'", column.name),
                    format!("its fields are {}", known.join(", ")),
                );
            }
        }
        let defaults = GeneratorConfig::default();
        let count = match &spec.count {
            None => defaults.count,
            Some(toml::Value::Integer(count)) if *count >= 0 => Some(*count as u64),
            Some(toml::Value::String(text)) if text == "unlimited" => None,
            Some(other) => {
                return self.fail(
                    "count",
                    format!("generator count {other} is not a number of records"),
                    "write a whole number or \"unlimited\"",
                );
            }
        };
        let disorder_max_ms = match &spec.disorder_max {
            None => 0,
            Some(text) => spec::parse_duration_ms(text)
                .or_else(|message| self.fail(text, message, "write a duration such as \"2s\""))?,
        };
        let config = GeneratorConfig {
            seed: spec.seed.unwrap_or(defaults.seed),
            users: spec.users.unwrap_or(defaults.users),
            merchants: spec.merchants.unwrap_or(defaults.merchants),
            partitions: spec.partitions.unwrap_or(defaults.partitions),
            count,
            rate: spec.rate,
            start_ms: spec.start_ms.unwrap_or(defaults.start_ms),
            spacing_ms: spec.spacing_ms.unwrap_or(defaults.spacing_ms),
            disorder_fraction: spec.disorder_fraction.unwrap_or(0.0),
            disorder_max_ms,
        };
        config.validate().or_else(|error| {
            self.fail("generator", error.to_string(), "fix the [source] settings")
        })?;
        Ok(SourcePlan::Generator(config))
    }

    fn key_slot(&self, key: &str, what: &str) -> Result<usize, SpecError> {
        let Some(slot) = self.slot_of(key) else {
            return self.fail(
                key,
                format!("{what} '{key}' is not in [schema]"),
                "key by a schema field",
            );
        };
        if slot >= self.field_count || !self.columns[slot].ty.is_key_type() {
            return self.fail(
                key,
                format!("{what} '{key}' cannot be a key"),
                "key by a string, i64, bool or timestamp field (not f64 or a feature)",
            );
        }
        Ok(slot)
    }

    /// `[state] dir`, `interval` and `retain`.
    fn checkpoints(&self) -> Result<Option<CheckpointPlan>, SpecError> {
        let state = &self.spec.state;
        let Some(dir) = &state.dir else {
            if let Some(interval) = &state.interval {
                return self.fail(
                    interval,
                    "state.interval is set but state.dir is not",
                    "set state.dir to the directory checkpoints go to",
                );
            }
            return Ok(None);
        };
        if let Some(text) = dir.to_str()
            && text.contains("://")
            && !text.starts_with(crate::checkpoint::object::S3_SCHEME)
        {
            return self.fail(
                text,
                "state.dir is a URL of a store tideflow cannot write to",
                "write a local directory or s3://BUCKET/PREFIX",
            );
        }
        let interval_ms = match &state.interval {
            None => 10_000,
            Some(text) => spec::parse_duration_ms(text)
                .or_else(|message| self.fail(text, message, "write a duration such as \"10s\""))?,
        };
        Ok(Some(CheckpointPlan {
            dir: dir.clone(),
            interval: std::time::Duration::from_millis(interval_ms.max(1) as u64),
            retain: state.retain.unwrap_or(3).max(1),
        }))
    }

    /// Sets `[state] key_ttl` on every stage, refusing one shorter than a
    /// stage's longest window plus the out-of-orderness bound: a key that
    /// expired could then still have records inside a later record's
    /// window, and finite windows would change with the TTL.
    fn key_ttl(&self, stages: &mut [StagePlan], bound_ms: i64) -> Result<(), SpecError> {
        let Some(text) = &self.spec.state.key_ttl else {
            return Ok(());
        };
        let ttl_ms = spec::parse_duration_ms(text)
            .or_else(|message| self.fail(text, message, "write a duration such as \"30d\""))?;
        for stage in stages.iter_mut() {
            let longest = stage
                .features
                .iter()
                .filter_map(|feature| feature.window)
                .max()
                .unwrap_or(0);
            let needed = longest.saturating_add(bound_ms);
            if ttl_ms < needed || ttl_ms <= 0 {
                return self.fail(
                    text,
                    format!(
                        "state.key_ttl {text} is shorter than the longest window of the features keyed by '{}' plus time.max_out_of_orderness ({needed} ms)",
                        stage.key_name
                    ),
                    format!("set key_ttl to at least {needed} ms, or shorten the windows"),
                );
            }
            stage.key_ttl_ms = Some(ttl_ms);
        }
        Ok(())
    }

    fn features(&mut self) -> Result<(Vec<StagePlan>, Expressions), SpecError> {
        let source_key = self.spec.source.key().map(str::to_owned);
        let mut stages: Vec<StagePlan> = Vec::new();
        let mut expressions = Vec::new();
        for feature in &self.spec.feature {
            let name = &feature.name;
            if self.slot_of(name).is_some() || RESERVED_COLUMNS.contains(&name.as_str()) {
                return self.fail(
                    name,
                    format!("feature '{name}' has the name of an existing column"),
                    "give each feature a unique name",
                );
            }
            let slot = self.columns.len();
            match (&feature.agg, &feature.expr) {
                (Some(agg), None) => {
                    let (key_name, window_feature, ty) =
                        self.window_feature(feature, agg, slot, source_key.as_deref())?;
                    let key_slot =
                        self.key_slot(&key_name, &format!("the key of feature '{name}'"))?;
                    let source_keyed = source_key.as_deref() == Some(key_name.as_str());
                    match stages.iter_mut().find(|stage| stage.key_name == key_name) {
                        Some(stage) => stage.features.push(window_feature),
                        None => stages.push(StagePlan {
                            key_name,
                            key_slot,
                            source_keyed,
                            features: vec![window_feature],
                            key_ttl_ms: None,
                        }),
                    }
                    self.columns.push(Column {
                        name: name.clone(),
                        ty,
                    });
                }
                (None, Some(text)) => {
                    if feature.key.is_some() || feature.field.is_some() || feature.window.is_some()
                    {
                        return self.fail(
                            name,
                            format!("expression feature '{name}' also sets key, field or window"),
                            "an expression feature has only name and expr",
                        );
                    }
                    let columns = &self.columns;
                    let resolve = |reference: &str| match columns
                        .iter()
                        .position(|column| column.name == reference)
                    {
                        Some(slot) if columns[slot].ty.is_numeric() => Ok(slot),
                        Some(_) => Err(format!(
                            "'{reference}' is a string; expressions compute with numbers"
                        )),
                        None => Err(format!(
                            "unknown column '{reference}' (expressions may use fields and features defined above them)"
                        )),
                    };
                    let expr = Expr::parse(text, &resolve).or_else(|message| {
                        self.fail(
                            text,
                            format!("feature '{name}': {message}"),
                            "see the expression reference in the README",
                        )
                    })?;
                    expressions.push((slot, expr));
                    self.columns.push(Column {
                        name: name.clone(),
                        ty: ColumnType::F64,
                    });
                }
                _ => {
                    return self.fail(
                        name,
                        format!("feature '{name}' needs exactly one of agg or expr"),
                        "set agg (with field and window) or expr",
                    );
                }
            }
        }
        stages.sort_by_key(|stage| !stage.source_keyed);
        Ok((stages, expressions))
    }

    fn window_feature(
        &self,
        feature: &spec::FeatureSpec,
        agg_name: &str,
        slot: usize,
        source_key: Option<&str>,
    ) -> Result<(String, WindowFeature, ColumnType), SpecError> {
        let name = &feature.name;
        let Some(agg) = Agg::parse(agg_name) else {
            return self.fail(
                agg_name,
                format!("feature '{name}' has unknown agg '{agg_name}'"),
                "use count, sum, mean, min, max, std, distinct_count, prev or since_prev",
            );
        };
        let key_name = match (&feature.key, source_key) {
            (Some(key), _) => key.clone(),
            (None, Some(key)) => key.to_owned(),
            (None, None) => {
                return self.fail(
                    name,
                    format!("feature '{name}' has no key"),
                    "set key = \"<field>\" on the feature, or source.key",
                );
            }
        };
        let field = match (&feature.field, agg) {
            (None, Agg::Count | Agg::SincePrev) => None,
            (None, _) => {
                return self.fail(
                    name,
                    format!("feature '{name}' ({agg_name}) needs a field"),
                    "set field = \"<schema field>\"",
                );
            }
            (Some(_), Agg::SincePrev) => {
                return self.fail(
                    name,
                    format!("feature '{name}': since_prev takes no field"),
                    "remove field",
                );
            }
            (Some(field), _) => {
                let Some(field_slot) = self
                    .slot_of(field)
                    .filter(|slot| *slot < self.spec.schema.len())
                else {
                    return self.fail(field, format!("feature '{name}' aggregates '{field}', which is not a schema field"), "aggregate a field of [schema]; compute derived values with expr features after");
                };
                if agg.needs_numeric_field() && !self.columns[field_slot].ty.is_numeric() {
                    return self.fail(field, format!("feature '{name}': {agg_name} needs a numeric field, '{field}' is a string"), "use count or distinct_count on strings");
                }
                Some(field_slot)
            }
        };
        let window = match &feature.window {
            None => None,
            Some(text) => match spec::parse_window(text).or_else(|message| {
                self.fail(
                    text,
                    format!("feature '{name}': {message}"),
                    "write a duration such as \"1h\", or \"lifetime\"",
                )
            })? {
                Window::Lifetime => None,
                Window::Millis(ms) => Some(ms),
            },
        };
        if window.is_some() && matches!(agg, Agg::Prev | Agg::SincePrev) {
            return self.fail(
                name,
                format!(
                    "feature '{name}': {agg_name} looks at the previous record and takes no window"
                ),
                "remove window",
            );
        }
        let ty = match agg {
            Agg::Count | Agg::DistinctCount | Agg::SincePrev => ColumnType::I64,
            Agg::Prev => self.columns[field.unwrap_or(0)].ty,
            _ => ColumnType::F64,
        };
        Ok((
            key_name,
            WindowFeature {
                name: name.clone(),
                slot,
                agg,
                field,
                window,
            },
            ty,
        ))
    }

    fn model(&mut self) -> Result<Option<ModelPlan>, SpecError> {
        let Some(model) = &self.spec.model else {
            return Ok(None);
        };
        let mut input_slots = Vec::new();
        for input in &model.inputs {
            match self.slot_of(input) {
                Some(slot) if self.columns[slot].ty.is_numeric() => input_slots.push(slot),
                Some(_) => {
                    return self.fail(
                        input,
                        format!("model input column '{input}' is a string"),
                        "feed numeric fields or features",
                    );
                }
                None => {
                    return self.fail(
                        input,
                        format!("model input column '{input}' is neither a field nor a feature"),
                        "list columns defined in [schema] or [[feature]]",
                    );
                }
            }
        }
        if input_slots.is_empty() {
            return self.fail(
                "inputs",
                "the model has no input columns",
                "set inputs = [\"feature\", ...]",
            );
        }
        let device = Device::parse(&model.device).map_or_else(
            || {
                self.fail(
                    &model.device,
                    format!("unknown device '{}'", model.device),
                    "use auto, cpu, cuda or cuda:N",
                )
            },
            Ok,
        )?;
        let mut outputs = Vec::new();
        for (column, source) in &model.outputs {
            if self.slot_of(column).is_some() || RESERVED_COLUMNS.contains(&column.as_str()) {
                return self.fail(
                    column,
                    format!("model output column '{column}' has the name of an existing column"),
                    "rename the output column",
                );
            }
            let (output, index) = parse_output_source(source).or_else(|message| {
                self.fail(source, message, "write \"output\" or \"output[i]\"")
            })?;
            let slot = self.columns.len();
            self.columns.push(Column {
                name: column.clone(),
                ty: ColumnType::F64,
            });
            outputs.push(OutputPlan {
                column: column.clone(),
                slot,
                output,
                index,
            });
        }
        if outputs.is_empty() {
            return self.fail(
                "[model]",
                "the model maps no outputs to columns",
                "add [model.outputs] column = \"model_output[i]\"",
            );
        }
        let stop_on_error = match model.on_error.as_str() {
            "dead_letter" => false,
            "stop" => true,
            other => {
                return self.fail(
                    other,
                    format!("unknown model.on_error '{other}'"),
                    "use dead_letter (the rows of a failed batch go to the dead letters) or stop",
                );
            }
        };
        let name = model.name.clone().unwrap_or_else(|| {
            model
                .path
                .file_stem()
                .map_or("model".into(), |stem| stem.to_string_lossy().into_owned())
        });
        Ok(Some(ModelPlan {
            path: model.path.clone(),
            name,
            input_slots,
            input_columns: model.inputs.clone(),
            input_name: model.input_name.clone(),
            outputs,
            device,
            fill_null: model.fill_null,
            stop_on_error,
            run_rows: match model.run_rows {
                Some(0) => RunRows::PerBatch,
                Some(rows) => RunRows::Fixed(rows),
                None => RunRows::FixedOnGpu(GPU_RUN_ROWS),
            },
        }))
    }

    fn batching(&self) -> Result<BatchingPlan, SpecError> {
        let batching = &self.spec.batching;
        let policy = match batching.policy.as_str() {
            "micro" => Policy::Micro,
            "bulk" => Policy::Bulk,
            "adaptive" => Policy::Adaptive,
            other => {
                return self.fail(
                    other,
                    format!("unknown batching policy '{other}'"),
                    "use micro, bulk or adaptive",
                );
            }
        };
        let limits = |spec: &spec::BatchLimitsSpec,
                      default_rows: usize,
                      default_delay: &str|
         -> Result<BatchLimits, SpecError> {
            let max_rows = spec.max_rows.unwrap_or(default_rows);
            if max_rows == 0 {
                return self.fail(
                    "max_rows",
                    "max_rows must be at least 1",
                    "set max_rows to a positive number",
                );
            }
            let delay = spec.max_delay.as_deref().unwrap_or(default_delay);
            let delay_ms = spec::parse_duration_ms(delay)
                .or_else(|message| self.fail(delay, message, "write a duration such as \"5ms\""))?;
            Ok(BatchLimits {
                max_rows,
                max_delay: Duration::from_millis(delay_ms as u64),
            })
        };
        Ok(BatchingPlan {
            policy,
            micro: limits(&batching.micro, 256, "5ms")?,
            bulk: limits(&batching.bulk, 16384, "1s")?,
        })
    }
}

/// Splits `"probabilities[1]"` into `("probabilities", Some(1))`.
fn parse_output_source(source: &str) -> Result<(String, Option<usize>), String> {
    match source.split_once('[') {
        None => Ok((source.trim().to_owned(), None)),
        Some((name, rest)) => {
            let index = rest
                .strip_suffix(']')
                .and_then(|index| index.trim().parse().ok());
            match index {
                Some(index) => Ok((name.trim().to_owned(), Some(index))),
                None => Err(format!("'{source}' is not output[index]")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_with_state(state: &str) -> Result<Plan, SpecError> {
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
{state}
"#
        );
        let source = SpecSource {
            file: "t.toml".into(),
            text,
            overrides: Vec::new(),
        };
        Plan::from_spec(&source.parse()?, &source)
    }

    #[test]
    fn key_ttl_reaches_every_stage() {
        let plan = plan_with_state("[state]\nkey_ttl = \"30d\"").unwrap();
        assert_eq!(plan.stages[0].key_ttl_ms, Some(30 * 24 * 3_600_000));
        assert_eq!(plan_with_state("").unwrap().stages[0].key_ttl_ms, None);
    }

    #[test]
    fn a_key_ttl_shorter_than_a_window_and_the_bound_is_refused() {
        // 1h + 5s is the least a key must be kept for the 1h sum to stay
        // exact.
        assert!(plan_with_state("[state]\nkey_ttl = \"3605s\"").is_ok());
        let error = plan_with_state("[state]\nkey_ttl = \"1h\"").unwrap_err();
        assert!(error.message.contains("keyed by 'user_id'"), "{error}");
        assert!(error.hint.unwrap().contains("3605000 ms"));
    }

    #[test]
    fn checkpoints_go_to_a_directory_or_s3_and_no_other_url() {
        let plan = plan_with_state("[state]\ndir = \"s3://bucket/runs\"").unwrap();
        assert_eq!(
            plan.checkpoints.unwrap().dir,
            PathBuf::from("s3://bucket/runs")
        );
        let error = plan_with_state("[state]\ndir = \"gs://bucket/runs\"").unwrap_err();
        assert!(error.message.contains("cannot write to"), "{error}");
        assert!(error.hint.unwrap().contains("s3://BUCKET/PREFIX"));
    }
}
