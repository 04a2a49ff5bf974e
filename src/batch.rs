//! The batch: what moves between the operators of the dataflow graph.
//!
//! A batch is a run of rows (each record's origin and event time) and
//! columns: the source decodes each schema field into one typed column
//! (strings as one text with their ends, integers, floats), and every
//! stage adds what it computes (window features, expressions, model
//! outputs) as columns of its own. A column is written and read in order,
//! a cell every few bytes, which is what the features, the model's input
//! tensor and a columnar file want; cells held in each row would be read
//! one cache line per row, and allocated once per row.
//!
//! Batches keep their columns where rows go to other workers or wait for
//! the watermark: [`Batch::split_by_key`] gives each worker its part of a
//! batch, and [`Batch::gather`] merges rows of several batches into one
//! (see [`crate::ordering::HeldBatches`]). Rows hold values of their own
//! only where they are kept one by one (table and label inputs, join
//! sides, a checkpoint's held rows): [`Batch::into_rows`] moves the
//! columns into the rows' value slots, and a batch made of such rows reads
//! its cells from them until stages add columns again.

use crate::features::expr::NumberColumns;
use crate::row::Row;
use crate::schema::ColumnType;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use tideflow_connectors::{Cell, Value};

/// Rows and the columns computed for them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    rows: Vec<Row>,
    /// Computed columns, each as long as `rows`, in the order added.
    columns: Vec<Column>,
}

/// A column: the slot it fills and its cells, one per row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    slot: usize,
    cells: Cells,
}

/// The cells of a column: typed where its producer knows the
/// type (numeric features, expressions, model outputs), values otherwise
/// (and once a cell does not fit the type).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Cells {
    /// Floats.
    F64(Nullable<f64>),
    /// Integers.
    I64(Nullable<i64>),
    /// Strings.
    Str(Strings),
    /// Any values.
    Values(Vec<Value>),
}

/// String cells: their text one after another, where each ends in it, and
/// whether each is present (an absent one is empty). One allocation for a
/// column rather than one per cell, read in order by the writers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Strings {
    text: String,
    ends: Vec<usize>,
    present: Vec<bool>,
}

impl Strings {
    fn with_capacity(rows: usize) -> Self {
        Strings {
            text: String::new(),
            ends: Vec::with_capacity(rows),
            present: Vec::with_capacity(rows),
        }
    }

    fn len(&self) -> usize {
        self.present.len()
    }

    #[inline]
    fn push(&mut self, text: Option<&str>) {
        if let Some(text) = text {
            self.text.push_str(text);
        }
        self.ends.push(self.text.len());
        self.present.push(text.is_some());
    }

    #[inline]
    fn start(&self, index: usize) -> usize {
        if index == 0 { 0 } else { self.ends[index - 1] }
    }

    /// The string of row `index`, if present.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&str> {
        self.present[index].then(|| &self.text[self.start(index)..self.ends[index]])
    }

    /// The text, the end of each string in it, and whether each is
    /// present: the layout of an Arrow string array.
    pub fn parts(&self) -> (&str, &[usize], &[bool]) {
        (&self.text, &self.ends, &self.present)
    }

    fn append(&mut self, other: Strings) {
        let shift = self.text.len();
        self.text.push_str(&other.text);
        self.ends.extend(other.ends.iter().map(|end| end + shift));
        self.present.extend(other.present);
    }

    /// Room for `additional` more strings, their text as long on average
    /// as the strings held (grown by doubling, a batch's text would be
    /// copied again at every doubling).
    fn reserve(&mut self, additional: usize) {
        self.ends.reserve(additional);
        self.present.reserve(additional);
        let per_string = self.text.len().div_ceil(self.len().max(1));
        self.text.reserve(per_string * additional);
    }

    fn split_off(&mut self, at: usize) -> Self {
        let cut = self.start(at);
        Strings {
            text: self.text.split_off(cut),
            ends: self
                .ends
                .split_off(at)
                .iter()
                .map(|end| end - cut)
                .collect(),
            present: self.present.split_off(at),
        }
    }

    fn retain(&mut self, kept: &[bool]) {
        let mut retained = Strings::with_capacity(self.len());
        for (index, _) in kept.iter().enumerate().filter(|(_, kept)| **kept) {
            retained.push(self.get(index));
        }
        *self = retained;
    }

    /// The strings split into parts: string `i` goes to part `owners[i]`,
    /// which gets `counts[part]` strings.
    fn split_by(&self, owners: &[usize], counts: &[usize]) -> Vec<Strings> {
        let per_string = self.text.len() / self.len().max(1);
        let mut parts: Vec<Strings> = counts
            .iter()
            .map(|count| {
                let mut part = Strings::with_capacity(*count);
                part.text.reserve(per_string * count);
                part
            })
            .collect();
        for (index, owner) in owners.iter().enumerate() {
            parts[*owner].push(self.get(index));
        }
        parts
    }

    /// The strings `picks` names: a source among `sources`, a string in it.
    fn gather(sources: &[&Strings], picks: &[(u32, u32)]) -> Strings {
        let mut gathered = Strings::with_capacity(picks.len());
        for &(source, index) in picks {
            gathered.push(sources[source as usize].get(index as usize));
        }
        gathered
    }

    fn into_values(self) -> Vec<Value> {
        (0..self.len())
            .map(|index| {
                self.get(index)
                    .map_or(Value::Null, |text| Value::Str(text.into()))
            })
            .collect()
    }
}

/// Typed cells: the numbers, with whether each is present (not null; an
/// absent one holds the type's default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Nullable<T> {
    values: Vec<T>,
    present: Vec<bool>,
}

impl<T: Copy + Default> Nullable<T> {
    fn with_capacity(rows: usize) -> Self {
        Nullable {
            values: Vec::with_capacity(rows),
            present: Vec::with_capacity(rows),
        }
    }

    fn len(&self) -> usize {
        self.present.len()
    }

    #[inline(always)]
    fn push(&mut self, number: Option<T>) {
        self.values.push(number.unwrap_or_default());
        self.present.push(number.is_some());
    }

    fn extend_present(&mut self, numbers: impl Iterator<Item = T>) {
        let before = self.values.len();
        self.values.extend(numbers);
        let added = self.values.len() - before;
        self.present.resize(self.present.len() + added, true);
    }

    #[inline]
    fn get(&self, index: usize) -> Option<T> {
        self.present[index].then(|| self.values[index])
    }

    fn append(&mut self, other: Nullable<T>) {
        self.values.extend(other.values);
        self.present.extend(other.present);
    }

    fn reserve(&mut self, additional: usize) {
        self.values.reserve(additional);
        self.present.reserve(additional);
    }

    fn split_off(&mut self, at: usize) -> Self {
        Nullable {
            values: self.values.split_off(at),
            present: self.present.split_off(at),
        }
    }

    fn retain(&mut self, kept: &[bool]) {
        keep_flagged(&mut self.values, kept);
        keep_flagged(&mut self.present, kept);
    }

    /// The cells split into parts: cell `i` goes to part `owners[i]`,
    /// which gets `counts[part]` cells.
    fn split_by(&self, owners: &[usize], counts: &[usize]) -> Vec<Nullable<T>> {
        let mut parts: Vec<Nullable<T>> = counts
            .iter()
            .map(|count| Nullable::with_capacity(*count))
            .collect();
        for ((value, present), owner) in self.values.iter().zip(&self.present).zip(owners) {
            let part = &mut parts[*owner];
            part.values.push(*value);
            part.present.push(*present);
        }
        parts
    }

    /// The cells `picks` names: a source among `sources`, a cell in it.
    fn gather(sources: &[&Nullable<T>], picks: &[(u32, u32)]) -> Nullable<T> {
        let mut gathered = Nullable::with_capacity(picks.len());
        for &(source, index) in picks {
            let source = sources[source as usize];
            gathered.values.push(source.values[index as usize]);
            gathered.present.push(source.present[index as usize]);
        }
        gathered
    }

    /// The cells as values, each number wrapped by `value`.
    fn into_values(self, value: fn(T) -> Value) -> Vec<Value> {
        self.values
            .into_iter()
            .zip(self.present)
            .map(|(number, present)| if present { value(number) } else { Value::Null })
            .collect()
    }
}

/// Keeps the items whose flag in `kept` is set.
fn keep_flagged<T>(items: &mut Vec<T>, kept: &[bool]) {
    let mut flags = kept.iter();
    items.retain(|_| *flags.next().unwrap_or(&false));
}

impl Batch {
    /// A batch of rows with no columns (rows holding their values).
    pub fn from_rows(rows: Vec<Row>) -> Self {
        Batch {
            rows,
            columns: Vec::new(),
        }
    }

    /// An empty batch whose schema fields (slots `0..fields.len()`, of
    /// these types) are columns, for [`Batch::push_fields`] to fill with
    /// room for `rows`.
    pub fn with_fields(fields: &[ColumnType], rows: usize) -> Self {
        Batch {
            rows: Vec::with_capacity(rows),
            columns: fields
                .iter()
                .enumerate()
                .map(|(slot, ty)| Column {
                    slot,
                    cells: Cells::for_type(*ty, rows),
                })
                .collect(),
        }
    }

    /// Adds a decoded record: `row` (its origin and time; its values are
    /// not read) and `fields`, its schema fields in slot order, moved into
    /// the field columns of a batch made by [`Batch::with_fields`].
    pub fn push_fields(&mut self, row: Row, fields: &mut Vec<Value>) {
        debug_assert!(
            self.columns
                .iter()
                .take(fields.len())
                .enumerate()
                .all(|(slot, column)| column.slot == slot)
        );
        for (column, value) in self.columns.iter_mut().zip(fields.drain(..)) {
            column.cells.push(value);
        }
        self.rows.push(row);
    }

    /// Adds a record read as columns: `row` (its origin and time; its
    /// values are not read) and `cells`, its schema fields in slot order,
    /// each written into its column of a batch made by
    /// [`Batch::with_fields`] without becoming a [`Value`].
    pub fn push_cells<'a>(&mut self, row: Row, cells: impl Iterator<Item = Cell<'a>>) {
        for (column, cell) in self.columns.iter_mut().zip(cells) {
            column.cells.push_cell(cell);
        }
        self.rows.push(row);
    }

    /// A batch of rows that held their values, with the values moved into
    /// one column per slot, each of its type in `types` (the output
    /// columns'). Each row's values are then read once, here, rather than
    /// once by every stage, the model and the sink that read the batch
    /// next: a row's values lie in a heap block of their own, seldom still
    /// in cache.
    pub fn columns_of_rows(mut rows: Vec<Row>, types: &[ColumnType]) -> Self {
        let width = rows.iter().map(|row| row.values.len()).max().unwrap_or(0);
        debug_assert!(width <= types.len());
        let mut cells: Vec<Cells> = types[..width.min(types.len())]
            .iter()
            .map(|ty| Cells::for_type(*ty, rows.len()))
            .collect();
        for row in &mut rows {
            let mut values = std::mem::take(&mut row.values).into_iter();
            for column in &mut cells {
                column.push(values.next().unwrap_or_default());
            }
        }
        Batch {
            rows,
            columns: cells
                .into_iter()
                .enumerate()
                .map(|(slot, cells)| Column { slot, cells })
                .collect(),
        }
    }

    /// Adds a row that holds its own values (a batch with no columns).
    pub fn push_row(&mut self, row: Row) {
        debug_assert!(self.columns.is_empty());
        self.rows.push(row);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows. A slot held by a column (a decoded field, a computed
    /// value) is null in them: read cells through [`Batch::value`] or
    /// [`Batch::cells`].
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The rows, with every column moved into their slots.
    pub fn into_rows(mut self) -> Vec<Row> {
        self.materialize();
        self.rows
    }

    /// Moves every column into the rows' slots (each row grows once, to
    /// the widest slot held).
    pub fn materialize(&mut self) {
        let Some(width) = self.columns.iter().map(|column| column.slot + 1).max() else {
            return;
        };
        for row in &mut self.rows {
            if row.values.len() < width {
                row.values.resize(width, Value::Null);
            }
        }
        for column in std::mem::take(&mut self.columns) {
            let slot = column.slot;
            for (row, value) in self.rows.iter_mut().zip(column.cells.into_values()) {
                row.values[slot] = value;
            }
        }
    }

    /// The number of slots of the widest row or column.
    fn width(&self) -> usize {
        let rows = self.rows.iter().map(|row| row.values.len()).max();
        let columns = self.columns.iter().map(|column| column.slot + 1).max();
        rows.unwrap_or(0).max(columns.unwrap_or(0))
    }

    /// The index of the column that fills `slot`.
    fn column_of(&self, slot: usize) -> Option<usize> {
        // Few columns: a scan beats a map.
        self.columns.iter().position(|column| column.slot == slot)
    }

    /// The value of `slot` in row `index`.
    pub fn value(&self, slot: usize, index: usize) -> Cow<'_, Value> {
        match self.column_of(slot) {
            Some(column) => self.columns[column].cells.value(index),
            None => Cow::Borrowed(self.rows[index].cell(slot)),
        }
    }

    /// A reader of `slot` for every row, resolved once.
    pub fn cells(&self, slot: usize) -> SlotCells<'_> {
        match self.column_of(slot) {
            Some(column) => SlotCells::Column(&self.columns[column].cells),
            None => SlotCells::Rows(&self.rows, slot),
        }
    }

    /// Readers of every slot, resolved once, for reading row by row.
    pub fn readers(&self) -> SlotReaders<'_> {
        let width = self.width();
        SlotReaders {
            rows: &self.rows,
            slots: (0..width).map(|slot| self.cells(slot)).collect(),
        }
    }

    /// Adds a computed column for `slot` (of type `ty`) with one value
    /// per row, replacing the slot's former column if there was one.
    pub fn set_column(
        &mut self,
        slot: usize,
        ty: ColumnType,
        values: impl IntoIterator<Item = Value>,
    ) {
        let mut cells = Cells::for_type(ty, self.rows.len());
        for value in values {
            cells.push(value);
        }
        debug_assert_eq!(cells.len(), self.rows.len());
        self.set_cells(slot, cells);
    }

    /// Adds a computed column of numbers for `slot` (of type F64): `None`
    /// is null.
    pub fn set_numbers(&mut self, slot: usize, numbers: impl IntoIterator<Item = Option<f64>>) {
        let (values, present): (Vec<f64>, Vec<bool>) = numbers
            .into_iter()
            .map(|number| (number.unwrap_or(0.0), number.is_some()))
            .unzip();
        debug_assert_eq!(values.len(), self.rows.len());
        self.set_cells(slot, Cells::F64(Nullable { values, present }));
    }

    /// Adds a computed column for `slot`, replacing the slot's former
    /// column if there was one.
    pub(crate) fn set_cells(&mut self, slot: usize, cells: Cells) {
        debug_assert_eq!(cells.len(), self.rows.len());
        match self.column_of(slot) {
            Some(column) => self.columns[column].cells = cells,
            None => self.columns.push(Column { slot, cells }),
        }
    }

    /// Appends the rows of `other`. Both keep their columns where they
    /// hold the same slots (batches from one point of a graph do); else
    /// both are materialized first.
    pub fn append(&mut self, mut other: Batch) {
        if self.rows.is_empty() {
            *self = other;
            return;
        }
        let same_columns = self.columns.len() == other.columns.len()
            && self
                .columns
                .iter()
                .zip(&other.columns)
                .all(|(mine, theirs)| mine.slot == theirs.slot);
        if !same_columns {
            self.materialize();
            other.materialize();
        }
        for (mine, theirs) in self.columns.iter_mut().zip(other.columns) {
            mine.cells.append(theirs.cells);
        }
        self.rows.append(&mut other.rows);
    }

    /// Makes room for `rows` rows in all, so that appending up to that
    /// many moves each row once rather than again at every growth.
    pub fn reserve_rows(&mut self, rows: usize) {
        let additional = rows.saturating_sub(self.rows.len());
        self.rows.reserve(additional);
        for column in &mut self.columns {
            column.cells.reserve(additional);
        }
    }

    /// Splits the batch in two at row `at`: this batch keeps the rows
    /// before it, and the rows from it on are returned.
    pub fn split_off(&mut self, at: usize) -> Batch {
        Batch {
            rows: self.rows.split_off(at),
            columns: self
                .columns
                .iter_mut()
                .map(|column| Column {
                    slot: column.slot,
                    cells: column.cells.split_off(at),
                })
                .collect(),
        }
    }

    /// Splits the batch by the worker that owns each row's key in
    /// `key_slot` (its stable hash modulo `workers`, the same in every
    /// process): each worker's part, keeping the rows' order and their
    /// columns. Parts with no row are left out.
    pub fn split_by_key(self, key_slot: usize, workers: usize) -> Vec<(usize, Batch)> {
        if self.is_empty() {
            return Vec::new();
        }
        if workers <= 1 {
            return vec![(0, self)];
        }
        let keys = self.cells(key_slot);
        let owners: Vec<usize> = (0..self.len())
            .map(|index| (keys.stable_hash(index) % workers as u64) as usize)
            .collect();
        self.split_by(&owners, workers)
    }

    /// Splits the batch into `parts` batches: row `i` goes to part
    /// `owners[i]`.
    fn split_by(self, owners: &[usize], parts: usize) -> Vec<(usize, Batch)> {
        let first = owners[0];
        if owners.iter().all(|owner| *owner == first) {
            return vec![(first, self)];
        }
        let mut counts = vec![0; parts];
        for owner in owners {
            counts[*owner] += 1;
        }
        let mut split: Vec<Batch> = counts
            .iter()
            .map(|count| Batch {
                rows: Vec::with_capacity(*count),
                columns: Vec::with_capacity(self.columns.len()),
            })
            .collect();
        for column in &self.columns {
            let parts = column.cells.split_by(owners, &counts);
            for (batch, cells) in split.iter_mut().zip(parts) {
                let slot = column.slot;
                batch.columns.push(Column { slot, cells });
            }
        }
        for (row, owner) in self.rows.into_iter().zip(owners) {
            split[*owner].rows.push(row);
        }
        split
            .into_iter()
            .enumerate()
            .filter(|(_, part)| !part.is_empty())
            .collect()
    }

    /// A batch of the rows `picks` names, in that order: each pick is a
    /// batch of `sources` and a row in it, whose origin and cells are
    /// copied. A slot some sources hold in a column is a column of the
    /// result (of that column's type); rows of the other sources give
    /// their own value of it.
    pub fn gather(sources: &[&Batch], picks: &[(u32, u32)]) -> Batch {
        let rows = picks
            .iter()
            .map(|&(source, index)| sources[source as usize].rows[index as usize].clone())
            .collect();
        let width = sources
            .iter()
            .flat_map(|batch| batch.columns.iter().map(|column| column.slot + 1))
            .max()
            .unwrap_or(0);
        let mut columns = Vec::new();
        for slot in 0..width {
            let held: Vec<Option<&Cells>> = sources
                .iter()
                .map(|batch| {
                    batch
                        .column_of(slot)
                        .map(|place| &batch.columns[place].cells)
                })
                .collect();
            let Some(model) = held.iter().flatten().next() else {
                continue;
            };
            if let Some(cells) = Cells::gather_alike(&held, picks) {
                columns.push(Column { slot, cells });
                continue;
            }
            let mut cells = model.empty_like(picks.len());
            for &(source, index) in picks {
                let index = index as usize;
                match held[source as usize] {
                    Some(from) => cells.push_from(from, index),
                    None => cells.push(sources[source as usize].rows[index].cell(slot).clone()),
                }
            }
            columns.push(Column { slot, cells });
        }
        Batch { rows, columns }
    }

    /// Whether some row holds values of its own (rather than all of them
    /// lying in columns).
    pub fn has_row_values(&self) -> bool {
        self.rows.iter().any(|row| !row.values.is_empty())
    }

    /// The indices of the rows in canonical order (event time, partition,
    /// offset); `None` when the rows are in that order already.
    pub fn canonical_order(&self) -> Option<Vec<u32>> {
        if self.rows.is_sorted_by_key(Row::canonical_order) {
            return None;
        }
        let mut order: Vec<u32> = (0..self.rows.len() as u32).collect();
        order.sort_by_key(|index| self.rows[*index as usize].canonical_order());
        Some(order)
    }

    /// Keeps only the rows for which `keep` holds, with their cells.
    pub fn retain(&mut self, mut keep: impl FnMut(&Row) -> bool) {
        let kept: Vec<bool> = self.rows.iter().map(&mut keep).collect();
        if kept.iter().all(|kept| *kept) {
            return;
        }
        keep_flagged(&mut self.rows, &kept);
        for column in &mut self.columns {
            column.cells.retain(&kept);
        }
    }
}

/// The cells of one slot, row by row: from a computed column or from the
/// rows.
#[derive(Clone, Copy, Debug)]
pub enum SlotCells<'batch> {
    /// A computed column.
    Column(&'batch Cells),
    /// The rows' own slot.
    Rows(&'batch [Row], usize),
}

impl<'batch> SlotCells<'batch> {
    /// The value of row `index`.
    #[inline]
    pub fn value(&self, index: usize) -> Cow<'batch, Value> {
        match self {
            SlotCells::Column(cells) => cells.value(index),
            SlotCells::Rows(rows, slot) => Cow::Borrowed(rows[index].cell(*slot)),
        }
    }

    /// The value of row `index` as a number (see [`Value::as_f64`]).
    #[inline]
    pub fn number(&self, index: usize) -> Option<f64> {
        match self {
            SlotCells::Column(cells) => cells.number(index),
            SlotCells::Rows(rows, slot) => rows[index].cell(*slot).as_f64(),
        }
    }

    /// [`Value::stable_hash`] of the value of row `index`.
    #[inline]
    pub fn stable_hash(&self, index: usize) -> u64 {
        match self {
            SlotCells::Column(Cells::Str(strings)) => match strings.get(index) {
                Some(text) => Value::stable_hash_of_text(text),
                None => Value::Null.stable_hash(),
            },
            _ => self.value(index).stable_hash(),
        }
    }

    /// The strings of a string column, for readers that take them in bulk.
    pub fn strings(&self) -> Option<&'batch Strings> {
        match self {
            SlotCells::Column(Cells::Str(strings)) => Some(strings),
            _ => None,
        }
    }

    /// The integers of an I64 column and whether each is present, for
    /// readers that take them in bulk.
    pub fn integers(&self) -> Option<(&'batch [i64], &'batch [bool])> {
        match self {
            SlotCells::Column(Cells::I64(integers)) => Some((&integers.values, &integers.present)),
            _ => None,
        }
    }

    /// The floats of a computed F64 column and whether each is present,
    /// for readers that take them in bulk.
    pub fn floats(&self) -> Option<(&'batch [f64], &'batch [bool])> {
        match self {
            SlotCells::Column(Cells::F64(floats)) => Some((&floats.values, &floats.present)),
            _ => None,
        }
    }
}

/// Every slot of a batch, resolved: [`SlotReaders::row`] reads one row's
/// cells.
#[derive(Debug)]
pub struct SlotReaders<'batch> {
    rows: &'batch [Row],
    slots: Vec<SlotCells<'batch>>,
}

impl<'batch> SlotReaders<'batch> {
    /// The cells of row `index`.
    pub fn row(&self, index: usize) -> RowCells<'_, 'batch> {
        RowCells {
            readers: self,
            index,
        }
    }
}

/// One row's cells, wherever each is held.
#[derive(Clone, Copy, Debug)]
pub struct RowCells<'readers, 'batch> {
    readers: &'readers SlotReaders<'batch>,
    index: usize,
}

impl<'batch> RowCells<'_, 'batch> {
    /// The row itself (its origin and event time; its slots held by
    /// columns are null).
    pub fn row(&self) -> &'batch Row {
        &self.readers.rows[self.index]
    }

    /// The value of `slot` (null for a slot nothing filled).
    pub fn value(&self, slot: usize) -> Cow<'batch, Value> {
        match self.readers.slots.get(slot) {
            Some(cells) => cells.value(self.index),
            None => Cow::Owned(Value::Null),
        }
    }
}

impl NumberColumns for Batch {
    fn rows(&self) -> usize {
        self.len()
    }

    fn numbers(&self, slot: usize) -> Vec<Option<f64>> {
        let cells = self.cells(slot);
        match cells.floats() {
            Some((values, present)) => values
                .iter()
                .zip(present)
                .map(|(value, present)| present.then_some(*value))
                .collect(),
            None => (0..self.len()).map(|index| cells.number(index)).collect(),
        }
    }
}

impl Cells {
    /// Empty cells for a column of type `ty`, with room for `rows`.
    pub(crate) fn for_type(ty: ColumnType, rows: usize) -> Self {
        match ty {
            ColumnType::F64 => Cells::F64(Nullable::with_capacity(rows)),
            ColumnType::I64 | ColumnType::TimestampMs => Cells::I64(Nullable::with_capacity(rows)),
            ColumnType::Str => Cells::Str(Strings::with_capacity(rows)),
            _ => Cells::Values(Vec::with_capacity(rows)),
        }
    }

    /// Appends present floats.
    pub(crate) fn extend_f64(&mut self, numbers: impl Iterator<Item = f64>) {
        match self {
            Cells::F64(floats) => floats.extend_present(numbers),
            _ => numbers.for_each(|number| self.push(Value::F64(number))),
        }
    }

    /// Appends present integers.
    pub(crate) fn extend_i64(&mut self, numbers: impl Iterator<Item = i64>) {
        match self {
            Cells::I64(integers) => integers.extend_present(numbers),
            _ => numbers.for_each(|number| self.push(Value::I64(number))),
        }
    }

    fn reserve(&mut self, additional: usize) {
        match self {
            Cells::F64(floats) => floats.reserve(additional),
            Cells::I64(integers) => integers.reserve(additional),
            Cells::Str(strings) => strings.reserve(additional),
            Cells::Values(values) => values.reserve(additional),
        }
    }

    fn len(&self) -> usize {
        match self {
            Cells::F64(floats) => floats.len(),
            Cells::I64(integers) => integers.len(),
            Cells::Str(strings) => strings.len(),
            Cells::Values(values) => values.len(),
        }
    }

    /// Empty cells of the same type, with room for `rows`.
    fn empty_like(&self, rows: usize) -> Cells {
        match self {
            Cells::F64(_) => Cells::F64(Nullable::with_capacity(rows)),
            Cells::I64(_) => Cells::I64(Nullable::with_capacity(rows)),
            Cells::Str(strings) => {
                let mut empty = Strings::with_capacity(rows);
                let per_row = strings.text.len() / strings.len().max(1);
                empty.text.reserve(per_row * rows);
                Cells::Str(empty)
            }
            Cells::Values(_) => Cells::Values(Vec::with_capacity(rows)),
        }
    }

    /// The cells split into parts: cell `i` goes to part `owners[i]`,
    /// which gets `counts[part]` cells.
    fn split_by(&self, owners: &[usize], counts: &[usize]) -> Vec<Cells> {
        match self {
            Cells::F64(floats) => floats
                .split_by(owners, counts)
                .into_iter()
                .map(Cells::F64)
                .collect(),
            Cells::I64(integers) => integers
                .split_by(owners, counts)
                .into_iter()
                .map(Cells::I64)
                .collect(),
            Cells::Str(strings) => strings
                .split_by(owners, counts)
                .into_iter()
                .map(Cells::Str)
                .collect(),
            Cells::Values(values) => {
                let mut parts: Vec<Vec<Value>> = counts
                    .iter()
                    .map(|count| Vec::with_capacity(*count))
                    .collect();
                for (value, owner) in values.iter().zip(owners) {
                    parts[*owner].push(value.clone());
                }
                parts.into_iter().map(Cells::Values).collect()
            }
        }
    }

    /// The cells `picks` names (a source, a cell in it), where every
    /// source holds cells of one type (`held`); `None` where one holds none
    /// or cells of another type.
    fn gather_alike(held: &[Option<&Cells>], picks: &[(u32, u32)]) -> Option<Cells> {
        fn all<'cells, T>(
            held: &[Option<&'cells Cells>],
            typed: impl Fn(&'cells Cells) -> Option<&'cells T>,
        ) -> Option<Vec<&'cells T>> {
            held.iter().map(|cells| cells.and_then(&typed)).collect()
        }
        Some(match held.iter().flatten().next()? {
            Cells::F64(_) => Cells::F64(Nullable::gather(&all(held, Cells::floats)?, picks)),
            Cells::I64(_) => Cells::I64(Nullable::gather(&all(held, Cells::integers)?, picks)),
            Cells::Str(_) => Cells::Str(Strings::gather(&all(held, Cells::strings)?, picks)),
            Cells::Values(_) => {
                let sources = all(held, Cells::values)?;
                let picked = picks
                    .iter()
                    .map(|&(source, index)| sources[source as usize][index as usize].clone());
                Cells::Values(picked.collect())
            }
        })
    }

    fn floats(&self) -> Option<&Nullable<f64>> {
        match self {
            Cells::F64(floats) => Some(floats),
            _ => None,
        }
    }

    fn integers(&self) -> Option<&Nullable<i64>> {
        match self {
            Cells::I64(integers) => Some(integers),
            _ => None,
        }
    }

    fn strings(&self) -> Option<&Strings> {
        match self {
            Cells::Str(strings) => Some(strings),
            _ => None,
        }
    }

    fn values(&self) -> Option<&Vec<Value>> {
        match self {
            Cells::Values(values) => Some(values),
            _ => None,
        }
    }

    /// Adds the cell of row `index` of `from`.
    #[inline]
    fn push_from(&mut self, from: &Cells, index: usize) {
        match (&mut *self, from) {
            (Cells::F64(floats), Cells::F64(more)) => floats.push(more.get(index)),
            (Cells::I64(integers), Cells::I64(more)) => integers.push(more.get(index)),
            (Cells::Str(strings), Cells::Str(more)) => strings.push(more.get(index)),
            (Cells::Values(values), Cells::Values(more)) => values.push(more[index].clone()),
            (_, from) => self.push(from.value(index).into_owned()),
        }
    }

    /// Adds a cell; a value that does not fit the type turns the cells
    /// into values, so nothing is ever converted.
    #[inline(always)]
    pub(crate) fn push(&mut self, value: Value) {
        match (&mut *self, value) {
            (Cells::F64(floats), Value::F64(number)) => floats.push(Some(number)),
            (Cells::I64(integers), Value::I64(number)) => integers.push(Some(number)),
            (Cells::Str(strings), Value::Str(text)) => strings.push(Some(&text)),
            (Cells::Values(values), value) => values.push(value),
            (_, value) => self.push_other(value),
        }
    }

    /// Adds a cell read from a column, as its own type where it is the
    /// column's.
    #[inline(always)]
    fn push_cell(&mut self, cell: Cell<'_>) {
        match (&mut *self, cell) {
            (Cells::F64(floats), Cell::F64(number)) => floats.push(Some(number)),
            (Cells::F64(floats), Cell::Null) => floats.push(None),
            (Cells::I64(integers), Cell::I64(number)) => integers.push(Some(number)),
            (Cells::I64(integers), Cell::Null) => integers.push(None),
            (Cells::Str(strings), Cell::Str(text)) => strings.push(Some(text)),
            (Cells::Str(strings), Cell::Null) => strings.push(None),
            (_, cell) => self.push(cell.to_value()),
        }
    }

    /// Adds a float cell (`None`: null).
    #[inline(always)]
    pub(crate) fn push_f64(&mut self, number: Option<f64>) {
        match self {
            Cells::F64(floats) => floats.push(number),
            _ => self.push(number.map_or(Value::Null, Value::F64)),
        }
    }

    /// Adds an integer cell (`None`: null).
    #[inline(always)]
    pub(crate) fn push_i64(&mut self, number: Option<i64>) {
        match self {
            Cells::I64(integers) => integers.push(number),
            _ => self.push(number.map_or(Value::Null, Value::I64)),
        }
    }

    /// A null into typed cells, or a value of another type.
    #[cold]
    fn push_other(&mut self, value: Value) {
        match (&mut *self, value) {
            (Cells::F64(floats), Value::Null) => floats.push(None),
            (Cells::I64(integers), Value::Null) => integers.push(None),
            (Cells::Str(strings), Value::Null) => strings.push(None),
            (_, value) => {
                let mut values = std::mem::replace(self, Cells::Values(Vec::new())).into_values();
                values.push(value);
                *self = Cells::Values(values);
            }
        }
    }

    #[inline]
    fn value(&self, index: usize) -> Cow<'_, Value> {
        match self {
            Cells::F64(floats) => Cow::Owned(floats.get(index).map_or(Value::Null, Value::F64)),
            Cells::I64(integers) => Cow::Owned(integers.get(index).map_or(Value::Null, Value::I64)),
            Cells::Str(strings) => Cow::Owned(
                strings
                    .get(index)
                    .map_or(Value::Null, |text| Value::Str(text.into())),
            ),
            Cells::Values(values) => Cow::Borrowed(&values[index]),
        }
    }

    #[inline]
    fn number(&self, index: usize) -> Option<f64> {
        match self {
            Cells::F64(floats) => floats.get(index),
            Cells::I64(integers) => integers.get(index).map(|number| number as f64),
            Cells::Str(_) => None,
            Cells::Values(values) => values[index].as_f64(),
        }
    }

    /// The cells as values.
    pub(crate) fn into_values(self) -> Vec<Value> {
        match self {
            Cells::F64(floats) => floats.into_values(Value::F64),
            Cells::I64(integers) => integers.into_values(Value::I64),
            Cells::Str(strings) => strings.into_values(),
            Cells::Values(values) => values,
        }
    }

    fn append(&mut self, other: Cells) {
        match (&mut *self, other) {
            (Cells::F64(floats), Cells::F64(more)) => floats.append(more),
            (Cells::I64(integers), Cells::I64(more)) => integers.append(more),
            (Cells::Str(strings), Cells::Str(more)) => strings.append(more),
            (_, other) => {
                let mut values = std::mem::replace(self, Cells::Values(Vec::new())).into_values();
                values.extend(other.into_values());
                *self = Cells::Values(values);
            }
        }
    }

    fn split_off(&mut self, at: usize) -> Cells {
        match self {
            Cells::F64(floats) => Cells::F64(floats.split_off(at)),
            Cells::I64(integers) => Cells::I64(integers.split_off(at)),
            Cells::Str(strings) => Cells::Str(strings.split_off(at)),
            Cells::Values(values) => Cells::Values(values.split_off(at)),
        }
    }

    fn retain(&mut self, kept: &[bool]) {
        match self {
            Cells::F64(floats) => floats.retain(kept),
            Cells::I64(integers) => integers.retain(kept),
            Cells::Str(strings) => strings.retain(kept),
            Cells::Values(values) => keep_flagged(values, kept),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(count: u64, width: usize) -> Vec<Row> {
        (0..count)
            .map(|offset| Row {
                partition: 0,
                offset,
                time: offset as i64,
                values: vec![Value::I64(offset as i64); width],
                warm_up: offset % 3 == 0,
            })
            .collect()
    }

    /// The batch with a float column in slot 1 (null every other row) and
    /// a string in slot 2, which does not fit its F64 type.
    fn with_columns(count: u64) -> Batch {
        let mut batch = Batch::from_rows(rows(count, 3));
        batch.set_numbers(
            1,
            (0..count).map(|index| (index % 2 == 0).then_some(index as f64)),
        );
        batch.set_column(
            2,
            ColumnType::F64,
            (0..count).map(|index| {
                if index == 1 {
                    Value::Str("odd".into())
                } else {
                    Value::F64(index as f64 / 2.0)
                }
            }),
        );
        batch
    }

    #[test]
    fn columns_read_the_same_before_and_after_they_move_into_the_rows() {
        let batch = with_columns(6);
        let cells: Vec<Vec<Value>> = (0..3)
            .map(|slot| {
                (0..6)
                    .map(|index| batch.value(slot, index).into_owned())
                    .collect()
            })
            .collect();
        assert_eq!(cells[1][1], Value::Null);
        assert_eq!(cells[1][2], Value::F64(2.0));
        assert_eq!(cells[2][1], Value::Str("odd".into()));
        assert_eq!(cells[2][4], Value::F64(2.0));
        let rows = batch.clone().into_rows();
        for (index, row) in rows.iter().enumerate() {
            for (slot, column) in cells.iter().enumerate() {
                assert_eq!(row.values[slot], column[index], "slot {slot} row {index}");
            }
        }
        assert_eq!(batch.cells(1).number(4), Some(4.0));
        assert_eq!(batch.cells(0).number(4), Some(4.0));
    }

    #[test]
    fn append_split_and_retain_keep_rows_and_cells_together() {
        let mut batch = with_columns(5);
        batch.append(with_columns(4));
        // Columns in other slots: both sides are materialized.
        let mut other = Batch::from_rows(rows(2, 3));
        other.set_numbers(0, [Some(-1.0), None]);
        batch.append(other);
        assert_eq!(batch.len(), 11);
        let expected: Vec<(u64, Value)> = (0..5)
            .chain(0..4)
            .map(|offset| {
                let value = if offset % 2 == 0 {
                    Value::F64(offset as f64)
                } else {
                    Value::Null
                };
                (offset, value)
            })
            .chain([(0, Value::I64(0)), (1, Value::I64(1))])
            .collect();
        let read = |batch: &Batch| -> Vec<(u64, Value)> {
            (0..batch.len())
                .map(|index| {
                    (
                        batch.rows()[index].offset,
                        batch.value(1, index).into_owned(),
                    )
                })
                .collect()
        };
        assert_eq!(read(&batch), expected);
        let tail = batch.split_off(7);
        assert_eq!(read(&batch), expected[..7]);
        assert_eq!(read(&tail), expected[7..]);
        let mut kept = with_columns(7);
        kept.retain(|row| !row.warm_up);
        let offsets: Vec<u64> = kept.rows().iter().map(|row| row.offset).collect();
        assert_eq!(offsets, [1, 2, 4, 5]);
        let floats: Vec<Value> = (0..4)
            .map(|index| kept.value(1, index).into_owned())
            .collect();
        assert_eq!(
            floats,
            [Value::Null, Value::F64(2.0), Value::F64(4.0), Value::Null]
        );
    }

    /// Record `index`'s fields: a string (absent, empty, or with
    /// characters of several bytes), an integer and a float.
    fn fields_of(index: u64) -> Vec<Value> {
        let text = match index % 4 {
            0 => Value::Null,
            1 => Value::Str("".into()),
            2 => Value::Str(format!("é{index}→ü").into()),
            _ => Value::Str(format!("user-{index}-with-a-name-longer-than-inline").into()),
        };
        let integer = if index.is_multiple_of(5) {
            Value::Null
        } else {
            Value::I64(index as i64 * 1000)
        };
        vec![text, integer, Value::F64(index as f64 / 4.0)]
    }

    /// Rows 0..count that hold their own fields: the reference.
    fn rows_holding(range: std::ops::Range<u64>) -> Vec<Row> {
        range
            .map(|offset| Row {
                offset,
                time: offset as i64,
                values: fields_of(offset),
                warm_up: offset % 3 == 1,
                ..Row::default()
            })
            .collect()
    }

    /// The same rows with their fields decoded into columns.
    fn columns_holding(range: std::ops::Range<u64>) -> Batch {
        let types = [ColumnType::Str, ColumnType::I64, ColumnType::F64];
        let mut batch = Batch::with_fields(&types, 0);
        for mut row in rows_holding(range) {
            let mut fields = std::mem::take(&mut row.values);
            batch.push_fields(row, &mut fields);
            assert!(fields.is_empty(), "the fields moved into the columns");
        }
        batch
    }

    #[test]
    fn field_columns_append_split_and_retain_as_rows_holding_their_fields_do() {
        let mut batch = columns_holding(0..37);
        batch.append(columns_holding(37..50));
        let mut reference = rows_holding(0..50);
        assert_eq!(batch.clone().into_rows(), reference);
        for (slot, index) in [(0, 2), (0, 3), (0, 4), (1, 5), (1, 6), (2, 7)] {
            assert_eq!(
                batch.value(slot, index).into_owned(),
                reference[index].values[slot],
                "slot {slot} row {index}"
            );
        }
        let tail = batch.split_off(23);
        let reference_tail = reference.split_off(23);
        assert_eq!(tail.clone().into_rows(), reference_tail);
        let mut head = batch;
        head.retain(|row| !row.warm_up);
        reference.retain(|row| !row.warm_up);
        assert_eq!(head.clone().into_rows(), reference);
        // Rows that held their fields, turned into columns, read the same.
        let moved = Batch::columns_of_rows(
            rows_holding(0..50),
            &[
                ColumnType::Str,
                ColumnType::I64,
                ColumnType::F64,
                ColumnType::F64,
            ],
        );
        assert!(moved.rows().iter().all(|row| row.values.is_empty()));
        assert!(matches!(moved.cells(0), SlotCells::Column(Cells::Str(_))));
        assert_eq!(moved.into_rows(), rows_holding(0..50));
        // Split and kept parts append again as one.
        head.append(tail);
        reference.extend(reference_tail);
        assert_eq!(head.into_rows(), reference);
    }

    /// Who owns a key among `workers`, computed from the value itself.
    fn owner(key: &Value, workers: usize) -> usize {
        (key.stable_hash() % workers as u64) as usize
    }

    #[test]
    fn a_batch_split_by_key_sends_each_row_with_its_cells_to_its_keys_owner() {
        let mut batch = columns_holding(0..200);
        batch.set_numbers(
            3,
            (0..200).map(|index| (index % 7 != 0).then_some(index as f64)),
        );
        let whole = batch.clone().into_rows();
        // Strings (some null or empty) and integers (some null) as keys.
        for key_slot in [0, 1] {
            for workers in [1, 2, 3, 4] {
                let mut expected = vec![Vec::new(); workers];
                for row in &whole {
                    expected[owner(&row.values[key_slot], workers)].push(row.clone());
                }
                let mut split = vec![Vec::new(); workers];
                for (worker, part) in batch.clone().split_by_key(key_slot, workers) {
                    assert!(!part.is_empty() && split[worker].is_empty());
                    split[worker] = part.into_rows();
                }
                assert_eq!(split, expected, "key slot {key_slot}, {workers} workers");
            }
        }
    }

    /// Rows whose event times are out of offset order.
    fn out_of_order(range: std::ops::Range<u64>) -> Vec<Row> {
        rows_holding(range)
            .into_iter()
            .map(|row| Row {
                time: (row.offset * 37 % 23) as i64,
                ..row
            })
            .collect()
    }

    #[test]
    fn sorting_and_gathering_move_each_rows_cells_with_it() {
        let types = [ColumnType::Str, ColumnType::I64, ColumnType::F64];
        let unsorted = Batch::columns_of_rows(out_of_order(0..60), &types);
        let picks: Vec<(u32, u32)> = unsorted
            .canonical_order()
            .expect("out of order")
            .into_iter()
            .map(|index| (0, index))
            .collect();
        let sorted = Batch::gather(&[&unsorted], &picks);
        assert_eq!(sorted.canonical_order(), None);
        let mut expected = out_of_order(0..60);
        expected.sort_by_key(Row::canonical_order);
        assert_eq!(sorted.clone().into_rows(), expected);
        // Rows from a batch of columns and from one of rows holding their
        // values, interleaved.
        let columns = Batch::columns_of_rows(rows_holding(0..10), &types);
        let holding = Batch::from_rows(rows_holding(10..20));
        let picks: Vec<(u32, u32)> = (0..10)
            .flat_map(|index| [(1, 9 - index), (0, index)])
            .collect();
        let gathered = Batch::gather(&[&columns, &holding], &picks);
        let reference: Vec<Row> = picks
            .iter()
            .map(|&(source, index)| {
                rows_holding(0..20)[source as usize * 10 + index as usize].clone()
            })
            .collect();
        assert!(matches!(
            gathered.cells(0),
            SlotCells::Column(Cells::Str(_))
        ));
        assert_eq!(gathered.into_rows(), reference);
        // Slot 2 holds values in one source (a string did not fit) and
        // floats in the other.
        let mut floats = Batch::from_rows(rows(4, 3));
        floats.set_numbers(1, [Some(1.0), None, Some(3.0), None]);
        floats.set_numbers(2, [Some(0.5), Some(1.5), None, Some(2.5)]);
        let sources = [with_columns(3), floats];
        let picks = [(1, 3), (0, 1), (1, 0), (0, 2), (0, 0)];
        let gathered = Batch::gather(&[&sources[0], &sources[1]], &picks);
        let reference: Vec<Row> = picks
            .iter()
            .map(|&(source, index)| {
                sources[source as usize].clone().into_rows()[index as usize].clone()
            })
            .collect();
        assert_eq!(gathered.into_rows(), reference);
    }
}
