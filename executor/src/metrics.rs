//! The executor's Prometheus metrics; every series carries `query`, `executor` and `model`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::model::cache::CacheMetrics;

pub struct ExecutorMetrics {
    pub registry: Registry,
    pub embeddings: IntCounter,
    /// Records skipped because their input was the one last embedded for their key.
    pub unchanged: IntCounter,
    pub worker_restarts: IntCounter,
    pub worker_pss_bytes: IntGaugeVec,
    pub inference_batch_size: Histogram,
    pub non_finite_vectors: IntCounter,
    pub kafka_read_errors: IntCounter,
    pub kafka_produce_errors: IntCounter,
    pub flight_calls: IntCounterVec,
    pub flight_errors: IntCounterVec,
    pub flight_embeddings: IntCounter,
    pub fetch: FetchMetrics,
    /// The embedding caches' series, by `model_name` (the executor's `model` label lists them all).
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub cache_evictions: IntCounterVec,
    pub cache_bytes: IntGaugeVec,
    pub cache_entries: IntGaugeVec,
}

/// What the image fetcher counts (`images::fetch`): images fetched, their bytes, each fetch's
/// time (retries included), and the failures by reason (`FetchError::label`, and `decode` for
/// an image fetched that did not decode).
#[derive(Clone)]
pub struct FetchMetrics {
    pub fetched: IntCounter,
    pub bytes: IntCounter,
    pub seconds: Histogram,
    pub failures: IntCounterVec,
}

impl ExecutorMetrics {
    pub fn new(query: &str, executor: &str, model: &str) -> ExecutorMetrics {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| {
            Opts::new(name, help)
                .const_label("query", query)
                .const_label("executor", executor)
                .const_label("model", model)
        };
        macro_rules! register {
            ($m:expr) => {{
                let m = $m.expect("valid metric definition");
                registry.register(Box::new(m.clone())).expect("metric names are unique");
                m
            }};
        }
        let counter = |name: &str, help: &str| register!(IntCounter::with_opts(opts(name, help)));
        let batch_sizes = HistogramOpts::from(opts("embedstream_inference_batch_size", "Texts per model call"))
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]);
        ExecutorMetrics {
            embeddings: counter("embedstream_embeddings_total", "Embeddings written to the sink"),
            unchanged: counter(
                "embedstream_unchanged_records_total",
                "Records whose input was the one last embedded for their key (skip_unchanged): not embedded",
            ),
            worker_restarts: counter("embedstream_worker_restarts_total", "Model workers replaced after they died"),
            worker_pss_bytes: register!(IntGaugeVec::new(
                opts("embedstream_worker_pss_bytes", "Proportional set size of a process that runs the model"),
                &["worker"]
            )),
            inference_batch_size: register!(Histogram::with_opts(batch_sizes)),
            non_finite_vectors: counter(
                "embedstream_non_finite_vectors_total",
                "Records whose vector held NaN or infinite values, sent to the dead-letter topic",
            ),
            kafka_read_errors: counter("embedstream_kafka_read_errors_total", "Tasks whose Kafka read failed"),
            kafka_produce_errors: counter(
                "embedstream_kafka_produce_errors_total",
                "Tasks whose output the broker refused or did not acknowledge",
            ),
            flight_calls: register!(IntCounterVec::new(
                opts("embedstream_flight_calls_total", "Arrow Flight calls received"),
                &["method"]
            )),
            flight_errors: register!(IntCounterVec::new(
                opts("embedstream_flight_errors_total", "Arrow Flight calls refused or failed, by gRPC code"),
                &["method", "code"]
            )),
            flight_embeddings: counter(
                "embedstream_flight_embeddings_total",
                "Texts embedded for Arrow Flight DoExchange calls",
            ),
            fetch: FetchMetrics {
                fetched: counter("embedstream_image_fetches_total", "Images fetched by URL"),
                bytes: counter("embedstream_image_fetch_bytes_total", "Bytes of the images fetched by URL"),
                seconds: register!(Histogram::with_opts(
                    HistogramOpts::from(opts(
                        "embedstream_image_fetch_seconds",
                        "Time to fetch an image by URL, retries and their waits included",
                    ))
                    .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                )),
                failures: register!(IntCounterVec::new(
                    opts("embedstream_image_fetch_failures_total", "Images that could not be fetched, by reason"),
                    &["reason"]
                )),
            },
            cache_hits: register!(IntCounterVec::new(
                opts("embedstream_cache_hits_total", "Texts whose vector came from the embedding cache"),
                &["model_name"]
            )),
            cache_misses: register!(IntCounterVec::new(
                opts("embedstream_cache_misses_total", "Texts the embedding cache did not hold, sent to the model"),
                &["model_name"]
            )),
            cache_evictions: register!(IntCounterVec::new(
                opts(
                    "embedstream_cache_evictions_total",
                    "Vectors dropped from the embedding cache to keep it in size"
                ),
                &["model_name"]
            )),
            cache_bytes: register!(IntGaugeVec::new(
                opts("embedstream_cache_bytes", "Bytes the embedding cache holds (model.cache_bytes bounds it)"),
                &["model_name"]
            )),
            cache_entries: register!(IntGaugeVec::new(
                opts("embedstream_cache_entries", "Vectors the embedding cache holds"),
                &["model_name"]
            )),
            registry,
        }
    }

    /// Embeddings written, cache hits and cache misses since the executor started (all models).
    pub fn counts(&self) -> (u64, u64, u64) {
        (self.embeddings.get(), sum(&self.cache_hits), sum(&self.cache_misses))
    }

    /// The embedding cache's series of one model.
    pub fn cache(&self, model: &str) -> CacheMetrics {
        CacheMetrics {
            hits: self.cache_hits.with_label_values(&[model]),
            misses: self.cache_misses.with_label_values(&[model]),
            evictions: self.cache_evictions.with_label_values(&[model]),
            bytes: self.cache_bytes.with_label_values(&[model]),
            entries: self.cache_entries.with_label_values(&[model]),
        }
    }
}

/// The sum of a counter's series over its labels.
fn sum(counter: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    (counter.collect().iter()).flat_map(|family| family.get_metric()).map(|m| m.get_counter().get_value() as u64).sum()
}
