//! Running a plan: what the workers of one process share (the plan, the
//! counters, the run control: drain or failure), and the run summary.

use crate::Error;
use crate::metrics::Metrics;
use crate::plan::Plan;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counters of a run, shared by the workers of a process.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records read from the source.
    pub records_in: AtomicU64,
    /// Records replayed to rebuild window state (before the start position;
    /// not part of `records_in`).
    pub replayed: AtomicU64,
    /// Rows a restored checkpoint held (read by an earlier run, waiting in
    /// an event-time stage at the cut): not part of `records_in`, but
    /// written by this run.
    pub carried: AtomicU64,
    /// Rows written to the sinks.
    pub rows_out: AtomicU64,
    /// Dead letters other than late records.
    pub dead: AtomicU64,
    /// Late records (also dead letters, with reason `late`).
    pub late: AtomicU64,
    /// Batches scored.
    pub batches: AtomicU64,
    /// Largest batch.
    pub max_batch: AtomicU64,
    /// Most rows the process held for the watermark at once.
    pub most_held: AtomicU64,
    /// Records read from tables and label inputs.
    pub inputs_in: AtomicU64,
    /// Of those, dead letters other than late ones.
    pub inputs_dead: AtomicU64,
    /// Of those, late records.
    pub inputs_late: AtomicU64,
}

impl Stats {
    /// Adds `count` to a counter.
    pub fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }

    /// Records a scored batch.
    pub fn batch(&self, rows: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.max_batch.fetch_max(rows as u64, Ordering::Relaxed);
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> Counts {
        Counts {
            records_in: self.records_in.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            carried: self.carried.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            max_batch: self.max_batch.load(Ordering::Relaxed),
            most_held: self.most_held.load(Ordering::Relaxed),
            inputs_in: self.inputs_in.load(Ordering::Relaxed),
            inputs_dead: self.inputs_dead.load(Ordering::Relaxed),
            inputs_late: self.inputs_late.load(Ordering::Relaxed),
        }
    }
}

/// The counters of a finished run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Records read.
    pub records_in: u64,
    /// Records replayed to rebuild window state, outside `records_in`.
    pub replayed: u64,
    /// Rows carried in from a restored checkpoint, outside `records_in`.
    pub carried: u64,
    /// Output rows.
    pub rows_out: u64,
    /// Dead letters other than late ones.
    pub dead: u64,
    /// Late records.
    pub late: u64,
    /// Batches scored.
    pub batches: u64,
    /// Largest batch.
    pub max_batch: u64,
    /// Most rows one process held for the watermark at once (event-time
    /// stages, joins, labels): what partitions read in step bound.
    #[serde(default)]
    pub most_held: u64,
    /// Records read from tables and label inputs (outside `records_in`).
    pub inputs_in: u64,
    /// Of those, dead letters other than late ones.
    pub inputs_dead: u64,
    /// Of those, late records.
    pub inputs_late: u64,
}

impl Counts {
    /// The counts of several processes together.
    pub fn total(parts: &[Counts]) -> Counts {
        parts.iter().fold(Counts::default(), |sum, part| Counts {
            records_in: sum.records_in + part.records_in,
            replayed: sum.replayed + part.replayed,
            carried: sum.carried + part.carried,
            rows_out: sum.rows_out + part.rows_out,
            dead: sum.dead + part.dead,
            late: sum.late + part.late,
            batches: sum.batches + part.batches,
            max_batch: sum.max_batch.max(part.max_batch),
            most_held: sum.most_held.max(part.most_held),
            inputs_in: sum.inputs_in + part.inputs_in,
            inputs_dead: sum.inputs_dead + part.inputs_dead,
            inputs_late: sum.inputs_late + part.inputs_late,
        })
    }

    /// Whether every input record (and every row carried in from a
    /// checkpoint) is accounted for exactly once.
    pub fn reconciles(&self) -> bool {
        self.records_in + self.carried == self.rows_out + self.dead + self.late
    }
}

/// What the workers of a process share.
#[derive(Debug)]
pub struct Shared {
    /// The plan (with model output types resolved).
    pub plan: Plan,
    /// Counters (also those of `metrics`).
    pub stats: Arc<Stats>,
    /// Metrics, served where the run was asked to.
    pub metrics: Arc<Metrics>,
    /// How many source partitions are still behind their end.
    pub partitions_behind: AtomicUsize,
    /// Whether the run must stop, and why.
    pub control: RunControl,
    /// `_model` of output rows.
    pub model_identity: Option<String>,
    /// When the first worker started.
    pub started: std::sync::OnceLock<Instant>,
    /// Whether the run is one process of a cluster (set before the
    /// workers start).
    pub in_cluster: bool,
    /// Rows each worker of this process has taken for the model and the
    /// sinks, after a stage that moved rows (set before the workers start).
    pub balance: crate::operators::rebalance::RowBalance,
    /// The partition of each key of the source-keyed stage kept by a
    /// worker of this process.
    pub key_claims: crate::features::claims::KeyClaims,
    /// Each worker's published watermark, and the sources waiting for
    /// slower workers.
    pub watermarks: crate::watermarks::WorkerWatermarks,
    /// Takes the run's checkpoints, when the plan has them.
    pub checkpoints: Option<Arc<crate::checkpoint::Coordinator>>,
    /// What the run starts from: the checkpoint restored, if any.
    pub restored: crate::checkpoint::restore::Restored,
    /// The model's versions, when the plan has a model.
    pub models: Option<Arc<crate::models::ModelVersions>>,
    /// What the run does with the drift of its rows, if anything.
    pub drift: Option<Arc<crate::models::drift::Drift>>,
}

impl Shared {
    /// State for a run of `plan`, counting into `metrics`.
    pub fn new(plan: Plan, model_identity: Option<String>, metrics: Arc<Metrics>) -> Self {
        Shared {
            plan,
            stats: metrics.stats.clone(),
            metrics,
            partitions_behind: AtomicUsize::new(0),
            control: RunControl::default(),
            model_identity,
            started: std::sync::OnceLock::new(),
            in_cluster: false,
            balance: Default::default(),
            key_claims: Default::default(),
            watermarks: Default::default(),
            checkpoints: None,
            restored: Default::default(),
            models: None,
            drift: None,
        }
    }

    /// Whether any source partition is behind (adaptive batching).
    pub fn any_behind(&self) -> bool {
        self.partitions_behind.load(Ordering::Relaxed) > 0
    }
}

/// Whether a run must stop: asked to drain (a signal, `RunOptions::stop`),
/// or failed, with the first error that stopped it.
#[derive(Debug, Default)]
pub struct RunControl {
    /// Set to stop reading the source and drain.
    stop: Arc<AtomicBool>,
    /// Set when the run fails; `error` holds why.
    aborted: AtomicBool,
    error: Mutex<Option<Error>>,
}

impl RunControl {
    /// Control whose drain is asked for through `stop`.
    pub fn draining_on(stop: Arc<AtomicBool>) -> Self {
        RunControl {
            stop,
            ..RunControl::default()
        }
    }

    /// Whether the sources should stop reading (the run then drains).
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Stops the run with `error` (the first error wins).
    pub fn abort(&self, error: Error) {
        let mut slot = self
            .error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(error);
        }
        self.aborted.store(true, Ordering::SeqCst);
    }

    /// Whether the run has failed and is stopping.
    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
    }

    /// Takes the error that stopped the run, if any.
    pub fn take_error(&self) -> Option<Error> {
        self.error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// The summary a run ends with.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The dataflow's name.
    pub name: String,
    /// Counters.
    pub counts: Counts,
    /// Wall time.
    pub elapsed: Duration,
    /// Worker threads (of each process, in a cluster).
    pub workers: usize,
    /// `_model` and device, when a model scored the rows.
    pub model: Option<String>,
    /// Per column, the PSI of the rows against the drift reference.
    pub drift: Vec<(String, f64)>,
    /// What the counts cover.
    pub scope: SummaryScope,
}

/// Which part of a run a summary counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SummaryScope {
    /// The run of a single process.
    Process,
    /// Every process of a cluster (process 0's summary).
    Cluster {
        /// Processes in the cluster.
        processes: usize,
    },
    /// One process of a cluster (the others' summaries).
    Member {
        /// This process.
        process: usize,
        /// Processes in the cluster.
        processes: usize,
    },
}

impl Summary {
    /// Whether the summary's counts account for every input record. A
    /// member of a cluster has no such check: rows are written where
    /// their key lands, not where they were read; process 0 checks the
    /// cluster's total.
    pub fn reconciles(&self) -> bool {
        matches!(self.scope, SummaryScope::Member { .. }) || self.counts.reconciles()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = &self.counts;
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        let scored = counts.rows_out.max(1);
        let per_process = match self.workers {
            1 => "1 worker".to_owned(),
            workers => format!("{workers} workers"),
        };
        let (scope, workers) = match self.scope {
            SummaryScope::Process => (String::new(), per_process),
            SummaryScope::Cluster { processes } => (
                format!(" (cluster total of {processes} processes)"),
                format!("{processes} processes x {per_process}"),
            ),
            SummaryScope::Member { process, processes } => (
                format!(" (process {process} of {processes} only; process 0 prints the total)"),
                per_process,
            ),
        };
        if let SummaryScope::Member { .. } = self.scope {
            // Rows are written where their key lands, not where they were
            // read: one process's counts do not add up on their own.
            writeln!(
                f,
                "tideflow {}{scope}: {} records read; {} rows written, {} dead letters, {} late here",
                self.name, counts.records_in, counts.rows_out, counts.dead, counts.late
            )?;
        } else {
            writeln!(
                f,
                "tideflow {}{scope}: {} records in = {} rows out + {} dead letters + {} late{}",
                self.name,
                counts.records_in,
                counts.rows_out,
                counts.dead,
                counts.late,
                if counts.reconciles() {
                    ""
                } else {
                    "  (COUNTS DO NOT RECONCILE)"
                }
            )?;
        }
        let batches = match counts.batches {
            1 => "1 batch".to_owned(),
            count => format!("{count} batches"),
        };
        writeln!(
            f,
            "  {:.2} s, {:.0} records/s, {workers}; {batches} (mean {:.0} rows, max {})",
            seconds,
            counts.records_in as f64 / seconds,
            scored as f64 / counts.batches.max(1) as f64,
            counts.max_batch
        )?;
        if counts.replayed > 0 {
            writeln!(
                f,
                "  {} earlier records replayed to rebuild window state (source.warm_up)",
                counts.replayed
            )?;
        }
        if counts.most_held > 0 {
            writeln!(
                f,
                "  at most {} rows held for the watermark at once (time.max_buffered_rows per worker)",
                counts.most_held
            )?;
        }
        if counts.carried > 0 {
            writeln!(
                f,
                "  {} rows carried in from the checkpoint (read before it, waiting for the watermark)",
                counts.carried
            )?;
        }
        if counts.inputs_in > 0 {
            writeln!(
                f,
                "  tables and labels: {} records read, of which {} dead letters and {} late",
                counts.inputs_in, counts.inputs_dead, counts.inputs_late
            )?;
        }
        if let Some(model) = &self.model {
            writeln!(f, "  model {model}")?;
        }
        if !self.drift.is_empty() {
            let columns: Vec<String> = self
                .drift
                .iter()
                .map(|(column, psi)| format!("{column} {psi:.4}"))
                .collect();
            writeln!(
                f,
                "  drift (PSI against the reference): {}",
                columns.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Width of the progress bar, in characters.
const BAR_WIDTH: usize = 24;

/// Prints progress to standard error while a run goes on: a bar that
/// rewrites itself on a terminal, a log line every few seconds otherwise.
/// `label` names the process in a cluster.
pub fn report_progress(shared: &Shared, started: Instant, done: &AtomicBool, label: &str) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let interval = if terminal {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let mut next = started + interval;
    while !done.load(Ordering::Relaxed) {
        // Unparked when the run ends (a spurious wake only looks early).
        std::thread::park_timeout(Duration::from_millis(50));
        if done.load(Ordering::Relaxed) {
            break;
        }
        if Instant::now() < next {
            continue;
        }
        next += interval;
        let counts = shared.stats.snapshot();
        let seconds = started.elapsed().as_secs_f64();
        let (done_units, total_units) = shared.metrics.progress();
        let rate = counts.records_in as f64 / seconds.max(1e-9);
        let fraction = total_units
            .filter(|total| *total > 0)
            .map(|total| done_units as f64 / total as f64);
        let position = match fraction {
            Some(fraction) if fraction > 0.0 => {
                let eta = seconds * (1.0 - fraction) / fraction;
                let bar = if terminal {
                    let filled = ((fraction.min(1.0) * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
                    format!(
                        "[{}{}] ",
                        "#".repeat(filled),
                        ".".repeat(BAR_WIDTH - filled)
                    )
                } else {
                    String::new()
                };
                format!(
                    "{bar}{:5.1}% {done_units}/{} offsets ETA {eta:.0}s",
                    fraction * 100.0,
                    total_units.unwrap_or(0)
                )
            }
            _ => "live".to_owned(),
        };
        let line = format!(
            "{position} | in {} out {} dead {} late {} | {rate:.0} records/s",
            counts.records_in, counts.rows_out, counts.dead, counts.late
        );
        if terminal {
            eprint!("\r{label}{line}   ");
        } else {
            eprintln!("progress: {label}{line}");
        }
    }
    if terminal {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_stops_the_run_and_is_kept() {
        let control = RunControl::default();
        assert!(!control.is_aborted());
        assert!(control.take_error().is_none());
        control.abort(Error::Cluster("first".into()));
        control.abort(Error::Cluster("second".into()));
        assert!(control.is_aborted());
        let error = control.take_error().expect("kept").to_string();
        assert!(error.contains("first"), "{error}");
        assert!(control.take_error().is_none(), "taken once");
        assert!(control.is_aborted(), "still stopping once taken");
    }

    #[test]
    fn a_drain_is_asked_for_through_its_flag_and_is_no_failure() {
        let stop = Arc::new(AtomicBool::new(false));
        let control = RunControl::draining_on(stop.clone());
        assert!(!control.stop_requested());
        stop.store(true, Ordering::SeqCst);
        assert!(control.stop_requested());
        assert!(!control.is_aborted());
    }
}
