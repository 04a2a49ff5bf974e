//! Model inputs: the columns of a batch gathered into the tensors a model
//! takes.
//!
//! Each model input is fed by columns, row by row. Its element type and
//! shape are the model's: float32 (the common case, read straight from
//! computed float columns), float64, int64, int32, bool or string, as
//! `[rows, n]` from `n` columns or, for a fixed 3-D input `[rows, a, b]`,
//! from `a * b` columns in row order. A null cell becomes the plan's fill
//! value (`false` for bool, the empty string for strings). The buffers
//! keep their capacity from batch to batch.

use super::text::TextFeed;
use crate::batch::{Batch, SlotCells};
use crate::plan::ModelInputPlan;
use crate::schema::ColumnType;
use ort::session::{Session, SessionInputValue};
use ort::value::{Outlet, Tensor, TensorElementType, TensorRef, ValueType};
use tideflow_connectors::Value;

/// What feeds one model input (or, for text, the inputs its tokens
/// feed).
#[derive(Debug)]
pub(super) enum Feed {
    /// Columns as they are.
    Columns(ColumnFeed),
    /// A string column's tokens.
    Text(TextFeed),
}

impl Feed {
    /// The feed of model input `input` of `session`, or why it cannot be.
    pub(super) fn new(
        session: &Session,
        outlet: &Outlet,
        input: &ModelInputPlan,
        fill_null: f32,
    ) -> Result<Feed, String> {
        Ok(match &input.tokens {
            Some(tokens) => Feed::Text(TextFeed::new(session, outlet, input.slots[0], tokens)?),
            None => Feed::Columns(ColumnFeed::new(outlet, input, fill_null)?),
        })
    }

    /// The model inputs it feeds.
    pub(super) fn names(&self) -> Vec<&str> {
        match self {
            Feed::Columns(feed) => vec![feed.name.as_str()],
            Feed::Text(feed) => feed.names().collect(),
        }
    }

    /// Gathers the cells of every row of `batch`, then pads up to `padded`
    /// rows (runs of a fixed size) with the element type's zero.
    pub(super) fn gather(&mut self, batch: &Batch, padded: usize) -> Result<(), String> {
        match self {
            Feed::Columns(feed) => feed.gather(batch, padded),
            Feed::Text(feed) => feed.gather(batch, padded),
        }
    }

    /// Fills `rows` rows with varied made-up values (for the
    /// row-independence probe).
    pub(super) fn probe(&mut self, rows: usize) {
        match self {
            Feed::Columns(feed) => feed.probe(rows),
            Feed::Text(feed) => feed.probe(rows),
        }
    }

    /// A feed holding only row `row` of this one, padded to `padded` rows.
    pub(super) fn single_row(&self, row: usize, padded: usize) -> Feed {
        match self {
            Feed::Columns(feed) => Feed::Columns(feed.single_row(row, padded)),
            Feed::Text(feed) => Feed::Text(feed.single_row(row, padded)),
        }
    }

    /// The named tensors of rows `first..first + rows`.
    pub(super) fn tensors(
        &self,
        first: usize,
        rows: usize,
    ) -> ort::Result<Vec<(&str, SessionInputValue<'_>)>> {
        match self {
            Feed::Columns(feed) => Ok(vec![(feed.name.as_str(), feed.tensor(first, rows)?)]),
            Feed::Text(feed) => feed.tensors(first, rows),
        }
    }
}

/// One model input fed from columns, and the buffer its tensor is built
/// from.
#[derive(Debug)]
pub(super) struct ColumnFeed {
    /// The model input's name.
    name: String,
    /// The dimensions of one row: the model's shape without its batch axis.
    row_shape: Vec<i64>,
    /// Cells per row (the product of `row_shape`).
    width: usize,
    /// The slots of the columns that feed it, in order.
    slots: Vec<usize>,
    /// The stand-in for a null number.
    fill_null: f32,
    buffer: Buffer,
}

/// Rows of cells, `width` per row, of the input's element type.
#[derive(Clone, Debug)]
pub(super) enum Buffer {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
}

impl ColumnFeed {
    /// The feed of `outlet` from the columns of `input`, or why those
    /// columns cannot feed it.
    fn new(outlet: &Outlet, input: &ModelInputPlan, fill_null: f32) -> Result<ColumnFeed, String> {
        let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
            return Err(format!("input '{}' is not a tensor", outlet.name()));
        };
        let buffer = match ty {
            TensorElementType::Float32 => Buffer::F32(Vec::new()),
            TensorElementType::Float64 => Buffer::F64(Vec::new()),
            TensorElementType::Int64 => Buffer::I64(Vec::new()),
            TensorElementType::Int32 => Buffer::I32(Vec::new()),
            TensorElementType::Bool => Buffer::Bool(Vec::new()),
            TensorElementType::String => Buffer::Str(Vec::new()),
            other => {
                return Err(format!(
                    "input '{}' is {other:?}; tideflow feeds float32, float64, int64, int32, bool and string tensors",
                    outlet.name()
                ));
            }
        };
        for column in &input.columns {
            if !buffer.takes(column.ty) {
                return Err(format!(
                    "input '{}' is {ty:?}, but column '{}' is {}; feed it {}",
                    outlet.name(),
                    column.name,
                    column.ty.name(),
                    buffer.what_it_takes()
                ));
            }
        }
        let row_shape = row_shape(shape, input.columns.len()).ok_or_else(|| {
            let names: Vec<&str> = input.columns.iter().map(|c| c.name.as_str()).collect();
            format!(
                "input '{}' has shape {}, but the spec feeds {} columns ({}); feed a [rows, n] input n columns and a fixed [rows, a, b] input a*b columns, in order",
                outlet.name(),
                super::describe(outlet.dtype()),
                names.len(),
                names.join(", ")
            )
        })?;
        Ok(ColumnFeed {
            name: outlet.name().to_owned(),
            width: input.columns.len(),
            row_shape,
            slots: input.slots.clone(),
            fill_null,
            buffer,
        })
    }

    fn gather(&mut self, batch: &Batch, padded: usize) -> Result<(), String> {
        let (count, width) = (batch.len(), self.width);
        self.buffer.resize(padded * width);
        let readers: Vec<SlotCells<'_>> =
            self.slots.iter().map(|slot| batch.cells(*slot)).collect();
        let fill = self.fill_null;
        let rows = count * width;
        match &mut self.buffer {
            Buffer::F32(cells) => gather_f32(batch, &self.slots, fill, &mut cells[..rows]),
            Buffer::F64(cells) => each_cell(&readers, &mut cells[..rows], |reader, row| {
                Ok(reader.number(row).unwrap_or(f64::from(fill)))
            })?,
            Buffer::I64(cells) => each_cell(&readers, &mut cells[..rows], |reader, row| {
                Ok(integer(&reader.value(row)).unwrap_or(fill as i64))
            })?,
            Buffer::I32(cells) => each_cell(&readers, &mut cells[..rows], |reader, row| {
                let number = integer(&reader.value(row)).unwrap_or(fill as i64);
                i32::try_from(number)
                    .map_err(|_| format!("{number} does not fit the model's int32 input"))
            })?,
            Buffer::Bool(cells) => each_cell(&readers, &mut cells[..rows], |reader, row| {
                Ok(matches!(*reader.value(row), Value::Bool(true)))
            })?,
            Buffer::Str(cells) => each_cell(&readers, &mut cells[..rows], |reader, row| {
                Ok(match &*reader.value(row) {
                    Value::Str(text) => text.to_string(),
                    _ => String::new(),
                })
            })?,
        }
        self.buffer.clear_from(rows);
        Ok(())
    }

    fn probe(&mut self, rows: usize) {
        let cells = rows * self.width;
        let number = |index: usize| ((index * 7919 % 1000) as f64) / 97.0 - 3.0;
        self.buffer = match &self.buffer {
            Buffer::F32(_) => Buffer::F32((0..cells).map(|i| number(i) as f32).collect()),
            Buffer::F64(_) => Buffer::F64((0..cells).map(number).collect()),
            Buffer::I64(_) => Buffer::I64((0..cells).map(|i| (i * 7919 % 13) as i64).collect()),
            Buffer::I32(_) => Buffer::I32((0..cells).map(|i| (i * 7919 % 13) as i32).collect()),
            Buffer::Bool(_) => Buffer::Bool((0..cells).map(|i| i * 7919 % 3 == 0).collect()),
            Buffer::Str(_) => Buffer::Str(
                (0..cells)
                    .map(|i| format!("probe {} {}", i * 7919 % 17, i % 5))
                    .collect(),
            ),
        };
    }

    fn single_row(&self, row: usize, padded: usize) -> ColumnFeed {
        let mut buffer = self.buffer.slice(row * self.width, self.width);
        buffer.resize(padded * self.width);
        buffer.clear_from(self.width);
        ColumnFeed {
            name: self.name.clone(),
            row_shape: self.row_shape.clone(),
            width: self.width,
            slots: self.slots.clone(),
            fill_null: self.fill_null,
            buffer,
        }
    }

    /// The tensor of rows `first..first + rows`.
    fn tensor(&self, first: usize, rows: usize) -> ort::Result<SessionInputValue<'_>> {
        let shape: Vec<i64> = std::iter::once(rows as i64)
            .chain(self.row_shape.iter().copied())
            .collect();
        self.buffer
            .tensor(&shape, first * self.width, rows * self.width)
    }
}

impl Buffer {
    /// Whether a column of type `ty` can feed this element type.
    fn takes(&self, ty: ColumnType) -> bool {
        match self {
            Buffer::F32(_) | Buffer::F64(_) => ty.is_numeric(),
            Buffer::I64(_) | Buffer::I32(_) => {
                matches!(
                    ty,
                    ColumnType::I64 | ColumnType::TimestampMs | ColumnType::Bool
                )
            }
            Buffer::Bool(_) => ty == ColumnType::Bool,
            Buffer::Str(_) => ty == ColumnType::Str,
        }
    }

    fn what_it_takes(&self) -> &'static str {
        match self {
            Buffer::F32(_) | Buffer::F64(_) => "numeric columns",
            Buffer::I64(_) | Buffer::I32(_) => "integer, timestamp or bool columns",
            Buffer::Bool(_) => "bool columns",
            Buffer::Str(_) => "string columns",
        }
    }

    /// The tensor of `shape` over `len` cells from `start`.
    pub(super) fn tensor(
        &self,
        shape: &[i64],
        start: usize,
        len: usize,
    ) -> ort::Result<SessionInputValue<'_>> {
        let shape = shape.to_vec();
        let range = start..start + len;
        Ok(match self {
            Buffer::F32(cells) => TensorRef::from_array_view((shape, &cells[range]))?.into(),
            Buffer::F64(cells) => TensorRef::from_array_view((shape, &cells[range]))?.into(),
            Buffer::I64(cells) => TensorRef::from_array_view((shape, &cells[range]))?.into(),
            Buffer::I32(cells) => TensorRef::from_array_view((shape, &cells[range]))?.into(),
            Buffer::Bool(cells) => TensorRef::from_array_view((shape, &cells[range]))?.into(),
            Buffer::Str(cells) => Tensor::from_string_array((shape, &cells[range]))?.into(),
        })
    }

    /// Writes token numbers from cell `start` on (into an integer buffer).
    pub(super) fn set_tokens(&mut self, start: usize, tokens: &[u32]) {
        let range = start..start + tokens.len();
        match self {
            Buffer::I64(cells) => {
                for (cell, token) in cells[range].iter_mut().zip(tokens) {
                    *cell = i64::from(*token);
                }
            }
            Buffer::I32(cells) => {
                for (cell, token) in cells[range].iter_mut().zip(tokens) {
                    // Vocabularies are far below 2^31 tokens.
                    *cell = *token as i32;
                }
            }
            _ => unreachable!("token parts are int64 or int32 buffers"),
        }
    }

    pub(super) fn resize(&mut self, cells: usize) {
        match self {
            Buffer::F32(values) => values.resize(cells, 0.0),
            Buffer::F64(values) => values.resize(cells, 0.0),
            Buffer::I64(values) => values.resize(cells, 0),
            Buffer::I32(values) => values.resize(cells, 0),
            Buffer::Bool(values) => values.resize(cells, false),
            Buffer::Str(values) => values.resize(cells, String::new()),
        }
    }

    /// Sets every cell from `start` on to the element type's zero (the
    /// padding of a last short run).
    pub(super) fn clear_from(&mut self, start: usize) {
        match self {
            Buffer::F32(values) => values[start..].fill(0.0),
            Buffer::F64(values) => values[start..].fill(0.0),
            Buffer::I64(values) => values[start..].fill(0),
            Buffer::I32(values) => values[start..].fill(0),
            Buffer::Bool(values) => values[start..].fill(false),
            Buffer::Str(values) => values[start..].iter_mut().for_each(String::clear),
        }
    }

    /// A copy of `len` cells from `start`.
    pub(super) fn slice(&self, start: usize, len: usize) -> Buffer {
        let range = start..start + len;
        match self {
            Buffer::F32(values) => Buffer::F32(values[range].to_vec()),
            Buffer::F64(values) => Buffer::F64(values[range].to_vec()),
            Buffer::I64(values) => Buffer::I64(values[range].to_vec()),
            Buffer::I32(values) => Buffer::I32(values[range].to_vec()),
            Buffer::Bool(values) => Buffer::Bool(values[range].to_vec()),
            Buffer::Str(values) => Buffer::Str(values[range].to_vec()),
        }
    }
}

/// The dimensions of one row of a model input fed `columns` columns: the
/// model's shape without its batch axis, a free width taking the columns'
/// count. `None`: the shape's rows do not hold exactly that many cells.
fn row_shape(shape: &[i64], columns: usize) -> Option<Vec<i64>> {
    let dims = shape.get(1..)?;
    let fits = match dims {
        [] => columns == 1,
        [width] => *width < 0 || *width == columns as i64,
        [rows, width] => *rows > 0 && *width > 0 && (rows * width) as usize == columns,
        _ => false,
    };
    fits.then(|| match dims {
        [] => Vec::new(),
        [_] => vec![columns as i64],
        _ => dims.to_vec(),
    })
}

/// An integer cell: integers and timestamps as they are, booleans as 0
/// or 1; anything else (null) is `None`.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::I64(number) => Some(*number),
        Value::Bool(flag) => Some(i64::from(*flag)),
        _ => None,
    }
}

/// Sets each cell of `cells` (rows of `readers.len()` cells) to
/// `cell(reader, row)`.
fn each_cell<T>(
    readers: &[SlotCells<'_>],
    cells: &mut [T],
    cell: impl Fn(&SlotCells<'_>, usize) -> Result<T, String>,
) -> Result<(), String> {
    for (row, row_cells) in cells.chunks_exact_mut(readers.len()).enumerate() {
        for (target, reader) in row_cells.iter_mut().zip(readers) {
            *target = cell(reader, row)?;
        }
    }
    Ok(())
}

/// Writes the float32 cells of every row of `batch` into `tensor`, row
/// by row (`slots.len()` cells each); nulls and non-numbers become
/// `fill_null`.
fn gather_f32(batch: &Batch, slots: &[usize], fill_null: f32, tensor: &mut [f32]) {
    let width = slots.len();
    let readers: Vec<SlotCells<'_>> = slots.iter().map(|slot| batch.cells(*slot)).collect();
    let floats: Option<Vec<(&[f64], &[bool])>> = readers.iter().map(SlotCells::floats).collect();
    match floats {
        // Inputs computed as float columns (features, expressions): the
        // common case, read straight from the vectors, a block of rows at
        // a time so that the block's part of the tensor stays in L1.
        Some(columns) => gather_floats(&columns, fill_null, tensor),
        // Some inputs in the rows (fields, or features that travelled
        // with their rows): float columns column by column, then the cells
        // the rows hold in one pass over the rows. Each row's cells are an
        // allocation of their own, so reading them a column at a time
        // would bring every row into cache once per column.
        None => {
            let mut held_by_rows = Vec::new();
            for (column, reader) in readers.iter().enumerate() {
                let Some((values, present)) = reader.floats() else {
                    held_by_rows.push((column, reader));
                    continue;
                };
                let rows = tensor.chunks_exact_mut(width);
                for (cells, (value, present)) in rows.zip(values.iter().zip(present)) {
                    cells[column] = if *present { *value as f32 } else { fill_null };
                }
            }
            for (index, cells) in tensor.chunks_exact_mut(width).enumerate() {
                for (column, reader) in &held_by_rows {
                    cells[*column] = reader
                        .number(index)
                        .map_or(fill_null, |number| number as f32);
                }
            }
        }
    }
}

/// Row by row, the cells of float columns into `tensor`: every value
/// first, then `fill_null` over the nulls of the columns that have any.
/// A model's width is known here only at run time; for the widths of
/// small models the loop over a row's cells is compiled for that width,
/// which the compiler unrolls (measured by benches/inference.rs: the
/// general loop with a null check per cell took several times as long).
fn gather_floats(columns: &[(&[f64], &[bool])], fill_null: f32, tensor: &mut [f32]) {
    let width = columns.len();
    let values: Vec<&[f64]> = columns.iter().map(|(values, _)| *values).collect();
    copy_values(&values, tensor);
    for (column, (_, present)) in columns.iter().enumerate() {
        // Not `all`: without its early exit the check is vectorized.
        if present.iter().fold(true, |all, present| all & present) {
            continue;
        }
        for (cells, present) in tensor.chunks_exact_mut(width).zip(*present) {
            if !present {
                cells[column] = fill_null;
            }
        }
    }
}

/// `tensor[row * width + column] = columns[column][row]`, narrowed.
fn copy_values(columns: &[&[f64]], tensor: &mut [f32]) {
    macro_rules! fixed_widths {
        ($($width:literal)*) => {
            match columns.len() {
                $($width => {
                    if let Ok(columns) = <&[_; $width]>::try_from(columns) {
                        return copy_fixed::<$width>(columns, tensor);
                    }
                })*
                _ => {}
            }
        };
    }
    fixed_widths!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    for (row, cells) in tensor.chunks_exact_mut(columns.len()).enumerate() {
        for (cell, values) in cells.iter_mut().zip(columns) {
            *cell = values[row] as f32;
        }
    }
}

fn copy_fixed<const WIDTH: usize>(columns: &[&[f64]; WIDTH], tensor: &mut [f32]) {
    for (row, cells) in tensor.chunks_exact_mut(WIDTH).enumerate() {
        for (cell, values) in cells.iter_mut().zip(columns) {
            *cell = values[row] as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Row;

    /// Three rows with two fields (an integer, then null, then a boolean;
    /// always null), two float columns with nulls and a column of values
    /// that are not all numbers.
    fn batch() -> Batch {
        let fields = [
            vec![Value::I64(3), Value::Null],
            vec![Value::Null, Value::Null],
            vec![Value::Bool(true), Value::Null],
        ];
        let rows = fields
            .into_iter()
            .enumerate()
            .map(|(offset, values)| Row {
                offset: offset as u64,
                values,
                ..Row::default()
            })
            .collect();
        let mut batch = Batch::from_rows(rows);
        batch.set_numbers(2, [Some(1.5), None, Some(2.5)]);
        batch.set_numbers(3, [None, Some(4.0), Some(5.0)]);
        batch.set_column(
            4,
            ColumnType::Str,
            [Value::Str("x".into()), Value::F64(7.0), Value::Null],
        );
        batch
    }

    fn gathered(slots: &[usize]) -> Vec<f32> {
        let mut tensor = vec![f32::NAN; 3 * slots.len()];
        gather_f32(&batch(), slots, -1.0, &mut tensor);
        tensor
    }

    #[test]
    fn float_columns_fill_their_nulls() {
        assert_eq!(gathered(&[2, 3]), [1.5, -1.0, -1.0, 4.0, 2.5, 5.0]);
        assert_eq!(gathered(&[3]), [-1.0, 4.0, 5.0]);
        // Wider than the widths compiled for.
        let wide: Vec<usize> = (0..17).map(|index| 2 + index % 2).collect();
        let expected: Vec<f32> = [[1.5, -1.0], [-1.0, 4.0], [2.5, 5.0]]
            .iter()
            .flat_map(|row| (0..17).map(move |index| row[index % 2]))
            .collect();
        assert_eq!(gathered(&wide), expected);
    }

    #[test]
    fn inputs_from_rows_and_value_columns_read_as_numbers_or_fill() {
        assert_eq!(
            gathered(&[0, 2, 4, 1]),
            [
                3.0, 1.5, -1.0, -1.0, -1.0, -1.0, 7.0, -1.0, 1.0, 2.5, -1.0, -1.0
            ]
        );
    }
}
