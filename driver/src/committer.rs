//! The sink's driver-side half: once every task of a batch succeeded, its committer publishes
//! what the tasks wrote, and before a batch runs it says whether an earlier run of this query
//! published it already. The batch loop calls it without knowing the sink's kind.
//!
//! - Kafka: nothing to publish (records are visible once acknowledged; at-least-once).
//! - Parquet: the batch's manifest (`embedstream_core::manifest`), exactly-once.

use std::path::PathBuf;

use embedstream_core::manifest::{self, BatchManifest, ManifestError, ManifestFile};
use embedstream_core::spec::SinkSpec;
use embedstream_core::JobSpec;

use crate::checkpoint::OffsetLogEntry;
use crate::crash::{self, CrashPoint};
use crate::scheduler::BatchStats;

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

pub trait BatchCommitter: Send + Sync {
    /// What the sink holds of this batch from an earlier run of this query (a driver that
    /// stopped between publishing and its commit log), or `None` when it must run.
    fn published(&self, entry: &OffsetLogEntry, query_id: &str) -> Result<Option<BatchStats>, CommitError>;

    /// Makes the batch's output visible; called once, after every task succeeded.
    fn publish(&self, entry: &OffsetLogEntry, query_id: &str, stats: &BatchStats) -> Result<(), CommitError>;
}

/// The committer of the spec's sink.
pub fn for_sink(spec: &JobSpec) -> Box<dyn BatchCommitter> {
    match &spec.sink {
        SinkSpec::Kafka(_) => Box::new(NothingToPublish),
        SinkSpec::Parquet(p) => Box::new(ManifestCommitter { table: p.path.clone() }),
    }
}

/// A sink whose writes are visible as soon as they are acknowledged (Kafka).
struct NothingToPublish;

impl BatchCommitter for NothingToPublish {
    fn published(&self, _: &OffsetLogEntry, _: &str) -> Result<Option<BatchStats>, CommitError> {
        Ok(None)
    }

    fn publish(&self, _: &OffsetLogEntry, _: &str, _: &BatchStats) -> Result<(), CommitError> {
        Ok(())
    }
}

/// A file sink: a batch is published by its manifest in `<table>/_embedstream_log/`.
struct ManifestCommitter {
    table: PathBuf,
}

impl BatchCommitter for ManifestCommitter {
    fn published(&self, entry: &OffsetLogEntry, query_id: &str) -> Result<Option<BatchStats>, CommitError> {
        let Some(m) = manifest::committed(&self.table, entry.batch_id)? else { return Ok(None) };
        if !m.written_by(query_id, &entry.start, &entry.end) {
            return Err(CommitError::ForeignTable(Box::new(ForeignTable {
                path: self.table.display().to_string(),
                batch_id: entry.batch_id,
                other: m.query_id.clone(),
                ours: query_id.to_string(),
                start: m.start.to_string(),
                end: m.end.to_string(),
            })));
        }
        // The driver may have stopped between the manifest and deleting the files of failed
        // attempts.
        manifest::remove_orphans(&self.table, &m)?;
        tracing::info!(
            batch_id = entry.batch_id,
            files = m.files.len(),
            "batch already in the sink's manifest; not run again"
        );
        Ok(Some(BatchStats { embeddings: m.files.iter().map(|f| f.rows).sum(), ..Default::default() }))
    }

    fn publish(&self, entry: &OffsetLogEntry, query_id: &str, stats: &BatchStats) -> Result<(), CommitError> {
        let files = stats.files.iter().map(|f| ManifestFile { path: f.path.clone(), rows: f.rows }).collect();
        let removed = manifest::commit(
            &self.table,
            &BatchManifest {
                version: 1,
                batch_id: entry.batch_id,
                query_id: query_id.to_string(),
                start: entry.start.clone(),
                end: entry.end.clone(),
                files,
            },
        )?;
        if removed > 0 {
            tracing::info!(batch_id = entry.batch_id, removed, "deleted files of failed attempts");
        }
        crash::point(CrashPoint::AfterManifest, entry.batch_id);
        Ok(())
    }
}
