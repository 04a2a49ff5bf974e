//! Rebalancing rows before the model and the sinks.
//!
//! A stage keyed across partitions (or a join) leaves each row on the
//! worker that owns its key, and the model and the sinks run where the
//! row is. Keys are few or uneven far more often than partitions are: 500
//! merchants hashed over 16 workers give the busiest about a third more
//! rows than the mean, and one merchant with a tenth of the traffic
//! gives its worker more than twice the mean. Each worker would then
//! score and write that share, and the run would take as long as its
//! busiest worker.
//!
//! So after such a stage each batch goes to the worker of the process
//! that has taken the fewest rows so far, unless its own worker is within
//! a batch of that: rows stay where they are while the load is even and
//! move only to even it out. Batches move whole (no row is copied), but
//! for the few larger than [`PIECE_ROWS`] (what a watermark held back and
//! releases at once, at the end of a backfill say), which go in pieces, and
//! never to another process. Where no stage has moved rows, they stay on
//! the worker that read them, so a source-keyed run keeps each key's rows
//! on one worker, in order.

use super::BatchStream;
use crate::batch::Batch;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;

/// The most rows routed as one: a larger batch is cut into pieces of
/// this many, so that a batch the watermark releases at once is spread
/// too. A bulk batch's size, which the batcher downstream groups again.
pub const PIECE_ROWS: usize = 4096;

/// Rows each worker of a process has taken for scoring and writing, which
/// every worker's router reads.
#[derive(Debug, Default)]
pub struct RowBalance {
    /// The first worker of the process.
    first: usize,
    /// Per worker of the process, rows it has taken.
    taken: Vec<AtomicU64>,
}

impl RowBalance {
    /// The balance of the process whose workers are `local`.
    pub fn new(local: Range<usize>) -> Self {
        RowBalance {
            first: local.start,
            taken: local.map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The worker that takes a batch of `rows` rows from worker `from`:
    /// `from` itself while it has taken no more than the least-loaded
    /// worker and a batch (or a 64th of its own rows, whichever is more),
    /// else that worker.
    pub fn route(&self, from: usize, rows: usize) -> usize {
        let Some(own) = from
            .checked_sub(self.first)
            .filter(|own| *own < self.taken.len())
        else {
            return from;
        };
        let taken: Vec<u64> = self
            .taken
            .iter()
            .map(|taken| taken.load(Ordering::Relaxed))
            .collect();
        let (least, least_taken) = taken
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, taken)| *taken)
            .expect("a process has a worker");
        let slack = (rows as u64).max(taken[own] / 64);
        let target = if taken[own] <= least_taken + slack {
            own
        } else {
            least
        };
        self.taken[target].fetch_add(rows as u64, Ordering::Relaxed);
        self.first + target
    }
}

/// Evens out the rows of a stream over the workers of the process.
pub trait Rebalance<'scope> {
    /// Each batch to the worker [`RowBalance::route`] picks.
    fn rebalance(self, shared: std::sync::Arc<crate::run::Shared>) -> BatchStream<'scope>;
}

impl<'scope> Rebalance<'scope> for BatchStream<'scope> {
    fn rebalance(self, shared: std::sync::Arc<crate::run::Shared>) -> BatchStream<'scope> {
        let worker = self.scope().index();
        let routed = self.unary(Pipeline, "RouteToBalance", move |_capability, _info| {
            move |input, output| {
                input.for_each(|time, batches| {
                    let mut session = output.session(&time);
                    for batch in batches.drain(..).flat_map(pieces) {
                        let target = shared.balance.route(worker, batch.len());
                        session.give((target as u64, batch));
                    }
                });
            }
        });
        let to_target = Exchange::new(|(target, _): &(u64, Batch)| *target);
        routed.unary(to_target, "Rebalanced", |_capability, _info| {
            |input, output| {
                input.for_each(|time, routed| {
                    let batches = routed.drain(..).map(|(_, batch)| batch);
                    output.session(&time).give_iterator(batches);
                });
            }
        })
    }
}

/// A batch in pieces of at most [`PIECE_ROWS`] rows, in order (none if
/// it is empty): each piece but the first is copied once.
fn pieces(mut batch: Batch) -> Vec<Batch> {
    let mut pieces = Vec::new();
    while batch.len() > PIECE_ROWS {
        let last_piece_starts = (batch.len() - 1) / PIECE_ROWS * PIECE_ROWS;
        pieces.push(batch.split_off(last_piece_starts));
    }
    if !batch.is_empty() {
        pieces.push(batch);
    }
    pieces.reverse();
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_stay_put_while_the_load_is_even() {
        let balance = RowBalance::new(4..6);
        // Both workers take their own batches in turn: none moves.
        for _ in 0..100 {
            assert_eq!(balance.route(4, 1000), 4);
            assert_eq!(balance.route(5, 1000), 5);
        }
    }

    #[test]
    fn a_busier_worker_hands_its_excess_to_the_least_loaded() {
        let balance = RowBalance::new(0..3);
        // Worker 0 alone releases rows (it owns the one hot key): they
        // end up spread over the three workers, each within a batch of
        // the others.
        let mut taken = [0u64; 3];
        for _ in 0..300 {
            taken[balance.route(0, 1000)] += 1000;
        }
        let (least, most) = (taken.iter().min().unwrap(), taken.iter().max().unwrap());
        assert_eq!(taken.iter().sum::<u64>(), 300_000);
        assert!(most - least <= 2000, "{taken:?}");
    }

    #[test]
    fn large_batches_go_in_pieces_in_order() {
        let batch = |rows: std::ops::Range<usize>| {
            Batch::from_rows(
                rows.map(|offset| crate::row::Row {
                    offset: offset as u64,
                    ..Default::default()
                })
                .collect(),
            )
        };
        let offsets = |pieces: Vec<Batch>| -> Vec<Vec<u64>> {
            pieces
                .iter()
                .map(|piece| piece.rows().iter().map(|row| row.offset).collect())
                .collect()
        };
        assert!(pieces(batch(0..0)).is_empty());
        assert_eq!(offsets(pieces(batch(0..PIECE_ROWS))).len(), 1);
        let cut = offsets(pieces(batch(0..2 * PIECE_ROWS + 5)));
        let lengths: Vec<usize> = cut.iter().map(Vec::len).collect();
        assert_eq!(lengths, [PIECE_ROWS, PIECE_ROWS, 5]);
        let flat: Vec<u64> = cut.into_iter().flatten().collect();
        assert_eq!(flat, (0..2 * PIECE_ROWS as u64 + 5).collect::<Vec<_>>());
    }

    #[test]
    fn workers_of_other_processes_keep_their_rows() {
        let balance = RowBalance::new(2..4);
        assert_eq!(balance.route(0, 1000), 0);
        assert_eq!(balance.route(7, 1000), 7);
        assert_eq!(RowBalance::default().route(1, 10), 1);
    }
}
