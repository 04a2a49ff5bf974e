//! Where checkpoint bytes live: a flat namespace of objects written whole.
//!
//! The checkpoint logic ([`super::store`]) needs only four things of its
//! storage: write an object atomically (a reader sees all of it or
//! nothing), read one, list a prefix, delete one. A local directory does
//! this with a temporary file renamed into place; object stores do it by
//! the nature of a put. Keeping the logic above this trait lets one set of
//! tests cover the manifests, checksums and retention for every storage.

use crate::{Error, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Objects named by `/`-separated keys, each written whole.
pub trait Storage: std::fmt::Debug + Send + Sync {
    /// Writes `bytes` under `key`, atomically: a concurrent or later
    /// reader finds the old object, none, or all of the new one.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
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

fn failure(path: &Path, what: &str, error: std::io::Error) -> Error {
    Error::Checkpoint {
        location: path.display().to_string(),
        message: format!("{what}: {error}"),
    }
}

impl Storage for LocalStorage {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key);
        let directory = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(directory)
            .map_err(|error| failure(directory, "cannot create", error))?;
        // Named for this process and put: the processes of a cluster may
        // put the same object at once (each its own copy, the last rename
        // wins), and must not rename each other's partial files away.
        let partial = path.with_file_name(format!(
            "{}.{}-{}{PARTIAL_SUFFIX}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id(),
            PUTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        // Written, synced, then renamed: a crash leaves the old object or
        // a partial file that no reader takes for the object.
        let mut file = fs::File::create(&partial)
            .map_err(|error| failure(&partial, "cannot create", error))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|error| failure(&partial, "cannot write", error))?;
        fs::rename(&partial, &path).map_err(|error| failure(&path, "cannot rename into", error))?;
        // The rename itself is durable once the directory is synced.
        fs::File::open(directory)
            .and_then(|directory| directory.sync_all())
            .map_err(|error| failure(directory, "cannot sync", error))
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
