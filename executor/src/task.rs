//! One task: read the range window by window, check each record, embed the good ones, write
//! each window as soon as it is embedded. A task holds a few windows at a time, never its whole
//! range.
//!
//! A record a model cannot take (a null value, not UTF-8 or not JSON, a required field missing
//! or of the wrong type, an empty or too long text) is never fatal and never lost: it goes to
//! the dead-letter topic with the reason in `es.error`. The models themselves are
//! [`crate::pipeline`]'s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::SchemaRef;
use embedstream_core::offsets::OffsetRange;
use embedstream_core::progress::{
    count_reason, keep_newest, reason_class, sample_reason, DeadLetterSample, DEAD_LETTER_SAMPLES,
};
use embedstream_core::JobSpec;
use embedstream_proto::pb::{task_status, FailureReason, TaskDefinition, TaskFailed, TaskSuccessful};
use futures::StreamExt;
use tracing::Instrument;

use crate::metrics::ExecutorMetrics;
use crate::model::ModelError;
use crate::pipeline::{Embedded, Pipeline};
use crate::reader::{KafkaReader, ReadError};
use crate::records::{with_decoded_values, RecentOutput, Rows, NON_FINITE};
use crate::unchanged::LastInputs;
use embedstream_sinks::kafka::transactions::SourceRange;
use embedstream_sinks::kafka::{Origin, Pending};
use embedstream_sinks::{Admit, DeadLetters, Sink, SinkError, TaskInfo, TaskWriter};

pub struct TaskContext {
    pub executor_id: String,
    pub spec: JobSpec,
    pub reader: Arc<KafkaReader>,
    /// Decodes Avro values with their registered schemas (`input.format = "avro"`).
    pub decoder: Option<Arc<crate::schemas::Decoder>>,
    /// The models every record goes through.
    pub pipeline: Arc<Pipeline>,
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

/// The rows of `window` (indices into `input`) with their vector columns, and their field
/// columns (taken from `fields`, a row per input row), as `output_schema` says.
fn output_rows(
    input: &RecordBatch,
    window: &[usize],
    vectors: Vec<ArrayRef>,
    fields: &[ArrayRef],
    schema: &SchemaRef,
) -> RecordBatch {
    let indices = UInt32Array::from_iter_values(window.iter().map(|&i| i as u32));
    // The input schema's columns: the header columns the fields read stay here.
    let read = input.project(&(0..crate::records::input_schema().fields().len()).collect::<Vec<_>>());
    let mut columns =
        arrow_select::take::take_record_batch(&read.expect("the read schema starts with the input's"), &indices)
            .expect("indices in range")
            .columns()
            .to_vec();
    columns.extend(vectors);
    columns.extend(fields.iter().map(|f| arrow_select::take::take(f, &indices, None).expect("indices in range")));
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
    #[error(transparent)]
    Registry(crate::schemas::registry::RegistryError),
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
            // An outage, or an answer that a retry elsewhere may not get: tried again.
            TaskError::Registry(_) => (FailureReason::SchemaRegistryError, true),
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

/// A window's embedding, spawned so that it runs while the task reads and writes other
/// windows; aborted if the task ends first (its workers come back, see `workers::Lease`).
struct Embedding(tokio::task::JoinHandle<Result<Embedded, ModelError>>);

impl Drop for Embedding {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a task counted as it went.
#[derive(Default)]
struct Counts {
    rows_read: u64,
    embedded: u64,
    dead_letters: u64,
    /// Dead letters by the class of their reason, and the newest few.
    dead_letter_reasons: BTreeMap<String, u64>,
    dead_letter_samples: Vec<DeadLetterSample>,
    sink_micros: u64,
    batch_sizes: Vec<usize>,
    cache: crate::model::cache::CacheCount,
    /// Records whose input was the one last embedded for their key (`skip_unchanged`).
    unchanged: u64,
}

/// A task attempt's state as it goes: its dead letters, its counts, and what it decided of
/// its keys' inputs (`skip_unchanged`).
struct Attempt {
    letters: Letters,
    counts: Counts,
    last_inputs: LastInputs,
}

/// A task attempt's dead letters: the producer they go through (the attempt's transaction's,
/// with an exactly-once Kafka sink) and those not yet acknowledged.
struct Letters {
    via: DeadLetters,
    pending: Pending,
}

/// Dead letters enqueued before the task waits for their acknowledgements, so that the
/// producer's queue holds a bounded share of a long range.
const DEAD_LETTERS_IN_FLIGHT: usize = 10_000;

async fn run_task(ctx: &Arc<TaskContext>, def: TaskDefinition) -> Result<TaskSuccessful, TaskError> {
    let range = match def.range.clone().map(OffsetRange::try_from) {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(TaskError::BadTask(format!("bad task: {e}"))),
        None => return Err(TaskError::BadTask("task has no offset range".into())),
    };
    let window_rows = ctx.spec.window_rows();

    // The range is read on a blocking thread, a window of records at a time, handed over
    // through a channel of one: the reader is at most a window ahead, and a task holds a few
    // windows whatever the length of its range.
    let (tx, mut chunks) = tokio::sync::mpsc::channel::<Result<RecordBatch, ReadError>>(1);
    let (reader, to_read) = (ctx.reader.clone(), range.clone());
    let read_thread = tokio::task::spawn_blocking(move || {
        let mut busy = Duration::ZERO;
        let mut read = match reader.open(&to_read) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return (0, 0, busy);
            }
        };
        loop {
            let started = Instant::now();
            let chunk = read.next_chunk(window_rows);
            busy += started.elapsed();
            let more = match chunk {
                Ok(Some(rows)) => tx.blocking_send(Ok(rows)).is_ok(),
                Ok(None) => false,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    false
                }
            };
            if !more {
                return (read.gaps, read.lost, busy);
            }
        }
    });

    let info = TaskInfo {
        batch_id: def.batch_id,
        task_id: def.task_id,
        attempt: def.attempt,
        partition: def.sink_partition,
        topic_id: def.topic_id.clone(),
        source: SourceRange {
            topic: range.tp.topic.clone(),
            partition: range.tp.partition,
            end: range.until,
            query: def.query_id.clone(),
        },
    };
    let mut writer = ctx.sink.open(&info)?;
    if writer.begin().await? {
        // An earlier attempt's transaction made this range visible: write nothing.
        drop(chunks);
        let _ = read_thread.await;
        return Ok(TaskSuccessful {
            latency: Some((&embedstream_core::latency::LatencyHistogram::default()).into()),
            ..Default::default()
        });
    }
    let dead_letters = match writer.dead_letter_producer() {
        Some(producer) => ctx.dead_letters.through(producer),
        None => ctx.dead_letters.clone(),
    };
    let infer_started = Instant::now();
    let mut attempt = Attempt {
        letters: Letters { via: dead_letters, pending: Pending::default() },
        counts: Counts::default(),
        last_inputs: LastInputs::default(),
    };
    let done = windows(ctx, &def, &range, &mut chunks, &mut *writer, &mut attempt).await;
    let Attempt { letters, mut counts, .. } = attempt;
    let done = match done {
        Ok(()) => letters.pending.finish().await.map_err(TaskError::from),
        Err(e) => Err(e),
    };
    // The reader stops at its next hand-over once the receiver is gone.
    drop(chunks);
    if let Err(e) = done {
        writer.abort().await;
        return Err(e);
    }
    let sink_started = Instant::now();
    let output = writer.commit().await?;
    let sink_micros = counts.sink_micros + sink_started.elapsed().as_micros() as u64;
    let (gaps, lost, read_busy) = read_thread.await.expect("reads do not panic");
    let read_micros = read_busy.as_micros() as u64;
    let infer_micros = (infer_started.elapsed().as_micros() as u64).saturating_sub(sink_micros + read_micros);
    ctx.metrics.embeddings.inc_by(counts.embedded);
    ctx.metrics.unchanged.inc_by(counts.unchanged);
    let model_inputs = counts.batch_sizes.iter().sum::<usize>() as u64;
    for &size in &counts.batch_sizes {
        ctx.metrics.inference_batch_size.observe(size as f64);
    }

    Ok(TaskSuccessful {
        rows_read: counts.rows_read,
        embeddings_written: counts.embedded,
        dead_letters: counts.dead_letters,
        offset_gaps: gaps,
        lost_offsets: lost,
        read_micros,
        infer_micros,
        sink_micros,
        latency: Some((&output.latency).into()),
        transaction_begin_micros: output.transaction.map_or(0, |t| t.begin.as_micros() as u64),
        transaction_commit_micros: output.transaction.map_or(0, |t| t.commit.as_micros() as u64),
        files: output.files.into_iter().map(Into::into).collect(),
        cache_hits: counts.cache.hits,
        cache_misses: counts.cache.misses,
        unchanged: counts.unchanged,
        model_inputs,
        dead_letter_reasons: counts.dead_letter_reasons.into_iter().collect(),
        dead_letter_samples: {
            keep_newest(&mut counts.dead_letter_samples);
            counts.dead_letter_samples.iter().map(Into::into).collect()
        },
    })
}

/// Reads, checks, embeds and writes the range window by window, in offset order: up to
/// [`WINDOWS_IN_FLIGHT`] windows are embedding while the oldest is written, so the sink keeps
/// the source partition's order, early records are delivered early and no worker idles.
async fn windows(
    ctx: &Arc<TaskContext>,
    def: &TaskDefinition,
    range: &OffsetRange,
    chunks: &mut tokio::sync::mpsc::Receiver<Result<RecordBatch, ReadError>>,
    writer: &mut dyn TaskWriter,
    attempt: &mut Attempt,
) -> Result<(), TaskError> {
    let schema = ctx.pipeline.output_schema();
    let mut in_flight = futures::stream::FuturesOrdered::new();
    let mut read_all = false;
    loop {
        while !read_all && in_flight.len() < WINDOWS_IN_FLIGHT {
            let Some(chunk) = chunks.recv().await else {
                read_all = true;
                break;
            };
            let chunk = chunk.map_err(TaskError::Read)?;
            attempt.counts.rows_read += chunk.num_rows() as u64;
            let chunk = admit(ctx, def, range, chunk, writer, attempt).await?;
            let Attempt { letters, counts, last_inputs } = &mut *attempt;
            let rows = Rows::of(&chunk);
            let decoded = match &ctx.decoder {
                Some(decoder) => {
                    let values: Vec<Option<&[u8]>> = (0..chunk.num_rows()).map(|i| rows.value(i)).collect();
                    Some(decoder.decode(&values).await.map_err(TaskError::Registry)?)
                }
                None => None,
            };
            // What the models and sinks read: a schema'd record's value is its JSON text (made
            // here once); its dead letter keeps the bytes as they came (`rows`).
            let sunk = match &decoded {
                Some(decoded) => with_decoded_values(&chunk, decoded),
                None => chunk.clone(),
            };
            let sunk_rows = Rows::of(&sunk);
            let mut prepared = ctx.pipeline.prepare(
                (0..chunk.num_rows()).map(|i| (rows.key(i), sunk_rows.value(i), rows.headers(i))),
                decoded.as_deref(),
            );
            for (i, reason) in &prepared.refused {
                dead_letter(def, range, &rows, letters, *i, reason, counts).await?;
            }
            if letters.pending.len() >= DEAD_LETTERS_IN_FLIGHT {
                std::mem::take(&mut letters.pending).finish().await?;
            }
            let mut fields = prepared.columns.split_off(0);
            if ctx.pipeline.skips_unchanged() && !prepared.good.is_empty() {
                let fingerprints = ctx.pipeline.fingerprints(&prepared);
                let keys: Vec<Option<&[u8]>> = prepared.good.iter().map(|&i| rows.key(i)).collect();
                let same = last_inputs.unchanged(writer, &keys, &fingerprints).await?;
                counts.unchanged += same.iter().filter(|s| **s).count() as u64;
                // Each written row's fingerprint, the sink's last column.
                let mut by_row: Vec<Option<String>> = vec![None; chunk.num_rows()];
                for ((&i, f), _) in prepared.good.iter().zip(fingerprints).zip(&same).filter(|(_, s)| !**s) {
                    by_row[i] = Some(f);
                }
                fields.push(Arc::new(arrow_array::StringArray::from(by_row)));
                prepared.keep(&same.iter().map(|s| !s).collect::<Vec<_>>());
            }
            if prepared.good.is_empty() {
                continue;
            }
            let embedding = Embedding(tokio::spawn(ctx.pipeline.clone().embed(prepared.texts)));
            let good = prepared.good;
            in_flight.push_back(async move {
                let mut embedding = embedding;
                let vectors = (&mut embedding.0).await.expect("embeddings do not panic");
                (sunk, good, fields, vectors)
            });
        }
        let Some((chunk, good, fields, embedded)) = in_flight.next().await else { return Ok(()) };
        let Attempt { letters, counts, last_inputs } = &mut *attempt;
        let embedded = embedded.map_err(TaskError::Model)?;
        counts.batch_sizes.extend(&embedded.batch_sizes);
        counts.cache += embedded.cache;
        let finished = ctx.pipeline.finish(&good, embedded);
        if !finished.failed.is_empty() {
            tracing::warn!(
                rows = finished.failed.len(),
                "images not fetched or not decoded; sent to the dead-letter topic"
            );
            let rows = Rows::of(&chunk);
            for (i, reason) in &finished.failed {
                rows.key(*i).inspect(|k| last_inputs.forget(k));
                dead_letter(def, range, &rows, letters, *i, reason, counts).await?;
            }
        }
        if !finished.non_finite.is_empty() {
            let dropped = finished.non_finite.len();
            tracing::warn!(rows = dropped, "a model gave non-finite vectors; sent to the dead-letter topic");
            ctx.metrics.non_finite_vectors.inc_by(dropped as u64);
            let rows = Rows::of(&chunk);
            for &i in &finished.non_finite {
                rows.key(i).inspect(|k| last_inputs.forget(k));
                dead_letter(def, range, &rows, letters, i, NON_FINITE, counts).await?;
            }
        }
        counts.embedded += finished.rows.len() as u64;
        let sink_started = Instant::now();
        let output = output_rows(&chunk, &finished.rows, finished.columns, &fields, &schema);
        writer.write(&output).await?;
        ctx.recent.push(&output);
        counts.sink_micros += sink_started.elapsed().as_micros() as u64;
    }
}

/// The rows of `chunk` the sink takes to embed ([`Sink::admit`]): tombstones it deletes are
/// handed to the writer now (the sink orders them against rows by offset), records it refuses
/// go to the dead-letter topic. Most sinks take every record: the chunk comes back as it was.
async fn admit(
    ctx: &Arc<TaskContext>,
    def: &TaskDefinition,
    range: &OffsetRange,
    chunk: RecordBatch,
    writer: &mut dyn TaskWriter,
    attempt: &mut Attempt,
) -> Result<RecordBatch, TaskError> {
    let Attempt { letters, counts, last_inputs } = attempt;
    let rows = Rows::of(&chunk);
    let (mut embed, mut delete) = (Vec::with_capacity(chunk.num_rows()), Vec::new());
    for i in 0..chunk.num_rows() {
        match ctx.sink.admit(rows.key(i), rows.value(i)) {
            Admit::Embed => embed.push(i as u32),
            Admit::Delete => {
                rows.key(i).inspect(|k| last_inputs.forget(k));
                delete.push(i as u32)
            }
            Admit::Refuse(reason) => dead_letter(def, range, &rows, letters, i, &reason, counts).await?,
        }
    }
    if embed.len() == chunk.num_rows() {
        return Ok(chunk);
    }
    let take = |indices: Vec<u32>| {
        arrow_select::take::take_record_batch(&chunk, &UInt32Array::from(indices)).expect("indices in range")
    };
    if !delete.is_empty() {
        let sink_started = Instant::now();
        writer.delete(&take(delete)).await?;
        counts.sink_micros += sink_started.elapsed().as_micros() as u64;
    }
    Ok(take(embed))
}

/// Enqueues row `i` of a chunk for the dead-letter topic, as it came, with `reason`.
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    def: &TaskDefinition,
    range: &OffsetRange,
    rows: &Rows<'_>,
    letters: &mut Letters,
    i: usize,
    reason: &str,
    counts: &mut Counts,
) -> Result<(), TaskError> {
    let offset = rows.offset(i);
    tracing::debug!(offset, %reason, "dead letter");
    let origin = Origin {
        topic: &range.tp.topic,
        topic_id: &def.topic_id,
        partition: range.tp.partition,
        offset,
        key: rows.key(i),
    };
    letters.via.send(&mut letters.pending, def.dead_letter_partition, &origin, rows.value(i), reason).await?;
    counts.dead_letters += 1;
    // Counted by kind and sampled with a bounded reason: a task's status stays small whatever
    // its records hold (the dead letter itself keeps the whole reason).
    count_reason(&mut counts.dead_letter_reasons, reason_class(reason), 1);
    counts.dead_letter_samples.push(DeadLetterSample {
        topic: range.tp.topic.clone(),
        partition: range.tp.partition,
        offset,
        reason: sample_reason(reason),
    });
    if counts.dead_letter_samples.len() > 2 * DEAD_LETTER_SAMPLES {
        keep_newest(&mut counts.dead_letter_samples);
    }
    Ok(())
}
