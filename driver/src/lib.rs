//! The driver: the per-query brain.
//!
//! - [`planner`]: pure offset rules (rate limit, min_partitions split, data loss);
//! - [`checkpoint`]: the write-ahead offset log and the commit log;
//! - [`source`]: the broker's partitions and offsets, group commits, sink topics;
//! - [`scheduler`]: the executor registry, the driver's gRPC service, task dispatch and retries;
//! - [`launcher`]: local executor processes;
//! - [`query`]: the micro-batch loop that ties them together.

pub mod checkpoint;
pub mod launcher;
pub mod planner;
pub mod query;
pub mod scheduler;
pub mod source;

pub use query::{run_local, DriverError, QuerySummary};
