//! The driver's check, before the first batch, that the sink's output does not already hold
//! vectors of another version of a model (`embedstream_core::model_version`): a pgvector
//! table's version columns, the last records of a Kafka output topic (`es.model_version`).
//! `[sink] on_model_change = "refuse"` (the default) stops the query with an error naming the
//! column or topic, both versions and how to re-embed; `"replace"` has a new checkpoint that
//! reads the source from its start delete a pgvector table's rows of other versions (and take
//! the table over), and lets a Kafka topic go on (each record says its version).
//! A Parquet or Delta table is checked by its newest committed file's version columns (a
//! table holds one version; `replace` is refused for them when the spec is read). Vectors
//! written before versions were (no column, no header) are not compared.

use std::collections::BTreeMap;
use std::time::Duration;

use embedstream_core::spec::{JobSpec, ModelChange, SinkKind};
use embedstream_core::spec::{PgvectorSinkSpec, Secret};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::pgvector::table::quote;
use crate::rows::version_column;
use crate::SinkError;

/// How many records at the end of each output partition are read for their versions: enough
/// to pass a transaction's markers and a batch's dead letters' neighbours.
const LAST_RECORDS: i64 = 32;
const TIMEOUT: Duration = Duration::from_secs(10);

/// One written model's version and the table column that holds it.
#[derive(Debug, Clone)]
pub struct WrittenVersion {
    pub model: String,
    pub version: String,
    pub column: String,
}

/// The versions of the models the sink writes (`versions` by model name), with their columns.
pub fn written_versions(spec: &JobSpec, versions: &BTreeMap<String, String>) -> Vec<WrittenVersion> {
    let written = spec.written_models();
    written
        .iter()
        .map(|model| WrittenVersion {
            model: model.clone(),
            version: versions.get(model).cloned().unwrap_or_default(),
            column: version_column(&spec.output_column(model), written.len()),
        })
        .collect()
}

/// What to tell a user whose output holds another version.
fn refused(at: String, w: &WrittenVersion, found: &str) -> SinkError {
    SinkError::ModelVersion(format!(
        "{at} holds vectors of model `{}` version {found}; this query's is {}. To write the new version over \
         them, set [sink] on_model_change = \"replace\" (a table's rows of other versions are deleted first); \
         to keep serving the old vectors while the new ones are made, write the new version to a new table or \
         topic and switch readers when it has caught up (docs/records-and-models.md, \"Model versions and re-embedding\")",
        w.model, w.version
    ))
}

/// Checks the sink's output against this query's model versions (see the module's header).
pub async fn check(
    spec: &JobSpec,
    versions: &BTreeMap<String, String>,
    sink_client: ClientConfig,
    password: Option<&Secret>,
    start: &Start,
) -> Result<(), SinkError> {
    let written = written_versions(spec, versions);
    let on_change = spec.sink.common.on_model_change;
    match &spec.sink.kind {
        SinkKind::Kafka(k) => {
            let topic = k.topic.clone();
            let found = tokio::task::spawn_blocking(move || last_versions(sink_client, &topic))
                .await
                .expect("reading versions does not panic")?;
            for w in &written {
                let other = found.iter().find(|(model, _, v)| model == &w.model && v != &w.version);
                if let Some((_, partition, v)) = other {
                    let at = format!("sink.topic `{}` (partition {partition})", k.topic);
                    match on_change {
                        ModelChange::Refuse => return Err(refused(at, w, v)),
                        ModelChange::Replace => tracing::warn!(
                            topic = %k.topic, model = %w.model, old = %v, new = %w.version,
                            "the output topic holds vectors of another model version; on_model_change = \"replace\": \
                             writing the new version after them"
                        ),
                    }
                }
            }
            Ok(())
        }
        SinkKind::Pgvector(p) => check_table(p, password, &written, on_change, start).await,
        SinkKind::Parquet(p) => {
            let table = p.path.clone();
            let newest = tokio::task::spawn_blocking(move || embedstream_core::manifest::visible_files(&table))
                .await
                .expect("listing the manifests does not panic")
                .map_err(|e| SinkError::Table(e.to_string()))?
                .pop();
            check_file(newest, &written, "sink.path", &p.path).await
        }
        SinkKind::Delta(d) => {
            let newest = crate::delta::last_file(d).await?;
            check_file(newest, &written, "sink.path", &d.path).await
        }
    }
}

/// A Parquet or Delta table's newest committed file, read for its version columns: a table
/// holds one query's vectors (a Delta table is owned by its query; a Parquet table's manifests
/// name theirs), so its newest file says which version the table is at. Replacing a table's
/// files is not offered: the new version goes to a new path.
async fn check_file(
    newest: Option<std::path::PathBuf>,
    written: &[WrittenVersion],
    key: &str,
    table: &std::path::Path,
) -> Result<(), SinkError> {
    let Some(file) = newest else { return Ok(()) };
    let columns: Vec<String> = written.iter().map(|w| w.column.clone()).collect();
    let read = file.clone();
    let found = tokio::task::spawn_blocking(move || versions_in_file(&read, &columns))
        .await
        .expect("reading a file's versions does not panic")
        .map_err(|e| {
            SinkError::Table(format!(
                "{key} {}: reading {} for its model versions: {e}",
                table.display(),
                file.display()
            ))
        })?;
    for w in written {
        let Some(Some(v)) = found.get(&w.column) else { continue };
        if v != &w.version {
            return Err(SinkError::ModelVersion(format!(
                "{key} {} column `{}` holds vectors of model `{}` version {v}; this query's is {}. A table holds one \
                 version: write the new one to a new {key} (and a new checkpoint_location from the earliest offsets), \
                 then switch readers to it (docs/records-and-models.md, \"Model versions and re-embedding\")",
                table.display(),
                w.column,
                w.model,
                w.version
            )));
        }
    }
    Ok(())
}

/// The first non-null value of each of `columns` that `file` has (a file is one attempt's:
/// one version a column); a column the file lacks (written before versions) is left out.
fn versions_in_file(
    file: &std::path::Path,
    columns: &[String],
) -> Result<BTreeMap<String, Option<String>>, Box<dyn std::error::Error + Send + Sync>> {
    use arrow_array::{Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;

    let bytes = embedstream_core::store::read(file)?.ok_or("the manifest lists it, and it is not there")?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))?;
    let schema = builder.schema().clone();
    let present: Vec<usize> = columns.iter().filter_map(|c| schema.index_of(c).ok()).collect();
    if present.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), present);
    let mut found: BTreeMap<String, Option<String>> = BTreeMap::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        for (i, field) in batch.schema().fields().iter().enumerate() {
            let Some(values) = batch.column(i).as_any().downcast_ref::<StringArray>() else { continue };
            let first = (0..values.len()).find(|&r| values.is_valid(r)).map(|r| values.value(r).to_string());
            let entry = found.entry(field.name().clone()).or_default();
            if entry.is_none() {
                *entry = first;
            }
        }
        if found.len() == columns.len() && found.values().all(Option::is_some) {
            break;
        }
    }
    Ok(found)
}

/// (model, partition, version) of the last records of each partition of `topic` that carry
/// both `es.model` and `es.model_version`.
fn last_versions(config: ClientConfig, topic: &str) -> Result<Vec<(String, i32, String)>, SinkError> {
    let mut config = config;
    config.set("group.id", "embedstream-version-check").set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(Vec::new()) };
    if t.error().is_some() {
        // No such topic yet: nothing to compare.
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), TIMEOUT)?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset((high - LAST_RECORDS).max(low)))?;
            ends.insert(p.id(), high);
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl)?;
    let mut found = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m?;
        let header = |name: &str| {
            m.headers()?
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| Some(String::from_utf8_lossy(h.value?).into_owned()))
        };
        if let (Some(model), Some(version)) = (header("es.model"), header("es.model_version")) {
            found.push((model, m.partition(), version));
        }
        if ends.get(&m.partition()).is_some_and(|&end| m.offset() + 1 >= end) {
            ends.remove(&m.partition());
        }
    }
    // A partition whose last offsets are transaction markers ends without a record at its
    // high watermark: what was read of it before the deadline is what there is.
    Ok(found)
}

/// A pgvector table's version columns: another version found is refused; with `replace`, a
/// new checkpoint that reads the source from its earliest offsets deletes the rows of other
/// versions and takes the table over from the query that wrote them (its rows of
/// `sink.offsets_table`), in one transaction, so that every row ends with this version's
/// vector. Rows written before versions were (no version) are not compared.
async fn check_table(
    spec: &PgvectorSinkSpec,
    password: Option<&Secret>,
    written: &[WrittenVersion],
    on_change: ModelChange,
    start: &Start,
) -> Result<(), SinkError> {
    let db = crate::pgvector::Database::new(spec, password)?;
    let mut client = db.connect().await?;
    let existing = crate::pgvector::columns_of(&client, &spec.table)
        .await
        .map_err(|e| db.error(&format!("checking sink.table `{}`", spec.table), &e))?;
    let table = quote(&spec.table);
    for w in written {
        if !existing.iter().any(|(name, _)| name == &w.column) {
            // No table yet, or one written before versions were.
            continue;
        }
        let column = quote(&w.column);
        let other = format!("SELECT {column} FROM {table} WHERE {column} <> $1 LIMIT 1");
        let doing = format!("reading sink.table `{}` column `{}`", spec.table, w.column);
        let row = client.query_opt(&other, &[&w.version]).await.map_err(|e| db.error(&doing, &e))?;
        let Some(row) = row else { continue };
        let found: String = row.get(0);
        let at = format!("sink.table `{}` column `{}`", spec.table, w.column);
        if on_change == ModelChange::Refuse {
            return Err(refused(at, w, &found));
        }
        if let Some(why) = start.cannot_replace() {
            return Err(SinkError::ModelVersion(format!(
                "{at} holds vectors of model `{}` version {found}; sink.on_model_change = \"replace\" embeds every \
                 record again into it, which needs {why}",
                w.model
            )));
        }
        let doing = format!("replacing the rows of other versions in sink.table `{}`", spec.table);
        let offsets =
            crate::pgvector::columns_of(&client, &spec.offsets_table).await.map_err(|e| db.error(&doing, &e))?;
        let tx = client.transaction().await.map_err(|e| db.error(&doing, &e))?;
        let delete = format!("DELETE FROM {table} WHERE {column} IS DISTINCT FROM $1");
        let deleted = tx.execute(&delete, &[&w.version]).await.map_err(|e| db.error(&doing, &e))?;
        if !offsets.is_empty() {
            let hand_over = format!("DELETE FROM {} WHERE \"sink_table\" = $1", quote(&spec.offsets_table));
            tx.execute(&hand_over, &[&spec.table]).await.map_err(|e| db.error(&doing, &e))?;
        }
        tx.commit().await.map_err(|e| db.error(&doing, &e))?;
        tracing::warn!(table = %spec.table, column = %w.column, old = %found, new = %w.version, deleted,
            "on_model_change = \"replace\": deleted the rows of other model versions; this query writes the table now");
    }
    Ok(())
}

/// Where the query starts, for `replace`: a table's rows can only be replaced by a query that
/// reads its whole source again.
#[derive(Debug, Clone)]
pub struct Start {
    /// No batch has been planned in the checkpoint yet.
    pub fresh: bool,
    /// `source.starting_offsets` is `"earliest"`.
    pub earliest: bool,
}

impl Start {
    fn cannot_replace(&self) -> Option<&'static str> {
        match (self.fresh, self.earliest) {
            (false, _) => Some(
                "a new checkpoint_location (this one has already planned batches: the records it read would not be \
                 embedded again)",
            ),
            (true, false) => {
                Some("source.starting_offsets = \"earliest\" (from later offsets, older keys would be lost)")
            }
            (true, true) => None,
        }
    }
}
