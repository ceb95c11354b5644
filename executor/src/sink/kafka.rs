//! The Kafka sink: one output record per good input record, and the executor's one producer,
//! which the dead letters (`super::dead_letters`) share.
//!
//! Output records keep the input key and carry their origin in headers (`es.topic`,
//! `es.partition`, `es.offset`, `es.model`). The producer is idempotent, so librdkafka's own retries neither duplicate nor
//! reorder records; a task that is retried as a whole may write its records again
//! (at-least-once).

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{
    Array, BinaryArray, FixedSizeListArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use futures::future::BoxFuture;

use embedstream_core::spec::{KafkaSinkSpec, VectorFormat};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::{SinkError, TaskInfo, TaskOutput, TaskWriter};

/// Where an output record came from.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
}

/// The executor's one idempotent producer, shared by the Kafka sink and the dead letters.
pub struct KafkaProducer {
    producer: FutureProducer,
}

/// Records enqueued but not yet acknowledged by the broker, with the topic each went to.
#[derive(Default)]
pub struct Pending {
    futures: Vec<(Arc<str>, DeliveryFuture)>,
}

impl KafkaProducer {
    /// `config` is a cluster's client configuration (its servers and properties).
    pub fn new(mut config: ClientConfig) -> Result<KafkaProducer, SinkError> {
        let producer: FutureProducer = config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "200000")
            .create()?;
        Ok(KafkaProducer { producer })
    }

    /// Enqueues `record` for `topic`, waiting for older records while the local queue is full.
    pub(crate) async fn enqueue<'a>(
        &self,
        pending: &mut Pending,
        topic: &Arc<str>,
        mut record: FutureRecord<'a, [u8], [u8]>,
    ) -> Result<(), SinkError> {
        loop {
            match self.producer.send_result(record) {
                Ok(future) => {
                    pending.futures.push((topic.clone(), future));
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: wait for the oldest records, then try again.
                    record = back;
                    let half = pending.futures.len().div_ceil(2);
                    let older: Vec<_> = pending.futures.drain(..half).collect();
                    await_all(older).await?;
                    if pending.futures.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
}

async fn await_all(futures: Vec<(Arc<str>, DeliveryFuture)>) -> Result<(), SinkError> {
    for (topic, f) in futures {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(SinkError::Delivery { topic: topic.to_string(), error }),
            Err(_) => return Err(SinkError::Cancelled { topic: topic.to_string() }),
        }
    }
    Ok(())
}

impl Pending {
    /// Waits until the broker has acknowledged every enqueued record.
    pub async fn finish(self) -> Result<(), SinkError> {
        await_all(self.futures).await
    }
}

/// The headers that say where a record came from and which model embedded it.
pub(crate) fn origin_headers(origin: &Origin<'_>, model_id: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header { key: "es.topic", value: Some(origin.topic) })
        .insert(Header { key: "es.partition", value: Some(&origin.partition.to_string()) })
        .insert(Header { key: "es.offset", value: Some(&origin.offset.to_string()) })
        .insert(Header { key: "es.model", value: Some(model_id) })
}

/// The Kafka sink: one record per row, in the task's partition of `sink.topic`.
pub struct KafkaSink {
    producer: Arc<KafkaProducer>,
    topic: Arc<str>,
    format: VectorFormat,
    model_id: String,
}

impl KafkaSink {
    pub fn new(spec: &KafkaSinkSpec, producer: Arc<KafkaProducer>, model_id: String) -> KafkaSink {
        KafkaSink { producer, topic: spec.topic.as_str().into(), format: spec.format, model_id }
    }

    /// Enqueues the embedding of `origin` for partition `partition` of the sink topic.
    async fn send_embedding(
        &self,
        pending: &mut Pending,
        partition: i32,
        origin: &Origin<'_>,
        vector: &[f32],
    ) -> Result<(), SinkError> {
        let payload = encode(self.format, vector);
        let record = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .partition(partition)
            .payload(&payload)
            .headers(origin_headers(origin, &self.model_id));
        let record = match origin.key {
            Some(k) => record.key(k),
            None => record,
        };
        self.producer.enqueue(pending, &self.topic, record).await
    }
}

impl super::Sink for Arc<KafkaSink> {
    fn open(&self, task: &TaskInfo) -> Result<Box<dyn TaskWriter>, SinkError> {
        Ok(Box::new(KafkaTaskWriter { sink: self.clone(), partition: task.partition, acks: Vec::new() }))
    }
}

/// One window written: its rows' Kafka timestamps and the wait for its acknowledgements.
type WindowAcks = (Vec<i64>, tokio::task::JoinHandle<Result<i64, SinkError>>);

struct KafkaTaskWriter {
    sink: Arc<KafkaSink>,
    partition: i32,
    acks: Vec<WindowAcks>,
}

fn column<'a, T: 'static>(rows: &'a RecordBatch, name: &str) -> &'a T {
    rows.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).expect("the output schema")
}

impl TaskWriter for KafkaTaskWriter {
    fn write<'a>(&'a mut self, rows: &'a RecordBatch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let keys: &BinaryArray = column(rows, "key");
            let topics: &StringArray = column(rows, "topic");
            let partitions: &Int32Array = column(rows, "partition");
            let offsets: &Int64Array = column(rows, "offset");
            let timestamps: &Int64Array = column(rows, "timestamp_ms");
            let embeddings: &FixedSizeListArray = column(rows, "embedding");
            let values = embeddings.values().as_any().downcast_ref::<Float32Array>().expect("f32 embeddings");
            let dim = embeddings.value_length() as usize;
            let mut pending = Pending::default();
            for i in 0..rows.num_rows() {
                let origin = Origin {
                    topic: topics.value(i),
                    partition: partitions.value(i),
                    offset: offsets.value(i),
                    key: keys.is_valid(i).then(|| keys.value(i)),
                };
                let vector = &values.values()[i * dim..(i + 1) * dim];
                self.sink.send_embedding(&mut pending, self.partition, &origin, vector).await?;
            }
            let stamps = timestamps.iter().flatten().collect();
            self.acks.push((stamps, tokio::spawn(async move { pending.finish().await.map(|()| now_ms()) })));
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<TaskOutput, SinkError>> {
        Box::pin(async move {
            let mut out = TaskOutput::default();
            for (stamps, ack) in self.acks {
                let acked = ack.await.expect("acknowledgements do not panic")?;
                out.latency_seconds.extend(stamps.iter().map(|t| (acked - t).max(0) as f32 / 1000.0));
            }
            Ok(out)
        })
    }

    /// Records already sent stay in the topic: a retried task writes them again (at-least-once).
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// The record value for one vector.
pub fn encode(format: VectorFormat, vector: &[f32]) -> Vec<u8> {
    match format {
        VectorFormat::F32le => vector.iter().flat_map(|x| x.to_le_bytes()).collect(),
        VectorFormat::Json => {
            serde_json::to_vec(&serde_json::json!({ "embedding": vector })).expect("floats serialise")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32le_and_json_round_trip() {
        let v = [0.5f32, -1.25, 3.0e-8];
        let bytes = encode(VectorFormat::F32le, &v);
        let back: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(back, v);
        let json: serde_json::Value = serde_json::from_slice(&encode(VectorFormat::Json, &v)).unwrap();
        let back: Vec<f32> = json["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(back, v);
    }
}
