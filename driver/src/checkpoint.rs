//! The query's checkpoint: a write-ahead offset log and a commit log, as in Spark.
//!
//! ```text
//! <checkpoint_location>/metadata        {"query_id": "..."}            written once
//! <checkpoint_location>/initial_offsets where `starting_offsets` put a new query, written once
//! <checkpoint_location>/offsets/<N>     start and end offsets of batch N, written before any task runs
//! <checkpoint_location>/commits/<N>     written once every task of batch N has finished
//! <checkpoint_location>/lock            held (flock) by the one driver running the query
//! <checkpoint_location>/epoch           the number of drivers that have opened it
//! <checkpoint_location>/epochs/<N>      claimed, create-exclusive, by the driver of epoch N
//! ```
//! One driver at a time: [`Checkpoint::open`] takes an exclusive lock on `lock` for the driver's
//! life (released by the kernel however the process ends), so a second driver on the same
//! checkpoint refuses to start, naming the first. Where the file system's locks are not to be
//! trusted (a network mount), the epoch fences: each driver claims the next epoch when it
//! opens the checkpoint (creating `epochs/<N>`, which only one driver can: two drivers opening
//! it at once never share an epoch), writes it to `epoch`, and checks before every log write, manifest and clean-up
//! ([`Checkpoint::fence`]) that it is still the newest, stopping before it writes otherwise.
//! Every file is written to a temporary name, synced and renamed, so a crash leaves either the
//! old state or the new one. On restart, batch N with `offsets/N` but no `commits/N` is run
//! again with exactly the offsets logged; otherwise the query continues after the last commit.
//! Only the last `min_batches_to_retain` batches of both logs are kept (Spark's
//! `spark.sql.streaming.minBatchesToRetain`), so a query that runs for months does not fill
//! its directory with a file per batch: recovery needs only the newest entries.
//!
//! `checkpoint_location` may be on HDFS (`hdfs://...`, through [`embedstream_core::store`]):
//! the logs are replaced the same way (a temporary name, closed, renamed; HDFS renames
//! atomically). HDFS has no lock a process holds until it dies, so there the epoch alone fences
//! a second driver; on YARN only one attempt of the application master runs at a time.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use embedstream_core::store;
use serde::{Deserialize, Serialize};

use embedstream_core::offsets::{PartitionOffsets, SourceIds};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path}: corrupt file: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error(
        "checkpoint_location {path} is in use by another driver ({holder}); a query runs one driver \
         at a time: stop that one first, or give this job another checkpoint_location"
    )]
    InUse { path: PathBuf, holder: String },
    #[error(
        "checkpoint_location {path}: a newer driver (epoch {theirs}) opened it after this one (epoch {ours}); \
         this driver stops before it writes"
    )]
    Fenced { path: PathBuf, ours: u64, theirs: u64 },
}

/// `offsets/<N>`: what batch N reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffsetLogEntry {
    pub version: u32,
    pub batch_id: u64,
    pub timestamp_ms: u64,
    pub start: PartitionOffsets,
    pub end: PartitionOffsets,
    /// The cluster and topic incarnations the offsets belong to.
    #[serde(default, skip_serializing_if = "SourceIds::is_empty")]
    pub sources: SourceIds,
}

/// `commits/<N>`: batch N is done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitLogEntry {
    pub version: u32,
    pub batch_id: u64,
    pub timestamp_ms: u64,
    pub input_rows: u64,
    pub embeddings: u64,
    pub dead_letters: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Metadata {
    query_id: String,
}

/// Where a query stands according to its checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// No batch was ever planned.
    Fresh,
    /// Batch `batch_id` was planned but not committed: run it again with these offsets.
    Rerun(OffsetLogEntry),
    /// The last batch was committed; the next one starts at its end offsets, in the topic
    /// incarnations it read.
    Continue { next_batch_id: u64, start: PartitionOffsets, sources: SourceIds },
}

pub struct Checkpoint {
    root: PathBuf,
    query_id: String,
    epoch: u64,
    /// Holds the exclusive lock on `lock` while the checkpoint is open (none on HDFS).
    _lock: Option<fs::File>,
}

impl Checkpoint {
    /// Opens (creating if needed) the checkpoint at `root`, keeping its query id; refused while
    /// another driver has it open.
    pub fn open(root: &Path) -> Result<Checkpoint, CheckpointError> {
        // The root keeps the umask's mode: Prometheus, perhaps as another user, reads
        // `monitoring/targets.json` there. The logs and the files of the query's state are the
        // owner's only.
        store::create_dir_all(root, false)
            .map_err(|source| CheckpointError::Io { path: root.to_path_buf(), source })?;
        for dir in ["offsets", "commits", "epochs"] {
            let d = root.join(dir);
            store::create_dir_all(&d, true).map_err(|source| CheckpointError::Io { path: d, source })?;
        }
        let lock = if store::is_hdfs(root) { None } else { Some(lock(root)?) };
        let epoch_path = root.join("epoch");
        let mut epoch = read_json::<u64>(&epoch_path)?.unwrap_or(0) + 1;
        // Claim the epoch: a name only one driver can create. Another driver that took it
        // first moves this one to the next.
        loop {
            let claim = root.join("epochs").join(epoch.to_string());
            let claimed = store::create_new(&claim, std::process::id().to_string().as_bytes())
                .map_err(|source| CheckpointError::Io { path: claim, source })?;
            if claimed {
                break;
            }
            epoch += 1;
        }
        write_atomic(&epoch_path, epoch.to_string().as_bytes())?;
        // Claims well below this one are history.
        for old in epoch.saturating_sub(16)..epoch.saturating_sub(8) {
            let _ = store::remove_file(&root.join("epochs").join(old.to_string()));
        }
        let meta_path = root.join("metadata");
        let query_id = match read_json::<Metadata>(&meta_path)? {
            Some(m) => m.query_id,
            None => {
                let id = new_query_id();
                write_atomic(&meta_path, &serde_json::to_vec(&Metadata { query_id: id.clone() }).unwrap())?;
                id
            }
        };
        Ok(Checkpoint { root: root.to_path_buf(), query_id, epoch, _lock: lock })
    }

    /// Fails when a newer driver has opened this checkpoint since this one did (see the
    /// module's header); every write of the query's state checks it first.
    pub fn fence(&self) -> Result<(), CheckpointError> {
        let theirs = read_json::<u64>(&self.root.join("epoch"))?.unwrap_or(0);
        if theirs != self.epoch {
            return Err(CheckpointError::Fenced { path: self.root.clone(), ours: self.epoch, theirs });
        }
        Ok(())
    }

    pub fn query_id(&self) -> &str {
        &self.query_id
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The names in one of the logs' directories.
    fn names(&self, dir: &str) -> Result<Vec<String>, CheckpointError> {
        let d = self.root.join(dir);
        let entries = store::list(&d).map_err(|source| CheckpointError::Io { path: d.clone(), source })?;
        Ok(entries.unwrap_or_default().into_iter().map(|e| e.name).collect())
    }

    fn latest_batch(&self, dir: &str) -> Result<Option<u64>, CheckpointError> {
        Ok(self.names(dir)?.iter().filter_map(|name| name.parse::<u64>().ok()).max())
    }

    pub fn recover(&self) -> Result<Recovery, CheckpointError> {
        let Some(last_planned) = self.latest_batch("offsets")? else {
            return Ok(Recovery::Fresh);
        };
        let entry = self.offsets(last_planned)?.ok_or_else(|| CheckpointError::Io {
            path: self.root.join("offsets").join(last_planned.to_string()),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "vanished while reading"),
        })?;
        if self.commit(last_planned)?.is_some() {
            Ok(Recovery::Continue { next_batch_id: last_planned + 1, start: entry.end.clone(), sources: entry.sources })
        } else {
            Ok(Recovery::Rerun(entry))
        }
    }

    /// The offsets a new query resolved from `starting_offsets`, once logged.
    pub fn initial_offsets(&self) -> Result<Option<PartitionOffsets>, CheckpointError> {
        read_json(&self.root.join("initial_offsets"))
    }

    pub fn write_initial_offsets(&self, offsets: &PartitionOffsets) -> Result<(), CheckpointError> {
        self.fence()?;
        write_atomic(&self.root.join("initial_offsets"), &serde_json::to_vec_pretty(offsets).unwrap())
    }

    pub fn offsets(&self, batch_id: u64) -> Result<Option<OffsetLogEntry>, CheckpointError> {
        read_json(&self.root.join("offsets").join(batch_id.to_string()))
    }

    pub fn commit(&self, batch_id: u64) -> Result<Option<CommitLogEntry>, CheckpointError> {
        read_json(&self.root.join("commits").join(batch_id.to_string()))
    }

    pub fn write_offsets(&self, entry: &OffsetLogEntry) -> Result<(), CheckpointError> {
        self.fence()?;
        write_atomic(
            &self.root.join("offsets").join(entry.batch_id.to_string()),
            &serde_json::to_vec_pretty(entry).unwrap(),
        )
    }

    pub fn write_commit(&self, entry: &CommitLogEntry) -> Result<(), CheckpointError> {
        self.fence()?;
        write_atomic(
            &self.root.join("commits").join(entry.batch_id.to_string()),
            &serde_json::to_vec_pretty(entry).unwrap(),
        )
    }

    /// Deletes the entries of batches before `keep_from` from both logs (and temporary files a
    /// crash left behind there); returns how many files went. Commit entries go before offset
    /// entries, so a crash in between leaves batches that recovery reads as committed or as
    /// not planned, never a commit without its plan.
    pub fn purge_before(&self, keep_from: u64) -> Result<usize, CheckpointError> {
        self.fence()?;
        let mut removed = 0;
        for dir in ["commits", "offsets"] {
            for name in self.names(dir)? {
                let batch = name.strip_suffix(".tmp").unwrap_or(&name).parse::<u64>();
                if batch.is_ok_and(|b| b < keep_from) {
                    let path = self.root.join(dir).join(&name);
                    store::remove_file(&path).map_err(|source| CheckpointError::Io { path, source })?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Takes the checkpoint's lock, writing who holds it into the file for a refused driver to name.
fn lock(root: &Path) -> Result<fs::File, CheckpointError> {
    let path = root.join("lock");
    let io = |source| CheckpointError::Io { path: path.clone(), source };
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = if holder.trim().is_empty() { "pid unknown".to_string() } else { holder.trim().to_string() };
            return Err(CheckpointError::InUse { path: root.to_path_buf(), holder });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let holder = format!("pid {} on {}, since {} ms", std::process::id(), host.trim(), now_ms());
    use std::io::Write;
    file.set_len(0).and_then(|()| file.write_all(holder.as_bytes())).map_err(io)?;
    Ok(file)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, CheckpointError> {
    match store::read(path) {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CheckpointError::Corrupt { path: path.to_path_buf(), source }),
        Ok(None) => Ok(None),
        Err(source) => Err(CheckpointError::Io { path: path.to_path_buf(), source }),
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the whole new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    store::write_atomic(path, bytes, true).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })
}

fn new_query_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}-{:x}", nanos, std::process::id())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use embedstream_core::offsets::TopicPartition;

    use super::*;

    fn offs(v: &[(&str, i32, i64)]) -> PartitionOffsets {
        v.iter().map(|&(t, p, o)| (TopicPartition::new(t, p), o)).collect()
    }

    /// Issue 14, finding 9: two drivers on one checkpoint. The second is refused while the
    /// first runs, naming it; a driver whose epoch a newer one passed (a file system without
    /// working locks) stops before it writes.
    #[test]
    fn two_drivers_never_share_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let first = Checkpoint::open(dir.path()).unwrap();
        let e = Checkpoint::open(dir.path()).err().expect("a second driver is refused");
        let message = e.to_string();
        assert!(
            message.contains("in use by another driver") && message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        let entry = OffsetLogEntry {
            version: 1,
            batch_id: 0,
            timestamp_ms: 0,
            start: offs(&[("t", 0, 0)]),
            end: offs(&[("t", 0, 5)]),
            sources: SourceIds::default(),
        };
        first.write_offsets(&entry).unwrap();

        // A newer driver got in without the lock: the first one writes nothing more.
        std::fs::write(dir.path().join("epoch"), "7").unwrap();
        let e = first.write_commit(&CommitLogEntry { batch_id: 0, ..Default::default() }).unwrap_err();
        assert!(matches!(e, CheckpointError::Fenced { ours: 1, theirs: 7, .. }), "{e}");
        assert!(first.commit(0).unwrap().is_none(), "nothing written once fenced");
        assert!(first.purge_before(5).is_err());
        drop(first);
        // Once the first has ended, the next driver opens it, at the next epoch.
        let next = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(next.epoch, 8);
        next.write_commit(&CommitLogEntry { batch_id: 0, ..Default::default() }).unwrap();
    }

    /// Issue 31, item 17: on HDFS (no lock) two drivers opening the checkpoint at once both
    /// read epoch N and both wrote N + 1, so both passed every fence. Here a driver has claimed
    /// epoch 2 and not yet written it to `epoch` when another opens the checkpoint: the other
    /// takes 3, and exactly one of them passes the fence.
    #[test]
    fn the_checkpoint_epoch_on_hdfs_with_a_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        drop(Checkpoint::open(dir.path()).unwrap());
        assert_eq!(fs::read_to_string(dir.path().join("epoch")).unwrap(), "1");
        // The racing driver's claim, its `epoch` write still to come.
        assert!(store::create_new(&dir.path().join("epochs/2"), b"other").unwrap());
        assert!(!store::create_new(&dir.path().join("epochs/2"), b"again").unwrap(), "a name is claimed once");
        let this = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(this.epoch, 3, "the claimed epoch is not shared");
        this.fence().unwrap();
        // The other driver writes its epoch last: this one is fenced, and only that one runs.
        fs::write(dir.path().join("epoch"), "2").unwrap();
        assert!(matches!(this.fence(), Err(CheckpointError::Fenced { ours: 3, theirs: 2, .. })));
    }

    /// Issue 14, finding 15: the checkpoint's logs and state are their owner's alone
    /// (directories 0700, files 0600).
    #[test]
    fn checkpoint_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cp");
        let cp = Checkpoint::open(&root).unwrap();
        cp.write_commit(&CommitLogEntry { batch_id: 0, ..Default::default() }).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for d in ["offsets", "commits", "epochs"] {
            assert_eq!(mode(&root.join(d)), 0o700, "{d}/");
        }
        for f in ["metadata", "epoch", "lock", "commits/0"] {
            assert_eq!(mode(&root.join(f)), 0o600, "{f}");
        }
    }

    #[test]
    fn recovery_follows_the_logs() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        let id = cp.query_id().to_string();
        assert_eq!(cp.recover().unwrap(), Recovery::Fresh);

        let entry = OffsetLogEntry {
            version: 1,
            batch_id: 0,
            timestamp_ms: 1,
            start: offs(&[("t", 0, 0), ("t", 1, 3)]),
            end: offs(&[("t", 0, 10), ("t", 1, 7)]),
            sources: SourceIds {
                cluster_id: "MkU3OEVBNTcwNTJENDM2Qk".into(),
                topic_ids: [("t".to_string(), "bJz3x0hBQ2S1PWsbrKm1yA".to_string())].into(),
            },
        };
        cp.write_offsets(&entry).unwrap();
        // Planned but not committed: the same offsets again, after a reopen too.
        drop(cp);
        let cp = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(cp.query_id(), id, "the query id survives a restart");
        assert_eq!(cp.recover().unwrap(), Recovery::Rerun(entry.clone()));

        cp.write_commit(&CommitLogEntry {
            version: 1,
            batch_id: 0,
            timestamp_ms: 2,
            input_rows: 14,
            embeddings: 14,
            dead_letters: 0,
        })
        .unwrap();
        assert_eq!(
            cp.recover().unwrap(),
            Recovery::Continue {
                next_batch_id: 1,
                start: offs(&[("t", 0, 10), ("t", 1, 7)]),
                sources: entry.sources.clone()
            }
        );
        assert!(!dir.path().join("commits/0.tmp").exists());
    }

    #[test]
    fn purging_keeps_the_newest_batches_and_recovery_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        for batch_id in 0..6u64 {
            let o = batch_id as i64 * 10;
            let entry = OffsetLogEntry {
                version: 1,
                batch_id,
                timestamp_ms: 1,
                start: offs(&[("t", 0, o)]),
                end: offs(&[("t", 0, o + 10)]),
                sources: SourceIds::default(),
            };
            cp.write_offsets(&entry).unwrap();
            if batch_id < 5 {
                let commit =
                    CommitLogEntry { version: 1, batch_id, timestamp_ms: 2, input_rows: 10, ..Default::default() };
                cp.write_commit(&commit).unwrap();
            }
        }
        fs::write(dir.path().join("offsets/1.tmp"), b"{cut short").unwrap();
        // 6 plans, 5 commits and the leftover temporary file are older than batch 3 or not.
        assert_eq!(cp.purge_before(3).unwrap(), 3 + 3 + 1);
        let names = |d: &str| {
            let mut v: Vec<String> = fs::read_dir(dir.path().join(d))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("offsets"), ["3", "4", "5"]);
        assert_eq!(names("commits"), ["3", "4"]);
        match cp.recover().unwrap() {
            Recovery::Rerun(entry) => assert_eq!(entry.batch_id, 5),
            other => panic!("batch 5 was planned and not committed: {other:?}"),
        }
        assert_eq!(cp.purge_before(3).unwrap(), 0, "purging again removes nothing");
    }

    #[test]
    fn corrupt_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(dir.path()).unwrap();
        fs::write(dir.path().join("offsets/0"), b"{not json").unwrap();
        let e = cp.recover().unwrap_err();
        assert!(e.to_string().contains("offsets/0"), "{e}");
    }
}
