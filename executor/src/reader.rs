//! Reads exactly `[from, until)` of one partition into Arrow record batches, a chunk at a time
//! ([`RangeRead`]), so that memory follows the chunk, not the range.
//!
//! Consumers are assigned a partition and an offset (never subscribed to a group) and are kept
//! per partition between tasks, as Spark caches its Kafka consumers (at most
//! [`CONSUMER_CACHE_CAPACITY`], the least recently used evicted). Offsets inside the range
//! that hold no record (compacted away, transaction markers) are counted as gaps: the consumer
//! reaching the end of the log while the broker's high watermark is at or past `until` proves
//! the rest of the range holds nothing to read.
//!
//! Offsets of the range that the broker deleted after the batch was planned (retention,
//! `kafka-delete-records`) are never skipped silently: the consumer's `auto.offset.reset` is
//! `error`, so the read learns of them, and either fails with [`ReadError::Deleted`] (the job's
//! `fail_on_data_loss`) or counts them as lost and goes on from the log's new start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::builder::{ArrayBuilder, BinaryBuilder, Int64Builder};
use arrow_array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use embedstream_core::offsets::OffsetRange;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const POLL_STEP: Duration = Duration::from_millis(100);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{topic}-{partition}: no record after offset {next} within {waited:?} (range ends at {until})")]
    Timeout { topic: String, partition: i32, next: i64, until: i64, waited: Duration },
    #[error("{topic}-{partition}: offsets {next}..{until} are gone (the log ends at {high})")]
    DataLoss { topic: String, partition: i32, next: i64, until: i64, high: i64 },
    #[error(
        "{topic}-{partition}: offsets {next}..{earliest} were deleted (retention or delete-records) before they \
         were read; set source.fail_on_data_loss = false to skip them"
    )]
    Deleted { topic: String, partition: i32, next: i64, earliest: i64 },
}

impl ReadError {
    /// Whether the error is a loss of data that a retry cannot undo.
    pub fn is_data_loss(&self) -> bool {
        matches!(self, ReadError::DataLoss { .. } | ReadError::Deleted { .. })
    }
}

type PartitionKey = (String, i32);

/// Idle consumers kept at most, as Spark's `spark.kafka.consumer.cache.capacity`: one per
/// partition ever read would grow without bound on a query over many topics or a pattern.
pub const CONSUMER_CACHE_CAPACITY: usize = 64;

/// Idle values by key, the least recently put back evicted past `capacity`.
struct Idle<V> {
    entries: HashMap<PartitionKey, (V, u64)>,
    clock: u64,
    capacity: usize,
}

impl<V> Idle<V> {
    fn new(capacity: usize) -> Idle<V> {
        Idle { entries: HashMap::new(), clock: 0, capacity }
    }

    fn take(&mut self, key: &PartitionKey) -> Option<V> {
        self.entries.remove(key).map(|(v, _)| v)
    }

    /// Keeps `value`; returns the one evicted to make room, if any (dropped by the caller,
    /// outside the lock).
    fn put(&mut self, key: PartitionKey, value: V) -> Option<V> {
        self.clock += 1;
        self.entries.insert(key, (value, self.clock));
        if self.entries.len() <= self.capacity {
            return None;
        }
        let oldest = self.entries.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| k.clone())?;
        self.take(&oldest)
    }
}

pub struct KafkaReader {
    config: ClientConfig,
    /// The Kafka headers read as fields: one column each after the input schema's.
    headers: Vec<String>,
    poll_timeout: Duration,
    fail_on_data_loss: bool,
    idle: Mutex<Idle<BaseConsumer>>,
}

impl KafkaReader {
    /// Without `fail_on_data_loss`, offsets of the range that the broker lost are skipped as
    /// gaps instead of failing the task.
    /// `config` is the source cluster's client configuration (its servers and properties).
    pub fn new(
        mut config: ClientConfig,
        group_id: &str,
        poll_timeout: Duration,
        fail_on_data_loss: bool,
        headers: Vec<String>,
    ) -> KafkaReader {
        config
            // Needed by librdkafka's consumer; nothing is ever committed with it.
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // A range start the broker deleted is an error to handle, not a silent jump.
            .set("auto.offset.reset", "error")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "100");
        // librdkafka prefetches up to 64 MB a partition by default; a task reads a window at a
        // time, so a smaller queue keeps it fed. The source's own properties may say otherwise.
        if config.get("queued.max.messages.kbytes").is_none() {
            config.set("queued.max.messages.kbytes", PREFETCH_KBYTES.to_string());
        }
        let idle = Mutex::new(Idle::new(CONSUMER_CACHE_CAPACITY));
        KafkaReader { config, headers, poll_timeout, fail_on_data_loss, idle }
    }

    /// Starts reading `range` (its consumer from the cache, or a new one), a chunk at a time
    /// with [`RangeRead::next_chunk`]; blocking (run it on a blocking thread).
    pub fn open(self: &Arc<Self>, range: &OffsetRange) -> Result<RangeRead, ReadError> {
        let key = (range.tp.topic.clone(), range.tp.partition);
        let cached = self.idle.lock().unwrap().take(&key);
        let consumer = match cached {
            Some(c) => c,
            None => self.config.create::<BaseConsumer>()?,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&range.tp.topic, range.tp.partition, Offset::Offset(range.from))?;
        consumer.assign(&tpl)?;
        Ok(RangeRead {
            reader: self.clone(),
            key,
            consumer: Some(consumer),
            range: range.clone(),
            next: range.from,
            gaps: 0,
            lost: 0,
            last_progress: Instant::now(),
        })
    }
}

/// Consumer errors that librdkafka reports but recovers from on its own.
fn recovers_by_itself(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        BrokerTransportFailure
            | AllBrokersDown
            | OperationTimedOut
            | RequestTimedOut
            | NetworkException
            | LeaderNotAvailable
            | NotLeaderForPartition
            | NotCoordinator
            | Resolve
    )
}

/// One range being read chunk by chunk, so that a task holds only the records it works on,
/// however long its range. The consumer goes back to the cache once the range is read; a read
/// that failed drops it (it may be in any state).
pub struct RangeRead {
    reader: Arc<KafkaReader>,
    key: PartitionKey,
    /// `None` once the range is done or has failed.
    consumer: Option<BaseConsumer>,
    range: OffsetRange,
    next: i64,
    /// Offsets read so far that held no record.
    pub gaps: u64,
    /// Offsets the broker had deleted before they were read (only without `fail_on_data_loss`).
    pub lost: u64,
    last_progress: Instant,
}

/// The consumer's prefetch queue, unless `[source.kafka]` sets `queued.max.messages.kbytes`.
pub const PREFETCH_KBYTES: u32 = 16 << 10;

/// The most rows a chunk's builders reserve up front; they grow past it as records arrive.
const CHUNK_RESERVE: usize = 4096;
/// A chunk ends once its keys and values reach this many bytes, whatever its row count: a task
/// holds a few chunks at once, so large records (1 MB JSON documents) bound its memory in
/// bytes, not only in rows.
pub const CHUNK_BYTES: usize = 16 << 20;

impl RangeRead {
    /// The next records of the range, at most `max_rows`, in offset order (columns as in
    /// [`crate::records::input_schema`]); `None` once the whole range is read. Blocking.
    pub fn next_chunk(&mut self, max_rows: usize) -> Result<Option<RecordBatch>, ReadError> {
        let Some(consumer) = self.consumer.take() else { return Ok(None) };
        if self.next >= self.range.until {
            consumer.unassign()?;
            let evicted = self.reader.idle.lock().unwrap().put(self.key.clone(), consumer);
            drop(evicted);
            return Ok(None);
        }
        match self.read_rows(&consumer, max_rows.max(1)) {
            Ok(batch) => {
                self.consumer = Some(consumer);
                Ok(Some(batch))
            }
            Err(e) => {
                let _ = consumer.unassign();
                Err(e)
            }
        }
    }

    /// Polls until `max_rows` records or [`CHUNK_BYTES`] bytes are read, or the range ends.
    fn read_rows(&mut self, consumer: &BaseConsumer, max_rows: usize) -> Result<RecordBatch, ReadError> {
        let (poll_timeout, fail_on_data_loss) = (self.reader.poll_timeout, self.reader.fail_on_data_loss);
        let (topic, partition, until) = (self.range.tp.topic.clone(), self.range.tp.partition, self.range.until);
        let topic = topic.as_str();
        // Sized by what this chunk can hold, never by the range (which may span millions).
        let capacity = ((until - self.next).max(0) as usize).min(max_rows).min(CHUNK_RESERVE);
        let mut keys = BinaryBuilder::with_capacity(capacity, 0);
        let mut values = BinaryBuilder::with_capacity(capacity, 0);
        let mut offsets = Int64Builder::with_capacity(capacity);
        let mut timestamps = Int64Builder::with_capacity(capacity);
        let mut headers: Vec<BinaryBuilder> =
            self.reader.headers.iter().map(|_| BinaryBuilder::with_capacity(capacity, 0)).collect();

        let mut bytes = 0usize;
        while self.next < until && offsets.len() < max_rows && bytes < CHUNK_BYTES {
            match consumer.poll(POLL_STEP) {
                Some(Ok(m)) => {
                    if m.topic() != topic || m.partition() != partition || m.offset() < self.next {
                        continue;
                    }
                    if m.offset() >= until {
                        self.gaps += (until - self.next) as u64;
                        self.next = until;
                        break;
                    }
                    self.gaps += (m.offset() - self.next) as u64;
                    bytes += m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len);
                    keys.append_option(m.key());
                    values.append_option(m.payload());
                    offsets.append_value(m.offset());
                    timestamps.append_option(m.timestamp().to_millis());
                    for (name, column) in self.reader.headers.iter().zip(&mut headers) {
                        let value = m.headers().and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value));
                        column.append_option(value);
                    }
                    self.next = m.offset() + 1;
                    self.last_progress = Instant::now();
                }
                Some(Err(KafkaError::PartitionEOF(p))) if p == partition => {
                    let (_, high) = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
                    if high < until && fail_on_data_loss {
                        let next = self.next;
                        return Err(ReadError::DataLoss { topic: topic.into(), partition, next, until, high });
                    }
                    // At the end of the log, and the log reaches `until`: the rest holds no
                    // records. (Or it was lost and losses are accepted: skipped the same way.)
                    self.gaps += (until - self.next) as u64;
                    self.next = until;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                ))) => {
                    let (low, _) = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
                    if low <= self.next {
                        // Not a deletion of what is left to read: the broker's answer was stale.
                        return Err(ReadError::Kafka(KafkaError::MessageConsumption(
                            RDKafkaErrorCode::OffsetOutOfRange,
                        )));
                    }
                    if fail_on_data_loss {
                        let next = self.next;
                        return Err(ReadError::Deleted { topic: topic.into(), partition, next, earliest: low });
                    }
                    let resume = low.min(until);
                    tracing::warn!(
                        topic,
                        partition,
                        from = self.next,
                        until = resume,
                        "offsets deleted before they were read: skipped"
                    );
                    self.lost += (resume - self.next) as u64;
                    self.next = resume;
                    if self.next < until {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition_offset(topic, partition, Offset::Offset(self.next))?;
                        consumer.assign(&tpl)?;
                    }
                    self.last_progress = Instant::now();
                }
                // librdkafka reconnects and refetches by itself (a broker restarting, a leader
                // moving): keep polling, the poll timeout bounds the wait.
                Some(Err(KafkaError::MessageConsumption(code))) if recovers_by_itself(code) => {
                    tracing::debug!(topic, partition, %code, "kafka: transient consumer error");
                }
                Some(Err(e)) => return Err(e.into()),
                None if self.last_progress.elapsed() > poll_timeout => {
                    let next = self.next;
                    return Err(ReadError::Timeout {
                        topic: topic.into(),
                        partition,
                        next,
                        until,
                        waited: poll_timeout,
                    });
                }
                None => {}
            }
        }

        let rows = offsets.len();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(keys.finish()),
            Arc::new(values.finish()),
            Arc::new(StringArray::from(vec![topic; rows])),
            Arc::new(Int32Array::from(vec![partition; rows])),
            Arc::new(offsets.finish()),
            Arc::new(timestamps.finish()),
        ];
        columns.extend(headers.iter_mut().map(|h| Arc::new(h.finish()) as ArrayRef));
        let schema = crate::records::read_schema(&self.reader.headers);
        Ok(RecordBatch::try_new(schema, columns).expect("columns match the read schema"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14, finding 15: the consumer cache is bounded, evicting the least recently used.
    #[test]
    fn idle_consumers_are_bounded() {
        let mut idle = Idle::new(2);
        let key = |p: i32| ("t".to_string(), p);
        assert!(idle.put(key(0), 0).is_none() && idle.put(key(1), 1).is_none());
        assert_eq!(idle.take(&key(0)), Some(0));
        idle.put(key(0), 0);
        assert_eq!(idle.put(key(2), 2), Some(1), "partition 1 was put back longest ago");
        assert_eq!(idle.entries.len(), 2);
        assert_eq!((idle.take(&key(0)), idle.take(&key(2)), idle.take(&key(1))), (Some(0), Some(2), None));
    }
}
