//! The executor's one idempotent Kafka producer, which the Kafka sink and the dead letters
//! share, and the records it has enqueued but the broker has not yet acknowledged.
//!
//! An idempotent producer that hits a fatal error (librdkafka's `rd_kafka_fatal_error`: a
//! broken sequence, a fenced or unknown producer id) refuses every record after it. The first
//! record enqueued after one finds it out and replaces the producer with a new one from the same
//! configuration: the task whose records were lost fails and is retried from the checkpoint,
//! and the executor goes on working.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use crate::SinkError;

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room a record needs besides its key and value: the `es.*` headers (a topic name is at most
/// 249 bytes) and the record's framing.
pub const HEADER_ROOM: usize = 2 << 10;

/// Where an output record came from.
pub struct Origin<'a> {
    pub topic: &'a str,
    /// The topic's id (its incarnation), empty when the batch was logged without ids.
    pub topic_id: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
}

/// The executor's one idempotent producer, shared by the Kafka sink and the dead letters.
pub struct KafkaProducer {
    /// To make a new producer after a fatal error.
    config: ClientConfig,
    current: RwLock<Arc<FutureProducer>>,
    /// Producers made to replace one that hit a fatal error.
    replaced: AtomicU64,
    /// A transactional producer (`transactional.id`) is never replaced: its fatal error (fenced
    /// by a newer attempt) ends the task attempt that uses it.
    transactional: bool,
}

/// Records enqueued but not yet acknowledged by the broker, with the topic each went to.
#[derive(Default)]
pub struct Pending {
    futures: Vec<(Arc<str>, DeliveryFuture)>,
}

impl KafkaProducer {
    /// `config` is a cluster's client configuration (its servers and properties).
    pub fn new(mut config: ClientConfig) -> Result<KafkaProducer, SinkError> {
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "200000");
        let producer: FutureProducer = config.create()?;
        Ok(KafkaProducer {
            config,
            current: RwLock::new(Arc::new(producer)),
            replaced: AtomicU64::new(0),
            transactional: false,
        })
    }

    /// A producer of transactions as `transactional_id`, each open for at most `timeout`
    /// before the broker aborts it. [`super::transactions`] initialises it (which fences every
    /// earlier producer of the id) and drives its transactions.
    pub fn transactional(
        mut config: ClientConfig,
        transactional_id: &str,
        timeout: Duration,
    ) -> Result<KafkaProducer, SinkError> {
        config.set("transactional.id", transactional_id).set("transaction.timeout.ms", timeout.as_millis().to_string());
        let mut producer = KafkaProducer::new(config)?;
        producer.transactional = true;
        Ok(producer)
    }

    /// The librdkafka producer itself, for the transaction calls (which block: call them on a
    /// blocking thread).
    pub(crate) fn client(&self) -> Arc<FutureProducer> {
        self.current.read().unwrap().clone()
    }

    /// The most bytes one record may take (`message.max.bytes`, librdkafka's 1,000,000 unless
    /// the spec's client properties say otherwise): key, value and headers together.
    pub fn message_max_bytes(&self) -> usize {
        self.config.get("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }

    /// How many times a producer that hit a fatal error was replaced.
    pub fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    /// The producer to send with: the current one, or a new one if it hit a fatal error.
    fn producer(&self) -> Arc<FutureProducer> {
        let current = self.current.read().unwrap().clone();
        if self.transactional {
            return current;
        }
        let Some((code, reason)) = current.client().fatal_error() else { return current };
        let mut slot = self.current.write().unwrap();
        // Another task may have replaced it meanwhile.
        if Arc::ptr_eq(&slot, &current) {
            match self.config.create::<FutureProducer>() {
                Ok(new) => {
                    tracing::error!(?code, %reason, "the Kafka producer hit a fatal error; sending with a new one");
                    *slot = Arc::new(new);
                    self.replaced.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(?code, %reason, error = %e, "the Kafka producer hit a fatal error and cannot be replaced")
                }
            }
        }
        slot.clone()
    }

    /// Enqueues `record` for `topic`, waiting for older records while the local queue is full.
    pub(crate) async fn enqueue<'a>(
        &self,
        pending: &mut Pending,
        topic: &Arc<str>,
        mut record: FutureRecord<'a, [u8], [u8]>,
    ) -> Result<(), SinkError> {
        let producer = self.producer();
        loop {
            match producer.send_result(record) {
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
    /// Records enqueued and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.futures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.futures.is_empty()
    }

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
        .insert(Header { key: "es.topic_id", value: Some(origin.topic_id) })
        .insert(Header { key: "es.model", value: Some(model_id) })
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use super::*;

    /// Issue 14, finding 13: a fatal error leaves the executor's idempotent producer refusing
    /// every record. librdkafka's own mock broker stands in for the broker here, because only it
    /// answers a Produce with OUT_OF_ORDER_SEQUENCE_NUMBER on demand: the batch in flight fails,
    /// and the next record goes out through a new producer and is acknowledged.
    #[tokio::test]
    async fn a_producer_that_hit_a_fatal_error_is_replaced() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("out", 1, 1).unwrap();
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", mock.bootstrap_servers());
        let producer = KafkaProducer::new(config).unwrap();
        let topic: Arc<str> = "out".into();
        let send = |value: &'static str| {
            let producer = &producer;
            let topic = topic.clone();
            async move {
                let mut pending = Pending::default();
                producer.enqueue(&mut pending, &topic, FutureRecord::to("out").payload(value.as_bytes())).await?;
                pending.finish().await
            }
        };
        send("first").await.expect("a healthy producer delivers");
        mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER]);
        let lost = send("second").await.expect_err("the broken sequence fails the batch");
        let first = producer.current.read().unwrap().clone();
        assert!(first.client().fatal_error().is_some(), "the producer is in a fatal state: {lost}");
        send("third").await.expect("a new producer delivers");
        assert_eq!(producer.replaced(), 1);
        assert!(!Arc::ptr_eq(&first, &producer.current.read().unwrap()), "the producer was replaced");
        assert!(producer.current.read().unwrap().client().fatal_error().is_none());
    }
}
