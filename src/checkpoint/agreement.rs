//! How the processes of a cluster agree on each checkpoint: its id, its
//! cut time, and when every part of it is stored.
//!
//! A checkpoint's cut time `T` must be above the time of every source in
//! the cluster, and no data at `T` or later may reach an operator that
//! does not yet know the cut. Process 0 leads, in four steps:
//!
//! 1. **Freeze.** When a checkpoint is due, the leader asks every process
//!    to hold its sources' times where they are. A held source keeps
//!    reading and emitting, at its current time, so the data flows on;
//!    only the times stand still. Each process answers with the greatest
//!    time of its sources.
//! 2. **Cut.** The leader announces `T`, one above the greatest answer.
//!    Each process records the cut and answers.
//! 3. **Resume.** Once every process knows the cut, the leader lets the
//!    sources move again. Each crosses `T` later, when it cuts, exactly as
//!    in a single process; data at `T` or later exists only from then on.
//! 4. **Commit.** Each process stores its parts and sends the leader their
//!    receipts. With every process's, the leader writes the manifest and
//!    announces the commit; each process then publishes the files of its
//!    epoch and commits its sources' offsets.
//!
//! The last checkpoint, at the end of time, needs no freeze: no source is
//! ever past it. A process whose sources have all finished asks for it,
//! and the leader announces it once every process has and no other
//! checkpoint is under way.
//!
//! [`Leader`] is the leader's side as a plain state machine; the messages
//! travel in a side dataflow of their own (`cluster::CheckpointControl`).

use super::coordinator::FINAL;
use super::store::PartReceipt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A message between the processes about a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Leader to all: checkpoint `id` is due; hold your sources' times.
    Freeze {
        /// The checkpoint.
        id: u64,
    },
    /// To the leader: `process` holds its sources at or below `time`.
    Frozen {
        /// The checkpoint.
        id: u64,
        /// The process answering.
        process: usize,
        /// The greatest time of its sources.
        time: i64,
    },
    /// Leader to all: checkpoint `id` cuts at `time`.
    Cut {
        /// The checkpoint.
        id: u64,
        /// Its cut time.
        time: i64,
    },
    /// To the leader: `process` knows the cut of checkpoint `id`.
    CutKnown {
        /// The checkpoint.
        id: u64,
        /// The process answering.
        process: usize,
    },
    /// Leader to all: every process knows the cut; sources move again.
    Resume {
        /// The checkpoint.
        id: u64,
    },
    /// To the leader: every source of `process` has finished (or
    /// stopped); once every process's has, the checkpoint at the end of
    /// time is taken.
    FinalWanted {
        /// The process.
        process: usize,
    },
    /// To the leader: `process` stored its parts of checkpoint `id`.
    Stored {
        /// The checkpoint.
        id: u64,
        /// The process.
        process: usize,
        /// Its parts, for the manifest.
        receipts: Vec<PartReceipt>,
    },
    /// Leader to all: checkpoint `id` at `time` has committed, `bytes`
    /// in all.
    Committed {
        /// The checkpoint.
        id: u64,
        /// Its cut time.
        time: i64,
        /// The bytes of all its parts.
        bytes: u64,
    },
}

/// A message and the process it goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressed {
    /// The receiving process.
    pub to: usize,
    /// The message.
    pub control: Control,
}

/// What the leader does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    Wait,
    /// Send these messages.
    Send(Vec<Addressed>),
    /// Every part of checkpoint `id` (at `time`) is stored: write the
    /// manifest with these receipts, then call [`Leader::committed`].
    Commit {
        /// The checkpoint.
        id: u64,
        /// Its cut time.
        time: i64,
        /// Every process's parts.
        receipts: Vec<PartReceipt>,
    },
}

/// The checkpoint the leader is taking.
#[derive(Debug)]
struct Round {
    id: u64,
    /// The cut time, once every process has answered the freeze.
    time: Option<i64>,
    frozen: BTreeMap<usize, i64>,
    knowing: BTreeSet<usize>,
    stored: BTreeMap<usize, Vec<PartReceipt>>,
}

/// The leader's side of the agreement (process 0's).
#[derive(Debug)]
pub struct Leader {
    processes: usize,
    interval: Duration,
    next_id: u64,
    round: Option<Round>,
    last_started: Instant,
    /// The processes whose sources have all finished.
    finished: BTreeSet<usize>,
    final_committed: bool,
}

impl Leader {
    /// Leads `processes` processes to a checkpoint every `interval`,
    /// numbered after `last_id`.
    pub fn new(processes: usize, interval: Duration, last_id: u64) -> Self {
        Leader {
            processes,
            interval,
            next_id: last_id + 1,
            round: None,
            last_started: Instant::now(),
            finished: BTreeSet::new(),
            final_committed: false,
        }
    }

    /// Whether the checkpoint at the end of time has committed: nothing
    /// follows it.
    pub fn is_done(&self) -> bool {
        self.final_committed
    }

    /// Starts a checkpoint when one is due and none is under way.
    pub fn tick(&mut self, now: Instant) -> Step {
        if self.round.is_some() || self.final_committed {
            return Step::Wait;
        }
        let id = self.next_id;
        if self.finished.len() == self.processes {
            self.next_id += 1;
            self.last_started = now;
            self.round = Some(Round::new(id, Some(FINAL)));
            return self.to_all(Control::Cut { id, time: FINAL });
        }
        if now.saturating_duration_since(self.last_started) < self.interval {
            return Step::Wait;
        }
        self.next_id += 1;
        self.last_started = now;
        self.round = Some(Round::new(id, None));
        self.to_all(Control::Freeze { id })
    }

    /// Takes a message sent to the leader.
    pub fn receive(&mut self, control: Control) -> Step {
        if let Control::FinalWanted { process } = control {
            self.finished.insert(process);
            return Step::Wait;
        }
        let processes = self.processes;
        let Some(round) = self.round.as_mut() else {
            return Step::Wait;
        };
        match control {
            Control::Frozen { id, process, time } if id == round.id => {
                round.frozen.insert(process, time);
                if round.frozen.len() < processes {
                    return Step::Wait;
                }
                let greatest = round.frozen.values().copied().max().unwrap_or(i64::MIN);
                let time = greatest.saturating_add(1);
                round.time = Some(time);
                self.to_all(Control::Cut { id, time })
            }
            Control::CutKnown { id, process } if id == round.id => {
                round.knowing.insert(process);
                if round.knowing.len() < processes {
                    return Step::Wait;
                }
                self.to_all(Control::Resume { id })
            }
            Control::Stored {
                id,
                process,
                receipts,
            } if id == round.id => {
                round.stored.insert(process, receipts);
                if round.stored.len() < processes {
                    return Step::Wait;
                }
                Step::Commit {
                    id,
                    time: round.time.unwrap_or(FINAL),
                    receipts: round.stored.values().flatten().cloned().collect(),
                }
            }
            _ => Step::Wait,
        }
    }

    /// The manifest of checkpoint `id` is written: announces the commit.
    pub fn committed(&mut self, id: u64, time: i64, bytes: u64) -> Step {
        if self.round.as_ref().is_some_and(|round| round.id == id) {
            self.round = None;
        }
        if time == FINAL {
            self.final_committed = true;
        }
        self.to_all(Control::Committed { id, time, bytes })
    }

    fn to_all(&self, control: Control) -> Step {
        Step::Send(
            (0..self.processes)
                .map(|to| Addressed {
                    to,
                    control: control.clone(),
                })
                .collect(),
        )
    }
}

impl Round {
    fn new(id: u64, time: Option<i64>) -> Self {
        Round {
            id,
            time,
            frozen: BTreeMap::new(),
            knowing: BTreeSet::new(),
            stored: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(step: Step) -> Vec<Addressed> {
        match step {
            Step::Send(messages) => messages,
            other => panic!("expected messages, got {other:?}"),
        }
    }

    fn receipt(name: &str) -> PartReceipt {
        PartReceipt {
            name: name.into(),
            bytes: 10,
            crc32: 1,
            base: Vec::new(),
        }
    }

    #[test]
    fn a_checkpoint_cuts_above_every_process_and_resumes_once_all_know() {
        let mut leader = Leader::new(2, Duration::from_secs(1), 6);
        let start = Instant::now();
        assert_eq!(leader.tick(start), Step::Wait, "not due yet");
        let later = start + Duration::from_secs(1);
        let freeze = sent(leader.tick(later));
        assert_eq!(freeze.len(), 2);
        assert!(
            freeze
                .iter()
                .all(|message| message.control == Control::Freeze { id: 7 })
        );
        assert_eq!(leader.tick(later), Step::Wait, "one at a time");
        let frozen = |process, time| Control::Frozen {
            id: 7,
            process,
            time,
        };
        assert_eq!(leader.receive(frozen(1, 500)), Step::Wait);
        let cut = sent(leader.receive(frozen(0, 900)));
        assert_eq!(cut[1].control, Control::Cut { id: 7, time: 901 });
        let known = |process| Control::CutKnown { id: 7, process };
        assert_eq!(leader.receive(known(0)), Step::Wait);
        let resume = sent(leader.receive(known(1)));
        assert_eq!(resume[0].control, Control::Resume { id: 7 });
        let stored = |process, name| Control::Stored {
            id: 7,
            process,
            receipts: vec![receipt(name)],
        };
        assert_eq!(leader.receive(stored(1, "sink-w1")), Step::Wait);
        let Step::Commit { id, time, receipts } = leader.receive(stored(0, "sink-w0")) else {
            panic!("every part is stored")
        };
        assert_eq!((id, time, receipts.len()), (7, 901, 2));
        let committed = sent(leader.committed(7, 901, 20));
        assert_eq!(
            committed[0].control,
            Control::Committed {
                id: 7,
                time: 901,
                bytes: 20
            }
        );
        assert!(!leader.is_done());
    }

    /// Both processes answer checkpoint `id` (their sources at `time`)
    /// and store their parts; the leader commits it.
    fn answer_and_commit(leader: &mut Leader, id: u64, time: i64) {
        for process in 0..2 {
            leader.receive(Control::Frozen { id, process, time });
            leader.receive(Control::CutKnown { id, process });
            leader.receive(Control::Stored {
                id,
                process,
                receipts: vec![],
            });
        }
        sent(leader.committed(id, time + 1, 0));
    }

    #[test]
    fn the_last_checkpoint_waits_for_every_process_and_the_one_under_way_and_needs_no_freeze() {
        let start = Instant::now();
        let mut leader = Leader::new(2, Duration::ZERO, 0);
        sent(leader.tick(start));
        assert_eq!(
            leader.receive(Control::FinalWanted { process: 1 }),
            Step::Wait
        );
        assert_eq!(
            leader.receive(Control::FinalWanted { process: 1 }),
            Step::Wait
        );
        assert_eq!(leader.tick(start), Step::Wait, "checkpoint 1 is under way");
        answer_and_commit(&mut leader, 1, 10);
        assert!(
            matches!(
                sent(leader.tick(start))[0].control,
                Control::Freeze { id: 2 }
            ),
            "process 0 still reads: checkpoints go on"
        );
        answer_and_commit(&mut leader, 2, 20);
        assert_eq!(
            leader.receive(Control::FinalWanted { process: 0 }),
            Step::Wait
        );
        let cut = sent(leader.tick(start));
        assert_eq!(cut[0].control, Control::Cut { id: 3, time: FINAL });
        assert_eq!(
            leader.receive(Control::CutKnown { id: 3, process: 0 }),
            Step::Wait
        );
        sent(leader.receive(Control::CutKnown { id: 3, process: 1 }));
        sent(leader.committed(3, FINAL, 0));
        assert!(leader.is_done());
        assert_eq!(leader.tick(start + Duration::from_secs(9)), Step::Wait);
    }

    #[test]
    fn answers_about_another_checkpoint_are_ignored() {
        let mut leader = Leader::new(1, Duration::ZERO, 0);
        sent(leader.tick(Instant::now()));
        let stale = Control::Frozen {
            id: 9,
            process: 0,
            time: 5,
        };
        assert_eq!(leader.receive(stale), Step::Wait);
        let cut = sent(leader.receive(Control::Frozen {
            id: 1,
            process: 0,
            time: i64::MIN,
        }));
        assert_eq!(
            cut[0].control,
            Control::Cut {
                id: 1,
                time: i64::MIN + 1
            }
        );
    }
}
