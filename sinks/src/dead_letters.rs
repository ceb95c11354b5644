//! Dead letters: a record the model cannot take (not UTF-8, empty, too long) goes to the
//! dead-letter topic as it came (its key and value) with the reason in an `es.error` header and
//! its origin in the same headers as an output record. Every sink uses them; they share the
//! executor's producer.
//!
//! A value too large for one Kafka message (over the producer's `message.max.bytes`, 1,000,000
//! bytes unless the spec's client properties say otherwise) is cut to fit, with
//! `es.truncated = true` and `es.original_size`; so is a key over [`MAX_KEY`] bytes, with
//! `es.key_truncated = true` and `es.key_original_size`, and a reason over [`MAX_REASON`]: a
//! bad record must never fail its batch, which would fail again on every retry and every
//! restart.

use std::sync::Arc;

use embedstream_core::JobSpec;
use rdkafka::message::Header;
use rdkafka::producer::FutureRecord;

use crate::kafka::producer::{origin_headers, HEADER_ROOM};
use crate::kafka::{KafkaProducer, Origin, Pending};
use crate::SinkError;

#[derive(Clone)]
pub struct DeadLetters {
    producer: Arc<KafkaProducer>,
    topic: Arc<str>,
    model_id: String,
    /// The most value bytes one dead letter carries.
    max_value: usize,
}

/// The most key bytes a dead letter carries.
pub const MAX_KEY: usize = 16 << 10;
/// The most bytes of a reason (`es.error`) a dead letter carries.
pub const MAX_REASON: usize = 8 << 10;
/// Room left in a message for the key, the headers and the record's framing.
const ROOM_FOR_KEY_AND_HEADERS: usize = MAX_KEY + MAX_REASON + HEADER_ROOM;

impl DeadLetters {
    pub fn new(spec: &JobSpec, producer: Arc<KafkaProducer>, model_id: String) -> DeadLetters {
        let max_value = producer.message_max_bytes().saturating_sub(ROOM_FOR_KEY_AND_HEADERS).max(1);
        DeadLetters { producer, topic: spec.dead_letter_topic().into(), model_id, max_value }
    }

    /// The same dead letters sent through `producer` (a task attempt's transactional one, on
    /// the same cluster).
    pub fn through(&self, producer: Arc<KafkaProducer>) -> DeadLetters {
        DeadLetters { producer, ..self.clone() }
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
        let reason = embedstream_core::progress::ellipsized(reason, MAX_REASON);
        let mut headers =
            origin_headers(origin, &self.model_id).insert(Header { key: "es.error", value: Some(reason.as_ref()) });
        let key = origin.key.map(|k| cut(k, MAX_KEY));
        if let Some(k) = origin.key.filter(|k| k.len() > MAX_KEY) {
            let size = k.len().to_string();
            headers = headers
                .insert(Header { key: "es.key_truncated", value: Some("true") })
                .insert(Header { key: "es.key_original_size", value: Some(&size) });
        }
        let original_size = value.map_or(0, <[u8]>::len);
        let value = value.map(|v| &v[..v.len().min(self.max_value)]);
        if original_size > self.max_value {
            let size = original_size.to_string();
            headers = headers
                .insert(Header { key: "es.truncated", value: Some("true") })
                .insert(Header { key: "es.original_size", value: Some(&size) });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).partition(partition).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.producer.enqueue(pending, &self.topic, record).await
    }
}

/// The first `most` bytes of `bytes`.
fn cut(bytes: &[u8], most: usize) -> &[u8] {
    &bytes[..bytes.len().min(most)]
}
