//! Column types: of schema fields, features and model outputs, and how
//! each maps to JSON and Arrow.

use arrow_schema::DataType;

/// The type of an output column, named in specs `string`, `i64`, `f64`,
/// `bool` and `timestamp_ms`. Lists are the types of model outputs with
/// several values per row; a spec cannot declare them.
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
    /// A list of 64-bit floats (a model's float output of several values
    /// per row, such as an embedding).
    #[serde(skip)]
    F64List,
    /// A list of 64-bit integers (a model's integer output of several
    /// values per row).
    #[serde(skip)]
    I64List,
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
            ColumnType::F64List => "list<f64>",
            ColumnType::I64List => "list<i64>",
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
            ColumnType::F64List => list_of(DataType::Float64),
            ColumnType::I64List => list_of(DataType::Int64),
        }
    }

    /// Whether values of this type can serve as a grouping key.
    pub fn is_key_type(self) -> bool {
        !matches!(
            self,
            ColumnType::F64 | ColumnType::F64List | ColumnType::I64List
        )
    }

    /// Whether values of this type are numbers for arithmetic.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            ColumnType::I64 | ColumnType::F64 | ColumnType::Bool | ColumnType::TimestampMs
        )
    }

    /// Whether this is a list type.
    pub fn is_list(self) -> bool {
        matches!(self, ColumnType::F64List | ColumnType::I64List)
    }
}

/// An Arrow list of `item`, its items nullable as Arrow's list builders
/// make them.
fn list_of(item: DataType) -> DataType {
    DataType::List(std::sync::Arc::new(arrow_schema::Field::new(
        "item", item, true,
    )))
}

/// A named, typed output column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Column type.
    pub ty: ColumnType,
}
