//! A model registry: a directory `NAME/` of versions `NAME/VERSION/model.onnx`
//! (versions are integers), and `NAME/promotions.jsonl`, the durable record
//! of which version scores rows from which event time on.
//!
//! The record is what makes a promotion reproducible: every run of a spec
//! over the registry, live, backfill or restored, reads it and scores each
//! row with the version in effect at the row's event time. Its first line
//! names the base version (in effect from the beginning of time); each
//! later line a promotion: `{"version": 2, "from_ms": T, "requested_at_ms":
//! W}`. A registry without the file gets one naming its newest version the
//! base, the first time a run opens it.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file of promotions in a registry directory.
pub const PROMOTIONS: &str = "promotions.jsonl";

/// A model registry directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    dir: PathBuf,
}

/// One line of the promotions record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The version promoted.
    pub version: u64,
    /// The event time from which it scores rows; `None`: the base version.
    pub from_ms: Option<i64>,
    /// When it was recorded, wall clock (for people; never for scoring).
    pub requested_at_ms: i64,
}

/// Which version scores a row of each event time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The version in effect before every promotion.
    pub base: u64,
    /// `(from_ms, version)`, by `from_ms`; of equal times, the later
    /// recorded wins.
    pub switches: Vec<(i64, u64)>,
}

impl Schedule {
    /// A schedule of one version for all time.
    pub fn single(version: u64) -> Schedule {
        Schedule {
            base: version,
            switches: Vec::new(),
        }
    }

    /// The version that scores a row of event time `time_ms`.
    pub fn version_at(&self, time_ms: i64) -> u64 {
        let after = self.switches.partition_point(|(from, _)| *from <= time_ms);
        after
            .checked_sub(1)
            .map_or(self.base, |index| self.switches[index].1)
    }

    /// The version of the newest switch (or the base).
    pub fn latest(&self) -> u64 {
        self.switches
            .last()
            .map_or(self.base, |(_, version)| *version)
    }

    /// Every version the schedule names.
    pub fn versions(&self) -> Vec<u64> {
        let mut versions: Vec<u64> = std::iter::once(self.base)
            .chain(self.switches.iter().map(|(_, version)| *version))
            .collect();
        versions.sort_unstable();
        versions.dedup();
        versions
    }

    /// Adds a switch (after any of the same time).
    pub fn add(&mut self, from_ms: i64, version: u64) {
        // After every switch of the same time: the later recorded wins.
        let at = self.switches.partition_point(|(from, _)| *from <= from_ms);
        self.switches.insert(at, (from_ms, version));
    }
}

impl Registry {
    /// Whether `path` is a registry (a directory) rather than a model file.
    pub fn is_registry(path: &Path) -> bool {
        path.is_dir()
    }

    /// The registry at `dir`, which holds at least one version.
    pub fn open(dir: &Path) -> Result<Registry> {
        let registry = Registry {
            dir: dir.to_owned(),
        };
        if registry.versions()?.is_empty() {
            return Err(registry.error(
                "holds no version: a registry is NAME/VERSION/model.onnx, versions being integers",
            ));
        }
        Ok(registry)
    }

    /// The registry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model's name: the directory's.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map_or("model".into(), |name| name.to_string_lossy().into_owned())
    }

    /// The versions present, ascending.
    pub fn versions(&self) -> Result<Vec<u64>> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|error| self.error(format!("cannot list: {error}")))?;
        let mut versions: Vec<u64> = entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                entry.path().join("model.onnx").is_file().then_some(version)
            })
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The file of `version`, which must be present.
    pub fn model_path(&self, version: u64) -> Result<PathBuf> {
        let path = self.dir.join(version.to_string()).join("model.onnx");
        if path.is_file() {
            Ok(path)
        } else {
            let versions = self.versions()?;
            Err(self.error(format!(
                "has no version {version} (no {}); its versions are {versions:?}",
                path.display()
            )))
        }
    }

    /// The schedule recorded, creating the record with the newest version
    /// as its base if there is none.
    pub fn schedule(&self) -> Result<Schedule> {
        let path = self.dir.join(PROMOTIONS);
        if !path.exists() {
            let newest = *self.versions()?.last().expect("open checked");
            self.record(&Promotion {
                version: newest,
                from_ms: None,
                requested_at_ms: now_ms(),
            })?;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|error| self.error(format!("cannot read {}: {error}", path.display())))?;
        let mut schedule: Option<Schedule> = None;
        for (index, line) in text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
        {
            let promotion: Promotion = serde_json::from_str(line).map_err(|error| {
                self.error(format!("{}:{}: {error}", path.display(), index + 1))
            })?;
            match (&mut schedule, promotion.from_ms) {
                (None, None) => schedule = Some(Schedule::single(promotion.version)),
                (Some(schedule), Some(from_ms)) => schedule.add(from_ms, promotion.version),
                (None, Some(_)) | (Some(_), None) => {
                    return Err(self.error(format!(
                        "{}:{}: the first line names the base version (\"from_ms\": null), and only the first",
                        path.display(),
                        index + 1
                    )));
                }
            }
        }
        schedule.ok_or_else(|| self.error(format!("{} is empty", path.display())))
    }

    /// Appends `promotion` to the record, durably (flushed to the disk)
    /// before it returns.
    pub fn record(&self, promotion: &Promotion) -> Result<()> {
        let path = self.dir.join(PROMOTIONS);
        let fail = |error: std::io::Error| {
            self.error(format!("cannot record in {}: {error}", path.display()))
        };
        let mut line = serde_json::to_vec(promotion).expect("a promotion serializes");
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(fail)?;
        file.write_all(&line).map_err(fail)?;
        file.sync_all().map_err(fail)
    }

    /// Appends `promotion` unless the record already ends with it (the
    /// processes of a cluster over one shared registry each record it).
    pub fn record_once(&self, promotion: &Promotion) -> Result<()> {
        let path = self.dir.join(PROMOTIONS);
        let last = std::fs::read_to_string(&path).ok().and_then(|text| {
            let line = text.lines().rev().find(|line| !line.trim().is_empty())?;
            serde_json::from_str::<Promotion>(line).ok()
        });
        let same = last.is_some_and(|last| {
            (last.version, last.from_ms) == (promotion.version, promotion.from_ms)
        });
        if same { Ok(()) } else { self.record(promotion) }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Model {
            path: self.dir.display().to_string(),
            message: message.into(),
        }
    }
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_scored_by_the_version_in_effect_at_its_event_time() {
        let mut schedule = Schedule::single(1);
        schedule.add(100, 2);
        schedule.add(50, 3);
        schedule.add(100, 4);
        assert_eq!(schedule.version_at(i64::MIN), 1);
        assert_eq!(schedule.version_at(49), 1);
        assert_eq!(schedule.version_at(50), 3);
        assert_eq!(schedule.version_at(99), 3);
        // Two switches at 100: the later recorded wins.
        assert_eq!(schedule.version_at(100), 4);
        assert_eq!(schedule.version_at(i64::MAX), 4);
        assert_eq!(schedule.versions(), [1, 2, 3, 4]);
    }

    #[test]
    fn the_record_is_created_with_the_newest_version_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        for version in [1, 2, 10] {
            let version_dir = dir.path().join(version.to_string());
            std::fs::create_dir(&version_dir).unwrap();
            std::fs::write(version_dir.join("model.onnx"), b"not read here").unwrap();
        }
        std::fs::create_dir(dir.path().join("notes")).unwrap();
        let registry = Registry::open(dir.path()).unwrap();
        assert_eq!(registry.versions().unwrap(), [1, 2, 10]);
        assert_eq!(registry.schedule().unwrap(), Schedule::single(10));
        registry
            .record(&Promotion {
                version: 2,
                from_ms: Some(7),
                requested_at_ms: 0,
            })
            .unwrap();
        let schedule = registry.schedule().unwrap();
        assert_eq!((schedule.version_at(6), schedule.version_at(7)), (10, 2));
        assert!(
            registry
                .model_path(3)
                .unwrap_err()
                .to_string()
                .contains("[1, 2, 10]")
        );
    }
}
