//! Topics and producing, for the `produce` and `bench` subcommands.

use anyhow::{bail, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// Creates `topic` unless it exists.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let created = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await?;
    for r in created {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("cannot create topic {t}: {code}"),
        }
    }
    Ok(())
}

pub fn producer(bootstrap: &str) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?)
}

/// Writes one message per line and waits for the broker's acknowledgements. With `keyed`, line
/// `n` gets key `n` and goes to partition `n % partitions`; otherwise the producer spreads them.
pub async fn produce_lines(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    keyed: bool,
    lines: impl Iterator<Item = std::io::Result<String>>,
) -> Result<usize> {
    let mut pending = Vec::new();
    let mut count = 0usize;
    for (n, line) in lines.enumerate() {
        let line = line?;
        let key = n.to_string();
        let mut record = FutureRecord::<str, str>::to(topic).payload(&line);
        if keyed {
            record = record.key(&key).partition(n as i32 % partitions);
        }
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        count += 1;
        if pending.len() >= 10_000 {
            for f in pending.drain(..) {
                f.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in pending {
        f.await?.map_err(|(e, _)| e)?;
    }
    Ok(count)
}
