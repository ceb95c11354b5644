//! The driver: the per-query brain.
//!
//! - [`planner`]: pure offset rules (rate limit, min_partitions split, data loss);
//! - [`checkpoint`]: the write-ahead offset log and the commit log;
//! - [`source`]: the broker's partitions and offsets, group commits, sink topics;
//! - [`scheduler`]: the executor registry, the driver's gRPC service, task dispatch and retries;
//! - [`launcher`]: local executor processes;
//! - [`metrics`]: Prometheus metrics and the file_sd target list;
//! - [`progress`]: per-batch progress records;
//! - [`query`]: the micro-batch loop that ties them together.

pub mod checkpoint;
pub mod launcher;
pub mod metrics;
pub mod planner;
pub mod progress;
pub mod query;
pub mod scheduler;
pub mod source;

pub use query::{run_local, DriverError, QuerySummary};
