//! The feature operators: one per stage. A source-keyed stage computes
//! each batch as it arrives (its key's rows come from one partition, in
//! offset order), on the worker that reads the rows' partitions: within a
//! process, batches need not move between workers, and the keys each
//! worker keeps are claimed in [`crate::features::claims`] so that a key
//! found in two partitions still stops the run. (Across processes each
//! batch is split by the worker that owns each row's key, which sees every
//! partition of it.) Any other stage splits batches by its key the same
//! way, holds the parts until the watermark passes their rows and computes
//! the rows in (event time, partition, offset) order. Rows keep their
//! cells in columns all the way: split, held, merged.

use super::BatchStream;
use super::checkpointing::CutTracker;
use crate::Error;
use crate::batch::Batch;
use crate::checkpoint::restore::{StagePart, StagePartChangesRef, StagePartRef, part_name};
use crate::features::{StagePlan, StageState};
use crate::ordering::HeldBatches;
use crate::row::Row;
use crate::run::Shared;
use crate::watermarks::HeldRows;
use std::sync::Arc;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

/// Computes the window features of a stage.
pub trait ComputeFeatures<'scope> {
    /// Routes rows by the stage's key and adds the stage's feature columns;
    /// `index` is the stage's place in the plan (its checkpoint part).
    fn compute_features(
        self,
        index: usize,
        stage: StagePlan,
        shared: Arc<Shared>,
    ) -> BatchStream<'scope>;
}

impl<'scope> ComputeFeatures<'scope> for BatchStream<'scope> {
    fn compute_features(
        self,
        index: usize,
        stage: StagePlan,
        shared: Arc<Shared>,
    ) -> BatchStream<'scope> {
        let name = format!("Features({})", stage.key_name);
        match (stage.source_keyed, shared.in_cluster) {
            (true, false) => {
                // Alone, a worker sees every partition: nothing to claim.
                let claiming = self.scope().peers() > 1;
                where_read(self, name, index, stage, shared, claiming)
            }
            (true, true) => {
                let routed = by_key_in_offset_order(split_by_key(self, stage.key_slot));
                where_read(routed, name, index, stage, shared, false)
            }
            (false, _) => {
                let split = split_by_key(self, stage.key_slot);
                in_event_time_order(split, name, index, stage, shared)
            }
        }
    }
}

/// A stage's state at the start: restored from the checkpoint, or empty.
fn starting_part(shared: &Shared, index: usize, worker: usize, stage: &StagePlan) -> StagePart {
    shared
        .restored
        .take_stage(index, worker)
        .unwrap_or_else(|| StagePart {
            state: StageState::new(stage),
            buffered: Vec::new(),
        })
}

/// Reports a stage's part of a checkpoint, or stops the run: its state
/// and the rows it holds back (`buffered`), whole or as what changed since
/// its last part ([`CutTracker::wants_whole`] decides).
///
/// The worker encodes the part as the state is, into chunks the writer
/// thread stores and hands back (a ring of records is a copy or two; see
/// `features::numbers`), and goes on.
fn report_stage(
    cuts: &mut CutTracker,
    cut: crate::checkpoint::Cut,
    (state, buffered): (&mut StageState, Vec<&Row>),
    (stage, worker): (&StagePlan, usize),
    shared: &Shared,
) {
    let growth = state.growth_since_whole();
    let changes = state.changes().filter(|_| !cuts.wants_whole(growth));
    let whole = changes.is_none();
    let reported = match changes {
        Some(changes) => cuts.report_changes(cut, &StagePartChangesRef { changes, buffered }),
        None => cuts.report(cut, &StagePartRef { state, buffered }, Vec::new()),
    };
    state.checkpointed(whole);
    match reported {
        Ok(_) => {
            let keys = state.key_count() as u64;
            let bytes = cuts.estimated_whole_bytes(growth) as u64;
            shared
                .metrics
                .stage_state(&stage.key_name, worker, keys, bytes);
        }
        Err(error) => shared.control.abort(error),
    }
}

/// A part of a batch and the worker it goes to.
type Routed = (u64, Batch);

/// Parts of batches, each bound for one worker.
type RoutedStream<'scope> = timely::dataflow::Stream<'scope, i64, Vec<Routed>>;

/// Splits each batch by the worker that owns each row's key (see
/// [`Batch::split_by_key`]), the rows keeping their columns.
fn split_by_key(batches: BatchStream<'_>, key_slot: usize) -> RoutedStream<'_> {
    let workers = batches.scope().peers();
    batches.unary(Pipeline, "SplitByKey", move |_capability, _info| {
        move |input, output| {
            input.for_each(|time, batches| {
                let mut session = output.session(&time);
                for batch in batches.drain(..) {
                    for (worker, part) in batch.split_by_key(key_slot, workers) {
                        session.give((worker as u64, part));
                    }
                }
            });
        }
    })
}

/// Sends each part to its worker.
fn to_owner() -> Exchange<Routed, impl FnMut(&Routed) -> u64 + 'static> {
    Exchange::new(|(worker, _): &Routed| *worker)
}

fn apply_or_abort(
    state: &mut StageState,
    stage: &StagePlan,
    shared: &Shared,
    batch: &mut Batch,
) -> bool {
    match state.apply_batch(stage, shared.plan.bound_ms, batch) {
        Ok(()) => true,
        Err(conflict) => {
            shared.control.abort(Error::KeyInTwoPartitions {
                field: stage.key_name.clone(),
                key: conflict.key,
                first: conflict.first,
                second: conflict.second,
                offset: conflict.offset,
            });
            false
        }
    }
}

/// Claims the keys a worker started keeping since the last batch and
/// releases those it forgot; a key another partition holds stops the run.
fn claim_keys(state: &mut StageState, stage: &StagePlan, shared: &Shared) -> bool {
    let changes = state.take_key_changes();
    let claimed = shared
        .key_claims
        .claim_all(changes.started.iter().map(|(started, _)| started));
    if let Err(refused) = claimed {
        let (started, offset) = &changes.started[refused.position];
        shared.control.abort(Error::KeyInTwoPartitions {
            field: stage.key_name.clone(),
            key: crate::features::render_key(&started.key),
            first: refused.holder,
            second: started.partition,
            offset: *offset,
        });
        return false;
    }
    // After the claims: keys are forgotten only at the end of a batch, so
    // a key both started and forgotten in it must end unclaimed.
    shared.key_claims.release_all(&changes.forgotten);
    true
}

/// A source-keyed stage where its batches arrive: in one process,
/// partition `p` is read by worker `p % workers`, which then holds every
/// row of `p`'s keys, so batches stay on the worker that read them (the
/// plan puts this stage before any stage that exchanges rows), and the
/// workers claim their keys (`claiming`); across processes, rows come
/// by key ([`by_key_in_offset_order`]).
///
/// In a checkpointed run, batches at or past the cut in progress wait
/// until the stage has cut (see [`CutTracker`]).
fn where_read<'scope>(
    stream: BatchStream<'scope>,
    name: String,
    index: usize,
    stage: StagePlan,
    shared: Arc<Shared>,
    claiming: bool,
) -> BatchStream<'scope> {
    let worker = stream.scope().index();
    stream.unary_frontier(Pipeline, &name, move |_capability, _info| {
        let mut state = starting_part(&shared, index, worker, &stage).state;
        if shared.checkpoints.is_some() {
            state.track_changes();
        }
        if claiming {
            state.track_key_changes();
            state.restart_key_claims();
            claim_keys(&mut state, &stage, &shared);
        }
        let mut cuts = CutTracker::new(&shared, part_name(&format!("stage{index}"), worker));
        let mut held_back: Vec<(Capability<i64>, Vec<Batch>)> = Vec::new();
        move |(input, frontier), output| {
            let compute = |state: &mut StageState, batches: &mut Vec<Batch>| {
                let mut computed = Vec::with_capacity(batches.len());
                for mut batch in batches.drain(..) {
                    if shared.control.is_aborted()
                        || !apply_or_abort(state, &stage, &shared, &mut batch)
                        || (claiming && !claim_keys(state, &stage, &shared))
                    {
                        break;
                    }
                    computed.push(batch);
                }
                computed
            };
            input.for_each(|time, batches| {
                let at = time.least().copied().unwrap_or(i64::MIN);
                if cuts.holds_back(at) {
                    held_back.extend(
                        time.retain_least(0)
                            .map(|held| (held, std::mem::take(batches))),
                    );
                    return;
                }
                let computed = compute(&mut state, batches);
                output.session(&time).give_iterator(computed.into_iter());
            });
            while let Some(cut) = cuts.due(&frontier.frontier()) {
                let part = (&mut state, Vec::new());
                report_stage(&mut cuts, cut, part, (&stage, worker), &shared);
                for (held, mut batches) in cuts.release(&mut held_back, |(held, _)| *held.time()) {
                    let computed = compute(&mut state, &mut batches);
                    output.session(&held).give_iterator(computed.into_iter());
                }
            }
        }
    })
}

/// Parts of batches received by the worker that owns their rows' keys,
/// which sees every partition of them, each partition's rows in offset
/// order (one worker reads a partition, and timely keeps the order between
/// two workers): how a source-keyed stage gets its rows across processes.
fn by_key_in_offset_order(parts: RoutedStream<'_>) -> BatchStream<'_> {
    parts.unary(to_owner(), "ByKey", |_capability, _info| {
        |input, output| {
            input.for_each(|time, parts| {
                let batches = parts.drain(..).map(|(_, batch)| batch);
                output.session(&time).give_iterator(batches);
            });
        }
    })
}

/// A stage keyed by another field: rows go to the worker that owns their
/// key (as parts of their batches), wait there, and are computed in
/// (event time, partition, offset) order as the watermark releases them.
///
/// In a checkpointed run, rows at or past the cut in progress wait until
/// the stage has cut; its part holds the rows still buffered, which it
/// then sends at the cut's time or later.
fn in_event_time_order<'scope>(
    stream: RoutedStream<'scope>,
    name: String,
    index: usize,
    stage: StagePlan,
    shared: Arc<Shared>,
) -> BatchStream<'scope> {
    let worker = stream.scope().index();
    let types = shared.plan.column_types();
    stream.unary_frontier(to_owner(), &name, move |capability, _info| {
        let StagePart {
            mut state,
            buffered,
        } = starting_part(&shared, index, worker, &stage);
        if shared.checkpoints.is_some() {
            state.track_changes();
        }
        let mut buffer = HeldBatches::new(types);
        let mut capability = Some(capability);
        let start = capability.as_ref().map_or(i64::MIN, |held| *held.time());
        crate::run::Stats::add(&shared.stats.carried, buffered.len() as u64);
        buffer.push(Batch::from_rows(buffered), start);
        let mut cuts = CutTracker::new(&shared, part_name(&format!("stage{index}"), worker));
        let mut held_back: Vec<(i64, Vec<Routed>)> = Vec::new();
        let mut held_rows = HeldRows::default();
        move |(input, frontier), output| {
            input.for_each(|time, parts| {
                let arrival = time.least().copied().unwrap_or(i64::MIN);
                if cuts.holds_back(arrival) {
                    held_back.push((arrival, std::mem::take(parts)));
                    return;
                }
                hold(&mut buffer, parts, arrival, &shared);
            });
            let watermark = frontier.frontier().iter().min().copied();
            let Some(held) = capability.as_mut() else {
                return;
            };
            // Rows after a cut (held back) have event times at or past
            // it: until the stage has cut, only rows before the cut's
            // time leave, so that rows at or past it, from before the
            // cut and after, leave together in canonical order.
            let pending = cuts.pending_time();
            let before_cut = match (watermark, pending) {
                (Some(watermark), Some(time)) => Some(watermark.min(time)),
                (None, Some(time)) if time != crate::checkpoint::FINAL => Some(time),
                (watermark, _) => watermark,
            };
            let mut released = buffer.release(before_cut);
            if !released.is_empty()
                && !shared.control.is_aborted()
                && apply_or_abort(&mut state, &stage, &shared, &mut released)
            {
                output.session(&*held).give(released);
            }
            // Rows released above are before the cut; the rows still
            // buffered go into it, and are sent after it.
            while let Some(cut) = cuts.due(&frontier.frontier()) {
                let rows = buffer.rows();
                let part = (&mut state, rows.iter().collect());
                report_stage(&mut cuts, cut, part, (&stage, worker), &shared);
                // From here on every row leaves after the cut.
                buffer.retime_before(cut.time);
                if *held.time() < cut.time && cut.time != crate::checkpoint::FINAL {
                    held.downgrade(&cut.time);
                }
                for (arrival, mut parts) in cuts.release(&mut held_back, |(arrival, _)| *arrival) {
                    hold(&mut buffer, &mut parts, arrival, &shared);
                }
                // At the end of input, what came after the cut leaves
                // now too.
                let mut released = buffer.release(watermark);
                if !released.is_empty()
                    && !shared.control.is_aborted()
                    && apply_or_abort(&mut state, &stage, &shared, &mut released)
                {
                    output.session(&*held).give(released);
                }
            }
            held_rows.report(&shared.watermarks, buffer.len(), &shared.stats.most_held);
            // Held no later than the oldest row still buffered or held
            // back.
            let oldest_held_back = held_back.iter().map(|(arrival, _)| *arrival).min();
            match watermark.map(|watermark| {
                buffer
                    .oldest_arrival()
                    .into_iter()
                    .chain(oldest_held_back)
                    .fold(watermark, i64::min)
            }) {
                Some(time) if time > *held.time() => held.downgrade(&time),
                Some(_) => {}
                None => capability = None,
            }
        }
    })
}

fn hold(buffer: &mut HeldBatches, parts: &mut Vec<Routed>, arrival: i64, shared: &Shared) {
    if shared.control.is_aborted() {
        parts.clear();
        return;
    }
    for (_, batch) in parts.drain(..) {
        buffer.push(batch, arrival);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::claims::ClaimedKey;
    use crate::features::keys::KeyHash;
    use crate::spec::SpecSource;
    use tideflow_connectors::Value;

    const SPEC: &str = r#"
name = "claims"
source = { type = "generator", key = "user_id" }
schema = { user_id = "string", amount = "f64", ts = "timestamp_ms" }
time = { field = "ts" }
feature = [{ name = "amount_sum_1m", agg = "sum", field = "amount", window = "1m" }]
sink = [{ type = "null" }]
dead_letters = { type = "null" }
"#;

    fn row(user: &str, partition: u32, offset: u64, time: i64) -> Row {
        let mut values = vec![Value::Null; 4];
        values[0] = Value::Str(user.into());
        values[1] = Value::F64(1.0);
        values[2] = Value::I64(time);
        Row {
            partition,
            offset,
            time,
            values,
            warm_up: false,
        }
    }

    /// A key started and forgotten within one batch (it went idle at once)
    /// ends unclaimed, as a worker that forgot it would accept it from
    /// another partition.
    #[test]
    fn a_key_started_and_forgotten_in_one_batch_is_left_unclaimed() {
        let source = SpecSource {
            file: "claims.toml".into(),
            text: SPEC.to_owned(),
            overrides: Vec::new(),
        };
        let spec = source.parse().unwrap_or_else(|error| panic!("{error}"));
        let plan =
            crate::plan::Plan::from_spec(&spec, &source).unwrap_or_else(|error| panic!("{error}"));
        let stage = plan.stages[0].clone();
        let shared = Shared::new(plan, None, Arc::default());
        let mut state = StageState::new(&stage);
        state.track_key_changes();
        // "old" first, then enough rows of other keys an hour later for a
        // sweep, which finds "old" idle.
        let mut rows = vec![row("old", 0, 0, 0)];
        rows.extend((1..5000).map(|offset| row(&format!("u{offset}"), 0, offset, 3_600_000)));
        let mut batch = Batch::from_rows(rows);
        assert!(apply_or_abort(&mut state, &stage, &shared, &mut batch));
        assert!(claim_keys(&mut state, &stage, &shared));
        let claimed = |key: &str| {
            let key = Value::Str(key.into());
            ClaimedKey {
                hash: KeyHash::of(&key).get(),
                key,
                partition: 1,
            }
        };
        assert_eq!(shared.key_claims.claim(&claimed("old")), Ok(()));
        // Keys still kept stay claimed for their partition.
        assert_eq!(shared.key_claims.claim(&claimed("u1")), Err(0));
    }
}
