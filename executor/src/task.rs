//! One task: read the range, check each record, embed the good ones, write everything.
//!
//! A record whose value the model cannot take (null, empty, too long, not UTF-8) is never fatal
//! and never lost: it goes to the dead-letter topic with the reason in `es.error`.

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{Array, BinaryArray, Int64Array};
use embedstream_proto::pb::{task_status, FailureReason, TaskDefinition, TaskFailed, TaskSuccessful};
use embedstream_proto::JobSpec;
use tracing::Instrument;

use crate::metrics::ExecutorMetrics;
use crate::reader::{KafkaReader, ReadError};
use crate::sink::{KafkaSink, Origin, Pending};
use crate::workers::WorkerPool;

pub struct TaskContext {
    pub executor_id: String,
    pub spec: JobSpec,
    pub reader: Arc<KafkaReader>,
    pub workers: Arc<WorkerPool>,
    pub sink: KafkaSink,
    pub metrics: Arc<ExecutorMetrics>,
}

/// Why a value cannot be embedded, or `None` when it can.
pub fn reject_reason(value: Option<&[u8]>, max_bytes: usize) -> Option<String> {
    let Some(v) = value else {
        return Some("value is null".into());
    };
    if v.len() > max_bytes {
        return Some(format!("value is {} bytes, over model.max_text_bytes = {max_bytes}", v.len()));
    }
    match std::str::from_utf8(v) {
        Err(e) => Some(format!("value is not valid UTF-8: {e}")),
        Ok(s) if s.trim().is_empty() => Some("value is empty".into()),
        Ok(_) => None,
    }
}

fn failed(reason: FailureReason, message: String, retryable: bool) -> task_status::Status {
    task_status::Status::Failed(TaskFailed { reason: reason as i32, message, retryable })
}

pub async fn run(ctx: Arc<TaskContext>, def: TaskDefinition) -> task_status::Status {
    let span = tracing::info_span!("task", batch = def.batch_id, task = def.task_id, attempt = def.attempt);
    run_task(ctx, def).instrument(span).await
}

async fn run_task(ctx: Arc<TaskContext>, def: TaskDefinition) -> task_status::Status {
    let Some(range) = def.range.clone() else {
        return failed(FailureReason::Unspecified, "task has no offset range".into(), false);
    };

    let started = Instant::now();
    let reader = ctx.reader.clone();
    let read = match tokio::task::spawn_blocking(move || reader.read(&range)).await.expect("reads do not panic") {
        Ok(r) => r,
        Err(e @ ReadError::DataLoss { .. }) => return failed(FailureReason::DataLoss, e.to_string(), false),
        Err(e) => {
            ctx.metrics.kafka_read_errors.inc();
            return failed(FailureReason::FetchError, e.to_string(), true);
        }
    };
    let read_micros = started.elapsed().as_micros() as u64;

    let batch = &read.batch;
    let col = |name: &str| batch.column_by_name(name).expect("input schema column");
    let keys = col("key").as_any().downcast_ref::<BinaryArray>().expect("binary keys");
    let values = col("value").as_any().downcast_ref::<BinaryArray>().expect("binary values");
    let offsets = col("offset").as_any().downcast_ref::<Int64Array>().expect("int64 offsets");
    let timestamps = col("timestamp_ms").as_any().downcast_ref::<Int64Array>().expect("int64 timestamps");
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

    let infer_started = Instant::now();
    let texts: Vec<String> =
        good.iter().map(|&i| std::str::from_utf8(values.value(i)).expect("checked UTF-8").to_owned()).collect();
    let (vectors, batch_sizes) = match ctx.workers.embed(texts).await {
        Ok(v) => v,
        Err(e) => return failed(FailureReason::ModelError, e.to_string(), true),
    };
    let infer_micros = infer_started.elapsed().as_micros() as u64;

    let sink_started = Instant::now();
    let dim = ctx.workers.dim();
    let origin = |i: usize| Origin {
        topic: &def.range.as_ref().expect("checked").topic,
        partition: def.range.as_ref().expect("checked").partition,
        offset: offsets.value(i),
        key: keys.is_valid(i).then(|| keys.value(i)),
    };
    let mut pending = Pending::default();
    let mut result = Ok(());
    // Outputs in offset order, so the sink partition keeps the source partition's order.
    for (n, &i) in good.iter().enumerate() {
        result = ctx
            .sink
            .send_embedding(&mut pending, def.sink_partition, &origin(i), &vectors[n * dim..(n + 1) * dim])
            .await;
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        for (i, reason) in &rejects {
            tracing::debug!(offset = offsets.value(*i), %reason, "dead letter");
            result = ctx
                .sink
                .send_dead_letter(&mut pending, def.dead_letter_partition, &origin(*i), value(*i), reason)
                .await;
            if result.is_err() {
                break;
            }
        }
    }
    let result = match result {
        Ok(()) => ctx.sink.finish(pending).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        ctx.metrics.kafka_produce_errors.inc();
        return failed(FailureReason::SinkError, e.to_string(), true);
    }
    let acked_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    let latency_seconds: Vec<f32> = good
        .iter()
        .filter(|&&i| timestamps.is_valid(i))
        .map(|&i| (acked_ms - timestamps.value(i)).max(0) as f32 / 1000.0)
        .collect();
    ctx.metrics.embeddings.inc_by(good.len() as u64);
    for size in batch_sizes {
        ctx.metrics.inference_batch_size.observe(size as f64);
    }

    task_status::Status::Successful(TaskSuccessful {
        rows_read: batch.num_rows() as u64,
        embeddings_written: good.len() as u64,
        dead_letters: rejects.len() as u64,
        offset_gaps: read.gaps,
        read_micros,
        infer_micros,
        sink_micros: sink_started.elapsed().as_micros() as u64,
        latency_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::reject_reason;

    #[test]
    fn bad_values_have_reasons() {
        assert_eq!(reject_reason(Some(b"a shoe"), 100), None);
        assert!(reject_reason(None, 100).unwrap().contains("null"));
        assert!(reject_reason(Some(b""), 100).unwrap().contains("empty"));
        assert!(reject_reason(Some(b"  \n"), 100).unwrap().contains("empty"));
        assert!(reject_reason(Some(&[0xff, 0xfe]), 100).unwrap().contains("UTF-8"));
        assert!(reject_reason(Some(&[b'x'; 101]), 100).unwrap().contains("101 bytes"));
    }
}
