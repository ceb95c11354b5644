//! The job spec: what to read, which model to run, where to write.
//!
//! Each section is its own module with its keys and its checks: [`source`] (and [`kafka`], the
//! client properties of `[source.kafka]` and `[sink.kafka]` with their secrets), [`input`] (what
//! a record is and its fields), [`model`] (`[model]` or `[[models]]`), [`sink`] (one variant per sink), [`runtime`] (trigger, executors, monitoring, flight,
//! security); [`units`] holds the durations and sizes that are parsed once into typed values.
//!
//! [`JobSpec::from_toml`] is pure: it refuses unknown keys, wrong types and impossible values
//! with a [`SpecError`] that names the key, before anything is started, and touches no file.
//! [`JobSpec::check_files`] checks what must exist on the machine that uses it (the model, the
//! token file); the driver and the executors run it, the resource manager does not. The spec
//! travels between processes as TOML ([`JobSpec::to_toml`]).

pub mod image;
pub mod input;
pub mod kafka;
pub mod model;
mod paths;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod units;
mod words;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use image::{FetchSpec, PreprocessSpec};
pub use input::{FieldColumn, FieldType, InputFormat, InputSpec};
pub use kafka::{KafkaProperties, PropertyValue, Secret, SecretDirs, SecretError, SecretRef, Secrets, SECRET_DIRS_ENV};
pub use model::{
    ChunkPooling, CombineMethod, CombineSpec, FastTextSpec, ImageSpec, LongText, ModelEntry, ModelSpec, Pooling,
};
/// How many of a spec file's errors `from_file_with` reports at once.
const MAX_ERRORS_SHOWN: usize = 10;

pub use runtime::{ExecutorsSpec, FlightSpec, MonitoringSpec, SecuritySpec, TriggerSpec, YieldSpec};
pub use sink::{
    DeltaSinkSpec, Guarantee, KafkaSinkSpec, ModelChange, ParquetSinkSpec, PartitionBy, PgDistance, PgIndex, PgMode,
    PgvectorSinkSpec, SinkCommon, SinkKind, SinkSpec, VectorFormat,
};
pub use source::{SourceSpec, StartAt, StartingOffsets};
pub use units::{parse_memory_mb, HumanDuration, MemorySize, Mib, Written};

/// A job spec that failed to parse or validate. `key` is the dotted path of the offending
/// key (`source.max_offsets_per_trigger`), or empty for a TOML syntax error.
#[derive(Debug, thiserror::Error)]
#[error("job spec: {}{message}", if key.is_empty() { String::new() } else { format!("`{key}`: ") })]
pub struct SpecError {
    pub key: String,
    pub message: String,
}

impl SpecError {
    pub(crate) fn new(key: &str, message: impl Into<String>) -> Self {
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
    /// What a record's value is and the fields models read (default: the value is the text).
    #[serde(default)]
    pub input: InputSpec,
    /// One text model, as the first specs wrote it: named by its id, its vector the
    /// `embedding` column. A spec has this or `[[models]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// Several models, each computed for every record, each its own output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelEntry>,
    /// How images named by URL are downloaded (`image-onnx` models).
    #[serde(default)]
    pub fetch: FetchSpec,
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

/// Part of the spec's table, with its errors' keys under `at.` (`sink.format`).
pub(crate) fn section_at<T: serde::de::DeserializeOwned>(at: &str, table: toml::Table) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { at.to_string() } else { format!("{at}.{path}") };
        SpecError { key, message: words::in_words(&e.into_inner().to_string()) }
    })
}

/// A directory the query writes: a local path, or an HDFS one as Hadoop users write them:
/// `hdfs://NAMENODE[:PORT]/path`, `hdfs://NAMESERVICE/path` (an HA name service of
/// `HADOOP_CONF_DIR`'s hdfs-site.xml) or `hdfs:///path` (the default file system, `fs.defaultFS`).
pub(crate) fn check_location(key: &str, path: &Path) -> Result<(), SpecError> {
    let text = path.to_string_lossy();
    if crate::store::is_url(&text) {
        if !crate::store::is_hdfs(path) {
            return Err(SpecError::new(key, format!("`{text}`: a local directory or an hdfs:// URL")));
        }
        let rest = &text[crate::store::HDFS_SCHEME.len()..];
        if !rest.contains('/') || rest.ends_with("//") {
            return Err(SpecError::new(
                key,
                format!(
                    "`{text}`: an hdfs:// URL with a path: hdfs://NAMENODE:PORT/path, hdfs://NAMESERVICE/path or \
                     hdfs:///path (the default file system)"
                ),
            ));
        }
    }
    Ok(())
}

/// What a task's default deadline allows beyond its records' share: connecting, the first fetch,
/// the sink's acknowledgements.
pub const TASK_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

fn default_batches_to_retain() -> u64 {
    100
}

impl JobSpec {
    /// Parses and validates a job spec. Errors name the key. Checks no file: see
    /// [`JobSpec::check_files`].
    pub fn from_toml(text: &str) -> Result<JobSpec, SpecError> {
        Self::from_table(Self::parse_table(text)?)
    }

    fn parse_table(text: &str) -> Result<toml::Table, SpecError> {
        text.parse().map_err(|e: toml::de::Error| SpecError::new("", e.to_string()))
    }

    fn from_table(mut table: toml::Table) -> Result<JobSpec, SpecError> {
        source::read_deprecated(&mut table)?;
        let sink = table.get("sink").cloned();
        let models = table.get("models").cloned();
        let spec: JobSpec = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            // The sink's and the models' own parsers name the key inside their section.
            if let (Some(sink), true) = (sink, key == "sink") {
                if let Err(inner) = SinkSpec::from_value(sink) {
                    return inner;
                }
            }
            if let (Some(models), true) = (models, key.starts_with("models")) {
                if let Err(inner) = ModelEntry::list_from_value(models) {
                    return inner;
                }
            }
            let key = if key == "." { String::new() } else { key };
            SpecError { key, message: words::in_words(&e.into_inner().to_string()) }
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Reads, parses and validates a job spec file.
    pub fn from_file(path: &Path) -> Result<JobSpec, SpecError> {
        Self::from_file_with(path, &[])
    }

    /// Reads a job spec file, applies `overrides` (`--conf key.path=value`, each value TOML or
    /// else a string), resolves its relative paths against the file's directory, and parses and
    /// validates the result.
    pub fn from_file_with(path: &Path, overrides: &[String]) -> Result<JobSpec, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError::new("", format!("cannot read {}: {e}", path.display())))?;
        // An error says where: the file, and the line its key is on (toml's own errors say
        // their line already).
        let located = |mut e: SpecError| {
            match words::line_of(&text, &e.key) {
                Some(line) => e.message = format!("{} (at {}:{line})", e.message, path.display()),
                None => e.message = format!("{} (in {})", e.message, path.display()),
            }
            e
        };
        let mut table = Self::parse_table(&text).map_err(located)?;
        for o in overrides {
            paths::set_override(&mut table, o)?;
        }
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        paths::resolve_relative(&mut table, &base);
        let first = match Self::from_table(table.clone()) {
            Ok(spec) => return Ok(spec),
            Err(e) => e,
        };
        // Every error at once, not only the first: take the offending key out and parse again
        // (a key with a default then takes it), until the rest parses or no key is named.
        let mut errors = vec![first];
        let mut removed = Vec::new();
        while errors.len() < MAX_ERRORS_SHOWN {
            let key = errors.last().expect("one error at least").key.clone();
            if key.is_empty() || !paths::remove(&mut table, &key) {
                break;
            }
            removed.push(key);
            match Self::from_table(table.clone()) {
                Ok(_) => break,
                // Taking a required key out is not the user's error.
                Err(e) if removed.contains(&e.key) || e.message.starts_with("missing field") => break,
                Err(e) => errors.push(e),
            }
        }
        let mut errors = errors.into_iter().map(located);
        let mut first = errors.next().expect("one error at least");
        let rest: Vec<String> = errors.map(|e| format!("  {e}")).collect();
        if !rest.is_empty() {
            first.message = format!("{}\n{}", first.message, rest.join("\n"));
        }
        Err(first)
    }

    /// The files the spec names exist on this machine (the model and tokenizer, the token
    /// file). Run where they are used, before anything starts.
    pub fn check_files(&self) -> Result<(), SpecError> {
        for (at, model) in self.text_models_at() {
            model.check_files(&at)?;
        }
        for (i, entry) in self.models.iter().enumerate() {
            match entry {
                ModelEntry::FastText(f) => f.check_files(&format!("models[{i}]"))?,
                ModelEntry::ImageOnnx(m) => m.check_files(&format!("models[{i}]"))?,
                ModelEntry::Combine(c) => c.check_files(&format!("models[{i}]"))?,
                ModelEntry::TextOnnx(_) => {}
            }
        }
        self.security.check_files()?;
        if let Some(ca) = self.input.schema_registry.as_ref().and_then(|r| r.ca.as_ref()) {
            if !ca.is_file() {
                return Err(SpecError::new("input.schema_registry.ca", format!("{}: no such file", ca.display())));
            }
        }
        // An HDFS location must name a file system this machine can resolve: `hdfs:///` needs
        // `fs.defaultFS`, and the client is made (no call to the NameNode yet).
        let mut locations = vec![("checkpoint_location", self.checkpoint_location.as_path())];
        if let Some(table) = self.sink.table_path() {
            locations.push(("sink.path", table));
        }
        for (key, path) in locations.into_iter().filter(|(_, p)| crate::store::is_hdfs(p)) {
            crate::store::check_hdfs(path).map_err(|e| SpecError::new(key, e.to_string()))?;
        }
        Ok(())
    }

    /// The ONNX text models with their keys (`model`, `models[2]`), in the spec's order.
    fn text_models_at(&self) -> Vec<(String, &ModelSpec)> {
        let entries = self.models.iter().enumerate().filter_map(|(i, e)| match e {
            ModelEntry::TextOnnx(m) => Some((format!("models[{i}]"), m)),
            _ => None,
        });
        self.model.iter().map(|m| ("model".to_string(), m)).chain(entries).collect()
    }

    /// The ONNX text models (`[model]`, or the `text-onnx` entries), in order.
    pub fn text_models(&self) -> Vec<&ModelSpec> {
        self.text_models_at().into_iter().map(|(_, m)| m).collect()
    }

    /// Every model file the spec names (`[model]`'s and each entry's), to rewrite their paths
    /// (fetched from HDFS, staged for YARN), with a short name for each.
    pub fn model_files_mut(&mut self) -> Vec<(String, &mut PathBuf)> {
        let mut files = Vec::new();
        if let Some(m) = &mut self.model {
            files.push(("model.onnx".to_string(), &mut m.onnx));
            files.push(("tokenizer.json".to_string(), &mut m.tokenizer));
        }
        for (i, entry) in self.models.iter_mut().enumerate() {
            match entry {
                ModelEntry::TextOnnx(m) => {
                    files.push((format!("model-{i}-model.onnx"), &mut m.onnx));
                    files.push((format!("model-{i}-tokenizer.json"), &mut m.tokenizer));
                }
                ModelEntry::FastText(f) => {
                    let name = f.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    files.push((format!("model-{i}-{name}"), &mut f.model));
                }
                ModelEntry::ImageOnnx(m) => files.push((format!("model-{i}-image.onnx"), &mut m.onnx)),
                ModelEntry::Combine(c) => {
                    if let Some(head) = &mut c.onnx {
                        files.push((format!("model-{i}-head.onnx"), head));
                    }
                }
            }
        }
        files
    }

    /// Whether the query's rows are chunks (`chunk_pooling = "none"`): one output per chunk of
    /// a record, with its index and token span.
    pub fn chunk_outputs(&self) -> bool {
        self.text_models().iter().any(|m| m.chunk_pooling == ChunkPooling::Each)
    }

    /// The image models (`image-onnx` entries), in order.
    pub fn image_models(&self) -> Vec<&ImageSpec> {
        (self.models.iter())
            .filter_map(|e| match e {
                ModelEntry::ImageOnnx(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// The first ONNX text model (what the benchmarks measure).
    pub fn first_text_model(&self) -> &ModelSpec {
        self.text_models().into_iter().next().expect("a validated spec has a text model")
    }

    /// Every model, `[model]` as a `text-onnx` entry named by its id, in the spec's order.
    pub fn model_entries(&self) -> Vec<ModelEntry> {
        match &self.model {
            Some(m) => vec![ModelEntry::TextOnnx(ModelSpec { name: Some(m.model_id()), ..m.clone() })],
            None => self.models.clone(),
        }
    }

    /// The models whose vectors the sink writes, in the spec's order: `sink.models`, or all.
    pub fn written_models(&self) -> Vec<String> {
        let all = self.model_entries().into_iter().map(|e| e.name().to_string());
        match &self.sink.common.models {
            picked if picked.is_empty() => all.collect(),
            picked => all.filter(|n| picked.contains(n)).collect(),
        }
    }

    /// The column of model `name`'s vectors: `embedding` for `[model]`, else `embedding_<name>`.
    pub fn output_column(&self, name: &str) -> String {
        match &self.model {
            Some(_) => "embedding".to_string(),
            None => format!("embedding_{name}"),
        }
    }

    /// Records a task reads and checks at a time: the largest sort window of its ONNX models.
    pub fn window_rows(&self) -> usize {
        self.text_models().iter().map(|m| m.sort_window).max().unwrap_or(model::DEFAULT_SORT_WINDOW).max(1)
    }

    /// How long a task waits for its partition's last executor (`executors.locality_wait`):
    /// by default Spark's 3 s where a text model keeps an embedding cache (`cache_bytes`), which
    /// only that executor holds, and none otherwise, where waiting would only leave cores idle.
    pub fn locality_wait(&self) -> std::time::Duration {
        match &self.executors.locality_wait {
            Some(w) => w.get(),
            None if self.text_models().iter().any(|m| m.cache_bytes.is_some()) => std::time::Duration::from_secs(3),
            None => std::time::Duration::ZERO,
        }
    }

    /// How long a task attempt over `records` records may run before the driver gives up on it:
    /// `executors.task_timeout`, or one minute plus every text model's `worker_timeout_per_text`
    /// and every image model's `worker_timeout_per_image` a record.
    pub fn task_deadline(&self, records: u64) -> std::time::Duration {
        match &self.executors.task_timeout {
            Some(t) => t.get(),
            None => {
                let texts = self.text_models().into_iter().map(|m| m.worker_timeout_per_text.get());
                let images = self.image_models().into_iter().map(|m| m.worker_timeout_per_image.get());
                let per_record = texts.chain(images).sum::<std::time::Duration>();
                TASK_GRACE.saturating_add(per_record.saturating_mul(records.min(u32::MAX as u64) as u32))
            }
        }
    }

    /// `transaction.timeout.ms` of an exactly-once Kafka sink's transactions: the deadline of the
    /// largest task a trigger plans (`max_offsets_per_trigger` records, else 10,000) and a
    /// minute, within the broker's default `transaction.max.timeout.ms` (15 minutes). A task
    /// that dies leaves its transaction open this long at most, when no attempt follows it.
    pub fn transaction_timeout(&self) -> std::time::Duration {
        let records = self.source.max_offsets_per_trigger.unwrap_or(10_000);
        let timeout = self.task_deadline(records) + std::time::Duration::from_secs(60);
        timeout.min(std::time::Duration::from_secs(900))
    }

    /// Where the driver keeps what is only for this machine's tools (`progress.jsonl`,
    /// `driver.json`, `monitoring/targets.json`): the checkpoint's directory, or, when the
    /// checkpoint is on HDFS, `embedstream-state/` in the working directory (a YARN
    /// container's own directory).
    pub fn local_state_dir(&self) -> PathBuf {
        if crate::store::is_hdfs(&self.checkpoint_location) {
            std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")).join("embedstream-state")
        } else {
            self.checkpoint_location.clone()
        }
    }

    /// The spec as TOML, as executors receive it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a JobSpec always serialises")
    }

    pub fn group_id(&self) -> String {
        self.source.group_id.clone().unwrap_or_else(|| format!("embedstream-{}", self.name))
    }

    /// The spec with the defaults the query derives written out: the consumer group, the
    /// model's id and the dead-letter topic (what `validate` shows).
    pub fn with_derived(&self) -> JobSpec {
        let mut spec = self.clone();
        spec.source.group_id = Some(self.group_id());
        if let Some(m) = &mut spec.model {
            m.id = Some(m.model_id());
        }
        spec.sink.common.dead_letter_topic = Some(self.dead_letter_topic());
        spec
    }

    pub fn sink_bootstrap_servers(&self) -> &str {
        self.sink.bootstrap_servers().unwrap_or(&self.source.bootstrap_servers)
    }

    pub fn dead_letter_topic(&self) -> String {
        self.sink.dead_letter_topic(&self.name)
    }

    /// Checks values that parse but cannot work. Also run by `from_toml`.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(SpecError::new("name", "must be non-empty letters, digits, '.', '_' or '-'"));
        }
        check_location("checkpoint_location", &self.checkpoint_location)?;
        if self.checkpoint_location.as_os_str().is_empty() {
            return Err(SpecError::new("checkpoint_location", "must not be empty"));
        }
        if self.min_batches_to_retain == 0 {
            return Err(SpecError::new("min_batches_to_retain", "must be at least 1: recovery reads the last batch"));
        }
        self.source.validate()?;
        self.trigger.validate()?;
        if self.trigger.yield_to.as_ref().is_some_and(|y| y.group == self.group_id()) {
            return Err(SpecError::new(
                "trigger.yield_to.group",
                format!("is this query's own group ({}): name the live query's", self.group_id()),
            ));
        }
        let avro_output = matches!(&self.sink.kind, SinkKind::Kafka(k) if k.format == VectorFormat::Avro);
        self.input.validate(avro_output)?;
        if avro_output && self.input.schema_registry.is_none() {
            return Err(SpecError::new(
                "sink.format",
                "\"avro\" registers its schema in the query's registry: set input.schema_registry.url",
            ));
        }
        match (&self.model, self.models.is_empty()) {
            (Some(_), false) => {
                return Err(SpecError::new("models", "a spec has [model] or [[models]], not both"));
            }
            (None, true) => {
                return Err(SpecError::new("model", "missing: a spec needs [model] or [[models]]"));
            }
            (Some(m), true) => {
                if m.name.is_some() {
                    return Err(SpecError::new(
                        "model.name",
                        "[model] is named by its id: names are for [[models]] entries",
                    ));
                }
                m.validate("model", &self.input)?;
            }
            (None, false) => model::validate_entries(&self.models, &self.input)?,
        }
        // One output per chunk makes several rows of a record: the query's one model.
        let entries = self.model_entries().len();
        if let Some((at, _)) = self.text_models_at().into_iter().find(|(_, m)| m.chunk_pooling == ChunkPooling::Each) {
            if entries > 1 {
                return Err(SpecError::new(
                    &format!("{at}.chunk_pooling"),
                    "\"none\" (one output per chunk) is for a query of one model: its rows are chunks, not records",
                ));
            }
        }
        let names: Vec<String> = self.model_entries().iter().map(|e| e.name().to_string()).collect();
        if let Some(unknown) = self.sink.common.models.iter().find(|n| !names.contains(n)) {
            return Err(SpecError::new("sink.models", format!("`{unknown}` is not a model of this spec")));
        }
        self.fetch.validate()?;
        self.flight.validate()?;
        self.sink.validate(&self.name, &self.source)?;
        self.input.validate_columns(self.sink.columns(), "sink.columns")?;
        if matches!(self.sink.kind, SinkKind::Pgvector(_)) && self.chunk_outputs() {
            return Err(SpecError::new(
                "sink.kind",
                "\"pgvector\" keeps a row per record: chunk_pooling = \"none\" (a row per chunk) is for the kafka \
                 and parquet sinks",
            ));
        }
        if self.sink.exactly_once_kafka() {
            self.validate_exactly_once()?;
        }
        self.validate_skip_unchanged()?;
        self.monitoring.validate()?;
        self.executors.validate()
    }

    /// Whether records whose inputs are unchanged for their key are skipped (`skip_unchanged`
    /// on the models that read records; [`JobSpec::validate`] makes them agree).
    pub fn skip_unchanged(&self) -> bool {
        self.model_entries().iter().any(|e| e.skip_unchanged() == Some(true))
    }

    /// `skip_unchanged`: on every model that reads records or none (a record is skipped as a
    /// whole), a sink that keeps each key's last input (pgvector upserts, Kafka), a row per
    /// record.
    fn validate_skip_unchanged(&self) -> Result<(), SpecError> {
        let at = |i: usize| match self.model {
            Some(_) => "model.skip_unchanged".to_string(),
            None => format!("models[{i}].skip_unchanged"),
        };
        let reads: Vec<(usize, bool)> =
            (self.model_entries().iter().enumerate()).filter_map(|(i, e)| e.skip_unchanged().map(|s| (i, s))).collect();
        let Some(&(first, _)) = reads.iter().find(|(_, s)| *s) else { return Ok(()) };
        if let Some(&(off, _)) = reads.iter().find(|(_, s)| !*s) {
            return Err(SpecError::new(
                &at(off),
                format!(
                    "is false while {} is true: a record is skipped as a whole, so every model that reads records \
                     says the same",
                    at(first)
                ),
            ));
        }
        let fits = match &self.sink.kind {
            SinkKind::Kafka(_) => true,
            SinkKind::Pgvector(p) => p.mode == PgMode::Upsert,
            SinkKind::Parquet(_) | SinkKind::Delta(_) => false,
        };
        if !fits {
            return Err(SpecError::new(
                &at(first),
                "needs a sink that keeps each key's last input: kind = \"pgvector\" with mode = \"upsert\", or \
                 kind = \"kafka\"",
            ));
        }
        if self.chunk_outputs() {
            return Err(SpecError::new(
                &at(first),
                "is not read with chunk_pooling = \"none\": a record's rows are its chunks",
            ));
        }
        Ok(())
    }

    /// The input fields the sink writes as columns of their own (`[sink] columns` but
    /// `value`), typed by `[input.types]`, in the spec's order.
    pub fn field_columns(&self) -> Vec<FieldColumn> {
        self.input.field_columns(self.sink.columns())
    }

    /// What Kafka transactions need: the consumer group's offsets are sent in each task's
    /// transaction, so the output is on the source's cluster, dead letters share the sink's
    /// producer, and a partition's range is one task (a split's tasks would commit the
    /// partition's offset out of order).
    fn validate_exactly_once(&self) -> Result<(), SpecError> {
        const WHY: &str = "with sink.guarantee = \"exactly_once\"";
        if self.sink.bootstrap_servers().is_some_and(|b| b != self.source.bootstrap_servers) {
            return Err(SpecError::new(
                "sink.bootstrap_servers",
                format!("{WHY} the output goes to the source's cluster: the consumer group's offsets are committed in the same transaction"),
            ));
        }
        if self.sink.dead_letter_kafka().is_some() {
            return Err(SpecError::new(
                "sink.dead_letter_kafka",
                format!("{WHY} dead letters are written in the task's transaction, by the sink's producer"),
            ));
        }
        if self.source.min_partitions.is_some() {
            return Err(SpecError::new(
                "source.min_partitions",
                format!(
                    "{WHY} a partition's range is one task (the tasks of a split would commit its offset out of order)"
                ),
            ));
        }
        Ok(())
    }

    /// Topics named by `subscribe` or `assign` (empty for a pattern).
    pub fn source_topics(&self) -> Vec<String> {
        self.source.topics()
    }

    /// Whether this query reads `topic`.
    pub fn reads_topic(&self, topic: &str) -> bool {
        self.source.reads_topic(topic)
    }
}
