//! Where embeddings go: every sink is a component in its own folder here, with its executor
//! half (the writer) and its driver half (the batch committer); its keys are its variant of
//! `embedstream_core::spec::SinkKind`, because every process parses the spec. The contract:
//!
//! - [`Sink::open`] once per task attempt, giving a [`TaskWriter`];
//! - [`Sink::admit`] for each record before any model sees it: embed it (the default), delete
//!   its key's output (a tombstone, for a sink keyed by Kafka key), or refuse it with a reason
//!   (to the dead-letter topic);
//! - [`TaskWriter::write`] for each window of embedded rows, in offset order (the columns of
//!   [`rows::output_schema`]), and [`TaskWriter::delete`] for the tombstones of a window;
//! - [`TaskWriter::commit`] when the task is done, or [`TaskWriter::abort`] when it failed;
//! - per batch, the driver's [`commit::BatchCommitter`]: nothing to publish for Kafka, the
//!   manifest for Parquet (`embedstream_core::manifest`), a Delta commit for [`delta`], the
//!   end offsets for pgvector,
//!   written once every task of the batch has committed.
//!
//! Guarantees: [`kafka`] is at-least-once (a retried task writes its records again; the
//! idempotent producer never duplicates within an attempt); [`parquet`] is exactly-once for
//! readers that go through the manifests; [`delta`] is exactly-once for every Delta reader
//! (one Delta commit per batch, idempotent by the query's `txn`); [`pgvector`] is exactly-once by construction (every
//! window is a merge keyed by the record's origin or key, which a re-run repeats). Dead letters ([`dead_letters`]) are a component of
//! their own that every sink's tasks use: they always go to the Kafka dead-letter topic.
//!
//! A new sink (Qdrant, Elasticsearch) is a folder here, one arm in [`open`] and in
//! [`committer`], and its variant of `SinkKind`.

pub mod commit;
pub mod dead_letters;
pub mod delta;
pub mod hooks;
pub mod kafka;
pub mod parquet;
pub mod pgvector;
pub mod registry;
pub mod rows;
pub mod versions;

use std::sync::Arc;

use arrow_array::RecordBatch;
use embedstream_core::manifest::ManifestFile;
use embedstream_core::spec::{FieldColumn, JobSpec, Secret, SinkKind, SinkSpec};
use futures::future::BoxFuture;
use rdkafka::error::KafkaError;

pub use commit::{BatchCommitter, BatchRange, CommitError, Published};
pub use dead_letters::DeadLetters;
pub use kafka::{KafkaProducer, KafkaSink};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("kafka producer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("delivery to {topic}: {error}")]
    Delivery { topic: String, error: KafkaError },
    #[error("delivery to {topic} was cancelled (producer closed)")]
    Cancelled { topic: String },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// A table that cannot be written by this query (its committer says why, naming `sink.path`).
    #[error("{0}")]
    Table(String),
    /// A database sink's server: `url` is `sink.url` as the spec writes it (no password).
    #[error("sink.url = \"{url}\": {message}")]
    Database { url: String, message: String },
    /// A Kafka transaction (`sink.guarantee = "exactly_once"`) could not be begun or committed.
    #[error("Kafka transaction: {0}")]
    Transaction(String),
    /// The output already holds vectors of another model version (`sink.on_model_change`).
    #[error("{0}")]
    ModelVersion(String),
    /// The Avro output schema could not be registered (`sink.format = "avro"`).
    #[error("sink.format = \"avro\": {0}")]
    Registry(#[from] registry::RegistryError),
}

/// The task attempt a writer belongs to.
pub struct TaskInfo {
    pub batch_id: u64,
    pub task_id: u32,
    pub attempt: u32,
    /// The partition of the output topic (Kafka).
    pub partition: i32,
    /// The Kafka topic id of the records' topic (the incarnation they are in), empty when the
    /// batch was logged before ids were kept.
    pub topic_id: String,
    /// The source range the task reads (a Kafka transaction's unit).
    pub source: kafka::transactions::SourceRange,
}

/// What a committed task attempt hands to the driver.
#[derive(Default)]
pub struct TaskOutput {
    /// Files to publish in the batch's manifest (file sinks).
    pub files: Vec<ManifestFile>,
    /// Per row written: seconds from its Kafka timestamp to the sink's acknowledgement.
    pub latency: embedstream_core::latency::LatencyHistogram,
    /// An exactly-once Kafka attempt's transaction calls, timed.
    pub transaction: Option<kafka::transactions::TransactionTimes>,
}

/// What a sink makes of a record before any model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Embed it and write its row.
    Embed,
    /// A tombstone: delete its key's row ([`TaskWriter::delete`]).
    Delete,
    /// The sink cannot hold it: to the dead-letter topic with this reason.
    Refuse(String),
}

pub trait Sink: Send + Sync {
    fn open(&self, task: &TaskInfo) -> Result<Box<dyn TaskWriter>, SinkError>;

    /// Every record is embedded unless a sink says otherwise.
    fn admit(&self, _key: Option<&[u8]>, _value: Option<&[u8]>) -> Admit {
        Admit::Embed
    }
}

pub trait TaskWriter: Send {
    /// Starts the attempt before anything is written: `true` when an earlier attempt made the
    /// range durable already (an exactly-once Kafka sink's committed transaction), so that this
    /// one must write nothing.
    fn begin(&mut self) -> BoxFuture<'_, Result<bool, SinkError>> {
        Box::pin(async { Ok(false) })
    }
    /// The producer the attempt's dead letters go through, when it is not the executor's
    /// shared one (the attempt's transaction).
    fn dead_letter_producer(&self) -> Option<Arc<KafkaProducer>> {
        None
    }
    /// With `skip_unchanged`: the input fingerprint each of `keys` was last written with (a key
    /// with none is absent), read where the sink keeps it (pgvector's `input_hash` column, a
    /// Kafka sink's state topic). A sink that keeps none answers none.
    fn last_inputs<'a>(
        &'a mut self,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<std::collections::HashMap<Vec<u8>, String>, SinkError>> {
        let _ = keys;
        Box::pin(async { Ok(Default::default()) })
    }
    /// Takes one window of rows (columns of [`rows::output_schema`]), in offset order.
    fn write<'a>(&'a mut self, rows: &'a RecordBatch) -> BoxFuture<'a, Result<(), SinkError>>;
    /// Deletes the rows of the tombstones in `rows` (columns of [`rows::input_schema`]); only
    /// called for records that [`Sink::admit`] named [`Admit::Delete`].
    fn delete<'a>(&'a mut self, rows: &'a RecordBatch) -> BoxFuture<'a, Result<(), SinkError>> {
        let _ = rows;
        Box::pin(async { Ok(()) })
    }
    /// Makes everything written durable.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<TaskOutput, SinkError>>;
    /// Leaves nothing visible behind (as far as the sink can take writes back).
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// What an executor opens its sink with.
pub struct SinkContext<'a> {
    /// The executor's producer to the sink's cluster (the output topic's, for Kafka).
    pub producer: Arc<KafkaProducer>,
    /// The vector columns of the rows it takes, each written as its model's output.
    pub outputs: Vec<rows::Output>,
    /// Whether its rows are chunks, with [`rows::CHUNK_COLUMNS`].
    pub chunks: bool,
    /// The input fields its rows carry as columns of their own (`[sink] columns`), typed.
    pub fields: Vec<FieldColumn>,
    pub executor_id: &'a str,
    /// A database sink's password (`sink.password`), as the driver handed it over.
    pub password: Option<&'a Secret>,
    /// A Kafka sink's registered Avro output schema (`format = "avro"`,
    /// [`register_avro_output`]).
    pub avro: Option<kafka::avro::AvroOutput>,
    /// A Kafka sink's transactions (`guarantee = "exactly_once"`).
    pub transactions: Option<kafka::transactions::Transactions>,
    /// With `skip_unchanged`: a Kafka sink's state topic; for pgvector, that its rows keep
    /// their input's fingerprint ([`rows::INPUT_HASH`]).
    pub input_state: Option<kafka::state::InputState>,
    pub skip_unchanged: bool,
}

/// Types the Avro input's field columns that `[input.types]` leaves out from the latest schema
/// of the first source topic's `<topic>-value` subject ([`registry::avro_field_type`]), in the
/// driver before anything starts; the executors get the spec with those types. A field the
/// schema does not type stays text. A registry that does not answer is retried for
/// `retry_for`, then the query does not start (the types must not change with the registry's
/// health).
pub async fn type_fields_from_registry(spec: &mut JobSpec, password: Option<&Secret>) -> Result<(), SinkError> {
    let Some(registry) = &spec.input.schema_registry else { return Ok(()) };
    let untyped: Vec<String> = (spec.field_columns().into_iter())
        .filter(|c| !spec.input.types.contains_key(&c.name) && spec.input.fields.contains_key(&c.name))
        .map(|c| c.name)
        .collect();
    if spec.input.format != embedstream_core::spec::InputFormat::Avro || untyped.is_empty() {
        return Ok(());
    }
    let client = registry::Registry::new(registry, password)?;
    for topic in spec.source_topics() {
        let subject = format!("{topic}-value");
        let Some(latest) = client.latest_until_answered(&subject).await? else { continue };
        let Ok(schema) = serde_json::from_str::<serde_json::Value>(&latest.schema) else { continue };
        for name in untyped {
            let Some(ty) = registry::avro_field_type(&schema, &spec.input.fields[&name]) else { continue };
            tracing::info!(field = %name, r#type = ty.name(), subject, "field column typed by the registry's latest schema");
            spec.input.types.insert(name, ty);
        }
        break;
    }
    Ok(())
}

/// Registers a Kafka sink's Avro output schema under `<topic>-value` in the query's registry:
/// the driver does it before the first batch (a refusal stops the query there, naming the
/// subject), each executor again to learn the id (registering a schema the subject has is
/// idempotent).
pub async fn register_avro_output(
    spec: &JobSpec,
    password: Option<&Secret>,
) -> Result<Option<kafka::avro::AvroOutput>, SinkError> {
    let (SinkKind::Kafka(k), Some(registry)) = (&spec.sink.kind, &spec.input.schema_registry) else {
        return Ok(None);
    };
    if k.format != embedstream_core::spec::VectorFormat::Avro {
        return Ok(None);
    }
    let client = registry::Registry::new(registry, password)?;
    let with_value = k.columns.iter().any(|c| c == "value");
    let schema = kafka::avro::schema_json(spec.chunk_outputs(), with_value, &spec.field_columns());
    let subject = format!("{}-value", k.topic);
    let output = kafka::avro::AvroOutput::register(&client, &subject, &schema).await?;
    tracing::info!(subject, id = output.id(), "Avro output schema registered");
    Ok(Some(output))
}

/// The spec's sink, on an executor: a sink with a server checks it here, before any task.
pub async fn open(spec: &SinkSpec, ctx: SinkContext<'_>) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match &spec.kind {
        SinkKind::Kafka(k) => Box::new(Arc::new(
            KafkaSink::new(k, ctx.producer, ctx.outputs, ctx.fields, ctx.avro)
                .with_transactions(ctx.transactions)
                .with_input_state(ctx.input_state),
        )),
        SinkKind::Parquet(p) => Box::new(Arc::new(parquet::ParquetSink::new(p, &ctx)?)),
        // A Delta table's files are the Parquet sink's; its committer differs.
        SinkKind::Delta(d) => Box::new(Arc::new(parquet::ParquetSink::new(&d.files(), &ctx)?)),
        SinkKind::Pgvector(p) => {
            Box::new(Arc::new(pgvector::open(p, ctx.password, ctx.outputs, ctx.fields, ctx.skip_unchanged).await?))
        }
    })
}

/// The spec's sink's batch committer, in the driver; one with a server connects here, so that a
/// wrong password or an unreachable server stops the query before it starts.
pub async fn committer(
    spec: &JobSpec,
    password: Option<&Secret>,
    query_id: &str,
) -> Result<Box<dyn BatchCommitter>, SinkError> {
    Ok(match &spec.sink.kind {
        SinkKind::Kafka(_) => Box::new(kafka::NothingToPublish),
        SinkKind::Parquet(p) => Box::new(parquet::ManifestCommitter::new(p.path.clone())),
        SinkKind::Delta(d) => Box::new(delta::DeltaCommitter::open(d, query_id).await?),
        SinkKind::Pgvector(p) => {
            Box::new(pgvector::OffsetsCommitter::connect(p, password, &spec.name, query_id).await?)
        }
    })
}
