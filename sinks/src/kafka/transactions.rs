//! Exactly-once Kafka output (`sink.guarantee = "exactly_once"`), the way Kafka Streams' exactly-once
//! v2 does it: a task's output records, its dead letters and the consumer group's offset for
//! its partition (the end of its range) are written in one Kafka transaction, which the task
//! commits when its last record is acknowledged. The broker makes the three visible together to
//! `read_committed` consumers, or none of them.
//!
//! - **Fencing.** A task's producer has the query's `transactional.id` for the source partition
//!   (`embedstream-<group>-<topic>-<partition>`). A retried attempt (attempt > 0) always makes
//!   a new one and initialises it: the broker bumps the id's epoch, so the producer of any
//!   earlier attempt of a range of that partition (an executor killed, frozen or cut off) can
//!   no longer write or commit, and its open transaction is aborted.
//! - **Reuse.** A first attempt takes the producer this executor kept for the partition after
//!   its last committed transaction, when it has one (initialising a producer costs the
//!   coordinator's round trips and a new client; see docs/performance.md). That is safe
//!   without a new epoch: if another executor has initialised the id since, the kept producer
//!   is fenced and its attempt fails without writing anything visible, and the retry fences the
//!   other; if none has, no transaction of the id is pending but the kept producer's own.
//! - **Recovery.** After the initialisation, the group's committed offset for the partition is
//!   final (no transaction of an earlier attempt is pending). If it has reached the end of the
//!   task's range and its metadata names this query (the checkpoint's id, which every commit of
//!   the query's offsets carries), an earlier attempt committed this range (before a driver
//!   crash, say): the task writes nothing and succeeds. Otherwise nothing of the range is
//!   visible to this query's consumers, and the task writes all of it: an offset that another
//!   query committed to the same group (a new checkpoint reading from the start again) does
//!   not count. The driver's write-ahead log still decides which batch is next; the
//!   transaction decides whether a range's records are visible.
//! - **A task that dies** leaves its transaction open: the next attempt's initialisation aborts
//!   it; if no attempt comes, the broker aborts it after `transaction.timeout.ms`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::KafkaProducer;
use crate::SinkError;

/// The range a task reads: the unit of a transaction.
#[derive(Debug, Clone)]
pub struct SourceRange {
    pub topic: String,
    pub partition: i32,
    /// The offset after the range's last record: the group's offset once it is committed.
    pub end: i64,
    /// The query's id (its checkpoint's): the committed offset's metadata.
    pub query: String,
}

/// How long one transaction call may wait for the broker.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The most producers an executor keeps between tasks (each is a librdkafka client, with its
/// threads and connections): one per source partition it has written, up to this many.
const KEPT_PRODUCERS: usize = 64;

/// The executor's side of the protocol: the sink's producer configuration, and a consumer of
/// the query's group (for its offsets and its metadata, which the transaction carries).
pub struct Transactions {
    producer_config: ClientConfig,
    consumer: Arc<BaseConsumer>,
    group: String,
    /// `transaction.timeout.ms`: the task deadline and a margin.
    timeout: Duration,
    /// Producers whose last transaction committed, by `transactional.id`, for the next task of
    /// their partition ([`Transactions::keep`]).
    kept: Mutex<HashMap<String, Arc<KafkaProducer>>>,
}

/// One task attempt's transaction: its producer, or nothing to do (its range is committed).
pub enum Attempt {
    Open(Arc<KafkaProducer>),
    Committed,
}

/// How long an attempt's transaction calls took: beginning (with a new producer, its
/// initialisation and the coordinator's round trips) and committing (the group's offset sent,
/// then the commit), for the batch's `transactionBegin`/`transactionCommit` phases.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransactionTimes {
    pub begin: Duration,
    pub commit: Duration,
}

fn failed(doing: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Transaction(format!("{doing}: {e}"))
}

/// Runs a blocking librdkafka call on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("librdkafka calls do not panic")
}

impl Transactions {
    /// `consumer_config` is the source cluster's client configuration (the sink's is the same
    /// cluster: the spec refuses another).
    pub fn new(
        producer_config: ClientConfig,
        mut consumer_config: ClientConfig,
        group: &str,
        timeout: Duration,
    ) -> Result<Transactions, SinkError> {
        consumer_config.set("group.id", group).set("enable.auto.commit", "false");
        let consumer: BaseConsumer = consumer_config.create()?;
        Ok(Transactions {
            producer_config,
            consumer: Arc::new(consumer),
            group: group.into(),
            timeout,
            kept: Mutex::default(),
        })
    }

    fn transactional_id(&self, range: &SourceRange) -> String {
        format!("embedstream-{}-{}-{}", self.group, range.topic, range.partition)
    }

    /// Starts a task attempt over `range`: with a kept producer (a first attempt), or with a
    /// new one that fences every earlier producer of its partition; then opens a transaction,
    /// unless the group's offset says the range is committed already.
    pub async fn begin(&self, range: &SourceRange, attempt: u32) -> Result<Attempt, SinkError> {
        let id = self.transactional_id(range);
        let kept = match attempt {
            0 => self.kept.lock().unwrap().remove(&id),
            _ => None,
        };
        let producer = match kept {
            Some(producer) => producer,
            None => {
                let producer = Arc::new(KafkaProducer::transactional(self.producer_config.clone(), &id, self.timeout)?);
                let client = producer.client();
                blocking(move || client.init_transactions(CALL_TIMEOUT))
                    .await
                    .map_err(|e| failed(&format!("initialising transactional.id {id}"), e))?;
                producer
            }
        };
        let (offset, by) = self.committed(range).await?;
        if offset >= range.end && by == range.query {
            tracing::info!(topic = %range.topic, partition = range.partition, end = range.end,
                "the range was committed by an earlier attempt; nothing to write");
            self.keep(range, producer);
            return Ok(Attempt::Committed);
        }
        if offset >= range.end {
            tracing::info!(topic = %range.topic, partition = range.partition, end = range.end, offset, committed_by = %by,
                "the group's offset is past the range, committed by another query (its metadata); writing the range");
        }
        let client = producer.client();
        blocking(move || client.begin_transaction()).await.map_err(|e| failed("beginning a transaction", e))?;
        Ok(Attempt::Open(producer))
    }

    /// Keeps a producer with no open transaction for the next task of its partition.
    fn keep(&self, range: &SourceRange, producer: Arc<KafkaProducer>) {
        let mut kept = self.kept.lock().unwrap();
        if kept.len() < KEPT_PRODUCERS {
            kept.insert(self.transactional_id(range), producer);
        }
    }

    /// The group's committed offset for the range's partition (-1 for none) and its metadata
    /// (the id of the query that committed it). librdkafka asks for stable offsets
    /// (`read_committed`): a pending transactional commit is waited for.
    async fn committed(&self, range: &SourceRange) -> Result<(i64, String), SinkError> {
        let consumer = self.consumer.clone();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&range.topic, range.partition);
        let got = blocking(move || consumer.committed_offsets(tpl, CALL_TIMEOUT))
            .await
            .map_err(|e| failed(&format!("reading group {}'s offsets", self.group), e))?;
        let Some(p) = got.find_partition(&range.topic, range.partition) else { return Ok((-1, String::new())) };
        Ok(match p.offset() {
            Offset::Offset(o) => (o, p.metadata().to_string()),
            _ => (-1, String::new()),
        })
    }

    /// Sends the group's offset (the range's end) to the transaction and commits it: the
    /// records, the dead letters and the offset become visible at once. The producer is kept
    /// for the partition's next task; one that failed is dropped (its next attempt makes a new
    /// one, fencing whatever is left of this one). `before_commit` runs between the two (the
    /// tests' stale-attempt hook).
    pub async fn commit(
        &self,
        producer: Arc<KafkaProducer>,
        range: &SourceRange,
        before_commit: impl FnOnce() + Send + 'static,
    ) -> Result<Duration, SinkError> {
        let started = Instant::now();
        let metadata = self.consumer.group_metadata().ok_or_else(|| failed("the group's metadata", "none"))?;
        let mut offsets = TopicPartitionList::new();
        {
            // The group's offset names this query (its checkpoint's id): see `begin`.
            let mut offset = offsets.add_partition(&range.topic, range.partition);
            offset.set_offset(Offset::Offset(range.end)).map_err(|e| failed("the range's offset", e))?;
            offset.set_metadata(range.query.as_str());
        }
        let client = producer.client();
        blocking(move || {
            client.send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT)?;
            before_commit();
            client.commit_transaction(CALL_TIMEOUT)
        })
        .await
        .map_err(|e| failed("committing the task's transaction", e))?;
        self.keep(range, producer);
        Ok(started.elapsed())
    }

    /// Aborts the attempt's transaction (a failed task): nothing of it becomes visible.
    pub async fn abort(&self, producer: &KafkaProducer) {
        let client = producer.client();
        if let Err(e) = blocking(move || client.abort_transaction(CALL_TIMEOUT)).await {
            // A fenced or dead producer: the broker aborts it at the next attempt, or at the timeout.
            tracing::warn!(error = %e, "aborting the task's transaction");
        }
    }
}
