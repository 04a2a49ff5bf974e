//! Assembling and running the graph: source → decode → exchange by key →
//! feature stages → expressions → batching → inference → sinks, on timely
//! worker threads.

use crate::batch::Batch;
use crate::checkpoint::restore::{DEAD_LETTERS, Restored, restore};
use crate::checkpoint::{CheckpointStore, Coordinator};
use crate::cluster::{Cluster, ClusterLinks, gather_counts, stop_when_a_peer_is_lost};
use crate::commit::OffsetLedger;
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::models::{ModelVersions, VersionedScorer};
use crate::operators::features::ComputeFeatures;
use crate::operators::input::{InputContext, open_input, read_input};
use crate::operators::join::JoinAsOf;
use crate::operators::labels::AttachLabels;
use crate::operators::offset_order::InOffsetOrder;
use crate::operators::rebalance::{Rebalance, RowBalance};
use crate::operators::score::ScoreRows;
use crate::operators::sink::WriteRows;
use crate::operators::source::resume_at_restored;
use crate::operators::source::{SourceOutputs, open_assigned, origin, read_source};
use crate::operators::{BatchStream, RowStream, as_batches};
use crate::plan::{Plan, SinkPlan, SourcePlan};
use crate::row::Origins;
use crate::run::{Counts, RunControl, Shared, Summary, SummaryScope, report_progress};
use crate::sinks::{
    DeadLetterWriter, Layout, TopicOffsets, TopicResume, open_epoch_row_writer, open_row_writer,
    prepare_directory, prepare_epoch_directory, topic_ends,
};
use crate::{Error, Result};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tideflow_connectors::kafka::StartPosition;
use timely::dataflow::operators::probe::{Handle, Probe};
use timely::dataflow::operators::vec::Map;

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
    /// This process's place in a cluster of processes; `None` runs alone.
    pub cluster: Option<Cluster>,
    /// Where the run counts and measures itself (for a metrics endpoint);
    /// a fresh registry by default.
    pub metrics: Option<Arc<Metrics>>,
    /// Where to serve the admin API, if anywhere.
    pub admin: Option<crate::admin::AdminOptions>,
    /// Drift to observe instead of the plan's reference (`tideflow
    /// profile` samples the rows for a profile).
    pub drift: Option<Arc<crate::models::drift::Drift>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            progress: false,
            stop: None,
            cluster: None,
            metrics: None,
            admin: None,
            drift: None,
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

/// Opens the versions of the plan's model, checks them against the plan,
/// and types the output columns as the model gives them.
pub fn prepare_model(plan: &mut Plan) -> Result<Option<Arc<ModelVersions>>> {
    let Some(model_plan) = &plan.model else {
        return Ok(None);
    };
    let versions = ModelVersions::open(model_plan)?;
    let challengers = model_plan.shadows.iter().map(|shadow| &shadow.outputs);
    for outputs in std::iter::once(&model_plan.outputs).chain(challengers) {
        for (output, ty) in outputs.iter().zip(versions.output_types()) {
            plan.columns[output.slot].ty = *ty;
        }
    }
    Ok(Some(Arc::new(versions)))
}

/// What the summary says of the model: the version scoring the newest
/// rows, where, whether its rows are scored independently, and for a
/// registry every version by the event time it scores from.
fn describe_model(versions: &ModelVersions) -> String {
    let current = versions.current();
    let mut text = format!(
        "{} on {} ({})",
        current.identity,
        current.device,
        if current.independent {
            "rows scored independently: outputs are batch-invariant"
        } else {
            "rows NOT scored independently: outputs may vary with batching"
        }
    );
    if current.is_shared() {
        text.push_str("; one executor shared by the process's workers");
    }
    if let Some(canary) = &versions.plan().canary {
        text.push_str(&format!(
            "; canary v{} scores {:.2}% of keys",
            canary.version,
            100.0 * canary.buckets as f64 / crate::plan::CANARY_BUCKETS as f64
        ));
    }
    for (label, stats) in versions.shadow_stats() {
        text.push_str(&format!(
            "\n  shadow {label}: {}",
            describe_shadow(versions, &stats)
        ));
    }
    let schedule = versions.schedule();
    if versions.is_registry() && !schedule.switches.is_empty() {
        let switches: Vec<String> = schedule
            .switches
            .iter()
            .map(|(from, version)| format!("v{version} from {from}"))
            .collect();
        text.push_str(&format!(
            "; versions by event time (ms): v{}, {}",
            schedule.base,
            switches.join(", ")
        ));
    }
    text
}

/// A challenger against the champion: rows compared, agreement on the
/// outputs that are not floats, and the mean absolute difference of each
/// float output.
pub fn describe_shadow(versions: &ModelVersions, stats: &crate::models::ShadowStats) -> String {
    let rows = stats.rows.max(1) as f64;
    let mut text = format!(
        "{} rows, {:.2}% agreeing",
        stats.rows,
        100.0 * stats.agreeing as f64 / rows
    );
    let plan = versions.plan();
    for ((output, ty), sum) in plan
        .outputs
        .iter()
        .zip(versions.output_types())
        .zip(&stats.abs_difference_sums)
    {
        if *ty == crate::schema::ColumnType::F64 {
            text.push_str(&format!(", mean |Δ {}| {:.6}", output.column, sum / rows));
        }
    }
    if stats.failed > 0 {
        text.push_str(&format!(", {} rows it failed on", stats.failed));
    }
    text
}

/// Runs a plan to completion (or until its source is unbounded and the
/// process is stopped) and returns its summary. In a cluster, this runs
/// one process of it; process 0's summary counts the whole cluster.
pub fn run(mut plan: Plan, options: &RunOptions) -> Result<Summary> {
    let models = prepare_model(&mut plan)?;
    plan.resolve_source()?;
    let workers = options.workers.max(1);
    let ((allocators, connections), local) = match &options.cluster {
        Some(cluster) => {
            cluster.validate().map_err(Error::Cluster)?;
            stop_when_a_peer_is_lost(cluster);
            let first = cluster.process * workers;
            (
                cluster.connect(workers).map_err(Error::Cluster)?,
                first..first + workers,
            )
        }
        None => (
            timely::CommunicationConfig::Process(workers)
                .try_build()
                .map_err(Error::Cluster)?,
            0..workers,
        ),
    };
    let all_workers = options
        .cluster
        .as_ref()
        .map_or(workers, |cluster| cluster.processes * workers);
    let is_first_process = local.start == 0;
    let owned =
        |worker: usize| local.contains(&worker) || (is_first_process && worker >= all_workers);
    let metrics = options.metrics.clone().unwrap_or_default();
    let checkpoints = match plan.checkpoints.clone() {
        Some(checkpoints) => Some(start_checkpoints(
            &mut plan,
            checkpoints,
            options,
            metrics.clone(),
        )?),
        None => {
            for sink in plan.sinks.iter().chain([&plan.dead_letters]) {
                prepare_directory(sink, &owned)?;
            }
            None
        }
    };
    *metrics
        .source
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = origin(&plan.source);
    // A single file's `_model` is the same for every row; a registry's
    // rows name their versions in a column.
    let constant_identity = models
        .as_ref()
        .filter(|versions| !versions.is_registry())
        .map(|versions| versions.current().identity.clone());
    let held_rows_budget = plan.buffered_rows.saturating_mul(workers as u64);
    let mut shared = Shared::new(plan, constant_identity, metrics);
    shared.watermarks =
        crate::watermarks::WorkerWatermarks::with_held_rows_budget(held_rows_budget);
    shared.models = models.clone();
    shared.drift = match (&options.drift, &shared.plan.drift_reference) {
        (Some(drift), _) => Some(drift.clone()),
        (None, Some(reference)) => Some(Arc::new(crate::models::drift::Drift::monitoring(
            reference,
            &shared.plan.drift_columns(),
        )?)),
        (None, None) => None,
    };
    *shared
        .metrics
        .drift
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = shared.drift.clone();
    *shared
        .metrics
        .models
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = shared.models.clone();
    if let Some(stop) = &options.stop {
        shared.control = RunControl::draining_on(stop.clone());
    }
    if let Some((coordinator, restored)) = checkpoints {
        if let Some(models) = &models {
            // The checkpoint's schedule first: promotions the registry's
            // record lost are recorded again before any row is scored.
            if let Some(kept) = &restored.model_schedule {
                models.adopt(kept)?;
            }
            coordinator.keep_schedule_of(models.clone());
        }
        shared.checkpoints = Some(coordinator);
        shared.restored = restored;
    }
    shared.in_cluster = options.cluster.is_some();
    shared.balance = RowBalance::new(local.clone());
    let shared = Arc::new(shared);
    let _admin = options
        .admin
        .as_ref()
        .map(|admin| {
            let server = crate::admin::start(admin, shared.clone())?;
            eprintln!("tideflow: admin API at http://{}/", server.address());
            Ok::<_, Error>(server)
        })
        .transpose()?;
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let label = options
        .cluster
        .as_ref()
        .map_or(String::new(), |cluster| format!("{}: ", cluster.label()));
    let reporter = options.progress.then(|| {
        let (shared, done) = (shared.clone(), done.clone());
        std::thread::spawn(move || report_progress(&shared, started, &done, &label))
    });
    if let Some(cluster) = &options.cluster {
        stop_a_failed_member(cluster, shared.clone(), done.clone());
    }
    let worker_shared = shared.clone();
    let gathered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let worker_gathered = gathered.clone();
    let in_cluster = options.cluster.is_some();
    let worker_started = shared.clone();
    let guards = timely::execute::execute_from(
        allocators,
        connections,
        timely::WorkerConfig::default(),
        move |worker| {
            worker_started.started.get_or_init(Instant::now);
            let links = in_cluster
                .then(|| ClusterLinks::build(worker, worker_shared.clone(), local.clone()));
            if let Err(error) = build_and_run(worker, worker_shared.clone(), links) {
                worker_shared.control.abort(error);
            }
            if in_cluster {
                // One worker of each process sends the process's counts.
                let counts =
                    (worker.index() == local.start).then(|| worker_shared.stats.snapshot());
                let counts = gather_counts(worker, counts);
                if !counts.is_empty() {
                    *worker_gathered
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = counts;
                }
            }
        },
    )
    .map_err(Error::Runtime)?;
    let results = guards.join();
    // The last checkpoint is stored before the run counts as done.
    let checkpoints_stored = shared
        .checkpoints
        .as_ref()
        .map_or(Ok(()), |coordinator| coordinator.finish());
    let elapsed = shared.started.get().unwrap_or(&started).elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(reporter) = reporter {
        // Woken rather than left to notice on its own: the run ends now,
        // not at the reporter's next look.
        reporter.thread().unpark();
        let _ = reporter.join();
    }
    for result in results {
        result.map_err(Error::Runtime)?;
    }
    if let Some(error) = shared.control.take_error() {
        return Err(error);
    }
    checkpoints_stored?;
    let gathered = std::mem::take(
        &mut *gathered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    let (counts, scope) = match &options.cluster {
        None => (shared.stats.snapshot(), SummaryScope::Process),
        Some(cluster) if cluster.process == 0 => (
            Counts::total(&gathered),
            SummaryScope::Cluster {
                processes: cluster.processes,
            },
        ),
        Some(cluster) => (
            shared.stats.snapshot(),
            SummaryScope::Member {
                process: cluster.process,
                processes: cluster.processes,
            },
        ),
    };
    Ok(Summary {
        name: shared.plan.name.clone(),
        counts,
        // From when the workers started to when they finished: a
        // cluster's connection set-up is not part of the run.
        elapsed,
        workers,
        model: models.as_deref().map(describe_model),
        drift: shared
            .drift
            .as_ref()
            .map_or_else(Vec::new, |drift| drift.psi()),
        scope,
    })
}

/// Opens a checkpointed run's store and restores its newest checkpoint:
/// a Kafka source then starts at the checkpoint's offsets, without
/// warm-up, and the sinks' directories keep every committed file.
fn start_checkpoints(
    plan: &mut Plan,
    checkpoints: crate::plan::CheckpointPlan,
    options: &RunOptions,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<(Arc<Coordinator>, Restored)> {
    let workers = options.workers.max(1);
    let store = CheckpointStore::new(
        crate::checkpoint::open_storage(&checkpoints.dir)?,
        checkpoints.retain,
    );
    let cluster = options
        .cluster
        .as_ref()
        .map(|cluster| (cluster.process, cluster.processes));
    let (process, processes) = cluster.unwrap_or((0, 1));
    let local = process * workers..(process + 1) * workers;
    let mut restored = restore(
        plan,
        &store,
        workers * processes,
        local.clone(),
        options.cluster.is_some(),
    )?;
    if restored.id > 0 {
        eprintln!(
            "tideflow: restored checkpoint {} from {}",
            restored.id,
            checkpoints.dir.display()
        );
        if let SourcePlan::Kafka(kafka) = &mut plan.source {
            kafka.config.start = StartPosition::Offsets(
                restored
                    .positions
                    .values()
                    .map(|position| (position.partition, position.next_offset))
                    .collect(),
            );
            kafka.config.warm_up = false;
        }
        // Tables and labels read on from their positions too.
        let inputs = plan.tables.iter_mut().map(|table| &mut table.input);
        let inputs = inputs.chain(plan.labels.iter_mut().map(|label| &mut label.input));
        for (at, input) in inputs.enumerate() {
            if let SourcePlan::Kafka(kafka) = &mut input.source {
                kafka.config.start = StartPosition::Offsets(
                    restored
                        .input_positions(at)
                        .values()
                        .map(|position| (position.partition, position.next_offset))
                        .collect(),
                );
            }
        }
    }
    for sink in plan.sinks.iter().chain([&plan.dead_letters]) {
        prepare_epoch_directory(sink, restored.id, &|worker| {
            local.contains(&(worker % (workers * processes)))
        })?;
    }
    resume_topics(plan, &store, &mut restored)?;
    // Each worker's source, stages, scoring and sink report a part, and
    // so do its readers of tables and labels, its joins and its labels.
    let inputs = plan.tables.len() + plan.labels.len();
    let parts = workers * (plan.stages.len() + 3 + inputs + plan.joins.len() + plan.labels.len());
    // Numbered after every checkpoint in the store, refused ones too:
    // none is ever overwritten.
    let newest = store.committed_epochs()?.last().copied().unwrap_or(0);
    let coordinator = Coordinator::start(
        store,
        checkpoints.interval,
        // The sources and the readers of tables and labels choose the cuts.
        (parts, workers * (1 + inputs)),
        newest,
        cluster,
        metrics,
    );
    Ok((coordinator, restored))
}

/// Reads back what each Kafka sink wrote after the restored checkpoint
/// (or, before any, since the first run started), so that the run leaves
/// those rows out when it makes them again. A first run records where
/// its sinks' topics end.
fn resume_topics(plan: &Plan, store: &CheckpointStore, restored: &mut Restored) -> Result<()> {
    let sink_of = |index: usize| match index {
        DEAD_LETTERS => &plan.dead_letters,
        index => &plan.sinks[index],
    };
    let kafka_sinks: Vec<usize> = (0..plan.sinks.len())
        .chain([DEAD_LETTERS])
        .filter(|index| matches!(sink_of(*index), SinkPlan::Kafka { .. }))
        .collect();
    if kafka_sinks.is_empty() {
        return Ok(());
    }
    let starts: BTreeMap<usize, TopicOffsets> = if restored.id > 0 {
        std::mem::take(&mut restored.topic_starts)
    } else if let Some(bytes) = store.first_start()? {
        crate::checkpoint::decode(&bytes).map_err(|error| Error::Checkpoint {
            location: format!("{} FIRST_START", store.describe()),
            message: error.to_string(),
        })?
    } else {
        let ends = kafka_sinks
            .iter()
            .map(|index| Ok((*index, topic_ends(sink_of(*index))?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        store.record_first_start(&crate::checkpoint::encode(&ends))?;
        ends
    };
    for index in kafka_sinks {
        let sink = sink_of(index);
        let resume = TopicResume::read(sink, starts.get(&index).cloned().unwrap_or_default())?;
        if resume.written() > 0 {
            eprintln!(
                "tideflow: {} holds {} rows written after the checkpoint restored; they are not written again",
                sink.describe(),
                resume.written()
            );
        }
        restored.topic_resumes.insert(index, Arc::new(resume));
    }
    Ok(())
}

/// How long a cluster member that failed waits for its workers to finish
/// on their own before it exits: its peers cannot finish without it, so
/// it must not wait for the cluster.
const FAILED_MEMBER_GRACE: Duration = Duration::from_secs(3);

/// Watches a cluster member: once its run fails, it reports the error and
/// exits if its workers have not finished within the grace period. Its
/// peers then lose their connections to it and stop, naming it.
fn stop_a_failed_member(cluster: &Cluster, shared: Arc<Shared>, done: Arc<AtomicBool>) {
    let label = cluster.label();
    std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            if shared.control.is_aborted() {
                let failed = Instant::now();
                while failed.elapsed() < FAILED_MEMBER_GRACE {
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                match shared.control.take_error() {
                    Some(error) => eprintln!("error: {label} failed: {error}"),
                    None => eprintln!("error: {label} failed"),
                }
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// A table or label input opened on a worker: its partitions and the
/// writer of its dead letters.
type OpenedInput = (Intake, Rc<RefCell<DeadLetterWriter>>);

/// Opens worker `index`'s partitions of each table or label input, with
/// its dead-letter writer.
fn open_inputs(shared: &Shared, index: usize, peers: usize) -> Result<Vec<OpenedInput>> {
    let plan = &shared.plan;
    let tables = plan.tables.iter().map(|table| &table.input);
    let labels = plan.labels.iter().map(|label| &label.input);
    tables
        .chain(labels)
        .enumerate()
        .map(|(at, input)| {
            let restored = shared.restored.input_positions(at);
            let intake = open_input(input, (index, peers), &restored)?;
            let (sink, role) = (&plan.dead_letters, format!("-input{at}"));
            let origin = origin(&input.source);
            let letters = if shared.checkpoints.is_some() {
                // Their Kafka topic's rows after a restore are not told
                // apart from the events' (see the README).
                DeadLetterWriter::open_for_epochs(
                    sink,
                    index,
                    &role,
                    &origin,
                    Origins::by_index(),
                    None,
                )?
            } else {
                DeadLetterWriter::open(sink, (index, &role), &origin, Origins::by_index())?
            };
            Ok((intake, Rc::new(RefCell::new(letters.of_input(&input.name)))))
        })
        .collect()
}

/// Joins the rows with each table as of their time, then (for a stage
/// keyed by the source's key) puts them back in offset order.
fn join_tables<'scope>(
    rows: BatchStream<'scope>,
    (tables, frontiers): (Vec<OpenedInput>, &[Handle<i64>]),
    (events, dead_letters): (&Handle<i64>, &Rc<RefCell<DeadLetterWriter>>),
    shared: &Arc<Shared>,
) -> BatchStream<'scope> {
    let plan = &shared.plan;
    let scope = rows.scope();
    let tables: Vec<RowStream<'scope>> = tables
        .into_iter()
        .zip(plan.tables.iter().zip(frontiers))
        .enumerate()
        .map(|(at, ((intake, letters), (table, frontier)))| {
            let context = InputContext {
                index: at,
                dead_letters: letters,
                events: events.clone(),
                read_ahead_ms: plan.skew_ms,
                skew_ms: plan.skew_ms,
                announces_end: false,
            };
            read_input(scope, &table.input.name, intake, shared.clone(), context)
                .probe_with(frontier)
        })
        .collect();
    let mut joined = rows.flat_map(Batch::into_rows);
    for (index, join) in plan.joins.iter().enumerate() {
        let table = (index, join.clone(), plan.tables[join.table].key_slot);
        joined = joined.join_as_of(
            tables[join.table].clone(),
            table,
            dead_letters.clone(),
            shared.clone(),
        );
    }
    if plan.stages.iter().any(|stage| stage.source_keyed) {
        joined.in_offset_order()
    } else {
        as_batches(joined)
    }
}

/// Gives each row its labels, and whether their horizons were complete.
fn attach_labels<'scope>(
    rows: BatchStream<'scope>,
    labels: Vec<OpenedInput>,
    events: &Handle<i64>,
    shared: &Arc<Shared>,
) -> BatchStream<'scope> {
    let plan = &shared.plan;
    let scope = rows.scope();
    let complete_slot = plan
        .label_complete_slot
        .expect("a plan with labels has their completeness column");
    let mut labelled = rows.flat_map(Batch::into_rows);
    for (index, ((intake, letters), label)) in labels.into_iter().zip(&plan.labels).enumerate() {
        let context = InputContext {
            index: plan.tables.len() + index,
            dead_letters: letters,
            events: events.clone(),
            read_ahead_ms: plan.skew_ms.saturating_add(label.horizon_ms),
            skew_ms: plan.skew_ms,
            announces_end: true,
        };
        let records = read_input(scope, &label.input.name, intake, shared.clone(), context);
        let label = (index, Arc::new(label.clone()));
        labelled = labelled.attach_labels(records, label, complete_slot, shared.clone());
    }
    as_batches(labelled)
}

/// Whether rows reach the model on a worker other than the one that read
/// them (a join, a stage keyed across partitions, or a cluster's routing
/// by key): only then are they rebalanced (see [`crate::operators::rebalance`]).
fn moves_rows(plan: &Plan, in_cluster: bool) -> bool {
    !plan.joins.is_empty()
        || plan
            .stages
            .iter()
            .any(|stage| !stage.source_keyed || in_cluster)
}

fn build_and_run(
    worker: &mut timely::worker::Worker,
    shared: Arc<Shared>,
    mut links: Option<ClusterLinks>,
) -> Result<()> {
    let (index, peers) = (worker.index(), worker.peers());
    let plan = &shared.plan;
    let mut assigned = open_assigned(&plan.source, &plan.field_names(), index, peers)?;
    let checkpointed = shared.checkpoints.is_some();
    if checkpointed {
        let readers = std::mem::take(&mut assigned.readers);
        assigned.readers = resume_at_restored(readers, &shared.restored.positions);
    }
    let open_dead_letters = |role: &str| -> Result<Rc<RefCell<DeadLetterWriter>>> {
        let (sink, origin, origins) = (&plan.dead_letters, origin(&plan.source), plan.origins());
        let writer = if checkpointed {
            DeadLetterWriter::open_for_epochs(
                sink,
                index,
                role,
                &origin,
                origins,
                shared.restored.topic_resumes.get(&DEAD_LETTERS).cloned(),
            )?
        } else {
            DeadLetterWriter::open(sink, (index, ""), &origin, origins)?
        };
        Ok(Rc::new(RefCell::new(writer)))
    };
    let dead_letters = open_dead_letters("")?;
    // In a checkpointed run, each writer of dead letters closes its own
    // files at its own cut.
    let model_dead_letters = if checkpointed {
        open_dead_letters("-model")?
    } else {
        dead_letters.clone()
    };
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
    let model = shared.models.clone().map(VersionedScorer::new);
    let layout = Layout::new(plan, shared.model_identity.clone());
    let writers = plan
        .sinks
        .iter()
        .enumerate()
        .map(|(sink_index, sink)| {
            if checkpointed {
                open_epoch_row_writer(
                    sink,
                    &layout,
                    index,
                    shared.restored.topic_resumes.get(&sink_index).cloned(),
                )
            } else {
                open_row_writer(sink, &layout, index)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let mine: Vec<u32> = assigned
        .readers
        .iter()
        .map(|reader| reader.partition())
        .collect();
    let table_frontiers: Vec<Handle<i64>> = plan.tables.iter().map(|_| Handle::new()).collect();
    let outputs = SourceOutputs {
        dead_letters: dead_letters.clone(),
        // A checkpointed run commits the offsets of its checkpoints.
        ledger: ledger.clone().filter(|_| !checkpointed),
        tables: table_frontiers.clone(),
    };
    let mut tables = open_inputs(&shared, index, peers)?;
    let labels = tables.split_off(plan.tables.len());
    let durable = worker.dataflow::<i64, _, _>(|scope| {
        let events = Handle::<i64>::new();
        let mut rows =
            read_source(scope, shared.clone(), assigned.readers, outputs).probe_with(&events);
        if !plan.joins.is_empty() {
            rows = join_tables(
                rows,
                (tables, &table_frontiers),
                (&events, &dead_letters),
                &shared,
            );
        }
        for (index, stage) in plan.stages.iter().enumerate() {
            rows = rows.compute_features(index, stage.clone(), shared.clone());
        }
        // Replayed rows have rebuilt the windows; they are not the run's own.
        let mut rows = rows.map_in_place(|batch| batch.retain(|row| !row.warm_up));
        if moves_rows(plan, shared.in_cluster) {
            rows = rows.rebalance(shared.clone());
        }
        let mut rows = rows.score_rows(model, shared.clone(), model_dead_letters);
        if !plan.labels.is_empty() {
            rows = attach_labels(rows, labels, &events, &shared);
        }
        rows.write_rows(writers, shared.clone(), commit_interval)
    });
    while worker.step_or_park(Some(Duration::from_millis(20))) {
        if let Some(links) = &mut links {
            links.after_step(durable.done(), shared.control.is_aborted());
        }
        if let Some(ledger) = &ledger
            && !shared.control.is_aborted()
        {
            let mut ledger = ledger.borrow_mut();
            match &shared.checkpoints {
                Some(coordinator) => {
                    ledger.checkpoint_committed(&coordinator.committed_positions(&mine))
                }
                None => ledger.outputs_durable_before(
                    durable.with_frontier(|frontier| frontier.first().copied()),
                ),
            }
            match ledger.commit(false) {
                Ok(()) if ledger.is_up_to_date() => shared.metrics.committed(),
                Ok(()) => {}
                Err(error) => shared.control.abort(error),
            }
        }
    }
    if let Some(ledger) = &ledger
        && !shared.control.is_aborted()
    {
        // Every sink has finished: everything read is durable (with
        // checkpoints, in the final one).
        let mut ledger = ledger.borrow_mut();
        match &shared.checkpoints {
            Some(coordinator) => {
                coordinator.wait_for_final();
                ledger.checkpoint_committed(&coordinator.committed_positions(&mine))
            }
            None => ledger.outputs_durable_before(None),
        }
        ledger.commit(true)?;
        shared.metrics.committed();
    }
    Ok(())
}
