//! A Kafka sink's memory of each key's last embedded input (`skip_unchanged`, issue 35): a
//! compacted topic (`sink.state_topic`) whose records are keyed by the source topic and the
//! record's key and hold the input's fingerprint; a tombstone forgets the key. The state lives
//! in Kafka beside the output, as a Kafka Streams store lives in its changelog, so it survives
//! restarts and follows a partition to whichever executor runs it:
//!
//! - an executor restores the state partition a task needs by reading it to its end, then only
//!   its tail at the next task of that partition ([`InputState::last_inputs`]); it reads
//!   `read_committed`, so an aborted attempt's state is never taken;
//! - a task writes its keys' fingerprints after its output records are acknowledged, through the
//!   same producer (in the attempt's transaction, exactly once): state never says a key was
//!   written when its output was not ([`InputState::record`]);
//! - what a task decided itself is the task's own (the executor's memory is only what Kafka
//!   holds): it reads its writes back with everyone else's at the next restore.
//!
//! A source partition's state is in state partition `source partition % state partitions`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::producer::{KafkaProducer, Pending};
use super::transactions::blocking;
use crate::SinkError;

/// How long restoring a state partition may take before the task fails (and is retried).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// One state partition as far as this executor has read it.
#[derive(Default)]
struct Store {
    /// The next offset to read.
    next: i64,
    /// Fingerprint by state key ([`state_key`]).
    inputs: HashMap<Vec<u8>, String>,
}

/// The executor's reader and copy of the state topic.
pub struct InputState {
    topic: Arc<str>,
    consumer: Arc<Mutex<BaseConsumer>>,
    /// The state topic's partition count, looked up once.
    partitions: Mutex<Option<i32>>,
    stores: Mutex<HashMap<i32, Arc<tokio::sync::Mutex<Store>>>>,
}

/// A state record's key: the source topic, a zero byte, the record's key (two topics of one
/// query may share keys).
pub fn state_key(topic: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 1 + key.len());
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

impl InputState {
    /// `config` is the sink cluster's client configuration.
    pub fn new(mut config: ClientConfig, topic: &str) -> Result<InputState, SinkError> {
        config
            .set("group.id", "embedstream-input-state")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed");
        Ok(InputState {
            topic: topic.into(),
            consumer: Arc::new(Mutex::new(config.create()?)),
            partitions: Mutex::new(None),
            stores: Mutex::default(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The state partition of source partition `source`.
    async fn partition_of(&self, source: i32) -> Result<i32, SinkError> {
        let known = *self.partitions.lock().expect("never poisoned");
        let n = match known {
            Some(n) => n,
            None => {
                let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
                let n = blocking(move || {
                    let md = consumer.lock().expect("never poisoned").fetch_metadata(Some(&topic), RESTORE_TIMEOUT)?;
                    let t = md.topics().iter().find(|t| t.name() == &*topic).filter(|t| t.error().is_none());
                    Ok::<_, KafkaError>(t.map_or(0, |t| t.partitions().len() as i32))
                })
                .await?;
                if n == 0 {
                    return Err(SinkError::Transaction(format!(
                        "sink.state_topic `{}` does not exist (the driver makes it when the query starts)",
                        self.topic
                    )));
                }
                *self.partitions.lock().expect("never poisoned") = Some(n);
                n
            }
        };
        Ok(source.rem_euclid(n))
    }

    /// The fingerprint last written for each of `keys` of source `topic`'s partition
    /// `partition` (a key with none is absent), after reading the state partition to its end.
    pub async fn last_inputs(
        &self,
        topic: &str,
        partition: i32,
        keys: &[Vec<u8>],
    ) -> Result<HashMap<Vec<u8>, String>, SinkError> {
        let p = self.partition_of(partition).await?;
        let store = self.stores.lock().expect("never poisoned").entry(p).or_default().clone();
        let mut store = store.lock_owned().await;
        let (consumer, state_topic) = (self.consumer.clone(), self.topic.clone());
        store = blocking(move || {
            let consumer = consumer.lock().expect("never poisoned");
            read_to_end(&consumer, &state_topic, p, &mut store).map(|()| store)
        })
        .await?;
        Ok(keys.iter().filter_map(|k| store.inputs.get(&state_key(topic, k)).map(|h| (k.clone(), h.clone()))).collect())
    }

    /// Enqueues the state of `key` of source `topic`'s partition `partition`: its fingerprint,
    /// or a tombstone (`None`).
    pub async fn record(
        &self,
        producer: &KafkaProducer,
        pending: &mut Pending,
        (topic, partition): (&str, i32),
        key: &[u8],
        fingerprint: Option<&str>,
    ) -> Result<(), SinkError> {
        let p = self.partition_of(partition).await?;
        let key = state_key(topic, key);
        let record = FutureRecord::<[u8], [u8]>::to(&self.topic).partition(p).key(&key);
        let record = match fingerprint {
            Some(f) => record.payload(f.as_bytes()),
            None => record,
        };
        producer.enqueue(pending, &self.topic, record).await
    }
}

/// Reads state partition `partition` from `store.next` to its end (its last stable offset).
fn read_to_end(consumer: &BaseConsumer, topic: &str, partition: i32, store: &mut Store) -> Result<(), SinkError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(store.next))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    let read = loop {
        match consumer.poll(Duration::from_millis(100)) {
            None if Instant::now() > deadline => {
                break Err(SinkError::Transaction(format!(
                    "reading sink.state_topic `{topic}` partition {partition}: no end within {RESTORE_TIMEOUT:?}"
                )))
            }
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => break Ok(()),
            Some(Err(e)) => break Err(e.into()),
            Some(Ok(m)) => {
                let key = m.key().unwrap_or_default().to_vec();
                match m.payload() {
                    Some(v) => store.inputs.insert(key, String::from_utf8_lossy(v).into_owned()),
                    None => store.inputs.remove(&key),
                };
                store.next = m.offset() + 1;
            }
        }
    };
    consumer.unassign()?;
    read
}
