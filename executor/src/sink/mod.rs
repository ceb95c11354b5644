//! Where embeddings go. Every sink has the same contract, so a new one (ClickHouse, PostgreSQL
//! with pgvector) is one module:
//!
//! - [`Sink::open`] once per task attempt, giving a [`TaskWriter`];
//! - [`TaskWriter::write`] for each window of embedded rows, in offset order (the columns of
//!   [`crate::records::output_schema`]);
//! - [`TaskWriter::commit`] when the task is done, or [`TaskWriter::abort`] when it failed;
//! - per batch, the driver commits: nothing to do for Kafka, the manifest for file sinks
//!   (`embedstream_core::manifest`), written once every task of the batch has committed.
//!
//! Guarantees: [`kafka`] is at-least-once (a retried task writes its records again; the
//! idempotent producer never duplicates within an attempt); [`parquet`] is exactly-once for
//! readers that go through the manifests. Dead letters ([`dead_letters`]) always go to the Kafka dead-letter topic.

pub mod dead_letters;
pub mod kafka;
pub mod parquet;

use arrow_array::RecordBatch;
use embedstream_proto::pb::OutputFile;
use futures::future::BoxFuture;
use rdkafka::error::KafkaError;

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
}

/// The task attempt a writer belongs to.
pub struct TaskInfo {
    pub batch_id: u64,
    pub task_id: u32,
    pub attempt: u32,
    /// The partition of the output topic (Kafka).
    pub partition: i32,
}

/// What a committed task attempt hands to the driver.
#[derive(Default)]
pub struct TaskOutput {
    /// Files to publish in the batch's manifest (file sinks).
    pub files: Vec<OutputFile>,
    /// Per row written: seconds from its Kafka timestamp to the sink's acknowledgement.
    pub latency_seconds: Vec<f32>,
}

pub trait Sink: Send + Sync {
    fn open(&self, task: &TaskInfo) -> Result<Box<dyn TaskWriter>, SinkError>;
}

pub trait TaskWriter: Send {
    /// Takes one window of rows (columns of [`crate::records::output_schema`]), in offset order.
    fn write<'a>(&'a mut self, rows: &'a RecordBatch) -> BoxFuture<'a, Result<(), SinkError>>;
    /// Makes everything written durable.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<TaskOutput, SinkError>>;
    /// Leaves nothing visible behind (as far as the sink can take writes back).
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()>;
}
