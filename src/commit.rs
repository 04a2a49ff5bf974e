//! Committing source progress: a Kafka source's offsets are committed only
//! once every sink has made the outputs up to them durable.
//!
//! The source records, for each batch it emits at dataflow time `t`, the
//! next offset of each partition it read ("checkpoints"). The sinks hold
//! back a probe until their outputs before `t` are synced or acknowledged;
//! once the probe passes `t`, the checkpoint is durable. Dead letters are
//! written by the source itself, so they are flushed right before a commit.
//! After a crash, a restart from the committed offsets re-reads at most
//! what was read after them: some rows are produced again, none is lost.

use crate::Result;
use crate::sinks::DeadLetterWriter;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tideflow_connectors::kafka::OffsetCommitter;

/// The offsets one worker has read, made durable, and committed.
#[derive(Debug)]
pub struct OffsetLedger {
    committer: OffsetCommitter,
    dead_letters: Rc<RefCell<DeadLetterWriter>>,
    /// (dataflow time, next offset per partition), oldest first.
    checkpoints: VecDeque<(i64, Vec<(u32, u64)>)>,
    durable: BTreeMap<u32, u64>,
    committed: BTreeMap<u32, u64>,
    interval: Duration,
    last_commit: Instant,
}

impl OffsetLedger {
    /// A ledger committing through `committer` at most every `interval`.
    pub fn new(
        committer: OffsetCommitter,
        dead_letters: Rc<RefCell<DeadLetterWriter>>,
        interval: Duration,
    ) -> Self {
        OffsetLedger {
            committer,
            dead_letters,
            checkpoints: VecDeque::new(),
            durable: BTreeMap::new(),
            committed: BTreeMap::new(),
            interval,
            last_commit: Instant::now(),
        }
    }

    /// Records that everything up to these offsets was emitted at `time`.
    pub fn checkpoint(&mut self, time: i64, offsets: Vec<(u32, u64)>) {
        if offsets.is_empty() {
            return;
        }
        match self.checkpoints.back_mut() {
            Some((last, pending)) if *last == time => {
                for (partition, offset) in offsets {
                    match pending.iter_mut().find(|(seen, _)| *seen == partition) {
                        Some(entry) => entry.1 = offset,
                        None => pending.push((partition, offset)),
                    }
                }
            }
            _ => self.checkpoints.push_back((time, offsets)),
        }
    }

    /// Marks durable every checkpoint before `frontier` (all of them when
    /// the outputs are complete: `None`).
    pub fn outputs_durable_before(&mut self, frontier: Option<i64>) {
        while let Some((time, _)) = self.checkpoints.front() {
            if frontier.is_some_and(|frontier| *time >= frontier) {
                break;
            }
            let (_, offsets) = self.checkpoints.pop_front().expect("front exists");
            self.durable.extend(offsets);
        }
    }

    /// Marks durable the positions of a committed checkpoint (a
    /// checkpointed run commits the offsets its checkpoints restore from,
    /// so that lag tools see what a restart would read).
    pub fn checkpoint_committed(&mut self, positions: &[(u32, u64)]) {
        self.durable.extend(positions.iter().copied());
    }

    /// Whether every durable offset has been committed.
    pub fn is_up_to_date(&self) -> bool {
        self.durable == self.committed
    }

    /// Commits the durable offsets if `interval` has passed since the last
    /// commit, or now when `force`d (at the end of a run).
    pub fn commit(&mut self, force: bool) -> Result<()> {
        if self.durable == self.committed || (!force && self.last_commit.elapsed() < self.interval)
        {
            return Ok(());
        }
        self.dead_letters.borrow_mut().finish()?;
        let changed: Vec<(u32, u64)> = self
            .durable
            .iter()
            .filter(|(partition, offset)| self.committed.get(partition) != Some(offset))
            .map(|(partition, offset)| (*partition, *offset))
            .collect();
        self.committer.commit(&changed)?;
        self.committed.clone_from(&self.durable);
        self.last_commit = Instant::now();
        Ok(())
    }
}
