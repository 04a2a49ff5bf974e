//! `[[sink]]` and `[dead_letters]`, resolved: where rows and dead letters
//! go, with Kafka sinks inheriting the Kafka source's connection.

use super::SourcePlan;
use crate::spec::{SinkSpec, SpecError, SpecSource};
use std::path::PathBuf;
use tideflow_connectors::kafka::ClientOptions;
use toml::Spanned;

/// A sink, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkPlan {
    /// JSONL files in a directory.
    Jsonl(PathBuf),
    /// Parquet files in a directory.
    Parquet {
        /// The directory.
        dir: PathBuf,
        /// How the files' pages are compressed.
        compression: ParquetCompression,
    },
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

/// How a Parquet sink compresses its pages: the codecs every Parquet
/// reader takes (DuckDB, Polars, Spark, pyarrow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ParquetCompression {
    /// Pages as encoded.
    #[default]
    None,
    /// Snappy: fast, about half the size of uncompressed float columns.
    Snappy,
    /// Zstandard at a level (up to 22; 0 is zstd's default, 3; negative
    /// levels trade size for speed).
    Zstd(i32),
}

impl ParquetCompression {
    /// Zstandard's level when the spec names none: its fastest positive
    /// one, which already compresses better than Snappy.
    const ZSTD_DEFAULT_LEVEL: i32 = 1;

    /// Reads `none`, `snappy`, `zstd` or `zstd(LEVEL)`, in any case.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let level = lower
            .strip_prefix("zstd(")
            .and_then(|rest| rest.strip_suffix(')'));
        match (lower.as_str(), level) {
            ("none" | "uncompressed", _) => Ok(ParquetCompression::None),
            ("snappy", _) => Ok(ParquetCompression::Snappy),
            ("zstd", _) => Ok(ParquetCompression::Zstd(Self::ZSTD_DEFAULT_LEVEL)),
            (_, Some(level)) => match level.trim().parse::<i32>() {
                Ok(level @ -131072..=22) => Ok(ParquetCompression::Zstd(level)),
                _ => Err(format!(
                    "zstd's level is a whole number from -131072 to 22, not '{level}'"
                )),
            },
            _ => Err(format!("unknown Parquet compression '{text}'")),
        }
    }
}

/// What a sink spec's problems are solved by.
const KAFKA_HINT: &str = "give the sink brokers = \"host:port\" and string option values";
const COMPRESSION_HINT: &str = "compression = \"none\" | \"snappy\" | \"zstd\" | \"zstd(LEVEL)\"";

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
    /// The plan of a sink, or what is wrong with it and a hint.
    fn from_spec(sink: &SinkSpec, source: &SourcePlan) -> Result<Self, (String, &'static str)> {
        Ok(match sink {
            SinkSpec::Jsonl(path) => SinkPlan::Jsonl(path.path.clone()),
            SinkSpec::Parquet(parquet) => SinkPlan::Parquet {
                dir: parquet.path.clone(),
                compression: match &parquet.compression {
                    Some(text) => ParquetCompression::parse(text)
                        .map_err(|message| (message, COMPRESSION_HINT))?,
                    None => ParquetCompression::default(),
                },
            },
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
                        return Err((
                            format!(
                                "the kafka sink to {} needs brokers (the source is not Kafka)",
                                kafka.topic
                            ),
                            KAFKA_HINT,
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
                for (key, value) in client_options(&kafka.options)
                    .map_err(|message| (message, KAFKA_HINT))?
                    .pairs()
                {
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
            SinkPlan::Parquet { dir, .. } => format!("parquet {}", dir.display()),
            SinkPlan::Stdout => "stdout".into(),
            SinkPlan::Stderr => "stderr".into(),
            SinkPlan::Null => "null".into(),
            SinkPlan::Kafka { brokers, topic, .. } => format!("kafka {topic} at {brokers}"),
        }
    }
}

/// librdkafka options from a spec table: strings, numbers and booleans, as
/// text.
pub(super) fn client_options(
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

/// Resolves the sinks and the dead letters (standard error by default),
/// refusing a dataflow without a sink.
pub(super) fn sinks(
    text: &SpecSource,
    spec: &crate::spec::Spec,
    source: &SourcePlan,
) -> Result<(Vec<SinkPlan>, SinkPlan), SpecError> {
    if spec.sink.is_empty() {
        return Err(text.error_at(
            spec.name.span(),
            "the dataflow has no [[sink]]",
            "add [[sink]] type = \"jsonl\" path = \"out/\" (or stdout, parquet)",
        ));
    }
    let resolve = |sink: &Spanned<SinkSpec>| {
        SinkPlan::from_spec(sink.get_ref(), source)
            .map_err(|(message, hint)| text.error_at(sink.span(), message, hint))
    };
    let sinks = spec.sink.iter().map(resolve).collect::<Result<_, _>>()?;
    let dead_letters = match &spec.dead_letters {
        Some(sink) => {
            if let SinkSpec::Parquet(parquet) = sink.get_ref()
                && parquet.compression.is_some()
            {
                return Err(text.error_at(
                    sink.span(),
                    "dead letters are written as JSON lines, which take no Parquet compression",
                    "remove compression from [dead_letters]",
                ));
            }
            resolve(sink)?
        }
        None => SinkPlan::Stderr,
    };
    Ok((sinks, dead_letters))
}
