//! What the driver asks the Kafka broker: which partitions the query reads, their earliest and
//! latest offsets, the consumer-group commit after each batch, and the sink's topics.
//!
//! These calls block (librdkafka's metadata and offset requests); the query runs them through
//! `spawn_blocking`.

use std::time::{Duration, Instant};

use embedstream_core::spec::{SecretError, Secrets, SinkKind};
use embedstream_core::JobSpec;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use embedstream_core::offsets::{PartitionOffsets, SourceIds, TopicPartition};

use crate::topic_ids;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kafka {what}: {source}")]
    Kafka { what: String, source: KafkaError },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{key} = \"{servers}\": cannot reach the {cluster} cluster (security.protocol {protocol}): {reason}")]
    Unreachable { key: &'static str, cluster: &'static str, servers: String, protocol: String, reason: String },
    #[error("topic {topic}: the broker answered {error} in its metadata")]
    TopicUnavailable { topic: String, error: String },
    #[error("topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error("cannot tell the topics' incarnations: {0}")]
    Ids(String),
    #[error("partitions {missing:?} are missing from the broker's answer")]
    PartitionsMissing { missing: Vec<TopicPartition>, earliest: PartitionOffsets, latest: PartitionOffsets },
}

impl SourceError {
    /// A request that failed, or an answer that lacked partitions, which the broker may answer
    /// rightly when asked again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Kafka { .. }
                | SourceError::TopicUnavailable { .. }
                | SourceError::PartitionsMissing { .. }
                | SourceError::Ids(_)
        )
    }
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> SourceError {
    let what = what.into();
    move |source| SourceError::Kafka { what, source }
}

pub struct KafkaSource {
    spec: JobSpec,
    /// Metadata, watermarks and group commits. It never subscribes, so it never joins the group
    /// as a member: the commit only records progress for lag tools to read.
    consumer: BaseConsumer,
    admin: AdminClient<DefaultClientContext>,
    /// `[trigger.yield_to]`: reads the live query's group's committed offsets (never joins it).
    live: Option<BaseConsumer>,
}

impl KafkaSource {
    /// Clients with the spec's `[source.kafka]` and `[sink.kafka]` properties and `secrets`.
    pub fn new(spec: &JobSpec, secrets: &Secrets) -> Result<KafkaSource, SourceError> {
        let consumer: BaseConsumer = spec
            .source_client(secrets)?
            .set("group.id", spec.group_id())
            .set("enable.auto.commit", "false")
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(kafka("consumer"))?;
        let admin = spec.sink_client(secrets)?.create().map_err(kafka("admin client"))?;
        let live = match &spec.trigger.yield_to {
            None => None,
            Some(y) => Some(
                (spec.source_client(secrets)?.set("group.id", &y.group).set("enable.auto.commit", "false"))
                    .create()
                    .map_err(kafka("consumer of trigger.yield_to.group"))?,
            ),
        };
        Ok(KafkaSource { spec: spec.clone(), consumer, admin, live })
    }

    /// The partitions the query reads now: `assign` as given; `subscribe` and
    /// `subscribe_pattern` as the broker's metadata lists them (a topic that does not exist yet
    /// has none). Called before every batch, so new partitions and topics are picked up.
    pub fn partitions(&self) -> Result<Vec<TopicPartition>, SourceError> {
        let src = &self.spec.source;
        if let Some(assign) = &src.assign {
            return Ok(assign
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |&p| TopicPartition::new(t.clone(), p)))
                .collect());
        }
        let md = self.consumer.fetch_metadata(None, REQUEST_TIMEOUT).map_err(kafka("metadata"))?;
        let mut out = Vec::new();
        for topic in md.topics() {
            if topic.name().starts_with("__") || !self.spec.reads_topic(topic.name()) {
                continue;
            }
            // A topic answered with an error is not a deleted topic: the answer is retried
            // (unless the topic does not exist, which a subscribed topic may not yet).
            match topic.error() {
                None => {}
                Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => continue,
                Some(e) => {
                    let error = RDKafkaErrorCode::from(e).to_string();
                    return Err(SourceError::TopicUnavailable { topic: topic.name().to_string(), error });
                }
            }
            out.extend(topic.partitions().iter().map(|p| TopicPartition::new(topic.name(), p.id())));
        }
        out.sort();
        Ok(out)
    }

    /// The topics `subscribe` or `assign` names that the cluster does not have (a pattern
    /// names none).
    pub fn missing_topics(&self) -> Result<Vec<String>, SourceError> {
        let src = &self.spec.source;
        let named: Vec<String> = match (&src.subscribe, &src.assign) {
            (Some(topics), _) => topics.clone(),
            (None, Some(assign)) => assign.keys().cloned().collect(),
            (None, None) => return Ok(Vec::new()),
        };
        let md = self.consumer.fetch_metadata(None, REQUEST_TIMEOUT).map_err(kafka("metadata"))?;
        Ok(named.into_iter().filter(|t| !md.topics().iter().any(|m| m.name() == t && m.error().is_none())).collect())
    }

    /// The partitions the query reads now and their watermarks ([`KafkaSource::watermarks`]),
    /// or [`SourceError::PartitionsMissing`] when the answer lacks a partition of `reading` (the
    /// partitions the query has offsets for): a topic answered "unknown" for a moment (a
    /// controller moving, a leader elected) is asked about again like any failed request
    /// ([`SourceError::is_transient`]); only a partition still missing after the retries counts
    /// as gone (the planner's data-loss check).
    pub fn offsets_covering(
        &self,
        reading: &PartitionOffsets,
    ) -> Result<(PartitionOffsets, PartitionOffsets), SourceError> {
        let (earliest, latest) = self.watermarks(&self.partitions()?)?;
        let missing: Vec<TopicPartition> = reading.keys().filter(|tp| !earliest.contains_key(tp)).cloned().collect();
        if missing.is_empty() {
            return Ok((earliest, latest));
        }
        Err(SourceError::PartitionsMissing { missing, earliest, latest })
    }

    /// The cluster's id and the ids of `topics`: which incarnation of each topic the offsets
    /// asked now belong to.
    pub fn source_ids(&self, topics: &[String]) -> Result<SourceIds, SourceError> {
        let cluster_id = self
            .consumer
            .client()
            .fetch_cluster_id(REQUEST_TIMEOUT)
            .ok_or_else(|| SourceError::Ids("the cluster gave no cluster id".into()))?;
        let topic_ids = topic_ids::topic_ids(&self.consumer, topics, REQUEST_TIMEOUT)
            .map_err(|e| SourceError::Ids(e.to_string()))?;
        Ok(SourceIds { cluster_id, topic_ids })
    }

    /// Earliest and latest (high watermark; the last stable offset under `read_committed`)
    /// offsets of each partition: two ListOffsets requests to each partition leader for all the
    /// partitions it leads (timestamps -2 and -1), not two a partition: with 10,000 partitions,
    /// a round trip each took 1.7 s of every batch's plan (`benches/driver.rs`).
    pub fn watermarks(&self, tps: &[TopicPartition]) -> Result<(PartitionOffsets, PartitionOffsets), SourceError> {
        if tps.is_empty() {
            return Ok((PartitionOffsets::new(), PartitionOffsets::new()));
        }
        let ask = |at: Offset| -> Result<PartitionOffsets, SourceError> {
            let mut out = PartitionOffsets::new();
            // librdkafka matches each answer to its request with a linear search: lists of a
            // bounded size keep that from growing with the square of the partitions.
            for chunk in tps.chunks(PARTITIONS_A_REQUEST) {
                let mut tpl = TopicPartitionList::new();
                for tp in chunk {
                    tpl.add_partition_offset(&tp.topic, tp.partition, at).map_err(kafka("offset list"))?;
                }
                let got = self.consumer.offsets_for_times(tpl, REQUEST_TIMEOUT).map_err(kafka("watermarks"))?;
                read_offsets(&got, &mut out)?;
            }
            Ok(out)
        };
        let earliest = ask(Offset::Beginning)?;
        let latest = ask(Offset::End)?;
        Ok((earliest, latest))
    }

    /// Commits `end` (the next offsets to read, never the last ones read) to the query's group,
    /// in lists of [`PARTITIONS_A_REQUEST`] partitions, each offset's metadata the query's id
    /// (its checkpoint's; what an exactly-once Kafka sink's tasks check, see
    /// `embedstream_sinks::kafka::transactions`).
    pub fn commit_group(&self, end: &PartitionOffsets, query_id: &str) -> Result<(), SourceError> {
        let end: Vec<(&TopicPartition, &i64)> = end.iter().collect();
        for chunk in end.chunks(PARTITIONS_A_REQUEST) {
            let mut tpl = TopicPartitionList::new();
            for (tp, &o) in chunk {
                let mut offset = tpl.add_partition(&tp.topic, tp.partition);
                offset.set_offset(Offset::Offset(o)).map_err(kafka("offset list"))?;
                offset.set_metadata(query_id);
            }
            let group = || format!("commit to group {}", self.spec.group_id());
            self.consumer.commit(&tpl, CommitMode::Sync).map_err(kafka(group()))?;
        }
        Ok(())
    }

    /// How far the live query of `[trigger.yield_to]` lags on `tps`: the latest offsets less its
    /// group's committed ones, summed over the partitions it has committed (none: `None`, a live
    /// query that has not started yet holds nothing back).
    pub fn live_lag(&self, tps: &[TopicPartition]) -> Result<Option<i64>, SourceError> {
        let Some(live) = &self.live else { return Ok(None) };
        let mut tpl = TopicPartitionList::new();
        for tp in tps {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        let got = live.committed_offsets(tpl, REQUEST_TIMEOUT).map_err(kafka("the live group's offsets"))?;
        let committed: Vec<(TopicPartition, i64)> = (got.elements().iter())
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((TopicPartition::new(e.topic(), e.partition()), o)),
                _ => None,
            })
            .collect();
        if committed.is_empty() {
            return Ok(None);
        }
        let (_, latest) = self.watermarks(tps)?;
        Ok(Some(committed.iter().map(|(tp, o)| (latest.get(tp).copied().unwrap_or(*o) - o).max(0)).sum()))
    }

    /// The offsets the query's group holds now, as any Kafka tool would read them.
    pub fn committed(&self, tps: &[TopicPartition]) -> Result<PartitionOffsets, SourceError> {
        let mut tpl = TopicPartitionList::new();
        for tp in tps {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        let got = self.consumer.committed_offsets(tpl, REQUEST_TIMEOUT).map_err(kafka("committed offsets"))?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((TopicPartition::new(e.topic(), e.partition()), o)),
                _ => None,
            })
            .collect())
    }

    /// Creates the sink and dead-letter topics with `partitions` partitions when they are
    /// missing (clusters usually run with `auto.create.topics.enable=false`), and returns the
    /// partition counts of the sink topic and of the dead-letter topic.
    pub async fn ensure_sink_topics(&self, partitions: i32) -> Result<(i32, i32), SourceError> {
        // A Parquet sink has no output topic, only the dead-letter one.
        let topics: Vec<String> =
            [self.spec.sink.output_topic().unwrap_or_default().to_string(), self.spec.dead_letter_topic()]
                .into_iter()
                .filter(|t| !t.is_empty())
                .collect();
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        crate::topics::create_topics(&self.admin, &topics, partitions, &options).await?;
        // Creation is asynchronous on the broker: wait until metadata shows both topics.
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut counts = Vec::new();
        for topic in &topics {
            loop {
                let md = self.admin.inner().fetch_metadata(Some(topic), REQUEST_TIMEOUT).map_err(kafka("metadata"))?;
                let n = md.topics().first().filter(|t| t.error().is_none()).map_or(0, |t| t.partitions().len());
                if n > 0 {
                    counts.push(n as i32);
                    break;
                }
                if Instant::now() > deadline {
                    return Err(SourceError::Topic {
                        topic: topic.clone(),
                        message: "created but not visible in metadata".into(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.ensure_state_topic(partitions).await?;
        Ok((counts[0], *counts.last().expect("the dead-letter topic")))
    }

    /// With `skip_unchanged` and a Kafka sink: its state topic, compacted (each key's last
    /// input is what is kept), made with the source's partition count when it is missing.
    async fn ensure_state_topic(&self, partitions: i32) -> Result<(), SourceError> {
        let SinkKind::Kafka(k) = &self.spec.sink.kind else { return Ok(()) };
        if !self.spec.skip_unchanged() {
            return Ok(());
        }
        let topic = k.state_topic();
        let new =
            NewTopic::new(&topic, partitions.max(1), TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = (self.admin.create_topics([&new], &options).await)
            .map_err(|source| SourceError::Kafka { what: "create topics".into(), source })?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(SourceError::Topic { topic, message: format!("cannot create: {code}") })
                }
            }
        }
        Ok(())
    }
}

/// Connects once to the source's cluster and to the sink's, before anything starts, so that a
/// wrong password, an untrusted certificate or a wrong address stops the query with
/// librdkafka's own reason (`SASL authentication error: ...`) instead of a timeout at the
/// first batch. Blocking.
/// Partitions in one offsets request or group commit (see [`KafkaSource::watermarks`]).
const PARTITIONS_A_REQUEST: usize = 500;

/// The offsets of a ListOffsets answer into `out`; a partition answered with an error fails.
fn read_offsets(got: &TopicPartitionList, out: &mut PartitionOffsets) -> Result<(), SourceError> {
    for e in got.elements() {
        let tp = TopicPartition::new(e.topic(), e.partition());
        e.error().map_err(kafka(format!("watermarks of {tp}")))?;
        match e.offset() {
            Offset::Offset(o) => out.insert(tp, o),
            other => {
                let error = format!("the broker answered {other:?} for its watermark");
                return Err(SourceError::TopicUnavailable { topic: tp.to_string(), error });
            }
        };
    }
    Ok(())
}

pub fn probe_clusters(spec: &JobSpec, secrets: &Secrets) -> Result<(), SourceError> {
    let source = ("source", "source.bootstrap_servers");
    probe(source, &spec.source.bootstrap_servers, spec.source_client(secrets)?)?;
    if spec.sink_kafka().0 != "source.kafka" || spec.sink_bootstrap_servers() != spec.source.bootstrap_servers {
        probe(("sink", "sink.bootstrap_servers"), spec.sink_bootstrap_servers(), spec.sink_client(secrets)?)?;
    }
    Ok(())
}

/// The broker at `servers` answers (plaintext), or the error says why not, naming `key` (the
/// command line's flag): what `produce` checks before it waits on the broker.
pub fn probe_servers(key: &'static str, servers: &str) -> Result<(), SourceError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", servers);
    probe(("Kafka", key), servers, config)
}

/// `(cluster, key)`: which cluster, and the spec key or flag that names its servers.
fn probe((cluster, key): (&'static str, &'static str), servers: &str, config: ClientConfig) -> Result<(), SourceError> {
    let protocol = config.get("security.protocol").unwrap_or("plaintext").to_uppercase();
    let consumer: BaseConsumer<LastError> =
        config.create_with_context(LastError::default()).map_err(kafka(format!("{cluster} client")))?;
    match consumer.fetch_metadata(None, REQUEST_TIMEOUT) {
        Ok(md) if !md.brokers().is_empty() => Ok(()),
        other => {
            let fallback = match other {
                Err(e) => e.to_string(),
                Ok(_) => "the cluster lists no broker".to_string(),
            };
            // librdkafka hands a failed handshake to the error callback, which polling serves.
            for _ in 0..5 {
                if consumer.context().0.lock().expect("not poisoned").is_some() {
                    break;
                }
                let _ = consumer.poll(Duration::from_millis(200));
            }
            let reason = consumer.context().0.lock().expect("not poisoned").take().unwrap_or(fallback);
            Err(SourceError::Unreachable { key, cluster, servers: servers.to_string(), protocol, reason })
        }
    }
}

/// Keeps the last error librdkafka reported (a failed handshake reaches the client only there).
#[derive(Default)]
struct LastError(std::sync::Mutex<Option<String>>);

impl ClientContext for LastError {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, "kafka: {reason}");
        *self.0.lock().expect("not poisoned") = Some(reason.to_string());
    }
}

impl ConsumerContext for LastError {}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::RDKafkaRespErr;

    use super::*;

    fn source_of(bootstrap: &str) -> KafkaSource {
        let spec = JobSpec::from_toml(&format!(
            r#"name = "q"
checkpoint_location = "/tmp/embedstream-unused-checkpoint"
[source]
bootstrap_servers = "{bootstrap}"
subscribe = ["t"]
[model]
onnx = "/unused/model.onnx"
tokenizer = "/unused/tokenizer.json"
[sink]
kind = "kafka"
topic = "out"
"#
        ))
        .unwrap();
        KafkaSource::new(&spec, &Secrets::default()).unwrap()
    }

    /// Issue 31, item 6: one metadata answer that called a topic unknown dropped its
    /// partitions from the plan, and with `fail_on_data_loss` the query stopped (partition
    /// gone). librdkafka's mock broker stands in for the broker: only it answers "unknown topic"
    /// for an existing topic on demand.
    #[test]
    fn a_brief_unknown_topic_answer() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 2, 1).unwrap();
        let source = source_of(&mock.bootstrap_servers());
        let reading: PartitionOffsets = (0..2).map(|p| (TopicPartition::new("t", p), 0)).collect();
        assert_eq!(source.watermarks(&source.partitions().unwrap()).unwrap().0.len(), 2);

        // An answer that calls the topic unknown is one to ask again, not a topic gone.
        mock.topic_error("t", RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART).unwrap();
        let e = source.offsets_covering(&reading).unwrap_err();
        // Still so after the retries, the answer without them is what the planner checks.
        assert!(
            matches!(&e, SourceError::PartitionsMissing { missing, earliest, .. } if missing.len() == 2 && earliest.is_empty()),
            "{e}"
        );
        assert!(e.is_transient(), "{e}");
        // The broker has it again: both partitions.
        mock.topic_error("t", RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR).unwrap();
        let (earliest, latest) = source.offsets_covering(&reading).unwrap();
        assert_eq!((earliest.len(), latest.len()), (2, 2));
    }
}
