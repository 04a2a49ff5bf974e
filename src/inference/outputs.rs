//! Model outputs: the tensors a run produced, read into output columns.
//!
//! An output is read per row: a single value (`[rows]` or `[rows, 1]`),
//! one element of each row picked by index (`name[i]`, the row's elements
//! in row order whatever the output's rank), or the whole row as a list
//! column (an embedding: `[rows, n]` or more dimensions, flattened).
//! Floats of any width read as f64, integers of up to 64 bits as i64;
//! booleans and strings as single values.

use crate::batch::Cells;
use crate::plan::OutputPlan;
use crate::schema::ColumnType;
use ort::value::{DynValue, Outlet, TensorElementType, ValueType};
use std::sync::Arc;
use tideflow_connectors::Value;

/// How an output fills its column, as checked against the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reading {
    /// One value per row.
    Single,
    /// Element `i` of each row.
    Pick(usize),
    /// Each row's elements as a list.
    List,
}

/// What column an output fills and how, or why it cannot.
pub(super) fn check_output(
    outlet: &Outlet,
    output: &OutputPlan,
) -> Result<(ColumnType, Reading), String> {
    let name = outlet.name();
    let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
        return Err(format!(
            "output '{name}' is not a tensor (export classifiers without ZipMap)"
        ));
    };
    let Some(row_dims) = shape.get(1..) else {
        return Err(format!(
            "output '{name}' has no batch axis; tideflow reads outputs of one row per input row"
        ));
    };
    // Elements per row, where the model fixes them.
    let per_row = row_dims.iter().try_fold(1usize, |product, dim| {
        usize::try_from(*dim).ok().map(|dim| product * dim)
    });
    let reading = match (output.index, per_row) {
        (Some(index), Some(elements)) if index >= elements => {
            return Err(format!(
                "output '{name}' has {elements} values per row; '{name}[{index}]' is past them"
            ));
        }
        (Some(index), _) => Reading::Pick(index),
        (None, Some(1)) => Reading::Single,
        (None, _) => Reading::List,
    };
    let kind = element_kind(*ty).ok_or_else(|| {
        format!("output '{name}' is {ty:?}; tideflow reads float, integer, bool and string outputs")
    })?;
    let column_type = match (kind, reading) {
        (ElementKind::Float, Reading::List) => ColumnType::F64List,
        (ElementKind::Integer, Reading::List) => ColumnType::I64List,
        (ElementKind::Float, _) => ColumnType::F64,
        (ElementKind::Integer, _) => ColumnType::I64,
        (ElementKind::Bool, Reading::List) | (ElementKind::Str, Reading::List) => {
            return Err(format!(
                "output '{name}' is {ty:?} with several values per row; read one of them as '{name}[i]' (lists are of numbers)"
            ));
        }
        (ElementKind::Bool, _) => ColumnType::Bool,
        (ElementKind::Str, _) => ColumnType::Str,
    };
    Ok((column_type, reading))
}

#[derive(Clone, Copy)]
enum ElementKind {
    Float,
    Integer,
    Bool,
    Str,
}

fn element_kind(ty: TensorElementType) -> Option<ElementKind> {
    use TensorElementType::*;
    match ty {
        Float32 | Float64 => Some(ElementKind::Float),
        Int8 | Uint8 | Int16 | Uint16 | Int32 | Uint32 | Int64 => Some(ElementKind::Integer),
        Bool => Some(ElementKind::Bool),
        String => Some(ElementKind::Str),
        _ => None,
    }
}

/// A model output of one run, ready to be read row by row.
pub(super) struct OutputColumn<'output> {
    data: OutputData<'output>,
    /// Elements per row.
    width: usize,
    reading: Reading,
}

enum OutputData<'output> {
    F32(&'output [f32]),
    F64(&'output [f64]),
    I64(&'output [i64]),
    I32(&'output [i32]),
    /// Narrower integers, widened when extracted.
    Widened(Vec<i64>),
    Bool(&'output [bool]),
    Str(Vec<String>),
}

impl<'output> OutputColumn<'output> {
    /// Output `value` of a run of `rows` rows, read as `reading`.
    pub(super) fn new(
        value: &'output DynValue,
        rows: usize,
        reading: Reading,
    ) -> ort::Result<Self> {
        // Extracted as the element type the value has: a failed attempt
        // builds an error message, which costs more than a small batch's
        // scatter.
        let element = match value.dtype() {
            ValueType::Tensor { ty, .. } => Some(*ty),
            _ => None,
        };
        let widened = |numbers: Vec<i64>| OutputData::Widened(numbers);
        let data = match element {
            Some(TensorElementType::Float64) => OutputData::F64(value.try_extract_tensor()?.1),
            Some(TensorElementType::Int64) => OutputData::I64(value.try_extract_tensor()?.1),
            Some(TensorElementType::Int32) => OutputData::I32(value.try_extract_tensor()?.1),
            Some(TensorElementType::Int16) => widened(widen::<i16>(value)?),
            Some(TensorElementType::Uint16) => widened(widen::<u16>(value)?),
            Some(TensorElementType::Int8) => widened(widen::<i8>(value)?),
            Some(TensorElementType::Uint8) => widened(widen::<u8>(value)?),
            Some(TensorElementType::Uint32) => widened(widen::<u32>(value)?),
            Some(TensorElementType::Bool) => OutputData::Bool(value.try_extract_tensor()?.1),
            Some(TensorElementType::String) => OutputData::Str(value.try_extract_strings()?.1),
            // Float32, and anything else, whose error the extraction gives.
            _ => OutputData::F32(value.try_extract_tensor()?.1),
        };
        let mut column = OutputColumn {
            data,
            width: 1,
            reading,
        };
        column.width = column.len().checked_div(rows).unwrap_or(0).max(1);
        Ok(column)
    }

    /// Appends the values of the first `rows` rows to `cells`: copied
    /// in bulk where the cells have the output's type (widened), value by
    /// value otherwise.
    pub(super) fn append_to(&self, cells: &mut Cells, rows: usize) {
        let index = match self.reading {
            Reading::Single => 0,
            Reading::Pick(index) => index,
            Reading::List => {
                (0..rows).for_each(|row| cells.push(self.list(row)));
                return;
            }
        };
        let complete = index < self.width && rows * self.width <= self.len();
        let width = self.width;
        match (&self.data, complete) {
            (OutputData::F32(data), true) => {
                cells.extend_f64(column_of(data, width, index, rows).map(f64::from))
            }
            (OutputData::F64(data), true) => cells.extend_f64(column_of(data, width, index, rows)),
            (OutputData::I64(data), true) => cells.extend_i64(column_of(data, width, index, rows)),
            (OutputData::I32(data), true) => {
                cells.extend_i64(column_of(data, width, index, rows).map(i64::from))
            }
            _ => (0..rows).for_each(|row| cells.push(self.value(row))),
        }
    }

    /// The values of the first `rows` rows.
    pub(super) fn values(&self, rows: usize) -> Vec<Value> {
        (0..rows)
            .map(|row| match self.reading {
                Reading::List => self.list(row),
                _ => self.value(row),
            })
            .collect()
    }

    fn len(&self) -> usize {
        match &self.data {
            OutputData::F32(data) => data.len(),
            OutputData::F64(data) => data.len(),
            OutputData::I64(data) => data.len(),
            OutputData::I32(data) => data.len(),
            OutputData::Widened(data) => data.len(),
            OutputData::Bool(data) => data.len(),
            OutputData::Str(data) => data.len(),
        }
    }

    /// The picked (or single) value of `row`, or null past the end of a
    /// short output.
    fn value(&self, row: usize) -> Value {
        let index = match self.reading {
            Reading::Pick(index) => index,
            _ => 0,
        };
        let at = row * self.width + index;
        let value = match &self.data {
            OutputData::F32(data) => data.get(at).map(|value| Value::F64(f64::from(*value))),
            OutputData::F64(data) => data.get(at).map(|value| Value::F64(*value)),
            OutputData::I64(data) => data.get(at).map(|value| Value::I64(*value)),
            OutputData::I32(data) => data.get(at).map(|value| Value::I64(i64::from(*value))),
            OutputData::Widened(data) => data.get(at).map(|value| Value::I64(*value)),
            OutputData::Bool(data) => data.get(at).map(|value| Value::Bool(*value)),
            OutputData::Str(data) => data.get(at).map(|value| Value::Str(value.into())),
        };
        value.unwrap_or(Value::Null)
    }

    /// The elements of `row` as a list, or null past the end of a short
    /// output.
    fn list(&self, row: usize) -> Value {
        let range = row * self.width..(row + 1) * self.width;
        if range.end > self.len() {
            return Value::Null;
        }
        let floats = |values: Arc<[f64]>| Value::F64List(values);
        let integers = |values: Arc<[i64]>| Value::I64List(values);
        match &self.data {
            OutputData::F32(data) => floats(data[range].iter().map(|v| f64::from(*v)).collect()),
            OutputData::F64(data) => floats(data[range].into()),
            OutputData::I64(data) => integers(data[range].into()),
            OutputData::I32(data) => integers(data[range].iter().map(|v| i64::from(*v)).collect()),
            OutputData::Widened(data) => integers(data[range].into()),
            // Refused when the model was opened.
            OutputData::Bool(_) | OutputData::Str(_) => Value::Null,
        }
    }
}

/// An integer output of a narrower type, widened to i64.
fn widen<T>(value: &DynValue) -> ort::Result<Vec<i64>>
where
    T: ort::value::PrimitiveTensorElementType + Copy + Into<i64> + std::fmt::Debug,
{
    Ok(value
        .try_extract_tensor::<T>()?
        .1
        .iter()
        .map(|number| (*number).into())
        .collect())
}

/// Element `index` of each of the first `rows` rows of `width` elements.
fn column_of<T: Copy>(
    data: &[T],
    width: usize,
    index: usize,
    rows: usize,
) -> impl Iterator<Item = T> + '_ {
    data.chunks_exact(width)
        .take(rows)
        .map(move |row| row[index])
}
