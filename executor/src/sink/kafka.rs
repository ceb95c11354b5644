//! The Kafka sink: one output record per good input record, one dead-letter record per bad one.
//!
//! Output records keep the input key and carry their origin in headers (`es.topic`,
//! `es.partition`, `es.offset`, `es.model`); dead letters keep the input key and value and add
//! `es.error`. The producer is idempotent, so librdkafka's own retries neither duplicate nor
//! reorder records; a task that is retried as a whole may write its records again
//! (at-least-once).

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{
    Array, BinaryArray, FixedSizeListArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use futures::future::BoxFuture;

use embedstream_proto::spec::VectorFormat;
use embedstream_proto::JobSpec;
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

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    dead_letter_topic: String,
    format: VectorFormat,
    model_id: String,
}

/// Records enqueued but not yet acknowledged by the broker.
#[derive(Default)]
pub struct Pending {
    futures: Vec<(bool, DeliveryFuture)>,
}

impl KafkaSink {
    pub fn new(spec: &JobSpec, model_id: String) -> Result<KafkaSink, SinkError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", spec.sink_bootstrap_servers())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "200000")
            .create()?;
        Ok(KafkaSink {
            producer,
            topic: spec.sink.topic.clone(),
            dead_letter_topic: spec.dead_letter_topic(),
            format: spec.sink.format,
            model_id,
        })
    }

    fn headers(&self, origin: &Origin<'_>) -> OwnedHeaders {
        OwnedHeaders::new()
            .insert(Header { key: "es.topic", value: Some(origin.topic) })
            .insert(Header { key: "es.partition", value: Some(&origin.partition.to_string()) })
            .insert(Header { key: "es.offset", value: Some(&origin.offset.to_string()) })
            .insert(Header { key: "es.model", value: Some(&self.model_id) })
    }

    /// Enqueues the embedding of `origin` for partition `partition` of the sink topic.
    pub async fn send_embedding(
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
            .headers(self.headers(origin));
        let record = match origin.key {
            Some(k) => record.key(k),
            None => record,
        };
        self.enqueue(pending, false, record).await
    }

    /// Enqueues a dead letter: the input value as it came, and why it was refused.
    pub async fn send_dead_letter(
        &self,
        pending: &mut Pending,
        partition: i32,
        origin: &Origin<'_>,
        value: Option<&[u8]>,
        reason: &str,
    ) -> Result<(), SinkError> {
        let headers = self.headers(origin).insert(Header { key: "es.error", value: Some(reason) });
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.dead_letter_topic).partition(partition).headers(headers);
        if let Some(k) = origin.key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.enqueue(pending, true, record).await
    }

    async fn enqueue<'a>(
        &self,
        pending: &mut Pending,
        dead_letter: bool,
        mut record: FutureRecord<'a, [u8], [u8]>,
    ) -> Result<(), SinkError> {
        loop {
            match self.producer.send_result(record) {
                Ok(future) => {
                    pending.futures.push((dead_letter, future));
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: wait for the oldest records, then try again.
                    record = back;
                    self.flush_some(pending).await?;
                    if pending.futures.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    async fn flush_some(&self, pending: &mut Pending) -> Result<(), SinkError> {
        let half = pending.futures.len().div_ceil(2);
        let older: Vec<_> = pending.futures.drain(..half).collect();
        self.await_all(older).await
    }

    async fn await_all(&self, futures: Vec<(bool, DeliveryFuture)>) -> Result<(), SinkError> {
        for (dead_letter, f) in futures {
            let topic = || {
                if dead_letter {
                    self.dead_letter_topic.clone()
                } else {
                    self.topic.clone()
                }
            };
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(SinkError::Delivery { topic: topic(), error }),
                Err(_) => return Err(SinkError::Cancelled { topic: topic() }),
            }
        }
        Ok(())
    }

    /// Waits until the broker has acknowledged every enqueued record.
    pub async fn finish(&self, pending: Pending) -> Result<(), SinkError> {
        self.await_all(pending.futures).await
    }
}

/// The Kafka sink as a [`super::Sink`]: one record per row, in the task's sink partition.
pub struct KafkaOutput(pub Arc<KafkaSink>);

impl super::Sink for KafkaOutput {
    fn open(&self, task: &TaskInfo) -> Result<Box<dyn TaskWriter>, SinkError> {
        Ok(Box::new(KafkaTaskWriter { sink: self.0.clone(), partition: task.partition, acks: Vec::new() }))
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
            let sink = self.sink.clone();
            self.acks.push((stamps, tokio::spawn(async move { sink.finish(pending).await.map(|()| now_ms()) })));
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
