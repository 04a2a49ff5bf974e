//! Connectors of tideflow: where records come from before they enter the
//! dataflow, and the plain readers the engine wraps into timely operators.
//!
//! A connector knows a transport (files, a generator; Kafka in its own
//! module) and hands out *raw* records: the bytes of a line (or, for a
//! JSONL file, the whole lines of its read buffer, to decode where they
//! lie), typed fields where the transport is synthetic (generator), or
//! runs of records as Arrow columns where it is columnar already
//! (Parquet). It knows nothing of timely, schemas, or features, so that
//! each reader can be tested on its own and a Kafka partition drops in as
//! just another [`PartitionReader`].

pub mod columnar;
pub mod files;
pub mod generator;
pub mod kafka;
pub mod record;

pub use columnar::{Cell, CellKind, ColumnCells, ColumnChunk, ColumnReader};
pub use record::{CompactString, PartitionReader, Poll, RawBody, RawRecord, Value, format_compact};

use std::path::PathBuf;

/// Everything that can go wrong inside a connector.
///
/// Bad *records* are not errors: they travel on as raw records and become
/// dead letters downstream. These errors are about the transport itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory named by the spec could not be opened or read.
    #[error("cannot read {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The source path exists but holds no input file.
    #[error(
        "{path} holds no input files ending in .{extension}; point source.path at a file or a directory of them"
    )]
    NoInputFiles {
        /// The directory that was searched.
        path: PathBuf,
        /// The extension that was looked for.
        extension: String,
    },
    /// A Parquet file is not readable as Parquet.
    #[error("{path} is not a readable Parquet file: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// What the Parquet reader said.
        message: String,
    },
    /// A Kafka client failed: what it was doing and what librdkafka said
    /// (secrets redacted).
    #[error("{context}: {message}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The reason.
        message: String,
    },
    /// A generator setting is out of range.
    #[error("generator: {0}")]
    Generator(String),
}

impl Error {
    /// Whether trying the same operation again may succeed (a transient I/O
    /// failure), as opposed to a fault in the input or the spec.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }
}

/// Results of connector operations.
pub type Result<T> = std::result::Result<T, Error>;
