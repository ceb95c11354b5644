//! Dead letters: a record the model cannot take (not UTF-8, empty, too long) goes to the
//! dead-letter topic as it came (its key and value) with the reason in an `es.error` header and
//! its origin in the same headers as an output record. Every sink uses them; they share the
//! executor's producer.

use std::sync::Arc;

use embedstream_core::JobSpec;
use rdkafka::message::Header;
use rdkafka::producer::FutureRecord;

use super::kafka::{origin_headers, KafkaProducer, Origin, Pending};
use super::SinkError;

pub struct DeadLetters {
    producer: Arc<KafkaProducer>,
    topic: Arc<str>,
    model_id: String,
}

impl DeadLetters {
    pub fn new(spec: &JobSpec, producer: Arc<KafkaProducer>, model_id: String) -> DeadLetters {
        DeadLetters { producer, topic: spec.dead_letter_topic().into(), model_id }
    }

    /// Enqueues a dead letter for `partition` of the dead-letter topic: the input value as it
    /// came, and why it was refused.
    pub async fn send(
        &self,
        pending: &mut Pending,
        partition: i32,
        origin: &Origin<'_>,
        value: Option<&[u8]>,
        reason: &str,
    ) -> Result<(), SinkError> {
        let headers = origin_headers(origin, &self.model_id).insert(Header { key: "es.error", value: Some(reason) });
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).partition(partition).headers(headers);
        if let Some(k) = origin.key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.producer.enqueue(pending, &self.topic, record).await
    }
}
