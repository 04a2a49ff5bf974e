//! Where checkpoint bytes live: a flat namespace of objects written whole.
//!
//! The checkpoint logic ([`super::store`]) needs only four things of its
//! storage: write an object atomically (a reader sees all of it or
//! nothing), read one, list a prefix, delete one. A local directory does
//! this with a temporary file renamed into place; object stores do it by
//! the nature of a put. Keeping the logic above this trait lets one set of
//! tests cover the manifests, checksums and retention for every storage.
//!
//! An object can be written a piece at a time ([`Storage::create`]), so
//! that a large part never has to lie whole in memory: the workers encode
//! into a few reused chunks while the writer thread stores them.

use crate::{Error, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Objects named by `/`-separated keys, each written whole.
pub trait Storage: std::fmt::Debug + Send + Sync {
    /// Starts writing the object under `key`, which appears atomically
    /// once finished: a concurrent or later reader finds the old object,
    /// none, or all of the new one. One dropped unfinished never appears.
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter + '_>>;
    /// Writes `bytes` under `key`, atomically (see [`Storage::create`]).
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let mut object = self.create(key)?;
        object.write(bytes)?;
        object.finish()
    }
    /// The object under `key`, or `None` when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Every key that starts with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Removes the object under `key`; removing what is not there is no
    /// error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Where the objects are, for messages.
    fn describe(&self) -> String;
}

/// An object being written, a piece at a time.
pub trait ObjectWriter {
    /// Appends `bytes`.
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// Makes the object what was written, atomically.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// A local directory: keys are paths below it.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

/// Temporary files of interrupted writes end with this; listing skips
/// them.
const PARTIAL_SUFFIX: &str = ".partial";

/// Puts so far in this process, to name each one's partial file.
static PUTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl LocalStorage {
    /// Storage under `root`, created if missing.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(|error| failure(root, "cannot create", error))?;
        Ok(LocalStorage {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

/// A file being written under a partial name: synced, then renamed into
/// place when finished, so that a crash leaves the old object or a
/// partial file that no reader takes for the object.
struct LocalObject {
    file: fs::File,
    partial: PathBuf,
    path: PathBuf,
    directory: PathBuf,
    /// Bytes written so far.
    written: u64,
    /// Bytes synced and dropped from the page cache so far.
    dropped: u64,
    finished: bool,
}

/// Bytes of a large object written between syncs (see
/// [`LocalObject::write_through`]).
const WRITE_THROUGH_BYTES: u64 = 8 << 20;

impl LocalObject {
    /// Syncs what was written since the last call and drops it from the
    /// page cache, so that a large object holds at most a few megabytes
    /// of cache: the next bytes reuse those pages rather than taking
    /// fresh ones. A checkpoint is written once and read only by a
    /// restore, so caching it helps nothing, and fresh pages are what
    /// writing costs most (on a virtual machine whose host backs memory
    /// only once it is touched, several times the disk's time).
    fn write_through(&mut self) -> std::io::Result<()> {
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        self.file.sync_data()?;
        // Advice only: a kernel that keeps the pages costs memory, no
        // correctness.
        let _ = posix_fadvise(
            &self.file,
            self.dropped as i64,
            (self.written - self.dropped) as i64,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        self.dropped = self.written;
        Ok(())
    }
}

impl ObjectWriter for LocalObject {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|error| failure(&self.partial, "cannot write", error))?;
        self.written += bytes.len() as u64;
        if self.written - self.dropped >= WRITE_THROUGH_BYTES {
            self.write_through()
                .map_err(|error| failure(&self.partial, "cannot write", error))?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let synced = match self.dropped > 0 {
            true => self.write_through(),
            false => self.file.sync_all(),
        };
        synced.map_err(|error| failure(&self.partial, "cannot write", error))?;
        fs::rename(&self.partial, &self.path)
            .map_err(|error| failure(&self.path, "cannot rename into", error))?;
        self.finished = true;
        // The rename itself is durable once the directory is synced.
        fs::File::open(&self.directory)
            .and_then(|directory| directory.sync_all())
            .map_err(|error| failure(&self.directory, "cannot sync", error))
    }
}

impl Drop for LocalObject {
    fn drop(&mut self) {
        if !self.finished {
            // Abandoned: what a crash would leave, tidied.
            let _ = fs::remove_file(&self.partial);
        }
    }
}

fn failure(path: &Path, what: &str, error: std::io::Error) -> Error {
    Error::Checkpoint {
        location: path.display().to_string(),
        message: format!("{what}: {error}"),
    }
}

impl Storage for LocalStorage {
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter + '_>> {
        let path = self.path(key);
        let directory = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&directory)
            .map_err(|error| failure(&directory, "cannot create", error))?;
        // Named for this process and put: the processes of a cluster may
        // put the same object at once (each its own copy, the last rename
        // wins), and must not rename each other's partial files away.
        let partial = path.with_file_name(format!(
            "{}.{}-{}{PARTIAL_SUFFIX}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id(),
            PUTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = fs::File::create(&partial)
            .map_err(|error| failure(&partial, "cannot create", error))?;
        Ok(Box::new(LocalObject {
            file,
            partial,
            path,
            directory,
            written: 0,
            dropped: 0,
            finished: false,
        }))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(failure(&path, "cannot read", error)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pending = vec![self.root.clone()];
        while let Some(directory) = pending.pop() {
            let entries = match fs::read_dir(&directory) {
                Ok(entries) => entries,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(failure(&directory, "cannot list", error)),
            };
            for entry in entries {
                let path = entry
                    .map_err(|error| failure(&directory, "cannot list", error))?
                    .path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let key = path
                    .strip_prefix(&self.root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/");
                if key.starts_with(prefix) && !key.ends_with(PARTIAL_SUFFIX) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(failure(&path, "cannot remove", error)),
        }
        // An emptied directory goes too (it fails, harmlessly, when not
        // empty).
        if let Some(directory) = path.parent()
            && directory != self.root
        {
            let _ = fs::remove_dir(directory);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}
