//! The Parquet sink's batch committer: a batch is published by its manifest in
//! `<table>/_embedstream_log/`, written once every task of the batch committed its files; a
//! manifest found for a batch about to run means an earlier run of this query published it.

use std::path::PathBuf;

use embedstream_core::manifest::{self, BatchManifest, ManifestFile};

use crate::commit::{BatchCommitter, BatchRange, CommitError, ForeignTable, Published};

pub struct ManifestCommitter {
    table: PathBuf,
}

impl ManifestCommitter {
    pub fn new(table: PathBuf) -> ManifestCommitter {
        ManifestCommitter { table }
    }
}

impl BatchCommitter for ManifestCommitter {
    fn published(&self, batch: &BatchRange<'_>) -> Result<Option<Published>, CommitError> {
        let Some(m) = manifest::committed(&self.table, batch.batch_id)? else { return Ok(None) };
        if !m.written_by(batch.query_id, batch.start, batch.end) {
            return Err(CommitError::ForeignTable(Box::new(ForeignTable {
                path: self.table.display().to_string(),
                batch_id: batch.batch_id,
                other: m.query_id.clone(),
                ours: batch.query_id.to_string(),
                start: m.start.to_string(),
                end: m.end.to_string(),
            })));
        }
        // The driver may have stopped between the manifest and deleting the files of failed
        // attempts.
        manifest::remove_orphans(&self.table, &m)?;
        tracing::info!(
            batch_id = batch.batch_id,
            files = m.files.len(),
            "batch already in the sink's manifest; not run again"
        );
        Ok(Some(Published { embeddings: m.files.iter().map(|f| f.rows).sum() }))
    }

    fn publish(&self, batch: &BatchRange<'_>, files: &[ManifestFile]) -> Result<(), CommitError> {
        let removed = manifest::commit(
            &self.table,
            &BatchManifest {
                version: 1,
                batch_id: batch.batch_id,
                query_id: batch.query_id.to_string(),
                start: batch.start.clone(),
                end: batch.end.clone(),
                files: files.to_vec(),
            },
        )?;
        if removed > 0 {
            tracing::info!(batch_id = batch.batch_id, removed, "deleted files of failed attempts");
        }
        Ok(())
    }
}
