//! The Parquet sink's commit protocol, shared by the executors that write files and the driver
//! that publishes them (as Spark's file sink does it).
//!
//! Every task attempt writes its own files, named `part-<batch>-<task>-<attempt>-<unique>.parquet`,
//! in the table's partition directories. Nothing a task writes is visible until the driver, once
//! every task of batch N has succeeded, writes `<path>/_embedstream_log/<N>.json` listing the files
//! of the successful attempts (atomically: a temporary file renamed). A reader that goes through
//! the manifests sees each input record exactly once; files of failed attempts are in no manifest
//! and are deleted when the batch commits. A batch whose manifest exists is never written again:
//! a driver that restarts after the manifest and before its own commit log skips the tasks.
//! The table may be on HDFS: every file operation goes through [`crate::store`].

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::offsets::PartitionOffsets;
use crate::store;

/// The manifests' directory inside the table's path.
pub const LOG_DIR: &str = "_embedstream_log";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a manifest: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ManifestError + '_ {
    move |source| ManifestError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the table's path, `/`-separated (`dt=2026-11-25/part-...parquet`).
    pub path: String,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchManifest {
    pub version: u32,
    pub batch_id: u64,
    /// The query (its checkpoint's id) that wrote the batch: a table belongs to one query.
    pub query_id: String,
    /// The Kafka offsets whose records the batch's files hold, end exclusive.
    pub start: PartitionOffsets,
    pub end: PartitionOffsets,
    pub files: Vec<ManifestFile>,
}

impl BatchManifest {
    /// Whether this manifest is the one `query_id` wrote for a batch of these offsets; when
    /// not, the table was written by another query (a new checkpoint on an old `sink.path`).
    pub fn written_by(&self, query_id: &str, start: &PartitionOffsets, end: &PartitionOffsets) -> bool {
        self.query_id == query_id && self.start == *start && self.end == *end
    }
}

/// The name of a file written by one task attempt; `unique` tells apart attempts of drivers
/// that ran the same batch one after the other.
pub fn file_name(batch_id: u64, task_id: u32, attempt: u32, unique: &str) -> String {
    format!("{}{task_id:05}-{attempt}-{unique}.parquet", batch_prefix(batch_id))
}

/// How the name of every data file of batch `batch_id` begins.
pub fn batch_prefix(batch_id: u64) -> String {
    format!("part-{batch_id:010}-")
}

fn manifest_path(table: &Path, batch_id: u64) -> PathBuf {
    table.join(LOG_DIR).join(format!("{batch_id}.json"))
}

/// The manifest of `batch_id`, if that batch has committed.
pub fn committed(table: &Path, batch_id: u64) -> Result<Option<BatchManifest>, ManifestError> {
    let path = manifest_path(table, batch_id);
    match store::read(&path).map_err(io(&path))? {
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| ManifestError::Parse { path, source }),
        None => Ok(None),
    }
}

/// Publishes a batch: writes its manifest atomically, then deletes the files of its failed
/// attempts. Returns how many files were deleted.
pub fn commit(table: &Path, manifest: &BatchManifest) -> Result<usize, ManifestError> {
    let dir = table.join(LOG_DIR);
    if store::is_hdfs(table) || !dir.is_dir() {
        store::create_dir_all(&dir, false).map_err(io(&dir))?;
        if !store::is_hdfs(table) {
            crate::durable::sync_dir(table).map_err(io(table))?;
        }
    }
    let path = manifest_path(table, manifest.batch_id);
    let bytes = serde_json::to_vec_pretty(manifest).expect("manifests serialise");
    store::write_atomic(&path, &bytes, false).map_err(io(&path))?;
    remove_orphans(table, manifest)
}

/// Deletes the batch's files that its manifest does not list. Every attempt of a task reads the
/// same offset range, so its records fall in the same partition directories as the successful
/// attempt's: only those directories are listed, not the whole table, and a commit costs the
/// same on the first day of a table as after a year. (A batch whose successful attempts wrote
/// nothing, all dead letters, had failed attempts that wrote nothing either.)
/// A driver that crashed between a manifest and this clean-up calls it again on restart.
pub fn remove_orphans(table: &Path, manifest: &BatchManifest) -> Result<usize, ManifestError> {
    remove_batch_orphans(table, manifest.batch_id, &manifest.files)
}

/// Deletes the files of batch `batch_id` that are not among `files` (the successful attempts'),
/// as [`remove_orphans`] does for a manifest; for tables whose log is not a manifest (Delta).
pub fn remove_batch_orphans(table: &Path, batch_id: u64, files: &[ManifestFile]) -> Result<usize, ManifestError> {
    let prefix = batch_prefix(batch_id);
    let listed: HashSet<PathBuf> = files.iter().map(|f| table.join(&f.path)).collect();
    let dirs: BTreeSet<&Path> = listed.iter().filter_map(|f| f.parent()).collect();
    let mut removed = 0;
    for dir in dirs {
        let Some(entries) = store::list(dir).map_err(io(dir))? else { continue };
        for entry in entries {
            let file = dir.join(&entry.name);
            if entry.name.starts_with(&prefix) && entry.name.ends_with(".parquet") && !listed.contains(&file) {
                // False: its attempt aborted and removed it while this listed the directory.
                if store::remove_file(&file).map_err(io(&file))? {
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// Every `part-*.parquet` file under the table, committed or not.
pub fn data_files(table: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let mut out = Vec::new();
    let mut dirs = vec![table.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Some(entries) = store::list(&dir).map_err(io(&dir))? else { continue };
        for entry in entries {
            let path = dir.join(&entry.name);
            if entry.is_dir && entry.name != LOG_DIR {
                dirs.push(path);
            } else if entry.name.starts_with("part-") && entry.name.ends_with(".parquet") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files a reader should read: those of every committed batch, in batch order.
pub fn visible_files(table: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let dir = table.join(LOG_DIR);
    let entries = store::list(&dir).map_err(io(&dir))?.unwrap_or_default();
    let mut batches: Vec<u64> = entries.iter().filter_map(|e| e.name.strip_suffix(".json")?.parse().ok()).collect();
    batches.sort_unstable();
    let mut files = Vec::new();
    for b in batches {
        if let Some(m) = committed(table, b)? {
            files.extend(m.files.iter().map(|f| table.join(&f.path)));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::TopicPartition;

    #[test]
    fn a_commit_publishes_listed_files_and_deletes_the_batch_s_others() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path();
        let write = |rel: &str| {
            let p = table.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        let kept = format!("dt=2026-11-25/{}", file_name(3, 0, 1, "b"));
        let failed = format!("dt=2026-11-25/{}", file_name(3, 0, 0, "a"));
        let other_batch = format!("dt=2026-11-25/{}", file_name(4, 0, 0, "a"));
        for f in [&kept, &failed, &other_batch] {
            write(f);
        }
        assert_eq!(committed(table, 3).unwrap(), None);
        let m = BatchManifest {
            version: 1,
            batch_id: 3,
            query_id: "q".into(),
            start: [(TopicPartition::new("t", 0), 0)].into_iter().collect(),
            end: [(TopicPartition::new("t", 0), 7)].into_iter().collect(),
            files: vec![ManifestFile { path: kept.clone(), rows: 7 }],
        };
        assert_eq!(commit(table, &m).unwrap(), 1);
        assert_eq!(committed(table, 3).unwrap(), Some(m.clone()));
        assert!(m.written_by("q", &m.start, &m.end));
        assert!(!m.written_by("another", &m.start, &m.end), "another query's batch 3");
        assert!(!m.written_by("q", &m.start, &m.start), "other offsets");
        assert_eq!(visible_files(table).unwrap(), vec![table.join(&kept)]);
        assert!(!table.join(&failed).exists());
        assert!(table.join(&other_batch).exists(), "another batch's files are not this commit's to delete");
    }
}
