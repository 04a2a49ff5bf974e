//! Decoding: raw records into typed rows, or dead letters saying why not.
//!
//! The decoder knows the schema and the format (JSON bytes, or fields
//! already typed by the transport), not where the record came from. Every
//! raw record ends as exactly one row or one dead letter.

mod flat;
mod json;

pub use flat::FlatCell;

use crate::plan::{InputPlan, MetadataSlots, Plan};
use crate::row::{DeadLetter, Row};
use crate::schema::{Column, ColumnType};
use tideflow_connectors::{Cell, CellKind, ColumnCells, ColumnChunk, RawBody, RawRecord, Value};

/// Decodes raw records against a plan's schema.
#[derive(Clone, Debug)]
pub struct Decoder {
    fields: Vec<Column>,
    /// Room made in each row decoded alone: its schema fields.
    row_width: usize,
    time_slot: usize,
    required_slots: Vec<usize>,
    /// A label input's value field, named as such when missing.
    value_slot: Option<usize>,
    /// A Kafka table's key: a message without a value deletes the key
    /// its message key names (see [`Decoder::deletion`]).
    tombstone_key: Option<usize>,
    metadata_slots: MetadataSlots,
}

impl Decoder {
    /// A decoder for the plan's schema.
    pub fn new(plan: &Plan) -> Self {
        Decoder {
            fields: plan.columns[..plan.field_count].to_vec(),
            row_width: plan.field_count,
            time_slot: plan.time_slot,
            required_slots: plan.required_slots.clone(),
            value_slot: None,
            tombstone_key: None,
            metadata_slots: plan.metadata_slots,
        }
    }

    /// A decoder for the schema of a table or label input (whose required
    /// slots are its time, its key, and a label's value).
    pub fn for_input(input: &InputPlan) -> Self {
        Decoder {
            fields: input.columns.clone(),
            row_width: input.columns.len(),
            time_slot: input.time_slot,
            required_slots: input.required_slots.clone(),
            value_slot: input.required_slots.get(2).copied(),
            tombstone_key: input.tombstone_key,
            metadata_slots: input.metadata_slots,
        }
    }

    /// Decodes one record into a row of its schema fields (what stages
    /// compute travels beside it, in its batch's columns). The record
    /// keeps its bytes (typed fields move into the row), so that a row
    /// found late can still be a dead letter with them.
    pub fn decode(&self, record: &mut RawRecord) -> Result<Row, DeadLetter> {
        if let (Some(key_slot), RawBody::Bytes(bytes)) = (self.tombstone_key, &record.body)
            && bytes.is_empty()
        {
            return self.deletion(record, key_slot);
        }
        let mut values = Vec::with_capacity(self.row_width);
        let time = self.decode_fields(record, &mut values)?;
        Ok(Row {
            partition: record.partition,
            offset: record.offset,
            time,
            values,
            warm_up: false,
        })
    }

    /// The schema field types, in slot order: the columns
    /// [`Decoder::decode_fields`] fills.
    pub fn field_types(&self) -> Vec<ColumnType> {
        self.fields.iter().map(|field| field.ty).collect()
    }

    /// Decodes one record's schema fields into `values` (emptied first,
    /// and reused from record to record: a batch's columns take the
    /// values, so no row allocates) and returns its event time. A table's
    /// tombstone is not a record of fields: [`Decoder::decode`] reads it.
    pub fn decode_fields(
        &self,
        record: &mut RawRecord,
        values: &mut Vec<Value>,
    ) -> Result<i64, DeadLetter> {
        values.clear();
        match &mut record.body {
            RawBody::Bytes(bytes) => {
                if let Err(error) = self.decode_json(bytes, values) {
                    let raw = std::mem::take(bytes);
                    return Err(dead_letter(record, error, raw));
                }
            }
            RawBody::Fields(fields) => {
                if let Err(error) = self.check_fields(fields) {
                    let raw = fields_as_json(&self.fields, fields).into_bytes();
                    return Err(dead_letter(record, error, raw));
                }
                // The record's own vector becomes the values: no copy.
                std::mem::swap(values, fields);
            }
            RawBody::Unreadable { reason, prefix } => {
                let (error, raw) = (reason.clone(), std::mem::take(prefix));
                return Err(dead_letter(record, error, raw));
            }
        }
        if let Err(error) = self.fill_metadata(record, values) {
            let raw = self.raw_bytes(record, values);
            return Err(dead_letter(record, error, raw));
        }
        for slot in &self.required_slots {
            if values[*slot].is_null() {
                let role = if *slot == self.time_slot {
                    "event time"
                } else if Some(*slot) == self.value_slot {
                    "label value"
                } else {
                    "key"
                };
                let raw = self.raw_bytes(record, values);
                let error = format!("missing {role} field '{}'", self.fields[*slot].name);
                return Err(dead_letter(record, error, raw));
            }
        }
        match values[self.time_slot] {
            Value::I64(time) => Ok(time),
            _ => {
                let raw = self.raw_bytes(record, values);
                Err(dead_letter(
                    record,
                    "event time is not an integer".into(),
                    raw,
                ))
            }
        }
    }

    /// A chunk's schema fields, to go straight from its columns into a
    /// batch's; `None` where its records must be decoded one by one: a
    /// column cannot be read or holds cells of another type than its
    /// field's (each such record is a dead letter saying so), or fields
    /// come from a record's metadata.
    pub fn chunk_fields<'a>(&'a self, chunk: &'a ColumnChunk) -> Option<ChunkFields<'a>> {
        if !self.fields_are_the_body() {
            return None;
        }
        let mut columns = Vec::with_capacity(self.fields.len());
        for (index, field) in self.fields.iter().enumerate() {
            let cells = chunk.column(index).ok()?;
            let widen = match (field.ty, cells.kind()) {
                (_, CellKind::Missing)
                | (ColumnType::Str, CellKind::Text)
                | (ColumnType::Bool, CellKind::Bool)
                | (ColumnType::F64, CellKind::Float)
                | (ColumnType::I64 | ColumnType::TimestampMs, CellKind::Integer) => false,
                (ColumnType::F64, CellKind::Integer) => true,
                _ => return None,
            };
            columns.push((cells, widen));
        }
        Some(ChunkFields {
            columns,
            time_slot: self.time_slot,
            required_slots: &self.required_slots,
        })
    }

    /// A JSON record's bytes of the common shape (see [`flat`]) whose required
    /// fields are present, scanned into `cells` to go straight into a
    /// batch's columns: its event time, and its text, which the cells'
    /// strings point into. `None` where the record must go through
    /// [`Decoder::decode_fields`], to its row or to its dead letter.
    #[inline]
    pub fn scan_flat<'r>(
        &self,
        bytes: &'r [u8],
        cells: &mut Vec<FlatCell>,
    ) -> Option<(i64, &'r str)> {
        if !self.fields_are_the_body() {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        if !flat::scan_flat(text, &self.fields, cells)
            || self
                .required_slots
                .iter()
                .any(|slot| cells[*slot] == FlatCell::Null)
        {
            return None;
        }
        match cells[self.time_slot] {
            FlatCell::I64(time) => Some((time, text)),
            _ => None,
        }
    }

    /// Whether a record's fields all come from its body: none from its
    /// metadata, and no tombstone to read.
    fn fields_are_the_body(&self) -> bool {
        self.metadata_slots.key.is_none()
            && self.metadata_slots.timestamp.is_none()
            && self.tombstone_key.is_none()
    }

    /// A table's deletion from a Kafka tombstone: a row holding only the
    /// key its message key names (parsed as the key's type), at the
    /// message's timestamp (a tombstone has no time field).
    fn deletion(&self, record: &mut RawRecord, key_slot: usize) -> Result<Row, DeadLetter> {
        let key_field = &self.fields[key_slot];
        let key = record.key.as_deref().map(|bytes| {
            let text =
                std::str::from_utf8(bytes).map_err(|_| "the message key is not valid UTF-8")?;
            match key_field.ty {
                ColumnType::Str => Ok(Value::Str(text.into())),
                ColumnType::Bool => text
                    .parse()
                    .map(Value::Bool)
                    .map_err(|_| "the message key is not a bool"),
                _ => text
                    .parse()
                    .map(Value::I64)
                    .map_err(|_| "the message key is not an integer"),
            }
        });
        let (key, time) = match (key, record.timestamp_ms) {
            (Some(Ok(key)), Some(time)) => (key, time),
            (Some(Err(error)), _) => {
                return Err(dead_letter(
                    record,
                    format!("tombstone: {error}"),
                    Vec::new(),
                ));
            }
            (None, _) => {
                let error = format!(
                    "tombstone without a message key (the '{}' it deletes)",
                    key_field.name
                );
                return Err(dead_letter(record, error, Vec::new()));
            }
            (_, None) => {
                return Err(dead_letter(
                    record,
                    "tombstone without a timestamp".into(),
                    Vec::new(),
                ));
            }
        };
        Ok(Row {
            partition: record.partition,
            offset: record.offset,
            time,
            values: vec![key],
            warm_up: false,
        })
    }

    /// The dead letter of a row decoded from `record` that turned out late
    /// (or otherwise unusable after decoding): the record's bytes, or its
    /// fields as JSON where the transport gave fields.
    pub fn late_letter(
        &self,
        record: &mut RawRecord,
        fields: &[Value],
        error: String,
    ) -> DeadLetter {
        let raw = self.raw_bytes(record, fields);
        dead_letter(record, error, raw)
    }

    /// Fills the fields that come from the record's metadata (the Kafka
    /// message key and timestamp), replacing any body field of that name.
    fn fill_metadata(&self, record: &RawRecord, values: &mut [Value]) -> Result<(), String> {
        if let Some(slot) = self.metadata_slots.key {
            values[slot] = match &record.key {
                None => Value::Null,
                Some(key) => Value::Str(
                    std::str::from_utf8(key)
                        .map_err(|_| "the message key is not valid UTF-8".to_owned())?
                        .into(),
                ),
            };
        }
        if let Some(slot) = self.metadata_slots.timestamp {
            values[slot] = record.timestamp_ms.map_or(Value::Null, Value::I64);
        }
        Ok(())
    }

    fn decode_json(&self, bytes: &[u8], values: &mut Vec<Value>) -> Result<(), String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err("empty record".into());
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|error| format!("not valid UTF-8 (byte {})", error.valid_up_to()))?;
        json::decode_object(text, &self.fields, values)
    }

    /// The original record's bytes, taken from it; typed fields (moved
    /// into `values` by then) are rendered as a JSON object.
    fn raw_bytes(&self, record: &mut RawRecord, values: &[Value]) -> Vec<u8> {
        match &mut record.body {
            RawBody::Bytes(bytes) => std::mem::take(bytes),
            RawBody::Fields(_) => {
                fields_as_json(&self.fields, &values[..self.fields.len().min(values.len())])
                    .into_bytes()
            }
            RawBody::Unreadable { prefix, .. } => std::mem::take(prefix),
        }
    }

    /// Checks typed fields against the schema in place, widening integers
    /// given for float fields.
    fn check_fields(&self, fields: &mut Vec<Value>) -> Result<(), String> {
        if fields.len() != self.fields.len() {
            fields.resize(self.fields.len(), Value::Null);
        }
        for (field, value) in self.fields.iter().zip(fields.iter_mut()) {
            check_typed_value(field, value)?;
        }
        Ok(())
    }
}

/// A chunk's schema fields, each column's cells of its field's type
/// (integers widened for float fields).
#[derive(Debug)]
pub struct ChunkFields<'a> {
    columns: Vec<(ColumnCells<'a>, bool)>,
    time_slot: usize,
    required_slots: &'a [usize],
}

impl<'a> ChunkFields<'a> {
    /// The event time of row `row`, if the row goes straight into
    /// columns: its time and its other required fields are present.
    /// Otherwise its record is decoded alone, to its dead letter.
    #[inline]
    pub fn time(&self, row: usize) -> Option<i64> {
        if self
            .required_slots
            .iter()
            .any(|slot| self.cell(*slot, row) == Cell::Null)
        {
            return None;
        }
        match self.cell(self.time_slot, row) {
            Cell::I64(time) => Some(time),
            _ => None,
        }
    }

    /// The fields of row `row`, in slot order.
    #[inline]
    pub fn cells(&self, row: usize) -> impl Iterator<Item = Cell<'a>> + '_ {
        (0..self.columns.len()).map(move |slot| self.cell(slot, row))
    }

    #[inline]
    fn cell(&self, slot: usize, row: usize) -> Cell<'a> {
        let (cells, widen) = &self.columns[slot];
        match cells.cell(row) {
            Cell::I64(number) if *widen => Cell::F64(number as f64),
            cell => cell,
        }
    }
}

fn check_typed_value(field: &Column, value: &mut Value) -> Result<(), String> {
    match (field.ty, &*value) {
        (_, Value::Null)
        | (ColumnType::Str, Value::Str(_))
        | (ColumnType::Bool, Value::Bool(_))
        | (ColumnType::F64, Value::F64(_))
        | (ColumnType::I64 | ColumnType::TimestampMs, Value::I64(_)) => Ok(()),
        (ColumnType::F64, Value::I64(number)) => {
            *value = Value::F64(*number as f64);
            Ok(())
        }
        (ty, other) => Err(format!(
            "field '{}': expected {}, got {other:?}",
            field.name,
            ty.name()
        )),
    }
}

/// The decoders' tests' schema: its first `count` fields.
#[cfg(test)]
fn test_fields(count: usize) -> Vec<Column> {
    [
        ("name", ColumnType::Str),
        ("amount", ColumnType::F64),
        ("ts", ColumnType::TimestampMs),
        ("ok", ColumnType::Bool),
        ("count", ColumnType::I64),
    ][..count]
        .iter()
        .map(|(name, ty)| Column {
            name: (*name).into(),
            ty: *ty,
        })
        .collect()
}

/// A dead letter of `record` with its key and headers.
fn dead_letter(record: &mut RawRecord, error: String, raw: Vec<u8>) -> DeadLetter {
    DeadLetter {
        partition: record.partition,
        offset: record.offset,
        error,
        raw,
        key: record.key.take(),
        headers: std::mem::take(&mut record.headers),
    }
}

/// Renders typed fields as a JSON object, for dead letters of sources that
/// deliver fields rather than bytes, and of rows whose original bytes are
/// no longer at hand (late records, rows the model failed on).
pub fn fields_as_json(fields: &[Column], values: &[Value]) -> String {
    let object: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .zip(values)
        .map(|(field, value)| (field.name.clone(), value_to_json(value)))
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// A value as JSON; non-finite floats become `null` (JSON has no NaN).
pub fn value_to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(flag) => serde_json::Value::Bool(*flag),
        Value::I64(number) => serde_json::Value::from(*number),
        Value::F64(number) => serde_json::Number::from_f64(*number)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Value::Str(text) => serde_json::Value::String(text.to_string()),
        // A non-finite float in a list is null, as a non-finite float
        // column's value is.
        Value::F64List(list) => list
            .iter()
            .map(|number| value_to_json(&Value::F64(*number)))
            .collect(),
        Value::I64List(list) => list
            .iter()
            .map(|number| serde_json::Value::from(*number))
            .collect(),
    }
}
