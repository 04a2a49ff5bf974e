//! The file transport: a JSONL or Parquet file per worker, a file per
//! checkpoint epoch in checkpointed runs (published when the checkpoint
//! commits), and JSON lines on standard output or error.

use super::parquet::ParquetWriter;
use super::{BackgroundSync, EpochOutput, Epochs, Layout, RowWriter, sink_error};
use crate::batch::Batch;
use crate::checkpoint::EpochFile;
use crate::plan::SinkPlan;
use crate::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Where the files of a checkpointed run's epochs go: written under a
/// hidden pending name, unique to the run and the file, and renamed to
/// `<stem>-<checkpoint id>.<extension>` when their checkpoint commits.
#[derive(Debug, Clone)]
pub(super) struct EpochNames {
    dir: PathBuf,
    /// `part-<worker>` for rows, with a suffix for other writers.
    stem: String,
    extension: &'static str,
    /// Tells this run's pending files from a crashed run's.
    run: u128,
    opened: u64,
}

impl EpochNames {
    pub(super) fn new(dir: &Path, stem: String, extension: &'static str) -> Self {
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        EpochNames {
            dir: dir.to_path_buf(),
            stem,
            extension,
            run,
            opened: 0,
        }
    }

    /// A fresh pending path.
    pub(super) fn next_pending(&mut self) -> PathBuf {
        self.opened += 1;
        self.dir.join(format!(
            ".{}-{}-{}.{}{PENDING_SUFFIX}",
            self.stem, self.run, self.opened, self.extension
        ))
    }

    pub(super) fn published(&self, id: u64) -> PathBuf {
        self.dir
            .join(format!("{}-{id:010}.{}", self.stem, self.extension))
    }
}

/// The end of the names of files that wait for their checkpoint.
const PENDING_SUFFIX: &str = ".pending";

/// Makes a checkpointed run's sink directory ready for a run that starts
/// from checkpoint `restored` (0: none): removes the files of epochs whose
/// checkpoint never committed (pending files a crash left) and those of
/// checkpoints after the one restored (when a newer one was refused), and
/// refuses to start afresh over part files of an earlier run, which it
/// would neither keep apart nor remove. It removes only files of the
/// workers this process `owns` (by the index in their names).
pub fn prepare_epoch_directory(
    sink: &SinkPlan,
    restored: u64,
    owns: &dyn Fn(usize) -> bool,
) -> Result<()> {
    let (SinkPlan::Jsonl(dir) | SinkPlan::Parquet { dir, .. }) = sink else {
        return Ok(());
    };
    let fail = |error: std::io::Error| sink_error(sink, error);
    std::fs::create_dir_all(dir).map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let checkpoint = name
            .rsplit_once('.')
            .and_then(|(stem, _)| stem.rsplit_once('-'))
            .and_then(|(_, id)| id.parse::<u64>().ok());
        let pending = name.starts_with(".part-") && name.ends_with(PENDING_SUFFIX);
        let published = name.starts_with("part-");
        if published && restored == 0 {
            return Err(sink_error(
                sink,
                format!(
                    "{} holds outputs of an earlier run, but state.dir has no checkpoint to go on from: a new run would add its rows beside them.\n  fix: remove the directory's part files, or write to another directory",
                    dir.display()
                ),
            ));
        }
        let stale = pending || (published && checkpoint.is_some_and(|id| id > restored));
        // In a cluster writing to one directory, each process clears only
        // its own workers' files: another may not have published its own
        // of the restored checkpoint yet.
        if stale && file_worker(&name).is_none_or(owns) {
            match std::fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(fail(error));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The worker that wrote a part file (`part-WWWW-…` or `.part-WWWW-…`).
fn file_worker(name: &str) -> Option<usize> {
    let rest = name
        .strip_prefix(".part-")
        .or_else(|| name.strip_prefix("part-"))?;
    rest.split(['-', '.']).next()?.parse().ok()
}

/// A file sink of a checkpointed run: one file per epoch, each published
/// when its checkpoint commits (see [`RowWriter::close_epoch`]).
pub(super) struct EpochRowWriter {
    sink: SinkPlan,
    layout: Layout,
    names: EpochNames,
    current: Option<(Box<dyn RowWriter>, PathBuf)>,
    epochs: Epochs,
}

impl EpochRowWriter {
    /// The writer of worker `worker`'s epoch files in the directory `dir`
    /// of `sink`.
    pub(super) fn new(
        sink: &SinkPlan,
        dir: &Path,
        layout: &Layout,
        worker: usize,
        extension: &'static str,
    ) -> Self {
        EpochRowWriter {
            sink: sink.clone(),
            layout: layout.clone(),
            names: EpochNames::new(dir, format!("part-{worker:04}"), extension),
            current: None,
            epochs: Epochs::default(),
        }
    }

    fn current(&mut self) -> Result<&mut Box<dyn RowWriter>> {
        if self.current.is_none() {
            let path = self.names.next_pending();
            let writer = open_file_writer(&self.sink, &self.layout, &path)?;
            self.current = Some((writer, path));
        }
        Ok(&mut self.current.as_mut().expect("opened above").0)
    }
}

impl RowWriter for EpochRowWriter {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        // An empty batch opens no file: one arriving after the final
        // checkpoint closed its epoch would be left pending at the end.
        if batch.is_empty() {
            return Ok(());
        }
        self.current()?.write(batch)
    }

    fn sync(&mut self) -> Result<u64> {
        self.epochs.close()
    }

    fn is_durable(&self, epoch: u64) -> bool {
        self.epochs.closed(epoch)
    }

    fn finish(&mut self) -> Result<()> {
        // A file still open at the end belongs to no committed checkpoint:
        // it is made whole, and stays pending.
        match &mut self.current {
            Some((writer, _)) => writer.finish(),
            None => Ok(()),
        }
    }

    fn close_epoch(&mut self, id: u64) -> Result<EpochOutput> {
        let Some((mut writer, pending)) = self.current.take() else {
            return Ok(EpochOutput::default());
        };
        writer.finish()?;
        Ok(EpochOutput {
            files: vec![EpochFile {
                pending,
                published: self.names.published(id),
            }],
            topic_starts: None,
        })
    }
}

/// A JSONL or Parquet writer of one file.
fn open_file_writer(sink: &SinkPlan, layout: &Layout, path: &Path) -> Result<Box<dyn RowWriter>> {
    Ok(match sink {
        SinkPlan::Parquet { .. } => Box::new(ParquetWriter::create(path, layout.clone(), sink)?),
        _ => Box::new(JsonlWriter::create(path, layout.clone(), sink)?),
    })
}

/// Removes the part files of an earlier run from a sink's directory and
/// creates it, so that a run's outputs are exactly its own. `owned` says
/// which worker's part files this process may remove: in a cluster that
/// shares the directory, each process removes its own workers' files (the
/// first also those of workers beyond the cluster's), so that no process
/// removes what another has started to write.
pub fn prepare_directory(sink: &SinkPlan, owned: &dyn Fn(usize) -> bool) -> Result<()> {
    let (SinkPlan::Jsonl(dir) | SinkPlan::Parquet { dir, .. }) = sink else {
        return Ok(());
    };
    let fail = |error: std::io::Error| Error::Sink {
        sink: sink.describe(),
        message: error.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        let worker = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("part-"))
            .map(|rest| {
                // part-0003.jsonl, part-0003-table0.jsonl: worker 3.
                let digits = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                rest[..digits].parse::<usize>().ok()
            });
        match worker {
            Some(Some(worker)) if !owned(worker) => {}
            Some(_) => std::fs::remove_file(&path).map_err(fail)?,
            None => {}
        }
    }
    Ok(())
}
pub(super) fn part_path(dir: &Path, worker: usize, extension: &str) -> PathBuf {
    dir.join(format!("part-{worker:04}.{extension}"))
}

/// JSON lines into a file.
pub(super) struct JsonlWriter {
    file: BufWriter<File>,
    epochs: Epochs,
    /// Syncs the file behind the worker's back (see [`BackgroundSync`]).
    syncer: BackgroundSync,
    layout: Layout,
    sink: SinkPlan,
    line: Vec<u8>,
}

impl JsonlWriter {
    pub(super) fn create(path: &Path, layout: Layout, sink: &SinkPlan) -> Result<Self> {
        let file = File::create(path)
            .map_err(|error| sink_error(sink, format!("{}: {error}", path.display())))?;
        Ok(JsonlWriter {
            file: BufWriter::with_capacity(1 << 16, file),
            epochs: Epochs::default(),
            syncer: BackgroundSync::default(),
            layout,
            sink: sink.clone(),
            line: Vec::new(),
        })
    }
}

impl RowWriter for JsonlWriter {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        let readers = batch.readers();
        let mut written = 0;
        for index in 0..batch.len() {
            self.line.clear();
            self.layout.json_line(&readers.row(index), &mut self.line);
            self.line.push(b'\n');
            self.file
                .write_all(&self.line)
                .map_err(|error| sink_error(&self.sink, error))?;
            written += self.line.len();
        }
        self.syncer
            .write_behind(self.file.get_ref(), written as u64)
            .map_err(|error| sink_error(&self.sink, error))
    }

    /// Hands the file to the sync thread: the epoch is durable once it
    /// has synced it.
    fn sync(&mut self) -> Result<u64> {
        if let Some(failure) = self.syncer.failure() {
            return Err(sink_error(&self.sink, failure));
        }
        self.file
            .flush()
            .map_err(|error| sink_error(&self.sink, error))?;
        let epoch = self.epochs.close()?;
        self.syncer
            .request(self.file.get_ref(), epoch)
            .map_err(|error| sink_error(&self.sink, error))?;
        Ok(epoch)
    }

    fn is_durable(&self, epoch: u64) -> bool {
        self.syncer.synced(epoch)
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(failure) = self.syncer.failure() {
            return Err(sink_error(&self.sink, failure));
        }
        self.file
            .flush()
            .map_err(|error| sink_error(&self.sink, error))?;
        self.file
            .get_ref()
            .sync_data()
            .map_err(|error| sink_error(&self.sink, error))
    }
}

/// JSON lines on standard output or error.
pub(super) struct StreamWriter {
    layout: Layout,
    stderr: bool,
    epochs: Epochs,
}

impl StreamWriter {
    /// JSON lines on standard error when `stderr`, else standard output.
    pub(super) fn new(layout: &Layout, stderr: bool) -> Self {
        StreamWriter {
            layout: layout.clone(),
            stderr,
            epochs: Epochs::default(),
        }
    }

    fn failed(&self, error: std::io::Error) -> Error {
        Error::Sink {
            sink: if self.stderr { "stderr" } else { "stdout" }.into(),
            message: error.to_string(),
        }
    }
}

impl RowWriter for StreamWriter {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        let mut text = Vec::new();
        let readers = batch.readers();
        for index in 0..batch.len() {
            self.layout.json_line(&readers.row(index), &mut text);
            text.push(b'\n');
        }
        let written = if self.stderr {
            std::io::stderr().lock().write_all(&text)
        } else {
            std::io::stdout().lock().write_all(&text)
        };
        written.map_err(|error| self.failed(error))
    }

    fn sync(&mut self) -> Result<u64> {
        self.finish()?;
        self.epochs.close()
    }

    fn is_durable(&self, epoch: u64) -> bool {
        self.epochs.closed(epoch)
    }

    fn finish(&mut self) -> Result<()> {
        let flushed = if self.stderr {
            std::io::stderr().flush()
        } else {
            std::io::stdout().flush()
        };
        flushed.map_err(|error| self.failed(error))
    }
}
