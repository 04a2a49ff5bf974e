//! Sinks: where output rows and dead letters are written.
//!
//! A sink is a format and a transport. Formats turn rows into bytes: JSON
//! lines ([`json`]) and Arrow record batches in Parquet files
//! ([`parquet`]). Transports put them somewhere: files, standard output
//! and error ([`files`]), and Kafka topics ([`kafka`]). Dead letters
//! ([`dead_letters`]) are JSON lines or raw records on the same transports.
//!
//! Each worker writes its own files (`part-<worker>.jsonl` or `.parquet`)
//! in the sink's directory, so workers never contend for a file; readers
//! order rows by (`_partition`, `_offset`). Writers say how far their
//! output is durable (synced to disk, or acknowledged by the brokers), so
//! that a Kafka source commits offsets only up to outputs that survive a
//! crash. In a checkpointed run they write exactly once: files belong to
//! the epochs of checkpoints, and a Kafka sink leaves out on a restart
//! the rows the run before it already wrote.

mod dead_letters;
mod files;
mod json;
mod kafka;
mod parquet;

pub use dead_letters::{DEAD_LETTER_HEADERS, DeadLetterWriter};
pub use files::{prepare_directory, prepare_epoch_directory};
pub use kafka::{ORIGIN_HEADER, TopicOffsets, TopicResume, topic_ends};

use self::parquet::ParquetWriter;
use crate::batch::Batch;
use crate::checkpoint::EpochFile;
use crate::plan::{Plan, SinkPlan};
use crate::row::Origins;
use crate::schema::Column;
use crate::{Error, Result};
use files::{EpochRowWriter, JsonlWriter, StreamWriter, part_path};
use kafka::KafkaWriter;
use std::sync::Arc;

/// The record header naming the model that scored a row.
pub const MODEL_HEADER: &str = "tideflow-model";

/// Writes rows somewhere.
///
/// Durability is tracked in *sync epochs*: [`RowWriter::sync`] closes the
/// current epoch, and [`RowWriter::is_durable`] says whether everything
/// written up to the end of an epoch would survive a crash (file data
/// synced to disk, Kafka records acknowledged by the brokers).
pub trait RowWriter {
    /// Writes a batch of rows.
    fn write(&mut self, batch: &Batch) -> Result<()>;
    /// Closes the current epoch and returns its number. File data is
    /// synced to disk before this returns; Kafka records are acknowledged
    /// in the background (and earlier delivery failures are reported here).
    fn sync(&mut self) -> Result<u64>;
    /// Whether everything written up to the end of `epoch` is durable.
    fn is_durable(&self, epoch: u64) -> bool;
    /// Flushes and closes; after this the output is complete and durable.
    fn finish(&mut self) -> Result<()>;
    /// Ends the epoch of checkpoint `id`: makes what was written durable
    /// and returns what a restore needs: the files that hold it, to be
    /// published when the checkpoint commits, or where a Kafka sink's
    /// later rows begin. Standard output and error only make their output
    /// durable: they write at least once, not exactly once.
    fn close_epoch(&mut self, _id: u64) -> Result<EpochOutput> {
        self.finish()?;
        Ok(EpochOutput::default())
    }
}

/// What a writer's epoch leaves for its checkpoint.
#[derive(Debug, Default)]
pub struct EpochOutput {
    /// Files to publish when the checkpoint commits.
    pub files: Vec<EpochFile>,
    /// A Kafka sink's offsets at or after which its rows after the cut
    /// land.
    pub topic_starts: Option<TopicOffsets>,
}

/// Opens the writer of `sink` for worker `worker` in a checkpointed run:
/// file sinks write a file per epoch.
pub fn open_epoch_row_writer(
    sink: &SinkPlan,
    layout: &Layout,
    worker: usize,
    resume: Option<Arc<TopicResume>>,
) -> Result<Box<dyn RowWriter>> {
    let extension = match (sink, resume) {
        (SinkPlan::Jsonl(_), _) => "jsonl",
        (SinkPlan::Parquet { .. }, _) => "parquet",
        (
            SinkPlan::Kafka {
                brokers,
                topic,
                options,
            },
            Some(resume),
        ) => {
            return Ok(Box::new(
                KafkaWriter::open(brokers, topic, options, layout)?.exactly_once(resume),
            ));
        }
        _ => return open_row_writer(sink, layout, worker),
    };
    let (SinkPlan::Jsonl(dir) | SinkPlan::Parquet { dir, .. }) = sink else {
        unreachable!("matched above")
    };
    Ok(Box::new(EpochRowWriter::new(
        sink, dir, layout, worker, extension,
    )))
}

/// The output row layout: columns and the model identity for `_model`.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Every column in slot order.
    pub columns: Vec<Column>,
    /// How many columns are schema fields (`_partition` and `_offset`
    /// follow them).
    pub field_count: usize,
    /// `_model`, when a model scores the rows.
    pub model: Option<String>,
    /// The entity key: the record key of Kafka outputs.
    pub key_slot: Option<usize>,
    /// How `_topic` and `_partition` are written.
    pub origins: Origins,
}

impl Layout {
    /// The layout of a plan's outputs.
    pub fn new(plan: &Plan, model: Option<String>) -> Self {
        Layout {
            columns: plan.columns.clone(),
            field_count: plan.field_count,
            model,
            key_slot: plan.entity_key_slot(),
            origins: plan.origins(),
        }
    }
}

/// Opens the writer of `sink` for worker `worker`.
pub fn open_row_writer(
    sink: &SinkPlan,
    layout: &Layout,
    worker: usize,
) -> Result<Box<dyn RowWriter>> {
    Ok(match sink {
        SinkPlan::Jsonl(dir) => Box::new(JsonlWriter::create(
            &part_path(dir, worker, "jsonl"),
            layout.clone(),
            sink,
        )?),
        SinkPlan::Parquet { dir, .. } => Box::new(ParquetWriter::create(
            &part_path(dir, worker, "parquet"),
            layout.clone(),
            sink,
        )?),
        SinkPlan::Stdout => Box::new(StreamWriter::new(layout, false)),
        SinkPlan::Stderr => Box::new(StreamWriter::new(layout, true)),
        SinkPlan::Null => Box::new(NullWriter(Epochs::default())),
        SinkPlan::Kafka {
            brokers,
            topic,
            options,
        } => Box::new(KafkaWriter::open(brokers, topic, options, layout)?),
    })
}

pub(super) fn sink_error(sink: &SinkPlan, error: impl std::fmt::Display) -> Error {
    Error::Sink {
        sink: sink.describe(),
        message: error.to_string(),
    }
}

/// The sync epochs of a writer whose data is durable once `sync` returns.
#[derive(Debug, Default)]
pub(super) struct Epochs {
    closed: u64,
}

impl Epochs {
    fn close(&mut self) -> Result<u64> {
        self.closed += 1;
        Ok(self.closed)
    }

    fn closed(&self, epoch: u64) -> bool {
        epoch <= self.closed
    }
}

/// Syncs a writer's file to disk on a thread of its own, so that the
/// worker that wrote it goes on scoring while the disk catches up (a sync
/// can take tens of milliseconds, and a live row waiting behind it shows
/// in the tail of its latency). An epoch is durable once a sync asked for
/// after it returned; a failed sync fails the writer's next call.
///
/// The same thread writes a file behind its writer ([`BackgroundSync::
/// write_behind`]): without it the system keeps a backfill's whole output
/// in memory until the final sync, which then waits for all of it while
/// the workers idle (125 ms for each of two 95 MB Parquet files here).
#[derive(Debug, Default)]
pub(super) struct BackgroundSync {
    requests: Option<std::sync::mpsc::Sender<(std::fs::File, u64)>>,
    synced: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Syncs asked for and not yet done.
    outstanding: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failure: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Bytes written since the last write-behind sync was asked for.
    unsynced_bytes: u64,
}

/// How many bytes a writer writes before its sync thread writes them
/// behind it.
const WRITE_BEHIND_BYTES: u64 = 16 << 20;

impl BackgroundSync {
    /// Asks for everything written to `file` so far to be synced, after
    /// which epoch `epoch` is durable.
    pub(super) fn request(&mut self, file: &std::fs::File, epoch: u64) -> std::io::Result<()> {
        let handle = file.try_clone()?;
        if self.requests.is_none() {
            let (sender, receiver) = std::sync::mpsc::channel::<(std::fs::File, u64)>();
            let (synced, failure) = (self.synced.clone(), self.failure.clone());
            let outstanding = self.outstanding.clone();
            self.thread = Some(
                std::thread::Builder::new()
                    .name("tideflow-sync".into())
                    .spawn(move || {
                        for (file, epoch) in receiver {
                            match file.sync_data() {
                                Ok(()) => {
                                    synced.fetch_max(epoch, std::sync::atomic::Ordering::Release);
                                }
                                Err(error) => {
                                    let mut failure = failure
                                        .lock()
                                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                                    failure.get_or_insert(error.to_string());
                                }
                            }
                            outstanding.fetch_sub(1, std::sync::atomic::Ordering::Release);
                        }
                    })?,
            );
            self.requests = Some(sender);
        }
        if let Some(requests) = &self.requests {
            self.outstanding
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.unsynced_bytes = 0;
            // Fails only if the thread has gone, which it does only when
            // this writer drops it.
            let _ = requests.send((handle, epoch));
        }
        Ok(())
    }

    /// Counts `bytes` written to `file` and, every [`WRITE_BEHIND_BYTES`],
    /// has the sync thread start putting them on disk, unless it is still
    /// syncing: the writer's final sync then waits only for the rest. The
    /// sync makes no epoch durable that was not already.
    pub(super) fn write_behind(&mut self, file: &std::fs::File, bytes: u64) -> std::io::Result<()> {
        self.unsynced_bytes += bytes;
        if self.unsynced_bytes < WRITE_BEHIND_BYTES
            || self.outstanding.load(std::sync::atomic::Ordering::Acquire) > 0
        {
            return Ok(());
        }
        let durable = self.synced.load(std::sync::atomic::Ordering::Acquire);
        self.request(file, durable)
    }

    /// Whether epoch `epoch` is on disk.
    pub(super) fn synced(&self, epoch: u64) -> bool {
        epoch <= self.synced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Why a sync failed, if one did.
    pub(super) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Drop for BackgroundSync {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Counts and drops (for benchmarks).
struct NullWriter(Epochs);

impl RowWriter for NullWriter {
    fn write(&mut self, _batch: &Batch) -> Result<()> {
        Ok(())
    }

    fn sync(&mut self) -> Result<u64> {
        self.0.close()
    }

    fn is_durable(&self, epoch: u64) -> bool {
        self.0.closed(epoch)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The sync thread is asked to write a file behind its writer once
    /// [`WRITE_BEHIND_BYTES`] have been written since it last was, and
    /// that marks no epoch durable.
    #[test]
    fn files_are_written_behind_every_few_megabytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = std::fs::File::create(dir.path().join("part")).unwrap();
        let mut syncer = BackgroundSync::default();
        let chunk = vec![b'x'; 1 << 20];
        let asked = |syncer: &BackgroundSync| syncer.thread.is_some();
        for _ in 0..WRITE_BEHIND_BYTES / (1 << 20) - 1 {
            file.write_all(&chunk).unwrap();
            syncer.write_behind(&file, chunk.len() as u64).unwrap();
        }
        assert!(!asked(&syncer), "asked before {WRITE_BEHIND_BYTES} bytes");
        file.write_all(&chunk).unwrap();
        syncer.write_behind(&file, chunk.len() as u64).unwrap();
        assert!(asked(&syncer));
        assert_eq!(syncer.unsynced_bytes, 0);
        let started = std::time::Instant::now();
        while syncer
            .outstanding
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
        {
            assert!(started.elapsed().as_secs() < 60, "the sync never ended");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(syncer.failure().is_none());
        assert!(
            !syncer.synced(1),
            "a write-behind sync made an epoch durable"
        );
    }

    /// A checkpointed file sink opens its epoch's file for rows, not for
    /// an empty batch: an empty batch after the final checkpoint left an
    /// empty pending file behind a finished run.
    #[test]
    fn an_empty_batch_opens_no_epoch_file() {
        let dir = tempfile::tempdir().unwrap();
        let sink = SinkPlan::Jsonl(dir.path().to_path_buf());
        let layout = Layout {
            columns: Vec::new(),
            field_count: 0,
            model: None,
            key_slot: None,
            origins: Origins::by_index(),
        };
        let mut writer = EpochRowWriter::new(&sink, dir.path(), &layout, 0, "jsonl");
        writer
            .write(&crate::batch::Batch::from_rows(Vec::new()))
            .unwrap();
        writer.finish().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(writer.close_epoch(1).unwrap().files.is_empty());
    }

    /// The epoch asked for becomes durable once the thread has synced the
    /// file, and no later epoch does.
    #[test]
    fn a_background_sync_makes_its_epoch_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = std::fs::File::create(dir.path().join("rows.jsonl")).unwrap();
        file.write_all(b"{}\n").unwrap();
        let mut syncer = BackgroundSync::default();
        assert!(syncer.synced(0) && !syncer.synced(1));
        syncer.request(&file, 3).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !syncer.synced(3) {
            assert!(std::time::Instant::now() < deadline, "never synced");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!syncer.synced(4));
        assert_eq!(syncer.failure(), None);
    }
}
