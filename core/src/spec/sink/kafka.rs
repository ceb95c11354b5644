//! `[sink] kind = "kafka"`: one record per embedding in `topic`, in the vector format asked for.

use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorFormat {
    /// The vector as little-endian f32, 4 bytes per dimension.
    F32le,
    /// `{"embedding": [...]}` and the `columns` fields.
    Json,
    /// Avro in the Confluent wire format, its schema registered under `<topic>-value` in
    /// `[input.schema_registry]`: the vector (`array<float>`), the model, the origin (topic,
    /// partition, offset) and the `columns` fields.
    Avro,
}

/// What a consumer of the output topic sees of a task that was retried or a batch run again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// A retried task's records may be written again (the producer is idempotent, the task is
    /// not).
    #[default]
    AtLeastOnce,
    /// Each task's records, dead letters and the consumer group's offset are written in one
    /// Kafka transaction (`read_committed` consumers see every record once).
    ExactlyOnce,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSpec {
    /// The output topic.
    #[serde(default)]
    pub topic: String,
    #[serde(default = "default_format")]
    pub format: VectorFormat,
    #[serde(default)]
    pub guarantee: Guarantee,
    /// Input fields written beside the vector (format "json" or "avro"): "value" (the text) and any of
    /// `[input]`'s fields and headers, typed by `[input.types]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// With `skip_unchanged`: the compacted topic that keeps each key's last input fingerprint
    /// (in the transaction of its output, exactly once). Default `<topic>-state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_topic: Option<String>,
}

fn default_format() -> VectorFormat {
    VectorFormat::F32le
}

impl KafkaSinkSpec {
    /// Where each key's last input fingerprint is kept (`skip_unchanged`).
    pub fn state_topic(&self) -> String {
        self.state_topic.clone().unwrap_or_else(|| format!("{}-state", self.topic))
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.topic.is_empty() {
            return Err(SpecError::new("sink.topic", "must not be empty (kind = \"kafka\")"));
        }
        if self.format == VectorFormat::F32le && !self.columns.is_empty() {
            return Err(SpecError::new(
                "sink.columns",
                "an f32le value is the vector alone: set sink.format = \"json\" to write fields beside it",
            ));
        }
        if self.state_topic.as_ref().is_some_and(|t| t.is_empty() || *t == self.topic) {
            return Err(SpecError::new("sink.state_topic", "must be non-empty and differ from `sink.topic`"));
        }
        Ok(())
    }
}
