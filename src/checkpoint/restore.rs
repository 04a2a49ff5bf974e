//! Starting a run from its newest checkpoint: the sources' positions, the
//! feature stages' state regrouped onto this run's workers, and the
//! files of the checkpoint's epochs published.
//!
//! Each operator's part is named after the operator and the worker that
//! wrote it (`source-w0`, `stage1-w3`, `sink-w2`); a restore reads every
//! part, so a checkpoint taken on one number of workers restores onto
//! another: positions are per partition, and each stage's keys go to the
//! worker that now owns them.

use super::coordinator::EpochFile;
use super::store::{CheckpointStore, Found, StoredPart};
use crate::Result;
use crate::features::{StagePlan, StageState};
use crate::ordering::PartitionClock;
use crate::plan::Plan;
use crate::sinks::{EpochOutput, TopicOffsets, TopicResume};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Where a source partition stands at a cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPosition {
    /// The source partition.
    pub partition: u32,
    /// The offset of the first record after the cut.
    pub next_offset: u64,
    /// Its lateness clock.
    pub clock: PartitionClock,
    /// Whether it had ended.
    pub finished: bool,
}

/// A source's part of a checkpoint: its partitions' positions and what
/// its dead letters of the epoch left.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SourceCut {
    /// Each partition the source reads.
    pub partitions: Vec<PartitionPosition>,
    /// The dead letters' files, or where a Kafka topic's later ones land.
    pub dead_letters: SinkCut,
}

/// The index [`SinkCut::topic_starts`] gives the dead letters, beside the
/// plan's sinks.
pub const DEAD_LETTERS: usize = usize::MAX;

/// A sink operator's part of a checkpoint: the files of the epoch, and
/// where each Kafka sink's rows after the cut land at the earliest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SinkCut {
    /// Files to publish with the checkpoint.
    pub files: Vec<EpochFile>,
    /// Per Kafka sink (its index among the plan's sinks), per partition,
    /// the offset at or after which the worker's later rows land.
    pub topic_starts: Vec<(usize, TopicOffsets)>,
}

impl SinkCut {
    /// The part of a sink operator whose writers (in the plan's order)
    /// closed their epochs with `outputs`.
    pub fn of(outputs: Vec<EpochOutput>) -> Self {
        let mut part = SinkCut::default();
        for (sink, output) in outputs.into_iter().enumerate() {
            part.files.extend(output.files);
            if let Some(starts) = output.topic_starts {
                part.topic_starts.push((sink, starts));
            }
        }
        part
    }

    /// The part of a writer of dead letters that closed its epoch with
    /// `output`.
    pub fn of_dead_letters(output: EpochOutput) -> Self {
        SinkCut {
            files: output.files,
            topic_starts: output
                .topic_starts
                .map(|starts| (DEAD_LETTERS, starts))
                .into_iter()
                .collect(),
        }
    }

    /// Adds this part's topic starts to `earliest`, keeping per partition
    /// the smallest.
    fn merge_into(self, files: &mut Vec<EpochFile>, earliest: &mut BTreeMap<usize, TopicOffsets>) {
        files.extend(self.files);
        for (sink, starts) in self.topic_starts {
            let sink_earliest = earliest.entry(sink).or_default();
            for (partition, start) in starts {
                let offset = sink_earliest.entry(partition).or_insert(start);
                *offset = (*offset).min(start);
            }
        }
    }
}

/// A feature stage's part of a checkpoint: its state, and the rows it
/// held back for the watermark (stages keyed by other fields than the
/// source's).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StagePart {
    /// The stage's keys and clock.
    pub state: StageState,
    /// Rows waiting for the watermark, in canonical order.
    pub buffered: Vec<crate::row::Row>,
}

/// A [`StagePart`] borrowed from a running stage, to encode without a
/// copy (the same bytes as the owned one).
#[derive(Debug, Serialize)]
pub struct StagePartRef<'a> {
    /// The stage's keys and clock.
    pub state: &'a StageState,
    /// Rows waiting for the watermark, in canonical order.
    pub buffered: Vec<&'a crate::row::Row>,
}

/// What a feature stage's state changed since its part of the
/// checkpoint before, and the rows it holds back now.
#[derive(Debug, Deserialize)]
pub struct StagePartChanges {
    /// What the stage's keys and clock changed.
    pub changes: crate::features::changes::StageChanges,
    /// Rows waiting for the watermark, in canonical order.
    pub buffered: Vec<crate::row::Row>,
}

/// A [`StagePartChanges`] borrowed from a running stage, to encode.
#[derive(Debug, Serialize)]
pub struct StagePartChangesRef<'a> {
    /// What the stage's keys and clock changed.
    pub changes: crate::features::changes::StageChangesRef<'a>,
    /// Rows waiting for the watermark, in canonical order.
    pub buffered: Vec<&'a crate::row::Row>,
}

/// An as-of join's part of a checkpoint: its table's versions, the time
/// they are settled to, and the events waiting for the table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JoinPart {
    /// Each key with its versions.
    pub versions: Vec<(tideflow_connectors::Value, Vec<crate::joins::Version>)>,
    /// The time the versions are settled to.
    pub settled: Option<i64>,
    /// Events waiting for the table's watermark, in (time, partition,
    /// offset) order.
    pub waiting: Vec<crate::row::Row>,
}

/// A [`JoinPart`] borrowed from a running join, to encode.
#[derive(Debug, Serialize)]
pub struct JoinPartRef<'a> {
    /// Each key with its versions.
    pub versions: Vec<(&'a tideflow_connectors::Value, &'a [crate::joins::Version])>,
    /// The time the versions are settled to.
    pub settled: Option<i64>,
    /// Events waiting for the table's watermark.
    pub waiting: Vec<&'a crate::row::Row>,
}

/// A label's part of a checkpoint: its records, the time they are settled
/// to, the rows waiting for their horizon, and the newest time the label
/// input's readers announced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LabelPart {
    /// Each key with its records.
    pub records: Vec<(tideflow_connectors::Value, Vec<crate::joins::LabelRecord>)>,
    /// The time the records are settled to.
    pub settled: Option<i64>,
    /// Rows waiting for their horizon.
    pub waiting: Vec<crate::row::Row>,
    /// The newest event time a reader of the input announced as it ended.
    pub newest: Option<i64>,
}

/// A [`LabelPart`] borrowed from a running label operator, to encode.
#[derive(Debug, Serialize)]
pub struct LabelPartRef<'a> {
    /// Each key with its records.
    pub records: Vec<(
        &'a tideflow_connectors::Value,
        &'a [crate::joins::LabelRecord],
    )>,
    /// The time the records are settled to.
    pub settled: Option<i64>,
    /// Rows waiting for their horizon.
    pub waiting: Vec<&'a crate::row::Row>,
    /// The newest event time a reader of the input announced.
    pub newest: Option<i64>,
}

/// What a run starts from.
#[derive(Debug, Default)]
pub struct Restored {
    /// The checkpoint's id; 0 when the run starts afresh.
    pub id: u64,
    /// Each partition's position, by partition.
    pub positions: BTreeMap<u32, PartitionPosition>,
    /// Per stage, per worker of this run: its part, taken once.
    stages: Vec<Vec<Mutex<Option<StagePart>>>>,
    /// Per table and label input (tables first), each partition's position.
    pub inputs: Vec<BTreeMap<u32, PartitionPosition>>,
    /// Per join, per worker of this run: its part, taken once.
    joins: Vec<Vec<Mutex<Option<JoinPart>>>>,
    /// Per label, per worker of this run: its part, taken once.
    labels: Vec<Vec<Mutex<Option<LabelPart>>>>,
    /// Per Kafka sink (by index), per partition, the smallest offset at
    /// which a worker's rows after the cut can have landed.
    pub topic_starts: BTreeMap<usize, TopicOffsets>,
    /// Per Kafka sink (by index), what it resumes from, once read.
    pub topic_resumes: BTreeMap<usize, Arc<TopicResume>>,
    /// The model versions' schedule as of the checkpoint, if it holds one.
    pub model_schedule: Option<crate::models::registry::Schedule>,
}

impl Restored {
    /// The part worker `worker` starts stage `stage` from, if restored.
    pub fn take_stage(&self, stage: usize, worker: usize) -> Option<StagePart> {
        self.stages
            .get(stage)?
            .get(worker)?
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

impl Restored {
    /// The part worker `worker` starts join `join` from, if restored.
    pub fn take_join(&self, join: usize, worker: usize) -> Option<JoinPart> {
        take(self.joins.get(join)?.get(worker)?)
    }

    /// The part worker `worker` starts label `label` from, if restored.
    pub fn take_label(&self, label: usize, worker: usize) -> Option<LabelPart> {
        take(self.labels.get(label)?.get(worker)?)
    }

    /// Where input `input`'s partitions start (none: from their beginning).
    pub fn input_positions(&self, input: usize) -> BTreeMap<u32, PartitionPosition> {
        self.inputs.get(input).cloned().unwrap_or_default()
    }
}

fn take<T>(part: &Mutex<Option<T>>) -> Option<T> {
    part.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
}

/// The part name of an operator of worker `worker`.
pub fn part_name(operator: &str, worker: usize) -> String {
    format!("{operator}-w{worker}")
}

/// Reads the newest sound checkpoint of `store` for a run of `plan` on
/// `workers` workers (of every process), of which this process runs
/// `local` (`in_cluster`: one process of a cluster, where every stage's
/// keys go to workers by hash) (saying on standard error which newer ones it refused and
/// why), and publishes the files of its epochs that a crash left
/// unpublished. A worker's files are published by the process that now
/// runs the worker of the same index (modulo the workers): in a cluster
/// on several machines, the same hosts-file order finds them where they
/// were written.
pub fn restore(
    plan: &Plan,
    store: &CheckpointStore,
    workers: usize,
    local: std::ops::Range<usize>,
    in_cluster: bool,
) -> Result<Restored> {
    let Found {
        checkpoint,
        refused,
    } = store.latest()?;
    for refusal in &refused {
        eprintln!(
            "tideflow: checkpoint {} refused ({}); using an older one",
            refusal.epoch, refusal.reason
        );
    }
    let Some(checkpoint) = checkpoint else {
        return Ok(Restored::default());
    };
    let location = |name: &str| format!("checkpoint {} part {name}", checkpoint.epoch);
    let mut restored = Restored {
        id: checkpoint.epoch,
        ..Restored::default()
    };
    let mut stages: Vec<Vec<StageKeys>> = plan.stages.iter().map(|_| Vec::new()).collect();
    let shape = Shape {
        stages: plan.stages.len(),
        inputs: plan.tables.len() + plan.labels.len(),
        joins: plan.joins.len(),
        labels: plan.labels.len(),
    };
    restored.inputs = vec![BTreeMap::new(); shape.inputs];
    let mut joins: Vec<Vec<JoinPart>> = vec![Vec::new(); shape.joins];
    let mut labels: Vec<Vec<LabelPart>> = vec![Vec::new(); shape.labels];
    let mut files: Vec<EpochFile> = Vec::new();
    // The stages' parts are most of a checkpoint's bytes: each is decoded
    // on a thread of its own.
    let decoded: Vec<Result<DecodedPart>> = std::thread::scope(|scope| {
        let decoding: Vec<_> = checkpoint
            .parts
            .iter()
            .map(|(name, stored)| {
                let location = location(name);
                scope.spawn(move || decode_part(name, stored, shape, location))
            })
            .collect();
        decoding
            .into_iter()
            .map(|thread| thread.join().expect("decoding a part does not panic"))
            .collect()
    });
    for (name, part) in checkpoint.parts.keys().zip(decoded) {
        let mut files_here = Vec::new();
        match part? {
            DecodedPart::Source(cut) => {
                cut.dead_letters
                    .merge_into(&mut files_here, &mut restored.topic_starts);
                for position in cut.partitions {
                    restored.positions.insert(position.partition, position);
                }
            }
            DecodedPart::Sink(cut) => cut.merge_into(&mut files_here, &mut restored.topic_starts),
            DecodedPart::Stage(index, part) => stages[index].push(*part),
            DecodedPart::Input(index, cut) => {
                cut.dead_letters
                    .merge_into(&mut files_here, &mut BTreeMap::new());
                for position in cut.partitions {
                    restored.inputs[index].insert(position.partition, position);
                }
            }
            DecodedPart::Join(index, part) => joins[index].push(*part),
            DecodedPart::Label(index, part) => labels[index].push(*part),
            DecodedPart::Models(schedule) => restored.model_schedule = Some(schedule),
        }
        if part_worker(name).is_some_and(|writer| local.contains(&(writer % workers))) {
            files.extend(files_here);
        }
    }
    for file in &files {
        file.publish().map_err(|error| crate::Error::Checkpoint {
            location: file.pending.display().to_string(),
            message: format!("cannot publish as {}: {error}", file.published.display()),
        })?;
    }
    restored.stages = plan
        .stages
        .iter()
        .zip(stages)
        .map(|(stage, parts)| regroup(stage, parts, workers, in_cluster))
        .collect();
    restored.joins = plan
        .joins
        .iter()
        .zip(joins)
        .map(|(join, parts)| {
            let table_key = plan.tables[join.table].key_slot;
            regroup_join(parts, (join.on_slot, table_key), workers)
        })
        .collect();
    restored.labels = plan
        .labels
        .iter()
        .zip(labels)
        .map(|(label, parts)| regroup_label(parts, label.on_slot, workers))
        .collect();
    Ok(restored)
}

/// The worker whose part is named `name` (`operator-wN`).
fn part_worker(name: &str) -> Option<usize> {
    name.rsplit_once("-w")?.1.parse().ok()
}

/// How many operators of each kind a plan has, to tell its parts apart.
#[derive(Clone, Copy, Debug)]
struct Shape {
    stages: usize,
    inputs: usize,
    joins: usize,
    labels: usize,
}

/// A part of a checkpoint, decoded.
enum DecodedPart {
    Source(SourceCut),
    /// Table or label input `index`'s reader of one worker.
    Input(usize, SourceCut),
    /// Join `index`'s part of one worker.
    Join(usize, Box<JoinPart>),
    /// Label `index`'s part of one worker.
    Label(usize, Box<LabelPart>),
    /// A sink's or the scoring's part.
    Sink(SinkCut),
    /// Stage `index`'s part of one worker.
    Stage(usize, Box<StageKeys>),
    /// The model versions' schedule (written by the coordinator).
    Models(crate::models::registry::Schedule),
}

/// One worker's part of a stage, decoded: its clock and keys, and the
/// rows it held back.
struct StageKeys {
    clock: crate::features::StageClock,
    keys: Vec<crate::features::KeyState>,
    buffered: Vec<crate::row::Row>,
}

impl StageKeys {
    /// The part from its whole bytes and the changes since.
    fn decode(stored: &StoredPart) -> Result<StageKeys> {
        let whole: StagePart = super::decode(&stored.whole)?;
        if stored.changes.is_empty() {
            let (clock, keys) = whole.state.into_keys();
            return Ok(StageKeys {
                clock,
                keys,
                buffered: whole.buffered,
            });
        }
        let mut slotted = whole.state.into_slotted();
        let mut buffered = whole.buffered;
        for (index, bytes) in stored.changes.iter().enumerate() {
            let changed: StagePartChanges = super::decode(bytes)?;
            slotted
                .apply(changed.changes)
                .map_err(|message| crate::Error::Checkpoint {
                    location: format!("changes {} of {}", index + 1, stored.changes.len()),
                    message,
                })?;
            buffered = changed.buffered;
        }
        let (clock, keys) = slotted.into_keys();
        Ok(StageKeys {
            clock,
            keys,
            buffered,
        })
    }
}

/// Decodes the part named `name` (`operator-wN`) of a checkpoint of a
/// plan of `shape`.
fn decode_part(
    name: &str,
    stored: &StoredPart,
    shape: Shape,
    location: String,
) -> Result<DecodedPart> {
    let operator = name.split("-w").next().unwrap_or_default();
    let numbered = |prefix: &str, count: usize| {
        operator
            .strip_prefix(prefix)
            .and_then(|index| index.parse::<usize>().ok())
            .filter(|index| *index < count)
    };
    let stage = numbered("stage", shape.stages);
    let refused = |message: &str| crate::Error::Checkpoint {
        location: location.clone(),
        message: message.into(),
    };
    if stage.is_none() && !stored.changes.is_empty() {
        return Err(refused(
            "holds changes to an earlier part, which only feature stages write",
        ));
    }
    let decoded = match (operator, stage) {
        ("source", _) => super::decode::<SourceCut>(&stored.whole).map(DecodedPart::Source),
        ("sink" | "score", _) => super::decode::<SinkCut>(&stored.whole).map(DecodedPart::Sink),
        (crate::models::SCHEDULE_PART, _) => serde_json::from_slice(&stored.whole)
            .map(DecodedPart::Models)
            .map_err(|error| refused(&error.to_string())),
        (_, Some(index)) => {
            StageKeys::decode(stored).map(|part| DecodedPart::Stage(index, Box::new(part)))
        }
        _ if numbered("input", shape.inputs).is_some() => {
            let index = numbered("input", shape.inputs).unwrap_or_default();
            super::decode::<SourceCut>(&stored.whole).map(|cut| DecodedPart::Input(index, cut))
        }
        _ if numbered("join", shape.joins).is_some() => {
            let index = numbered("join", shape.joins).unwrap_or_default();
            super::decode::<JoinPart>(&stored.whole)
                .map(|part| DecodedPart::Join(index, Box::new(part)))
        }
        _ if numbered("label", shape.labels).is_some() => {
            let index = numbered("label", shape.labels).unwrap_or_default();
            super::decode::<LabelPart>(&stored.whole)
                .map(|part| DecodedPart::Label(index, Box::new(part)))
        }
        _ => {
            return Err(refused(
                "a part this dataflow has no operator for: the checkpoint is of another spec; point state.dir elsewhere",
            ));
        }
    };
    decoded.map_err(|error| match error {
        crate::Error::Checkpoint {
            location: within,
            message,
        } if within != "state" => refused(&format!("{within}: {message}")),
        error => refused(&error.to_string()),
    })
}

/// A stage's parts from the workers that wrote them, as the parts of this
/// run's `workers`.
fn regroup(
    stage: &StagePlan,
    parts: Vec<StageKeys>,
    workers: usize,
    in_cluster: bool,
) -> Vec<Mutex<Option<StagePart>>> {
    let by_partition = stage.source_keyed && !in_cluster;
    let mut buffered: Vec<Vec<crate::row::Row>> = (0..workers).map(|_| Vec::new()).collect();
    let mut states = Vec::with_capacity(parts.len());
    for part in parts {
        states.push((part.clock, part.keys));
        for row in part.buffered {
            let worker = owner(
                by_partition,
                &row.values[stage.key_slot],
                row.partition,
                workers,
            );
            buffered[worker].push(row);
        }
    }
    let states = StageState::regroup(stage, states, workers, |key| {
        owner(by_partition, &key.key, key.partition, workers)
    });
    states
        .into_iter()
        .zip(buffered)
        .map(|(state, mut buffered)| {
            buffered.sort_by_key(crate::row::Row::canonical_order);
            Mutex::new(Some(StagePart { state, buffered }))
        })
        .collect()
}

/// A join's parts from the workers that wrote them, as the parts of this
/// run's `workers`: each key's versions, and each waiting event, go to
/// the worker its key hashes to (`on` the events' key slot, `table_key`
/// the table's).
fn regroup_join(
    parts: Vec<JoinPart>,
    (on, _table_key): (usize, usize),
    workers: usize,
) -> Vec<Mutex<Option<JoinPart>>> {
    // Each worker settled its table up to its own events: the least of
    // those times is settled for all (a key may move to another worker).
    let settled = parts.iter().map(|part| part.settled).min().flatten();
    let mut regrouped: Vec<JoinPart> = (0..workers)
        .map(|_| JoinPart {
            settled,
            ..JoinPart::default()
        })
        .collect();
    for part in parts {
        by_key_hash(
            part.versions,
            |(key, _)| key,
            workers,
            |worker, entry| regrouped[worker].versions.push(entry),
        );
        by_key_hash(
            part.waiting,
            |row| row.cell(on),
            workers,
            |worker, row| regrouped[worker].waiting.push(row),
        );
    }
    offered(regrouped)
}

/// A label's parts from the workers that wrote them, as the parts of this
/// run's `workers`, by the hash of each key and each waiting row's `on`.
fn regroup_label(
    parts: Vec<LabelPart>,
    on: usize,
    workers: usize,
) -> Vec<Mutex<Option<LabelPart>>> {
    let settled = parts.iter().map(|part| part.settled).min().flatten();
    let newest = parts.iter().filter_map(|part| part.newest).max();
    let mut regrouped: Vec<LabelPart> = (0..workers)
        .map(|_| LabelPart {
            settled,
            newest,
            ..LabelPart::default()
        })
        .collect();
    for part in parts {
        by_key_hash(
            part.records,
            |(key, _)| key,
            workers,
            |worker, entry| regrouped[worker].records.push(entry),
        );
        by_key_hash(
            part.waiting,
            |row| row.cell(on),
            workers,
            |worker, row| regrouped[worker].waiting.push(row),
        );
    }
    offered(regrouped)
}

/// Hands each of `items` to the worker that owns its key by hash.
fn by_key_hash<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &tideflow_connectors::Value,
    workers: usize,
    mut put: impl FnMut(usize, T),
) {
    for item in items {
        let worker = owner(false, key(&item), 0, workers);
        put(worker, item);
    }
}

/// Each worker's part, to be taken once.
fn offered<T>(parts: Vec<T>) -> Vec<Mutex<Option<T>>> {
    parts
        .into_iter()
        .map(|part| Mutex::new(Some(part)))
        .collect()
}

/// The worker that keeps a key first seen in `partition`: in a single
/// process, a source-keyed stage's keys stay with the worker reading their
/// partition (`by_partition`); any other stage's, and every stage's in a
/// cluster, go by the key's hash.
fn owner(
    by_partition: bool,
    key: &tideflow_connectors::Value,
    partition: u32,
    workers: usize,
) -> usize {
    if by_partition {
        partition as usize % workers
    } else {
        (key.stable_hash() % workers as u64) as usize
    }
}
