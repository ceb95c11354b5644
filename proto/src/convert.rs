//! Conversions between the wire's messages and the domain types of `embedstream-core`, so that
//! `pb::` types stop at the gRPC edge: a message that cannot be a valid domain value is refused
//! here, with what is wrong.

use std::collections::HashMap;

use embedstream_core::health::{ExecutorHealth, WorkerHealth};
use embedstream_core::latency::{BucketMismatch, LatencyHistogram};
use embedstream_core::manifest::ManifestFile;
use embedstream_core::offsets::{OffsetRange, PartitionOffsets, TopicPartition};
use embedstream_core::progress::{DeadLetterSample, ProgressRecord, SourceProgress};
use embedstream_core::spec::{Secret, Secrets};

use crate::pb;

/// A message whose fields cannot make the domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}: {field}")]
pub struct InvalidMessage {
    pub field: &'static str,
    pub message: String,
}

impl From<&LatencyHistogram> for pb::LatencyHistogram {
    fn from(h: &LatencyHistogram) -> pb::LatencyHistogram {
        let (counts, sums) = h.parts();
        pb::LatencyHistogram { counts, sums }
    }
}

impl TryFrom<pb::LatencyHistogram> for LatencyHistogram {
    type Error = BucketMismatch;

    fn try_from(h: pb::LatencyHistogram) -> Result<LatencyHistogram, BucketMismatch> {
        LatencyHistogram::from_parts(h.counts, h.sums)
    }
}

/// A file a task wrote, as its manifest lists it.
impl From<ManifestFile> for pb::OutputFile {
    fn from(f: ManifestFile) -> pb::OutputFile {
        pb::OutputFile { path: f.path, rows: f.rows }
    }
}

impl From<pb::OutputFile> for ManifestFile {
    fn from(f: pb::OutputFile) -> ManifestFile {
        ManifestFile { path: f.path, rows: f.rows }
    }
}

impl From<OffsetRange> for pb::OffsetRange {
    fn from(r: OffsetRange) -> Self {
        pb::OffsetRange { topic: r.tp.topic, partition: r.tp.partition, from_offset: r.from, until_offset: r.until }
    }
}

impl TryFrom<pb::OffsetRange> for OffsetRange {
    type Error = InvalidMessage;

    fn try_from(r: pb::OffsetRange) -> Result<Self, Self::Error> {
        let invalid = |field, message: String| Err(InvalidMessage { field, message });
        if r.topic.is_empty() {
            return invalid("OffsetRange.topic", "empty topic".into());
        }
        if r.partition < 0 {
            return invalid("OffsetRange.partition", format!("negative partition {}", r.partition));
        }
        if r.from_offset < 0 || r.until_offset < r.from_offset {
            return invalid(
                "OffsetRange.until_offset",
                format!("range [{}, {}) is not valid", r.from_offset, r.until_offset),
            );
        }
        Ok(OffsetRange { tp: TopicPartition::new(r.topic, r.partition), from: r.from_offset, until: r.until_offset })
    }
}

/// Offsets per partition as the wire lists them.
pub fn offsets_to_pb(offsets: &PartitionOffsets) -> Vec<pb::PartitionOffset> {
    offsets
        .iter()
        .map(|(tp, &offset)| pb::PartitionOffset { topic: tp.topic.clone(), partition: tp.partition, offset })
        .collect()
}

/// The wire's list back into offsets per partition.
pub fn offsets_from_pb(offsets: Vec<pb::PartitionOffset>) -> PartitionOffsets {
    offsets.into_iter().map(|o| (TopicPartition::new(o.topic, o.partition), o.offset)).collect()
}

impl pb::QueryState {
    /// How `status` prints it.
    pub fn label(self) -> &'static str {
        match self {
            pb::QueryState::Running => "running",
            pb::QueryState::Paused => "paused",
            pb::QueryState::Stopping => "stopping",
            pb::QueryState::Unspecified => "unknown",
        }
    }
}

impl From<&ProgressRecord> for pb::ProgressRecord {
    fn from(r: &ProgressRecord) -> Self {
        pb::ProgressRecord {
            id: r.id.clone(),
            name: r.name.clone(),
            batch_id: r.batch_id,
            timestamp: r.timestamp.clone(),
            num_input_rows: r.num_input_rows,
            input_rows_per_second: r.input_rows_per_second,
            processed_rows_per_second: r.processed_rows_per_second,
            duration_ms: r.duration_ms.clone().into_iter().collect(),
            sources: r.sources.iter().map(pb::SourceProgress::from).collect(),
            embeddings: r.embeddings,
            dead_letters: r.dead_letters,
            lost_offsets: r.lost_offsets,
            task_retries: r.task_retries,
            executors: r.executors.clone().into_iter().collect(),
            cache_hits: r.cache_hits,
            cache_misses: r.cache_misses,
            dead_letter_reasons: r.dead_letter_reasons.clone().into_iter().collect(),
            dead_letter_samples: r.dead_letter_samples.iter().map(pb::DeadLetterSample::from).collect(),
            model_versions: r.model_versions.clone().into_iter().collect(),
            unchanged: r.unchanged,
            model_inputs: r.model_inputs,
        }
    }
}

impl From<&DeadLetterSample> for pb::DeadLetterSample {
    fn from(d: &DeadLetterSample) -> Self {
        pb::DeadLetterSample {
            topic: d.topic.clone(),
            partition: d.partition,
            offset: d.offset,
            reason: d.reason.clone(),
        }
    }
}

impl From<pb::DeadLetterSample> for DeadLetterSample {
    fn from(d: pb::DeadLetterSample) -> Self {
        DeadLetterSample { topic: d.topic, partition: d.partition, offset: d.offset, reason: d.reason }
    }
}

impl From<pb::ProgressRecord> for ProgressRecord {
    fn from(r: pb::ProgressRecord) -> Self {
        ProgressRecord {
            id: r.id,
            name: r.name,
            batch_id: r.batch_id,
            timestamp: r.timestamp,
            num_input_rows: r.num_input_rows,
            input_rows_per_second: r.input_rows_per_second,
            processed_rows_per_second: r.processed_rows_per_second,
            duration_ms: r.duration_ms.into_iter().collect(),
            sources: r.sources.into_iter().map(SourceProgress::from).collect(),
            embeddings: r.embeddings,
            dead_letters: r.dead_letters,
            lost_offsets: r.lost_offsets,
            task_retries: r.task_retries,
            executors: r.executors.into_iter().collect(),
            cache_hits: r.cache_hits,
            cache_misses: r.cache_misses,
            dead_letter_reasons: r.dead_letter_reasons.into_iter().collect(),
            dead_letter_samples: r.dead_letter_samples.into_iter().map(DeadLetterSample::from).collect(),
            model_versions: r.model_versions.into_iter().collect(),
            unchanged: r.unchanged,
            model_inputs: r.model_inputs,
        }
    }
}

impl From<&SourceProgress> for pb::SourceProgress {
    fn from(s: &SourceProgress) -> Self {
        pb::SourceProgress {
            description: s.description.clone(),
            start_offset: offsets_to_pb(&s.start_offset),
            end_offset: offsets_to_pb(&s.end_offset),
            latest_offset: offsets_to_pb(&s.latest_offset),
            num_input_rows: s.num_input_rows,
            offsets_behind_latest: s.offsets_behind_latest,
        }
    }
}

impl From<pb::SourceProgress> for SourceProgress {
    fn from(s: pb::SourceProgress) -> Self {
        SourceProgress {
            description: s.description,
            start_offset: offsets_from_pb(s.start_offset),
            end_offset: offsets_from_pb(s.end_offset),
            latest_offset: offsets_from_pb(s.latest_offset),
            num_input_rows: s.num_input_rows,
            offsets_behind_latest: s.offsets_behind_latest,
        }
    }
}

/// The driver's read secrets, for `GetJobSpecResponse.secrets`.
/// A heartbeat carrying `health` for `executor_id`.
pub fn heartbeat_to_pb(executor_id: &str, health: &ExecutorHealth, hadoop_tokens_version: u64) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        hadoop_tokens_version,
        executor_id: executor_id.to_string(),
        free_cores: 0,
        workers: (health.workers.iter())
            .map(|w| pb::WorkerReport { name: w.name.clone(), pid: w.pid, pss_bytes: w.pss_bytes })
            .collect(),
        worker_restarts: health.worker_restarts,
        embeddings: health.embeddings,
        cache_hits: health.cache_hits,
        cache_misses: health.cache_misses,
    }
}

impl From<&pb::HeartbeatRequest> for ExecutorHealth {
    fn from(r: &pb::HeartbeatRequest) -> ExecutorHealth {
        ExecutorHealth {
            workers: (r.workers.iter())
                .map(|w| WorkerHealth { name: w.name.clone(), pid: w.pid, pss_bytes: w.pss_bytes })
                .collect(),
            worker_restarts: r.worker_restarts,
            embeddings: r.embeddings,
            cache_hits: r.cache_hits,
            cache_misses: r.cache_misses,
        }
    }
}

pub fn secrets_to_pb(secrets: &Secrets) -> HashMap<String, String> {
    secrets.iter().map(|(k, v)| (k.to_string(), v.expose().to_string())).collect()
}

pub fn secrets_from_pb(secrets: HashMap<String, String>) -> Secrets {
    Secrets::from_pairs(secrets.into_iter().map(|(k, v)| (k, Secret::new(v))))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Issue 14, finding 4: a task's status no longer grows with its rows. It carried 4 bytes
    /// per output row, over the driver's 4 MiB decode limit past about a million rows.
    #[test]
    fn a_large_task_s_status_stays_small() {
        let mut latency = LatencyHistogram::default();
        (0..2_000_000u32).for_each(|i| latency.observe(f64::from(i % 7000) / 1000.0));
        let status =
            pb::TaskSuccessful { rows_read: 2_000_000, latency: Some((&latency).into()), ..Default::default() };
        assert!(status.encoded_len() < 512, "{} bytes", status.encoded_len());
        let back = LatencyHistogram::try_from(status.latency.unwrap()).unwrap();
        assert_eq!(back.count(), 2_000_000);
    }

    #[test]
    fn ranges_round_trip_and_bad_ones_are_refused() {
        let r = OffsetRange { tp: TopicPartition::new("t", 2), from: 5, until: 9 };
        let wire: pb::OffsetRange = r.clone().into();
        assert_eq!(OffsetRange::try_from(wire.clone()).unwrap(), r);
        let backwards = pb::OffsetRange { from_offset: 9, until_offset: 5, ..wire.clone() };
        assert_eq!(OffsetRange::try_from(backwards).unwrap_err().field, "OffsetRange.until_offset");
        let negative = pb::OffsetRange { partition: -1, ..wire };
        assert_eq!(OffsetRange::try_from(negative).unwrap_err().field, "OffsetRange.partition");
    }

    #[test]
    fn progress_records_round_trip() {
        let offsets = |o| [(TopicPartition::new("a", 0), o)].into_iter().collect::<PartitionOffsets>();
        let record = ProgressRecord {
            id: "q-1".into(),
            name: "products".into(),
            batch_id: 7,
            timestamp: "2026-12-02T00:00:00.000Z".into(),
            num_input_rows: 40,
            input_rows_per_second: 12.5,
            processed_rows_per_second: 80.0,
            duration_ms: [("triggerExecution".to_string(), 500), ("read".to_string(), 20)].into_iter().collect(),
            sources: vec![SourceProgress {
                description: "KafkaV2[Subscribe[a]]".into(),
                start_offset: offsets(10),
                end_offset: offsets(50),
                latest_offset: offsets(60),
                num_input_rows: 40,
                offsets_behind_latest: 10,
            }],
            embeddings: 38,
            dead_letters: 2,
            lost_offsets: 3,
            task_retries: 1,
            cache_hits: 30,
            cache_misses: 10,
            dead_letter_reasons: [("value is null".to_string(), 2)].into_iter().collect(),
            dead_letter_samples: vec![DeadLetterSample {
                topic: "t".into(),
                partition: 1,
                offset: 17,
                reason: "value is null".into(),
            }],
            executors: [("exec-0".to_string(), 40)].into_iter().collect(),
            model_versions: [("text".to_string(), "0123456789ab".to_string())].into_iter().collect(),
            unchanged: 40,
            model_inputs: 60,
        };
        assert_eq!(ProgressRecord::from(pb::ProgressRecord::from(&record)), record);
    }

    #[test]
    fn heartbeat_round_trip() {
        let health = ExecutorHealth {
            workers: vec![WorkerHealth { name: "daemon".into(), pid: 7, pss_bytes: 90 << 20 }],
            worker_restarts: 1,
            embeddings: 500,
            cache_hits: 20,
            cache_misses: 480,
        };
        let beat = heartbeat_to_pb("exec-1", &health, 0);
        assert_eq!(beat.executor_id, "exec-1");
        assert_eq!(ExecutorHealth::from(&beat), health);
    }

    #[test]
    fn offsets_round_trip() {
        let o: PartitionOffsets =
            [(TopicPartition::new("a", 0), 5), (TopicPartition::new("b", 3), 9)].into_iter().collect();
        assert_eq!(offsets_from_pb(offsets_to_pb(&o)), o);
    }
}
