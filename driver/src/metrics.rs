//! The driver's Prometheus metrics (every series carries the `query` label) and the file_sd
//! target list that lets Prometheus find the driver and every live executor.

use std::path::{Path, PathBuf};

use prometheus::{Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Serialize;

use embedstream_core::latency::LATENCY_BUCKETS;
use embedstream_core::offsets::PartitionOffsets;

pub struct DriverMetrics {
    pub registry: Registry,
    pub latest_offset: IntGaugeVec,
    pub committed_offset: IntGaugeVec,
    pub lag_offsets: IntGaugeVec,
    pub input_rows: IntCounter,
    pub processed_rows: IntCounter,
    pub dead_letter_rows: IntCounter,
    pub unchanged_rows: IntCounter,
    pub lost_offsets: IntCounter,
    pub batch_duration: Histogram,
    pub batch_phase: HistogramVec,
    pub input_rows_per_second: Gauge,
    pub processed_rows_per_second: Gauge,
    pub end_to_end_latency: Histogram,
    pub tasks_failed: IntCounter,
    pub executors: IntGauge,
    pub executors_requested: IntGauge,
    pub batches: IntCounter,
    pub last_batch_timestamp: Gauge,
    pub trigger_interval: Gauge,
    pub yielded_triggers: IntCounter,
    pub live_lag: IntGauge,
}

const DURATION_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

impl DriverMetrics {
    pub fn new(query: &str) -> DriverMetrics {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("query", query);
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help).const_label("query", query).buckets(buckets.to_vec())
        };
        let tp = &["topic", "partition"];
        macro_rules! register {
            ($m:expr) => {{
                let m = $m.expect("valid metric definition");
                registry.register(Box::new(m.clone())).expect("metric names are unique");
                m
            }};
        }
        DriverMetrics {
            latest_offset: register!(IntGaugeVec::new(opts("embedstream_source_latest_offset", "Latest (high watermark) offset of a source partition, refreshed on a timer"), tp)),
            committed_offset: register!(IntGaugeVec::new(opts("embedstream_source_committed_offset", "Next offset the query reads in a source partition (its committed position)"), tp)),
            lag_offsets: register!(IntGaugeVec::new(opts("embedstream_source_lag_offsets", "Records of a source partition not yet processed: latest - committed"), tp)),
            input_rows: register!(IntCounter::with_opts(opts("embedstream_input_rows_total", "Records planned into batches"))),
            processed_rows: register!(IntCounter::with_opts(opts("embedstream_processed_rows_total", "Records of committed batches (embedded or dead-lettered)"))),
            dead_letter_rows: register!(IntCounter::with_opts(opts("embedstream_dead_letter_rows_total", "Records sent to the dead-letter topic"))),
            unchanged_rows: register!(IntCounter::with_opts(opts("embedstream_unchanged_rows_total", "Records of committed batches whose input was the one last embedded for their key (skip_unchanged): no inference, nothing written"))),
            lost_offsets: register!(IntCounter::with_opts(opts("embedstream_source_lost_offsets_total", "Source offsets the broker deleted before the query read them, skipped because fail_on_data_loss = false"))),
            batch_duration: register!(Histogram::with_opts(hist("embedstream_batch_duration_seconds", "Wall time of a micro-batch, plan to commit", DURATION_BUCKETS))),
            batch_phase: register!(HistogramVec::new(hist("embedstream_batch_phase_seconds", "Time per phase of a batch (plan, wal, commit: driver wall time; read, infer, sink: summed over the batch's tasks; transaction_begin, transaction_commit: the slowest task's, exactly-once Kafka output only)", DURATION_BUCKETS), &["phase"])),
            input_rows_per_second: register!(Gauge::with_opts(opts("embedstream_input_rows_per_second", "Rows of the last batch over the time since the previous batch started (Spark's inputRowsPerSecond)"))),
            processed_rows_per_second: register!(Gauge::with_opts(opts("embedstream_processed_rows_per_second", "Rows of the last batch over its duration (Spark's processedRowsPerSecond)"))),
            end_to_end_latency: register!(Histogram::with_opts(hist("embedstream_end_to_end_latency_seconds", "From a record's Kafka timestamp to the sink's acknowledgement of its output", &LATENCY_BUCKETS))),
            tasks_failed: register!(IntCounter::with_opts(opts("embedstream_tasks_failed_total", "Failed task attempts"))),
            executors: register!(IntGauge::with_opts(opts("embedstream_executors", "Live executors"))),
            executors_requested: register!(IntGauge::with_opts(opts("embedstream_executors_requested", "Executors the query asked for"))),
            batches: register!(IntCounter::with_opts(opts("embedstream_batches_total", "Committed micro-batches"))),
            last_batch_timestamp: register!(Gauge::with_opts(opts("embedstream_last_batch_timestamp_seconds", "Unix time the last batch was committed (query start until then)"))),
            trigger_interval: register!(Gauge::with_opts(opts("embedstream_trigger_interval_seconds", "The processing-time trigger interval (0: as fast as data comes)"))),
            yielded_triggers: register!(IntCounter::with_opts(opts("embedstream_yielded_triggers_total", "Triggers at which a backfill planned no batch because its live query ([trigger.yield_to]) lagged by more than max_lag"))),
            live_lag: register!(IntGauge::with_opts(opts("embedstream_yield_live_lag_offsets", "The lag of the live query a backfill gives way to ([trigger.yield_to]), at the last trigger"))),
            registry,
        }
    }

    /// Sets the offset gauges from the broker's latest offsets and the query's position.
    pub fn set_offsets(&self, latest: &PartitionOffsets, committed: &PartitionOffsets) {
        for (tp, &l) in latest {
            let labels = [tp.topic.as_str(), &tp.partition.to_string()];
            self.latest_offset.with_label_values(&labels).set(l);
            if let Some(&c) = committed.get(tp) {
                self.committed_offset.with_label_values(&labels).set(c);
                self.lag_offsets.with_label_values(&labels).set((l - c).max(0));
            }
        }
    }
}

/// One entry of a Prometheus file_sd target list.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub targets: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `<checkpoint>/monitoring/targets.json`.
pub fn targets_path(checkpoint: &Path) -> PathBuf {
    checkpoint.join("monitoring").join("targets.json")
}

/// A live executor as the target list shows it.
pub struct ExecutorTarget {
    pub id: String,
    /// host:port of its `/metrics`.
    pub metrics_address: String,
    /// host:port of its gRPC services, Arrow Flight among them (label `flight_address`).
    pub flight_address: String,
}

/// Rewrites the target list: the driver, then each live executor. With `https`, every target
/// carries `__scheme__ = "https"`, so Prometheus scrapes it over TLS.
pub fn write_targets(
    checkpoint: &Path,
    query: &str,
    (driver, https): (&str, bool),
    executors: &[ExecutorTarget],
) -> std::io::Result<()> {
    let label = |role: &str, executor: Option<&str>| {
        let mut m = std::collections::BTreeMap::from([
            ("query".to_string(), query.to_string()),
            ("role".to_string(), role.to_string()),
        ]);
        if https {
            m.insert("__scheme__".into(), "https".into());
        }
        if let Some(e) = executor {
            m.insert("executor".into(), e.into());
        }
        m
    };
    let mut targets = vec![Target { targets: vec![driver.to_string()], labels: label("driver", None) }];
    for e in executors.iter().filter(|e| !e.metrics_address.is_empty()) {
        let mut labels = label("executor", Some(&e.id));
        labels.insert("flight_address".into(), e.flight_address.clone());
        targets.push(Target { targets: vec![e.metrics_address.clone()], labels });
    }
    let path = targets_path(checkpoint);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    // Prometheus re-reads the file when it changes: replace it whole.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&targets).expect("targets serialise"))?;
    std::fs::rename(tmp, path)
}
