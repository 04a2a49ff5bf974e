//! `[[table]]`, `[[join]]` and `[[label]]`: keyed tables joined as of each
//! event's time, and labels that arrive after it (training sets).
//!
//! A table and a label input are read like the source, from a Kafka topic
//! or from files, with their own schema and event time. These sections
//! are flat tables (`type` beside the other fields, not a tagged enum) so
//! that every field keeps its place in the file for error messages.

use crate::schema::ColumnType;
use indexmap::IndexMap;
use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;

use super::TimeSpec;

/// Where a table or label input is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// A Kafka topic (for a table, a changelog: compacted, keyed).
    Kafka,
    /// A file, or a directory whose files are the partitions.
    Files,
}

/// The format of a table or label input's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// One JSON object per Kafka message value (the default for Kafka).
    Json,
    /// One JSON object per line of a file.
    Jsonl,
    /// Apache Parquet files.
    Parquet,
}

/// The fields of a table or label section that say where its records come
/// from and what they hold (written out in each section, since a
/// flattened struct would lose the fields' places in the file).
#[derive(Clone, Copy, Debug)]
pub struct InputFields<'spec> {
    /// The section's name.
    pub name: &'spec Spanned<String>,
    /// `kafka` or `files`.
    pub input: &'spec Spanned<InputType>,
    /// The topic (Kafka).
    pub topic: Option<&'spec Spanned<String>>,
    /// `bootstrap.servers` (Kafka).
    pub brokers: Option<&'spec Spanned<String>>,
    /// librdkafka options (Kafka).
    pub options: &'spec IndexMap<String, toml::Value>,
    /// A file or directory (files).
    pub path: Option<&'spec Spanned<PathBuf>>,
    /// The record format.
    pub format: Option<&'spec Spanned<InputFormat>>,
    /// The record fields and their types.
    pub schema: &'spec Spanned<IndexMap<String, Spanned<ColumnType>>>,
    /// The event time.
    pub time: &'spec Spanned<TimeSpec>,
}

macro_rules! input_fields {
    ($section:ident) => {
        impl $section {
            /// Where the section's records come from and what they hold.
            pub fn input(&self) -> InputFields<'_> {
                InputFields {
                    name: &self.name,
                    input: &self.input,
                    topic: self.topic.as_ref(),
                    brokers: self.brokers.as_ref(),
                    options: &self.options,
                    path: self.path.as_ref(),
                    format: self.format.as_ref(),
                    schema: &self.schema,
                    time: &self.time,
                }
            }
        }
    };
}

input_fields!(TableSpec);
input_fields!(LabelSpec);

/// One `[[table]]`: a keyed table, versioned by event time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// The table's name, which joins refer to.
    pub name: Spanned<String>,
    /// The table's key field; the newest version of a key wins.
    pub key: Spanned<String>,
    /// `kafka` or `files`.
    #[serde(rename = "type")]
    pub input: Spanned<InputType>,
    /// The topic (Kafka).
    pub topic: Option<Spanned<String>>,
    /// `bootstrap.servers` (Kafka; default: the Kafka source's).
    pub brokers: Option<Spanned<String>>,
    /// librdkafka options (Kafka; default: the Kafka source's
    /// client-wide options, such as security).
    #[serde(default)]
    pub options: IndexMap<String, toml::Value>,
    /// A file or directory (files).
    pub path: Option<Spanned<PathBuf>>,
    /// `json` (Kafka, the default), `jsonl` or `parquet` (files).
    pub format: Option<Spanned<InputFormat>>,
    /// The record fields and their types.
    pub schema: Spanned<IndexMap<String, Spanned<ColumnType>>>,
    /// Which field is the record's event time, and how out of order the
    /// records may be.
    pub time: Spanned<TimeSpec>,
}

/// One `[[join]]`: columns of a table's version as of each event's time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    /// The `[[table]]` joined.
    pub table: Spanned<String>,
    /// The event field matched against the table's key.
    pub on: Spanned<String>,
    /// The table columns added to each row.
    pub columns: Spanned<Vec<String>>,
    /// Prepended to the names of the added columns (default: none).
    pub prefix: Option<Spanned<String>>,
    /// Whether an event with no version of its key is a dead letter
    /// (reason `no_match`) rather than a row with null columns.
    #[serde(default)]
    pub required: bool,
}

/// One `[[label]]`: a value that arrives after the event, looked up over
/// a horizon. A dataflow with labels is a training-set dataflow.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    /// The output column.
    pub name: Spanned<String>,
    /// The field matched, in the label records and in the events.
    pub on: Spanned<String>,
    /// The label record's field whose value is taken.
    pub value: Spanned<String>,
    /// How far after the event a label counts (a duration).
    pub horizon: Spanned<String>,
    /// The value when no label arrives within the horizon (default null).
    pub default: Option<Spanned<toml::Value>>,
    /// `kafka` or `files`.
    #[serde(rename = "type")]
    pub input: Spanned<InputType>,
    /// The topic (Kafka).
    pub topic: Option<Spanned<String>>,
    /// `bootstrap.servers` (Kafka; default: the Kafka source's).
    pub brokers: Option<Spanned<String>>,
    /// librdkafka options (Kafka; default: the Kafka source's
    /// client-wide options, such as security).
    #[serde(default)]
    pub options: IndexMap<String, toml::Value>,
    /// A file or directory (files).
    pub path: Option<Spanned<PathBuf>>,
    /// `json` (Kafka, the default), `jsonl` or `parquet` (files).
    pub format: Option<Spanned<InputFormat>>,
    /// The record fields and their types.
    pub schema: Spanned<IndexMap<String, Spanned<ColumnType>>>,
    /// Which field is the record's event time, and how out of order the
    /// records may be.
    pub time: Spanned<TimeSpec>,
}
