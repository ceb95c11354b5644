//! How a query runs: `[trigger]` (when batches start), `[executors]` (how many, how big),
//! `[monitoring]` (Prometheus endpoints, lag refresh), `[flight]` (the executors' Arrow Flight
//! limits) and `[security]` (the cluster token, and TLS for a local query's endpoints).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{HumanDuration, MemorySize};
use super::SpecError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// Interval between batch starts, like Spark's `Trigger.ProcessingTime` ("5s", "500ms").
    /// Absent: the next batch starts as soon as the previous one ends and data is there.
    #[serde(default)]
    pub processing_time: Option<HumanDuration>,
    /// Process what is in the topics when the query starts, in as many batches as the rate
    /// limit needs, then exit 0 (Spark's `Trigger.AvailableNow`).
    #[serde(default)]
    pub available_now: bool,
    /// A backfill that gives way to a live query (`[trigger.yield_to]`): no batch is planned
    /// while that query's consumer group lags by more than `max_lag` offsets on this query's
    /// partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yield_to: Option<YieldSpec>,
}

/// `[trigger.yield_to]`: the live query a backfill (a re-embedding from the earliest offsets)
/// gives way to, so that live updates are never late because of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YieldSpec {
    /// The live query's consumer group (its `source.group_id`, which it commits after each batch).
    pub group: String,
    /// Offsets the live query may lag by, summed over the partitions, before the backfill waits.
    #[serde(default = "default_max_lag")]
    pub max_lag: u64,
}

fn default_max_lag() -> u64 {
    1000
}

impl TriggerSpec {
    /// The interval; zero when none is set.
    pub fn interval(&self) -> Duration {
        self.processing_time.as_ref().map_or(Duration::ZERO, HumanDuration::get)
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.processing_time.is_some() && self.available_now {
            return Err(SpecError::new("trigger", "set either `processing_time` or `available_now`, not both"));
        }
        if self.yield_to.as_ref().is_some_and(|y| y.group.trim().is_empty()) {
            return Err(SpecError::new("trigger.yield_to.group", "must name the live query's consumer group"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorsSpec {
    #[serde(default = "default_one")]
    pub count: u32,
    /// Tasks an executor runs at once, and ONNX Runtime's intra-op threads.
    #[serde(default = "default_one")]
    pub cores: u32,
    /// Memory of an executor container in cluster mode ("512m", "2g"): the node agent kills an
    /// executor whose process tree (model daemon and workers included) uses more.
    #[serde(default = "default_executor_memory")]
    pub memory: MemorySize,
    /// On YARN, memory beyond `memory` in each executor container (Spark's
    /// `spark.executor.memoryOverhead`): YARN's check kills a container over `memory` plus
    /// this. Default: a tenth of `memory`, at least 384m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_overhead: Option<MemorySize>,
    /// How long one task attempt may run before the driver gives up on it and runs it elsewhere
    /// (a retryable failure, `TIMED_OUT`). Default: one minute plus
    /// `model.worker_timeout_per_text` for each record of the task (see `JobSpec::task_deadline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_timeout: Option<HumanDuration>,
    /// How long a task waits for a free core on the executor that last ran its partition (and
    /// holds that partition's cached embeddings) before it takes any free core, as Spark's
    /// `spark.locality.wait`. `"0s"` never waits. Default: see `JobSpec::locality_wait`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_wait: Option<HumanDuration>,
}

fn default_one() -> u32 {
    1
}

fn default_executor_memory() -> MemorySize {
    MemorySize::parse("2g").expect("a valid size")
}

impl Default for ExecutorsSpec {
    fn default() -> Self {
        ExecutorsSpec {
            count: 1,
            cores: 1,
            memory: default_executor_memory(),
            memory_overhead: None,
            task_timeout: None,
            locality_wait: None,
        }
    }
}

impl ExecutorsSpec {
    /// `memory` in MiB.
    pub fn memory_mb(&self) -> u64 {
        self.memory.get().0
    }

    /// A YARN executor container's memory in MiB: `memory` plus `memory_overhead`.
    pub fn container_memory_mb(&self) -> u64 {
        let overhead = match &self.memory_overhead {
            Some(m) => m.get().0,
            None => (self.memory_mb() / 10).max(384),
        };
        self.memory_mb() + overhead
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.count == 0 {
            return Err(SpecError::new("executors.count", "must be at least 1"));
        }
        if self.cores == 0 {
            return Err(SpecError::new("executors.cores", "must be at least 1"));
        }
        if let Some(t) = &self.task_timeout {
            non_zero("executors.task_timeout", t)?;
        }
        Ok(())
    }
}

/// Prometheus endpoints and the lag refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSpec {
    /// The driver's `/metrics` (host:port; port 0 picks a free one, written to
    /// `<checkpoint_location>/monitoring/targets.json`).
    #[serde(default = "default_listen")]
    pub metrics_listen: String,
    /// Where each executor serves its `/metrics`; port 0 lets each pick its own.
    #[serde(default = "default_listen")]
    pub executor_metrics_listen: String,
    /// How often the driver reads the broker's latest offsets for the lag gauges, between batches too.
    #[serde(default = "default_lag_refresh")]
    pub lag_refresh_interval: HumanDuration,
    /// Where a local query's driver serves its admin API (`status`, `stop`, ...): like Spark's
    /// UI on 4040, the next of 16 ports when one is taken. Written to
    /// `<checkpoint_location>/driver.json`, where `status JOB.toml` finds it.
    #[serde(default = "default_driver_listen")]
    pub driver_listen: String,
}

fn default_driver_listen() -> String {
    "127.0.0.1:4040".into()
}

fn default_listen() -> String {
    "127.0.0.1:0".into()
}

fn default_lag_refresh() -> HumanDuration {
    HumanDuration::parse("5s").expect("a valid duration")
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        MonitoringSpec {
            metrics_listen: default_listen(),
            executor_metrics_listen: default_listen(),
            lag_refresh_interval: default_lag_refresh(),
            driver_listen: default_driver_listen(),
        }
    }
}

impl MonitoringSpec {
    pub fn lag_refresh(&self) -> Duration {
        self.lag_refresh_interval.get()
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        for (key, addr) in [
            ("monitoring.metrics_listen", &self.metrics_listen),
            ("monitoring.executor_metrics_listen", &self.executor_metrics_listen),
            ("monitoring.driver_listen", &self.driver_listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(SpecError::new(key, format!("`{addr}` is not an address such as \"127.0.0.1:9464\"")));
            }
        }
        non_zero("monitoring.lag_refresh_interval", &self.lag_refresh_interval)
    }
}

/// A duration that must be above zero.
fn non_zero(key: &str, d: &HumanDuration) -> Result<(), SpecError> {
    if d.get().is_zero() {
        return Err(SpecError::new(key, "must be a duration above zero, such as \"5s\""));
    }
    Ok(())
}

/// The Arrow Flight service every executor serves on its gRPC address: `DoExchange` embeds a
/// client's `text` column with the executor's warm workers, `DoGet` returns the query's latest
/// output batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlightSpec {
    /// Rows one `DoExchange` call may send in all.
    #[serde(default = "default_flight_rows")]
    pub max_rows_per_call: usize,
    /// Bytes of text one `DoExchange` call may send in all.
    #[serde(default = "default_flight_bytes")]
    pub max_bytes_per_call: usize,
    /// `DoExchange` calls served at once per executor; one more is answered "overloaded".
    #[serde(default = "default_flight_calls")]
    pub max_concurrent_calls: usize,
    /// Output batches (one per task window) each executor keeps in memory for `DoGet`.
    #[serde(default = "default_recent_batches")]
    pub recent_batches: usize,
    /// And at most this many bytes of them (their keys, values and vectors).
    #[serde(default = "default_recent_bytes")]
    pub recent_bytes: usize,
    /// A `DoExchange` call that sends no batch for this long is ended, freeing its slot.
    #[serde(default = "default_flight_idle")]
    pub idle_timeout: HumanDuration,
}

fn default_flight_rows() -> usize {
    10_000
}
fn default_flight_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_flight_calls() -> usize {
    4
}
fn default_recent_batches() -> usize {
    16
}
fn default_recent_bytes() -> usize {
    64 << 20
}
fn default_flight_idle() -> HumanDuration {
    HumanDuration::parse("60s").expect("a valid duration")
}

impl FlightSpec {
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.get()
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        for (key, value) in [
            ("flight.max_rows_per_call", self.max_rows_per_call),
            ("flight.max_bytes_per_call", self.max_bytes_per_call),
            ("flight.max_concurrent_calls", self.max_concurrent_calls),
        ] {
            if value == 0 {
                return Err(SpecError::new(key, "must be at least 1"));
            }
        }
        non_zero("flight.idle_timeout", &self.idle_timeout)
    }
}

impl Default for FlightSpec {
    fn default() -> Self {
        FlightSpec {
            max_rows_per_call: default_flight_rows(),
            max_bytes_per_call: default_flight_bytes(),
            max_concurrent_calls: default_flight_calls(),
            recent_batches: default_recent_batches(),
            recent_bytes: default_recent_bytes(),
            idle_timeout: default_flight_idle(),
        }
    }
}

/// Who may call (the cluster token, see `embedstream_core::auth`) and how calls are protected
/// (TLS, see `embedstream_core::tls`). The `tls_*` files are those of a local query (`run`):
/// its driver, executors and `/metrics` endpoints use them, and `submit` calls the resource
/// manager with them. In a cluster, drivers and executors use their node agent's files. On
/// YARN they are staged with the application, which without them gets a CA of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySpec {
    /// A file whose first line is the cluster token; `EMBEDSTREAM_TOKEN` wins over it.
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain the driver and executors serve with (and present as clients under
    /// mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) every peer's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Servers require a client certificate signed by `tls_ca` (mutual TLS).
    #[serde(default)]
    pub tls_client_auth: bool,
    /// The name every peer's certificate holds, checked instead of the host called (one
    /// certificate for all of an application's hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

impl SecuritySpec {
    /// The token file exists here (run where it is read).
    pub(super) fn check_files(&self) -> Result<(), SpecError> {
        match &self.token_file {
            Some(path) if !path.is_file() => {
                Err(SpecError::new("security.token_file", format!("no such file: {}", path.display())))
            }
            _ => Ok(()),
        }
    }

    /// The `tls_*` settings as files.
    pub fn tls_files(&self) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles {
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_client_auth: self.tls_client_auth,
            tls_server_name: self.tls_server_name.clone(),
        }
    }

    /// Reads and checks the `tls_*` files for a local query's processes (they serve and call).
    pub fn tls(&self) -> Result<crate::tls::Tls, SpecError> {
        use crate::tls::{Naming, Role, TlsError};
        self.tls_files().load(Role::Peer, Naming::Spec).map_err(|e| match e {
            TlsError::Setting { key, message } => SpecError { key, message },
            TlsError::File { key, path, message } => SpecError { key, message: format!("{path}: {message}") },
        })
    }
}
