//! The timely operators of the graph, one per file, each a thin shell that
//! feeds batches to plain state (decoder, feature stages, batcher,
//! model, writers) and handles capabilities and frontiers.
//!
//! Timestamps are event-time watermarks in epoch ms: a source sends its
//! rows at its current watermark, so an operator whose input frontier has
//! passed `t` has seen every non-late row with event time before `t`.

pub mod checkpointing;
pub mod features;
pub mod input;
pub mod join;
pub mod labels;
pub mod offset_order;
pub mod rebalance;
pub mod score;
pub mod sink;
pub mod source;
pub mod source_time;

/// A stream of batches in a tideflow graph.
pub type BatchStream<'scope> = timely::dataflow::Stream<'scope, i64, Vec<crate::batch::Batch>>;

/// A stream of single rows: table, label and join rows, kept one by one
/// (see [`crate::batch::Batch::into_rows`]).
pub type RowStream<'scope> = timely::dataflow::Stream<'scope, i64, Vec<crate::row::Row>>;

/// Each container of rows as one batch.
pub fn as_batches(rows: RowStream<'_>) -> BatchStream<'_> {
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;
    rows.unary(Pipeline, "AsBatches", |_capability, _info| {
        |input, output| {
            input.for_each(|time, rows| {
                output
                    .session(&time)
                    .give(crate::batch::Batch::from_rows(std::mem::take(rows)));
            });
        }
    })
}
