//! The operator reading a table or label input: a timely shell around an
//! [`Intake`] of the input's partitions, like the source's, that sends
//! each decoded record as a row at the input's watermark.
//!
//! An input is read only as far ahead of the events as the source reads
//! its own partitions ahead of each other (`time.max_partition_skew`
//! past the events' frontier): versions and labels far ahead of every
//! event would only wait in memory. When all its partitions are idle or
//! it has none, its time follows the events' frontier, so that joins are
//! not held by a quiet changelog; its records that arrive later behind
//! that time are late. It stops once it has read everything (its end is
//! the events' end), or when the run stops.
//!
//! A label input ends by telling every worker the newest event time it
//! read ([`READER_END`]): a row's horizon is complete when the label
//! input's newest time, less its bound, is past it.

use super::RowStream;
use crate::Result;
use crate::checkpoint::Cut;
use crate::checkpoint::restore::{PartitionPosition, SinkCut, SourceCut, part_name};
use crate::decode::Decoder;
use crate::intake::{ALIGNMENT_RECHECK, Intake, IntakeRules};
use crate::operators::source::{open_assigned, resume_at_restored};
use crate::operators::source_time;
use crate::plan::{InputPlan, SourcePlan};
use crate::row::Row;
use crate::run::{Shared, Stats};
use crate::sinks::DeadLetterWriter;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::probe::Handle;

/// The partition of the row a label reader sends as it ends: its `time`
/// is the newest event time the reader's partitions showed (or
/// `i64::MIN`), and it has no values.
pub const READER_END: u32 = u32::MAX;

/// What an input reader needs besides its plan.
#[derive(Debug)]
pub struct InputContext {
    /// The input's place among the plan's tables then labels (its
    /// checkpoint part is `input<index>`).
    pub index: usize,
    /// Where its dead letters go.
    pub dead_letters: Rc<RefCell<DeadLetterWriter>>,
    /// The frontier of the events' source.
    pub events: Handle<i64>,
    /// How far past the events' frontier it may read.
    pub read_ahead_ms: i64,
    /// How far past the events' frontier its time may run
    /// (`time.max_partition_skew`).
    pub skew_ms: i64,
    /// Whether it ends by sending a [`READER_END`] row (label inputs).
    pub announces_end: bool,
}

/// The id under which the reader of input `input` on worker `worker`
/// takes part in the checkpoints' cuts, beside the sources (whose ids are
/// their workers).
pub fn participant(input: usize, worker: usize) -> usize {
    (input + 1) * PARTICIPANTS_PER_INPUT + worker
}

/// Room for this many workers' ids per input.
const PARTICIPANTS_PER_INPUT: usize = 1 << 20;

/// Opens worker `index`'s partitions of an input (partition `p` is read
/// by worker `p % peers`), each from its position in `restored` (a
/// checkpoint's) when it has one.
pub fn open_input(
    input: &InputPlan,
    (index, peers): (usize, usize),
    restored: &BTreeMap<u32, PartitionPosition>,
) -> Result<Intake> {
    let names: Vec<String> = input
        .columns
        .iter()
        .map(|column| column.name.clone())
        .collect();
    let assigned = open_assigned(&input.source, &names, index, peers)?;
    let rules = IntakeRules {
        decoder: Decoder::for_input(input),
        bound_ms: input.bound_ms,
        tracks_lateness: true,
        idle_timeout: match &input.source {
            SourcePlan::Kafka(kafka) => Some(kafka.idle_timeout),
            _ => None,
        },
        // Table and label rows are kept one by one.
        columnar: false,
    };
    let readers = resume_at_restored(assigned.readers, restored);
    Ok(Intake::new(readers, rules, restored))
}

/// Builds the reader of an input on worker `scope.index()`.
pub fn read_input<'scope>(
    scope: Scope<'scope, i64>,
    name: &str,
    mut intake: Intake,
    shared: Arc<Shared>,
    context: InputContext,
) -> RowStream<'scope> {
    let InputContext {
        index,
        dead_letters,
        events,
        read_ahead_ms,
        skew_ms,
        announces_end,
    } = context;
    let worker = scope.index();
    let id = participant(index, worker);
    if let Some(coordinator) = &shared.checkpoints {
        coordinator.source_starts(id, i64::MIN);
    }
    let mut ended = false;
    source::<i64, CapacityContainerBuilder<Vec<Row>>, _, _>(
        scope,
        &format!("Input({name})"),
        move |capability, info| {
            let activator = scope.activator_for(info.address.clone());
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            intake.set_wakeup(Arc::new(move || {
                let _ = wake.activate();
            }));
            let mut capability = Some(capability);
            move |output| {
                let Some(held) = capability.as_mut() else {
                    return;
                };
                let events_at = events.with_frontier(|frontier| frontier.first().copied());
                let stopping = shared.control.is_aborted() || shared.control.stop_requested();
                let mut dead_letters = dead_letters.borrow_mut();
                let round = if stopping || ended {
                    crate::intake::Round::default()
                } else {
                    let limit = events_at.map(|at| at.saturating_add(read_ahead_ms));
                    intake.read_round(*held.time(), limit, &mut dead_letters)
                };
                Stats::add(&shared.stats.inputs_in, round.records_in);
                Stats::add(&shared.stats.inputs_late, round.late);
                Stats::add(&shared.stats.inputs_dead, round.dead);
                if let Some(error) = round.error {
                    shared.control.abort(error);
                }
                if !round.batch.is_empty() {
                    output
                        .session(&*held)
                        .give_iterator(round.batch.into_rows().into_iter());
                }
                if !ended && (stopping || intake.all_finished()) {
                    ended = true;
                    if let Err(error) = dead_letters.finish() {
                        shared.control.abort(error);
                    }
                    if announces_end {
                        let end = Row {
                            partition: READER_END,
                            time: intake.newest_time().unwrap_or(i64::MIN),
                            ..Row::default()
                        };
                        output.session(&*held).give(end);
                    }
                }
                // A run stopping on an error takes no last checkpoint.
                let checkpoints = shared
                    .checkpoints
                    .as_deref()
                    .filter(|_| !shared.control.is_aborted());
                let at = (id, *held.time());
                let step = if ended {
                    source_time::when_finished(checkpoints, at, events_at)
                } else {
                    // Its time runs at most the skew ahead of the events,
                    // however far a round read (every record it sends is
                    // still at or after its time): a checkpoint's cut,
                    // chosen above every reader's time, is then soon
                    // reached by the events.
                    let watermark = intake.watermark().map(|watermark| {
                        events_at.map_or(watermark, |at| watermark.min(at.saturating_add(skew_ms)))
                    });
                    let again = match round.again {
                        Some(wait) if round.waited_for_alignment => {
                            Some(wait.min(ALIGNMENT_RECHECK))
                        }
                        again => again,
                    };
                    source_time::while_reading(
                        checkpoints,
                        at,
                        watermark,
                        || events_at,
                        (again, intake.idle_timeout()),
                    )
                };
                if let Some(cut) = step.cut {
                    let part = (index, worker);
                    if let Err(error) = cut_input(&shared, part, cut, &intake, &mut dead_letters) {
                        shared.control.abort(error);
                    }
                }
                let Some(to) = step.to else {
                    capability = None;
                    return;
                };
                if to > *held.time() {
                    held.downgrade(&to);
                }
                if step.wait.is_zero() {
                    activator.activate();
                } else {
                    activator.activate_after(step.wait);
                }
            }
        },
    )
}

/// Takes the reader's part of a checkpoint: its partitions' positions and
/// the dead-letter files of the epoch.
fn cut_input(
    shared: &Shared,
    (index, worker): (usize, usize),
    cut: Cut,
    intake: &Intake,
    dead_letters: &mut DeadLetterWriter,
) -> Result<()> {
    let Some(coordinator) = &shared.checkpoints else {
        return Ok(());
    };
    let closed = dead_letters.close_epoch(cut.id)?;
    let files = closed.files.clone();
    let part = SourceCut {
        partitions: intake.positions(),
        dead_letters: SinkCut::of_dead_letters(closed),
    };
    let bytes = crate::checkpoint::encode(&part);
    let name = part_name(&format!("input{index}"), worker);
    coordinator.report(cut.id, &name, (bytes, false), files)
}
