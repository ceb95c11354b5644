//! The Delta sink's batch committer, in the driver. A batch is published by one Delta commit
//! (operation `STREAMING UPDATE`, as Spark's Delta sink writes) that adds the files of the
//! batch's successful attempts and carries the transaction `txn { appId: query id, version:
//! batch id }`: a batch about to run whose version the table's transaction for this query has
//! reached was published by an earlier run, and is not run again. The table is made by the
//! first commit, its schema from the first file; it belongs to the query that made it
//! (`embedstream.queryId` in its properties), and another query is refused before its first
//! batch. Delta checkpoints are written every `sink.checkpoint_interval` commits.

use std::path::{Path, PathBuf};

use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, Transaction};
use deltalake_core::protocol::{DeltaOperation, OutputMode};
use deltalake_core::{DeltaTable, DeltaTableBuilder};
use embedstream_core::manifest::{self, ManifestFile};
use embedstream_core::spec::DeltaSinkSpec;
use embedstream_core::store;
use futures::future::BoxFuture;

use super::schema;
use crate::commit::{inside_table, BatchCommitter, BatchRange, CommitError, Published};
use crate::SinkError;

/// The table property that names the query a table belongs to.
pub const OWNER: &str = "embedstream.queryId";
/// The commit's own record of how many rows it added (`commitInfo`).
const ROWS: &str = "embedstream.rows";

pub struct DeltaCommitter {
    path: PathBuf,
    url: url::Url,
    query_id: String,
    partitions: Vec<String>,
    checkpoint_interval: u32,
}

impl DeltaCommitter {
    /// The committer of query `query_id`; a table that another query writes is refused here,
    /// before the first batch.
    pub async fn open(spec: &DeltaSinkSpec, query_id: &str) -> Result<DeltaCommitter, SinkError> {
        let path = spec.path.clone();
        store::create_dir_all(&path, false).map_err(|e| file_error(&path, e))?;
        let url = table_url(&path)?;
        let committer = DeltaCommitter {
            path,
            url,
            query_id: query_id.to_string(),
            partitions: schema::partition_columns(spec.partition_by),
            checkpoint_interval: spec.checkpoint_interval,
        };
        committer.load().await.map_err(|e| match e {
            CommitError::Sink(e) => e,
            other => SinkError::Table(other.to_string()),
        })?;
        Ok(committer)
    }

    fn delta_error(&self, e: impl std::fmt::Display) -> CommitError {
        CommitError::Delta { path: self.path.display().to_string(), message: e.to_string() }
    }

    /// The table at `path`, its log not read yet.
    fn unloaded(&self) -> Result<DeltaTable, CommitError> {
        DeltaTableBuilder::from_url(self.url.clone()).and_then(|b| b.build()).map_err(|e| self.delta_error(e))
    }

    /// The table at its newest version (None before the first commit), refused if another
    /// query owns it.
    async fn load(&self) -> Result<Option<DeltaTable>, CommitError> {
        let mut table = self.unloaded()?;
        if !table.verify_deltatable_existence().await.map_err(|e| self.delta_error(e))? {
            return Ok(None);
        }
        table.load().await.map_err(|e| self.delta_error(e))?;
        let state = table.snapshot().map_err(|e| self.delta_error(e))?;
        let owner = state.table_config().unknown_properties.get(OWNER).cloned().unwrap_or_default();
        if owner != self.query_id {
            return Err(CommitError::DeltaOwner {
                path: self.path.display().to_string(),
                owner: if owner.is_empty() { "another writer (no embedstream query id)".into() } else { owner },
                ours: self.query_id.clone(),
            });
        }
        Ok(Some(table))
    }

    /// Makes the table (version 0: its schema, partition columns and properties).
    async fn create(&self, first_file: &Path) -> Result<DeltaTable, CommitError> {
        let columns = schema::columns(first_file, &self.partitions)
            .map_err(|e| self.delta_error(format!("{}: {e}", first_file.display())))?;
        let table = self
            .unloaded()?
            .create()
            .with_columns(columns)
            .with_partition_columns(self.partitions.clone())
            // The owner is not a `delta.` property: delta-rs takes it when told not to raise.
            .with_configuration([(OWNER.to_string(), Some(self.query_id.clone()))])
            .with_raise_if_key_not_exists(false)
            .with_configuration_property(
                deltalake_core::TableProperty::CheckpointInterval,
                Some(self.checkpoint_interval.to_string()),
            )
            .await;
        match table {
            Ok(table) => Ok(table),
            // Made meanwhile (another driver of the same table): whose it is decides.
            Err(e) => self.load().await?.ok_or_else(|| self.delta_error(e)),
        }
    }

    async fn published_now(&self, batch: &BatchRange<'_>) -> Result<Option<Published>, CommitError> {
        let Some(table) = self.load().await? else { return Ok(None) };
        let state = table.snapshot().map_err(|e| self.delta_error(e))?;
        let version = state
            .transaction_version(table.log_store().as_ref(), &self.query_id)
            .await
            .map_err(|e| self.delta_error(e))?;
        if version.is_none_or(|v| v < batch.batch_id as i64) {
            return Ok(None);
        }
        // The commit that published it says how many rows it added.
        let mut embeddings = 0;
        for info in
            table.history(Some(2 * self.checkpoint_interval as usize + 10)).await.map_err(|e| self.delta_error(e))?
        {
            let epoch = info
                .operation_parameters
                .as_ref()
                .and_then(|p| p.get("epochId"))
                .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
            if epoch == Some(batch.batch_id as i64) {
                embeddings = info.info.get(ROWS).and_then(|v| v.as_u64()).unwrap_or(0);
                break;
            }
        }
        tracing::info!(batch_id = batch.batch_id, table = %self.path.display(), "batch already in the Delta table's log; not run again");
        // The driver that committed it may have died before deleting its failed attempts'
        // files: whatever of the batch the log does not hold goes now.
        let prefix = manifest::batch_prefix(batch.batch_id);
        let live: Vec<ManifestFile> = state
            .log_data()
            .iter()
            .map(|f| f.path().into_owned())
            .filter(|p| p.rsplit('/').next().is_some_and(|name| name.starts_with(&prefix)))
            .map(|path| ManifestFile { path, rows: 0 })
            .collect();
        if !live.is_empty() {
            let removed = manifest::remove_batch_orphans(&self.path, batch.batch_id, &live)?;
            if removed > 0 {
                tracing::info!(batch_id = batch.batch_id, removed, "deleted files of failed attempts");
            }
        }
        Ok(Some(Published { embeddings }))
    }

    async fn publish_now(&self, batch: &BatchRange<'_>, files: &[ManifestFile]) -> Result<(), CommitError> {
        if let Some(f) = files.iter().find(|f| !inside_table(&f.path)) {
            return Err(CommitError::OutsideTable { table: self.path.display().to_string(), file: f.path.clone() });
        }
        let table = match (self.load().await?, files.first()) {
            (Some(table), _) => table,
            (None, Some(first)) => self.create(&self.path.join(&first.path)).await?,
            // Nothing written yet, nothing to publish: the table is made with its first file.
            (None, None) => return Ok(()),
        };
        let mut actions = Vec::with_capacity(files.len());
        for f in files {
            let file = self.path.join(&f.path);
            let (size, modified) = store::stat(&file)
                .map_err(|e| CommitError::Sink(file_error(&file, e)))?
                .ok_or_else(|| CommitError::Sink(file_error(&file, "a task returned it, and it is not there")))?;
            actions.push(Action::Add(Add {
                path: f.path.clone(),
                partition_values: schema::partition_values(&f.path, &self.partitions),
                size: size as i64,
                modification_time: modified,
                data_change: true,
                stats: Some(serde_json::json!({ "numRecords": f.rows }).to_string()),
                ..Default::default()
            }));
        }
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(&self.query_id, batch.batch_id as i64))
            .with_metadata([(ROWS.to_string(), serde_json::json!(rows))])
            .with_create_checkpoint(true);
        let operation = DeltaOperation::StreamingUpdate {
            output_mode: OutputMode::Append,
            query_id: self.query_id.clone(),
            epoch_id: batch.batch_id as i64,
        };
        let state = table.snapshot().map_err(|e| self.delta_error(e))?;
        let committed = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(state), table.log_store(), operation)
            .await
            .map_err(|e| self.delta_error(e))?;
        tracing::info!(
            batch_id = batch.batch_id,
            version = committed.version(),
            files = files.len(),
            rows,
            "batch committed to the Delta table"
        );
        let removed = manifest::remove_batch_orphans(&self.path, batch.batch_id, files)?;
        if removed > 0 {
            tracing::info!(batch_id = batch.batch_id, removed, "deleted files of failed attempts");
        }
        Ok(())
    }
}

/// The table's URL for delta-rs: `file:///...` for a local directory, the `hdfs://` path as it
/// is (delta-rs's HDFS object store, `deltalake-hdfs`, registered here once).
/// The newest data file of the Delta table at `spec.path` (by name: names begin with the
/// zero-padded batch id), None before the table's first commit. The table's owner is not
/// checked here: the model version check reads it before the query opens the table.
pub async fn last_file(spec: &DeltaSinkSpec) -> Result<Option<PathBuf>, SinkError> {
    let path = spec.path.clone();
    let url = table_url(&path)?;
    let failed = |e: deltalake_core::DeltaTableError| SinkError::Table(format!("sink.path {}: {e}", path.display()));
    let mut table = DeltaTableBuilder::from_url(url).and_then(|b| b.build()).map_err(failed)?;
    if !table.verify_deltatable_existence().await.map_err(failed)? {
        return Ok(None);
    }
    table.load().await.map_err(failed)?;
    // delta-rs gives a local file as its path and an HDFS one as its `hdfs://` URI: both are
    // what `store::read` takes.
    let newest =
        table.get_file_uris().map_err(failed)?.map(PathBuf::from).max_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(newest)
}

fn table_url(path: &Path) -> Result<url::Url, SinkError> {
    if !store::is_hdfs(path) {
        return url::Url::from_directory_path(path).map_err(|()| file_error(path, "not an absolute path"));
    }
    static HDFS: std::sync::Once = std::sync::Once::new();
    HDFS.call_once(|| deltalake_hdfs::register_handlers(None));
    let text = path.to_string_lossy();
    url::Url::parse(&format!("{}/", text.trim_end_matches('/'))).map_err(|e| file_error(path, e))
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> SinkError {
    SinkError::File { path: path.display().to_string(), message: e.to_string() }
}

impl BatchCommitter for DeltaCommitter {
    fn published<'a>(&'a self, batch: &'a BatchRange<'a>) -> BoxFuture<'a, Result<Option<Published>, CommitError>> {
        Box::pin(self.published_now(batch))
    }

    fn publish<'a>(
        &'a self,
        batch: &'a BatchRange<'a>,
        files: &'a [ManifestFile],
    ) -> BoxFuture<'a, Result<(), CommitError>> {
        Box::pin(self.publish_now(batch, files))
    }
}
