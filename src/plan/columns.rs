//! The output columns as the plan's builders add them, in slot order:
//! schema fields, joined columns, features, model outputs, labels.

use super::RESERVED_COLUMNS;
use crate::schema::{Column, ColumnType};

/// The columns resolved so far.
#[derive(Clone, Debug, Default)]
pub(super) struct Columns {
    columns: Vec<Column>,
}

impl Columns {
    /// The slot of the column named `name`, if there is one.
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|column| column.name == name)
    }

    /// Whether `name` is taken, by a column or by the engine.
    pub fn is_taken(&self, name: &str) -> bool {
        self.slot_of(name).is_some() || RESERVED_COLUMNS.contains(&name)
    }

    /// Adds a column and returns its slot.
    pub fn push(&mut self, name: &str, ty: ColumnType) -> usize {
        self.columns.push(Column {
            name: name.to_owned(),
            ty,
        });
        self.columns.len() - 1
    }

    /// The column in `slot`.
    pub fn get(&self, slot: usize) -> &Column {
        &self.columns[slot]
    }

    /// How many columns there are.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// The columns, in slot order.
    pub fn into_vec(self) -> Vec<Column> {
        self.columns
    }
}
