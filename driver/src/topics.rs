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

/// An idempotent producer for [`produce_lines`]; keys are partitioned as Kafka's Java clients
/// partition them (murmur2), so a keyed record goes where any other producer would put it.
pub fn producer(bootstrap: &str) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create()
}

/// How [`produce_lines`] keys its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyBy {
    /// No key: the producer spreads the records.
    None,
    /// The line's number, the record in partition `number % partitions`.
    LineNumber,
    /// A JSON line's value at this JSON pointer (`/sku`): a string as itself, another value as
    /// its JSON text.
    JsonField(String),
    /// A text line's part before the first separator, the value the part after it (as
    /// kafka-console-producer's `parse.key` and `key.separator`).
    Separator(String),
}

impl KeyBy {
    /// Line `n`'s key and value, or why it has none (`n` from 1).
    fn split<'a>(&self, n: usize, line: &'a str) -> Result<(Option<String>, &'a str), String> {
        match self {
            KeyBy::None => Ok((None, line)),
            KeyBy::LineNumber => Ok((Some((n - 1).to_string()), line)),
            KeyBy::JsonField(pointer) => {
                let doc: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| format!("line {n} is not JSON ({e}): --key-field needs JSON lines"))?;
                match doc.pointer(pointer) {
                    None | Some(serde_json::Value::Null) => Err(format!("line {n} has no {pointer} (--key-field)")),
                    Some(serde_json::Value::String(s)) => Ok((Some(s.clone()), line)),
                    Some(other) => Ok((Some(other.to_string()), line)),
                }
            }
            KeyBy::Separator(sep) => match line.split_once(sep.as_str()) {
                Some((key, value)) => Ok((Some(key.to_string()), value)),
                None => Err(format!("line {n} has no {sep:?} (--key-separator)")),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("reading line {line}: {source}")]
    Read { line: usize, source: std::io::Error },
    #[error("{0}")]
    Key(String),
    #[error("producing to {topic}: {source}")]
    Kafka { topic: String, source: KafkaError },
}

/// Writes one message per line, keyed as `key` says, and waits for the broker's
/// acknowledgements. A line that cannot be keyed stops it, naming the line (records before it
/// are written).
pub async fn produce_lines(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    key: &KeyBy,
    lines: impl Iterator<Item = std::io::Result<String>>,
) -> Result<usize, ProduceError> {
    let failed = |source: KafkaError| ProduceError::Kafka { topic: topic.to_string(), source };
    let mut pending = Vec::new();
    let mut count = 0usize;
    for (n, line) in lines.enumerate() {
        let line = line.map_err(|source| ProduceError::Read { line: n + 1, source })?;
        let (record_key, value) = key.split(n + 1, &line).map_err(ProduceError::Key)?;
        let mut record = FutureRecord::<str, str>::to(topic).payload(value);
        if let Some(k) = &record_key {
            record = record.key(k);
        }
        if *key == KeyBy::LineNumber {
            record = record.partition(n as i32 % partitions);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 36: `produce --keyed` keyed JSON products by line number; a field or a separator
    /// keys them by what they are.
    #[test]
    fn lines_are_keyed_by_a_json_field_or_a_separator() {
        let by_sku = KeyBy::JsonField("/sku".into());
        assert_eq!(
            by_sku.split(1, r#"{"sku": "A-1", "title": "Hat"}"#),
            Ok((Some("A-1".into()), r#"{"sku": "A-1", "title": "Hat"}"#))
        );
        assert_eq!(KeyBy::JsonField("/id".into()).split(2, r#"{"id": 17}"#).unwrap().0, Some("17".into()));
        assert_eq!(by_sku.split(3, r#"{"title": "Hat"}"#), Err("line 3 has no /sku (--key-field)".into()));
        assert!(by_sku.split(4, "Hat").unwrap_err().starts_with("line 4 is not JSON"));
        let tab = KeyBy::Separator("\t".into());
        assert_eq!(tab.split(1, "A-1\tRed hat\twool"), Ok((Some("A-1".into()), "Red hat\twool")));
        assert_eq!(tab.split(5, "no tab"), Err("line 5 has no \"\\t\" (--key-separator)".into()));
        assert_eq!(KeyBy::LineNumber.split(1, "x"), Ok((Some("0".into()), "x")));
        assert_eq!(KeyBy::None.split(1, "x"), Ok((None, "x")));
    }
}
