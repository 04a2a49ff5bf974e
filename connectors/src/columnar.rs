//! Records delivered as columns: a run of a partition's records as Arrow
//! arrays, from a transport that is columnar already (Parquet).
//!
//! A reader that can ([`PartitionReader::columnar`]) hands the engine a
//! [`ColumnChunk`] rather than one [`RawRecord`] per row, so that the
//! engine writes each field straight from the Arrow array into its own
//! column: no [`Value`] per cell, no vector per record. A chunk still
//! yields each of its rows as the record [`PartitionReader::poll`] would
//! have delivered ([`ColumnChunk::record`]), for the rows that become dead
//! letters and the columns the engine does not read directly.
//!
//! [`PartitionReader::columnar`]: crate::PartitionReader::columnar
//! [`PartitionReader::poll`]: crate::PartitionReader::poll

use crate::record::{RawBody, RawRecord, Value};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BooleanArray, types};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, TimeUnit};
use std::borrow::Cow;
use std::sync::Arc;

/// A reader whose records come as columns.
pub trait ColumnReader {
    /// The next run of at most `max_records` records, in offset order;
    /// `None` once the partition has ended.
    fn next_chunk(&mut self, max_records: usize) -> crate::Result<Option<ColumnChunk>>;
}

/// One cell of a record, borrowed from its column.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell<'a> {
    /// Absent.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer; also times, in epoch milliseconds.
    I64(i64),
    /// A float.
    F64(f64),
    /// A string.
    Str(&'a str),
}

impl Cell<'_> {
    /// The cell as an owned value.
    pub fn to_value(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Bool(flag) => Value::Bool(flag),
            Cell::I64(number) => Value::I64(number),
            Cell::F64(number) => Value::F64(number),
            Cell::Str(text) => Value::Str(text.into()),
        }
    }
}

/// What the cells of a column are, whatever their Arrow type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellKind {
    /// The file has no such column: every cell is null.
    Missing,
    /// Booleans.
    Bool,
    /// Integers, times and dates (as epoch milliseconds).
    Integer,
    /// Floats.
    Float,
    /// Strings.
    Text,
}

/// Consecutive records of one partition, as the reader's columns (in the
/// order of the names it was opened with).
#[derive(Clone, Debug)]
pub struct ColumnChunk {
    /// The partition the records are of.
    pub partition: u32,
    /// The offset of the first record; the others follow it.
    pub first_offset: u64,
    rows: usize,
    /// The names of the columns, in order.
    names: Arc<[String]>,
    /// Each named column's array, `None` where the file has no column of
    /// that name.
    columns: Vec<Option<ArrayRef>>,
}

impl ColumnChunk {
    /// Rows `rows` of the columns `names` names (arrays of equal length;
    /// `None` for a column the file lacks), the first of them at
    /// `first_offset`.
    pub fn new(
        (partition, first_offset): (u32, u64),
        names: Arc<[String]>,
        columns: &[Option<ArrayRef>],
        rows: std::ops::Range<usize>,
    ) -> Self {
        let columns = columns
            .iter()
            .map(|array| {
                array
                    .as_ref()
                    .map(|array| array.slice(rows.start, rows.len()))
            })
            .collect();
        ColumnChunk {
            partition,
            first_offset,
            rows: rows.len(),
            names,
            columns,
        }
    }

    /// How many records the chunk holds.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether the chunk holds no record.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// How the cells of column `index` read, or why they cannot (an Arrow
    /// type tideflow has no value for, or unsigned integers past `i64`).
    pub fn column(&self, index: usize) -> Result<ColumnCells<'_>, String> {
        match &self.columns[index] {
            None => Ok(ColumnCells {
                nulls: None,
                cells: Cells::Missing,
            }),
            Some(array) => ColumnCells::of(array.as_ref()).map_err(|data_type| {
                format!(
                    "column '{}' has Parquet type {data_type}, which tideflow cannot read",
                    self.names[index]
                )
            }),
        }
    }

    /// Row `row` as the record a row-by-row read delivers: its typed
    /// fields, or unreadable (with the reason) where a column is.
    pub fn record(&self, row: usize) -> RawRecord {
        let mut fields = Vec::with_capacity(self.columns.len());
        let mut body = None;
        for index in 0..self.columns.len() {
            match self.column(index) {
                Ok(cells) => fields.push(cells.cell(row).to_value()),
                Err(reason) => {
                    body = Some(RawBody::Unreadable {
                        reason,
                        prefix: Vec::new(),
                    });
                    break;
                }
            }
        }
        RawRecord {
            partition: self.partition,
            offset: self.first_offset + row as u64,
            timestamp_ms: None,
            key: None,
            headers: Vec::new(),
            body: body.unwrap_or(RawBody::Fields(fields)),
        }
    }
}

/// The cells of one column, read by row.
#[derive(Debug)]
pub struct ColumnCells<'a> {
    nulls: Option<&'a NullBuffer>,
    cells: Cells<'a>,
}

/// A column's cells by what they are. Integers narrower than 64 bits,
/// times in other units and dates are converted once per chunk.
#[derive(Debug)]
enum Cells<'a> {
    Missing,
    Bool(&'a BooleanArray),
    Integers(Cow<'a, [i64]>),
    Floats(Cow<'a, [f64]>),
    Text(Text<'a>),
}

/// String arrays, by how they hold their offsets.
#[derive(Debug)]
enum Text<'a> {
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
    View(&'a arrow_array::StringViewArray),
}

impl<'a> ColumnCells<'a> {
    /// The cells of `array`, or its type where tideflow has no value for
    /// it (or for one of its cells: unsigned integers past `i64`).
    fn of(array: &'a dyn Array) -> Result<Self, DataType> {
        fn converted<T: arrow_array::ArrowPrimitiveType>(
            array: &dyn Array,
            convert: impl Fn(T::Native) -> i64,
        ) -> Cow<'static, [i64]> {
            Cow::Owned(
                array
                    .as_primitive::<T>()
                    .values()
                    .iter()
                    .map(|value| convert(*value))
                    .collect(),
            )
        }
        let cells = match array.data_type() {
            DataType::Boolean => Cells::Bool(array.as_boolean()),
            DataType::Int8 => Cells::Integers(converted::<types::Int8Type>(array, i64::from)),
            DataType::Int16 => Cells::Integers(converted::<types::Int16Type>(array, i64::from)),
            DataType::Int32 => Cells::Integers(converted::<types::Int32Type>(array, i64::from)),
            DataType::Int64 => Cells::Integers(Cow::Borrowed(
                array.as_primitive::<types::Int64Type>().values(),
            )),
            DataType::UInt8 => Cells::Integers(converted::<types::UInt8Type>(array, i64::from)),
            DataType::UInt16 => Cells::Integers(converted::<types::UInt16Type>(array, i64::from)),
            DataType::UInt32 => Cells::Integers(converted::<types::UInt32Type>(array, i64::from)),
            DataType::UInt64 => Cells::Integers(Cow::Owned(unsigned(array)?)),
            DataType::Float32 => Cells::Floats(Cow::Owned(
                array
                    .as_primitive::<types::Float32Type>()
                    .values()
                    .iter()
                    .map(|value| f64::from(*value))
                    .collect(),
            )),
            DataType::Float64 => Cells::Floats(Cow::Borrowed(
                array.as_primitive::<types::Float64Type>().values(),
            )),
            DataType::Utf8 => Cells::Text(Text::Utf8(array.as_string::<i32>())),
            DataType::LargeUtf8 => Cells::Text(Text::LargeUtf8(array.as_string::<i64>())),
            DataType::Utf8View => Cells::Text(Text::View(array.as_string_view())),
            DataType::Timestamp(TimeUnit::Second, _) => {
                Cells::Integers(converted::<types::TimestampSecondType>(array, |seconds| {
                    seconds.saturating_mul(1000)
                }))
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => Cells::Integers(Cow::Borrowed(
                array
                    .as_primitive::<types::TimestampMillisecondType>()
                    .values(),
            )),
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Cells::Integers(converted::<types::TimestampMicrosecondType>(
                    array,
                    |micros| micros / 1000,
                ))
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                Cells::Integers(converted::<types::TimestampNanosecondType>(
                    array,
                    |nanos| nanos / 1_000_000,
                ))
            }
            DataType::Date32 => Cells::Integers(converted::<types::Date32Type>(array, |days| {
                i64::from(days) * 86_400_000
            })),
            DataType::Date64 => Cells::Integers(Cow::Borrowed(
                array.as_primitive::<types::Date64Type>().values(),
            )),
            other => return Err(other.clone()),
        };
        Ok(ColumnCells {
            nulls: array.nulls(),
            cells,
        })
    }

    /// What the cells are.
    pub fn kind(&self) -> CellKind {
        match self.cells {
            Cells::Missing => CellKind::Missing,
            Cells::Bool(_) => CellKind::Bool,
            Cells::Integers(_) => CellKind::Integer,
            Cells::Floats(_) => CellKind::Float,
            Cells::Text(_) => CellKind::Text,
        }
    }

    /// The cell of row `row`.
    #[inline]
    pub fn cell(&self, row: usize) -> Cell<'a> {
        if self.nulls.is_some_and(|nulls| nulls.is_null(row)) {
            return Cell::Null;
        }
        match &self.cells {
            Cells::Missing => Cell::Null,
            Cells::Bool(array) => Cell::Bool(array.value(row)),
            Cells::Integers(values) => Cell::I64(values[row]),
            Cells::Floats(values) => Cell::F64(values[row]),
            Cells::Text(Text::Utf8(array)) => Cell::Str(array.value(row)),
            Cells::Text(Text::LargeUtf8(array)) => Cell::Str(array.value(row)),
            Cells::Text(Text::View(array)) => Cell::Str(array.value(row)),
        }
    }
}

/// Unsigned 64-bit integers as `i64`, unless one (not null) is past it.
fn unsigned(array: &dyn Array) -> Result<Vec<i64>, DataType> {
    let values = array.as_primitive::<types::UInt64Type>().values();
    let nulls = array.nulls();
    values
        .iter()
        .enumerate()
        .map(|(row, value)| match i64::try_from(*value) {
            Ok(value) => Ok(value),
            Err(_) if nulls.is_some_and(|nulls| nulls.is_null(row)) => Ok(0),
            Err(_) => Err(DataType::UInt64),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float32Array, Int32Array, StringArray, TimestampMicrosecondArray};

    fn names(count: usize) -> Arc<[String]> {
        (0..count).map(|index| format!("c{index}")).collect()
    }

    #[test]
    fn cells_read_as_the_engine_types_and_records_match_them() {
        let columns: Vec<Option<ArrayRef>> = vec![
            Some(Arc::new(StringArray::from(vec![
                Some("a"),
                None,
                Some("c"),
            ]))),
            Some(Arc::new(Int32Array::from(vec![1, 2, 3]))),
            Some(Arc::new(Float32Array::from(vec![
                Some(0.5),
                Some(1.5),
                None,
            ]))),
            Some(Arc::new(TimestampMicrosecondArray::from(vec![
                1_000_000, 2_000_500, 3_000_000,
            ]))),
            None,
        ];
        let chunk = ColumnChunk::new((7, 100), names(5), &columns, 1..3);
        assert_eq!(chunk.len(), 2);
        let kinds: Vec<CellKind> = (0..5)
            .map(|index| chunk.column(index).unwrap().kind())
            .collect();
        assert_eq!(
            kinds,
            [
                CellKind::Text,
                CellKind::Integer,
                CellKind::Float,
                CellKind::Integer,
                CellKind::Missing
            ]
        );
        let row = |row: usize| -> Vec<Cell<'_>> {
            (0..5)
                .map(|index| chunk.column(index).unwrap().cell(row))
                .collect()
        };
        assert_eq!(
            row(0),
            [
                Cell::Null,
                Cell::I64(2),
                Cell::F64(1.5),
                Cell::I64(2000),
                Cell::Null
            ]
        );
        assert_eq!(
            row(1),
            [
                Cell::Str("c"),
                Cell::I64(3),
                Cell::Null,
                Cell::I64(3000),
                Cell::Null
            ]
        );
        let record = chunk.record(1);
        assert_eq!((record.partition, record.offset), (7, 101));
        let RawBody::Fields(fields) = record.body else {
            panic!("typed fields")
        };
        let expected: Vec<Value> = row(1).into_iter().map(Cell::to_value).collect();
        assert_eq!(fields, expected);
    }

    #[test]
    fn an_unsigned_integer_past_i64_makes_its_column_unreadable_unless_null() {
        let big = arrow_array::UInt64Array::from(vec![Some(1), None, Some(u64::MAX)]);
        let chunk = ColumnChunk::new((0, 0), names(1), &[Some(Arc::new(big))], 0..2);
        assert_eq!(chunk.column(0).unwrap().cell(0), Cell::I64(1));
        assert_eq!(chunk.column(0).unwrap().cell(1), Cell::Null);
        let past = ColumnChunk::new(
            (0, 0),
            names(1),
            &[Some(Arc::new(arrow_array::UInt64Array::from(vec![
                u64::MAX,
            ])))],
            0..1,
        );
        let reason = past.column(0).unwrap_err();
        assert!(
            reason.contains("'c0'") && reason.contains("UInt64"),
            "{reason}"
        );
        assert!(matches!(
            past.record(0).body,
            RawBody::Unreadable { reason: why, .. } if why == reason
        ));
    }
}
