//! The scoring operator: evaluates row expressions, groups rows into
//! batches by the batching policy, and runs the model on each batch.
//! Micro, bulk and adaptive batching all pass through this one operator.

use super::RowStream;
use crate::batching::Batcher;
use crate::inference::Model;
use crate::row::Row;
use crate::run::Shared;
use std::sync::Arc;
use std::time::Instant;
use tideflow_connectors::Value;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

/// Batches rows and scores them with a model.
pub trait ScoreRows<'scope> {
    /// Expressions, then batching, then the model (when there is one).
    fn score_rows(self, model: Option<Model>, shared: Arc<Shared>) -> RowStream<'scope>;
}

impl<'scope> ScoreRows<'scope> for RowStream<'scope> {
    fn score_rows(self, mut model: Option<Model>, shared: Arc<Shared>) -> RowStream<'scope> {
        let scope = self.scope();
        self.unary_frontier(Pipeline, "Score", move |capability, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut batcher = Batcher::new(shared.plan.batching);
            let mut capability = Some(capability);
            move |(input, frontier), output| {
                let now = Instant::now();
                input.for_each(|_time, rows| {
                    if shared.is_aborted() {
                        rows.clear();
                        return;
                    }
                    for row in rows.iter_mut() {
                        evaluate_expressions(&shared, row);
                    }
                    batcher.extend(rows.drain(..), now);
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
                    if let Some(model) = model.as_mut()
                        && let Err(error) = model.score(&mut batch)
                    {
                        shared.abort(error);
                        break;
                    }
                    shared.stats.batch(batch.len());
                    output.session(&*held).give_container(&mut batch);
                }
                if let Some(wait) = batcher.time_to_deadline(behind, now) {
                    activator.activate_after(wait);
                }
                match frontier.frontier().iter().min() {
                    Some(time) if time > held.time() => held.downgrade(time),
                    Some(_) => {}
                    None if batcher.is_empty() || shared.is_aborted() => capability = None,
                    None => activator.activate(),
                }
            }
        })
    }
}

fn evaluate_expressions(shared: &Shared, row: &mut Row) {
    for (slot, expr) in &shared.plan.expressions {
        row.values[*slot] = expr.eval(&row.values).map_or(Value::Null, Value::F64);
    }
}
