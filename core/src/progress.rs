//! A progress record: after every batch, the fields Spark users know from
//! `StreamingQueryProgress` (batchId, numInputRows, inputRowsPerSecond, processedRowsPerSecond,
//! durationMs by phase, per-source start/end/latest offsets) and embedstream's own (embeddings,
//! dead letters, lost offsets, rows per executor). The driver writes them as JSON lines
//! (`embedstream_driver::progress`); the admin API sends them as typed messages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::offsets::PartitionOffsets;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    pub description: String,
    pub start_offset: PartitionOffsets,
    pub end_offset: PartitionOffsets,
    pub latest_offset: PartitionOffsets,
    pub num_input_rows: u64,
    /// Records between the batch's end and the latest offsets when it was planned.
    pub offsets_behind_latest: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressRecord {
    pub id: String,
    pub name: String,
    pub batch_id: u64,
    /// When the batch started, RFC 3339.
    pub timestamp: String,
    pub num_input_rows: u64,
    pub input_rows_per_second: f64,
    pub processed_rows_per_second: f64,
    /// plan, wal, commit and triggerExecution: driver wall time; read, infer, sink: summed over tasks.
    pub duration_ms: BTreeMap<String, u64>,
    pub sources: Vec<SourceProgress>,
    pub embeddings: u64,
    pub dead_letters: u64,
    /// Offsets the broker deleted before the query read them, skipped (`fail_on_data_loss =
    /// false`). Absent in records written before it existed.
    #[serde(default)]
    pub lost_offsets: u64,
    pub task_retries: u64,
    /// Input rows each executor processed in this batch.
    pub executors: BTreeMap<String, u64>,
    /// Texts the models' embedding caches answered (`model.cache_bytes`), and those they sent to
    /// the model. Absent in records written before them.
    #[serde(default)]
    pub cache_hits: u64,
    #[serde(default)]
    pub cache_misses: u64,
    /// Dead letters by the class of their reason ([`reason_class`]). Absent in records written
    /// before it, and when the batch had none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dead_letter_reasons: BTreeMap<String, u64>,
    /// The batch's last few dead letters (at most [`DEAD_LETTER_SAMPLES`]), with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letter_samples: Vec<DeadLetterSample>,
}

/// Dead letters a task or a batch reports one by one, the newest kept.
pub const DEAD_LETTER_SAMPLES: usize = 5;

/// A record that went to the dead-letter topic: where it came from, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSample {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// What dead letters are counted by: the reason up to its first `": "`, so that reasons which
/// differ only in their details (an offset in the text, a parser's column) count together.
pub fn reason_class(reason: &str) -> &str {
    reason.split(": ").next().unwrap_or(reason)
}

/// Keeps the newest [`DEAD_LETTER_SAMPLES`] of `samples`.
pub fn keep_newest(samples: &mut Vec<DeadLetterSample>) {
    let over = samples.len().saturating_sub(DEAD_LETTER_SAMPLES);
    samples.drain(..over);
}

impl ProgressRecord {
    pub fn lag(&self) -> i64 {
        self.sources.iter().map(|s| s.offsets_behind_latest).sum()
    }
}
