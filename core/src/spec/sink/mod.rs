//! `[sink]`: where embeddings go. The keys every sink has ([`SinkCommon`]: its cluster and its
//! dead letters) are parsed once; the rest by the kind's variant of [`SinkKind`], chosen by
//! `kind`, whose keys live in its own module ([`kafka`], [`parquet`], [`delta`]). A new sink is one more
//! variant and module here, and its folder in the `embedstream-sinks` crate (writer and
//! committer). The spec stays here, apart from the sinks' code, because every process parses
//! it, the resource manager too, which links no sink.
//!
//! The section is parsed by hand on `kind`, then the variant's struct with serde, so that an
//! error inside it still names its key (`sink.format`): serde's internally tagged enums lose
//! the path inside the variant.

pub mod delta;
pub mod kafka;
pub mod parquet;
pub mod pgvector;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use delta::DeltaSinkSpec;
pub use kafka::{Guarantee, KafkaSinkSpec, VectorFormat};
pub use parquet::{ParquetSinkSpec, PartitionBy};
pub use pgvector::{PgDistance, PgIndex, PgMode, PgvectorSinkSpec};

use super::kafka::KafkaProperties;
use super::source::SourceSpec;
use super::SpecError;

/// `[sink]`: the keys every sink has (where its cluster and dead letters are), and its kind's.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub common: SinkCommon,
    pub kind: SinkKind,
}

/// The keys of `[sink]` that every kind has: its Kafka cluster (the output topic's, or only the
/// dead-letter topic's) and its dead letters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkCommon {
    /// Default: the source's bootstrap servers (also where the dead-letter topic is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
    /// Where records the model cannot take go, with an `es.error` header. Default: the kind's
    /// (`<topic>-dlq` for Kafka, `<name>-dlq` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// librdkafka properties of the sink's producer (`[sink.kafka]`). Default: the source's,
    /// when the sink names no `bootstrap_servers` of its own.
    #[serde(default, skip_serializing_if = "KafkaProperties::is_empty")]
    pub kafka: KafkaProperties,
    /// The dead-letter producer's own properties (`[sink.dead_letter_kafka]`); default: the
    /// sink's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_kafka: Option<KafkaProperties>,
    /// The models whose vectors are written (`[[models]]` names). Default: every model's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// What a query does when its output already holds vectors of another model version.
    #[serde(default, skip_serializing_if = "ModelChange::is_default")]
    pub on_model_change: ModelChange,
}

impl SinkCommon {
    const KEYS: [&'static str; 6] =
        ["bootstrap_servers", "dead_letter_topic", "kafka", "dead_letter_kafka", "models", "on_model_change"];
}

/// `[sink] on_model_change`: what a query does, before its first batch, when its table or topic
/// already holds vectors that another version of a model made (`embedstream_core::model_version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelChange {
    /// The query does not start; the error names the table column or topic, both versions, and
    /// how to re-embed.
    #[default]
    Refuse,
    /// The query starts: pgvector deletes the rows of other versions first; a Kafka topic keeps
    /// its records (each says its version in `es.model_version`).
    Replace,
}

impl ModelChange {
    fn is_default(&self) -> bool {
        *self == ModelChange::Refuse
    }
}

/// The sink's kind and its own keys: one variant per sink.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkKind {
    /// One record per embedding in `topic` (at-least-once across task retries).
    Kafka(KafkaSinkSpec),
    /// Parquet files under `path`, published per batch by a manifest (exactly-once).
    Parquet(ParquetSinkSpec),
    /// A Delta Lake table under `path`: one Delta commit per batch (exactly-once for every
    /// Delta reader).
    Delta(DeltaSinkSpec),
    /// Rows in a PostgreSQL table with pgvector columns, upserted by key or appended by origin
    /// (exactly-once by construction).
    Pgvector(PgvectorSinkSpec),
}

impl SinkSpec {
    /// The output topic, for a sink that writes one.
    pub fn output_topic(&self) -> Option<&str> {
        match &self.kind {
            SinkKind::Kafka(k) => Some(&k.topic),
            SinkKind::Parquet(_) | SinkKind::Delta(_) | SinkKind::Pgvector(_) => None,
        }
    }

    /// `columns`: the input fields written beside the vectors (checked against `[input]` by
    /// the job spec).
    pub fn columns(&self) -> &[String] {
        match &self.kind {
            SinkKind::Kafka(k) => &k.columns,
            SinkKind::Parquet(p) => &p.columns,
            SinkKind::Delta(d) => &d.columns,
            SinkKind::Pgvector(p) => &p.columns,
        }
    }

    /// Whether a Kafka sink writes each task in a transaction (`guarantee = "exactly_once"`).
    pub fn exactly_once_kafka(&self) -> bool {
        matches!(&self.kind, SinkKind::Kafka(k) if k.guarantee == Guarantee::ExactlyOnce)
    }

    /// The directory of a file sink's table (Parquet, Delta).
    pub fn table_path(&self) -> Option<&std::path::Path> {
        match &self.kind {
            SinkKind::Parquet(p) => Some(&p.path),
            SinkKind::Delta(d) => Some(&d.path),
            SinkKind::Kafka(_) | SinkKind::Pgvector(_) => None,
        }
    }

    /// The sink's own broker (also where the dead-letter topic is), if it names one.
    pub fn bootstrap_servers(&self) -> Option<&str> {
        self.common.bootstrap_servers.as_deref()
    }

    /// `[sink.kafka]`: the sink's client properties as written (see `JobSpec::sink_kafka`).
    pub fn kafka(&self) -> &KafkaProperties {
        &self.common.kafka
    }

    /// `[sink.dead_letter_kafka]`, if given.
    pub fn dead_letter_kafka(&self) -> Option<&KafkaProperties> {
        self.common.dead_letter_kafka.as_ref()
    }

    /// The dead-letter topic, as the spec names it or by the sink's default.
    pub fn dead_letter_topic(&self, query: &str) -> String {
        self.common.dead_letter_topic.clone().unwrap_or_else(|| match &self.kind {
            SinkKind::Kafka(k) => format!("{}-dlq", k.topic),
            SinkKind::Parquet(_) | SinkKind::Delta(_) | SinkKind::Pgvector(_) => format!("{query}-dlq"),
        })
    }

    /// The `[sink]` table, keys named `sink.<key>` in errors.
    pub fn from_value(value: toml::Value) -> Result<SinkSpec, SpecError> {
        let toml::Value::Table(mut table) = value else {
            return Err(SpecError::new("sink", "must be a table with a `kind`"));
        };
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(_) => {
                return Err(SpecError::new(
                    "sink.kind",
                    "must be a string: \"kafka\", \"parquet\", \"delta\" or \"pgvector\"",
                ))
            }
            None => {
                return Err(SpecError::new("sink.kind", "missing: \"kafka\", \"parquet\", \"delta\" or \"pgvector\""))
            }
        };
        let common: toml::Table =
            SinkCommon::KEYS.iter().filter_map(|k| table.remove(*k).map(|v| (k.to_string(), v))).collect();
        let common = section(common)?;
        let kind = match kind.as_str() {
            "kafka" => section(table).map(SinkKind::Kafka)?,
            "parquet" if !table.contains_key("path") => {
                return Err(SpecError::new("sink.path", "must be an absolute directory (kind = \"parquet\")"))
            }
            "parquet" => section(table).map(SinkKind::Parquet)?,
            "delta" if !table.contains_key("path") => {
                return Err(SpecError::new("sink.path", "must be an absolute directory (kind = \"delta\")"))
            }
            "delta" => section(table).map(SinkKind::Delta)?,
            "pgvector" => {
                for key in ["url", "table"] {
                    if !table.contains_key(key) {
                        return Err(SpecError::new(&format!("sink.{key}"), "missing (kind = \"pgvector\")"));
                    }
                }
                section(table).map(SinkKind::Pgvector)?
            }
            other => {
                return Err(SpecError::new(
                    "sink.kind",
                    format!("unknown variant `{other}`, expected `kafka`, `parquet`, `delta` or `pgvector`"),
                ))
            }
        };
        Ok(SinkSpec { common, kind })
    }

    pub(super) fn validate(&self, query: &str, source: &SourceSpec) -> Result<(), SpecError> {
        match &self.kind {
            SinkKind::Kafka(k) => k.validate()?,
            SinkKind::Parquet(p) => p.validate()?,
            SinkKind::Delta(d) => d.validate()?,
            SinkKind::Pgvector(p) => p.validate()?,
        }
        self.kafka().validate("sink.kafka")?;
        if let Some(dead) = self.dead_letter_kafka() {
            dead.validate("sink.dead_letter_kafka")?;
        }
        if self.bootstrap_servers().is_some_and(|b| b.trim().is_empty()) {
            return Err(SpecError::new("sink.bootstrap_servers", "must not be empty"));
        }
        if self.common.on_model_change == ModelChange::Replace && self.table_path().is_some() {
            return Err(SpecError::new(
                "sink.on_model_change",
                "\"replace\" is for the pgvector and Kafka sinks: write a new model version's vectors to a new \
                 Parquet or Delta path",
            ));
        }
        let dlq = self.dead_letter_topic(query);
        if dlq.is_empty() || Some(dlq.as_str()) == self.output_topic() {
            return Err(SpecError::new("sink.dead_letter_topic", "must be non-empty and differ from `sink.topic`"));
        }
        let state = match &self.kind {
            SinkKind::Kafka(k) => k.state_topic(),
            _ => String::new(),
        };
        let topics = [
            ("sink.topic", self.output_topic().unwrap_or_default()),
            ("sink.dead_letter_topic", &dlq),
            ("sink.state_topic", &state),
        ];
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

/// Part of the `[sink]` table, with its errors' keys under `sink.`.
fn section<T: DeserializeOwned>(table: toml::Table) -> Result<T, SpecError> {
    super::section_at("sink", table)
}

impl Serialize for SinkSpec {
    /// One flat `[sink]` table, as written: `kind`, the kind's keys and the common ones.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a> {
            #[serde(flatten)]
            kind: &'a SinkKind,
            #[serde(flatten)]
            common: &'a SinkCommon,
        }
        Flat { kind: &self.kind, common: &self.common }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SinkSpec {
    /// As [`SinkSpec::from_value`]; `JobSpec::from_toml` reports its errors with their key.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        SinkSpec::from_value(value).map_err(|e| serde::de::Error::custom(e.message))
    }
}
