//! `[source]`, `[schema]` and `[time]`, resolved: the records' fields as
//! the first columns, the event time, and the source's reader settings.
//! Tables and labels read their inputs with the same pieces
//! ([`super::joins`]).

use super::columns::Columns;
use super::sinks::client_options;
use super::{KAFKA_KEY, KAFKA_TIMESTAMP, KafkaPlan, MetadataSlots, SourcePlan};
use crate::schema::ColumnType;
use crate::spec::{self, KafkaSourceSpec, SourceSpec, SpecError, SpecSource, TimeSpec, WarmUp};
use indexmap::IndexMap;
use std::ops::Range;
use std::time::Duration;
use tideflow_connectors::generator::{GENERATOR_FIELDS, GeneratorConfig};
use tideflow_connectors::kafka::{KafkaSourceConfig, StartPosition};
use toml::Spanned;

/// A schema: field names and their types, each where the spec wrote it.
pub(super) type SchemaSpec = Spanned<IndexMap<String, Spanned<ColumnType>>>;

/// Adds a schema's fields as columns.
pub(super) fn schema(
    text: &SpecSource,
    schema: &SchemaSpec,
    columns: &mut Columns,
) -> Result<(), SpecError> {
    if schema.get_ref().is_empty() {
        return Err(text.error_at(
            schema.span(),
            "the schema is empty",
            "list each field as name = \"type\"",
        ));
    }
    for (name, ty) in schema.get_ref() {
        if columns.is_taken(name) {
            return Err(text.error_at(
                ty.span(),
                format!("'{name}' is a column the engine adds"),
                "rename the field",
            ));
        }
        columns.push(name, *ty.get_ref());
    }
    Ok(())
}

/// Adds `kafka_key` and `kafka_timestamp` to the fields of a Kafka input
/// where the spec uses them (as `key` and as the time field) without
/// declaring them, and returns their slots among the fields.
pub(super) fn kafka_metadata_fields(
    columns: &mut Columns,
    (keyed_by_message_key, timed_by_message): (bool, bool),
) -> MetadataSlots {
    let used = [
        (KAFKA_KEY, keyed_by_message_key, ColumnType::Str),
        (KAFKA_TIMESTAMP, timed_by_message, ColumnType::TimestampMs),
    ];
    for (name, is_used, ty) in used {
        if is_used && columns.slot_of(name).is_none() {
            columns.push(name, ty);
        }
    }
    MetadataSlots {
        key: columns.slot_of(KAFKA_KEY),
        timestamp: columns.slot_of(KAFKA_TIMESTAMP),
    }
}

/// Rows held for the watermark per worker, by default, before partitions
/// are read in step: at 16 workers, some 4M rows (a few hundred bytes
/// each), enough to ride out a worker that falls behind for a moment
/// without holding the fast ones back.
const DEFAULT_BUFFERED_ROWS: u64 = 1 << 18;

/// The event time, resolved.
#[derive(Clone, Copy, Debug)]
pub(super) struct EventTime {
    /// Slot of the time field.
    pub slot: usize,
    /// The out-of-orderness bound, ms.
    pub bound_ms: i64,
    /// The partition skew limit, ms.
    pub skew_ms: i64,
    /// Rows held for the watermark per worker before the skew limit
    /// applies.
    pub buffered_rows: u64,
}

/// Resolves a `time` table against the fields.
pub(super) fn event_time(
    text: &SpecSource,
    time: &Spanned<TimeSpec>,
    columns: &Columns,
) -> Result<EventTime, SpecError> {
    let field = &time.get_ref().field;
    let Some(slot) = columns.slot_of(field.get_ref()) else {
        return Err(text.error_at(
            field.span(),
            format!("time.field '{}' is not in the schema", field.get_ref()),
            "add it to the schema as timestamp_ms",
        ));
    };
    if !matches!(
        columns.get(slot).ty,
        ColumnType::TimestampMs | ColumnType::I64
    ) {
        return Err(text.error_at(
            field.span(),
            format!("time.field '{}' is not a timestamp", field.get_ref()),
            "declare it as timestamp_ms (epoch milliseconds)",
        ));
    }
    let spec = time.get_ref();
    Ok(EventTime {
        slot,
        bound_ms: duration_ms(text, spec.max_out_of_orderness.as_ref(), "0s")?,
        skew_ms: duration_ms(text, spec.max_partition_skew.as_ref(), "10s")?,
        buffered_rows: spec
            .max_buffered_rows
            .as_ref()
            .map_or(DEFAULT_BUFFERED_ROWS, |rows| *rows.get_ref()),
    })
}

/// A duration of the spec in ms, or `default`.
pub(super) fn duration_ms(
    text: &SpecSource,
    duration: Option<&Spanned<String>>,
    default: &str,
) -> Result<i64, SpecError> {
    let Some(duration) = duration else {
        return spec::parse_duration_ms(default).map_err(|message| text.error(message, default));
    };
    spec::parse_duration_ms(duration.get_ref()).map_err(|message| {
        text.error_at(
            duration.span(),
            message,
            format!("write a duration such as \"{default}\" (ms, s, m, h, d)"),
        )
    })
}

/// The slot of a key field: a schema field (among the first
/// `field_count` columns) of a type that can be a key.
pub(super) fn key_slot(
    text: &SpecSource,
    (key, span): (&str, Range<usize>),
    what: &str,
    (columns, field_count): (&Columns, usize),
) -> Result<usize, SpecError> {
    let Some(slot) = columns.slot_of(key).filter(|slot| *slot < field_count) else {
        return Err(text.error_at(
            span,
            format!("{what} '{key}' is not a field of the schema"),
            "key by a schema field",
        ));
    };
    if !columns.get(slot).ty.is_key_type() {
        return Err(text.error_at(
            span,
            format!("{what} '{key}' cannot be a key"),
            "key by a string, i64, bool or timestamp field (not f64)",
        ));
    }
    Ok(slot)
}

/// Resolves `[source]`; the schema's fields are the first columns.
pub(super) fn source(
    text: &SpecSource,
    spec: &Spanned<SourceSpec>,
    (columns, dataflow): (&Columns, &str),
) -> Result<SourcePlan, SpecError> {
    let span = spec.span();
    if let Some(key) = spec.get_ref().key() {
        key_slot(
            text,
            (key, span.clone()),
            "source.key",
            (columns, columns.len()),
        )?;
    }
    match spec.get_ref() {
        SourceSpec::Files(files) => Ok(SourcePlan::Files {
            path: files.path.clone(),
            format: files.format,
            max_record_bytes: files.max_record_bytes.unwrap_or(1 << 20),
        }),
        SourceSpec::Generator(spec) => generator(text, (spec, span), columns),
        SourceSpec::Kafka(kafka) => Ok(SourcePlan::Kafka(kafka_source(
            text,
            (kafka, span),
            dataflow,
        )?)),
    }
}

fn kafka_source(
    text: &SpecSource,
    (spec, span): (&KafkaSourceSpec, Range<usize>),
    dataflow: &str,
) -> Result<KafkaPlan, SpecError> {
    let error = |message: String, hint: &str| text.error_at(span.clone(), message, hint);
    let fail = |message: String, hint: &str| Err(error(message, hint));
    let topics = match (&spec.topic, &spec.topics) {
        (Some(topic), None) => vec![topic.clone()],
        (None, Some(topics)) if !topics.is_empty() => topics.clone(),
        (Some(_), Some(_)) => {
            return fail(
                "the Kafka source names both topic and topics".into(),
                "keep one: topic = \"a\" or topics = [\"a\", \"b\"]",
            );
        }
        (None, _) => {
            return fail(
                "the Kafka source names no topic".into(),
                "add topic = \"name\" or topics = [\"a\", \"b\"]",
            );
        }
    };
    if let Some(twice) = topics
        .iter()
        .enumerate()
        .find_map(|(at, topic)| topics[..at].contains(topic).then_some(topic))
    {
        return fail(
            format!("topic {twice} is listed twice"),
            "list each topic once",
        );
    }
    let from = spec.from.as_deref().unwrap_or("committed");
    let start: StartPosition = match from.parse() {
        Ok(start) => start,
        Err(message) => return fail(message, "see --from in the README"),
    };
    if topics.len() > 1 && matches!(start, StartPosition::Offsets(_)) {
        return fail(
            "explicit partition:offset pairs name the partitions of one topic, \
             and this source reads several"
                .into(),
            "start several topics from earliest, latest, committed or a time",
        );
    }
    let until = spec.until.as_deref().unwrap_or("never");
    let end = match until.parse() {
        Ok(end) => end,
        Err(message) => return fail(message, "see --until in the README"),
    };
    let duration = |duration: &Option<String>, default: &str| -> Result<Duration, SpecError> {
        let duration = duration.as_deref().unwrap_or(default);
        match spec::parse_duration_ms(duration) {
            Ok(ms) => Ok(Duration::from_millis(ms.max(0) as u64)),
            Err(message) => Err(error(message, "write a duration such as \"5s\"")),
        }
    };
    let options = match client_options(&spec.options) {
        Ok(options) => options,
        Err(message) => return fail(message, "quote the value: key = \"value\""),
    };
    Ok(KafkaPlan {
        config: KafkaSourceConfig {
            brokers: spec.brokers.clone(),
            topics,
            group_id: spec
                .group_id
                .clone()
                .unwrap_or_else(|| format!("tideflow-{dataflow}")),
            options,
            start,
            end,
            warm_up: spec.warm_up == WarmUp::Earliest,
        },
        idle_timeout: duration(&spec.idle_timeout, "5s")?,
        commit_interval: duration(&spec.commit_interval, "1s")?,
        partitions: None,
    })
}

fn generator(
    text: &SpecSource,
    (spec, span): (&spec::GeneratorSourceSpec, Range<usize>),
    columns: &Columns,
) -> Result<SourcePlan, SpecError> {
    let fail = |message: String, hint: String| Err(text.error_at(span.clone(), message, hint));
    for slot in 0..columns.len() {
        let name = &columns.get(slot).name;
        if !GENERATOR_FIELDS.iter().any(|(field, _)| field == name) {
            let known: Vec<_> = GENERATOR_FIELDS
                .iter()
                .map(|(name, ty)| format!("{name} = \"{ty}\""))
                .collect();
            return fail(
                format!("the generator has no field '{name}'"),
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
            return fail(
                format!("generator count {other} is not a number of records"),
                "write a whole number or \"unlimited\"".into(),
            );
        }
    };
    let disorder_max_ms = match &spec.disorder_max {
        None => 0,
        Some(duration) => match spec::parse_duration_ms(duration) {
            Ok(ms) => ms,
            Err(message) => return fail(message, "write a duration such as \"2s\"".into()),
        },
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
    if let Err(error) = config.validate() {
        return fail(error.to_string(), "fix the [source] settings".into());
    }
    Ok(SourcePlan::Generator(config))
}
