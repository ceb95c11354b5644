//! The driver: the per-query brain.
//!
//! - [`planner`]: pure offset rules (rate limit, min_partitions split, data loss);
//! - [`checkpoint`]: the write-ahead offset log and the commit log;
//! - [`source`]: the broker's partitions and offsets, group commits, sink topics;
//! - [`scheduler`]: the executor registry, the driver's gRPC service, task dispatch and retries;
//! - [`launcher`]: keeping executors alive (local processes), replacing lost ones, scaling;
//! - [`cluster`]: executors as containers from the resource manager (cluster mode);
//! - [`admin`]: the QueryAdmin API (status, progress, stop, pause, resume, scale);
//! - [`metrics`]: Prometheus metrics and the file_sd target list;
//! - [`progress`]: per-batch progress records;
//! - [`query`]: the micro-batch loop that ties them together.

pub mod admin;
pub mod checkpoint;
pub mod cluster;
pub mod launcher;
pub mod metrics;
pub mod planner;
pub mod progress;
pub mod query;
pub mod scheduler;
pub mod source;

pub use query::{run_local, run_query, DriverError, DriverOptions, QuerySummary};
