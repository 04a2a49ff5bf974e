//! The Arrow/Parquet format: rows as typed Arrow columns, written to a
//! Parquet file whose row groups the Arrow writer decides.

use super::{BackgroundSync, Epochs, Layout, RowWriter, sink_error};
use crate::Result;
use crate::batch::{Batch, SlotCells, Strings};
use crate::plan::{ParquetCompression, SinkPlan};
use crate::row::{Origins, Row};
use crate::schema::ColumnType;
use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer};
use arrow_schema::{Field, Schema};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use tideflow_connectors::Value;

/// Parquet; the Arrow writer decides row groups.
pub(super) struct ParquetWriter {
    writer: Option<parquet::arrow::ArrowWriter<File>>,
    epochs: Epochs,
    /// Writes the file behind the writer (see [`BackgroundSync`]).
    syncer: BackgroundSync,
    /// What the Parquet writer had written at the last batch.
    bytes_written: usize,
    schema: Arc<Schema>,
    layout: Layout,
    sink: SinkPlan,
}

impl ParquetWriter {
    pub(super) fn create(path: &Path, layout: Layout, sink: &SinkPlan) -> Result<Self> {
        let origin_fields = |fields: &mut Vec<Field>| {
            if layout.origins.has_topic() {
                fields.push(Field::new("_topic", arrow_schema::DataType::Utf8, false));
            }
            fields.push(Field::new(
                "_partition",
                arrow_schema::DataType::Int64,
                false,
            ));
            fields.push(Field::new("_offset", arrow_schema::DataType::Int64, false));
        };
        let mut fields = Vec::new();
        for (slot, column) in layout.columns.iter().enumerate() {
            if slot == layout.field_count {
                origin_fields(&mut fields);
            }
            fields.push(Field::new(&column.name, column.ty.arrow_type(), true));
        }
        if layout.field_count == layout.columns.len() {
            origin_fields(&mut fields);
        }
        if layout.model.is_some() {
            fields.push(Field::new("_model", arrow_schema::DataType::Utf8, false));
        }
        let schema = Arc::new(Schema::new(fields));
        let file = File::create(path)
            .map_err(|error| sink_error(sink, format!("{}: {error}", path.display())))?;
        let compression = match sink {
            SinkPlan::Parquet { compression, .. } => *compression,
            _ => ParquetCompression::None,
        };
        let properties = parquet_properties(&schema, compression);
        let writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(properties))
            .map_err(|error| sink_error(sink, error))?;
        Ok(ParquetWriter {
            writer: Some(writer),
            epochs: Epochs::default(),
            syncer: BackgroundSync::default(),
            bytes_written: 0,
            schema,
            layout,
            sink: sink.clone(),
        })
    }

    /// Converts rows to one Arrow batch and hands it to the Parquet writer,
    /// which gathers batches into row groups itself.
    fn write_batch(&mut self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows = batch.rows();
        let mut arrays = self.column_arrays(batch);
        let origin_at = self.layout.field_count.min(arrays.len());
        arrays.splice(
            origin_at..origin_at,
            origin_arrays(&self.layout.origins, rows),
        );
        if let Some(model) = &self.layout.model {
            arrays.push(Arc::new(arrow_array::StringArray::from(vec![
                model.as_str();
                rows.len()
            ])));
        }
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|error| sink_error(&self.sink, error))?;
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| sink_error(&self.sink, "written after finish"))?;
        writer
            .write(&batch)
            .map_err(|error| sink_error(&self.sink, error))?;
        let written = writer.bytes_written();
        let bytes = written.saturating_sub(self.bytes_written) as u64;
        self.bytes_written = written;
        self.syncer
            .write_behind(writer.inner(), bytes)
            .map_err(|error| sink_error(&self.sink, error))
    }
}

/// Rows per row group. The writer holds a row group's encoded pages in
/// memory until it is full: at the crate's default (a million rows) every
/// file's first million rows land in memory the system must first clear,
/// while smaller groups reuse the memory the last one freed.
const ROW_GROUP_ROWS: usize = 1 << 17;

/// How large a column chunk's dictionary grows before the writer falls
/// back to plain encoding for the rest of the chunk. At the crate's
/// default (1 MiB) a column of many distinct strings (user ids) hashed
/// every value into a table far larger than the cache for indices a few
/// bytes shorter than the strings; 16 KiB keeps dictionaries for columns
/// whose values repeat (merchants, labels, counts, the model's name).
/// Release build, 2M events, fraud JSONL -> features -> MLP -> Parquet, 1
/// worker, 3 rounds: 20k users 4.73-4.86 s -> 4.44-4.57 s, files 199 ->
/// 219 MB; 100k users 4.76-5.02 s -> 4.33-4.42 s, 210 -> 219 MB.
const DICTIONARY_BYTES: usize = 16 << 10;

/// Dictionary encoding only where values repeat: keys, names, flags and
/// small integers. Floats (amounts, features, scores), event times and
/// offsets are nearly all distinct, so a dictionary would hash every value
/// only for the writer to fall back to plain encoding once it fills (a
/// third of an end-to-end run's CPU went to the Parquet sink with it).
fn parquet_properties(
    schema: &Schema,
    compression: ParquetCompression,
) -> parquet::file::properties::WriterProperties {
    use arrow_schema::DataType;
    use parquet::basic::{Compression, ZstdLevel};
    let compression = match compression {
        ParquetCompression::None => Compression::UNCOMPRESSED,
        ParquetCompression::Snappy => Compression::SNAPPY,
        ParquetCompression::Zstd(level) => Compression::ZSTD(
            // The plan accepts only the levels zstd takes.
            ZstdLevel::try_new(level).expect("a zstd level the plan checked"),
        ),
    };
    schema
        .fields()
        .iter()
        .filter(|field| {
            matches!(
                field.data_type(),
                DataType::Float64 | DataType::Timestamp(..)
            ) || field.name() == "_offset"
        })
        .fold(
            parquet::file::properties::WriterProperties::builder()
                .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                .set_dictionary_page_size_limit(DICTIONARY_BYTES)
                .set_compression(compression),
            |properties, field| {
                properties.set_column_dictionary_enabled(
                    parquet::schema::types::ColumnPath::from(field.name().as_str()),
                    false,
                )
            },
        )
        .build()
}

impl ParquetWriter {
    /// The Arrow arrays of the layout's columns, in order. Columns the rows
    /// hold are read in one pass over the rows, so that each row's values
    /// come from memory once rather than once per column (rows that
    /// travelled alone carry every earlier stage's values).
    fn column_arrays(&self, batch: &Batch) -> Vec<ArrayRef> {
        let rows = batch.rows();
        let mut arrays: Vec<Option<ArrayRef>> = Vec::new();
        let mut from_rows: Vec<(usize, ArrayBuilder)> = Vec::new();
        for (slot, column) in self.layout.columns.iter().enumerate() {
            match batch.cells(slot) {
                SlotCells::Rows(..) => {
                    from_rows.push((slot, ArrayBuilder::new(column.ty, rows.len())));
                    arrays.push(None);
                }
                cells => arrays.push(Some(column_array(column.ty, cells, rows.len()))),
            }
        }
        for row in rows {
            for (slot, builder) in &mut from_rows {
                builder.append(row.cell(*slot));
            }
        }
        for (slot, mut builder) in from_rows {
            arrays[slot] = Some(builder.finish());
        }
        arrays.into_iter().flatten().collect()
    }
}

/// The arrays of the rows' origin: `_topic` (where the source reads
/// several topics), `_partition` and `_offset`.
fn origin_arrays(origins: &Origins, rows: &[Row]) -> Vec<ArrayRef> {
    let mut arrays: Vec<ArrayRef> = Vec::new();
    if origins.has_topic() {
        arrays.push(Arc::new(
            rows.iter()
                .map(|row| origins.locate(row.partition).0)
                .collect::<arrow_array::StringArray>(),
        ));
    }
    arrays.push(Arc::new(
        rows.iter()
            .map(|row| Some(i64::from(origins.locate(row.partition).1)))
            .collect::<arrow_array::Int64Array>(),
    ));
    arrays.push(Arc::new(
        rows.iter()
            .map(|row| Some(row.offset as i64))
            .collect::<arrow_array::Int64Array>(),
    ));
    arrays
}

/// Builds the Arrow array of one column a value at a time.
enum ArrayBuilder {
    Str(StringBuilder),
    I64(Int64Builder),
    TimestampMs(TimestampMillisecondBuilder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    F64List(ListBuilder<Float64Builder>),
    I64List(ListBuilder<Int64Builder>),
}

impl ArrayBuilder {
    fn new(ty: ColumnType, rows: usize) -> Self {
        match ty {
            ColumnType::Str => ArrayBuilder::Str(StringBuilder::with_capacity(rows, rows * 8)),
            ColumnType::I64 => ArrayBuilder::I64(Int64Builder::with_capacity(rows)),
            ColumnType::TimestampMs => {
                ArrayBuilder::TimestampMs(TimestampMillisecondBuilder::with_capacity(rows))
            }
            ColumnType::F64 => ArrayBuilder::F64(Float64Builder::with_capacity(rows)),
            ColumnType::Bool => ArrayBuilder::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::F64List => {
                ArrayBuilder::F64List(ListBuilder::with_capacity(Float64Builder::new(), rows))
            }
            ColumnType::I64List => {
                ArrayBuilder::I64List(ListBuilder::with_capacity(Int64Builder::new(), rows))
            }
        }
    }

    /// Appends a value; one of another type is null (rows were checked
    /// against the schema when decoded, so only nulls land here).
    fn append(&mut self, value: &Value) {
        match (self, value) {
            (ArrayBuilder::Str(builder), Value::Str(text)) => builder.append_value(text),
            (ArrayBuilder::Str(builder), _) => builder.append_null(),
            (ArrayBuilder::I64(builder), value) => builder.append_option(integer(value)),
            (ArrayBuilder::TimestampMs(builder), value) => builder.append_option(integer(value)),
            (ArrayBuilder::F64(builder), value) => builder.append_option(value.as_f64()),
            (ArrayBuilder::Bool(builder), Value::Bool(flag)) => builder.append_value(*flag),
            (ArrayBuilder::Bool(builder), _) => builder.append_null(),
            (ArrayBuilder::F64List(builder), Value::F64List(list)) => {
                builder.values().append_slice(list);
                builder.append(true);
            }
            (ArrayBuilder::F64List(builder), _) => builder.append_null(),
            (ArrayBuilder::I64List(builder), Value::I64List(list)) => {
                builder.values().append_slice(list);
                builder.append(true);
            }
            (ArrayBuilder::I64List(builder), _) => builder.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ArrayBuilder::Str(builder) => Arc::new(builder.finish()),
            ArrayBuilder::I64(builder) => Arc::new(builder.finish()),
            ArrayBuilder::TimestampMs(builder) => Arc::new(builder.finish()),
            ArrayBuilder::F64(builder) => Arc::new(builder.finish()),
            ArrayBuilder::Bool(builder) => Arc::new(builder.finish()),
            ArrayBuilder::F64List(builder) => Arc::new(builder.finish()),
            ArrayBuilder::I64List(builder) => Arc::new(builder.finish()),
        }
    }
}

fn integer(value: &Value) -> Option<i64> {
    if let Value::I64(number) = value {
        Some(*number)
    } else {
        None
    }
}

/// The Arrow array of one output column of a batch.
fn column_array(ty: ColumnType, cells: SlotCells<'_>, rows: usize) -> ArrayRef {
    // A typed column's vectors are the array, copied whole.
    match ty {
        ColumnType::F64 if let Some((values, present)) = cells.floats() => {
            return Arc::new(arrow_array::Float64Array::new(
                values.to_vec().into(),
                nulls(present),
            ));
        }
        ColumnType::I64 if let Some((values, present)) = cells.integers() => {
            return Arc::new(arrow_array::Int64Array::new(
                values.to_vec().into(),
                nulls(present),
            ));
        }
        ColumnType::TimestampMs if let Some((values, present)) = cells.integers() => {
            return Arc::new(arrow_array::TimestampMillisecondArray::new(
                values.to_vec().into(),
                nulls(present),
            ));
        }
        ColumnType::Str if let Some(array) = cells.strings().and_then(string_array) => {
            return Arc::new(array);
        }
        _ => {}
    }
    let mut builder = ArrayBuilder::new(ty, rows);
    for index in 0..rows {
        builder.append(&cells.value(index));
    }
    builder.finish()
}

/// The Arrow array of a string column: its text and ends are the array's
/// values and offsets (`None` past the 2 GiB an array's offsets reach).
fn string_array(strings: &Strings) -> Option<arrow_array::StringArray> {
    let (text, ends, present) = strings.parts();
    let offsets: Vec<i32> = std::iter::once(Some(0))
        .chain(ends.iter().map(|end| i32::try_from(*end).ok()))
        .collect::<Option<_>>()?;
    Some(arrow_array::StringArray::new(
        OffsetBuffer::new(offsets.into()),
        Buffer::from(text.as_bytes()),
        nulls(present),
    ))
}

/// The null buffer of cells, each present or not: none where all are
/// (most computed columns), so that the Parquet writer fills their
/// definition levels at once rather than reading a flag per value.
fn nulls(present: &[bool]) -> Option<NullBuffer> {
    if present.iter().all(|present| *present) {
        None
    } else {
        Some(present.iter().copied().collect())
    }
}

impl RowWriter for ParquetWriter {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        self.write_batch(batch)
    }

    fn sync(&mut self) -> Result<u64> {
        self.epochs.close()
    }

    fn is_durable(&self, _epoch: u64) -> bool {
        // A Parquet file is readable only once its footer is written.
        self.writer.is_none()
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(failure) = self.syncer.failure() {
            return Err(sink_error(&self.sink, failure));
        }
        if let Some(writer) = self.writer.take() {
            let file = writer
                .into_inner()
                .map_err(|error| sink_error(&self.sink, error))?;
            file.sync_data()
                .map_err(|error| sink_error(&self.sink, error))?;
        }
        Ok(())
    }
}
