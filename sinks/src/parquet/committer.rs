//! The Parquet sink's batch committer: a batch is published by its manifest in
//! `<table>/_embedstream_log/`, written once every task of the batch committed its files; a
//! manifest found for a batch about to run means an earlier run of this query published it.

use std::path::PathBuf;

use embedstream_core::manifest::{self, BatchManifest, ManifestFile};
use futures::future::BoxFuture;

use crate::commit::{inside_table, BatchCommitter, BatchRange, CommitError, ForeignTable, Published};

pub struct ManifestCommitter {
    table: PathBuf,
}

impl ManifestCommitter {
    pub fn new(table: PathBuf) -> ManifestCommitter {
        ManifestCommitter { table }
    }
}

impl ManifestCommitter {
    fn published_now(&self, batch: &BatchRange<'_>) -> Result<Option<Published>, CommitError> {
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

    fn publish_now(&self, batch: &BatchRange<'_>, files: &[ManifestFile]) -> Result<(), CommitError> {
        // What tasks return is input from other processes: a manifest lists only files inside
        // the table, which readers open and the clean-up never reaches beyond.
        if let Some(f) = files.iter().find(|f| !inside_table(&f.path)) {
            return Err(CommitError::OutsideTable { table: self.table.display().to_string(), file: f.path.clone() });
        }
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

/// The manifests are files written in place: the calls finish before they return.
impl BatchCommitter for ManifestCommitter {
    fn published<'a>(&'a self, batch: &'a BatchRange<'a>) -> BoxFuture<'a, Result<Option<Published>, CommitError>> {
        Box::pin(std::future::ready(self.published_now(batch)))
    }

    fn publish<'a>(
        &'a self,
        batch: &'a BatchRange<'a>,
        files: &'a [ManifestFile],
    ) -> BoxFuture<'a, Result<(), CommitError>> {
        Box::pin(std::future::ready(self.publish_now(batch, files)))
    }
}

#[cfg(test)]
mod tests {
    use embedstream_core::offsets::{PartitionOffsets, TopicPartition};

    use super::*;

    /// Issue 14, finding 10: a manifest never lists a file outside its table.
    #[test]
    fn files_outside_the_table_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let committer = ManifestCommitter::new(dir.path().to_path_buf());
        let offsets: PartitionOffsets = [(TopicPartition::new("t", 0), 1)].into_iter().collect();
        let batch =
            BatchRange { batch_id: 0, query_id: "q", start: &offsets, end: &offsets, sources: &Default::default() };
        for bad in ["/etc/passwd", "../other/part.parquet", "dt=2026-01-01/../../x", ""] {
            let files = [ManifestFile { path: bad.into(), rows: 1 }];
            let e = committer.publish_now(&batch, &files).unwrap_err();
            assert!(matches!(e, CommitError::OutsideTable { .. }), "{bad}: {e}");
        }
        assert!(manifest::committed(dir.path(), 0).unwrap().is_none(), "nothing published");
        let good = [ManifestFile { path: "dt=2026-01-01/part-0.parquet".into(), rows: 1 }];
        std::fs::create_dir_all(dir.path().join("dt=2026-01-01")).unwrap();
        std::fs::write(dir.path().join("dt=2026-01-01/part-0.parquet"), b"x").unwrap();
        committer.publish_now(&batch, &good).unwrap();
        assert_eq!(manifest::committed(dir.path(), 0).unwrap().unwrap().files, good);
    }
}
