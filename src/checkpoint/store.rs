//! Checkpoints in storage: parts written by the workers, made one
//! checkpoint by a manifest written last, checked whole before a restore.
//!
//! A checkpoint of epoch `E` is the objects under `checkpoints/E/`: one
//! part per piece of state (each worker's operators, each process's
//! sources and sinks), then `MANIFEST`, which lists every part with its
//! length and CRC-32. Parts can come from several processes; whoever
//! gathers their receipts commits the manifest. Until the manifest exists
//! the checkpoint does not: a crash half way leaves parts that no restore
//! reads and the next commit removes. A restore takes the newest
//! checkpoint whose manifest and parts all check, and says why it refused
//! any newer one (a torn write, a flipped bit, a missing part). Nothing is
//! written twice: each checkpoint has its own epoch, and committing an
//! epoch that exists is an error.
//!
//! A part can hold only what changed since the same part of the
//! checkpoint before (see [`crate::features::changes`]): its receipt then
//! names its base, the whole part of an earlier checkpoint and the changes
//! written since, each with its length and checksum, and a restore reads
//! and checks them all. Retention keeps the parts a kept checkpoint builds
//! on, though their own checkpoints go.

use super::storage::Storage;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The layout of checkpoints this version writes and reads.
const FORMAT: u32 = 3;

/// Where checkpoints live within the storage.
const PREFIX: &str = "checkpoints/";

/// The object that records where a first run's outputs began, for a
/// restart before its first checkpoint.
const FIRST_START: &str = "FIRST_START";

/// The name of the object that makes a checkpoint complete.
const MANIFEST: &str = "MANIFEST";

/// A part as written: its name within the checkpoint, its length and its
/// checksum, for the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReceipt {
    /// The part's name.
    pub name: String,
    /// Its length in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of its bytes.
    pub crc32: u32,
    /// For a part that holds only what changed: the same part in earlier
    /// checkpoints that it builds on, oldest (a whole part) first.
    /// (Always written: receipts also travel between the processes of a
    /// cluster in a format that cannot skip fields.)
    pub base: Vec<PartLink>,
}

/// A part of an earlier checkpoint that a part builds on: its epoch, its
/// length and its checksum (its name is the part's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartLink {
    /// The epoch of the checkpoint it belongs to.
    pub epoch: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of its bytes.
    pub crc32: u32,
}

impl PartReceipt {
    /// This part as the base of the next checkpoint's part of its name.
    pub fn link(&self, epoch: u64) -> PartLink {
        PartLink {
            epoch,
            bytes: self.bytes,
            crc32: self.crc32,
        }
    }
}

/// What makes a checkpoint: its epoch and every part it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    epoch: u64,
    parts: Vec<PartReceipt>,
}

/// A checkpoint read back whole, every part checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its epoch.
    pub epoch: u64,
    /// Its parts by name.
    pub parts: BTreeMap<String, StoredPart>,
}

/// A part's bytes as stored: whole, in this checkpoint or an earlier one,
/// and the changes written since, oldest first (none for a part this
/// checkpoint holds whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPart {
    /// The whole part.
    pub whole: Vec<u8>,
    /// What changed since, checkpoint by checkpoint.
    pub changes: Vec<Vec<u8>>,
}

/// A newer checkpoint a restore did not take, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The refused checkpoint's epoch.
    pub epoch: u64,
    /// What was wrong with it.
    pub reason: String,
}

/// What a restore found: the newest sound checkpoint, if any, and the
/// newer ones it refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// The checkpoint to restore from; `None` for a first start.
    pub checkpoint: Option<Checkpoint>,
    /// Newer checkpoints that did not check, newest first.
    pub refused: Vec<Refusal>,
}

/// A part being written: its length and checksum are taken on the way.
pub struct PartWriter<'a> {
    object: Box<dyn super::storage::ObjectWriter + 'a>,
    name: String,
    bytes: u64,
    crc32: crc32fast::Hasher,
}

impl std::fmt::Debug for PartWriter<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PartWriter")
            .field("name", &self.name)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl PartWriter<'_> {
    /// Appends `bytes` to the part.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc32.update(bytes);
        self.bytes += bytes.len() as u64;
        self.object.write(bytes)
    }

    /// Stores the part and returns its receipt for the manifest.
    pub fn finish(self) -> Result<PartReceipt> {
        self.object.finish()?;
        Ok(PartReceipt {
            name: self.name,
            bytes: self.bytes,
            crc32: self.crc32.finalize(),
            base: Vec::new(),
        })
    }
}

/// The checkpoints of one dataflow in one storage.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    storage: Arc<dyn Storage>,
    /// Complete checkpoints kept after a commit (at least 1).
    retain: usize,
}

fn epoch_prefix(epoch: u64) -> String {
    // Zero-padded, so that listing order is epoch order.
    format!("{PREFIX}{epoch:020}/")
}

/// The epoch of a key under [`PREFIX`], if it has one.
fn epoch_of(key: &str) -> Option<u64> {
    key.strip_prefix(PREFIX)?.split('/').next()?.parse().ok()
}

impl CheckpointStore {
    /// The checkpoints in `storage`, keeping the newest `retain`.
    pub fn new(storage: Arc<dyn Storage>, retain: usize) -> Self {
        CheckpointStore {
            storage,
            retain: retain.max(1),
        }
    }

    /// Where the checkpoints are, for messages.
    pub fn describe(&self) -> String {
        self.storage.describe()
    }

    /// What the first run recorded at its start, if one has.
    pub fn first_start(&self) -> Result<Option<Vec<u8>>> {
        self.storage.get(FIRST_START)
    }

    /// Records what a first run starts from (where its outputs begin), so
    /// that a restart before any checkpoint can find what it wrote.
    pub fn record_first_start(&self, bytes: &[u8]) -> Result<()> {
        self.storage.put(FIRST_START, bytes)
    }

    /// Writes a part of the checkpoint of `epoch` and returns its receipt
    /// for the manifest.
    pub fn write_part(&self, epoch: u64, name: &str, bytes: &[u8]) -> Result<PartReceipt> {
        let mut part = self.create_part(epoch, name)?;
        part.write(bytes)?;
        part.finish()
    }

    /// Starts writing a part of the checkpoint of `epoch`, a piece at a
    /// time; [`PartWriter::finish`] gives its receipt for the manifest.
    pub fn create_part(&self, epoch: u64, name: &str) -> Result<PartWriter<'_>> {
        if name.is_empty() || name.contains('/') || name == MANIFEST {
            return Err(self.error(epoch, format!("'{name}' is not a part name")));
        }
        self.check_epoch_is_new(epoch)?;
        Ok(PartWriter {
            object: self
                .storage
                .create(&format!("{}{name}", epoch_prefix(epoch)))?,
            name: name.to_owned(),
            bytes: 0,
            crc32: crc32fast::Hasher::new(),
        })
    }

    /// Makes the checkpoint of `epoch` complete with these parts, then
    /// removes what retention no longer keeps. An epoch not above every
    /// committed one is refused: a checkpoint is never overwritten.
    pub fn commit(&self, epoch: u64, parts: Vec<PartReceipt>) -> Result<()> {
        self.check_epoch_is_new(epoch)?;
        let manifest = Manifest {
            format: FORMAT,
            epoch,
            parts,
        };
        let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        self.storage
            .put(&format!("{}{MANIFEST}", epoch_prefix(epoch)), &text)?;
        self.remove_old(epoch)
    }

    /// Refuses an epoch at or below a committed one, whose parts would
    /// overwrite a checkpoint.
    fn check_epoch_is_new(&self, epoch: u64) -> Result<()> {
        match self.committed_epochs()?.last() {
            Some(newest) if *newest >= epoch => Err(self.error(
                epoch,
                format!("checkpoint {newest} is committed already; epochs must increase"),
            )),
            _ => Ok(()),
        }
    }

    /// The epochs with a manifest, oldest first (whether or not their
    /// parts check).
    pub fn committed_epochs(&self) -> Result<Vec<u64>> {
        let keys = self.storage.list(PREFIX)?;
        Ok(keys
            .iter()
            .filter(|key| key.ends_with(&format!("/{MANIFEST}")))
            .filter_map(|key| epoch_of(key))
            .collect())
    }

    /// The newest checkpoint whose manifest and parts all check, with the
    /// newer ones refused and why.
    pub fn latest(&self) -> Result<Found> {
        let mut found = Found::default();
        for epoch in self.committed_epochs()?.into_iter().rev() {
            match self.read(epoch)? {
                Ok(checkpoint) => {
                    found.checkpoint = Some(checkpoint);
                    break;
                }
                Err(reason) => found.refused.push(Refusal { epoch, reason }),
            }
        }
        Ok(found)
    }

    /// The checkpoint of `epoch`, or why it does not check. Failures to
    /// reach the storage are errors; damage to the checkpoint is the
    /// inner `Err`.
    fn read(&self, epoch: u64) -> Result<std::result::Result<Checkpoint, String>> {
        let prefix = epoch_prefix(epoch);
        let Some(text) = self.storage.get(&format!("{prefix}{MANIFEST}"))? else {
            return Ok(Err("its manifest is gone".into()));
        };
        let manifest: Manifest = match serde_json::from_slice(&text) {
            Ok(manifest) => manifest,
            Err(error) => return Ok(Err(format!("its manifest is unreadable ({error})"))),
        };
        if manifest.format != FORMAT || manifest.epoch != epoch {
            return Ok(Err(format!(
                "its manifest says format {} epoch {}, this version reads format {FORMAT}",
                manifest.format, manifest.epoch
            )));
        }
        let mut parts = BTreeMap::new();
        for receipt in manifest.parts {
            let mut links = receipt.base.clone();
            links.push(receipt.link(epoch));
            let mut read = Vec::with_capacity(links.len());
            for link in &links {
                match self.read_link(&receipt.name, link, epoch)? {
                    Ok(bytes) => read.push(bytes),
                    Err(reason) => return Ok(Err(reason)),
                }
            }
            let whole = read.remove(0);
            parts.insert(
                receipt.name,
                StoredPart {
                    whole,
                    changes: read,
                },
            );
        }
        Ok(Ok(Checkpoint { epoch, parts }))
    }

    /// The bytes of part `name` in the checkpoint `link` names, read for
    /// the checkpoint of `epoch`, or why they do not check.
    fn read_link(
        &self,
        name: &str,
        link: &PartLink,
        epoch: u64,
    ) -> Result<std::result::Result<Vec<u8>, String>> {
        let part = match link.epoch == epoch {
            true => format!("part '{name}'"),
            false => format!("part '{name}' of checkpoint {} (its base)", link.epoch),
        };
        let Some(bytes) = self
            .storage
            .get(&format!("{}{name}", epoch_prefix(link.epoch)))?
        else {
            return Ok(Err(format!("{part} is missing")));
        };
        if bytes.len() as u64 != link.bytes {
            return Ok(Err(format!(
                "{part} has {} bytes, its manifest says {} (torn write)",
                bytes.len(),
                link.bytes
            )));
        }
        let crc32 = crc32fast::hash(&bytes);
        if crc32 != link.crc32 {
            return Ok(Err(format!(
                "{part} has checksum {crc32:08x}, its manifest says {:08x} (corrupted)",
                link.crc32
            )));
        }
        Ok(Ok(bytes))
    }

    /// Removes checkpoints older than the newest `retain` committed ones,
    /// and parts of uncommitted checkpoints older than `committed` (left by
    /// a crash before their manifest), but not the parts a kept
    /// checkpoint builds on.
    fn remove_old(&self, committed: u64) -> Result<()> {
        let epochs = self.committed_epochs()?;
        let keep_from = epochs
            .len()
            .checked_sub(self.retain)
            .map_or(0, |first| epochs[first]);
        let mut based_on = std::collections::BTreeSet::new();
        for epoch in epochs.iter().filter(|epoch| **epoch >= keep_from) {
            let key = format!("{}{MANIFEST}", epoch_prefix(*epoch));
            let Some(text) = self.storage.get(&key)? else {
                continue;
            };
            // An unreadable manifest builds on nothing a restore would read.
            let Ok(manifest) = serde_json::from_slice::<Manifest>(&text) else {
                continue;
            };
            for receipt in &manifest.parts {
                for link in &receipt.base {
                    based_on.insert(format!("{}{}", epoch_prefix(link.epoch), receipt.name));
                }
            }
        }
        for key in self.storage.list(PREFIX)? {
            let Some(epoch) = epoch_of(&key) else {
                continue;
            };
            let uncommitted = epochs.binary_search(&epoch).is_err();
            if (epoch < keep_from || (uncommitted && epoch < committed)) && !based_on.contains(&key)
            {
                self.storage.delete(&key)?;
            }
        }
        Ok(())
    }

    fn error(&self, epoch: u64, message: String) -> Error {
        Error::Checkpoint {
            location: format!("{}/{}", self.storage.describe(), epoch_prefix(epoch)),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::storage::LocalStorage;

    fn store(retain: usize) -> (tempfile::TempDir, CheckpointStore) {
        let directory = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(directory.path()).unwrap();
        (directory, CheckpointStore::new(Arc::new(storage), retain))
    }

    fn take(store: &CheckpointStore, epoch: u64, parts: &[(&str, &[u8])]) {
        let receipts = parts
            .iter()
            .map(|(name, bytes)| store.write_part(epoch, name, bytes).unwrap())
            .collect();
        store.commit(epoch, receipts).unwrap();
    }

    /// Asserts that the `index`th checkpoint refused says `reason`.
    fn assert_refused(found: &Found, index: usize, reason: &str) {
        assert!(
            found
                .refused
                .get(index)
                .is_some_and(|refusal| refusal.reason.contains(reason)),
            "refusal {index} should say {reason:?}: {:?}",
            found.refused
        );
    }

    fn part_path(directory: &tempfile::TempDir, epoch: u64, name: &str) -> std::path::PathBuf {
        directory
            .path()
            .join(format!("{}{name}", epoch_prefix(epoch)))
    }

    /// The processes of a cluster record where their first run started
    /// at the same moment: every put succeeds, and one whole copy stays.
    #[test]
    fn objects_put_at_once_by_several_writers_all_succeed() {
        let (_directory, store) = store(2);
        let store = Arc::new(store);
        let writers: Vec<_> = (0..4u8)
            .map(|writer| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        store.record_first_start(&[writer; 64]).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let kept = store.first_start().unwrap().unwrap();
        assert_eq!(kept.len(), 64);
        assert!(kept.iter().all(|byte| *byte == kept[0]), "{kept:?}");
    }

    #[test]
    fn the_newest_checkpoint_is_read_back_whole() {
        let (_directory, store) = store(3);
        assert_eq!(store.latest().unwrap(), Found::default());
        take(&store, 10, &[("w0", b"first"), ("w1", b"")]);
        take(&store, 20, &[("w0", b"second"), ("w1", b"more")]);
        let found = store.latest().unwrap();
        let checkpoint = found.checkpoint.unwrap();
        assert_eq!(checkpoint.epoch, 20);
        assert_eq!(checkpoint.parts["w0"].whole, b"second");
        assert_eq!(checkpoint.parts["w1"].whole, b"more");
        assert!(found.refused.is_empty());
    }

    #[test]
    fn a_corrupted_or_torn_checkpoint_is_refused_for_the_previous_one() {
        let (directory, store) = store(3);
        take(&store, 1, &[("state", b"good state")]);
        take(&store, 2, &[("state", b"newer state")]);
        // A flipped byte.
        std::fs::write(part_path(&directory, 2, "state"), b"newer stbte").unwrap();
        let found = store.latest().unwrap();
        assert_eq!(found.refused.len(), 1);
        assert_refused(&found, 0, "part 'state' has checksum");
        assert_eq!(
            found.checkpoint.unwrap().parts["state"].whole,
            b"good state"
        );
        // Cut short.
        std::fs::write(part_path(&directory, 2, "state"), b"newer").unwrap();
        let found = store.latest().unwrap();
        assert_eq!(found.checkpoint.unwrap().epoch, 1);
        assert!(found.refused[0].reason.contains("torn write"));
        // Gone, and a manifest that is not one.
        std::fs::remove_file(part_path(&directory, 2, "state")).unwrap();
        assert_refused(&store.latest().unwrap(), 0, "part 'state' is missing");
        std::fs::write(part_path(&directory, 2, MANIFEST), b"{\"form").unwrap();
        let found = store.latest().unwrap();
        assert_eq!(found.checkpoint.unwrap().epoch, 1);
        assert!(found.refused[0].reason.contains("manifest is unreadable"));
    }

    #[test]
    fn parts_without_a_manifest_are_no_checkpoint_and_go_at_the_next_commit() {
        let (directory, store) = store(3);
        take(&store, 1, &[("state", b"one")]);
        // A crash after writing a part, before the manifest.
        store.write_part(2, "state", b"two").unwrap();
        assert_eq!(store.latest().unwrap().checkpoint.unwrap().epoch, 1);
        assert_eq!(store.committed_epochs().unwrap(), vec![1]);
        take(&store, 3, &[("state", b"three")]);
        assert!(!part_path(&directory, 2, "state").exists());
        assert_eq!(store.committed_epochs().unwrap(), vec![1, 3]);
    }

    #[test]
    fn retention_keeps_the_newest_checkpoints() {
        let (directory, store) = store(2);
        for epoch in 1..=5 {
            take(&store, epoch, &[("state", format!("{epoch}").as_bytes())]);
        }
        assert_eq!(store.committed_epochs().unwrap(), vec![4, 5]);
        assert!(!directory.path().join(epoch_prefix(3)).exists());
    }

    #[test]
    fn a_committed_checkpoint_is_never_overwritten() {
        let (_directory, store) = store(3);
        take(&store, 7, &[("state", b"kept")]);
        let receipt = store.write_part(8, "state", b"next").unwrap();
        let error = store.commit(7, vec![receipt.clone()]).unwrap_err();
        assert!(
            error.to_string().contains("epochs must increase"),
            "{error}"
        );
        assert_eq!(
            store.latest().unwrap().checkpoint.unwrap().parts["state"].whole,
            b"kept"
        );
        assert!(store.write_part(7, "state", b"clobbered").is_err());
        assert!(store.write_part(8, "MANIFEST", b"x").is_err());
        assert!(store.write_part(8, "a/b", b"x").is_err());
    }

    #[test]
    fn an_interrupted_write_leaves_nothing_a_reader_takes() {
        let (directory, store) = store(3);
        take(&store, 1, &[("state", b"whole")]);
        // What a crash inside LocalStorage::put leaves behind.
        let partial = part_path(&directory, 1, "state.partial");
        std::fs::write(&partial, b"half").unwrap();
        let found = store.latest().unwrap();
        assert_eq!(found.checkpoint.unwrap().parts.len(), 1);
        assert!(found.refused.is_empty());
    }

    /// Commits `bytes` as part `name` of `epoch`, building on `base`
    /// (nothing: a whole part), and returns its receipt.
    fn take_part(
        store: &CheckpointStore,
        epoch: u64,
        (name, bytes): (&str, &[u8]),
        base: Vec<PartLink>,
    ) -> PartReceipt {
        let mut receipt = store.write_part(epoch, name, bytes).unwrap();
        receipt.base = base;
        store.commit(epoch, vec![receipt.clone()]).unwrap();
        receipt
    }

    #[test]
    fn a_part_of_changes_reads_back_with_the_parts_it_builds_on() {
        let (_directory, store) = store(1);
        let whole = take_part(&store, 1, ("stage", b"whole"), Vec::new());
        let change = take_part(&store, 2, ("stage", b"change 2"), vec![whole.link(1)]);
        take_part(
            &store,
            3,
            ("stage", b"change 3"),
            vec![whole.link(1), change.link(2)],
        );
        // Retention keeps one checkpoint, and the parts it builds on.
        assert_eq!(store.committed_epochs().unwrap(), vec![3]);
        let found = store.latest().unwrap();
        let part = &found.checkpoint.unwrap().parts["stage"];
        assert_eq!(part.whole, b"whole");
        assert_eq!(
            part.changes,
            vec![b"change 2".to_vec(), b"change 3".to_vec()]
        );
        // A whole part again: what the chain held goes at the next commit.
        take(&store, 4, &[("stage", b"whole again")]);
        take(&store, 5, &[("stage", b"and again")]);
        for epoch in 1..=4 {
            assert!(store.storage.list(&epoch_prefix(epoch)).unwrap().is_empty());
        }
    }

    #[test]
    fn a_checkpoint_whose_base_is_damaged_is_refused_for_an_older_one() {
        let (directory, store) = store(3);
        let whole = take_part(&store, 1, ("stage", b"whole"), Vec::new());
        take_part(&store, 2, ("stage", b"change 2"), vec![whole.link(1)]);
        let whole = take_part(&store, 3, ("stage", b"whole 3"), Vec::new());
        take_part(&store, 4, ("stage", b"change 4"), vec![whole.link(3)]);
        std::fs::write(part_path(&directory, 3, "stage"), b"whole 4").unwrap();
        let found = store.latest().unwrap();
        // 4 builds on 3's damaged part, 3 is that part: 2 is the newest
        // that checks.
        assert_eq!(found.checkpoint.as_ref().unwrap().epoch, 2);
        assert_eq!(found.refused.len(), 2);
        assert_refused(
            &found,
            0,
            "part 'stage' of checkpoint 3 (its base) has checksum",
        );
        std::fs::remove_file(part_path(&directory, 1, "stage")).unwrap();
        let found = store.latest().unwrap();
        assert_eq!(found.checkpoint, None);
        assert_refused(
            &found,
            2,
            "part 'stage' of checkpoint 1 (its base) is missing",
        );
    }

    /// A part written a piece at a time, past several syncs of a large
    /// object, reads back as written, with the length and checksum of
    /// all its bytes; a part dropped half written leaves nothing.
    #[test]
    fn a_part_written_in_pieces_reads_back_whole() {
        let (directory, store) = store(3);
        let piece = |index: u32| -> Vec<u8> {
            (0..3_000_000u32)
                .map(|at| (at.wrapping_mul(31) ^ index) as u8)
                .collect()
        };
        let mut part = store.create_part(1, "stage").unwrap();
        let mut written = Vec::new();
        for index in 0..7 {
            part.write(&piece(index)).unwrap();
            written.extend(piece(index));
        }
        let receipt = part.finish().unwrap();
        assert_eq!(receipt.bytes, written.len() as u64);
        assert_eq!(receipt.crc32, crc32fast::hash(&written));
        let mut abandoned = store.create_part(1, "sink").unwrap();
        abandoned.write(b"half").unwrap();
        drop(abandoned);
        store.commit(1, vec![receipt]).unwrap();
        let found = store.latest().unwrap().checkpoint.unwrap();
        assert!(found.parts["stage"].whole == written);
        let left: Vec<_> = std::fs::read_dir(directory.path().join(epoch_prefix(1)))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
