//! The Kafka sink: one output record per good input record and written model, through the
//! executor's one producer ([`producer`]), which the dead letters (`crate::dead_letters`) share.
//! Its batch committer has nothing to publish: a record is visible once the broker acknowledged
//! it.
//!
//! Output records keep the input key and carry their origin in headers (`es.topic`,
//! `es.partition`, `es.offset`) and the model that made the vector in `es.model`: a job of
//! several models writes, for each input record, one record per model, in `[[models]]` order
//! (`sink.models` picks which), one after the other in the same partition. A consumer that
//! wants one model's vectors filters on `es.model`; one record carrying every vector would
//! make every consumer decode them all. When rows are chunks (`chunk_pooling = "none"`), each
//! record also carries its chunk's index and token span: `es.chunk`, `es.token_start`,
//! `es.token_end`. The producer is idempotent, so librdkafka's own retries neither duplicate nor
//! reorder records; a task that is retried as a whole may write its records again
//! (at-least-once).
//!
//! With `format = "json"`, `sink.columns` puts input fields beside the vector in the value
//! (`{"embedding": [...], "sku": "A-1", "price": 12.5}`), typed as `[input.types]` says
//! (timestamps as RFC 3339 text in UTC, absent fields as null). With `format = "avro"` the
//! value is Avro in the Confluent wire format, its schema registered under `<topic>-value`
//! ([`avro`]).

pub mod avro;
pub mod producer;
pub mod state;
pub mod transactions;

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{
    Array, ArrayRef, BinaryArray, FixedSizeListArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use futures::future::BoxFuture;

use embedstream_core::fields::Cell;
use embedstream_core::spec::{FieldColumn, KafkaSinkSpec, VectorFormat};
use rdkafka::producer::FutureRecord;

pub use producer::{KafkaProducer, Origin, Pending};

use crate::commit::{BatchCommitter, BatchRange, CommitError, Published};
use crate::rows::{Output, CHUNK_COLUMNS};
use crate::{SinkError, TaskInfo, TaskOutput, TaskWriter};
use producer::origin_headers;

/// The Kafka sink: one record per row, in the task's partition of `sink.topic`.
pub struct KafkaSink {
    producer: Arc<KafkaProducer>,
    topic: Arc<str>,
    format: VectorFormat,
    outputs: Vec<Output>,
    /// The fields written beside the vector (`format = "json"` or `"avro"`): `value` first if
    /// named, then the field columns.
    with_value: bool,
    fields: Vec<FieldColumn>,
    /// `format = "avro"`: the registered output schema.
    avro: Option<avro::AvroOutput>,
    /// `guarantee = "exactly_once"`: each task attempt writes in a transaction of its own.
    transactions: Option<Arc<transactions::Transactions>>,
    /// The longest key whose output records fit in one message.
    max_key: usize,
    /// `skip_unchanged`: each key's last input, in the state topic.
    state: Option<Arc<state::InputState>>,
}

impl KafkaSink {
    /// The sink; `avro` is the registered output schema when `format = "avro"`.
    pub fn new(
        spec: &KafkaSinkSpec,
        producer: Arc<KafkaProducer>,
        outputs: Vec<Output>,
        fields: Vec<FieldColumn>,
        avro: Option<avro::AvroOutput>,
    ) -> KafkaSink {
        let names: usize = fields.iter().map(|f| f.name.len() + 8).sum::<usize>() + 16;
        let largest_value = outputs.iter().map(|o| encoded_len(spec.format, o.dim)).max().unwrap_or(0) + names;
        let max_key = producer.message_max_bytes().saturating_sub(largest_value + producer::HEADER_ROOM);
        let with_value = spec.columns.iter().any(|c| c == "value");
        KafkaSink {
            producer,
            topic: spec.topic.as_str().into(),
            format: spec.format,
            outputs,
            with_value,
            fields,
            avro,
            transactions: None,
            max_key,
            state: None,
        }
    }

    /// The sink with each task attempt in a Kafka transaction (`guarantee = "exactly_once"`).
    pub fn with_transactions(mut self, transactions: Option<transactions::Transactions>) -> KafkaSink {
        self.transactions = transactions.map(Arc::new);
        self
    }

    /// The sink keeping each key's last input in a state topic (`skip_unchanged`): a
    /// tombstone then forgets its key's input.
    pub fn with_input_state(mut self, state: Option<state::InputState>) -> KafkaSink {
        self.state = state.map(Arc::new);
        self
    }

    /// The names of the cells a row carries beside its vector, in order.
    fn cell_names(&self) -> impl Iterator<Item = &str> {
        let value = self.with_value.then_some("value");
        value.into_iter().chain(self.fields.iter().map(|f| f.name.as_str()))
    }

    /// Whether output values carry input fields, whose size is the input value's.
    fn carries_fields(&self) -> bool {
        self.with_value || !self.fields.is_empty()
    }

    /// Enqueues model `model`'s vector of `origin` for partition `partition` of the sink topic,
    /// with what the row carries beside it.
    async fn send_embedding(
        &self,
        producer: &KafkaProducer,
        pending: &mut Pending,
        partition: i32,
        origin: &Origin<'_>,
        (model, version, vector): (&str, &str, &[f32]),
        Beside { chunk, cells }: &Beside,
    ) -> Result<(), SinkError> {
        let payload = match (&self.avro, cells.is_empty()) {
            (Some(avro), _) => avro.encode(avro::AvroRecord {
                vector,
                model,
                topic: origin.topic,
                partition: origin.partition,
                offset: origin.offset,
                chunk: *chunk,
                fields: cells.clone(),
            }),
            (None, true) => encode(self.format, vector),
            (None, false) => {
                let mut value: serde_json::Map<String, serde_json::Value> =
                    self.cell_names().map(String::from).zip(cells.iter().cloned().map(json_of)).collect();
                value.insert("embedding".into(), serde_json::json!(vector));
                serde_json::to_vec(&value).expect("floats and fields serialise")
            }
        };
        let mut headers = origin_headers(origin, model)
            .insert(rdkafka::message::Header { key: "es.model_version", value: Some(version) });
        for (name, value) in
            chunk.iter().flat_map(|c| ["es.chunk", "es.token_start", "es.token_end"].into_iter().zip(*c))
        {
            headers = headers.insert(rdkafka::message::Header { key: name, value: Some(&value.to_string()) });
        }
        let record =
            FutureRecord::<[u8], [u8]>::to(&self.topic).partition(partition).payload(&payload).headers(headers);
        let record = match origin.key {
            Some(k) => record.key(k),
            None => record,
        };
        producer.enqueue(pending, &self.topic, record).await
    }
}

/// What an output record carries beside its vector: its chunk's index and token span (in
/// headers; in the Avro value too), and the input fields of `sink.columns` (in a JSON or Avro
/// value), named by [`KafkaSink::cell_names`].
struct Beside {
    chunk: Option<[i32; 3]>,
    cells: Vec<Cell>,
}

impl crate::Sink for Arc<KafkaSink> {
    fn open(&self, task: &TaskInfo) -> Result<Box<dyn TaskWriter>, SinkError> {
        Ok(Box::new(KafkaTaskWriter {
            sink: self.clone(),
            partition: task.partition,
            topic_id: task.topic_id.clone(),
            acks: Vec::new(),
            source: task.source.clone(),
            batch_id: task.batch_id,
            attempt: task.attempt,
            transaction: None,
            began: Duration::ZERO,
            states: Vec::new(),
        }))
    }

    /// A record whose output cannot fit in one message (its key is too long, or with fields
    /// beside the vector, its key and value) is a dead letter: the producer would refuse it
    /// (`MsgSizeTooLarge`) on every attempt. Fields are parts of the value, and JSON writes a
    /// byte as at most 6 (`\u0001`), so a key and value that fit six times over always fit.
    fn admit(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> crate::Admit {
        let key_len = key.map_or(0, <[u8]>::len);
        let value_len = value.map_or(0, <[u8]>::len);
        let max = self.producer.message_max_bytes();
        if self.state.is_some() && key.is_some() && value.is_none() {
            // A tombstone forgets its key's last input: the next record of the key is embedded.
            return crate::Admit::Delete;
        }
        match (key_len, self.carries_fields()) {
            (n, _) if n > self.max_key => crate::Admit::Refuse(format!(
                "the key is {n} bytes: its output record would be over the producer's message.max.bytes = {max} (keys up to {} bytes fit)",
                self.max_key
            )),
            (n, true) if n + 6 * value_len > self.max_key => crate::Admit::Refuse(format!(
                "the key and value are {n} and {value_len} bytes: with sink.columns its output record could be over \
                 the producer's message.max.bytes = {max} (a key and six times the value fit in {} bytes)",
                self.max_key
            )),
            _ => crate::Admit::Embed,
        }
    }
}

/// One window written: its rows' Kafka timestamps and the wait for its acknowledgements.
type WindowAcks = (Vec<i64>, tokio::task::JoinHandle<Result<i64, SinkError>>);

struct KafkaTaskWriter {
    sink: Arc<KafkaSink>,
    partition: i32,
    /// The source topic's id, in every output record's `es.topic_id`.
    topic_id: String,
    acks: Vec<WindowAcks>,
    /// The range the task reads, and with exactly-once, the attempt's transactional producer.
    source: transactions::SourceRange,
    batch_id: u64,
    attempt: u32,
    transaction: Option<Arc<KafkaProducer>>,
    /// How long beginning the attempt's transaction took.
    began: Duration,
    /// `skip_unchanged`: each written key's input fingerprint, or `None` for a tombstone, in
    /// offset order, written to the state topic once the output is acknowledged.
    states: Vec<(Vec<u8>, Option<String>)>,
}

impl KafkaTaskWriter {
    /// The producer the attempt writes with: its transaction's, or the executor's.
    fn producer(&self) -> Arc<KafkaProducer> {
        self.transaction.clone().unwrap_or_else(|| self.sink.producer.clone())
    }
}

fn column<'a, T: 'static>(rows: &'a RecordBatch, name: &str) -> &'a T {
    rows.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).expect("the output schema")
}

impl TaskWriter for KafkaTaskWriter {
    fn begin(&mut self) -> BoxFuture<'_, Result<bool, SinkError>> {
        Box::pin(async move {
            let Some(transactions) = &self.sink.transactions else { return Ok(false) };
            let started = std::time::Instant::now();
            let attempt = transactions.begin(&self.source, self.attempt).await?;
            self.began = started.elapsed();
            match attempt {
                transactions::Attempt::Committed => Ok(true),
                transactions::Attempt::Open(producer) => {
                    self.transaction = Some(producer);
                    Ok(false)
                }
            }
        })
    }

    fn dead_letter_producer(&self) -> Option<Arc<KafkaProducer>> {
        self.transaction.clone()
    }

    fn write<'a>(&'a mut self, rows: &'a RecordBatch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let keys: &BinaryArray = column(rows, "key");
            let topics: &StringArray = column(rows, "topic");
            let partitions: &Int32Array = column(rows, "partition");
            let offsets: &Int64Array = column(rows, "offset");
            let timestamps: &Int64Array = column(rows, "timestamp_ms");
            let vectors: Vec<(&str, &str, &[f32], usize)> = (self.sink.outputs.iter())
                .map(|o| {
                    let column: &FixedSizeListArray = column(rows, &o.column);
                    let values = column.values().as_any().downcast_ref::<Float32Array>().expect("f32 embeddings");
                    (o.model.as_str(), o.version.as_str(), values.values().as_ref(), column.value_length() as usize)
                })
                .collect();
            // Rows that are chunks: their index and token span.
            let chunks: Option<Vec<&Int32Array>> =
                rows.column_by_name(CHUNK_COLUMNS[0]).map(|_| CHUNK_COLUMNS.iter().map(|c| column(rows, c)).collect());
            let values: Option<&BinaryArray> = self.sink.with_value.then(|| column(rows, "value"));
            let fields: Vec<&ArrayRef> =
                (self.sink.fields.iter()).map(|f| rows.column_by_name(&f.name).expect("the output schema")).collect();
            let producer = self.producer();
            let mut pending = Pending::default();
            for i in 0..rows.num_rows() {
                let origin = Origin {
                    topic: topics.value(i),
                    topic_id: &self.topic_id,
                    partition: partitions.value(i),
                    offset: offsets.value(i),
                    key: keys.is_valid(i).then(|| keys.value(i)),
                };
                let chunk = chunks.as_ref().map(|c| [c[0].value(i), c[1].value(i), c[2].value(i)]);
                let mut beside = Beside { chunk, cells: Vec::new() };
                if let Some(v) = values {
                    let text = v.is_valid(i).then(|| String::from_utf8_lossy(v.value(i)).into_owned());
                    beside.cells.push(text.map_or(Cell::Null, Cell::Text));
                }
                beside.cells.extend(fields.iter().map(|f| crate::rows::cell_at(f, i)));
                for &(model, version, values, dim) in &vectors {
                    let vector = &values[i * dim..(i + 1) * dim];
                    let sent = self.sink.send_embedding(
                        &producer,
                        &mut pending,
                        self.partition,
                        &origin,
                        (model, version, vector),
                        &beside,
                    );
                    sent.await?;
                }
            }
            if let Some(hashes) = rows.column_by_name(crate::rows::INPUT_HASH) {
                let hashes = hashes.as_any().downcast_ref::<StringArray>().expect("text fingerprints");
                let keyed = (0..rows.num_rows()).filter(|&i| keys.is_valid(i));
                self.states.extend(keyed.map(|i| (keys.value(i).to_vec(), Some(hashes.value(i).to_string()))));
            }
            let stamps = timestamps.iter().flatten().collect();
            self.acks.push((stamps, tokio::spawn(async move { pending.finish().await.map(|()| now_ms()) })));
            Ok(())
        })
    }

    fn last_inputs<'a>(
        &'a mut self,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<std::collections::HashMap<Vec<u8>, String>, SinkError>> {
        Box::pin(async move {
            let Some(state) = &self.sink.state else { return Ok(Default::default()) };
            state.last_inputs(&self.source.topic, self.source.partition, keys).await
        })
    }

    fn delete<'a>(&'a mut self, rows: &'a RecordBatch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let keys: &BinaryArray = column(rows, "key");
            self.states.extend(keys.iter().flatten().map(|k| (k.to_vec(), None)));
            Ok(())
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<TaskOutput, SinkError>> {
        Box::pin(async move {
            let mut out = TaskOutput::default();
            let mut acked_stamps = Vec::new();
            for (stamps, ack) in std::mem::take(&mut self.acks) {
                let acked = ack.await.expect("acknowledgements do not panic")?;
                acked_stamps.push((stamps, acked));
            }
            // The keys' inputs once their output is acknowledged (and in the same transaction).
            if let Some(state) = self.sink.state.clone() {
                let (producer, mut pending) = (self.producer(), Pending::default());
                for (key, fingerprint) in std::mem::take(&mut self.states) {
                    let at = (self.source.topic.as_str(), self.source.partition);
                    state.record(&producer, &mut pending, at, &key, fingerprint.as_deref()).await?;
                }
                pending.finish().await?;
            }
            // With exactly-once, records are visible once the transaction commits.
            if let (Some(transactions), Some(producer)) = (&self.sink.transactions, self.transaction) {
                let (batch, partition, attempt) = (self.batch_id, self.source.partition, self.attempt);
                let hook = move || crate::hooks::freeze_before_commit(batch, partition, attempt);
                let commit = transactions.commit(producer, &self.source, hook).await?;
                out.transaction = Some(transactions::TransactionTimes { begin: self.began, commit });
                let committed = now_ms();
                acked_stamps.iter_mut().for_each(|(_, acked)| *acked = committed);
            }
            for (stamps, acked) in acked_stamps {
                stamps.iter().for_each(|t| out.latency.observe((acked - t).max(0) as f64 / 1000.0));
            }
            Ok(out)
        })
    }

    /// At least once, records already sent stay in the topic: a retried task writes them
    /// again. Exactly once, the attempt's transaction is aborted.
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let (Some(transactions), Some(producer)) = (&self.sink.transactions, &self.transaction) {
                transactions.abort(producer).await;
            }
        })
    }
}

/// Kafka's batch committer: records are visible as soon as they are acknowledged
/// (at-least-once), so there is nothing to publish and no batch is ever published already.
pub struct NothingToPublish;

impl BatchCommitter for NothingToPublish {
    fn published<'a>(&'a self, _: &'a BatchRange<'a>) -> BoxFuture<'a, Result<Option<Published>, CommitError>> {
        Box::pin(async { Ok(None) })
    }

    fn publish<'a>(
        &'a self,
        _: &'a BatchRange<'a>,
        _: &'a [embedstream_core::manifest::ManifestFile],
    ) -> BoxFuture<'a, Result<(), CommitError>> {
        Box::pin(async { Ok(()) })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// The most bytes [`encode`] makes of a vector of `dim` values.
fn encoded_len(format: VectorFormat, dim: usize) -> usize {
    match format {
        VectorFormat::F32le => 4 * dim,
        // Each f32 goes out as the f64 it widens to: `-1.2345678999999999e-38,` at most (25
        // bytes), and the braces and name.
        VectorFormat::Json => 26 * dim + 32,
        // Four bytes a float, the array's block counts, the framing, the model's name and the
        // origin (a topic name is at most 249 bytes).
        VectorFormat::Avro => 4 * dim + 1024,
    }
}

/// The record value for one vector.
pub fn encode(format: VectorFormat, vector: &[f32]) -> Vec<u8> {
    match format {
        VectorFormat::F32le => vector.iter().flat_map(|x| x.to_le_bytes()).collect(),
        VectorFormat::Json => {
            serde_json::to_vec(&serde_json::json!({ "embedding": vector })).expect("floats serialise")
        }
        VectorFormat::Avro => unreachable!("Avro values are encoded with their registered schema"),
    }
}

/// A field's cell as JSON: timestamps as RFC 3339 text in UTC, with milliseconds.
fn json_of(cell: Cell) -> serde_json::Value {
    match cell {
        Cell::Null => serde_json::Value::Null,
        Cell::Text(t) => t.into(),
        Cell::Bigint(v) => v.into(),
        Cell::Double(v) => v.into(),
        Cell::Boolean(v) => v.into(),
        Cell::Timestamp(ms) => {
            let at = match ms >= 0 {
                true => std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64),
                false => std::time::UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs()),
            };
            humantime::format_rfc3339_millis(at).to_string().into()
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
        let worst = [-1.234_567_9e-38f32; 64];
        assert!(encode(VectorFormat::Json, &worst).len() <= encoded_len(VectorFormat::Json, 64));
        let back: Vec<f32> = json["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(back, v);
    }
}
