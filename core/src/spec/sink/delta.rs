//! `[sink] kind = "delta"`: a Delta Lake table under `path`, one Delta commit per batch carrying
//! the query's transaction (`txn`: the query's id, the batch id), so that Spark, Trino, DuckDB,
//! pandas and every other Delta reader see each record once. The columns and partition
//! directories are the Parquet sink's. Dead letters still go to a Kafka topic.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::parquet::{ParquetSinkSpec, PartitionBy};
use crate::spec::SpecError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSinkSpec {
    /// The table's directory: absolute, or `hdfs://NAMENODE:PORT/path` (made before the first
    /// batch; its log with the first commit).
    pub path: PathBuf,
    #[serde(default = "default_partition_by")]
    pub partition_by: PartitionBy,
    /// Input fields written beside the embedding, as for Parquet.
    #[serde(default)]
    pub columns: Vec<String>,
    /// A log checkpoint every this many commits (the table's `delta.checkpointInterval`, as
    /// Spark's Delta writer sets it), so that readers do not replay every JSON commit.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u32,
}

fn default_partition_by() -> PartitionBy {
    PartitionBy::Date
}

fn default_checkpoint_interval() -> u32 {
    10
}

impl DeltaSinkSpec {
    /// The data files' layout, which is the Parquet sink's.
    pub fn files(&self) -> ParquetSinkSpec {
        ParquetSinkSpec { path: self.path.clone(), partition_by: self.partition_by, columns: self.columns.clone() }
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.path.to_str().is_some_and(|p| p.starts_with("hdfs:///")) {
            return Err(SpecError::new(
                "sink.path",
                "a Delta table on HDFS names its NameNode or name service (hdfs://NAMENODE:PORT/path or hdfs://NAMESERVICE/path)",
            ));
        }
        if !crate::store::is_hdfs(&self.path) && !self.path.is_absolute() {
            return Err(SpecError::new("sink.path", "must be an absolute directory (kind = \"delta\")"));
        }
        if self.checkpoint_interval == 0 {
            return Err(SpecError::new("sink.checkpoint_interval", "must be at least 1 (commits between checkpoints)"));
        }
        self.files().validate()
    }
}
