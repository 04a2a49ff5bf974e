//! File sources: a file, or a directory whose files are the partitions in
//! name order. JSONL files deliver their lines as bytes (the `decode` stage
//! parses them); Parquet files deliver typed fields, since the format is
//! already columnar and typed.

use crate::record::{PartitionReader, Poll, RawBody, RawRecord, Value};
use crate::{Error, Result};
use arrow_array::{Array, RecordBatch, cast::AsArray, types};
use arrow_schema::{DataType, TimeUnit};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The file formats a file source reads, named in specs `jsonl` and
/// `parquet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The file name extensions that mark a file of this format when a
    /// directory is scanned.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            FileFormat::Jsonl => &["jsonl", "ndjson", "json"],
            FileFormat::Parquet => &["parquet"],
        }
    }
}

/// The partitions of a file source: `path` itself if it is a file, or the
/// files of the directory with a matching extension, sorted by name.
pub fn discover_partitions(path: &Path, format: FileFormat) -> Result<Vec<PathBuf>> {
    let metadata = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    if metadata.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let file = entry.path();
        let matches = file
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| format.extensions().contains(&ext));
        if matches && file.is_file() {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(Error::NoInputFiles {
            path: path.to_owned(),
            extension: format.extensions()[0].to_owned(),
        });
    }
    files.sort();
    Ok(files)
}

/// Opens a reader for one file partition.
pub fn open_partition(
    path: &Path,
    partition: u32,
    format: FileFormat,
    columns: &[String],
    max_record_bytes: usize,
) -> Result<Box<dyn PartitionReader>> {
    Ok(match format {
        FileFormat::Jsonl => Box::new(JsonlReader::open(path, partition, max_record_bytes)?),
        FileFormat::Parquet => Box::new(ParquetReader::open(path, partition, columns)?),
    })
}

/// How many bytes of an over-long line a dead letter keeps.
const UNREADABLE_PREFIX_BYTES: usize = 1024;

/// Reads a JSONL file line by line; the offset of a record is its line index.
pub struct JsonlReader {
    path: PathBuf,
    partition: u32,
    reader: BufReader<File>,
    next_offset: u64,
    bytes_read: u64,
    file_size: u64,
    max_record_bytes: usize,
    finished: bool,
}

impl std::fmt::Debug for JsonlReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlReader")
            .field("path", &self.path)
            .field("next_offset", &self.next_offset)
            .finish()
    }
}

impl JsonlReader {
    /// Opens `path` as partition `partition`. Lines longer than
    /// `max_record_bytes` are delivered as unreadable records.
    pub fn open(path: &Path, partition: u32, max_record_bytes: usize) -> Result<Self> {
        let io_error = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let file_size = file.metadata().map_err(io_error)?.len();
        Ok(JsonlReader {
            path: path.to_owned(),
            partition,
            reader: BufReader::with_capacity(1 << 16, file),
            next_offset: 0,
            bytes_read: 0,
            file_size,
            max_record_bytes,
            finished: false,
        })
    }

    /// Reads the next line without its terminator; `None` at end of file.
    /// A line over the limit is consumed to its end but only its prefix kept.
    fn next_line(&mut self) -> std::io::Result<Option<RawBody>> {
        if let Some(line) = self.whole_line_in_buffer()? {
            return Ok(Some(RawBody::Bytes(line)));
        }
        let mut line = Vec::new();
        let mut total = 0usize;
        let mut saw_any = false;
        loop {
            let buffer = self.reader.fill_buf()?;
            if buffer.is_empty() {
                break;
            }
            saw_any = true;
            let (chunk, found_newline) = match memchr_newline(buffer) {
                Some(at) => (&buffer[..at], true),
                None => (buffer, false),
            };
            total += chunk.len();
            if total <= self.max_record_bytes {
                line.extend_from_slice(chunk);
            } else {
                line.truncate(UNREADABLE_PREFIX_BYTES);
                let room = UNREADABLE_PREFIX_BYTES - line.len();
                line.extend_from_slice(&chunk[..room.min(chunk.len())]);
            }
            let consumed = chunk.len() + usize::from(found_newline);
            self.reader.consume(consumed);
            self.bytes_read += consumed as u64;
            if found_newline {
                break;
            }
        }
        if !saw_any {
            return Ok(None);
        }
        if line.last() == Some(&b'\r') && total <= self.max_record_bytes {
            line.pop();
        }
        if total > self.max_record_bytes {
            let reason = format!(
                "record of {total} bytes exceeds max_record_bytes = {}",
                self.max_record_bytes
            );
            return Ok(Some(RawBody::Unreadable {
                reason,
                prefix: line,
            }));
        }
        Ok(Some(RawBody::Bytes(line)))
    }

    /// The common case, taken without a loop: the next line lies whole in
    /// the read buffer and within the limit, and is copied out once, into
    /// a vector of its size.
    fn whole_line_in_buffer(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let buffer = self.reader.fill_buf()?;
        let Some(at) = memchr_newline(buffer).filter(|at| *at <= self.max_record_bytes) else {
            return Ok(None);
        };
        let text = &buffer[..at];
        let line = text.strip_suffix(b"\r").unwrap_or(text).to_vec();
        self.reader.consume(at + 1);
        self.bytes_read += at as u64 + 1;
        Ok(Some(line))
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', bytes)
}

impl PartitionReader for JsonlReader {
    fn partition(&self) -> u32 {
        self.partition
    }

    fn poll(&mut self, out: &mut Vec<RawRecord>, max_records: usize) -> Result<Poll> {
        if self.finished {
            return Ok(Poll::Finished);
        }
        for _ in 0..max_records {
            let line = self.next_line().map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
            let Some(body) = line else {
                self.finished = true;
                return Ok(if out.is_empty() {
                    Poll::Finished
                } else {
                    Poll::Ready
                });
            };
            out.push(RawRecord {
                partition: self.partition,
                offset: self.next_offset,
                timestamp_ms: None,
                key: None,
                headers: Vec::new(),
                body,
            });
            self.next_offset += 1;
        }
        Ok(Poll::Ready)
    }

    fn is_behind(&self) -> bool {
        !self.finished
    }

    fn progress(&self) -> (u64, Option<u64>) {
        (self.bytes_read, Some(self.file_size))
    }
}

/// Reads a Parquet file batch by batch; the offset of a record is its row
/// index in the file.
pub struct ParquetReader {
    path: PathBuf,
    partition: u32,
    columns: Vec<String>,
    batches: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    current: Option<RecordBatch>,
    row_in_batch: usize,
    next_offset: u64,
    total_rows: u64,
    finished: bool,
}

impl std::fmt::Debug for ParquetReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetReader")
            .field("path", &self.path)
            .field("next_offset", &self.next_offset)
            .finish()
    }
}

impl ParquetReader {
    /// Opens `path` as partition `partition`, delivering `columns` in order.
    pub fn open(path: &Path, partition: u32, columns: &[String]) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let parquet_error = |error: parquet::errors::ParquetError| Error::Parquet {
            path: path.to_owned(),
            message: error.to_string(),
        };
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(parquet_error)?;
        let total_rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let batches = builder
            .with_batch_size(8192)
            .build()
            .map_err(parquet_error)?;
        Ok(ParquetReader {
            path: path.to_owned(),
            partition,
            columns: columns.to_vec(),
            batches,
            current: None,
            row_in_batch: 0,
            next_offset: 0,
            total_rows,
            finished: false,
        })
    }

    fn row_body(&self, batch: &RecordBatch, row: usize) -> RawBody {
        let mut fields = Vec::with_capacity(self.columns.len());
        for name in &self.columns {
            let Some(column) = batch.column_by_name(name) else {
                fields.push(Value::Null);
                continue;
            };
            match arrow_value(column.as_ref(), row) {
                Ok(value) => fields.push(value),
                Err(data_type) => {
                    let reason = format!(
                        "column '{name}' has Parquet type {data_type}, which tideflow cannot read"
                    );
                    return RawBody::Unreadable {
                        reason,
                        prefix: Vec::new(),
                    };
                }
            }
        }
        RawBody::Fields(fields)
    }
}

/// The value at `row` of an Arrow array, or the array's type if tideflow
/// has no value for it.
fn arrow_value(array: &dyn Array, row: usize) -> std::result::Result<Value, DataType> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    let value = match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => Value::I64(array.as_primitive::<types::Int8Type>().value(row).into()),
        DataType::Int16 => Value::I64(array.as_primitive::<types::Int16Type>().value(row).into()),
        DataType::Int32 => Value::I64(array.as_primitive::<types::Int32Type>().value(row).into()),
        DataType::Int64 => Value::I64(array.as_primitive::<types::Int64Type>().value(row)),
        DataType::UInt8 => Value::I64(array.as_primitive::<types::UInt8Type>().value(row).into()),
        DataType::UInt16 => Value::I64(array.as_primitive::<types::UInt16Type>().value(row).into()),
        DataType::UInt32 => Value::I64(array.as_primitive::<types::UInt32Type>().value(row).into()),
        DataType::UInt64 => {
            match i64::try_from(array.as_primitive::<types::UInt64Type>().value(row)) {
                Ok(value) => Value::I64(value),
                Err(_) => return Err(DataType::UInt64),
            }
        }
        DataType::Float32 => {
            Value::F64(array.as_primitive::<types::Float32Type>().value(row).into())
        }
        DataType::Float64 => Value::F64(array.as_primitive::<types::Float64Type>().value(row)),
        DataType::Utf8 => Value::Str(array.as_string::<i32>().value(row).into()),
        DataType::LargeUtf8 => Value::Str(array.as_string::<i64>().value(row).into()),
        DataType::Utf8View => Value::Str(array.as_string_view().value(row).into()),
        DataType::Timestamp(unit, _) => {
            let raw = match unit {
                TimeUnit::Second => array
                    .as_primitive::<types::TimestampSecondType>()
                    .value(row)
                    .saturating_mul(1000),
                TimeUnit::Millisecond => array
                    .as_primitive::<types::TimestampMillisecondType>()
                    .value(row),
                TimeUnit::Microsecond => {
                    array
                        .as_primitive::<types::TimestampMicrosecondType>()
                        .value(row)
                        / 1000
                }
                TimeUnit::Nanosecond => {
                    array
                        .as_primitive::<types::TimestampNanosecondType>()
                        .value(row)
                        / 1_000_000
                }
            };
            Value::I64(raw)
        }
        DataType::Date32 => {
            Value::I64(i64::from(array.as_primitive::<types::Date32Type>().value(row)) * 86_400_000)
        }
        DataType::Date64 => Value::I64(array.as_primitive::<types::Date64Type>().value(row)),
        other => return Err(other.clone()),
    };
    Ok(value)
}

impl PartitionReader for ParquetReader {
    fn partition(&self) -> u32 {
        self.partition
    }

    fn poll(&mut self, out: &mut Vec<RawRecord>, max_records: usize) -> Result<Poll> {
        let mut produced = 0;
        while produced < max_records {
            let batch = match &self.current {
                Some(batch) if self.row_in_batch < batch.num_rows() => batch.clone(),
                _ => match self.batches.next() {
                    Some(Ok(batch)) => {
                        self.current = Some(batch);
                        self.row_in_batch = 0;
                        continue;
                    }
                    Some(Err(error)) => {
                        return Err(Error::Parquet {
                            path: self.path.clone(),
                            message: error.to_string(),
                        });
                    }
                    None => {
                        self.finished = true;
                        break;
                    }
                },
            };
            let end = batch
                .num_rows()
                .min(self.row_in_batch + (max_records - produced));
            for row in self.row_in_batch..end {
                let body = self.row_body(&batch, row);
                out.push(RawRecord {
                    partition: self.partition,
                    offset: self.next_offset,
                    timestamp_ms: None,
                    key: None,
                    headers: Vec::new(),
                    body,
                });
                self.next_offset += 1;
                produced += 1;
            }
            self.row_in_batch = end;
        }
        Ok(if produced == 0 && self.finished {
            Poll::Finished
        } else {
            Poll::Ready
        })
    }

    fn is_behind(&self) -> bool {
        !self.finished
    }

    fn progress(&self) -> (u64, Option<u64>) {
        (self.next_offset, Some(self.total_rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(reader: &mut dyn PartitionReader) -> Vec<RawRecord> {
        let mut out = Vec::new();
        while reader.poll(&mut out, 3).unwrap() != Poll::Finished {}
        out
    }

    #[test]
    fn jsonl_lines_keep_their_offsets_and_overlong_lines_become_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let mut file = File::create(&path).unwrap();
        writeln!(file, "{{\"a\":1}}\r").unwrap();
        writeln!(file).unwrap();
        writeln!(file, "{}", "x".repeat(5000)).unwrap();
        write!(file, "{{\"a\":2}}").unwrap();
        drop(file);
        let mut reader = JsonlReader::open(&path, 7, 4096).unwrap();
        let records = read_all(&mut reader);
        assert_eq!(records.len(), 4);
        assert!(
            records
                .iter()
                .enumerate()
                .all(|(index, r)| r.offset == index as u64 && r.partition == 7)
        );
        assert!(matches!(&records[0].body, RawBody::Bytes(b) if b == b"{\"a\":1}"));
        assert!(matches!(&records[1].body, RawBody::Bytes(b) if b.is_empty()));
        match &records[2].body {
            RawBody::Unreadable { reason, prefix } => {
                assert!(reason.contains("5000 bytes"), "{reason}");
                assert_eq!(prefix.len(), UNREADABLE_PREFIX_BYTES);
            }
            other => panic!("expected unreadable, got {other:?}"),
        }
        assert!(matches!(&records[3].body, RawBody::Bytes(b) if b == b"{\"a\":2}"));
    }

    /// Lines that straddle the end of the read buffer (64 KiB) read back
    /// whole, as lines found inside it do.
    #[test]
    fn lines_across_the_read_buffer_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let lines: Vec<String> = (0..3000)
            .map(|index| format!("{{\"n\":{index},\"pad\":\"{}\"}}", "y".repeat(index % 97)))
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        let mut reader = JsonlReader::open(&path, 0, 4096).unwrap();
        let read: Vec<Vec<u8>> = read_all(&mut reader)
            .into_iter()
            .map(|record| match record.body {
                RawBody::Bytes(bytes) => bytes,
                other => panic!("expected bytes, got {other:?}"),
            })
            .collect();
        let expected: Vec<Vec<u8>> = lines.into_iter().map(String::into_bytes).collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn directory_partitions_are_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.jsonl", "a.jsonl", "c.txt"] {
            File::create(dir.path().join(name)).unwrap();
        }
        let files = discover_partitions(dir.path(), FileFormat::Jsonl).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.jsonl", "b.jsonl"]);
        let error = discover_partitions(dir.path(), FileFormat::Parquet).unwrap_err();
        assert!(error.to_string().contains("no input files"), "{error}");
    }
}
