//! Models as a lifecycle: the versions of a registry that score a run's
//! rows, each from the event time its promotion recorded, and a worker's
//! scorer that gives each row the version in effect at its event time.
//!
//! A promotion takes effect at an event time chosen when it is asked for:
//! after every row scored so far (and not before the slowest watermark),
//! so that no row already written changes version. It is recorded in the
//! registry (see [`registry`]) before any row is scored by it, and every
//! later run over the same history (a backfill, a restore) reads the
//! record, so each row is scored by the same version, bit for bit. A new
//! version is checked before the switch: it must load, fit the spec's
//! inputs and outputs with the same output types, and give no NaN on a
//! probe batch; a version that does not is refused and the running one
//! goes on. Every checkpoint keeps a copy of the schedule, which a restore
//! uses to repair a record that lost promotions. A cluster's processes are
//! promoted in two phases ([`ModelVersions::prepare`], then
//! [`Prepared::commit`] at one event time for all).
//!
//! Beside the champion, shadows score the same rows into columns of their
//! own and are compared with it, and a canary version scores a stable
//! fraction of keys. [`drift`] measures how far the rows' columns have
//! moved from a reference profile.

pub mod drift;
pub mod registry;

use crate::batch::{Batch, Cells};
use crate::inference::{Model, Scorer, SharedExecutor};
use crate::plan::{ModelPlan, OutputPlan};
use crate::schema::ColumnType;
use crate::{Error, Result};
use registry::{Promotion, Registry, Schedule};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tideflow_connectors::Value;

/// A run's model versions: the schedule, and each version opened.
#[derive(Debug)]
pub struct ModelVersions {
    plan: ModelPlan,
    registry: Option<Registry>,
    schedule: RwLock<Schedule>,
    /// The newest event time of any row scored: a promotion takes effect
    /// after it.
    scored_up_to: AtomicI64,
    opened: Mutex<BTreeMap<u64, Arc<Opened>>>,
    output_types: Vec<ColumnType>,
    /// Each challenger's plan (its outputs into its own columns) and how
    /// it compares with the champion so far.
    shadows: Vec<(ModelPlan, Mutex<ShadowStats>)>,
}

/// How a challenger's scores compare with the champion's.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ShadowStats {
    /// Rows both scored.
    pub rows: u64,
    /// Of those, rows on whose every output that is not a float (a
    /// label, say) the two agree.
    pub agreeing: u64,
    /// Per float output (in plan order, others 0), the sum of the
    /// absolute differences.
    pub abs_difference_sums: Vec<f64>,
    /// Rows of batches the challenger failed on (not compared).
    pub failed: u64,
}

/// One version, checked.
#[derive(Debug)]
pub struct Opened {
    /// Its plan: the template's, with its file.
    plan: ModelPlan,
    /// What `_model` says of it.
    pub identity: String,
    /// Where it runs.
    pub device: String,
    /// Whether it scores each row independently of its batch.
    pub independent: bool,
    /// The process's executor for it, when shared.
    executor: Option<SharedExecutor>,
    /// Rows it has scored in this process.
    rows: std::sync::atomic::AtomicU64,
}

/// The part of every checkpoint that holds the model versions' schedule
/// (written by the checkpoint coordinator beside the operators' parts).
pub const SCHEDULE_PART: &str = "models";

/// How long a prepared promotion holds scoring before it gives up.
pub const PREPARED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// A promotion prepared: scoring is held until it is committed or
/// dropped.
#[derive(Debug)]
pub struct Prepared {
    version: u64,
    scored_up_to: i64,
    decide: std::sync::mpsc::Sender<i64>,
    answered: std::sync::mpsc::Receiver<Result<Promotion>>,
}

impl Prepared {
    /// The version it promotes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The newest event time this process has scored.
    pub fn scored_up_to(&self) -> i64 {
        self.scored_up_to
    }

    /// Records the promotion from `from_ms` and lets scoring go on with it.
    pub fn commit(self, from_ms: i64) -> Result<Promotion> {
        if from_ms <= self.scored_up_to {
            return Err(Error::Runtime(format!(
                "a promotion from event time {from_ms} would change rows already scored (up to {})",
                self.scored_up_to
            )));
        }
        let gone = || {
            Error::Runtime(format!(
                "the prepared promotion was held longer than {PREPARED_FOR:?} and let go; promote again"
            ))
        };
        self.decide.send(from_ms).map_err(|_| gone())?;
        self.answered.recv().map_err(|_| gone())?
    }
}

/// The version a single model file has in a schedule.
const SINGLE_FILE: u64 = 0;

impl ModelVersions {
    /// The versions of `plan`'s model that score the run: a single file,
    /// a registry's pinned version, or those its promotions record names.
    /// Each is opened and checked.
    pub fn open(plan: &ModelPlan) -> Result<ModelVersions> {
        let (registry, schedule) = match &plan.registry {
            None => (None, Schedule::single(SINGLE_FILE)),
            Some(registry_plan) => {
                let registry = Registry::open(&registry_plan.dir)?;
                let schedule = match registry_plan.pinned {
                    Some(version) => Schedule::single(version),
                    None => registry.schedule()?,
                };
                (Some(registry), schedule)
            }
        };
        let mut versions = ModelVersions {
            plan: plan.clone(),
            registry,
            schedule: RwLock::new(schedule.clone()),
            scored_up_to: AtomicI64::new(i64::MIN),
            opened: Mutex::new(BTreeMap::new()),
            output_types: Vec::new(),
            shadows: Vec::new(),
        };
        let canary = plan.canary.as_ref().map(|canary| canary.version);
        for version in schedule.versions().into_iter().chain(canary) {
            if lock(&versions.opened).contains_key(&version) {
                continue;
            }
            let (opened, types) = versions.check(version)?;
            if versions.output_types.is_empty() {
                versions.output_types = types;
            } else if types != versions.output_types {
                return Err(versions.mismatch(version, &types));
            }
            lock(&versions.opened).insert(version, Arc::new(opened));
        }
        for shadow in &plan.shadows {
            let mut shadow_plan = plan.clone();
            shadow_plan.path = shadow.path.clone();
            shadow_plan.outputs = shadow.outputs.clone();
            shadow_plan.registry = None;
            shadow_plan.shadows = Vec::new();
            shadow_plan.canary = None;
            let model = Model::open(&shadow_plan)?;
            if model.output_types() != versions.output_types {
                return Err(versions.mismatch_of(&shadow.label, model.output_types()));
            }
            let stats = ShadowStats {
                abs_difference_sums: vec![0.0; plan.outputs.len()],
                ..ShadowStats::default()
            };
            versions.shadows.push((shadow_plan, Mutex::new(stats)));
        }
        Ok(versions)
    }

    /// Each challenger's label and its comparison with the champion so far.
    pub fn shadow_stats(&self) -> Vec<(String, ShadowStats)> {
        self.plan
            .shadows
            .iter()
            .zip(&self.shadows)
            .map(|(shadow, (_, stats))| (shadow.label.clone(), lock(stats).clone()))
            .collect()
    }

    fn mismatch(&self, version: u64, types: &[ColumnType]) -> Error {
        self.mismatch_of(&format!("version {version}"), types)
    }

    fn mismatch_of(&self, what: &str, types: &[ColumnType]) -> Error {
        let names = |types: &[ColumnType]| {
            types
                .iter()
                .map(|ty| ty.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Error::Model {
            path: self.plan.path.display().to_string(),
            message: format!(
                "{what} gives outputs of types ({}), the running version ({}); refused",
                names(types),
                names(&self.output_types)
            ),
        }
    }

    /// The plan of the model (of its first version).
    pub fn plan(&self) -> &ModelPlan {
        &self.plan
    }

    /// The column type of each mapped output, in plan order.
    pub fn output_types(&self) -> &[ColumnType] {
        &self.output_types
    }

    /// Whether the versions come from a registry (and rows name theirs
    /// in a `_model` column).
    pub fn is_registry(&self) -> bool {
        self.registry.is_some()
    }

    /// The schedule now.
    pub fn schedule(&self) -> Schedule {
        self.schedule
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The schedule as a checkpoint keeps it, when the versions come from
    /// a registry that can be promoted (a pinned version or a single file
    /// has nothing to keep).
    pub fn schedule_to_keep(&self) -> Option<Vec<u8>> {
        let promotable = self
            .plan
            .registry
            .as_ref()
            .is_some_and(|plan| plan.pinned.is_none());
        promotable.then(|| serde_json::to_vec(&self.schedule()).expect("a schedule serializes"))
    }

    /// Takes in the schedule a restored checkpoint kept: promotions it
    /// holds that the registry's record lacks (a record restored from an
    /// older copy, say) are recorded again, so the restored run scores the
    /// rows after the checkpoint as the run before it did. A record of
    /// another base version is refused: it is not this run's history.
    pub fn adopt(&self, kept: &Schedule) -> Result<()> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        let current = self.schedule();
        if current.base != kept.base {
            return Err(self.refuse(format!(
                "the registry's promotions record starts from version {}, the checkpoint's from version {} (with switches {:?}); restore {} to the checkpoint's history",
                current.base,
                kept.base,
                kept.switches,
                registry.dir().join(registry::PROMOTIONS).display()
            )));
        }
        let missing: Vec<(i64, u64)> = kept
            .switches
            .iter()
            .filter(|switch| !current.switches.contains(switch))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for (from_ms, version) in &missing {
            if !lock(&self.opened).contains_key(version) {
                let (opened, types) = self.check(*version)?;
                if types != self.output_types {
                    return Err(self.mismatch(*version, &types));
                }
                lock(&self.opened).insert(*version, Arc::new(opened));
            }
            registry.record(&Promotion {
                version: *version,
                from_ms: Some(*from_ms),
                requested_at_ms: registry::now_ms(),
            })?;
        }
        eprintln!(
            "tideflow: the registry's promotions record lacked {} promotion(s) the checkpoint holds; recorded again",
            missing.len()
        );
        *self
            .schedule
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = registry.schedule()?;
        Ok(())
    }

    /// The version in effect for the newest rows, opened.
    pub fn current(&self) -> Arc<Opened> {
        let latest = self.schedule().latest();
        lock(&self.opened)[&latest].clone()
    }

    /// The registry's versions present, if the model has a registry.
    pub fn available(&self) -> Result<Vec<u64>> {
        self.registry
            .as_ref()
            .map_or(Ok(Vec::new()), Registry::versions)
    }

    /// Promotes `version`: from the event time after every row scored so
    /// far (and not before `watermark`), rows are scored by it. Checked
    /// first, recorded durably before it takes effect; the time it takes
    /// effect from is returned.
    pub fn promote(self: &Arc<Self>, version: u64, watermark: Option<i64>) -> Result<Promotion> {
        let prepared = self.prepare(version)?;
        let from_ms = prepared
            .scored_up_to()
            .saturating_add(1)
            .max(watermark.unwrap_or(i64::MIN));
        prepared.commit(from_ms)
    }

    /// The first phase of a promotion: checks `version`, then holds every
    /// worker's scoring (after the batches in flight) until the promotion
    /// is committed at an event time or dropped, which lets it go on
    /// unchanged; after `PREPARED_FOR` it goes on by itself. A cluster's
    /// processes are all prepared, then all committed at the event time
    /// after the newest any of them scored.
    pub fn prepare(self: &Arc<Self>, version: u64) -> Result<Prepared> {
        let Some(registry) = self.registry.clone() else {
            return Err(self.refuse(
                "is a single file; promote versions of a registry (path = a directory NAME/ of NAME/VERSION/model.onnx)".into(),
            ));
        };
        if let Some(pinned) = self.plan.registry.as_ref().and_then(|plan| plan.pinned) {
            return Err(self.refuse(format!(
                "the spec pins version {pinned} (model.version); remove it to promote"
            )));
        }
        let already = lock(&self.opened).get(&version).cloned();
        if already.is_none() {
            let (opened, types) = self.check(version)?;
            if types != self.output_types {
                return Err(self.mismatch(version, &types));
            }
            lock(&self.opened).insert(version, Arc::new(opened));
        }
        let (held, holding) = std::sync::mpsc::channel();
        let (decide, decision) = std::sync::mpsc::channel::<i64>();
        let (answer, answered) = std::sync::mpsc::channel();
        let versions = self.clone();
        std::thread::Builder::new()
            .name("tideflow-promotion".into())
            .spawn(move || {
                let mut schedule = versions
                    .schedule
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                // Every batch scored under the old schedule has finished
                // (they hold it for reading), and none starts until this
                // ends: the newest time scored is final here.
                let _ = held.send(versions.scored_up_to.load(Ordering::SeqCst));
                let Ok(from_ms) = decision.recv_timeout(PREPARED_FOR) else {
                    return;
                };
                let promotion = Promotion {
                    version,
                    from_ms: Some(from_ms),
                    requested_at_ms: registry::now_ms(),
                };
                let recorded = registry
                    .record_once(&promotion)
                    .and_then(|()| registry.schedule());
                let _ = answer.send(recorded.map(|recorded| {
                    *schedule = recorded;
                    promotion
                }));
            })
            .map_err(|error| Error::Runtime(format!("cannot prepare a promotion: {error}")))?;
        let scored_up_to = holding
            .recv()
            .map_err(|_| Error::Runtime("the promotion's thread ended".into()))?;
        Ok(Prepared {
            version,
            scored_up_to,
            decide,
            answered,
        })
    }

    fn refuse(&self, message: String) -> Error {
        Error::Model {
            path: self.plan.path.display().to_string(),
            message,
        }
    }

    /// Opens `version` and checks it: it loads and fits the spec, and
    /// scores a probe batch without NaN. Its output types are returned
    /// beside it.
    fn check(&self, version: u64) -> Result<(Opened, Vec<ColumnType>)> {
        let mut plan = self.plan.clone();
        if let Some(registry) = &self.registry {
            plan.path = registry.model_path(version)?;
        }
        let mut model = Model::open(&plan)?;
        let independent = model.is_row_independent()?;
        if model.probe_has_nan()? {
            return Err(Error::Model {
                path: plan.path.display().to_string(),
                message: "scores NaN on a probe batch; refused".into(),
            });
        }
        let identity = match &self.registry {
            Some(registry) => {
                let hash = model.identity().rsplit('@').next().unwrap_or_default();
                format!("{}:v{version}@{hash}", registry.name())
            }
            None => model.identity().to_owned(),
        };
        let device = model.device().to_owned();
        let types = model.output_types().to_vec();
        let executor = if plan.executor.is_shared(&device) && independent {
            Some(SharedExecutor::start(model)?)
        } else {
            if plan.executor.is_shared(&device) {
                eprintln!(
                    "tideflow: model {identity} does not score rows independently of their batch; a shared executor would make its scores depend on which workers' batches meet in it, so each worker runs its own session"
                );
            }
            None
        };
        Ok((
            Opened {
                plan,
                identity,
                device,
                independent,
                executor,
                rows: std::sync::atomic::AtomicU64::new(0),
            },
            types,
        ))
    }

    /// Every version opened, with the rows each has scored.
    pub fn rows_by_version(&self) -> Vec<(String, u64)> {
        lock(&self.opened)
            .values()
            .map(|opened| (opened.identity.clone(), opened.rows()))
            .collect()
    }

    /// Version `version`, opened.
    fn opened(&self, version: u64) -> Arc<Opened> {
        lock(&self.opened)[&version].clone()
    }
}

impl Opened {
    /// Whether one executor per process runs it.
    pub fn is_shared(&self) -> bool {
        self.executor.is_some()
    }

    /// Rows it has scored in this process.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether `key` is among a canary's keys: the first `buckets` of
/// `CANARY_BUCKETS` buckets of the keys' stable hashes (the same in every
/// process and run, so a key always gets the same version).
fn is_canary_key(key: &Value, buckets: u64) -> bool {
    key.stable_hash() % crate::plan::CANARY_BUCKETS < buckets
}

/// Adds the comparison of the champion's outputs with a challenger's, row
/// by row, to `stats`.
fn compare(
    batch: &Batch,
    (champion, challenger): (&[OutputPlan], &[OutputPlan]),
    stats: &mut ShadowStats,
) {
    stats.rows += batch.len() as u64;
    for row in 0..batch.len() {
        let mut agree = true;
        for (index, (ours, theirs)) in champion.iter().zip(challenger).enumerate() {
            let (ours, theirs) = (batch.value(ours.slot, row), batch.value(theirs.slot, row));
            match (&*ours, &*theirs) {
                (Value::F64(ours), Value::F64(theirs)) => {
                    stats.abs_difference_sums[index] += (ours - theirs).abs();
                }
                (ours, theirs) => agree &= ours == theirs,
            }
        }
        stats.agreeing += u64::from(agree);
    }
}

/// A worker's scorer: each row scored by the version in effect at its
/// event time.
#[derive(Debug)]
pub struct VersionedScorer {
    versions: Arc<ModelVersions>,
    scorers: BTreeMap<u64, Scorer>,
    /// The challengers' sessions, opened the first time.
    shadows: Vec<Option<Model>>,
}

impl VersionedScorer {
    /// A worker's scorer of the run's versions.
    pub fn new(versions: Arc<ModelVersions>) -> Self {
        let shadows = versions.shadows.iter().map(|_| None).collect();
        VersionedScorer {
            versions,
            scorers: BTreeMap::new(),
            shadows,
        }
    }

    /// The model's plan.
    pub fn plan(&self) -> &ModelPlan {
        &self.versions.plan
    }

    /// Scores the rows of `batch`, each by its version, adding the
    /// outputs (and, for a registry, `_model`).
    pub fn score(&mut self, batch: &mut Batch) -> Result<()> {
        let versions = self.versions.clone();
        // Held while scoring: a promotion waits for batches in flight.
        let schedule = versions
            .schedule
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(newest) = batch.rows().iter().map(|row| row.time).max() {
            versions.scored_up_to.fetch_max(newest, Ordering::SeqCst);
        }
        let row_versions = self.row_versions(batch, &schedule);
        let first = row_versions.first().copied().unwrap_or(schedule.base);
        if row_versions.iter().all(|version| *version == first) {
            self.scorer(first)?.score(batch)?;
        } else {
            self.score_by_version(batch, &row_versions)?;
        }
        self.name_version(batch, |row| row_versions[row]);
        self.count_rows(&row_versions);
        self.score_shadows(batch);
        Ok(())
    }

    /// Adds the rows of each version to its count. A batch holds one
    /// version or a few, mostly in runs: counted run by run into a short
    /// list rather than row by row into a map.
    fn count_rows(&self, row_versions: &[u64]) {
        let mut counts: Vec<(u64, u64)> = Vec::new();
        for run in row_versions.chunk_by(|one, next| one == next) {
            match counts.iter_mut().find(|(version, _)| *version == run[0]) {
                Some((_, rows)) => *rows += run.len() as u64,
                None => counts.push((run[0], run.len() as u64)),
            }
        }
        for (version, rows) in counts {
            self.versions
                .opened(version)
                .rows
                .fetch_add(rows, Ordering::Relaxed);
        }
    }

    /// The version of each row: the canary's for a canary key, else the
    /// one in effect at the row's event time.
    fn row_versions(&self, batch: &Batch, schedule: &Schedule) -> Vec<u64> {
        let canary = self.versions.plan.canary.as_ref();
        batch
            .rows()
            .iter()
            .enumerate()
            .map(|(index, row)| match canary {
                Some(canary)
                    if is_canary_key(&batch.value(canary.key_slot, index), canary.buckets) =>
                {
                    canary.version
                }
                _ => schedule.version_at(row.time),
            })
            .collect()
    }

    /// Scores `batch` with each challenger into its own columns and adds
    /// the comparison with the champion to its stats; a challenger that
    /// fails leaves its columns null, and the champion's rows go on.
    fn score_shadows(&mut self, batch: &mut Batch) {
        let versions = self.versions.clone();
        for (index, (plan, stats)) in versions.shadows.iter().enumerate() {
            let scored = match &mut self.shadows[index] {
                Some(model) => model.score(batch),
                slot => Model::open(plan).and_then(|model| slot.insert(model).score(batch)),
            };
            let mut stats = lock(stats);
            if scored.is_err() {
                stats.failed += batch.len() as u64;
                for output in &plan.outputs {
                    let nulls = vec![Value::Null; batch.len()];
                    batch.set_column(output.slot, ColumnType::Str, nulls);
                }
                continue;
            }
            compare(batch, (&versions.plan.outputs, &plan.outputs), &mut stats);
        }
    }

    /// A batch of rows of several versions (a promotion, a canary): each
    /// version's rows scored apart, their outputs put back in row order.
    fn score_by_version(&mut self, batch: &mut Batch, row_versions: &[u64]) -> Result<()> {
        let mut parts: BTreeMap<u64, Batch> = BTreeMap::new();
        for version in row_versions {
            if parts.contains_key(version) {
                continue;
            }
            let mut part = batch.clone();
            let mut index = 0;
            part.retain(|_| {
                index += 1;
                row_versions[index - 1] == *version
            });
            self.scorer(*version)?.score(&mut part)?;
            parts.insert(*version, part);
        }
        let plan = self.versions.plan.clone();
        for (output, ty) in plan.outputs.iter().zip(&self.versions.output_types) {
            let mut cells = Cells::for_type(*ty, row_versions.len());
            let mut taken: BTreeMap<u64, usize> = BTreeMap::new();
            for version in row_versions {
                let index = taken.entry(*version).or_default();
                cells.push(parts[version].value(output.slot, *index).into_owned());
                *index += 1;
            }
            batch.set_cells(output.slot, cells);
        }
        Ok(())
    }

    /// Writes `_model` for a registry's rows: the identity of the version
    /// that scored each.
    fn name_version(&self, batch: &mut Batch, version_of: impl Fn(usize) -> u64) {
        let Some(registry) = &self.versions.plan.registry else {
            return;
        };
        let mut names: BTreeMap<u64, Value> = BTreeMap::new();
        let values: Vec<Value> = (0..batch.len())
            .map(|row| {
                let version = version_of(row);
                names
                    .entry(version)
                    .or_insert_with(|| {
                        Value::Str(self.versions.opened(version).identity.as_str().into())
                    })
                    .clone()
            })
            .collect();
        batch.set_column(registry.model_slot, ColumnType::Str, values);
    }

    /// This worker's scorer of `version`, opened the first time.
    fn scorer(&mut self, version: u64) -> Result<&mut Scorer> {
        if !self.scorers.contains_key(&version) {
            let opened = self.versions.opened(version);
            let scorer = match &opened.executor {
                Some(executor) => Scorer::Shared(executor.handle()),
                None => Scorer::PerWorker(Box::new(Model::open(&opened.plan)?)),
            };
            self.scorers.insert(version, scorer);
        }
        Ok(self.scorers.get_mut(&version).expect("inserted above"))
    }
}
