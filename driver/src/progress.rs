//! The progress log: after every batch, one [`ProgressRecord`] (its fields are in
//! `embedstream_core::progress`), appended as JSON lines to
//! `<checkpoint_location>/progress.jsonl` (on this machine: `JobSpec::local_state_dir` when the
//! checkpoint is on HDFS); the last 100 are also kept in memory. When the file
//! passes 8 MiB (about 4,000 batches of a one-topic query) it becomes `progress.jsonl.1`,
//! replacing the one before, so the history on disk is bounded and always holds the newest.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use embedstream_core::progress::{ProgressRecord, SourceProgress};

const KEPT_IN_MEMORY: usize = 100;
const ROTATE_AT_BYTES: u64 = 8 << 20;

pub fn progress_path(checkpoint: &Path) -> PathBuf {
    checkpoint.join("progress.jsonl")
}

/// Where `progress.jsonl` goes when it is full.
fn rotated_path(checkpoint: &Path) -> PathBuf {
    checkpoint.join("progress.jsonl.1")
}

pub struct ProgressLog {
    checkpoint: PathBuf,
    rotate_at: u64,
    recent: RecentProgress,
}

/// The newest progress records, shared with the page: read without touching the file.
#[derive(Clone, Default)]
pub struct RecentProgress(Arc<Mutex<VecDeque<ProgressRecord>>>);

impl RecentProgress {
    /// The last `n` records, oldest first.
    pub fn last(&self, n: usize) -> Vec<ProgressRecord> {
        let recent = self.0.lock().expect("not poisoned");
        recent.iter().skip(recent.len().saturating_sub(n)).cloned().collect()
    }
}

impl ProgressLog {
    /// The log in `checkpoint`, its memory filled with the newest records already on disk (a
    /// restarted query's page shows its history).
    pub fn new(checkpoint: &Path) -> ProgressLog {
        let on_disk = read_progress(checkpoint).unwrap_or_default();
        let kept = on_disk[on_disk.len().saturating_sub(KEPT_IN_MEMORY)..].iter().cloned().collect();
        ProgressLog {
            checkpoint: checkpoint.to_path_buf(),
            rotate_at: ROTATE_AT_BYTES,
            recent: RecentProgress(Arc::new(Mutex::new(kept))),
        }
    }

    /// The records kept in memory, for readers elsewhere.
    pub fn shared(&self) -> RecentProgress {
        self.recent.clone()
    }

    pub fn append(&mut self, record: ProgressRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&record).expect("progress serialises");
        line.push(b'\n');
        let path = progress_path(&self.checkpoint);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() + line.len() as u64 > self.rotate_at) {
            std::fs::rename(&path, rotated_path(&self.checkpoint))?;
        }
        std::fs::OpenOptions::new().create(true).append(true).open(&path)?.write_all(&line)?;
        let mut recent = self.recent.0.lock().expect("not poisoned");
        if recent.len() == KEPT_IN_MEMORY {
            recent.pop_front();
        }
        recent.push_back(record);
        Ok(())
    }

    /// The records kept in memory, oldest first.
    pub fn recent(&self) -> Vec<ProgressRecord> {
        self.recent.last(KEPT_IN_MEMORY)
    }
}

/// The progress records kept on disk (the rotated file, then the current one), oldest first,
/// skipping a line cut short by a crash.
pub fn read_progress(checkpoint: &Path) -> std::io::Result<Vec<ProgressRecord>> {
    let mut records = Vec::new();
    for path in [rotated_path(checkpoint), progress_path(checkpoint)] {
        match std::fs::read_to_string(path) {
            Ok(text) => records.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(records)
}

/// The records as a table for people.
pub fn format_table(records: &[ProgressRecord], header: bool) -> String {
    let mut out = String::new();
    if header {
        out.push_str(&format!(
            "{:>6}  {:<24}  {:>8}  {:>10}  {:>10}  {:>9}  {:>10}  {:>6}  {:>9}  {:>8}\n",
            "batch", "started", "rows", "input/s", "proc/s", "took ms", "embeddings", "dlq", "lag", "cached"
        ));
    }
    for r in records {
        out.push_str(&format!(
            "{:>6}  {:<24}  {:>8}  {:>10.1}  {:>10.1}  {:>9}  {:>10}  {:>6}  {:>9}  {:>8}\n",
            r.batch_id,
            r.timestamp,
            r.num_input_rows,
            r.input_rows_per_second,
            r.processed_rows_per_second,
            r.duration_ms.get("triggerExecution").copied().unwrap_or(0),
            r.embeddings,
            r.dead_letters,
            r.lag(),
            r.cache_hits
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedstream_core::offsets::PartitionOffsets;
    use std::collections::BTreeMap;

    fn record(batch_id: u64) -> ProgressRecord {
        ProgressRecord {
            id: "q".into(),
            name: "n".into(),
            batch_id,
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            num_input_rows: 10,
            input_rows_per_second: 5.0,
            processed_rows_per_second: 20.0,
            duration_ms: BTreeMap::from([("triggerExecution".into(), 500)]),
            sources: vec![SourceProgress {
                description: "t".into(),
                start_offset: PartitionOffsets::new(),
                end_offset: PartitionOffsets::new(),
                latest_offset: PartitionOffsets::new(),
                num_input_rows: 10,
                offsets_behind_latest: 7,
            }],
            embeddings: 9,
            dead_letters: 1,
            lost_offsets: 0,
            cache_hits: 0,
            cache_misses: 0,
            dead_letter_reasons: Default::default(),
            dead_letter_samples: Vec::new(),
            task_retries: 0,
            executors: BTreeMap::from([("exec-0".into(), 10)]),
            model_versions: Default::default(),
            unchanged: 0,
            model_inputs: 0,
        }
    }

    #[test]
    fn records_round_trip_through_the_file_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ProgressLog::new(dir.path());
        for b in 0..105 {
            log.append(record(b)).unwrap();
        }
        assert_eq!(log.recent().len(), 100);
        assert_eq!(log.recent()[0].batch_id, 5);
        let all = read_progress(dir.path()).unwrap();
        assert_eq!(all.len(), 105);
        assert_eq!(all[3], record(3));
        let line = std::fs::read_to_string(progress_path(dir.path())).unwrap();
        assert!(line.contains("\"batchId\":0") && line.contains("\"offsetsBehindLatest\":7"), "Spark's field names");
        let table = format_table(&all[..1], true);
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert!(table.contains("lag") && table.contains("cached"), "{table}");
        assert_eq!(row[row.len() - 2..], ["7", "0"], "lag, then cache hits: {table}");
    }

    #[test]
    fn a_full_file_is_rotated_and_the_newest_records_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ProgressLog::new(dir.path());
        // Batch ids of two digits: every line has the same length.
        let line = serde_json::to_vec(&record(10)).unwrap().len() as u64 + 1;
        log.rotate_at = 10 * line;
        for b in 10..35 {
            log.append(record(b)).unwrap();
        }
        // 25 records in files of 10: the oldest 10 are gone, the next 10 rotated, 5 current.
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len();
        assert_eq!((size("progress.jsonl.1"), size("progress.jsonl")), (10 * line, 5 * line));
        let ids: Vec<u64> = read_progress(dir.path()).unwrap().iter().map(|r| r.batch_id).collect();
        assert_eq!(ids, (20..35).collect::<Vec<_>>());
    }
}
