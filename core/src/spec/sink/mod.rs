//! `[sink]`: where embeddings go, one variant per sink, chosen by `kind`. Each variant's keys
//! live in its own module ([`kafka`], [`parquet`]); a new sink is one more variant and module
//! here, its writer in `embedstream_executor::sink` and its committer in
//! `embedstream_driver::committer`.
//!
//! The section is parsed by hand on `kind`, then the variant's struct with serde, so that an
//! error inside it still names its key (`sink.format`): serde's internally tagged enums lose
//! the path inside the variant.

pub mod kafka;
pub mod parquet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

pub use kafka::{KafkaSinkSpec, VectorFormat};
pub use parquet::{ParquetSinkSpec, PartitionBy};

use super::kafka::KafkaProperties;
use super::source::SourceSpec;
use super::SpecError;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkSpec {
    /// One record per embedding in `topic` (at-least-once across task retries).
    Kafka(KafkaSinkSpec),
    /// Parquet files under `path`, published per batch by a manifest (exactly-once).
    Parquet(ParquetSinkSpec),
}

impl SinkSpec {
    /// The output topic, for a sink that writes one.
    pub fn output_topic(&self) -> Option<&str> {
        match self {
            SinkSpec::Kafka(k) => Some(&k.topic),
            SinkSpec::Parquet(_) => None,
        }
    }

    /// The sink's own broker (also where the dead-letter topic is), if it names one.
    pub fn bootstrap_servers(&self) -> Option<&str> {
        match self {
            SinkSpec::Kafka(k) => k.bootstrap_servers.as_deref(),
            SinkSpec::Parquet(p) => p.bootstrap_servers.as_deref(),
        }
    }

    /// `[sink.kafka]`: the sink's client properties as written (see `JobSpec::sink_kafka`).
    pub fn kafka(&self) -> &KafkaProperties {
        match self {
            SinkSpec::Kafka(k) => &k.kafka,
            SinkSpec::Parquet(p) => &p.kafka,
        }
    }

    /// `[sink.dead_letter_kafka]`, if given.
    pub fn dead_letter_kafka(&self) -> Option<&KafkaProperties> {
        match self {
            SinkSpec::Kafka(k) => k.dead_letter_kafka.as_ref(),
            SinkSpec::Parquet(p) => p.dead_letter_kafka.as_ref(),
        }
    }

    /// The dead-letter topic, as the spec names it or by the sink's default.
    pub fn dead_letter_topic(&self, query: &str) -> String {
        match self {
            SinkSpec::Kafka(k) => k.dead_letter_topic.clone().unwrap_or_else(|| format!("{}-dlq", k.topic)),
            SinkSpec::Parquet(p) => p.dead_letter_topic.clone().unwrap_or_else(|| format!("{query}-dlq")),
        }
    }

    /// The `[sink]` table, keys named `sink.<key>` in errors.
    pub fn from_value(value: toml::Value) -> Result<SinkSpec, SpecError> {
        let toml::Value::Table(mut table) = value else {
            return Err(SpecError::new("sink", "must be a table with a `kind`"));
        };
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(_) => return Err(SpecError::new("sink.kind", "must be a string: \"kafka\" or \"parquet\"")),
            None => return Err(SpecError::new("sink.kind", "missing: \"kafka\" or \"parquet\"")),
        };
        match kind.as_str() {
            "kafka" => variant(table).map(SinkSpec::Kafka),
            "parquet" if !table.contains_key("path") => {
                Err(SpecError::new("sink.path", "must be an absolute directory (kind = \"parquet\")"))
            }
            "parquet" => variant(table).map(SinkSpec::Parquet),
            other => {
                Err(SpecError::new("sink.kind", format!("unknown variant `{other}`, expected `kafka` or `parquet`")))
            }
        }
    }

    pub(super) fn validate(&self, query: &str, source: &SourceSpec) -> Result<(), SpecError> {
        match self {
            SinkSpec::Kafka(k) => k.validate()?,
            SinkSpec::Parquet(p) => p.validate()?,
        }
        self.kafka().validate("sink.kafka")?;
        if let Some(dead) = self.dead_letter_kafka() {
            dead.validate("sink.dead_letter_kafka")?;
        }
        if self.bootstrap_servers().is_some_and(|b| b.trim().is_empty()) {
            return Err(SpecError::new("sink.bootstrap_servers", "must not be empty"));
        }
        let dlq = self.dead_letter_topic(query);
        if dlq.is_empty() || Some(dlq.as_str()) == self.output_topic() {
            return Err(SpecError::new("sink.dead_letter_topic", "must be non-empty and differ from `sink.topic`"));
        }
        let topics = [("sink.topic", self.output_topic().unwrap_or_default()), ("sink.dead_letter_topic", &dlq)];
        for (key, topic) in topics.into_iter().filter(|(_, t)| !t.is_empty()) {
            if source.reads_topic(topic) {
                return Err(SpecError::new(
                    key,
                    format!("`{topic}` is also a source topic: the query would read its own output"),
                ));
            }
        }
        Ok(())
    }
}

/// One variant's table, with its errors' keys under `sink.`.
fn variant<T: DeserializeOwned>(table: toml::Table) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { "sink".to_string() } else { format!("sink.{path}") };
        SpecError { key, message: e.into_inner().to_string() }
    })
}

impl<'de> Deserialize<'de> for SinkSpec {
    /// As [`SinkSpec::from_value`]; `JobSpec::from_toml` reports its errors with their key.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        SinkSpec::from_value(value).map_err(|e| serde::de::Error::custom(e.message))
    }
}
