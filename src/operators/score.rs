//! The scoring operator: evaluates row expressions, groups rows into
//! batches by the batching policy, and runs the model on each batch.
//! Micro, bulk and adaptive batching all pass through this one operator.
//! A batch the model fails on becomes dead letters, one per row with the
//! model's message, and the run goes on (unless `model.on_error = "stop"`).

use super::BatchStream;
use super::checkpointing::CutTracker;
use crate::batch::Batch;
use crate::batching::Batcher;
use crate::checkpoint::restore::{SinkCut, part_name};
use crate::features::expr::Expr;
use crate::models::VersionedScorer;
use crate::row::DeadLetter;
use crate::run::{Shared, Stats};
use crate::sinks::DeadLetterWriter;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

/// Batches rows and scores them with a model.
pub trait ScoreRows<'scope> {
    /// Expressions, then batching, then the model (when there is one);
    /// the rows of batches the model fails on go to `dead_letters`.
    fn score_rows(
        self,
        model: Option<VersionedScorer>,
        shared: Arc<Shared>,
        dead_letters: Rc<RefCell<DeadLetterWriter>>,
    ) -> BatchStream<'scope>;
}

impl<'scope> ScoreRows<'scope> for BatchStream<'scope> {
    fn score_rows(
        self,
        mut model: Option<VersionedScorer>,
        shared: Arc<Shared>,
        dead_letters: Rc<RefCell<DeadLetterWriter>>,
    ) -> BatchStream<'scope> {
        let scope = self.scope();
        let worker = scope.index();
        self.unary_frontier(Pipeline, "Score", move |capability, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut batcher = Batcher::new(shared.plan.batching, model.is_none());
            // (dataflow time, rows) of the rows in the batcher, in the order
            // they came (not always in time order: rebalanced rows come from
            // every worker): the capability is held no later than the
            // earliest.
            let mut arrivals: VecDeque<(i64, usize)> = VecDeque::new();
            let mut capability = Some(capability);
            let mut wrote_dead_letters = false;
            // A checkpointed run's batcher holds nothing at a cut: it
            // scores what came before, and input after waits here.
            let mut cuts = CutTracker::new(&shared, part_name("score", worker));
            let mut held_back: Vec<(i64, Vec<Batch>)> = Vec::new();
            move |(input, frontier), output| {
                let now = Instant::now();
                input.for_each(|time, batches| {
                    let arrival = time.least().copied().unwrap_or(i64::MIN);
                    if cuts.holds_back(arrival) {
                        held_back.push((arrival, std::mem::take(batches)));
                    } else {
                        take(
                            &shared,
                            &mut batcher,
                            &mut arrivals,
                            (arrival, batches),
                            now,
                        );
                    }
                });
                let Some(held) = capability.as_mut() else {
                    return;
                };
                let cut = cuts.due(&frontier.frontier());
                let input_ended = frontier.is_empty() || cut.is_some();
                let behind = shared.any_behind();
                while let Some(mut batch) = batcher.next_batch(behind, input_ended, now) {
                    if shared.control.is_aborted() {
                        break;
                    }
                    forget_arrivals(&mut arrivals, batch.len());
                    if let Some(model) = model.as_mut() {
                        let scoring = Instant::now();
                        if let Err(error) = model.score(&mut batch) {
                            if model.plan().stop_on_error {
                                shared.control.abort(error);
                                break;
                            }
                            send_to_dead_letters(batch, &error, &shared, &dead_letters);
                            wrote_dead_letters = true;
                            continue;
                        }
                        let seconds = scoring.elapsed().as_secs_f64();
                        shared.metrics.inference_seconds.observe(seconds);
                    }
                    if let Some(drift) = &shared.drift {
                        drift.observe(&batch);
                    }
                    shared.stats.batch(batch.len());
                    shared.metrics.batch_rows.observe(batch.len() as f64);
                    output.session(&*held).give(batch);
                }
                if let Some(cut) = cut {
                    let closed = dead_letters.borrow_mut().close_epoch(cut.id);
                    let reported = closed.and_then(|closed| {
                        let part = SinkCut::of_dead_letters(closed);
                        let files = part.files.clone();
                        cuts.report(cut, &part, files).map(|_| ())
                    });
                    if let Err(error) = reported {
                        shared.control.abort(error);
                    }
                    for (arrival, mut batches) in
                        cuts.release(&mut held_back, |(arrival, _)| *arrival)
                    {
                        let batches = (arrival, &mut batches);
                        take(&shared, &mut batcher, &mut arrivals, batches, now);
                    }
                    activator.activate();
                }
                if let Some(wait) = batcher.time_to_deadline(behind, now) {
                    activator.activate_after(wait);
                }
                let oldest_held_back = held_back.iter().map(|(arrival, _)| *arrival).min();
                let hold = frontier.frontier().iter().min().map(|time| {
                    arrivals
                        .iter()
                        .map(|(arrival, _)| *arrival)
                        .min()
                        .into_iter()
                        .chain(oldest_held_back)
                        .fold(*time, i64::min)
                });
                match hold.as_ref() {
                    Some(time) if time > held.time() => held.downgrade(time),
                    Some(_) => {}
                    None if batcher.is_empty() || shared.control.is_aborted() => {
                        // The source flushed its dead letters when it
                        // ended; these came after.
                        if wrote_dead_letters && let Err(error) = dead_letters.borrow_mut().finish()
                        {
                            shared.control.abort(error);
                        }
                        capability = None;
                    }
                    None => activator.activate(),
                }
            }
        })
    }
}

/// Evaluates the expressions of batches that arrived at `arrival` and
/// hands them to the batcher.
fn take(
    shared: &Shared,
    batcher: &mut Batcher,
    arrivals: &mut VecDeque<(i64, usize)>,
    (arrival, batches): (i64, &mut Vec<Batch>),
    now: Instant,
) {
    for mut batch in batches.drain(..) {
        if shared.control.is_aborted() || batch.is_empty() {
            continue;
        }
        arrivals.push_back((arrival, batch.len()));
        evaluate_expressions(&shared.plan.expressions, &mut batch);
        batcher.extend(batch, now);
    }
}

/// Writes each row of a batch the model failed on as a dead letter with
/// the model's message, and counts it.
fn send_to_dead_letters(
    batch: Batch,
    error: &crate::Error,
    shared: &Shared,
    dead_letters: &RefCell<DeadLetterWriter>,
) {
    let reason = format!("inference failed: {error}");
    let mut dead_letters = dead_letters.borrow_mut();
    for row in batch.into_rows() {
        let letter = DeadLetter {
            partition: row.partition,
            offset: row.offset,
            error: reason.clone(),
            raw: crate::decode::fields_as_json(
                &shared.plan.columns[..shared.plan.field_count],
                &row.values,
            )
            .into_bytes(),
            key: None,
            headers: Vec::new(),
        };
        if let Err(error) = dead_letters.write(&letter) {
            shared.control.abort(error);
            return;
        }
        Stats::add(&shared.stats.dead, 1);
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
///
/// Each expression is evaluated over the whole batch at once, a node at
/// a time (see [`Expr::eval_column`]), and its column joins the batch
/// before the next one reads it.
fn evaluate_expressions(expressions: &[(usize, Expr)], batch: &mut Batch) {
    for (slot, expr) in expressions {
        let numbers = expr.eval_column(batch);
        batch.set_numbers(*slot, numbers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Row;
    use tideflow_connectors::Value;

    /// Slot 2 is `a + b`, slot 3 reads slot 2: each row sees the result of
    /// the expression before it computed for that same row, and nulls
    /// pass through.
    #[test]
    fn an_expression_reads_the_results_of_earlier_ones_in_its_own_row() {
        let resolve = |name: &str| match name {
            "a" => Ok(0),
            "b" => Ok(1),
            "sum" => Ok(2),
            other => Err(format!("unknown column '{other}'")),
        };
        let expressions = vec![
            (2, Expr::parse("a + b", &resolve).unwrap()),
            (3, Expr::parse("sum * 10 + a", &resolve).unwrap()),
        ];
        let row = |offset, a: Value, b: Value| Row {
            partition: 0,
            offset,
            time: 0,
            values: vec![a, b],
            warm_up: false,
        };
        let mut batch = Batch::from_rows(vec![
            row(0, Value::F64(1.0), Value::F64(2.0)),
            row(1, Value::F64(5.0), Value::Null),
            row(2, Value::I64(4), Value::F64(0.5)),
        ]);
        evaluate_expressions(&expressions, &mut batch);
        let results: Vec<[Value; 2]> = (0..batch.len())
            .map(|index| [2, 3].map(|slot| batch.value(slot, index).into_owned()))
            .collect();
        assert_eq!(
            results,
            vec![
                [Value::F64(3.0), Value::F64(31.0)],
                [Value::Null, Value::Null],
                [Value::F64(4.5), Value::F64(49.0)],
            ]
        );
    }
}
