//! One task: read the range, check each record, embed the good ones window by window, write
//! each window as soon as it is embedded.
//!
//! A record whose value the model cannot take (null, empty, too long, not UTF-8) is never fatal
//! and never lost: it goes to the dead-letter topic with the reason in `es.error`.

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch, UInt32Array};
use arrow_schema::SchemaRef;
use embedstream_core::offsets::OffsetRange;
use embedstream_core::JobSpec;
use embedstream_proto::pb::{task_status, FailureReason, TaskDefinition, TaskFailed, TaskSuccessful};
use futures::StreamExt;
use tracing::Instrument;

use crate::metrics::ExecutorMetrics;
use crate::model::Embed;
use crate::model::ModelError;
use crate::reader::{KafkaReader, ReadError};
use crate::records::{embedding_array, keep_finite, output_schema, reject_reason, RecentOutput, NON_FINITE};
use embedstream_sinks::kafka::{Origin, Pending};
use embedstream_sinks::{DeadLetters, Sink, SinkError, TaskInfo};

pub struct TaskContext {
    pub executor_id: String,
    pub spec: JobSpec,
    pub reader: Arc<KafkaReader>,
    pub workers: Arc<dyn Embed>,
    /// Where embeddings go.
    pub sink: Box<dyn Sink>,
    /// Where records the model cannot take go (and, for a Kafka sink, the same producer).
    pub dead_letters: DeadLetters,
    pub metrics: Arc<ExecutorMetrics>,
    /// The latest windows written, for Flight `DoGet`.
    pub recent: Arc<RecentOutput>,
}

/// Windows being embedded at once: the next one is queued at the workers before the current one
/// is done, so no worker idles between windows.
const WINDOWS_IN_FLIGHT: usize = 2;

/// The rows of `window` (indices into `input`) with their vectors, as `output_schema` says.
fn output_rows(input: &RecordBatch, window: &[usize], vectors: Vec<f32>, schema: &SchemaRef) -> RecordBatch {
    let indices = UInt32Array::from_iter_values(window.iter().map(|&i| i as u32));
    let mut columns =
        arrow_select::take::take_record_batch(input, &indices).expect("indices in range").columns().to_vec();
    let dim = vectors.len() / window.len().max(1);
    columns.push(Arc::new(embedding_array(vectors, dim)));
    RecordBatch::try_new(schema.clone(), columns).expect("columns match the output schema")
}

/// Why a task attempt failed; [`TaskFailed::from`] is its one mapping to the wire.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The definition cannot be run (no range, or a range that is not one).
    #[error("{0}")]
    BadTask(String),
    #[error(transparent)]
    Read(ReadError),
    #[error(transparent)]
    Model(ModelError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("executor is shutting down")]
    ShuttingDown,
}

impl From<TaskError> for TaskFailed {
    fn from(e: TaskError) -> TaskFailed {
        let (reason, retryable) = match &e {
            TaskError::BadTask(_) => (FailureReason::Unspecified, false),
            TaskError::Read(e) if e.is_data_loss() => (FailureReason::DataLoss, false),
            TaskError::Read(_) => (FailureReason::FetchError, true),
            TaskError::Model(_) => (FailureReason::ModelError, true),
            TaskError::Sink(_) => (FailureReason::SinkError, true),
            TaskError::ShuttingDown => (FailureReason::Killed, true),
        };
        TaskFailed { reason: reason as i32, message: e.to_string(), retryable }
    }
}

pub async fn run(ctx: Arc<TaskContext>, def: TaskDefinition) -> task_status::Status {
    let span = tracing::info_span!("task", batch = def.batch_id, task = def.task_id, attempt = def.attempt);
    match run_task(&ctx, def).instrument(span).await {
        Ok(done) => task_status::Status::Successful(done),
        Err(e) => {
            match &e {
                TaskError::Read(e) if e.is_data_loss() => {}
                TaskError::Read(_) => ctx.metrics.kafka_read_errors.inc(),
                TaskError::Sink(_) => ctx.metrics.kafka_produce_errors.inc(),
                _ => {}
            }
            task_status::Status::Failed(e.into())
        }
    }
}

async fn run_task(ctx: &Arc<TaskContext>, def: TaskDefinition) -> Result<TaskSuccessful, TaskError> {
    let range = match def.range.clone().map(OffsetRange::try_from) {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(TaskError::BadTask(format!("bad task: {e}"))),
        None => return Err(TaskError::BadTask("task has no offset range".into())),
    };

    let started = Instant::now();
    let reader = ctx.reader.clone();
    let to_read = range.clone();
    let read = tokio::task::spawn_blocking(move || reader.read(&to_read))
        .await
        .expect("reads do not panic")
        .map_err(TaskError::Read)?;
    let read_micros = started.elapsed().as_micros() as u64;

    let batch = &read.batch;
    let col = |name: &str| batch.column_by_name(name).expect("input schema column");
    let keys = col("key").as_any().downcast_ref::<BinaryArray>().expect("binary keys");
    let values = col("value").as_any().downcast_ref::<BinaryArray>().expect("binary values");
    let offsets = col("offset").as_any().downcast_ref::<Int64Array>().expect("int64 offsets");
    let value = |i: usize| values.is_valid(i).then(|| values.value(i));
    let max_bytes = ctx.spec.model.max_text_bytes;

    let mut good: Vec<usize> = Vec::with_capacity(batch.num_rows());
    let mut rejects: Vec<(usize, String)> = Vec::new();
    for i in 0..batch.num_rows() {
        match reject_reason(value(i), max_bytes) {
            None => good.push(i),
            Some(reason) => rejects.push((i, reason)),
        }
    }

    // Window by window in offset order: the workers embed window k+1 while window k is written,
    // so the sink keeps the source partition's order and early records are delivered early.
    let infer_started = Instant::now();
    let text = |i: usize| std::str::from_utf8(values.value(i)).expect("checked UTF-8").to_owned();
    // One future per window, made as the window's turn comes; each yields its window with the
    // result, so rows and vectors stay paired.
    let mut windows = good.chunks(ctx.spec.model.sort_window.max(1)).map(|window| {
        let (workers, texts) = (ctx.workers.clone(), window.iter().map(|&i| text(i)).collect());
        async move { (window, workers.embed(texts).await) }
    });
    let mut in_flight = futures::stream::FuturesOrdered::new();
    in_flight.extend(windows.by_ref().take(WINDOWS_IN_FLIGHT));

    let info =
        TaskInfo { batch_id: def.batch_id, task_id: def.task_id, attempt: def.attempt, partition: def.sink_partition };
    let mut writer = ctx.sink.open(&info)?;
    let schema = output_schema(ctx.workers.dim());
    let mut sink_micros = 0u64;
    let mut batch_sizes = Vec::new();
    let mut embedded_rows = 0usize;
    while let Some((window, embedded)) = in_flight.next().await {
        let (vectors, sizes) = match embedded {
            Ok(v) => v,
            Err(e) => {
                writer.abort().await;
                return Err(TaskError::Model(e));
            }
        };
        if let Some(next) = windows.next() {
            in_flight.push_back(next);
        }
        batch_sizes.extend(sizes);
        let (window, vectors, non_finite) = keep_finite(window, vectors, ctx.workers.dim());
        if !non_finite.is_empty() {
            tracing::warn!(rows = non_finite.len(), "the model gave non-finite vectors; sent to the dead-letter topic");
            ctx.metrics.non_finite_vectors.inc_by(non_finite.len() as u64);
            rejects.extend(non_finite.into_iter().map(|i| (i, NON_FINITE.to_string())));
        }
        embedded_rows += window.len();
        let sink_started = Instant::now();
        let rows = output_rows(batch, &window, vectors, &schema);
        if let Err(e) = writer.write(&rows).await {
            writer.abort().await;
            return Err(e.into());
        }
        ctx.recent.push(&rows);
        sink_micros += sink_started.elapsed().as_micros() as u64;
    }
    let infer_micros = infer_started.elapsed().as_micros() as u64 - sink_micros;

    let sink_started = Instant::now();
    let origin = |i: usize| Origin {
        topic: &range.tp.topic,
        partition: range.tp.partition,
        offset: offsets.value(i),
        key: keys.is_valid(i).then(|| keys.value(i)),
    };
    let mut pending = Pending::default();
    for (i, reason) in &rejects {
        tracing::debug!(offset = offsets.value(*i), %reason, "dead letter");
        let sent = ctx.dead_letters.send(&mut pending, def.dead_letter_partition, &origin(*i), value(*i), reason).await;
        if let Err(e) = sent {
            writer.abort().await;
            return Err(e.into());
        }
    }
    if let Err(e) = pending.finish().await {
        writer.abort().await;
        return Err(e.into());
    }
    let output = writer.commit().await?;
    let sink_micros = sink_micros + sink_started.elapsed().as_micros() as u64;
    ctx.metrics.embeddings.inc_by(embedded_rows as u64);
    for size in batch_sizes {
        ctx.metrics.inference_batch_size.observe(size as f64);
    }

    Ok(TaskSuccessful {
        rows_read: batch.num_rows() as u64,
        embeddings_written: embedded_rows as u64,
        dead_letters: rejects.len() as u64,
        offset_gaps: read.gaps,
        lost_offsets: read.lost,
        read_micros,
        infer_micros,
        sink_micros,
        latency: Some((&output.latency).into()),
        files: output.files.into_iter().map(Into::into).collect(),
    })
}
