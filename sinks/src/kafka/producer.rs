//! The executor's one idempotent Kafka producer, which the Kafka sink and the dead letters
//! share, and the records it has enqueued but the broker has not yet acknowledged.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::SinkError;

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
        .insert(Header { key: "es.model", value: Some(model_id) })
}
