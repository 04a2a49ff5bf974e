//! What the stateful operators of a checkpointed run share: holding back
//! input at or past the cut in progress, cutting once their input
//! frontier has passed it (see [`crate::checkpoint::coordinator`]), and
//! choosing between a whole part and one of changes.

use crate::Result;
use crate::checkpoint::{Coordinator, Cut, EpochFile};
use crate::run::Shared;
use std::sync::Arc;

/// Parts of changes that build on one whole part, at most: a restore
/// reads each of them.
const MOST_CHANGES_ON_A_WHOLE_PART: usize = 32;

/// One operator's view of the checkpoints: which it has cut.
#[derive(Debug)]
pub struct CutTracker {
    coordinator: Option<Arc<Coordinator>>,
    /// The operator's part name in every checkpoint.
    part: String,
    /// The id of the newest checkpoint the operator has cut.
    done: u64,
    /// The size of its last part.
    part_bytes: usize,
    /// Its parts since its last whole one (`None` before the first).
    chain: Option<Chain>,
}

/// An operator's last whole part and the parts of changes since.
#[derive(Clone, Copy, Debug)]
struct Chain {
    whole_bytes: usize,
    changes_bytes: usize,
    changes: usize,
}

impl CutTracker {
    /// The tracker of the operator whose parts are named `part`; it does
    /// nothing in a run without checkpoints.
    pub fn new(shared: &Shared, part: String) -> Self {
        CutTracker {
            coordinator: shared.checkpoints.clone(),
            part,
            done: 0,
            part_bytes: 0,
            chain: None,
        }
    }

    /// The checkpoint in progress that this operator has yet to cut.
    fn pending(&self) -> Option<Cut> {
        self.coordinator
            .as_ref()?
            .in_progress()
            .filter(|cut| cut.id > self.done)
    }

    /// The time of the cut in progress that this operator has yet to take.
    pub fn pending_time(&self) -> Option<i64> {
        self.pending().map(|cut| cut.time)
    }

    /// Whether input at `time` must wait until the operator has cut: it
    /// belongs after the cut in progress.
    pub fn holds_back(&self, time: i64) -> bool {
        self.pending().is_some_and(|cut| time >= cut.time)
    }

    /// Takes out of `held_back` (in order) what no cut in progress holds
    /// back any more, once the operator has cut; the rest stays.
    pub fn release<T>(&self, held_back: &mut Vec<T>, time: impl Fn(&T) -> i64) -> Vec<T> {
        let (kept, released) = std::mem::take(held_back)
            .into_iter()
            .partition(|item| self.holds_back(time(item)));
        *held_back = kept;
        released
    }

    /// The cut to take now: one in progress, not yet taken, with the input
    /// frontier past its time (an empty frontier is past every time).
    pub fn due(&self, frontier: &[i64]) -> Option<Cut> {
        self.pending()
            .filter(|cut| frontier.iter().all(|time| *time >= cut.time))
    }

    /// Whether the operator's next part should be whole rather than its
    /// changes, when its state holds `growth` bytes more than at its last
    /// whole part: the first part of a run, after many changes, and once
    /// a restore would read more than twice what a whole part takes now
    /// (state that only grows, as in a backfill over long windows, never
    /// reaches that: its changes add up to what it gained).
    pub fn wants_whole(&self, growth: i64) -> bool {
        self.chain.is_none_or(|chain| {
            chain.changes >= MOST_CHANGES_ON_A_WHOLE_PART
                || chain.changes_bytes as i64 > chain.whole_bytes as i64 + 2 * growth
        })
    }

    /// What a whole part of the operator would take now, when its state
    /// holds `growth` bytes more than at its last whole part.
    pub fn estimated_whole_bytes(&self, growth: i64) -> usize {
        self.chain.map_or(self.part_bytes, |chain| {
            (chain.whole_bytes as i64 + growth).max(0) as usize
        })
    }

    /// Reports the operator's part of `cut`: its state, encoded now, and
    /// the files it closed for the cut's epoch. Returns the part's bytes.
    pub fn report<T: serde::Serialize>(
        &mut self,
        cut: Cut,
        state: &T,
        files: Vec<EpochFile>,
    ) -> Result<usize> {
        let bytes = self.send(cut, state, files, false)?;
        self.chain = Some(Chain {
            whole_bytes: bytes,
            changes_bytes: 0,
            changes: 0,
        });
        Ok(bytes)
    }

    /// Reports the operator's part of `cut` as what its state changed
    /// since its last part (`changes`, encoded now), which must come after
    /// a whole one ([`CutTracker::wants_whole`]). Returns the part's bytes.
    pub fn report_changes<T: serde::Serialize>(&mut self, cut: Cut, changes: &T) -> Result<usize> {
        let bytes = self.send(cut, changes, Vec::new(), true)?;
        if let Some(chain) = &mut self.chain {
            chain.changes_bytes += bytes;
            chain.changes += 1;
        }
        Ok(bytes)
    }

    fn send<T: serde::Serialize>(
        &mut self,
        cut: Cut,
        state: &T,
        files: Vec<EpochFile>,
        change: bool,
    ) -> Result<usize> {
        self.done = cut.id;
        let Some(coordinator) = &self.coordinator else {
            return Ok(0);
        };
        // Sized first (a walk that writes nothing; a ring adds its length
        // in one step), so that the buffer is allocated once.
        let expected = postcard::experimental::serialized_size(state).unwrap_or(self.part_bytes);
        let bytes = crate::checkpoint::encode_into(state, coordinator.buffer(expected));
        self.part_bytes = bytes.len();
        coordinator.report(cut.id, &self.part, (bytes, change), files)?;
        Ok(self.part_bytes)
    }
}
