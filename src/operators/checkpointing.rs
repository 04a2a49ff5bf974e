//! What the stateful operators of a checkpointed run share: holding back
//! input at or past the cut in progress, and cutting once their input
//! frontier has passed it (see [`crate::checkpoint::coordinator`]).

use crate::Result;
use crate::checkpoint::{Coordinator, Cut, EpochFile};
use crate::run::Shared;
use std::sync::Arc;

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

    /// Reports the operator's part of `cut`: its state, encoded now, and
    /// the files it closed for the cut's epoch. Returns the part's bytes.
    pub fn report<T: serde::Serialize>(
        &mut self,
        cut: Cut,
        state: &T,
        files: Vec<EpochFile>,
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
        coordinator.report(cut.id, &self.part, bytes, files)?;
        Ok(self.part_bytes)
    }
}
