//! The JSON line format: a row as one JSON object, with `_partition`,
//! `_offset` (and `_topic`) after the schema fields and `_model` last.
//! Floats are written in their shortest exact form, so they read back bit
//! for bit; JSON has no NaN or infinity, which are written as `null`
//! (Parquet keeps them).

use super::Layout;
use crate::batch::RowCells;
use crate::decode::value_to_json;
use crate::row::Row;
use tideflow_connectors::Value;

impl Layout {
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
