//! File sources: a file, or a directory whose files are the partitions in
//! name order. JSONL files deliver their lines as bytes (the `decode` stage
//! parses them); Parquet files deliver their columns as Arrow arrays (see
//! [`crate::columnar`]), or, polled, typed fields, since the format is
//! already columnar and typed.

use crate::columnar::{ColumnChunk, ColumnReader};
use crate::record::{PartitionReader, Poll, RawBody, RawRecord};
use crate::{Error, Result};
use arrow_array::ArrayRef;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A reader whose records are lines of text, read where they lie in its
/// buffer: a JSONL file read without a vector for each line.
pub trait LineReader {
    /// The whole lines at the front of the read buffer, which is filled
    /// first when empty. None are given where the next line does not end
    /// in the buffer, is longer than a record may be, or the file has
    /// ended: that record is polled ([`PartitionReader::poll`]).
    fn whole_lines(&mut self) -> Result<WholeLines<'_>>;

    /// Marks what [`WholeLines::taken`] says was taken as read.
    fn consume_lines(&mut self, taken: TakenLines);
}

/// Whole lines of a read buffer, taken one at a time.
#[derive(Debug)]
pub struct WholeLines<'a> {
    partition: u32,
    first_offset: u64,
    bytes: &'a [u8],
    max_record_bytes: usize,
    taken: TakenLines,
}

/// How many lines, and bytes with their newlines, were taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TakenLines {
    pub lines: u64,
    pub bytes: usize,
}

impl<'a> WholeLines<'a> {
    /// The partition the lines belong to.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The offset the next line taken has.
    pub fn next_offset(&self) -> u64 {
        self.first_offset + self.taken.lines
    }

    /// The next line, without its newline (nor a `\r` before it), as a
    /// polled record's bytes would be; `None` at the end of the whole
    /// lines, or before one longer than a record may be.
    #[inline]
    pub fn next_line(&mut self) -> Option<&'a [u8]> {
        let rest = &self.bytes[self.taken.bytes..];
        let at = memchr_newline(rest).filter(|at| *at <= self.max_record_bytes)?;
        self.taken.lines += 1;
        self.taken.bytes += at + 1;
        let text = &rest[..at];
        Some(text.strip_suffix(b"\r").unwrap_or(text))
    }

    /// What was taken, for [`LineReader::consume_lines`].
    pub fn taken(&self) -> TakenLines {
        self.taken
    }
}

impl LineReader for JsonlReader {
    fn whole_lines(&mut self) -> Result<WholeLines<'_>> {
        let buffer = self.reader.fill_buf().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        let whole = memchr::memrchr(b'\n', buffer).map_or(0, |last| last + 1);
        Ok(WholeLines {
            partition: self.partition,
            first_offset: self.next_offset,
            bytes: &buffer[..whole],
            max_record_bytes: self.max_record_bytes,
            taken: TakenLines::default(),
        })
    }

    fn consume_lines(&mut self, taken: TakenLines) {
        self.reader.consume(taken.bytes);
        self.bytes_read += taken.bytes as u64;
        self.next_offset += taken.lines;
    }
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

    fn lines(&mut self) -> Option<&mut dyn LineReader> {
        Some(self)
    }
}

/// Reads a Parquet file batch by batch, only the columns it was opened
/// with; the offset of a record is its row index in the file. Its records
/// come as columns ([`ColumnReader`]) or, polled, one by one.
pub struct ParquetReader {
    path: PathBuf,
    partition: u32,
    columns: Arc<[String]>,
    batches: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    /// The batch being read: its arrays of the named columns, and rows.
    current: Vec<Option<ArrayRef>>,
    rows_in_batch: usize,
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

/// Rows the Parquet reader decodes at a time.
const PARQUET_BATCH_ROWS: usize = 8192;

impl ParquetReader {
    /// Opens `path` as partition `partition`, delivering `columns` in order.
    pub fn open(path: &Path, partition: u32, columns: &[String]) -> Result<Self> {
        let (batches, total_rows) = Self::batches(path, columns, 0)?;
        Ok(ParquetReader {
            path: path.to_owned(),
            partition,
            columns: columns.into(),
            batches,
            current: Vec::new(),
            rows_in_batch: 0,
            row_in_batch: 0,
            next_offset: 0,
            total_rows,
            finished: false,
        })
    }

    /// The file's batches of the named columns it has, from row `offset`,
    /// and its row count.
    fn batches(
        path: &Path,
        columns: &[String],
        offset: usize,
    ) -> Result<(parquet::arrow::arrow_reader::ParquetRecordBatchReader, u64)> {
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
        // Only the columns read: a wide file's others are never decoded.
        let roots: Vec<usize> = columns
            .iter()
            .filter_map(|name| builder.schema().index_of(name).ok())
            .collect();
        let projection = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots);
        let batches = builder
            .with_projection(projection)
            .with_offset(offset)
            .with_batch_size(PARQUET_BATCH_ROWS)
            .build()
            .map_err(parquet_error)?;
        Ok((batches, total_rows))
    }
}

impl ColumnReader for ParquetReader {
    fn next_chunk(&mut self, max_records: usize) -> Result<Option<ColumnChunk>> {
        while self.row_in_batch == self.rows_in_batch {
            match self.batches.next() {
                Some(Ok(batch)) => {
                    self.current = self
                        .columns
                        .iter()
                        .map(|name| batch.column_by_name(name).cloned())
                        .collect();
                    self.rows_in_batch = batch.num_rows();
                    self.row_in_batch = 0;
                }
                Some(Err(error)) => {
                    return Err(Error::Parquet {
                        path: self.path.clone(),
                        message: error.to_string(),
                    });
                }
                None => {
                    self.finished = true;
                    return Ok(None);
                }
            }
        }
        let end = self.rows_in_batch.min(self.row_in_batch + max_records);
        let chunk = ColumnChunk::new(
            (self.partition, self.next_offset),
            self.columns.clone(),
            &self.current,
            self.row_in_batch..end,
        );
        self.next_offset += chunk.len() as u64;
        self.row_in_batch = end;
        Ok(Some(chunk))
    }
}

impl PartitionReader for ParquetReader {
    fn partition(&self) -> u32 {
        self.partition
    }

    fn poll(&mut self, out: &mut Vec<RawRecord>, max_records: usize) -> Result<Poll> {
        let mut produced = 0;
        while produced < max_records {
            let Some(chunk) = self.next_chunk(max_records - produced)? else {
                break;
            };
            out.extend((0..chunk.len()).map(|row| chunk.record(row)));
            produced += chunk.len();
        }
        Ok(if produced == 0 && self.finished {
            Poll::Finished
        } else {
            Poll::Ready
        })
    }

    fn columnar(&mut self) -> Option<&mut dyn ColumnReader> {
        Some(self)
    }

    fn is_behind(&self) -> bool {
        !self.finished
    }

    fn progress(&self) -> (u64, Option<u64>) {
        (self.next_offset, Some(self.total_rows))
    }

    fn seek(&mut self, offset: u64) -> bool {
        let Ok(skip) = usize::try_from(offset) else {
            return false;
        };
        match Self::batches(&self.path, &self.columns, skip) {
            Ok((batches, _)) => {
                self.batches = batches;
                self.current.clear();
                (self.rows_in_batch, self.row_in_batch) = (0, 0);
                self.next_offset = offset;
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Value;
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

    /// Reads as the engine does: whole lines where they lie in the buffer,
    /// and a record polled where none is whole.
    fn read_in_place(reader: &mut JsonlReader) -> Vec<(u64, RawBody)> {
        let mut read = Vec::new();
        loop {
            let mut lines = reader.whole_lines().unwrap();
            while let Some(line) = lines.next_line() {
                read.push((lines.next_offset() - 1, RawBody::Bytes(line.to_vec())));
            }
            let taken = lines.taken();
            reader.consume_lines(taken);
            if taken.lines > 0 {
                continue;
            }
            let mut polled = Vec::new();
            if reader.poll(&mut polled, 1).unwrap() == Poll::Finished {
                return read;
            }
            read.extend(
                polled
                    .into_iter()
                    .map(|record| (record.offset, record.body)),
            );
        }
    }

    /// Lines taken where they lie in the read buffer are the records a
    /// poll gives, at the same offsets: lines ending in `\r\n`, empty and
    /// over-long ones, lines across the buffer's end and a last line
    /// without a newline.
    #[test]
    fn lines_taken_in_place_are_the_records_polls_give() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let mut text = String::new();
        for index in 0..4000 {
            match index % 501 {
                7 => text.push_str(&"z".repeat(5000)),
                9 => {}
                13 => text.push('\r'),
                _ => text.push_str(&format!(
                    "{{\"n\":{index},\"pad\":\"{}\"}}",
                    "y".repeat(index % 89)
                )),
            }
            text.push_str(if index % 3 == 0 { "\r\n" } else { "\n" });
        }
        text.push_str("{\"last\":true}");
        std::fs::write(&path, &text).unwrap();
        let polled: Vec<(u64, RawBody)> = read_all(&mut JsonlReader::open(&path, 0, 4096).unwrap())
            .into_iter()
            .map(|record| (record.offset, record.body))
            .collect();
        let mut reader = JsonlReader::open(&path, 0, 4096).unwrap();
        let in_place = read_in_place(&mut reader);
        assert_eq!(polled.len(), 4001);
        assert_eq!(in_place, polled);
        assert_eq!(
            reader.progress(),
            (text.len() as u64, Some(text.len() as u64))
        );
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

    /// Writes rows `0..rows` of an `id` integer column and a `name` string
    /// column, in row groups of 100 rows.
    fn write_parquet(path: &Path, rows: i64) {
        use arrow_array::{Int64Array, RecordBatch, StringArray};
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..rows)) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|row| format!("n{row}")),
                )) as ArrayRef,
            ),
        ])
        .unwrap();
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(100))
            .build();
        let file = File::create(path).unwrap();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn parquet_rows_read_alike_polled_in_columns_and_after_a_seek() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.parquet");
        write_parquet(&path, 20_000);
        let columns = ["name".to_owned(), "absent".to_owned(), "id".to_owned()];
        let expected = |row: u64| {
            vec![
                Value::Str(format!("n{row}").into()),
                Value::Null,
                Value::I64(row as i64),
            ]
        };
        let polled = read_all(&mut ParquetReader::open(&path, 3, &columns).unwrap());
        assert_eq!(polled.len(), 20_000);
        for (row, record) in polled.iter().enumerate() {
            assert_eq!((record.partition, record.offset), (3, row as u64));
            assert!(matches!(&record.body, RawBody::Fields(f) if *f == expected(row as u64)));
        }
        // In chunks, across the reader's batches, from a seek on.
        let mut reader = ParquetReader::open(&path, 3, &columns).unwrap();
        assert!(reader.seek(12_345));
        let mut next = 12_345;
        while let Some(chunk) = reader.next_chunk(1000).unwrap() {
            assert!(chunk.len() <= 1000 && chunk.first_offset == next);
            for row in 0..chunk.len() {
                let cells: Vec<Value> = (0..3)
                    .map(|column| chunk.column(column).unwrap().cell(row).to_value())
                    .collect();
                assert_eq!(cells, expected(next + row as u64));
            }
            next += chunk.len() as u64;
        }
        assert_eq!(next, 20_000);
        assert_eq!(reader.progress(), (20_000, Some(20_000)));
    }
}
