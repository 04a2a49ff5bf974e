//! Sinks: where output rows and dead letters are written.
//!
//! Each worker writes its own file (`part-<worker>.jsonl` or `.parquet`)
//! in the sink's directory, so workers never contend for a file; readers
//! order rows by (`_partition`, `_offset`). JSON floats are written in
//! their shortest exact form, so they read back bit for bit; JSON has no
//! NaN or infinity, which are written as `null` (Parquet keeps them).
//!
//! A Kafka sink writes each row as one JSON message keyed by the entity key.
//! Writers say how far their output is durable (synced to disk, or
//! acknowledged by the brokers), so that a Kafka source commits offsets only
//! up to outputs that survive a crash.

use crate::batch::{Batch, RowCells, SlotCells};
use crate::checkpoint::EpochFile;
use crate::decode::value_to_json;
use crate::plan::{Plan, SinkPlan};
use crate::row::{DeadLetter, Origins, Row};
use crate::schema::{Column, ColumnType};
use crate::{Error, Result};
use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tideflow_connectors::Value;
use tideflow_connectors::kafka::{KafkaProducer, ProducerRecord};

/// How long finishing a Kafka sink waits for the brokers to acknowledge
/// every record before the run fails.
const KAFKA_FINISH_TIMEOUT: Duration = Duration::from_secs(120);

/// The record header naming the model that scored a row.
pub const MODEL_HEADER: &str = "tideflow-model";

/// Writes rows somewhere.
///
/// Durability is tracked in *sync epochs*: [`RowWriter::sync`] closes the
/// current epoch, and [`RowWriter::is_durable`] says whether everything
/// written up to the end of an epoch would survive a crash (file data
/// synced to disk, Kafka records acknowledged by the brokers).
pub trait RowWriter {
    /// Writes a batch of rows.
    fn write(&mut self, batch: &Batch) -> Result<()>;
    /// Closes the current epoch and returns its number. File data is
    /// synced to disk before this returns; Kafka records are acknowledged
    /// in the background (and earlier delivery failures are reported here).
    fn sync(&mut self) -> Result<u64>;
    /// Whether everything written up to the end of `epoch` is durable.
    fn is_durable(&self, epoch: u64) -> bool;
    /// Flushes and closes; after this the output is complete and durable.
    fn finish(&mut self) -> Result<()>;
    /// Ends the epoch of checkpoint `id`: makes what was written durable
    /// and returns the files that hold it, to be published when the
    /// checkpoint commits. Writers without files of their own (standard
    /// output, Kafka) only make their output durable: they write at least
    /// once, not exactly once.
    fn close_epoch(&mut self, _id: u64) -> Result<Vec<EpochFile>> {
        self.finish()?;
        Ok(Vec::new())
    }
}

/// Where the files of a checkpointed run's epochs go: written under a
/// hidden pending name, unique to the run and the file, and renamed to
/// `<stem>-<checkpoint id>.<extension>` when their checkpoint commits.
#[derive(Debug, Clone)]
struct EpochNames {
    dir: PathBuf,
    /// `part-<worker>` for rows, with a suffix for other writers.
    stem: String,
    extension: &'static str,
    /// Tells this run's pending files from a crashed run's.
    run: u128,
    opened: u64,
}

impl EpochNames {
    fn new(dir: &Path, stem: String, extension: &'static str) -> Self {
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        EpochNames {
            dir: dir.to_path_buf(),
            stem,
            extension,
            run,
            opened: 0,
        }
    }

    /// A fresh pending path.
    fn next_pending(&mut self) -> PathBuf {
        self.opened += 1;
        self.dir.join(format!(
            ".{}-{}-{}.{}{PENDING_SUFFIX}",
            self.stem, self.run, self.opened, self.extension
        ))
    }

    fn published(&self, id: u64) -> PathBuf {
        self.dir
            .join(format!("{}-{id:010}.{}", self.stem, self.extension))
    }
}

/// The end of the names of files that wait for their checkpoint.
const PENDING_SUFFIX: &str = ".pending";

/// Makes a checkpointed run's sink directory ready for a run that starts
/// from checkpoint `restored` (0: none): removes the files of epochs whose
/// checkpoint never committed (pending files a crash left) and those of
/// checkpoints after the one restored (when a newer one was refused), and
/// refuses to start afresh over part files of an earlier run, which it
/// would neither keep apart nor remove.
pub fn prepare_epoch_directory(sink: &SinkPlan, restored: u64) -> Result<()> {
    let (SinkPlan::Jsonl(dir) | SinkPlan::Parquet(dir)) = sink else {
        return Ok(());
    };
    let fail = |error: std::io::Error| sink_error(sink, error);
    std::fs::create_dir_all(dir).map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let checkpoint = name
            .rsplit_once('.')
            .and_then(|(stem, _)| stem.rsplit_once('-'))
            .and_then(|(_, id)| id.parse::<u64>().ok());
        if name.starts_with(".part-") && name.ends_with(PENDING_SUFFIX) {
            std::fs::remove_file(&path).map_err(fail)?;
        } else if name.starts_with("part-") && restored > 0 {
            if checkpoint.is_some_and(|id| id > restored) {
                std::fs::remove_file(&path).map_err(fail)?;
            }
        } else if name.starts_with("part-") {
            return Err(sink_error(
                sink,
                format!(
                    "{} holds outputs of an earlier run, but state.dir has no checkpoint to go on from: a new run would add its rows beside them.\n  fix: remove the directory's part files, or write to another directory",
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

/// A file sink of a checkpointed run: one file per epoch, each published
/// when its checkpoint commits (see [`RowWriter::close_epoch`]).
struct EpochRowWriter {
    sink: SinkPlan,
    layout: Layout,
    names: EpochNames,
    current: Option<(Box<dyn RowWriter>, PathBuf)>,
    epochs: Epochs,
}

impl EpochRowWriter {
    fn current(&mut self) -> Result<&mut Box<dyn RowWriter>> {
        if self.current.is_none() {
            let path = self.names.next_pending();
            let writer = open_file_writer(&self.sink, &self.layout, &path)?;
            self.current = Some((writer, path));
        }
        Ok(&mut self.current.as_mut().expect("opened above").0)
    }
}

impl RowWriter for EpochRowWriter {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        self.current()?.write(batch)
    }

    fn sync(&mut self) -> Result<u64> {
        self.epochs.close()
    }

    fn is_durable(&self, epoch: u64) -> bool {
        self.epochs.closed(epoch)
    }

    fn finish(&mut self) -> Result<()> {
        // A file still open at the end belongs to no committed checkpoint:
        // it is made whole, and stays pending.
        match &mut self.current {
            Some((writer, _)) => writer.finish(),
            None => Ok(()),
        }
    }

    fn close_epoch(&mut self, id: u64) -> Result<Vec<EpochFile>> {
        let Some((mut writer, pending)) = self.current.take() else {
            return Ok(Vec::new());
        };
        writer.finish()?;
        Ok(vec![EpochFile {
            pending,
            published: self.names.published(id),
        }])
    }
}

/// A JSONL or Parquet writer of one file.
fn open_file_writer(sink: &SinkPlan, layout: &Layout, path: &Path) -> Result<Box<dyn RowWriter>> {
    Ok(match sink {
        SinkPlan::Parquet(_) => Box::new(ParquetWriter::create(path, layout.clone(), sink)?),
        _ => Box::new(JsonlWriter::create(path, layout.clone(), sink)?),
    })
}

/// Opens the writer of `sink` for worker `worker` in a checkpointed run:
/// file sinks write a file per epoch.
pub fn open_epoch_row_writer(
    sink: &SinkPlan,
    layout: &Layout,
    worker: usize,
) -> Result<Box<dyn RowWriter>> {
    let extension = match sink {
        SinkPlan::Jsonl(_) => "jsonl",
        SinkPlan::Parquet(_) => "parquet",
        _ => return open_row_writer(sink, layout, worker),
    };
    let (SinkPlan::Jsonl(dir) | SinkPlan::Parquet(dir)) = sink else {
        unreachable!("matched above")
    };
    Ok(Box::new(EpochRowWriter {
        sink: sink.clone(),
        layout: layout.clone(),
        names: EpochNames::new(dir, format!("part-{worker:04}"), extension),
        current: None,
        epochs: Epochs::default(),
    }))
}

/// Removes the part files of an earlier run from a sink's directory and
/// creates it, so that a run's outputs are exactly its own. `owned` says
/// which worker's part files this process may remove: in a cluster that
/// shares the directory, each process removes its own workers' files (the
/// first also those of workers beyond the cluster's), so that no process
/// removes what another has started to write.
pub fn prepare_directory(sink: &SinkPlan, owned: &dyn Fn(usize) -> bool) -> Result<()> {
    let (SinkPlan::Jsonl(dir) | SinkPlan::Parquet(dir)) = sink else {
        return Ok(());
    };
    let fail = |error: std::io::Error| Error::Sink {
        sink: sink.describe(),
        message: error.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        let worker = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("part-"))
            .map(|rest| {
                rest.split('.')
                    .next()
                    .and_then(|index| index.parse::<usize>().ok())
            });
        match worker {
            Some(Some(worker)) if !owned(worker) => {}
            Some(_) => std::fs::remove_file(&path).map_err(fail)?,
            None => {}
        }
    }
    Ok(())
}

/// The output row layout: columns and the model identity for `_model`.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Every column in slot order.
    pub columns: Vec<Column>,
    /// How many columns are schema fields (`_partition` and `_offset`
    /// follow them).
    pub field_count: usize,
    /// `_model`, when a model scores the rows.
    pub model: Option<String>,
    /// The entity key: the record key of Kafka outputs.
    pub key_slot: Option<usize>,
    /// How `_topic` and `_partition` are written.
    pub origins: Origins,
}

impl Layout {
    /// The layout of a plan's outputs.
    pub fn new(plan: &Plan, model: Option<String>) -> Self {
        Layout {
            columns: plan.columns.clone(),
            field_count: plan.field_count,
            model,
            key_slot: plan.entity_key_slot(),
            origins: plan.origins(),
        }
    }

    /// A row as one JSON line (without the newline).
    pub fn json_line(&self, cells: &RowCells<'_, '_>, out: &mut Vec<u8>) {
        let row = cells.row();
        out.push(b'{');
        let mut first = true;
        for (slot, column) in self.columns.iter().enumerate() {
            if slot == self.field_count {
                self.json_origin(row, out, &mut first);
            }
            json_key(out, &mut first, &column.name);
            write_json_value(out, &cells.value(slot));
        }
        if self.field_count == self.columns.len() {
            self.json_origin(row, out, &mut first);
        }
        if let Some(model) = &self.model {
            json_key(out, &mut first, "_model");
            serde_json::to_writer(&mut *out, model).expect("writing to a Vec cannot fail");
        }
        out.push(b'}');
    }

    /// `_topic` (with several topics), `_partition` and `_offset`.
    fn json_origin(&self, row: &Row, out: &mut Vec<u8>, first: &mut bool) {
        let (topic, partition) = self.origins.locate(row.partition);
        if let Some(topic) = topic {
            json_key(out, first, "_topic");
            serde_json::to_writer(&mut *out, topic).expect("writing to a Vec cannot fail");
        }
        json_key(out, first, "_partition");
        out.extend_from_slice(partition.to_string().as_bytes());
        json_key(out, first, "_offset");
        out.extend_from_slice(row.offset.to_string().as_bytes());
    }
}

/// Writes `"name":` after a comma unless it is the object's first key.
fn json_key(out: &mut Vec<u8>, first: &mut bool, name: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    serde_json::to_writer(&mut *out, name).expect("writing to a Vec cannot fail");
    out.push(b':');
}

fn write_json_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::F64(number) if number.is_finite() => {
            serde_json::to_writer(&mut *out, number).expect("writing to a Vec cannot fail")
        }
        other => serde_json::to_writer(&mut *out, &value_to_json(other))
            .expect("writing to a Vec cannot fail"),
    }
}

/// Opens the writer of `sink` for worker `worker`.
pub fn open_row_writer(
    sink: &SinkPlan,
    layout: &Layout,
    worker: usize,
) -> Result<Box<dyn RowWriter>> {
    Ok(match sink {
        SinkPlan::Jsonl(dir) => Box::new(JsonlWriter::create(
            &part_path(dir, worker, "jsonl"),
            layout.clone(),
            sink,
        )?),
        SinkPlan::Parquet(dir) => Box::new(ParquetWriter::create(
            &part_path(dir, worker, "parquet"),
            layout.clone(),
            sink,
        )?),
        SinkPlan::Stdout => Box::new(StreamWriter {
            layout: layout.clone(),
            stderr: false,
            epochs: Epochs::default(),
        }),
        SinkPlan::Stderr => Box::new(StreamWriter {
            layout: layout.clone(),
            stderr: true,
            epochs: Epochs::default(),
        }),
        SinkPlan::Null => Box::new(NullWriter(Epochs::default())),
        SinkPlan::Kafka {
            brokers,
            topic,
            options,
        } => Box::new(KafkaWriter {
            producer: KafkaProducer::open(brokers, topic, options)?,
            epoch: 1,
            layout: layout.clone(),
            value: Vec::new(),
        }),
    })
}

fn part_path(dir: &Path, worker: usize, extension: &str) -> PathBuf {
    dir.join(format!("part-{worker:04}.{extension}"))
}

fn sink_error(sink: &SinkPlan, error: impl std::fmt::Display) -> Error {
    Error::Sink {
        sink: sink.describe(),
        message: error.to_string(),
    }
}

/// The sync epochs of a writer whose data is durable once `sync` returns.
#[derive(Debug, Default)]
struct Epochs {
    closed: u64,
}

impl Epochs {
    fn close(&mut self) -> Result<u64> {
        self.closed += 1;
        Ok(self.closed)
    }

    fn closed(&self, epoch: u64) -> bool {
        epoch <= self.closed
    }
}

/// JSON lines into a file.
struct JsonlWriter {
    file: BufWriter<File>,
    epochs: Epochs,
    layout: Layout,
    sink: SinkPlan,
    line: Vec<u8>,
}

impl JsonlWriter {
    fn create(path: &Path, layout: Layout, sink: &SinkPlan) -> Result<Self> {
        let file = File::create(path)
            .map_err(|error| sink_error(sink, format!("{}: {error}", path.display())))?;
        Ok(JsonlWriter {
            file: BufWriter::with_capacity(1 << 16, file),
            epochs: Epochs::default(),
            layout,
            sink: sink.clone(),
            line: Vec::new(),
        })
    }
}

impl RowWriter for JsonlWriter {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        let readers = batch.readers();
        for index in 0..batch.len() {
            self.line.clear();
            self.layout.json_line(&readers.row(index), &mut self.line);
            self.line.push(b'\n');
            self.file
                .write_all(&self.line)
                .map_err(|error| sink_error(&self.sink, error))?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<u64> {
        self.finish()?;
        self.epochs.close()
    }

    fn is_durable(&self, epoch: u64) -> bool {
        self.epochs.closed(epoch)
    }

    fn finish(&mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(|error| sink_error(&self.sink, error))?;
        self.file
            .get_ref()
            .sync_data()
            .map_err(|error| sink_error(&self.sink, error))
    }
}

/// JSON lines on standard output or error.
struct StreamWriter {
    layout: Layout,
    stderr: bool,
    epochs: Epochs,
}

impl StreamWriter {
    fn failed(&self, error: std::io::Error) -> Error {
        Error::Sink {
            sink: if self.stderr { "stderr" } else { "stdout" }.into(),
            message: error.to_string(),
        }
    }
}

impl RowWriter for StreamWriter {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        let mut text = Vec::new();
        let readers = batch.readers();
        for index in 0..batch.len() {
            self.layout.json_line(&readers.row(index), &mut text);
            text.push(b'\n');
        }
        let written = if self.stderr {
            std::io::stderr().lock().write_all(&text)
        } else {
            std::io::stdout().lock().write_all(&text)
        };
        written.map_err(|error| self.failed(error))
    }

    fn sync(&mut self) -> Result<u64> {
        self.finish()?;
        self.epochs.close()
    }

    fn is_durable(&self, epoch: u64) -> bool {
        self.epochs.closed(epoch)
    }

    fn finish(&mut self) -> Result<()> {
        let flushed = if self.stderr {
            std::io::stderr().flush()
        } else {
            std::io::stdout().flush()
        };
        flushed.map_err(|error| self.failed(error))
    }
}

/// JSON messages to a Kafka topic, keyed by the entity key, with the
/// model's identity in a header.
struct KafkaWriter {
    producer: KafkaProducer,
    /// The current sync epoch: the ticket of records sent now.
    epoch: u64,
    layout: Layout,
    value: Vec<u8>,
}

impl RowWriter for KafkaWriter {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        let model = self.layout.model.as_deref().map(str::as_bytes);
        let headers: Vec<(&str, &[u8])> = model
            .map(|model| (MODEL_HEADER, model))
            .into_iter()
            .collect();
        let mut key = String::new();
        let readers = batch.readers();
        for index in 0..batch.len() {
            let cells = readers.row(index);
            self.value.clear();
            self.layout.json_line(&cells, &mut self.value);
            key.clear();
            let entity = self.layout.key_slot.map(|slot| cells.value(slot));
            let has_key = match entity.as_deref() {
                Some(Value::Str(text)) => {
                    key.push_str(text);
                    true
                }
                Some(Value::Null) | None => false,
                Some(other) => {
                    key.push_str(&value_to_json(other).to_string());
                    true
                }
            };
            self.producer.send(&ProducerRecord {
                key: has_key.then_some(key.as_bytes()),
                value: &self.value,
                headers: &headers,
                partition: None,
                ticket: self.epoch as i64,
            })?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<u64> {
        self.producer.check()?;
        self.epoch += 1;
        Ok(self.epoch - 1)
    }

    fn is_durable(&self, epoch: u64) -> bool {
        self.producer
            .oldest_outstanding()
            .is_none_or(|oldest| oldest > epoch as i64)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(self.producer.flush(KAFKA_FINISH_TIMEOUT)?)
    }
}

/// Counts and drops (for benchmarks).
struct NullWriter(Epochs);

impl RowWriter for NullWriter {
    fn write(&mut self, _batch: &Batch) -> Result<()> {
        Ok(())
    }

    fn sync(&mut self) -> Result<u64> {
        self.0.close()
    }

    fn is_durable(&self, epoch: u64) -> bool {
        self.0.closed(epoch)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Parquet; the Arrow writer decides row groups.
struct ParquetWriter {
    writer: Option<parquet::arrow::ArrowWriter<File>>,
    epochs: Epochs,
    schema: Arc<Schema>,
    layout: Layout,
    sink: SinkPlan,
}

impl ParquetWriter {
    fn create(path: &Path, layout: Layout, sink: &SinkPlan) -> Result<Self> {
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
        let properties = parquet_properties(&schema);
        let writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(properties))
            .map_err(|error| sink_error(sink, error))?;
        Ok(ParquetWriter {
            writer: Some(writer),
            epochs: Epochs::default(),
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
            .map_err(|error| sink_error(&self.sink, error))
    }
}

/// Dictionary encoding only where values repeat: keys, names, flags and
/// small integers. Floats (amounts, features, scores), event times and
/// offsets are nearly all distinct, so a dictionary would hash every value
/// only for the writer to fall back to plain encoding once it fills (a
/// third of an end-to-end run's CPU went to the Parquet sink with it).
fn parquet_properties(schema: &Schema) -> parquet::file::properties::WriterProperties {
    use arrow_schema::DataType;
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
            parquet::file::properties::WriterProperties::builder(),
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
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ArrayBuilder::Str(builder) => Arc::new(builder.finish()),
            ArrayBuilder::I64(builder) => Arc::new(builder.finish()),
            ArrayBuilder::TimestampMs(builder) => Arc::new(builder.finish()),
            ArrayBuilder::F64(builder) => Arc::new(builder.finish()),
            ArrayBuilder::Bool(builder) => Arc::new(builder.finish()),
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
    if let (ColumnType::F64, Some((values, present))) = (ty, cells.floats()) {
        // A computed float column: its vectors are the array.
        return Arc::new(arrow_array::Float64Array::new(
            values.to_vec().into(),
            Some(present.iter().copied().collect()),
        ));
    }
    let mut builder = ArrayBuilder::new(ty, rows);
    for index in 0..rows {
        builder.append(&cells.value(index));
    }
    builder.finish()
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

/// Writes dead letters as JSON lines: `_partition`, `_offset`, `_error`,
/// `_raw`; to a Kafka topic, as the raw record with the reason and origin
/// in headers.
pub struct DeadLetterWriter {
    inner: DeadLetterTarget,
    sink: SinkPlan,
    origin: String,
    origins: Origins,
}

enum DeadLetterTarget {
    File(BufWriter<File>),
    /// A checkpointed run's file per epoch (see [`EpochNames`]).
    Epochs {
        names: EpochNames,
        current: Option<(BufWriter<File>, PathBuf)>,
    },
    Stdout,
    Stderr,
    Discard,
    Kafka(KafkaProducer),
}

/// Sets `name` to bytes that are UTF-8 text, or `name_base64` to others:
/// a dead letter keeps the bytes it came with, not a lossy copy.
fn put_bytes(line: &mut serde_json::Value, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => line[name] = text.into(),
        Err(_) => line[format!("{name}_base64")] = base64(bytes).into(),
    }
}

/// Bytes as a JSON string when they are UTF-8 text, else as
/// `{"base64": "..."}`.
fn bytes_as_json(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(_) => serde_json::json!({ "base64": base64(bytes) }),
    }
}

/// Standard base64 with padding (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = chunk.iter().enumerate().fold(0u32, |word, (index, byte)| {
            word | u32::from(*byte) << (16 - 8 * index)
        });
        for index in 0..4 {
            if index <= chunk.len() {
                text.push(ALPHABET[(word >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// Headers of a dead letter on a Kafka topic.
pub const DEAD_LETTER_HEADERS: [&str; 4] = [
    "tideflow-error",
    "tideflow-source",
    "tideflow-partition",
    "tideflow-offset",
];

impl std::fmt::Debug for DeadLetterWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterWriter")
            .field("sink", &self.sink)
            .finish()
    }
}

impl DeadLetterWriter {
    /// Opens the dead-letter output of worker `worker`; `origin` names the
    /// source (a topic, a path) in Kafka headers, unless `origins` names
    /// each letter's topic.
    pub fn open(sink: &SinkPlan, worker: usize, origin: &str, origins: Origins) -> Result<Self> {
        let inner = match sink {
            SinkPlan::Jsonl(dir) | SinkPlan::Parquet(dir) => {
                let path = part_path(dir, worker, "jsonl");
                let file = File::create(&path)
                    .map_err(|error| sink_error(sink, format!("{}: {error}", path.display())))?;
                DeadLetterTarget::File(BufWriter::new(file))
            }
            SinkPlan::Stdout => DeadLetterTarget::Stdout,
            SinkPlan::Stderr => DeadLetterTarget::Stderr,
            SinkPlan::Null => DeadLetterTarget::Discard,
            SinkPlan::Kafka {
                brokers,
                topic,
                options,
            } => DeadLetterTarget::Kafka(KafkaProducer::open(brokers, topic, options)?),
        };
        Ok(DeadLetterWriter {
            inner,
            sink: sink.clone(),
            origin: origin.to_owned(),
            origins,
        })
    }

    /// Opens the dead-letter output of worker `worker` in a checkpointed
    /// run: in a file sink, one file per epoch, named with `role` (which
    /// operator writes it) so that two writers of a worker never share a
    /// file.
    pub fn open_for_epochs(
        sink: &SinkPlan,
        worker: usize,
        role: &str,
        origin: &str,
        origins: Origins,
    ) -> Result<Self> {
        let (SinkPlan::Jsonl(dir) | SinkPlan::Parquet(dir)) = sink else {
            return DeadLetterWriter::open(sink, worker, origin, origins);
        };
        Ok(DeadLetterWriter {
            inner: DeadLetterTarget::Epochs {
                names: EpochNames::new(dir, format!("part-{worker:04}{role}"), "jsonl"),
                current: None,
            },
            sink: sink.clone(),
            origin: origin.to_owned(),
            origins,
        })
    }

    /// Ends the epoch of checkpoint `id` (see [`RowWriter::close_epoch`]).
    pub fn close_epoch(&mut self, id: u64) -> Result<Vec<EpochFile>> {
        let DeadLetterTarget::Epochs { names, current } = &mut self.inner else {
            self.finish()?;
            return Ok(Vec::new());
        };
        let Some((mut file, pending)) = current.take() else {
            return Ok(Vec::new());
        };
        file.flush()
            .and_then(|()| file.get_ref().sync_data())
            .map_err(|error| sink_error(&self.sink, error))?;
        Ok(vec![EpochFile {
            pending,
            published: names.published(id),
        }])
    }

    /// Writes one dead letter.
    pub fn write(&mut self, letter: &DeadLetter) -> Result<()> {
        let (topic, partition) = self.origins.locate(letter.partition);
        if let DeadLetterTarget::Kafka(producer) = &self.inner {
            let (partition, offset) = (partition.to_string(), letter.offset.to_string());
            let values = [
                letter.error.as_bytes(),
                topic.unwrap_or(&self.origin).as_bytes(),
                partition.as_bytes(),
                offset.as_bytes(),
            ];
            // The record as it came (value, key, its own headers), with
            // the reason and origin in headers of tideflow's.
            let headers: Vec<(&str, &[u8])> = letter
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_slice()))
                .chain(DEAD_LETTER_HEADERS.into_iter().zip(values))
                .collect();
            return Ok(producer.send(&ProducerRecord {
                key: letter.key.as_deref(),
                value: &letter.raw,
                headers: &headers,
                partition: None,
                ticket: 0,
            })?);
        }
        let mut line = serde_json::json!({
            "_partition": partition,
            "_offset": letter.offset,
            "_error": letter.error,
        });
        put_bytes(&mut line, "_raw", &letter.raw);
        if let Some(key) = &letter.key {
            put_bytes(&mut line, "_key", key);
        }
        if !letter.headers.is_empty() {
            let mut headers = serde_json::Map::new();
            for (name, value) in &letter.headers {
                headers.insert(name.clone(), bytes_as_json(value));
            }
            line["_headers"] = headers.into();
        }
        if let Some(topic) = topic {
            line["_topic"] = topic.into();
        }
        let mut text = line.to_string();
        text.push('\n');
        let written = match &mut self.inner {
            DeadLetterTarget::File(file) => file.write_all(text.as_bytes()),
            DeadLetterTarget::Epochs { names, current } => {
                if current.is_none() {
                    let path = names.next_pending();
                    let file = File::create(&path).map_err(|error| {
                        sink_error(&self.sink, format!("{}: {error}", path.display()))
                    })?;
                    *current = Some((BufWriter::new(file), path));
                }
                let (file, _) = current.as_mut().expect("opened above");
                file.write_all(text.as_bytes())
            }
            DeadLetterTarget::Stdout => std::io::stdout().lock().write_all(text.as_bytes()),
            DeadLetterTarget::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
            DeadLetterTarget::Discard | DeadLetterTarget::Kafka(_) => Ok(()),
        };
        written.map_err(|error| sink_error(&self.sink, error))
    }

    /// Flushes to durable storage (for Kafka: waits for every dead letter
    /// to be acknowledged).
    pub fn finish(&mut self) -> Result<()> {
        match &mut self.inner {
            DeadLetterTarget::File(file)
            | DeadLetterTarget::Epochs {
                current: Some((file, _)),
                ..
            } => {
                file.flush()
                    .map_err(|error| sink_error(&self.sink, error))?;
                file.get_ref()
                    .sync_data()
                    .map_err(|error| sink_error(&self.sink, error))?;
            }
            DeadLetterTarget::Epochs { current: None, .. } => {}
            DeadLetterTarget::Kafka(producer) => producer.flush(KAFKA_FINISH_TIMEOUT)?,
            DeadLetterTarget::Stdout | DeadLetterTarget::Stderr | DeadLetterTarget::Discard => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of RFC 4648, section 10.
    #[test]
    fn base64_gives_the_rfc_test_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (bytes, text) in vectors {
            assert_eq!(base64(bytes.as_bytes()), text);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }
}
