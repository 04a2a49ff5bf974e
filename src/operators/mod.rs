//! The timely operators of the graph, one per file, each a thin shell that
//! feeds batches of rows to plain state (decoder, feature stages, batcher,
//! model, writers) and handles capabilities and frontiers.
//!
//! Timestamps are event-time watermarks in epoch ms: a source sends its
//! rows at its current watermark, so an operator whose input frontier has
//! passed `t` has seen every non-late row with event time before `t`.

pub mod features;
pub mod score;
pub mod sink;
pub mod source;

/// A stream of rows in a tideflow graph.
pub type RowStream<'scope> = timely::dataflow::Stream<'scope, i64, Vec<crate::row::Row>>;
