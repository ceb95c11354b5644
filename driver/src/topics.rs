//! Topics on the broker: creating them (the driver's sink and dead-letter topics, `embedstream
//! produce`'s and the bench's input topics) and producing lines of text into one.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::source::SourceError;

/// Creates each of `topics` with `partitions` partitions unless it exists, replicated as the
/// cluster's `default.replication.factor` says (a replication factor of -1 asks for it).
pub async fn create_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[String],
    partitions: i32,
    options: &AdminOptions,
) -> Result<(), SourceError> {
    let new: Vec<NewTopic> =
        topics.iter().map(|t| NewTopic::new(t, partitions.max(1), TopicReplication::Fixed(-1))).collect();
    let results = admin
        .create_topics(&new, options)
        .await
        .map_err(|source| SourceError::Kafka { what: "create topics".into(), source })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(SourceError::Topic { topic, message: format!("cannot create: {code}") }),
        }
    }
    Ok(())
}

/// Creates `topic` on `bootstrap` unless it exists.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), SourceError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|source| SourceError::Kafka { what: "admin client".into(), source })?;
    create_topics(&admin, &[topic.to_string()], partitions, &AdminOptions::new()).await
}

/// An idempotent producer for [`produce_lines`].
pub fn producer(bootstrap: &str) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("reading line {line}: {source}")]
    Read { line: usize, source: std::io::Error },
    #[error("producing to {topic}: {source}")]
    Kafka { topic: String, source: KafkaError },
}

/// Writes one message per line and waits for the broker's acknowledgements. With `keyed`, line
/// `n` gets key `n` and goes to partition `n % partitions`; otherwise the producer spreads them.
pub async fn produce_lines(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    keyed: bool,
    lines: impl Iterator<Item = std::io::Result<String>>,
) -> Result<usize, ProduceError> {
    let failed = |source: KafkaError| ProduceError::Kafka { topic: topic.to_string(), source };
    let mut pending = Vec::new();
    let mut count = 0usize;
    for (n, line) in lines.enumerate() {
        let line = line.map_err(|source| ProduceError::Read { line: n + 1, source })?;
        let key = n.to_string();
        let mut record = FutureRecord::<str, str>::to(topic).payload(&line);
        if keyed {
            record = record.key(&key).partition(n as i32 % partitions);
        }
        pending.push(producer.send_result(record).map_err(|(e, _)| failed(e))?);
        count += 1;
        if pending.len() >= 10_000 {
            for f in pending.drain(..) {
                acknowledged(f.await).map_err(failed)?;
            }
        }
    }
    for f in pending {
        acknowledged(f.await).map_err(failed)?;
    }
    Ok(count)
}

/// The broker's answer to one send; a dropped producer counts as [`KafkaError::Canceled`].
fn acknowledged<E>(ack: Result<OwnedDeliveryResult, E>) -> Result<(), KafkaError> {
    match ack {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(KafkaError::Canceled),
    }
}
