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
//! renames the epoch's files into place. Workers only encode their state. One checkpoint is in progress at a time; the next starts once
//! `interval` has passed. When a source has read everything, it announces
//! a last checkpoint at the end of time (`T = i64::MAX`), which each
//! operator takes when its input ends: a finished run's checkpoint holds
//! its final positions, so running it again reads nothing and writes
//! nothing.

use super::store::{CheckpointStore, PartReceipt};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{Sender, channel};
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
    metrics: Arc<crate::metrics::Metrics>,
    /// Parts on their way to the writer thread, and the thread.
    writer: Mutex<Option<(Sender<Part>, JoinHandle<()>)>>,
    /// The first failure of the writer thread.
    failure: Mutex<Option<Error>>,
    /// Whether the writer thread has failed (the failure itself may have
    /// been taken).
    failed: std::sync::atomic::AtomicBool,
    interval: Duration,
    /// Parts each checkpoint has: one per stateful operator of each worker.
    parts: usize,
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

/// An operator's part of a checkpoint, for the writer thread.
#[derive(Debug)]
struct Part {
    id: u64,
    name: String,
    bytes: PartBytes,
    files: Vec<EpochFile>,
}

/// A part's bytes: encoded already, or encoded by the writer thread from
/// a copy of the state (a copy takes a worker a third of the time the
/// bytes would: see `benches/state.rs`).
pub enum PartBytes {
    /// The bytes themselves.
    Encoded(Vec<u8>),
    /// What makes them.
    Deferred(Box<dyn FnOnce() -> Vec<u8> + Send>),
}

impl std::fmt::Debug for PartBytes {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartBytes::Encoded(bytes) => write!(formatter, "Encoded({} bytes)", bytes.len()),
            PartBytes::Deferred(_) => formatter.write_str("Deferred"),
        }
    }
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
    /// Checkpoints into `store` every `interval`, each with `parts` parts,
    /// numbered after `last_id` (the newest in the store, or 0), recording
    /// each commit in `metrics`; starts the writer thread.
    pub fn start(
        store: CheckpointStore,
        interval: Duration,
        parts: usize,
        last_id: u64,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let coordinator = Arc::new(Coordinator {
            store,
            metrics,
            writer: Mutex::new(None),
            failure: Mutex::new(None),
            failed: std::sync::atomic::AtomicBool::new(false),
            interval,
            parts,
            inner: Mutex::new(Inner {
                next_id: last_id + 1,
                sources: BTreeMap::new(),
                in_progress: None,
                last_started: Instant::now(),
                committed: None,
                committed_positions: BTreeMap::new(),
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

    /// The source of `worker` moves from `from` to `to` (`FINAL` when it
    /// has read everything): returns the checkpoint it crosses, which it
    /// must cut now, with its state as it is. Starts a checkpoint when one
    /// is due: every `interval`, and the final one once a source has read
    /// everything.
    pub fn source_moves(&self, worker: usize, from: i64, to: i64) -> Option<Cut> {
        let mut inner = self.lock();
        inner.sources.insert(worker, to);
        if inner.in_progress.is_none() {
            let due = inner.last_started.elapsed() >= self.interval;
            let finishing = to == FINAL;
            if due || finishing {
                // Above every source's time, so that each crosses it
                // later, this one included.
                let time = if finishing {
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
                let already_final = inner.committed.is_some_and(|(_, time)| time == FINAL);
                if !already_final {
                    let id = inner.next_id;
                    inner.next_id += 1;
                    inner.last_started = Instant::now();
                    inner.in_progress = Some(InProgress {
                        id,
                        time,
                        started: Instant::now(),
                        receipts: Vec::new(),
                        files: Vec::new(),
                        positions: Vec::new(),
                    });
                }
            }
        }
        let cut = inner.in_progress.as_ref().map(|progress| Cut {
            id: progress.id,
            time: progress.time,
        })?;
        (from < cut.time && to >= cut.time).then_some(cut)
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

    /// Hands an operator's part of checkpoint `id` to the writer thread,
    /// with the files it closed for the checkpoint's epoch; the last part
    /// commits the checkpoint and publishes every file.
    pub fn report(
        &self,
        id: u64,
        name: &str,
        bytes: PartBytes,
        files: Vec<EpochFile>,
    ) -> Result<()> {
        let part = Part {
            id,
            name: name.to_owned(),
            bytes,
            files,
        };
        match lock(&self.writer).as_ref() {
            Some((parts_in, _)) if parts_in.send(part).is_ok() => Ok(()),
            _ => Err(Error::Checkpoint {
                location: self.store.describe(),
                message: "the checkpoint writer has stopped".into(),
            }),
        }
    }

    /// Stores a part; the last of its checkpoint commits it.
    fn store_part(&self, part: Part) -> Result<()> {
        let Part {
            id,
            name,
            bytes,
            files,
        } = part;
        let bytes = match bytes {
            PartBytes::Encoded(bytes) => bytes,
            PartBytes::Deferred(encode) => encode(),
        };
        let receipt = self.store.write_part(id, &name, &bytes)?;
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
        let progress = inner.in_progress.take().expect("checked above");
        let bytes = progress.receipts.iter().map(|receipt| receipt.bytes).sum();
        self.store.commit(progress.id, progress.receipts)?;
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
