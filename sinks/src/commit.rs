//! The sink's driver-side half: once every task of a batch succeeded, its committer publishes
//! what the tasks wrote, and before a batch runs it says whether an earlier run of this query
//! published it already (a driver that stopped between publishing and its commit log). The
//! batch loop calls it without knowing the sink's kind; [`crate::committer`] picks it. Its calls
//! are futures: a committer may talk to a server (pgvector's offsets table).

use embedstream_core::manifest::{ManifestError, ManifestFile};
use embedstream_core::offsets::{PartitionOffsets, SourceIds};
use futures::future::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("sink manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error(
        "sink.path {}: batch {} there was written by query {} (offsets {} to {}), not by this \
         checkpoint's query {}; a table belongs to the checkpoint that wrote it: give a new sink.path, or the old checkpoint_location",
        .0.path, .0.batch_id, .0.other, .0.start, .0.end, .0.ours
    )]
    ForeignTable(Box<ForeignTable>),
    #[error(
        "sink.path {table}: a task returned the file `{file}`, which is not a relative path inside the table; refused"
    )]
    OutsideTable { table: String, file: String },
    #[error("sink.path {path}: Delta table: {message}")]
    Delta { path: String, message: String },
    #[error(
        "sink.path {path}: the Delta table belongs to query {owner} (its transactions' appId), not to this \
         checkpoint's query {ours}; a table has one writing query: give a new sink.path, or the owner's checkpoint_location"
    )]
    DeltaOwner { path: String, owner: String, ours: String },
    #[error(transparent)]
    Sink(#[from] crate::SinkError),
}

/// A relative path of plain names (no `/` first, no `..`, no `.`): what tasks return is input
/// from other processes, and a table's log lists only files inside it.
pub(crate) fn inside_table(file: &str) -> bool {
    !file.is_empty() && std::path::Path::new(file).components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// A table whose manifest for this batch another query wrote.
#[derive(Debug)]
pub struct ForeignTable {
    pub path: String,
    pub batch_id: u64,
    pub other: String,
    pub ours: String,
    pub start: String,
    pub end: String,
}

/// One batch as the driver's offset log planned it, and the query that runs it.
pub struct BatchRange<'a> {
    pub batch_id: u64,
    pub query_id: &'a str,
    pub start: &'a PartitionOffsets,
    pub end: &'a PartitionOffsets,
    /// The cluster and topic incarnations the offsets are in.
    pub sources: &'a SourceIds,
}

/// What the sink holds of a batch an earlier run published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub embeddings: u64,
}

pub trait BatchCommitter: Send + Sync {
    /// What the sink holds of this batch from an earlier run of this query, or `None` when it
    /// must run.
    fn published<'a>(&'a self, batch: &'a BatchRange<'a>) -> BoxFuture<'a, Result<Option<Published>, CommitError>>;

    /// Makes the batch's output visible (`files`: what the successful attempts wrote, for file
    /// sinks); called once, after every task succeeded.
    fn publish<'a>(
        &'a self,
        batch: &'a BatchRange<'a>,
        files: &'a [ManifestFile],
    ) -> BoxFuture<'a, Result<(), CommitError>>;
}
