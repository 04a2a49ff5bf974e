//! The one error type of the `tideflow` library.

use crate::spec::SpecError;

/// Everything that can stop a tideflow run or check.
///
/// Bad records are not errors: they become dead letters. These are faults
/// of the spec, the model, the environment, or a broken promise of the
/// input (a key seen in two partitions of a source keyed by it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is unreadable or inconsistent.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A connector failed (file missing, unreadable Parquet, ...).
    #[error(transparent)]
    Connector(#[from] tideflow_connectors::Error),
    /// The ONNX Runtime library is not installed where tideflow looks.
    #[error(
        "ONNX Runtime library not found (looked at {looked_at}).\n  fix: run `scripts/setup-onnxruntime.sh` (installs it from the onnxruntime wheel on PyPI), or set ORT_DYLIB_PATH to a libonnxruntime.so {version}"
    )]
    RuntimeMissing {
        /// The places searched.
        looked_at: String,
        /// The ONNX Runtime version tideflow targets.
        version: &'static str,
    },
    /// The model cannot be loaded or does not fit the spec.
    #[error("model {path}: {message}")]
    Model {
        /// The model file.
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Running the model on a batch failed.
    #[error("inference failed on a batch of {rows} rows: {message}")]
    Inference {
        /// Rows in the batch.
        rows: usize,
        /// ONNX Runtime's message.
        message: String,
    },
    /// A sink could not write.
    #[error("sink {sink}: {message}")]
    Sink {
        /// Which sink.
        sink: String,
        /// What went wrong.
        message: String,
    },
    /// The source is declared keyed by a field, but a key appeared in two
    /// partitions.
    #[error(
        "source.key = '{field}' is not the partitioning key: key {key} appears in partition {first} and in partition {second} (offset {offset}).\n  fix: remove source.key (features keyed by '{field}' are then ordered by event time) or repartition the input by '{field}'"
    )]
    KeyInTwoPartitions {
        /// The declared key field.
        field: String,
        /// The key value, rendered.
        key: String,
        /// The partition where the key was first seen.
        first: u32,
        /// The other partition.
        second: u32,
        /// The offset of the record in `second`.
        offset: u64,
    },
    /// The timely runtime failed (a worker panicked, a thread could not start).
    #[error("dataflow runtime: {0}")]
    Runtime(String),
    /// A cluster that cannot form or went wrong: a bad hosts file, a
    /// process that stopped, a launch that failed.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The metrics endpoint cannot be served.
    #[error("metrics: {0}")]
    Metrics(String),
    /// A checkpoint cannot be written, or one found cannot be read.
    #[error("checkpoint {location}: {message}")]
    Checkpoint {
        /// The checkpoint directory or file.
        location: String,
        /// What is wrong and what to do.
        message: String,
    },
}

impl Error {
    /// Whether running again unchanged may succeed: only failures of the
    /// environment, never faults of the spec, model or input.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connector(error) => error.is_retryable(),
            Error::Sink { .. } => true,
            _ => false,
        }
    }
}

/// Results of the tideflow library.
pub type Result<T> = std::result::Result<T, Error>;
