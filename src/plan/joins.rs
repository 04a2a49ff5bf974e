//! `[[table]]`, `[[join]]` and `[[label]]`, resolved: each table and label
//! input as a source of its own (its schema, event time and reader), each
//! join as the slots it reads and fills, each label as its lookup.
//!
//! What is refused here, with the line: a join on a field the events do
//! not have, or of another type than the table's key; a joined column the
//! table does not have, or whose name a field already has; a label input
//! without its `on` or `value` field; labels on a live run, whose rows
//! would wait for a horizon that never closes.

use super::columns::Columns;
use super::sinks::client_options;
use super::source::{self, EventTime, duration_ms, kafka_metadata_fields};
use super::{KAFKA_KEY, KAFKA_TIMESTAMP, KafkaPlan, MetadataSlots, SourcePlan};
use crate::schema::{Column, ColumnType};
use crate::spec::{
    InputFields, InputFormat, InputType, JoinSpec, LabelSpec, SpecError, SpecSource, TableSpec,
};
use std::time::Duration;
use tideflow_connectors::Value;
use tideflow_connectors::files::FileFormat;
use tideflow_connectors::kafka::{EndPosition, KafkaSourceConfig, StartPosition};
use toml::Spanned;

/// The column every training-set row carries: whether the horizon of
/// each of its labels had closed when it was written.
pub const LABEL_COMPLETE: &str = "_label_complete";

/// A table or label input, resolved: a source of its own.
#[derive(Clone, Debug)]
pub struct InputPlan {
    /// The table's name, or the label's column.
    pub name: String,
    /// Where its records come from (files or Kafka).
    pub source: SourcePlan,
    /// Its fields, in slot order.
    pub columns: Vec<Column>,
    /// Slot of its event time.
    pub time_slot: usize,
    /// Its out-of-orderness bound, ms.
    pub bound_ms: i64,
    /// Fields filled from Kafka metadata.
    pub metadata_slots: MetadataSlots,
    /// Slots a record must have (time, key, label value).
    pub required_slots: Vec<usize>,
    /// For a table read from Kafka, the key slot that a message without a
    /// value (a tombstone) deletes, named by the message key.
    pub tombstone_key: Option<usize>,
}

/// A keyed table.
#[derive(Clone, Debug)]
pub struct TablePlan {
    /// Where its records come from and what they hold.
    pub input: InputPlan,
    /// Slot of its key among its fields.
    pub key_slot: usize,
}

/// One as-of join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinPlan {
    /// Index of the table in [`super::Plan::tables`].
    pub table: usize,
    /// The event column matched against the table's key.
    pub on_slot: usize,
    /// The table's fields read, in the order of `slots`.
    pub table_slots: Vec<usize>,
    /// The output slots they fill.
    pub slots: Vec<usize>,
    /// Whether an event with no version is a dead letter.
    pub required: bool,
}

/// One label.
#[derive(Clone, Debug)]
pub struct LabelPlan {
    /// Where the label records come from and what they hold.
    pub input: InputPlan,
    /// The event column matched.
    pub on_slot: usize,
    /// The label records' field matched (of the same name).
    pub key_slot: usize,
    /// The label records' field taken.
    pub value_slot: usize,
    /// How far after the event a label counts, ms.
    pub horizon_ms: i64,
    /// The value when none counts.
    pub default: Value,
    /// The output slot.
    pub slot: usize,
}

/// Resolves every `[[table]]`; `source` is the dataflow's own source,
/// whose brokers, options and end a Kafka table takes by default.
pub(super) fn tables(
    text: &SpecSource,
    specs: &[TableSpec],
    source: &SourcePlan,
) -> Result<Vec<TablePlan>, SpecError> {
    let mut tables: Vec<TablePlan> = Vec::new();
    for spec in specs {
        if tables
            .iter()
            .any(|table| table.input.name == *spec.name.get_ref())
        {
            return Err(text.error_at(
                spec.name.span(),
                format!("two tables are named '{}'", spec.name.get_ref()),
                "give each [[table]] its own name",
            ));
        }
        let key = spec.key.get_ref();
        let (input, columns) = input(text, spec.input(), source, key == KAFKA_KEY)?;
        let what = format!("the key of table '{}'", spec.name.get_ref());
        let key_slot = source::key_slot(
            text,
            (key, spec.key.span()),
            &what,
            (&columns, columns.len()),
        )?;
        let mut input = input;
        if key_slot == input.time_slot {
            return Err(text.error_at(
                spec.key.span(),
                format!("table '{}' is keyed by its time field", spec.name.get_ref()),
                "key the table by the field that names the entity",
            ));
        }
        input.required_slots.push(key_slot);
        if matches!(input.source, SourcePlan::Kafka(_)) {
            input.tombstone_key = Some(key_slot);
        }
        tables.push(TablePlan { input, key_slot });
    }
    Ok(tables)
}

/// Resolves every `[[join]]`, adding the joined columns after the fields.
pub(super) fn joins(
    text: &SpecSource,
    specs: &[JoinSpec],
    tables: &[TablePlan],
    columns: &mut Columns,
) -> Result<Vec<JoinPlan>, SpecError> {
    let events = columns.len();
    let mut joins = Vec::new();
    for spec in specs {
        let Some(table_index) = tables
            .iter()
            .position(|table| table.input.name == *spec.table.get_ref())
        else {
            let known: Vec<_> = tables
                .iter()
                .map(|table| table.input.name.clone())
                .collect();
            return Err(text.error_at(
                spec.table.span(),
                format!("no [[table]] is named '{}'", spec.table.get_ref()),
                match known.is_empty() {
                    true => "declare the table with [[table]] name = \"...\"".to_owned(),
                    false => format!("the tables are {}", known.join(", ")),
                },
            ));
        };
        let table = &tables[table_index];
        let on_slot = join_field(text, &spec.on, (columns, events), table)?;
        let prefix = spec.prefix.as_ref().map_or("", |prefix| prefix.get_ref());
        let (mut table_slots, mut slots) = (Vec::new(), Vec::new());
        for name in spec.columns.get_ref() {
            let Some(table_slot) = table
                .input
                .columns
                .iter()
                .position(|column| column.name == *name)
            else {
                return Err(text.error_at(
                    spec.columns.span(),
                    format!("table '{}' has no column '{name}'", table.input.name),
                    "join columns of the table's schema",
                ));
            };
            let output = format!("{prefix}{name}");
            if columns.is_taken(&output) {
                return Err(text.error_at(
                    spec.columns.span(),
                    format!(
                        "the joined column '{output}' of table '{}' has the name of an existing column",
                        table.input.name
                    ),
                    "set prefix = \"<table>_\" on the join, or rename the field",
                ));
            }
            table_slots.push(table_slot);
            slots.push(columns.push(&output, table.input.columns[table_slot].ty));
        }
        if slots.is_empty() {
            return Err(text.error_at(
                spec.columns.span(),
                "the join adds no columns",
                "list the table columns to add: columns = [\"risk\"]",
            ));
        }
        joins.push(JoinPlan {
            table: table_index,
            on_slot,
            table_slots,
            slots,
            required: spec.required,
        });
    }
    Ok(joins)
}

/// The event field a join matches: a field of the events (among the
/// first `events` columns) of the type of the table's key.
fn join_field(
    text: &SpecSource,
    on: &Spanned<String>,
    (columns, events): (&Columns, usize),
    table: &TablePlan,
) -> Result<usize, SpecError> {
    let Some(slot) = columns.slot_of(on.get_ref()).filter(|slot| *slot < events) else {
        return Err(text.error_at(
            on.span(),
            format!(
                "the join with table '{}' is on '{}', which is not a field of the events",
                table.input.name,
                on.get_ref()
            ),
            "join on a field of [schema] (or one an earlier join adds)",
        ));
    };
    let (event_type, key) = (columns.get(slot).ty, &table.input.columns[table.key_slot]);
    if !same_key_type(event_type, key.ty) {
        return Err(text.error_at(
            on.span(),
            format!(
                "the join matches '{}' ({}) against the key '{}' of table '{}' ({}): the types differ, so no key would ever match",
                on.get_ref(),
                event_type.name(),
                key.name,
                table.input.name,
                key.ty.name()
            ),
            "declare both fields with the same type",
        ));
    }
    Ok(slot)
}

/// Whether keys of these types can be equal: the same type, or integers
/// and timestamps (both epoch integers).
fn same_key_type(a: ColumnType, b: ColumnType) -> bool {
    let integer = |ty| matches!(ty, ColumnType::I64 | ColumnType::TimestampMs);
    a == b || (integer(a) && integer(b))
}

/// Resolves every `[[label]]`, adding each label's column and then
/// [`LABEL_COMPLETE`] after all other columns.
pub(super) fn labels(
    text: &SpecSource,
    specs: &[LabelSpec],
    source: &SourcePlan,
    columns: &mut Columns,
) -> Result<(Vec<LabelPlan>, Option<usize>), SpecError> {
    let events = columns.len();
    let mut labels = Vec::new();
    for spec in specs {
        if let SourcePlan::Kafka(kafka) = source
            && kafka.config.end == EndPosition::Never
        {
            return Err(text.error_at(
                spec.name.span(),
                format!(
                    "label '{}' on a live run: a row waits until its horizon has passed, which a run without an end would hold for {} and a live model never sees",
                    spec.name.get_ref(),
                    spec.horizon.get_ref()
                ),
                "run a training set over history: --from <time> --until <time> (or now); without [[label]] the same spec scores live",
            ));
        }
        if columns.is_taken(spec.name.get_ref()) {
            return Err(text.error_at(
                spec.name.span(),
                format!(
                    "label '{}' has the name of an existing column",
                    spec.name.get_ref()
                ),
                "give the label its own name",
            ));
        }
        let (mut input, label_columns) = input(text, spec.input(), source, false)?;
        let field = |name: &Spanned<String>, what: &str| {
            label_columns.slot_of(name.get_ref()).ok_or_else(|| {
                text.error_at(
                    name.span(),
                    format!(
                        "the {what} '{}' of label '{}' is not in its schema",
                        name.get_ref(),
                        spec.name.get_ref()
                    ),
                    "add the field to [label.schema]",
                )
            })
        };
        let key_slot = field(&spec.on, "field matched")?;
        let value_slot = field(&spec.value, "value field")?;
        let on_slot = columns
            .slot_of(spec.on.get_ref())
            .filter(|slot| *slot < events)
            .ok_or_else(|| {
                text.error_at(
                    spec.on.span(),
                    format!(
                        "label '{}' matches '{}', which is not a field of the events",
                        spec.name.get_ref(),
                        spec.on.get_ref()
                    ),
                    "match a field the events and the label records both have",
                )
            })?;
        if !same_key_type(columns.get(on_slot).ty, label_columns.get(key_slot).ty) {
            return Err(text.error_at(
                spec.on.span(),
                format!(
                    "label '{}' matches '{}' of type {} in the events against {} in the label records",
                    spec.name.get_ref(),
                    spec.on.get_ref(),
                    columns.get(on_slot).ty.name(),
                    label_columns.get(key_slot).ty.name()
                ),
                "declare both fields with the same type",
            ));
        }
        let horizon_ms = duration_ms(text, Some(&spec.horizon), "30d")?;
        let ty = label_columns.get(value_slot).ty;
        let default = match &spec.default {
            None => Value::Null,
            Some(default) => label_default(default.get_ref(), ty).ok_or_else(|| {
                text.error_at(
                    default.span(),
                    format!(
                        "the default of label '{}' is not of the type of its value field ({})",
                        spec.name.get_ref(),
                        ty.name()
                    ),
                    "give a default of the value field's type",
                )
            })?,
        };
        input.required_slots.extend([key_slot, value_slot]);
        let slot = columns.push(spec.name.get_ref(), ty);
        labels.push(LabelPlan {
            input,
            on_slot,
            key_slot,
            value_slot,
            horizon_ms,
            default,
            slot,
        });
    }
    let complete = (!labels.is_empty()).then(|| columns.push(LABEL_COMPLETE, ColumnType::Bool));
    Ok((labels, complete))
}

/// A label's default as a value of the label's type.
fn label_default(default: &toml::Value, ty: ColumnType) -> Option<Value> {
    Some(match (ty, default) {
        (ColumnType::I64 | ColumnType::TimestampMs, toml::Value::Integer(number)) => {
            Value::I64(*number)
        }
        (ColumnType::F64, toml::Value::Integer(number)) => Value::F64(*number as f64),
        (ColumnType::F64, toml::Value::Float(number)) => Value::F64(*number),
        (ColumnType::Bool, toml::Value::Boolean(flag)) => Value::Bool(*flag),
        (ColumnType::Str, toml::Value::String(text)) => Value::Str(text.as_str().into()),
        _ => return None,
    })
}

/// Resolves a table's or label's input: its fields, time and reader.
/// `keyed_by_message_key`: the table's key is the Kafka message key.
fn input(
    text: &SpecSource,
    fields: InputFields<'_>,
    events: &SourcePlan,
    keyed_by_message_key: bool,
) -> Result<(InputPlan, Columns), SpecError> {
    let mut columns = Columns::default();
    // Names are the input's own: they may repeat the events' names.
    source::schema(text, fields.schema, &mut columns)?;
    let is_kafka = *fields.input.get_ref() == InputType::Kafka;
    let metadata_slots = if is_kafka {
        let timed = fields.time.get_ref().field.get_ref() == KAFKA_TIMESTAMP;
        kafka_metadata_fields(&mut columns, (keyed_by_message_key, timed))
    } else {
        MetadataSlots::default()
    };
    let EventTime { slot, bound_ms, .. } = source::event_time(text, fields.time, &columns)?;
    if let Some(rows) = &fields.time.get_ref().max_buffered_rows {
        return Err(text.error_at(
            rows.span(),
            format!(
                "'{}': max_buffered_rows belongs to the events' [time]",
                fields.name.get_ref()
            ),
            "set it in [time] of the source: it bounds what the whole run holds",
        ));
    }
    let source = match fields.input.get_ref() {
        InputType::Kafka => kafka_input(text, fields, events)?,
        InputType::Files => files_input(text, fields)?,
    };
    let plan = InputPlan {
        name: fields.name.get_ref().clone(),
        source,
        columns: columns.clone().into_vec(),
        time_slot: slot,
        bound_ms,
        metadata_slots,
        required_slots: vec![slot],
        tombstone_key: None,
    };
    Ok((plan, columns))
}

fn kafka_input(
    text: &SpecSource,
    fields: InputFields<'_>,
    events: &SourcePlan,
) -> Result<SourcePlan, SpecError> {
    let name = fields.name.get_ref();
    if let Some(path) = fields.path {
        return Err(text.error_at(
            path.span(),
            format!("'{name}' reads Kafka and also names a path"),
            "remove path, or set type = \"files\"",
        ));
    }
    if let Some(format) = fields.format
        && *format.get_ref() != InputFormat::Json
    {
        return Err(text.error_at(
            format.span(),
            format!("'{name}' reads Kafka messages, which are json"),
            "set format = \"json\" or leave it out",
        ));
    }
    let Some(topic) = fields.topic else {
        return Err(text.error_at(
            fields.input.span(),
            format!("'{name}' reads Kafka and names no topic"),
            "add topic = \"name\"",
        ));
    };
    let source = match events {
        SourcePlan::Kafka(kafka) => Some(kafka),
        _ => None,
    };
    let brokers = match (fields.brokers, source) {
        (Some(brokers), _) => brokers.get_ref().clone(),
        (None, Some(source)) => source.config.brokers.clone(),
        (None, None) => {
            return Err(text.error_at(
                topic.span(),
                format!("'{name}' reads Kafka and names no brokers (the source is not Kafka)"),
                "add brokers = \"host:port\"",
            ));
        }
    };
    let mut options = source
        .map(|source| source.config.options.clone())
        .unwrap_or_default();
    let own = client_options(fields.options).map_err(|message| {
        text.error_at(topic.span(), message, "quote the value: key = \"value\"")
    })?;
    for (key, value) in own.pairs() {
        options.set(key, value);
    }
    Ok(SourcePlan::Kafka(KafkaPlan {
        config: KafkaSourceConfig {
            brokers,
            topics: vec![topic.get_ref().clone()],
            // Tables and labels commit no offsets: each run reads them
            // from the beginning (or from its checkpoint).
            group_id: format!("tideflow-{name}"),
            options,
            start: StartPosition::Earliest,
            // As far as the events go: a bounded run ends.
            end: source.map_or(EndPosition::Now, |source| source.config.end),
            warm_up: false,
        },
        idle_timeout: source.map_or(Duration::from_secs(5), |source| source.idle_timeout),
        commit_interval: Duration::from_secs(1),
        partitions: None,
    }))
}

fn files_input(text: &SpecSource, fields: InputFields<'_>) -> Result<SourcePlan, SpecError> {
    let name = fields.name.get_ref();
    let Some(path) = fields.path else {
        return Err(text.error_at(
            fields.input.span(),
            format!("'{name}' reads files and names no path"),
            "add path = \"dir/\" (a file, or a directory of partitions)",
        ));
    };
    if let Some(topic) = fields.topic {
        return Err(text.error_at(
            topic.span(),
            format!("'{name}' reads files and also names a topic"),
            "remove topic, or set type = \"kafka\"",
        ));
    }
    let format = match fields.format.map(Spanned::get_ref) {
        Some(InputFormat::Jsonl) => FileFormat::Jsonl,
        Some(InputFormat::Parquet) => FileFormat::Parquet,
        Some(InputFormat::Json) | None => {
            return Err(text.error_at(
                fields.format.map_or(path.span(), Spanned::span),
                format!("'{name}' reads files and needs their format"),
                "set format = \"jsonl\" or \"parquet\"",
            ));
        }
    };
    Ok(SourcePlan::Files {
        path: path.get_ref().clone(),
        format,
        max_record_bytes: 1 << 20,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    /// A training-set spec over Kafka history: transactions joined to a
    /// merchant changelog, with a chargeback label; `{edit}` markers let
    /// each test change one part.
    const SPEC: &str = r#"name = "train"
[source]
type = "kafka"
brokers = "127.0.0.1:9092"
topic = "transactions"
until = "now"
[schema]
tx_id = "string"
merchant_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"

[[table]]
name = "merchants"
type = "kafka"
topic = "merchants"
key = "merchant_id"
[table.schema]
merchant_id = "string"
risk = "f64"
updated_at = "timestamp_ms"
[table.time]
field = "updated_at"

[[join]]
table = "merchants"
on = "merchant_id"
columns = ["risk"]

[[feature]]
name = "risk_mean"
key = "merchant_id"
agg = "mean"
field = "risk"
window = "1h"

[[label]]
name = "is_fraud"
type = "files"
path = "labels/"
format = "jsonl"
on = "tx_id"
value = "fraud"
horizon = "30d"
default = 0
[label.schema]
tx_id = "string"
fraud = "i64"
reported_at = "timestamp_ms"
[label.time]
field = "reported_at"

[[sink]]
type = "kafka"
topic = "out"
"#;

    fn plan(text: &str) -> Result<Plan, SpecError> {
        let source = SpecSource {
            file: "train.toml".into(),
            text: text.to_owned(),
            overrides: Vec::new(),
        };
        Plan::from_spec(&source.parse()?, &source)
    }

    fn refused(text: &str) -> SpecError {
        match plan(text) {
            Ok(_) => panic!("the spec was accepted"),
            Err(error) => error,
        }
    }

    /// The 1-based line of the first line of `text` that starts with
    /// `prefix`.
    fn line_of(text: &str, prefix: &str) -> usize {
        text.lines()
            .position(|line| line.starts_with(prefix))
            .expect("the line is in the spec")
            + 1
    }

    #[test]
    fn joined_columns_follow_the_fields_and_labels_come_last() {
        let plan = plan(SPEC).unwrap_or_else(|error| panic!("{error}"));
        let names: Vec<_> = plan.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tx_id",
                "merchant_id",
                "amount",
                "ts",
                "risk",
                "risk_mean",
                "is_fraud",
                LABEL_COMPLETE
            ]
        );
        assert_eq!(plan.field_count, 4);
        let join = &plan.joins[0];
        assert_eq!(
            (join.on_slot, join.table_slots.clone(), join.slots.clone()),
            (1, vec![1], vec![4])
        );
        assert_eq!(
            plan.stages[0].features[0].field,
            Some(4),
            "a feature reads the joined column"
        );
        let label = &plan.labels[0];
        assert_eq!((label.on_slot, label.key_slot, label.value_slot), (0, 0, 1));
        assert_eq!(label.horizon_ms, 30 * 86_400_000);
        assert_eq!(label.default, Value::I64(0));
        assert_eq!(plan.label_complete_slot, Some(7));
        let table = &plan.tables[0].input;
        let SourcePlan::Kafka(kafka) = &table.source else {
            panic!("a kafka table")
        };
        assert_eq!(
            kafka.config.brokers, "127.0.0.1:9092",
            "the source's brokers"
        );
        assert_eq!(kafka.config.start, StartPosition::Earliest);
        assert_eq!(
            kafka.config.end,
            EndPosition::Now,
            "as far as the events go"
        );
    }

    #[test]
    fn a_join_on_a_missing_field_is_refused_at_its_line() {
        let text = SPEC.replace("on = \"merchant_id\"", "on = \"merchant\"");
        let error = refused(&text);
        assert_eq!(
            error.line,
            Some(line_of(&text, "on = \"merchant\"")),
            "{error}"
        );
        assert!(
            error
                .message
                .contains("'merchant', which is not a field of the events"),
            "{error}"
        );
    }

    #[test]
    fn a_join_between_types_that_never_match_is_refused() {
        let text = SPEC.replace(
            "merchant_id = \"string\"\nrisk",
            "merchant_id = \"i64\"\nrisk",
        );
        let error = refused(&text);
        assert!(error.message.contains("the types differ"), "{error}");
        assert!(
            error.message.contains("(string)") && error.message.contains("(i64)"),
            "{error}"
        );
    }

    #[test]
    fn a_joined_column_named_like_a_field_is_refused_and_a_prefix_resolves_it() {
        let text = SPEC.replace("columns = [\"risk\"]", "columns = [\"merchant_id\"]");
        let error = refused(&text);
        assert!(error.message.contains("'merchant_id'"), "{error}");
        assert!(
            error.hint.as_deref().unwrap_or("").contains("prefix"),
            "{error}"
        );
        let text = text
            .replace(
                "columns = [\"merchant_id\"]",
                "columns = [\"merchant_id\"]\nprefix = \"m_\"",
            )
            .replace("field = \"risk\"", "field = \"amount\"");
        let plan = plan(&text).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(plan.columns[4].name, "m_merchant_id");
    }

    #[test]
    fn a_label_on_a_live_run_is_refused_with_why() {
        let text = SPEC.replace("until = \"now\"\n", "");
        let error = refused(&text);
        assert_eq!(
            error.line,
            Some(line_of(&text, "name = \"is_fraud\"")),
            "{error}"
        );
        assert!(error.message.contains("live run"), "{error}");
        assert!(
            error.hint.as_deref().unwrap_or("").contains("--until"),
            "{error}"
        );
    }

    #[test]
    fn a_sink_error_points_at_its_sink_not_at_the_source() {
        // The source is not Kafka, so the Kafka sink has no brokers.
        let text = SPEC
            .replace(
                "type = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"transactions\"\nuntil = \"now\"",
                "type = \"files\"\npath = \"tx/\"\nformat = \"jsonl\"",
            )
            .replace("type = \"kafka\"\ntopic = \"merchants\"", "type = \"files\"\npath = \"m/\"\nformat = \"jsonl\"");
        let error = refused(&text);
        assert!(error.message.contains("needs brokers"), "{error}");
        let sink = line_of(&text, "[[sink]]");
        assert!(
            error
                .line
                .is_some_and(|line| (sink..=sink + 2).contains(&line)),
            "{error} (the sink is at line {sink})"
        );
    }

    #[test]
    fn a_label_default_of_another_type_is_refused() {
        let error = refused(&SPEC.replace("default = 0", "default = \"no\""));
        assert!(
            error.message.contains("type of its value field (i64)"),
            "{error}"
        );
    }
}
