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
use crate::decode::Decoder;
use crate::intake::{ALIGNMENT_RECHECK, Intake, IntakeRules};
use crate::operators::source::open_assigned;
use crate::plan::{InputPlan, SourcePlan};
use crate::row::Row;
use crate::run::{Shared, Stats};
use crate::sinks::DeadLetterWriter;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::probe::Handle;

/// The partition of the row a label reader sends as it ends: its `time`
/// is the newest event time the reader's partitions showed (or
/// `i64::MIN`), and it has no values.
pub const READER_END: u32 = u32::MAX;

/// How soon an input whose partitions are all idle looks again at the
/// events' frontier.
const IDLE_FOLLOW: Duration = Duration::from_millis(20);

/// What an input reader needs besides its plan.
#[derive(Debug)]
pub struct InputContext {
    /// Where its dead letters go.
    pub dead_letters: Rc<RefCell<DeadLetterWriter>>,
    /// The frontier of the events' source.
    pub events: Handle<i64>,
    /// How far past the events' frontier it may read.
    pub skew_ms: i64,
    /// Whether it ends by sending a [`READER_END`] row (label inputs).
    pub announces_end: bool,
}

/// Opens worker `index`'s partitions of an input (partition `p` is read
/// by worker `p % peers`).
pub fn open_input(input: &InputPlan, index: usize, peers: usize) -> Result<Intake> {
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
    };
    Ok(Intake::new(assigned.readers, rules, &BTreeMap::new()))
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
        dead_letters,
        events,
        skew_ms,
        announces_end,
    } = context;
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
                let round = if stopping {
                    crate::intake::Round::default()
                } else {
                    let limit = events_at.map(|at| at.saturating_add(skew_ms));
                    intake.read_round(*held.time(), limit, &mut dead_letters)
                };
                Stats::add(&shared.stats.inputs_in, round.records_in);
                Stats::add(&shared.stats.inputs_late, round.late);
                Stats::add(&shared.stats.inputs_dead, round.dead);
                if let Some(error) = round.error {
                    shared.control.abort(error);
                }
                if !round.rows.is_empty() {
                    output.session(&*held).give_iterator(round.rows.into_iter());
                }
                if stopping || intake.all_finished() {
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
                    capability = None;
                    return;
                }
                let to = intake.watermark().or(events_at);
                if let Some(to) = to
                    && to > *held.time()
                {
                    held.downgrade(&to);
                }
                let again = match round.again {
                    _ if intake.watermark().is_none() => Some(IDLE_FOLLOW),
                    Some(wait) if round.waited_for_alignment => Some(wait.min(ALIGNMENT_RECHECK)),
                    again => again,
                };
                match again {
                    Some(Duration::ZERO) => activator.activate(),
                    Some(wait) => activator.activate_after(wait),
                    // Woken by a reader with records; the events' frontier
                    // is looked at again on the next round.
                    None => activator.activate_after(IDLE_FOLLOW),
                }
            }
        },
    )
}
