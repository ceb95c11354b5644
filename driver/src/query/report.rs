//! What a committed batch tells the outside: Prometheus metrics, the progress record (Spark's
//! StreamingQueryProgress), the log line and the query's summary; and the lag refresher that
//! keeps the offset gauges current between batches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embedstream_core::JobSpec;

use super::QuerySummary;
use crate::checkpoint::{self, OffsetLogEntry};
use crate::metrics::DriverMetrics;
use crate::progress::{ProgressLog, ProgressRecord, SourceProgress};
use crate::scheduler::BatchStats;
use crate::source::KafkaSource;
use embedstream_core::offsets::PartitionOffsets;

/// When a batch's driver-side phases happened.
pub(crate) struct BatchTimings {
    pub(crate) trigger: Instant,
    pub(crate) previous_trigger: Option<Instant>,
    pub(crate) plan: Duration,
    pub(crate) wal: Duration,
    pub(crate) commit: Duration,
}

impl QuerySummary {
    /// Counts a committed batch.
    pub(crate) fn add(&mut self, stats: &BatchStats) {
        self.batches += 1;
        self.input_rows += stats.rows_read;
        self.embeddings += stats.embeddings;
        self.dead_letters += stats.dead_letters;
        self.task_retries += stats.failed_attempts;
        self.unchanged += stats.unchanged;
    }
}

/// Metrics, the progress record and the log line of a committed batch.
pub(crate) struct Reporter {
    pub(crate) metrics: Arc<DriverMetrics>,
    pub(crate) progress: ProgressLog,
    pub(crate) query: String,
    pub(crate) query_id: String,
    pub(crate) source_description: String,
    /// `sink.guarantee = "exactly_once"` into Kafka: the batches' transaction phases are reported.
    pub(crate) transactions: bool,
    /// Each model's version, in every progress record.
    pub(crate) model_versions: BTreeMap<String, String>,
}

impl Reporter {
    pub(crate) fn new(
        spec: &JobSpec,
        query_id: &str,
        metrics: Arc<DriverMetrics>,
        progress: ProgressLog,
        model_versions: BTreeMap<String, String>,
    ) -> Reporter {
        Reporter {
            metrics,
            progress,
            query: spec.name.clone(),
            query_id: query_id.to_string(),
            source_description: source_description(spec),
            transactions: spec.sink.exactly_once_kafka(),
            model_versions,
        }
    }

    pub(crate) fn batch(
        &mut self,
        entry: &OffsetLogEntry,
        latest: &PartitionOffsets,
        stats: &BatchStats,
        t: &BatchTimings,
        run_took: Duration,
    ) {
        log_batch(entry.batch_id, stats, run_took);
        let m = &self.metrics;
        let took = t.trigger.elapsed();
        let secs = |d: Duration| d.as_secs_f64();
        m.processed_rows.inc_by(stats.rows_read);
        m.dead_letter_rows.inc_by(stats.dead_letters);
        m.unchanged_rows.inc_by(stats.unchanged);
        m.lost_offsets.inc_by(stats.lost_offsets);
        m.tasks_failed.inc_by(stats.failed_attempts);
        m.batches.inc();
        m.batch_duration.observe(secs(took));
        let micros = |us: u64| Duration::from_micros(us);
        let phases = [
            ("plan", t.plan),
            ("wal", t.wal),
            ("read", micros(stats.read_micros)),
            ("infer", micros(stats.infer_micros)),
            ("sink", micros(stats.sink_micros)),
            ("commit", t.commit),
        ];
        // With exactly-once Kafka output, the slowest task's transaction calls (inside `sink`).
        let transaction_phases = [
            ("transactionBegin", "transaction_begin", micros(stats.transaction_begin_micros)),
            ("transactionCommit", "transaction_commit", micros(stats.transaction_commit_micros)),
        ];
        let transaction_phases = if self.transactions { &transaction_phases[..] } else { &[] };
        for (phase, d) in phases {
            m.batch_phase.with_label_values(&[phase]).observe(secs(d));
        }
        for &(_, label, d) in transaction_phases {
            m.batch_phase.with_label_values(&[label]).observe(secs(d));
        }
        let rows = stats.rows_read as f64;
        let processed_rate = rows / secs(took).max(1e-9);
        let input_rate = t.previous_trigger.map_or(processed_rate, |p| rows / secs(t.trigger - p).max(1e-9));
        m.input_rows_per_second.set(input_rate);
        m.processed_rows_per_second.set(processed_rate);
        stats.latency.replay(|seconds| m.end_to_end_latency.observe(seconds));
        m.last_batch_timestamp.set(checkpoint::now_ms() as f64 / 1000.0);

        let behind: i64 = entry.end.iter().map(|(tp, &e)| (latest.get(tp).copied().unwrap_or(e) - e).max(0)).sum();
        let mut duration_ms: BTreeMap<String, u64> =
            phases.iter().map(|(p, d)| (p.to_string(), d.as_millis() as u64)).collect();
        duration_ms.insert("triggerExecution".into(), took.as_millis() as u64);
        for &(key, _, d) in transaction_phases {
            duration_ms.insert(key.into(), d.as_millis() as u64);
        }
        let record = ProgressRecord {
            id: self.query_id.clone(),
            name: self.query.clone(),
            batch_id: entry.batch_id,
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now() - took).to_string(),
            num_input_rows: stats.rows_read,
            input_rows_per_second: input_rate,
            processed_rows_per_second: processed_rate,
            duration_ms,
            sources: vec![SourceProgress {
                description: self.source_description.clone(),
                start_offset: entry.start.clone(),
                end_offset: entry.end.clone(),
                latest_offset: latest.clone(),
                num_input_rows: stats.rows_read,
                offsets_behind_latest: behind,
            }],
            embeddings: stats.embeddings,
            dead_letters: stats.dead_letters,
            lost_offsets: stats.lost_offsets,
            task_retries: stats.failed_attempts,
            executors: stats.rows_per_executor.clone(),
            cache_hits: stats.cache_hits,
            cache_misses: stats.cache_misses,
            dead_letter_reasons: stats.dead_letter_reasons.clone(),
            dead_letter_samples: stats.dead_letter_samples.clone(),
            model_versions: self.model_versions.clone(),
            unchanged: stats.unchanged,
            model_inputs: stats.model_inputs,
        };
        if let Err(e) = self.progress.append(record) {
            tracing::warn!(error = %e, "cannot write the progress log");
        }
    }
}

/// Spark's way of naming a Kafka source: `KafkaV2[Subscribe[a,b]]`.
fn source_description(spec: &JobSpec) -> String {
    let s = &spec.source;
    let how = match (&s.subscribe, &s.subscribe_pattern) {
        (Some(t), _) => format!("Subscribe[{}]", t.join(",")),
        (None, Some(p)) => format!("SubscribePattern[{p}]"),
        (None, None) => format!("Assign[{}]", spec.source_topics().join(",")),
    };
    format!("KafkaV2[{how}]")
}

fn log_batch(batch_id: u64, s: &BatchStats, took: Duration) {
    let secs = took.as_secs_f64().max(1e-9);
    tracing::info!(
        batch_id,
        rows = s.rows_read,
        embeddings = s.embeddings,
        dead_letters = s.dead_letters,
        offset_gaps = s.offset_gaps,
        lost_offsets = s.lost_offsets,
        cache_hits = s.cache_hits,
        unchanged = s.unchanged,
        retries = s.failed_attempts,
        duration_ms = took.as_millis() as u64,
        read_ms = s.read_micros / 1000,
        infer_ms = s.infer_micros / 1000,
        sink_ms = s.sink_micros / 1000,
        rows_per_second = format!("{:.1}", s.rows_read as f64 / secs),
        "batch committed"
    );
}

/// Reads the broker's latest offsets every `interval` and sets the offset and lag gauges
/// against the query's position, so lag is current even while a batch is slow.
pub(crate) fn spawn_lag_refresher(
    source: Arc<KafkaSource>,
    metrics: Arc<DriverMetrics>,
    position: Arc<Mutex<PartitionOffsets>>,
    interval: Duration,
    control: Arc<crate::admin::Control>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            let s = source.clone();
            let latest = tokio::task::spawn_blocking(move || s.partitions().and_then(|tps| s.watermarks(&tps)))
                .await
                .expect("broker calls do not panic");
            match latest {
                Ok((_, latest)) => {
                    metrics.set_offsets(&latest, &position.lock().unwrap());
                    *control.latest.lock().unwrap() = latest;
                }
                Err(e) => tracing::debug!(error = %e, "lag refresh failed"),
            }
        }
    })
}
