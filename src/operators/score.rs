//! The scoring operator: evaluates row expressions, groups rows into
//! batches by the batching policy, and runs the model on each batch.
//! Micro, bulk and adaptive batching all pass through this one operator.

use super::BatchStream;
use crate::batch::Batch;
use crate::batching::Batcher;
use crate::inference::Model;
use crate::run::Shared;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

/// Batches rows and scores them with a model.
pub trait ScoreRows<'scope> {
    /// Expressions, then batching, then the model (when there is one).
    fn score_rows(self, model: Option<Model>, shared: Arc<Shared>) -> BatchStream<'scope>;
}

impl<'scope> ScoreRows<'scope> for BatchStream<'scope> {
    fn score_rows(self, mut model: Option<Model>, shared: Arc<Shared>) -> BatchStream<'scope> {
        let scope = self.scope();
        self.unary_frontier(Pipeline, "Score", move |capability, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut batcher = Batcher::new(shared.plan.batching);
            // (dataflow time, rows) of the rows in the batcher, oldest first:
            // the capability is held no later than the oldest.
            let mut arrivals: VecDeque<(i64, usize)> = VecDeque::new();
            let mut capability = Some(capability);
            move |(input, frontier), output| {
                let now = Instant::now();
                input.for_each(|time, batches| {
                    for mut batch in batches.drain(..) {
                        if shared.is_aborted() || batch.is_empty() {
                            continue;
                        }
                        let arrival = time.least().copied().unwrap_or(i64::MIN);
                        arrivals.push_back((arrival, batch.len()));
                        evaluate_expressions(&shared, &mut batch);
                        batcher.extend(batch, now);
                    }
                });
                let Some(held) = capability.as_mut() else {
                    return;
                };
                let input_ended = frontier.is_empty();
                let behind = shared.any_behind();
                while let Some(mut batch) = batcher.next_batch(behind, input_ended, now) {
                    if shared.is_aborted() {
                        break;
                    }
                    if let Some(model) = model.as_mut() {
                        let scoring = Instant::now();
                        if let Err(error) = model.score(&mut batch) {
                            shared.abort(error);
                            break;
                        }
                        let seconds = scoring.elapsed().as_secs_f64();
                        shared.metrics.inference_seconds.observe(seconds);
                    }
                    shared.stats.batch(batch.len());
                    shared.metrics.batch_rows.observe(batch.len() as f64);
                    forget_arrivals(&mut arrivals, batch.len());
                    output.session(&*held).give(batch);
                }
                if let Some(wait) = batcher.time_to_deadline(behind, now) {
                    activator.activate_after(wait);
                }
                let hold = frontier.frontier().iter().min().map(|time| {
                    arrivals
                        .front()
                        .map_or(*time, |(oldest, _)| (*oldest).min(*time))
                });
                match hold.as_ref() {
                    Some(time) if time > held.time() => held.downgrade(time),
                    Some(_) => {}
                    None if batcher.is_empty() || shared.is_aborted() => capability = None,
                    None => activator.activate(),
                }
            }
        })
    }
}

/// Removes `count` rows, oldest first, from the arrival record.
fn forget_arrivals(arrivals: &mut VecDeque<(i64, usize)>, mut count: usize) {
    while count > 0 {
        let Some((_, rows)) = arrivals.front_mut() else {
            return;
        };
        let taken = count.min(*rows);
        *rows -= taken;
        count -= taken;
        if *rows == 0 {
            arrivals.pop_front();
        }
    }
}

/// Adds a column per expression; each may read the columns before it.
fn evaluate_expressions(shared: &Shared, batch: &mut Batch) {
    for (slot, expr) in &shared.plan.expressions {
        let numbers: Vec<Option<f64>> = {
            let readers = batch.readers();
            (0..batch.len())
                .map(|index| expr.eval(&readers.row(index)))
                .collect()
        };
        batch.set_numbers(*slot, numbers);
    }
}
