//! `[sink] kind = "parquet"`: Parquet files under `path`, published per batch by a manifest in
//! `<path>/_embedstream_log/` (exactly-once). Dead letters still go to a Kafka topic.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// Hive-style partition directories, from each record's Kafka timestamp (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionBy {
    /// `dt=YYYY-MM-DD/`
    Date,
    /// `dt=YYYY-MM-DD/hr=HH/`
    Hour,
    /// All files directly under `path`.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkSpec {
    /// The table's directory, absolute.
    pub path: PathBuf,
    #[serde(default = "default_partition_by")]
    pub partition_by: PartitionBy,
    /// Input fields written beside the embedding: "value" (the text) and any of `[input]`'s
    /// fields and headers, typed by `[input.types]`.
    #[serde(default)]
    pub columns: Vec<String>,
}

fn default_partition_by() -> PartitionBy {
    PartitionBy::Date
}

impl ParquetSinkSpec {
    /// Whether the text goes into the table beside its embedding.
    pub fn with_value(&self) -> bool {
        self.columns.iter().any(|c| c == "value")
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        crate::spec::check_location("sink.path", &self.path)?;
        if !crate::store::is_hdfs(&self.path) && !self.path.is_absolute() {
            return Err(SpecError::new("sink.path", "must be an absolute directory (kind = \"parquet\")"));
        }
        Ok(())
    }
}
