//! `[sink] kind = "kafka"`: one record per embedding in `topic`, in the vector format asked for.

use serde::{Deserialize, Serialize};

use crate::spec::kafka::KafkaProperties;
use crate::spec::SpecError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorFormat {
    /// The vector as little-endian f32, 4 bytes per dimension.
    F32le,
    /// `{"embedding":[...]}`
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSpec {
    /// Default: the source's bootstrap servers (also where the dead-letter topic is).
    #[serde(default)]
    pub bootstrap_servers: Option<String>,
    /// The output topic.
    #[serde(default)]
    pub topic: String,
    #[serde(default = "default_format")]
    pub format: VectorFormat,
    /// Where records the model cannot take go, with an `es.error` header. Default `<topic>-dlq`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// librdkafka properties of the producer to the output topic's cluster (`[sink.kafka]`).
    /// Default: the source's, when the sink names no `bootstrap_servers` of its own.
    #[serde(default, skip_serializing_if = "KafkaProperties::is_empty")]
    pub kafka: KafkaProperties,
    /// The dead-letter producer's own properties (`[sink.dead_letter_kafka]`); default: the
    /// sink's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_kafka: Option<KafkaProperties>,
}

fn default_format() -> VectorFormat {
    VectorFormat::F32le
}

impl KafkaSinkSpec {
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.topic.is_empty() {
            return Err(SpecError::new("sink.topic", "must not be empty (kind = \"kafka\")"));
        }
        Ok(())
    }
}
