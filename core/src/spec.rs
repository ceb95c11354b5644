//! The job spec: what to read, which model to run, where to write.
//!
//! Option names follow Spark's Kafka source (`startingOffsets` becomes `starting_offsets`, and
//! so on). [`JobSpec::from_toml`] refuses unknown keys, wrong types and impossible values with
//! a [`SpecError`] that names the key, before anything is started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A job spec that failed to parse or validate. `key` is the dotted path of the offending
/// key (`source.max_offsets_per_trigger`), or empty for a TOML syntax error.
#[derive(Debug, thiserror::Error)]
#[error("job spec: {}{message}", if key.is_empty() { String::new() } else { format!("`{key}`: ") })]
pub struct SpecError {
    pub key: String,
    pub message: String,
}

impl SpecError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        SpecError { key: key.to_string(), message: message.into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Query name: names the consumer group by default and labels logs and metrics.
    pub name: String,
    /// Directory of the write-ahead offset log (`offsets/`) and the commit log (`commits/`).
    pub checkpoint_location: PathBuf,
    /// Batches kept in both logs; older entries are deleted after each commit (Spark's
    /// `spark.sql.streaming.minBatchesToRetain`). Default 100.
    #[serde(default = "default_batches_to_retain")]
    pub min_batches_to_retain: u64,
    pub source: SourceSpec,
    #[serde(default)]
    pub trigger: TriggerSpec,
    pub model: ModelSpec,
    pub sink: SinkSpec,
    #[serde(default)]
    pub executors: ExecutorsSpec,
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    #[serde(default)]
    pub flight: FlightSpec,
    #[serde(default)]
    pub security: SecuritySpec,
}

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
    /// `kafkaConsumer.pollTimeoutMs`).
    #[serde(default = "default_poll_timeout_ms")]
    pub poll_timeout_ms: u64,
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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// Interval between batch starts, like Spark's `Trigger.ProcessingTime` ("5s", "500ms").
    /// Absent: the next batch starts as soon as the previous one ends and data is there.
    #[serde(default)]
    pub processing_time: Option<String>,
    /// Process what is in the topics when the query starts, in as many batches as the rate
    /// limit needs, then exit 0 (Spark's `Trigger.AvailableNow`).
    #[serde(default)]
    pub available_now: bool,
}

impl TriggerSpec {
    /// The interval; zero when none is set. Valid after [`JobSpec::validate`].
    pub fn interval(&self) -> Duration {
        self.processing_time.as_deref().and_then(|s| humantime::parse_duration(s).ok()).unwrap_or(Duration::ZERO)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    /// Model id written in the `es.model` header. Default: the ONNX file's directory name.
    #[serde(default)]
    pub id: Option<String>,
    /// Texts longer than this many tokens are truncated, as sentence-transformers does.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    #[serde(default = "default_pooling")]
    pub pooling: Pooling,
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Texts per inference batch; batches are cut from length-sorted texts.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Texts ordered by token length together. A task embeds its records window by window, in
    /// offset order, and writes each window while the next is embedded: a larger window pads
    /// less, a smaller one delivers sooner. On mixed-length English, windows of 512, 256 and 128
    /// ran at 0.86, 0.75 and 0.55 times the speed of 2000 texts sorted together; 1024 at 0.98.
    #[serde(default = "default_sort_window")]
    pub sort_window: usize,
    /// Values longer than this go to the dead-letter topic instead of the model.
    #[serde(default = "default_max_text_bytes")]
    pub max_text_bytes: usize,
}

impl ModelSpec {
    /// A model with the spec's defaults for everything but its files.
    pub fn new(onnx: PathBuf, tokenizer: PathBuf) -> ModelSpec {
        ModelSpec {
            onnx,
            tokenizer,
            id: None,
            max_seq_len: default_max_seq_len(),
            pooling: default_pooling(),
            normalize: true,
            batch_size: default_batch_size(),
            sort_window: default_sort_window(),
            max_text_bytes: default_max_text_bytes(),
        }
    }

    pub fn model_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            self.onnx
                .parent()
                .and_then(Path::file_name)
                .or_else(|| self.onnx.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// One record per embedding in `topic` (at-least-once across task retries).
    Kafka,
    /// Parquet files under `path`, published per batch by a manifest (exactly-once).
    Parquet,
}

/// Hive-style partition directories of the Parquet sink, from each record's Kafka timestamp (UTC).
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
pub struct SinkSpec {
    pub kind: SinkKind,
    /// Default: the source's bootstrap servers (also where the dead-letter topic is).
    #[serde(default)]
    pub bootstrap_servers: Option<String>,
    /// The output topic (kind = "kafka").
    #[serde(default)]
    pub topic: String,
    /// The table's directory (kind = "parquet"); its manifests are in `<path>/_embedstream_log/`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Partition directories of the Parquet sink.
    #[serde(default = "default_partition_by")]
    pub partition_by: PartitionBy,
    /// Input columns written beside the embedding by the Parquet sink: only "value" (the text).
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default = "default_format")]
    pub format: VectorFormat,
    /// Where records the model cannot take go, with an `es.error` header. Default `<topic>-dlq`,
    /// or `<name>-dlq` for the Parquet sink.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorsSpec {
    #[serde(default = "default_one")]
    pub count: u32,
    /// Tasks an executor runs at once, and ONNX Runtime's intra-op threads.
    #[serde(default = "default_one")]
    pub cores: u32,
    /// Memory of an executor container in cluster mode ("512m", "2g"): the node agent kills an
    /// executor whose process tree (model daemon and workers included) uses more.
    #[serde(default = "default_executor_memory")]
    pub memory: String,
}

impl Default for ExecutorsSpec {
    fn default() -> Self {
        ExecutorsSpec { count: 1, cores: 1, memory: default_executor_memory() }
    }
}

impl ExecutorsSpec {
    /// `memory` in MiB (validated by `JobSpec::validate`).
    pub fn memory_mb(&self) -> u64 {
        parse_memory_mb(&self.memory).unwrap_or(2048)
    }
}

fn default_executor_memory() -> String {
    "2g".into()
}

/// "512m", "2g", "1.5g" or a plain number of MiB, as Spark and YARN write memory sizes.
pub fn parse_memory_mb(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), "m"),
    };
    let n: f64 = number.trim().parse().ok()?;
    let mb = match unit.trim_end_matches('b') {
        "k" => n / 1024.0,
        "m" => n,
        "g" => n * 1024.0,
        "t" => n * 1024.0 * 1024.0,
        _ => return None,
    };
    (mb >= 1.0 && mb.is_finite()).then_some(mb as u64)
}

/// Prometheus endpoints and the lag refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSpec {
    /// The driver's `/metrics` (host:port; port 0 picks a free one, written to
    /// `<checkpoint_location>/monitoring/targets.json`).
    #[serde(default = "default_listen")]
    pub metrics_listen: String,
    /// Where each executor serves its `/metrics`; port 0 lets each pick its own.
    #[serde(default = "default_listen")]
    pub executor_metrics_listen: String,
    /// How often the driver reads the broker's latest offsets for the lag gauges, between batches too.
    #[serde(default = "default_lag_refresh")]
    pub lag_refresh_interval: String,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        MonitoringSpec {
            metrics_listen: default_listen(),
            executor_metrics_listen: default_listen(),
            lag_refresh_interval: default_lag_refresh(),
        }
    }
}

impl MonitoringSpec {
    pub fn lag_refresh(&self) -> Duration {
        humantime::parse_duration(&self.lag_refresh_interval).unwrap_or(Duration::from_secs(5))
    }
}

/// The Arrow Flight service every executor serves on its gRPC address: `DoExchange` embeds a
/// client's `text` column with the executor's warm workers, `DoGet` returns the query's latest
/// output batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlightSpec {
    /// Rows one `DoExchange` call may send in all.
    #[serde(default = "default_flight_rows")]
    pub max_rows_per_call: usize,
    /// Bytes of text one `DoExchange` call may send in all.
    #[serde(default = "default_flight_bytes")]
    pub max_bytes_per_call: usize,
    /// `DoExchange` calls served at once per executor; one more is answered "overloaded".
    #[serde(default = "default_flight_calls")]
    pub max_concurrent_calls: usize,
    /// Output batches (one per task window) each executor keeps in memory for `DoGet`.
    #[serde(default = "default_recent_batches")]
    pub recent_batches: usize,
    /// A `DoExchange` call that sends no batch for this long is ended, freeing its slot.
    #[serde(default = "default_flight_idle")]
    pub idle_timeout: String,
}

impl FlightSpec {
    pub fn idle_timeout(&self) -> Duration {
        humantime::parse_duration(&self.idle_timeout).unwrap_or(Duration::from_secs(60))
    }
}

impl Default for FlightSpec {
    fn default() -> Self {
        FlightSpec {
            max_rows_per_call: default_flight_rows(),
            max_bytes_per_call: default_flight_bytes(),
            max_concurrent_calls: default_flight_calls(),
            recent_batches: default_recent_batches(),
            idle_timeout: default_flight_idle(),
        }
    }
}

/// Who may call: the cluster token (see `embedstream_core::auth`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySpec {
    /// A file whose first line is the cluster token; `EMBEDSTREAM_TOKEN` wins over it.
    pub token_file: Option<PathBuf>,
}

fn default_batches_to_retain() -> u64 {
    100
}
fn default_flight_rows() -> usize {
    10_000
}
fn default_flight_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_flight_calls() -> usize {
    4
}
fn default_recent_batches() -> usize {
    16
}
fn default_listen() -> String {
    "127.0.0.1:0".into()
}
fn default_flight_idle() -> String {
    "60s".into()
}
fn default_lag_refresh() -> String {
    "5s".into()
}
fn default_true() -> bool {
    true
}
fn default_one() -> u32 {
    1
}
fn default_poll_timeout_ms() -> u64 {
    60_000
}
fn default_max_seq_len() -> usize {
    128
}
fn default_pooling() -> Pooling {
    Pooling::Mean
}
fn default_batch_size() -> usize {
    32
}
fn default_partition_by() -> PartitionBy {
    PartitionBy::Date
}
fn default_sort_window() -> usize {
    1024
}
fn default_max_text_bytes() -> usize {
    64 * 1024
}
fn default_format() -> VectorFormat {
    VectorFormat::F32le
}

impl JobSpec {
    /// Parses and validates a job spec. Errors name the key.
    pub fn from_toml(text: &str) -> Result<JobSpec, SpecError> {
        let value: toml::Table = text.parse().map_err(|e: toml::de::Error| SpecError::new("", e.to_string()))?;
        let spec: JobSpec = serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            SpecError { key, message: e.into_inner().to_string() }
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Reads, parses and validates a job spec file.
    pub fn from_file(path: &Path) -> Result<JobSpec, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError::new("", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// The spec as TOML, as executors receive it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a JobSpec always serialises")
    }

    pub fn group_id(&self) -> String {
        self.source.group_id.clone().unwrap_or_else(|| format!("embedstream-{}", self.name))
    }

    pub fn sink_bootstrap_servers(&self) -> &str {
        self.sink.bootstrap_servers.as_deref().unwrap_or(&self.source.bootstrap_servers)
    }

    pub fn dead_letter_topic(&self) -> String {
        self.sink.dead_letter_topic.clone().unwrap_or_else(|| match self.sink.kind {
            SinkKind::Kafka => format!("{}-dlq", self.sink.topic),
            SinkKind::Parquet => format!("{}-dlq", self.name),
        })
    }

    /// Checks values that parse but cannot work. Also run by `from_toml`.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(SpecError::new("name", "must be non-empty letters, digits, '.', '_' or '-'"));
        }
        if self.checkpoint_location.as_os_str().is_empty() {
            return Err(SpecError::new("checkpoint_location", "must not be empty"));
        }
        if self.min_batches_to_retain == 0 {
            return Err(SpecError::new("min_batches_to_retain", "must be at least 1: recovery reads the last batch"));
        }
        let s = &self.source;
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
        match &s.starting_offsets {
            StartingOffsets::Named(n) if n == "earliest" || n == "latest" => {}
            StartingOffsets::Named(n) => {
                return Err(SpecError::new(
                    "source.starting_offsets",
                    format!("`{n}` is not \"earliest\", \"latest\" or a table of offsets"),
                ))
            }
            StartingOffsets::Specific(map) => {
                for (topic, parts) in map {
                    let key = format!("source.starting_offsets.{topic}");
                    if s.subscribe_pattern.is_none() && !self.source_topics().contains(topic) {
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
            }
        }
        if s.max_offsets_per_trigger == Some(0) {
            return Err(SpecError::new("source.max_offsets_per_trigger", "must be at least 1"));
        }
        if s.min_partitions == Some(0) {
            return Err(SpecError::new("source.min_partitions", "must be at least 1"));
        }
        if s.group_id.as_deref() == Some("") {
            return Err(SpecError::new("source.group_id", "must not be empty"));
        }
        if s.poll_timeout_ms == 0 {
            return Err(SpecError::new("source.poll_timeout_ms", "must be at least 1"));
        }

        let t = &self.trigger;
        if let Some(pt) = &t.processing_time {
            humantime::parse_duration(pt).map_err(|e| {
                SpecError::new("trigger.processing_time", format!("`{pt}` is not a duration such as \"5s\": {e}"))
            })?;
            if t.available_now {
                return Err(SpecError::new("trigger", "set either `processing_time` or `available_now`, not both"));
            }
        }

        let m = &self.model;
        for (key, path) in [("model.onnx", &m.onnx), ("model.tokenizer", &m.tokenizer)] {
            if !path.is_file() {
                return Err(SpecError::new(key, format!("no such file: {}", path.display())));
            }
        }
        if !(1..=512).contains(&m.max_seq_len) {
            return Err(SpecError::new("model.max_seq_len", "must be between 1 and 512"));
        }
        if !(1..=4096).contains(&m.batch_size) {
            return Err(SpecError::new("model.batch_size", "must be between 1 and 4096"));
        }
        if m.sort_window < m.batch_size {
            return Err(SpecError::new("model.sort_window", "must be at least model.batch_size"));
        }
        if m.max_text_bytes == 0 {
            return Err(SpecError::new("model.max_text_bytes", "must be at least 1"));
        }

        if parse_memory_mb(&self.executors.memory).is_none() {
            return Err(SpecError::new(
                "executors.memory",
                format!("`{}` is not a size such as \"512m\" or \"2g\"", self.executors.memory),
            ));
        }
        let f = &self.flight;
        for (key, value) in [
            ("flight.max_rows_per_call", f.max_rows_per_call),
            ("flight.max_bytes_per_call", f.max_bytes_per_call),
            ("flight.max_concurrent_calls", f.max_concurrent_calls),
        ] {
            if value == 0 {
                return Err(SpecError::new(key, "must be at least 1"));
            }
        }
        if let Some(path) = &self.security.token_file {
            if !path.is_file() {
                return Err(SpecError::new("security.token_file", format!("no such file: {}", path.display())));
            }
        }

        let k = &self.sink;
        match k.kind {
            SinkKind::Kafka if k.topic.is_empty() => {
                return Err(SpecError::new("sink.topic", "must not be empty (kind = \"kafka\")"))
            }
            SinkKind::Kafka if k.path.is_some() => {
                return Err(SpecError::new("sink.path", "is for kind = \"parquet\"; a Kafka sink has a topic"))
            }
            SinkKind::Parquet if k.path.as_ref().is_none_or(|p| !p.is_absolute()) => {
                return Err(SpecError::new("sink.path", "must be an absolute directory (kind = \"parquet\")"))
            }
            SinkKind::Parquet if !k.topic.is_empty() => {
                return Err(SpecError::new("sink.topic", "is for kind = \"kafka\"; a Parquet sink has a path"))
            }
            _ => {}
        }
        if let Some(c) = k.columns.iter().find(|c| c.as_str() != "value") {
            return Err(SpecError::new(
                "sink.columns",
                format!("unknown input column `{c}`; the one column to add is \"value\""),
            ));
        }
        if k.bootstrap_servers.as_deref().is_some_and(|b| b.trim().is_empty()) {
            return Err(SpecError::new("sink.bootstrap_servers", "must not be empty"));
        }
        let dlq = self.dead_letter_topic();
        if dlq.is_empty() || dlq == k.topic {
            return Err(SpecError::new("sink.dead_letter_topic", "must be non-empty and differ from `sink.topic`"));
        }
        for (key, topic) in
            [("sink.topic", &k.topic), ("sink.dead_letter_topic", &dlq)].into_iter().filter(|(_, t)| !t.is_empty())
        {
            if self.reads_topic(topic) {
                return Err(SpecError::new(
                    key,
                    format!("`{topic}` is also a source topic: the query would read its own output"),
                ));
            }
        }

        let mon = &self.monitoring;
        for (key, addr) in [
            ("monitoring.metrics_listen", &mon.metrics_listen),
            ("monitoring.executor_metrics_listen", &mon.executor_metrics_listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(SpecError::new(key, format!("`{addr}` is not an address such as \"127.0.0.1:9464\"")));
            }
        }
        for (key, value) in [
            ("monitoring.lag_refresh_interval", &mon.lag_refresh_interval),
            ("flight.idle_timeout", &self.flight.idle_timeout),
        ] {
            match humantime::parse_duration(value) {
                Ok(d) if !d.is_zero() => {}
                _ => return Err(SpecError::new(key, "must be a duration above zero, such as \"5s\"")),
            }
        }

        if self.executors.count == 0 {
            return Err(SpecError::new("executors.count", "must be at least 1"));
        }
        if self.executors.cores == 0 {
            return Err(SpecError::new("executors.cores", "must be at least 1"));
        }
        Ok(())
    }

    /// Topics named by `subscribe` or `assign` (empty for a pattern).
    pub fn source_topics(&self) -> Vec<String> {
        if let Some(t) = &self.source.subscribe {
            return t.clone();
        }
        if let Some(a) = &self.source.assign {
            return a.keys().cloned().collect();
        }
        Vec::new()
    }

    /// Whether this query reads `topic`.
    pub fn reads_topic(&self, topic: &str) -> bool {
        match &self.source.subscribe_pattern {
            Some(p) => regex::Regex::new(&format!("^(?:{p})$")).is_ok_and(|r| r.is_match(topic)),
            None => self.source_topics().iter().any(|t| t == topic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        _dir: tempfile::TempDir,
        onnx: PathBuf,
        tok: PathBuf,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let onnx = dir.path().join("m").join("model.onnx");
        std::fs::create_dir_all(onnx.parent().unwrap()).unwrap();
        std::fs::write(&onnx, b"x").unwrap();
        let tok = dir.path().join("tokenizer.json");
        std::fs::write(&tok, b"{}").unwrap();
        Files { _dir: dir, onnx, tok }
    }

    fn spec(f: &Files, extra_source: &str, rest: &str) -> String {
        format!(
            r#"
name = "products"
checkpoint_location = "/tmp/cp"
[source]
bootstrap_servers = "127.0.0.1:9092"
subscribe = ["products"]
{extra_source}
[model]
onnx = "{}"
tokenizer = "{}"
[sink]
kind = "kafka"
topic = "out"
{rest}
"#,
            f.onnx.display(),
            f.tok.display()
        )
    }

    fn key_of(text: &str) -> String {
        JobSpec::from_toml(text).unwrap_err().key
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let f = files();
        let s = JobSpec::from_toml(&spec(&f, "", "")).unwrap();
        assert_eq!(s.group_id(), "embedstream-products");
        assert_eq!(s.dead_letter_topic(), "out-dlq");
        assert_eq!(s.model.batch_size, 32);
        assert_eq!(s.min_batches_to_retain, 100);
        assert_eq!(s.model.model_id(), "m");
        assert_eq!(s.source.starting_offsets, StartingOffsets::Named("latest".into()));
        assert!(s.source.fail_on_data_loss);
        // What executors receive parses back to the same spec.
        let again = JobSpec::from_toml(&s.to_toml()).unwrap();
        assert_eq!(again.to_toml(), s.to_toml());
    }

    #[test]
    fn unknown_key_is_named() {
        let f = files();
        let e = JobSpec::from_toml(&spec(&f, "max_offset_per_trigger = 5", "")).unwrap_err();
        assert_eq!(e.key, "source.max_offset_per_trigger");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let f = files();
        assert_eq!(key_of(&spec(&f, "max_offsets_per_trigger = \"lots\"", "")), "source.max_offsets_per_trigger");
        assert_eq!(key_of(&spec(&f, "", "format = \"f64\"")), "sink.format");
    }

    #[test]
    fn impossible_values_are_named() {
        let f = files();
        assert_eq!(key_of(&spec(&f, "max_offsets_per_trigger = 0", "")), "source.max_offsets_per_trigger");
        assert_eq!(key_of(&spec(&f, "min_partitions = 0", "")), "source.min_partitions");
        assert_eq!(key_of(&spec(&f, "subscribe_pattern = \"p.*\"", "")), "source");
        assert_eq!(key_of(&spec(&f, "starting_offsets = \"newest\"", "")), "source.starting_offsets");
        assert_eq!(
            key_of(&spec(&f, "starting_offsets = { products = { \"0\" = -3 } }", "")),
            "source.starting_offsets.products.0"
        );
        assert_eq!(
            key_of(&spec(&f, "starting_offsets = { other = { \"0\" = 1 } }", "")),
            "source.starting_offsets.other"
        );
        assert_eq!(key_of(&spec(&f, "", "dead_letter_topic = \"out\"")), "sink.dead_letter_topic");
        let retain = spec(&f, "", "").replace("[source]", "min_batches_to_retain = 0\n[source]");
        assert_eq!(key_of(&retain), "min_batches_to_retain");
        let parquet =
            |rest: &str| spec(&f, "", rest).replace("kind = \"kafka\"\ntopic = \"out\"", "kind = \"parquet\"");
        assert_eq!(key_of(&parquet("")), "sink.path");
        assert_eq!(key_of(&parquet("path = \"relative/dir\"")), "sink.path");
        assert_eq!(key_of(&parquet("path = \"/data/t\"\ncolumns = [\"headers\"]")), "sink.columns");
        assert_eq!(key_of(&parquet("path = \"/data/t\"\npartition_by = \"week\"")), "sink.partition_by");
        assert_eq!(JobSpec::from_toml(&parquet("path = \"/data/t\"")).unwrap().dead_letter_topic(), "products-dlq");
        assert_eq!(key_of(&spec(&f, "", "path = \"/data/t\"")), "sink.path");
        assert_eq!(key_of(&spec(&f, "", "[trigger]\nprocessing_time = \"soon\"")), "trigger.processing_time");
        assert_eq!(key_of(&spec(&f, "", "[executors]\ncount = 0")), "executors.count");
        assert_eq!(key_of(&spec(&f, "", "[monitoring]\nmetrics_listen = \"localhost\"")), "monitoring.metrics_listen");
        assert_eq!(
            key_of(&spec(&f, "", "[monitoring]\nlag_refresh_interval = \"0s\"")),
            "monitoring.lag_refresh_interval"
        );
        assert_eq!(key_of(&spec(&f, "", "[flight]\nmax_rows_per_call = 0")), "flight.max_rows_per_call");
        assert_eq!(key_of(&spec(&f, "", "[flight]\nidle_timeout = \"never\"")), "flight.idle_timeout");
        assert_eq!(key_of(&spec(&f, "", "[executors]\nmemory = \"lots\"")), "executors.memory");
        assert_eq!(key_of(&spec(&f, "", "[flight]\nmax_bytes = 10")), "flight.max_bytes");
        assert_eq!(key_of(&spec(&f, "", "[security]\ntoken_file = \"/nonexistent/token\"")), "security.token_file");
        let looped = spec(&f, "", "").replace("topic = \"out\"", "topic = \"products\"");
        assert_eq!(key_of(&looped), "sink.topic");
        let missing = spec(&f, "", "").replace(&f.onnx.display().to_string(), "/nonexistent/model.onnx");
        let e = JobSpec::from_toml(&missing).unwrap_err();
        assert_eq!(e.key, "model.onnx");
        assert!(e.to_string().contains("/nonexistent/model.onnx"));
    }

    #[test]
    fn starting_offsets_per_partition() {
        let f = files();
        let s = JobSpec::from_toml(&spec(
            &f,
            "starting_offsets = { products = { \"0\" = 42, \"1\" = -2, \"2\" = -1 } }",
            "",
        ))
        .unwrap();
        let so = &s.source.starting_offsets;
        assert_eq!(so.for_partition("products", 0), Some(StartAt::Offset(42)));
        assert_eq!(so.for_partition("products", 1), Some(StartAt::Earliest));
        assert_eq!(so.for_partition("products", 2), Some(StartAt::Latest));
        assert_eq!(so.for_partition("products", 3), None);
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mb("512m"), Some(512));
        assert_eq!(parse_memory_mb("2g"), Some(2048));
        assert_eq!(parse_memory_mb("1.5G"), Some(1536));
        assert_eq!(parse_memory_mb("300"), Some(300));
        assert_eq!(parse_memory_mb("2gb"), Some(2048));
        assert_eq!(parse_memory_mb("lots"), None);
        assert_eq!(parse_memory_mb("0m"), None);
    }

    #[test]
    fn trigger_interval() {
        let f = files();
        let s = JobSpec::from_toml(&spec(&f, "", "[trigger]\nprocessing_time = \"1500ms\"")).unwrap();
        assert_eq!(s.trigger.interval(), Duration::from_millis(1500));
        assert_eq!(key_of(&spec(&f, "", "[trigger]\nprocessing_time = \"1s\"\navailable_now = true")), "trigger");
    }
}
