//! What the stateful operators of a checkpointed run share: holding back
//! input at or past the cut in progress, cutting once their input
//! frontier has passed it (see [`crate::checkpoint::coordinator`]), and
//! choosing between a whole part and one of changes, and encoding parts a
//! chunk at a time.

use crate::Result;
use crate::checkpoint::coordinator::Piece;
use crate::checkpoint::{Coordinator, Cut, EpochFile};
use crate::run::Shared;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

/// Parts of changes that build on one whole part, at most: a restore
/// reads each of them.
const MOST_CHANGES_ON_A_WHOLE_PART: usize = 32;

/// The size of the chunks an operator encodes its parts into.
const CHUNK_BYTES: usize = 4 << 20;

/// Chunks an operator keeps, at most: how far its encoding runs ahead of
/// the writer thread, which hands chunks back once stored. A part of
/// any size then takes this much memory (the first whole part of a large
/// state used to take a buffer of its size, in fresh pages), and an
/// operator waits only for parts larger than this.
const MOST_CHUNKS: usize = 8;

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
    chunks: ChunkPool,
}

/// The chunks an operator encodes into, and those the writer hands back.
#[derive(Debug)]
struct ChunkPool {
    free: Vec<Vec<u8>>,
    made: usize,
    returns: Sender<Vec<u8>>,
    returned: Receiver<Vec<u8>>,
}

impl ChunkPool {
    fn new() -> Self {
        let (returns, returned) = channel();
        ChunkPool {
            free: Vec::new(),
            made: 0,
            returns,
            returned,
        }
    }

    /// An empty chunk: a free one, a new one while fewer than
    /// [`MOST_CHUNKS`] exist, else the next the writer hands back (`None`
    /// once the writer has failed).
    fn take(&mut self, coordinator: &Coordinator) -> Option<Vec<u8>> {
        let mut chunk = match self.free.pop().or_else(|| self.returned.try_recv().ok()) {
            Some(chunk) => chunk,
            None if self.made < MOST_CHUNKS => {
                self.made += 1;
                Vec::with_capacity(CHUNK_BYTES)
            }
            None => loop {
                match self.returned.recv_timeout(Duration::from_millis(20)) {
                    Ok(chunk) => break chunk,
                    Err(RecvTimeoutError::Timeout) if !coordinator.has_failed() => {}
                    Err(_) => return None,
                }
            },
        };
        chunk.clear();
        Some(chunk)
    }
}

/// A postcard output that sends each full chunk to the writer thread and
/// goes on in another.
struct Chunked<'a> {
    chunk: Vec<u8>,
    pool: &'a mut ChunkPool,
    coordinator: &'a Coordinator,
    pieces: Sender<Piece>,
    bytes: usize,
}

impl Chunked<'_> {
    /// Sends the chunk, full, and takes an empty one.
    fn send(&mut self) -> postcard::Result<()> {
        let next = self
            .pool
            .take(self.coordinator)
            .ok_or(postcard::Error::SerializeBufferFull)?;
        let full = std::mem::replace(&mut self.chunk, next);
        self.bytes += full.len();
        self.pieces
            .send(Piece::Bytes(full))
            .map_err(|_| postcard::Error::SerializeBufferFull)
    }
}

impl postcard::ser_flavors::Flavor for Chunked<'_> {
    type Output = usize;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.chunk.len() == CHUNK_BYTES {
            self.send()?;
        }
        self.chunk.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, mut bytes: &[u8]) -> postcard::Result<()> {
        while !bytes.is_empty() {
            if self.chunk.len() == CHUNK_BYTES {
                self.send()?;
            }
            let room = (CHUNK_BYTES - self.chunk.len()).min(bytes.len());
            self.chunk.extend_from_slice(&bytes[..room]);
            bytes = &bytes[room..];
        }
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<usize> {
        let last = std::mem::take(&mut self.chunk);
        self.bytes += last.len();
        for piece in [Piece::Bytes(last), Piece::End] {
            self.pieces
                .send(piece)
                .map_err(|_| postcard::Error::SerializeBufferFull)?;
        }
        Ok(self.bytes)
    }
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
            chunks: ChunkPool::new(),
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

    /// What arrived at dataflow time `arrival`: held back while a cut in
    /// progress has yet to be taken at or before that time, else handed to
    /// `take` now.
    pub fn take_or_hold_back<T>(
        &self,
        (arrival, item): (i64, T),
        held_back: &mut Vec<(i64, T)>,
        take: impl FnOnce(T, i64),
    ) {
        if self.holds_back(arrival) {
            held_back.push((arrival, item));
        } else {
            take(item, arrival);
        }
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
        let returns = Some(self.chunks.returns.clone());
        let pieces = coordinator.begin_part(cut.id, &self.part, (files, change), returns)?;
        let Some(chunk) = self.chunks.take(coordinator) else {
            return Err(coordinator.writer_stopped());
        };
        let output = Chunked {
            chunk,
            pool: &mut self.chunks,
            coordinator,
            pieces,
            bytes: 0,
        };
        // Serializing fails only when the writer has stopped: state types
        // are all ones postcard represents.
        self.part_bytes = postcard::serialize_with_flavor(state, output)
            .map_err(|_| coordinator.writer_stopped())?;
        Ok(self.part_bytes)
    }
}
