//! Who runs a model: a session per worker, or one shared executor per
//! process that scores the batches of all its workers together.
//!
//! A shared executor is a thread that owns the process's one session. A
//! worker hands it a batch and waits for it back scored; the executor
//! takes the first batch, then gathers more until it holds `max_rows`
//! rows, every worker still running has handed one in, or `max_delay` has
//! passed since the first, and scores them as one batch. So a GPU sees
//! large batches while each worker's micro-batches stay small. Each row's
//! scores are what its own batch would give only for a model that scores
//! rows independently, which the dataflow checks before it shares one. A
//! batch that fails together is scored again alone, so that a bad batch
//! of one worker does not take the others' rows with it.

use super::Model;
use crate::batch::Batch;
use crate::plan::{ExecutorPlan, ModelPlan};
use crate::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

/// Scores a worker's batches: with its own session, or through the
/// process's shared executor.
#[derive(Debug)]
pub enum Scorer {
    /// The worker's own session.
    PerWorker(Box<Model>),
    /// The process's executor.
    Shared(ExecutorHandle),
}

impl Scorer {
    /// Scores the rows of `batch`, adding the model's output columns.
    pub fn score(&mut self, batch: &mut Batch) -> Result<()> {
        match self {
            Scorer::PerWorker(model) => model.score(batch),
            Scorer::Shared(handle) => handle.score(batch),
        }
    }

    /// The plan the model was opened for.
    pub fn plan(&self) -> &ModelPlan {
        match self {
            Scorer::PerWorker(model) => model.plan(),
            Scorer::Shared(handle) => &handle.plan,
        }
    }
}

/// A batch handed to the executor, and where its result goes.
struct Request {
    batch: Batch,
    reply: mpsc::Sender<(Batch, Result<()>)>,
}

/// The process's shared executor: hands out a handle per worker.
#[derive(Debug)]
pub struct SharedExecutor {
    requests: Mutex<mpsc::Sender<Request>>,
    /// Handles not yet dropped: the workers that may still hand in a batch.
    live: Arc<AtomicUsize>,
    plan: Arc<ModelPlan>,
}

impl SharedExecutor {
    /// Starts the executor thread with `model`.
    pub fn start(model: Model) -> Result<SharedExecutor> {
        let (requests, incoming) = mpsc::channel();
        let live = Arc::new(AtomicUsize::new(0));
        let plan = Arc::new(model.plan().clone());
        let limits = plan.executor;
        let serving = live.clone();
        std::thread::Builder::new()
            .name("tideflow-inference".into())
            .spawn(move || serve(model, &incoming, limits, &serving))
            .map_err(|error| {
                Error::Runtime(format!("cannot start the inference executor: {error}"))
            })?;
        Ok(SharedExecutor {
            requests: Mutex::new(requests),
            live,
            plan,
        })
    }

    /// A handle for one worker.
    pub fn handle(&self) -> ExecutorHandle {
        self.live.fetch_add(1, Ordering::SeqCst);
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let (reply, replies) = mpsc::channel();
        ExecutorHandle {
            requests,
            reply,
            replies,
            live: self.live.clone(),
            plan: self.plan.clone(),
        }
    }
}

/// A worker's way to the shared executor.
#[derive(Debug)]
pub struct ExecutorHandle {
    requests: mpsc::Sender<Request>,
    reply: mpsc::Sender<(Batch, Result<()>)>,
    replies: mpsc::Receiver<(Batch, Result<()>)>,
    live: Arc<AtomicUsize>,
    plan: Arc<ModelPlan>,
}

impl ExecutorHandle {
    /// Hands `batch` to the executor and waits for it back, scored.
    fn score(&mut self, batch: &mut Batch) -> Result<()> {
        let gone = || Error::Runtime("the inference executor has stopped".into());
        let request = Request {
            batch: std::mem::take(batch),
            reply: self.reply.clone(),
        };
        self.requests.send(request).map_err(|_| gone())?;
        let (scored, result) = self.replies.recv().map_err(|_| gone())?;
        *batch = scored;
        result
    }
}

impl Drop for ExecutorHandle {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The executor thread: gathers batches and scores them together, until
/// every handle and the executor itself are dropped.
fn serve(
    mut model: Model,
    incoming: &mpsc::Receiver<Request>,
    limits: ExecutorPlan,
    live: &AtomicUsize,
) {
    while let Ok(first) = incoming.recv() {
        let deadline = Instant::now() + limits.max_delay;
        let mut rows = first.batch.len();
        let mut pending = vec![first];
        // A worker waits for its batch, so at most one per live handle
        // can come: with all of them in, waiting longer gains nothing.
        while rows < limits.max_rows && pending.len() < live.load(Ordering::SeqCst) {
            let wait = deadline.saturating_duration_since(Instant::now());
            match incoming.recv_timeout(wait) {
                Ok(request) => {
                    rows += request.batch.len();
                    pending.push(request);
                }
                Err(_) => break,
            }
        }
        score_together(&mut model, pending);
    }
}

/// Scores the batches of `pending` as one and sends each back its rows;
/// if that fails, scores each alone.
fn score_together(model: &mut Model, mut pending: Vec<Request>) {
    if pending.len() == 1 {
        let Request { mut batch, reply } = pending.remove(0);
        let result = model.score(&mut batch);
        let _ = reply.send((batch, result));
        return;
    }
    let sizes: Vec<usize> = pending.iter().map(|request| request.batch.len()).collect();
    let mut together = Batch::default();
    together.reserve_rows(sizes.iter().sum());
    let replies: Vec<_> = pending
        .into_iter()
        .map(|request| {
            together.append(request.batch);
            request.reply
        })
        .collect();
    let result = model.score(&mut together);
    let mut parts = split_into(together, &sizes);
    for (reply, mut part) in replies.into_iter().zip(parts.drain(..)) {
        // The scores only fail as a whole: each part alone then gets the
        // result it would have had in its own worker.
        let part_result = match &result {
            Ok(()) => Ok(()),
            Err(_) => model.score(&mut part),
        };
        let _ = reply.send((part, part_result));
    }
}

/// `batch` cut into consecutive parts of `sizes` rows.
fn split_into(mut batch: Batch, sizes: &[usize]) -> Vec<Batch> {
    let mut parts: Vec<Batch> = Vec::with_capacity(sizes.len());
    for size in sizes.iter().rev() {
        let at = batch.len() - size;
        parts.push(batch.split_off(at));
    }
    parts.reverse();
    parts
}
