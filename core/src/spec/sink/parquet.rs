//! `[sink] kind = "parquet"`: Parquet files under `path`, published per batch by a manifest in
//! `<path>/_embedstream_log/` (exactly-once). Dead letters still go to a Kafka topic.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spec::kafka::KafkaProperties;
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
    /// The broker of the dead-letter topic. Default: the source's bootstrap servers.
    #[serde(default)]
    pub bootstrap_servers: Option<String>,
    /// The table's directory, absolute.
    pub path: PathBuf,
    #[serde(default = "default_partition_by")]
    pub partition_by: PartitionBy,
    /// Input columns written beside the embedding: only "value" (the text).
    #[serde(default)]
    pub columns: Vec<String>,
    /// Where records the model cannot take go. Default `<name>-dlq`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// librdkafka properties of the producer to the dead-letter topic's cluster (`[sink.kafka]`). Default:
    /// the source's, when the sink names no `bootstrap_servers` of its own.
    #[serde(default, skip_serializing_if = "KafkaProperties::is_empty")]
    pub kafka: KafkaProperties,
    /// The dead-letter producer's own properties (`[sink.dead_letter_kafka]`); default: the
    /// sink's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_kafka: Option<KafkaProperties>,
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
        if !self.path.is_absolute() {
            return Err(SpecError::new("sink.path", "must be an absolute directory (kind = \"parquet\")"));
        }
        if let Some(c) = self.columns.iter().find(|c| c.as_str() != "value") {
            return Err(SpecError::new(
                "sink.columns",
                format!("unknown input column `{c}`; the one column to add is \"value\""),
            ));
        }
        Ok(())
    }
}
