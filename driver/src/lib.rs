//! The driver: the per-query brain.
//!
//! - [`planner`]: pure offset rules (rate limit, min_partitions split, data loss);
//! - [`checkpoint`]: the write-ahead offset log and the commit log;
//! - the sink's driver-side half (its batch committer) is in `embedstream_sinks`;
//! - [`crash`]: crash points for recovery tests, only with the `test-hooks` feature;
//! - [`source`]: the broker's partitions and offsets, group commits, sink topics;
//! - [`topics`]: creating topics and producing lines into one (`produce`, the bench);
//! - [`executors`]: the executors the driver knows (live, draining, lost) and their clients;
//! - [`service`]: the driver's gRPC service for executors (job spec, registration, heartbeats);
//! - [`scheduler`]: task dispatch and retries;
//! - [`launcher`]: keeping executors alive (local processes, or containers from the resource
//!   manager), replacing lost ones, scaling;
//! - [`admin`]: the QueryAdmin API (status, progress, stop, pause, resume, scale);
//! - [`metrics`]: Prometheus metrics and the file_sd target list;
//! - [`progress`]: per-batch progress records;
//! - [`query`]: the micro-batch loop that ties them together.

pub mod admin;
pub mod checkpoint;
pub mod crash;
pub mod executors;
pub mod launcher;
pub mod metrics;
pub mod page;
pub mod planner;
pub mod progress;
pub mod query;
pub mod scheduler;
pub mod service;
pub mod source;
pub mod topic_ids;
pub mod topics;

pub use query::{run_local, run_query, DriverError, DriverOptions, QuerySummary};
