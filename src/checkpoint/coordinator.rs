//! Taking a checkpoint across the operators of a process: when each one
//! cuts, what it reports, and when the checkpoint is complete.
//!
//! A checkpoint is a cut at a dataflow time `T`: every operator's state
//! after exactly the data at times before `T`. The sources choose the cut:
//! `T` is announced above every source's current time, so that each
//! source crosses it later, when its capability moves from below `T` to
//! `T` or beyond (or it finishes); at that moment everything it has
//! emitted is before the cut, and it reports its positions. Every other
//! stateful operator holds back input at `T` or later and cuts once its
//! input frontier has passed `T`: it has then seen all input before the
//! cut and none after. Its output after the cut is at `T` or later, so
//! downstream the cut falls in the same place. Sinks close the files of
//! the epoch then; the files become visible when the checkpoint commits.
//!
//! Each operator reports one part and goes on: a writer thread stores
//! the parts, and once a checkpoint has them all writes its manifest, then
//! renames the epoch's files into place. Workers only encode their state,
//! a few megabytes at a time into chunks the writer hands back once
//! stored (see [`crate::operators`]'s `CutTracker`), so that a part never
//! lies whole in memory. A part can hold only what
//! changed since the operator's part of the checkpoint before; the writer
//! records which parts it builds on (see [`super::store`]).
//! In a cluster, process 0 chooses `T` and writes the manifest once every
//! process has stored its parts (see [`super::agreement`]); a process
//! holds its sources' times while the cut is agreed.
//!
//! One checkpoint is in progress at a time; the next starts once
//! `interval` has passed. When a source has read everything, it announces
//! a last checkpoint at the end of time (`T = i64::MAX`), which each
//! operator takes when its input ends: a finished run's checkpoint holds
//! its final positions, so running it again reads nothing and writes
//! nothing.

use super::agreement::{Addressed, Control, Leader, Step};
use super::store::{CheckpointStore, PartLink, PartReceipt};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The checkpoint at the end of time, taken when the sources finish.
pub const FINAL: i64 = i64::MAX;

/// A file written for a checkpoint's epoch: under its pending name until
/// the checkpoint commits, then renamed to its final name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochFile {
    /// Where it was written.
    pub pending: PathBuf,
    /// Where it goes once its checkpoint commits.
    pub published: PathBuf,
}

impl EpochFile {
    /// Renames the file into place; a file already there (a commit that
    /// crashed after renaming) is no error.
    pub fn publish(&self) -> std::io::Result<()> {
        match std::fs::rename(&self.pending, &self.published) {
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound && self.published.exists() =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// The checkpoints of one process's run.
#[derive(Debug)]
pub struct Coordinator {
    store: CheckpointStore,
    /// The model versions, whose schedule every checkpoint keeps.
    models: Mutex<Option<Arc<crate::models::ModelVersions>>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Parts on their way to the writer thread, and the thread.
    writer: Mutex<Option<(Sender<Part>, JoinHandle<()>)>>,
    /// The first failure of the writer thread.
    failure: Mutex<Option<Error>>,
    /// Whether the writer thread has failed (the failure itself may have
    /// been taken).
    failed: std::sync::atomic::AtomicBool,
    interval: Duration,
    /// Parts each checkpoint has in this process: one per stateful
    /// operator of each of its workers.
    parts: usize,
    /// Per part name, the parts the next change of it builds on: the last
    /// whole part and the changes stored since, oldest first.
    chains: Mutex<std::collections::HashMap<String, Vec<PartLink>>>,
    /// This process's index in a cluster; `None` when it runs alone.
    process: Option<usize>,
    /// Sources (workers) in this process.
    sources: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    next_id: u64,
    /// Each source's current time (`FINAL` once it has finished).
    sources: BTreeMap<usize, i64>,
    in_progress: Option<InProgress>,
    last_started: Instant,
    /// The newest checkpoint committed: its id and time.
    committed: Option<(u64, i64)>,
    /// The source positions of the newest committed checkpoint.
    committed_positions: BTreeMap<u32, u64>,
    /// In a cluster: the checkpoint for which the sources hold their
    /// times, while its cut is agreed.
    frozen: Option<u64>,
    /// The sources of this process that have read everything (or
    /// stopped): the last checkpoint is taken once all have.
    finished: std::collections::BTreeSet<usize>,
    /// In a cluster: whether this process has asked for the last
    /// checkpoint.
    final_asked: bool,
    /// In a cluster: messages for the other processes.
    outbox: Vec<Addressed>,
    /// Process 0 of a cluster leads the agreement.
    leader: Option<Leader>,
}

#[derive(Debug)]
struct InProgress {
    id: u64,
    time: i64,
    started: Instant,
    receipts: Vec<PartReceipt>,
    files: Vec<EpochFile>,
    positions: Vec<(u32, u64)>,
}

impl InProgress {
    fn new(id: u64, time: i64) -> Self {
        InProgress {
            id,
            time,
            started: Instant::now(),
            receipts: Vec::new(),
            files: Vec::new(),
            positions: Vec::new(),
        }
    }
}

/// Where a source may move its time to, and the checkpoint it crosses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceStep {
    /// The time the source moves to: the one it asked for, or its
    /// current one while a cluster agrees on a cut.
    pub to: i64,
    /// The checkpoint it must cut now, with its state as it is.
    pub cut: Option<Cut>,
}

/// An operator's part of a checkpoint, for the writer thread: its bytes
/// follow as they are encoded.
#[derive(Debug)]
struct Part {
    id: u64,
    name: String,
    pieces: Receiver<Piece>,
    /// Where the writer hands each stored chunk back, if anywhere.
    returns: Option<Sender<Vec<u8>>>,
    files: Vec<EpochFile>,
    /// Whether it holds only what changed since the operator's part of
    /// the checkpoint before.
    change: bool,
}

/// The bytes of a part, in order.
#[derive(Debug)]
pub enum Piece {
    /// The next bytes.
    Bytes(Vec<u8>),
    /// The part is whole.
    End,
}

/// A checkpoint an operator has to cut: its id and its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The checkpoint's id (its epoch in the store).
    pub id: u64,
    /// Its dataflow time: the operator cuts once its input is past it.
    pub time: i64,
}

impl Coordinator {
    /// Checkpoints into `store` every `interval`, each with `parts` parts
    /// from this process's `sources` workers, numbered after `last_id`
    /// (the newest in the store, or 0), recording each commit in
    /// `metrics`; starts the writer thread. `cluster` is this process's
    /// index and the number of processes when it is one of a cluster.
    pub fn start(
        store: CheckpointStore,
        interval: Duration,
        (parts, sources): (usize, usize),
        last_id: u64,
        cluster: Option<(usize, usize)>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let leader = cluster
            .filter(|(process, _)| *process == 0)
            .map(|(_, processes)| Leader::new(processes, interval, last_id));
        let coordinator = Arc::new(Coordinator {
            store,
            models: Mutex::new(None),
            metrics,
            writer: Mutex::new(None),
            failure: Mutex::new(None),
            failed: std::sync::atomic::AtomicBool::new(false),
            interval,
            parts,
            chains: Mutex::new(std::collections::HashMap::new()),
            process: cluster.map(|(process, _)| process),
            sources,
            inner: Mutex::new(Inner {
                next_id: last_id + 1,
                sources: BTreeMap::new(),
                in_progress: None,
                last_started: Instant::now(),
                committed: None,
                committed_positions: BTreeMap::new(),
                frozen: None,
                finished: std::collections::BTreeSet::new(),
                final_asked: false,
                outbox: Vec::new(),
                leader,
            }),
        });
        let (parts_in, parts_out) = channel::<Part>();
        let writing = coordinator.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                for part in parts_out {
                    if let Err(error) = writing.store_part(part) {
                        writing.fail(error);
                    }
                }
            })
            .expect("a thread starts");
        *lock(&coordinator.writer) = Some((parts_in, thread));
        coordinator
    }

    /// Records the writer thread's first failure.
    fn fail(&self, error: Error) {
        lock(&self.failure).get_or_insert(error);
        self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The writer thread's failure, once: the run stops with it.
    pub fn take_failure(&self) -> Option<Error> {
        lock(&self.failure).take()
    }

    /// Waits for the writer thread to store every part reported (the run
    /// has ended) and says whether it failed.
    pub fn finish(&self) -> Result<()> {
        let writer = lock(&self.writer).take();
        if let Some((parts_in, thread)) = writer {
            drop(parts_in);
            let _ = thread.join();
        }
        match self.take_failure() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Registers the source of `worker` at time `time`, before it emits
    /// anything.
    pub fn source_starts(&self, worker: usize, time: i64) {
        self.lock().sources.insert(worker, time);
    }

    /// The source of `worker` moves from `from` to `to`: returns where it
    /// may move (in a cluster agreeing on a cut, nowhere yet) and the
    /// checkpoint it crosses, which it must cut now, with its state as it
    /// is. Alone, starts a checkpoint when one is due: every `interval`,
    /// and the last one (at `FINAL`) once every source has finished.
    pub fn source_moves(&self, worker: usize, from: i64, to: i64) -> SourceStep {
        let mut inner = self.lock();
        if inner.frozen.is_some() {
            return SourceStep {
                to: from,
                cut: None,
            };
        }
        inner.sources.insert(worker, to);
        if self.process.is_none() {
            let all_finished = inner.finished.len() >= self.sources;
            Self::start_when_due(&mut inner, self.interval, from, all_finished);
        }
        let cut = inner
            .in_progress
            .as_ref()
            .map(|progress| Cut {
                id: progress.id,
                time: progress.time,
            })
            .filter(|cut| from < cut.time && to >= cut.time);
        SourceStep { to, cut }
    }

    /// The source of `worker` has read everything (or stopped), and is at
    /// `from`; `follow` is where the sources still reading are (their
    /// slowest watermark), if any. Checkpoints go on until every source
    /// has finished: the source follows the others, crosses each cut as
    /// it comes (its part stays what it was), and ends with the last
    /// checkpoint, which starts once all have finished.
    pub fn finished_source_moves(
        &self,
        worker: usize,
        from: i64,
        follow: Option<i64>,
    ) -> SourceStep {
        let to = {
            let mut inner = self.lock();
            inner.finished.insert(worker);
            if let Some(process) = self.process
                && inner.finished.len() >= self.sources
                && !inner.final_asked
            {
                inner.final_asked = true;
                inner.outbox.push(Addressed {
                    to: 0,
                    control: Control::FinalWanted { process },
                });
            }
            let following = follow.unwrap_or(from).max(from);
            match inner.in_progress.as_ref().map(|progress| progress.time) {
                Some(FINAL) => FINAL,
                Some(cut) if from < cut => cut.max(following),
                _ => following,
            }
        };
        self.source_moves(worker, from, to)
    }

    /// Starts the checkpoint of a process alone when one is due: the
    /// last one once `all_finished`.
    fn start_when_due(inner: &mut Inner, interval: Duration, from: i64, all_finished: bool) {
        if inner.in_progress.is_some() {
            return;
        }
        if !all_finished && inner.last_started.elapsed() < interval {
            return;
        }
        if inner.committed.is_some_and(|(_, time)| time == FINAL) {
            return;
        }
        // Above every source's time, so that each crosses it later, this
        // one included.
        let time = if all_finished {
            FINAL
        } else {
            inner
                .sources
                .values()
                .copied()
                .max()
                .unwrap_or(from)
                .saturating_add(1)
        };
        let id = inner.next_id;
        inner.next_id += 1;
        inner.last_started = Instant::now();
        inner.in_progress = Some(InProgress::new(id, time));
    }

    /// In a cluster: takes a message from another process (or this one's
    /// leader); see [`super::agreement`].
    pub fn receive(&self, control: Control) {
        let mut inner = self.lock();
        let process = self.process.unwrap_or(0);
        match control {
            Control::Freeze { id } => {
                inner.frozen = Some(id);
                let time = inner.sources.values().copied().max().unwrap_or(i64::MIN);
                inner.outbox.push(Addressed {
                    to: 0,
                    control: Control::Frozen { id, process, time },
                });
            }
            Control::Cut { id, time } => {
                inner.in_progress = Some(InProgress::new(id, time));
                inner.outbox.push(Addressed {
                    to: 0,
                    control: Control::CutKnown { id, process },
                });
            }
            Control::Resume { id } => {
                if inner.frozen == Some(id) {
                    inner.frozen = None;
                }
            }
            Control::Committed { id, time, bytes } => {
                let Some(progress) = inner.in_progress.take_if(|progress| progress.id == id) else {
                    return;
                };
                if let Err(error) = self.publish(&mut inner, progress, bytes) {
                    self.fail(error);
                }
                debug_assert_eq!(inner.committed, Some((id, time)));
            }
            to_leader => {
                let Some(leader) = inner.leader.as_mut() else {
                    return;
                };
                let step = leader.receive(to_leader);
                self.follow(&mut inner, step);
            }
        }
    }

    /// In a cluster: lets the leader start a checkpoint that is due, and
    /// returns the messages to send.
    pub fn take_messages(&self) -> Vec<Addressed> {
        let mut inner = self.lock();
        if let Some(leader) = inner.leader.as_mut() {
            let step = leader.tick(Instant::now());
            self.follow(&mut inner, step);
        }
        std::mem::take(&mut inner.outbox)
    }

    /// Whether the checkpoint at the end of time has committed.
    pub fn final_committed(&self) -> bool {
        self.lock().committed.is_some_and(|(_, time)| time == FINAL)
    }

    /// Gives the checkpoints the model versions whose schedule they keep.
    pub fn keep_schedule_of(&self, models: Arc<crate::models::ModelVersions>) {
        *self
            .models
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(models);
    }

    /// `receipts` and, when the run has promotable model versions, the
    /// receipt of the schedule's part, written now: a restore then scores
    /// the rows after the checkpoint as this run did, even from a registry
    /// whose record lost promotions.
    fn with_schedule(&self, id: u64, mut receipts: Vec<PartReceipt>) -> Result<Vec<PartReceipt>> {
        let schedule = self
            .models
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .and_then(|models| models.schedule_to_keep());
        if let Some(bytes) = schedule {
            receipts.push(
                self.store
                    .write_part(id, crate::models::SCHEDULE_PART, &bytes)?,
            );
        }
        Ok(receipts)
    }

    /// Does what the leader's step says.
    fn follow(&self, inner: &mut Inner, step: Step) {
        match step {
            Step::Wait => {}
            Step::Send(messages) => inner.outbox.extend(messages),
            Step::Commit { id, time, receipts } => {
                let bytes = receipts.iter().map(|receipt| receipt.bytes).sum();
                let committed = self
                    .with_schedule(id, receipts)
                    .and_then(|receipts| self.store.commit(id, receipts));
                if let Err(error) = committed {
                    self.fail(error);
                    return;
                }
                if let Some(leader) = inner.leader.as_mut() {
                    let step = leader.committed(id, time, bytes);
                    self.follow(inner, step);
                }
            }
        }
    }

    /// The checkpoint in progress, if any.
    pub fn in_progress(&self) -> Option<Cut> {
        self.lock().in_progress.as_ref().map(|progress| Cut {
            id: progress.id,
            time: progress.time,
        })
    }

    /// Records a source's positions in checkpoint `id` (partition, next
    /// offset), to commit to the consumer group once it commits.
    pub fn report_positions(&self, id: u64, positions: &[(u32, u64)]) {
        if let Some(progress) = self
            .lock()
            .in_progress
            .as_mut()
            .filter(|progress| progress.id == id)
        {
            progress.positions.extend_from_slice(positions);
        }
    }

    /// Waits until the checkpoint at the end of time has committed (or
    /// the writer has failed, which [`Coordinator::finish`] reports): a
    /// finished run then commits the final positions to its consumer
    /// group.
    pub fn wait_for_final(&self) {
        loop {
            if self.failed.load(std::sync::atomic::Ordering::SeqCst)
                || self.lock().committed.is_some_and(|(_, time)| time == FINAL)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The positions of `partitions` in the newest committed checkpoint.
    pub fn committed_positions(&self, partitions: &[u32]) -> Vec<(u32, u64)> {
        let inner = self.lock();
        partitions
            .iter()
            .filter_map(|partition| {
                let offset = inner.committed_positions.get(partition)?;
                Some((*partition, *offset))
            })
            .collect()
    }

    /// Whether the writer thread has failed: nothing more will be
    /// stored.
    pub fn has_failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Hands an operator's part of checkpoint `id` to the writer thread,
    /// whole, with the files it closed for the checkpoint's epoch; the
    /// last part commits the checkpoint and publishes every file.
    /// `change`: the part holds only what changed since the operator's
    /// part of the checkpoint before.
    pub fn report(
        &self,
        id: u64,
        name: &str,
        (bytes, change): (Vec<u8>, bool),
        files: Vec<EpochFile>,
    ) -> Result<()> {
        let pieces = self.begin_part(id, name, (files, change), None)?;
        for piece in [Piece::Bytes(bytes), Piece::End] {
            if pieces.send(piece).is_err() {
                return Err(self.writer_stopped());
            }
        }
        Ok(())
    }

    /// Starts an operator's part of checkpoint `id` (see
    /// [`Coordinator::report`]): its bytes go to the returned sender as
    /// they are encoded, then [`Piece::End`]; the writer hands each chunk
    /// back to `returns` once stored.
    pub fn begin_part(
        &self,
        id: u64,
        name: &str,
        (files, change): (Vec<EpochFile>, bool),
        returns: Option<Sender<Vec<u8>>>,
    ) -> Result<Sender<Piece>> {
        let (pieces_in, pieces) = channel();
        let part = Part {
            id,
            name: name.to_owned(),
            pieces,
            returns,
            files,
            change,
        };
        match lock(&self.writer).as_ref() {
            Some((parts_in, _)) if parts_in.send(part).is_ok() => Ok(pieces_in),
            _ => Err(self.writer_stopped()),
        }
    }

    /// The error of a part the writer thread can no longer take.
    pub fn writer_stopped(&self) -> Error {
        Error::Checkpoint {
            location: self.store.describe(),
            message: "the checkpoint writer has stopped".into(),
        }
    }

    /// Stores a part; the last of its checkpoint commits it.
    fn store_part(&self, part: Part) -> Result<()> {
        let Part {
            id,
            name,
            pieces,
            returns,
            files,
            change,
        } = part;
        let mut writer = self.store.create_part(id, &name)?;
        loop {
            match pieces.recv() {
                Ok(Piece::Bytes(bytes)) => {
                    writer.write(&bytes)?;
                    if let Some(returns) = &returns {
                        // An operator gone takes no chunks back.
                        let _ = returns.send(bytes);
                    }
                }
                Ok(Piece::End) => break,
                Err(_) => {
                    return Err(Error::Checkpoint {
                        location: self.store.describe(),
                        message: format!(
                            "the operator of part '{name}' of checkpoint {id} stopped before the part was whole"
                        ),
                    });
                }
            }
        }
        let mut receipt = writer.finish()?;
        receipt.base = self.chain(&receipt, id, change)?;
        let mut inner = self.lock();
        let Some(progress) = inner
            .in_progress
            .as_mut()
            .filter(|progress| progress.id == id)
        else {
            return Ok(());
        };
        progress.receipts.push(receipt);
        progress.files.extend(files);
        if progress.receipts.len() < self.parts {
            return Ok(());
        }
        if let Some(process) = self.process {
            // The leader writes the manifest; the files wait for its word.
            let control = Control::Stored {
                id,
                process,
                receipts: progress.receipts.clone(),
            };
            inner.outbox.push(Addressed { to: 0, control });
            return Ok(());
        }
        let progress = inner.in_progress.take().expect("checked above");
        let bytes = progress.receipts.iter().map(|receipt| receipt.bytes).sum();
        let receipts = self.with_schedule(progress.id, progress.receipts.clone())?;
        self.store.commit(progress.id, receipts)?;
        self.publish(&mut inner, progress, bytes)
    }

    /// What the part of `receipt`, stored for checkpoint `id`, builds on:
    /// nothing when whole; for a change, the same part's last whole one
    /// and the changes since (all of checkpoints committed before this
    /// one starts, which one checkpoint at a time ensures).
    fn chain(&self, receipt: &PartReceipt, id: u64, change: bool) -> Result<Vec<PartLink>> {
        let mut chains = lock(&self.chains);
        let link = receipt.link(id);
        if !change {
            chains.insert(receipt.name.clone(), vec![link]);
            return Ok(Vec::new());
        }
        let Some(chain) = chains.get_mut(&receipt.name) else {
            return Err(Error::Checkpoint {
                location: self.store.describe(),
                message: format!(
                    "part '{}' of checkpoint {id} holds changes, but no whole part came before it",
                    receipt.name
                ),
            });
        };
        let base = chain.clone();
        chain.push(link);
        Ok(base)
    }

    /// A checkpoint has committed: publishes the files of its epoch and
    /// records its positions, for the consumer group.
    fn publish(&self, inner: &mut Inner, progress: InProgress, bytes: u64) -> Result<()> {
        for file in &progress.files {
            file.publish().map_err(|error| crate::Error::Checkpoint {
                location: file.pending.display().to_string(),
                message: format!("cannot publish as {}: {error}", file.published.display()),
            })?;
        }
        inner.committed = Some((progress.id, progress.time));
        inner.committed_positions.extend(progress.positions);
        self.metrics
            .checkpoint_committed(progress.id, progress.started.elapsed(), bytes);
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
