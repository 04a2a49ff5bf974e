//! Column types: of schema fields, features and model outputs, and how
//! each maps to JSON and Arrow.

use arrow_schema::DataType;

/// The type of an output column, named in specs `string`, `i64`, `f64`,
/// `bool` and `timestamp_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub enum ColumnType {
    /// UTF-8 text.
    #[serde(rename = "string")]
    Str,
    /// 64-bit integer.
    #[serde(rename = "i64")]
    I64,
    /// 64-bit float.
    #[serde(rename = "f64")]
    F64,
    /// Boolean.
    #[serde(rename = "bool")]
    Bool,
    /// Epoch milliseconds.
    #[serde(rename = "timestamp_ms")]
    TimestampMs,
}

impl ColumnType {
    /// The name used in specs and messages.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Str => "string",
            ColumnType::I64 => "i64",
            ColumnType::F64 => "f64",
            ColumnType::Bool => "bool",
            ColumnType::TimestampMs => "timestamp_ms",
        }
    }

    /// The Arrow type of the column in Parquet outputs.
    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Str => DataType::Utf8,
            ColumnType::I64 => DataType::Int64,
            ColumnType::F64 => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::TimestampMs => {
                DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, None)
            }
        }
    }

    /// Whether values of this type can serve as a grouping key.
    pub fn is_key_type(self) -> bool {
        !matches!(self, ColumnType::F64)
    }

    /// Whether values of this type are numbers for arithmetic.
    pub fn is_numeric(self) -> bool {
        !matches!(self, ColumnType::Str)
    }
}

/// A named, typed output column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Column type.
    pub ty: ColumnType,
}
