//! Assembling and running the graph: source → decode → exchange by key →
//! feature stages → expressions → batching → inference → sinks, on timely
//! worker threads.

use crate::commit::OffsetLedger;
use crate::inference::Model;
use crate::operators::features::ComputeFeatures;
use crate::operators::score::ScoreRows;
use crate::operators::sink::WriteRows;
use crate::operators::source::{SourceOutputs, open_assigned, origin, read_source};
use crate::plan::{Plan, SourcePlan};
use crate::run::{Shared, Summary, report_progress};
use crate::sinks::{DeadLetterWriter, Layout, open_row_writer, prepare_directory};
use crate::{Error, Result};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use timely::dataflow::operators::vec::Filter;

/// How a run is executed.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads.
    pub workers: usize,
    /// Whether to print progress to standard error.
    pub progress: bool,
    /// When set, sources stop reading; what was read is processed and
    /// written, and the run ends with its summary (Ctrl-C on a live run).
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            progress: false,
            stop: None,
        }
    }
}

impl RunOptions {
    /// `workers` worker threads, no progress output, no stop signal.
    pub fn with_workers(workers: usize) -> Self {
        RunOptions {
            workers,
            ..RunOptions::default()
        }
    }
}

/// Resolves the model's output column types into the plan and returns the
/// model's identity and device, checking the model against the spec.
pub fn prepare_model(plan: &mut Plan) -> Result<Option<(String, String, bool)>> {
    let Some(model_plan) = &plan.model else {
        return Ok(None);
    };
    let mut model = Model::open(model_plan)?;
    for (output, ty) in model_plan.outputs.iter().zip(model.output_types()) {
        plan.columns[output.slot].ty = *ty;
    }
    let row_independent = model.is_row_independent()?;
    Ok(Some((
        model.identity().to_owned(),
        model.device().to_owned(),
        row_independent,
    )))
}

/// Runs a plan to completion (or until its source is unbounded and the
/// process is stopped) and returns its summary.
pub fn run(mut plan: Plan, options: &RunOptions) -> Result<Summary> {
    let model_info = prepare_model(&mut plan)?;
    plan.resolve_source()?;
    for sink in plan.sinks.iter().chain([&plan.dead_letters]) {
        prepare_directory(sink)?;
    }
    let workers = options.workers.max(1);
    let mut shared = Shared::new(
        plan,
        model_info.as_ref().map(|(identity, ..)| identity.clone()),
    );
    if let Some(stop) = &options.stop {
        shared.stop = stop.clone();
    }
    let shared = Arc::new(shared);
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let reporter = options.progress.then(|| {
        let (shared, done) = (shared.clone(), done.clone());
        std::thread::spawn(move || report_progress(&shared, started, &done))
    });
    let worker_shared = shared.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        if let Err(error) = build_and_run(worker, worker_shared.clone()) {
            worker_shared.abort(error);
        }
    })
    .map_err(Error::Runtime)?;
    let results = guards.join();
    done.store(true, Ordering::Relaxed);
    if let Some(reporter) = reporter {
        let _ = reporter.join();
    }
    for result in results {
        result.map_err(Error::Runtime)?;
    }
    if let Some(error) = shared.take_error() {
        return Err(error);
    }
    Ok(Summary {
        name: shared.plan.name.clone(),
        counts: shared.stats.snapshot(),
        elapsed: started.elapsed(),
        workers,
        model: model_info.map(|(identity, device, independent)| {
            format!(
                "{identity} on {device} ({})",
                if independent {
                    "rows scored independently: outputs are batch-invariant"
                } else {
                    "rows NOT scored independently: outputs may vary with batching"
                }
            )
        }),
    })
}

fn build_and_run(worker: &mut timely::worker::Worker, shared: Arc<Shared>) -> Result<()> {
    let (index, peers) = (worker.index(), worker.peers());
    let plan = &shared.plan;
    let assigned = open_assigned(&plan.source, &plan.field_names(), index, peers)?;
    let dead_letters = Rc::new(RefCell::new(DeadLetterWriter::open(
        &plan.dead_letters,
        index,
        &origin(&plan.source),
        plan.origins(),
    )?));
    let commit_interval = match &plan.source {
        SourcePlan::Kafka(kafka) => Some(kafka.commit_interval),
        _ => None,
    };
    let ledger = assigned.committer.map(|committer| {
        Rc::new(RefCell::new(OffsetLedger::new(
            committer,
            dead_letters.clone(),
            commit_interval.unwrap_or(Duration::from_secs(1)),
        )))
    });
    let model = plan.model.as_ref().map(Model::open).transpose()?;
    let layout = Layout::new(plan, shared.model_identity.clone());
    let writers = plan
        .sinks
        .iter()
        .map(|sink| open_row_writer(sink, &layout, index))
        .collect::<Result<Vec<_>>>()?;
    let outputs = SourceOutputs {
        dead_letters,
        ledger: ledger.clone(),
    };
    let durable = worker.dataflow::<i64, _, _>(|scope| {
        let mut rows = read_source(scope, shared.clone(), assigned.readers, outputs);
        for stage in &plan.stages {
            rows = rows.compute_features(stage.clone(), shared.clone());
        }
        // Replayed rows have rebuilt the windows; they are not the run's own.
        rows.filter(|row| !row.warm_up)
            .score_rows(model, shared.clone())
            .write_rows(writers, shared.clone(), commit_interval)
    });
    while worker.step_or_park(Some(Duration::from_millis(20))) {
        if let Some(ledger) = &ledger
            && !shared.is_aborted()
        {
            let mut ledger = ledger.borrow_mut();
            ledger.outputs_durable_before(
                durable.with_frontier(|frontier| frontier.first().copied()),
            );
            if let Err(error) = ledger.commit(false) {
                shared.abort(error);
            }
        }
    }
    if let Some(ledger) = &ledger
        && !shared.is_aborted()
    {
        // Every sink has finished: everything read is durable.
        let mut ledger = ledger.borrow_mut();
        ledger.outputs_durable_before(None);
        ledger.commit(true)?;
    }
    Ok(())
}
