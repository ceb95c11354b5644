//! `[source]`: which Kafka topics a query reads and how, with option names after Spark's Kafka
//! source (`startingOffsets` becomes `starting_offsets`, and so on).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::kafka::KafkaProperties;
use super::units::HumanDuration;
use super::SpecError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub bootstrap_servers: String,
    /// Topics to read (Spark's `subscribe`). Exactly one of subscribe, subscribe_pattern, assign.
    #[serde(default)]
    pub subscribe: Option<Vec<String>>,
    /// A regular expression over topic names, re-evaluated before every batch.
    #[serde(default)]
    pub subscribe_pattern: Option<String>,
    /// Fixed partitions per topic.
    #[serde(default)]
    pub assign: Option<BTreeMap<String, Vec<i32>>>,
    /// Where a new query starts; a query with a checkpoint always resumes from it.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,
    /// Upper bound of records per micro-batch, split over partitions by backlog.
    #[serde(default)]
    pub max_offsets_per_trigger: Option<u64>,
    /// Split offset ranges so that a batch has at least this many tasks.
    #[serde(default)]
    pub min_partitions: Option<u32>,
    #[serde(default = "default_true")]
    pub fail_on_data_loss: bool,
    /// Consumer group that receives the processed offsets after every batch (visibility only:
    /// the checkpoint is the source of truth). Default: `embedstream-<name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// How long a task may wait for records of its range before it fails (Spark's
    /// `kafkaConsumer.pollTimeoutMs`). Default "60s". The older `poll_timeout_ms` is still read,
    /// with a warning.
    #[serde(default = "default_poll_timeout")]
    pub poll_timeout: HumanDuration,
    /// How long the driver retries a failed metadata or offsets request (a broker restarting,
    /// a leader moving) before the query fails. Default "2m".
    #[serde(default = "default_metadata_retry")]
    pub metadata_retry_timeout: HumanDuration,
    /// librdkafka properties of every client that talks to the source's cluster
    /// (`[source.kafka]`): security, fetch sizes, timeouts.
    #[serde(default, skip_serializing_if = "KafkaProperties::is_empty")]
    pub kafka: KafkaProperties,
    /// Start even when a topic of `subscribe` or `assign` does not exist, and wait for it (as
    /// `subscribe_pattern` does). Default false: the query refuses to start, naming the topic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_missing_topics: bool,
}

fn default_true() -> bool {
    true
}

fn default_metadata_retry() -> HumanDuration {
    HumanDuration::parse("2m").expect("a valid duration")
}

fn default_poll_timeout() -> HumanDuration {
    HumanDuration::parse("60s").expect("a valid duration")
}

/// Reads the deprecated `source.poll_timeout_ms` (a number of milliseconds) as `poll_timeout`,
/// with a warning; both at once are refused.
pub(super) fn read_deprecated(table: &mut toml::Table) -> Result<(), SpecError> {
    let Some(source) = table.get_mut("source").and_then(toml::Value::as_table_mut) else { return Ok(()) };
    let Some(old) = source.remove("poll_timeout_ms") else { return Ok(()) };
    if source.contains_key("poll_timeout") {
        return Err(SpecError::new("source.poll_timeout_ms", "set only `poll_timeout` (it replaces poll_timeout_ms)"));
    }
    let ms = old.as_integer().filter(|&ms| ms > 0).ok_or_else(|| {
        SpecError::new("source.poll_timeout_ms", "expected a whole number of milliseconds, at least 1")
    })?;
    tracing::warn!("`source.poll_timeout_ms` is deprecated: write `poll_timeout = \"{ms}ms\"`");
    source.insert("poll_timeout".into(), toml::Value::String(format!("{ms}ms")));
    Ok(())
}

impl SourceSpec {
    pub fn poll_timeout(&self) -> std::time::Duration {
        self.poll_timeout.get()
    }

    /// Topics named by `subscribe` or `assign` (empty for a pattern).
    pub fn topics(&self) -> Vec<String> {
        if let Some(t) = &self.subscribe {
            return t.clone();
        }
        if let Some(a) = &self.assign {
            return a.keys().cloned().collect();
        }
        Vec::new()
    }

    /// Whether this source reads `topic`.
    pub fn reads_topic(&self, topic: &str) -> bool {
        match &self.subscribe_pattern {
            Some(p) => regex::Regex::new(&format!("^(?:{p})$")).is_ok_and(|r| r.is_match(topic)),
            None => self.topics().iter().any(|t| t == topic),
        }
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        let s = self;
        if s.bootstrap_servers.trim().is_empty() {
            return Err(SpecError::new("source.bootstrap_servers", "must not be empty"));
        }
        let ways = [s.subscribe.is_some(), s.subscribe_pattern.is_some(), s.assign.is_some()];
        if ways.iter().filter(|&&w| w).count() != 1 {
            return Err(SpecError::new("source", "set exactly one of `subscribe`, `subscribe_pattern`, `assign`"));
        }
        if let Some(topics) = &s.subscribe {
            if topics.is_empty() || topics.iter().any(|t| t.is_empty()) {
                return Err(SpecError::new("source.subscribe", "must list at least one non-empty topic name"));
            }
        }
        if let Some(p) = &s.subscribe_pattern {
            regex::Regex::new(p)
                .map_err(|e| SpecError::new("source.subscribe_pattern", format!("not a regular expression: {e}")))?;
        }
        if let Some(assign) = &s.assign {
            if assign.is_empty() || assign.values().any(|ps| ps.is_empty() || ps.iter().any(|&p| p < 0)) {
                return Err(SpecError::new("source.assign", "must map topics to non-empty lists of partitions >= 0"));
            }
        }
        self.starting_offsets.validate(self)?;
        if s.max_offsets_per_trigger == Some(0) {
            return Err(SpecError::new("source.max_offsets_per_trigger", "must be at least 1"));
        }
        if s.min_partitions == Some(0) {
            return Err(SpecError::new("source.min_partitions", "must be at least 1"));
        }
        if s.group_id.as_deref() == Some("") {
            return Err(SpecError::new("source.group_id", "must not be empty"));
        }
        if s.poll_timeout.get().is_zero() {
            return Err(SpecError::new("source.poll_timeout", "must be a duration above zero, such as \"60s\""));
        }
        s.kafka.validate("source.kafka")
    }
}

/// `"earliest"`, `"latest"`, or offsets per topic and partition (`-2` earliest, `-1` latest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StartingOffsets {
    Named(String),
    Specific(BTreeMap<String, BTreeMap<String, i64>>),
}

impl Default for StartingOffsets {
    fn default() -> Self {
        StartingOffsets::Named("latest".into())
    }
}

/// A starting position of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Offset(i64),
}

impl StartingOffsets {
    /// Where `topic`/`partition` starts. `None` when specific offsets do not list it.
    pub fn for_partition(&self, topic: &str, partition: i32) -> Option<StartAt> {
        match self {
            StartingOffsets::Named(n) if n == "earliest" => Some(StartAt::Earliest),
            StartingOffsets::Named(_) => Some(StartAt::Latest),
            StartingOffsets::Specific(map) => map.get(topic)?.get(&partition.to_string()).map(|&o| match o {
                -2 => StartAt::Earliest,
                -1 => StartAt::Latest,
                o => StartAt::Offset(o),
            }),
        }
    }

    fn validate(&self, source: &SourceSpec) -> Result<(), SpecError> {
        match self {
            StartingOffsets::Named(n) if n == "earliest" || n == "latest" => Ok(()),
            StartingOffsets::Named(n) => Err(SpecError::new(
                "source.starting_offsets",
                format!("`{n}` is not \"earliest\", \"latest\" or a table of offsets"),
            )),
            StartingOffsets::Specific(map) => {
                for (topic, parts) in map {
                    let key = format!("source.starting_offsets.{topic}");
                    if source.subscribe_pattern.is_none() && !source.topics().contains(topic) {
                        return Err(SpecError::new(&key, "topic is not read by this query"));
                    }
                    for (p, &o) in parts {
                        if p.parse::<i32>().map_or(true, |p| p < 0) {
                            return Err(SpecError::new(&format!("{key}.{p}"), "partition must be an integer >= 0"));
                        }
                        if o < -2 {
                            return Err(SpecError::new(
                                &format!("{key}.{p}"),
                                "offset must be >= 0, -1 (latest) or -2 (earliest)",
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}
