//! What the stateful operators of a checkpointed run share: holding back
//! input at or past the cut in progress, and cutting once their input
//! frontier has passed it (see [`crate::checkpoint::coordinator`]).

use crate::Result;
use crate::checkpoint::{Coordinator, Cut, EpochFile, PartBytes};
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
}

impl CutTracker {
    /// The tracker of the operator whose parts are named `part`; it does
    /// nothing in a run without checkpoints.
    pub fn new(shared: &Shared, part: String) -> Self {
        CutTracker {
            coordinator: shared.checkpoints.clone(),
            part,
            done: 0,
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

    /// Reports the operator's part of `cut`: its state's bytes and the
    /// files it closed for the cut's epoch.
    pub fn report(&mut self, cut: Cut, bytes: PartBytes, files: Vec<EpochFile>) -> Result<()> {
        self.done = cut.id;
        match &self.coordinator {
            Some(coordinator) => coordinator.report(cut.id, &self.part, bytes, files),
            None => Ok(()),
        }
    }
}
