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
        SinkPlan::from_spec(sink.get_ref(), source).map_err(|message| {
            text.error_at(
                sink.span(),
                message,
                "give the sink brokers = \"host:port\" and string option values",
            )
        })
    };
    let sinks = spec.sink.iter().map(resolve).collect::<Result<_, _>>()?;
    let dead_letters = match &spec.dead_letters {
        Some(sink) => resolve(sink)?,
        None => SinkPlan::Stderr,
    };
    Ok((sinks, dead_letters))
}
