//! What an executor says of itself in each heartbeat: its model processes and their memory,
//! worker restarts, and what it embedded since it started. The driver keeps the last report of
//! each executor for its page (`/api/executors`).

use serde::{Deserialize, Serialize};

/// One executor's report, as of its last heartbeat. Counters run from the executor's start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutorHealth {
    /// The model daemon and its forked workers, each with its memory.
    pub workers: Vec<WorkerHealth>,
    /// Model workers replaced after they died.
    pub worker_restarts: u64,
    /// Embeddings written to the sink.
    pub embeddings: u64,
    /// Texts the embedding caches answered, and those they sent to the model (`model.cache_bytes`;
    /// both 0 without a cache).
    pub cache_hits: u64,
    pub cache_misses: u64,
}

/// A process that runs a model: `daemon` (the process that loaded it) or a worker (`0`, `1`...),
/// prefixed by the model's name where an executor runs several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerHealth {
    pub name: String,
    pub pid: u32,
    /// Proportional set size: its private memory plus its share of the pages it shares with the
    /// daemon and the other workers (the model, copy-on-write).
    pub pss_bytes: u64,
}
