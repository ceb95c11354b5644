//! What every embedstream process shares, apart from the wire (that is `embedstream-proto`).
//!
//! - [`spec`]: the job spec, one typed and validated struct read from TOML, which the driver
//!   validates before anything starts and hands to every executor.
//! - [`fields`]: a record's named fields (key, value, JSON pointers) and the templates models read.
//! - [`offsets`]: topic partitions, offsets per partition (Spark's checkpoint JSON) and ranges.
//! - [`progress`]: the progress record of a batch, Spark's `StreamingQueryProgress` and ours.
//! - [`manifest`]: the Parquet sink's per-batch manifests, written by the driver, read by readers.
//! - [`argv`]: the command lines the processes start each other with, typed once.
//! - [`driver_record`]: where a running query's driver is (`driver.json`), for admin commands.
//! - [`auth`]: the shared cluster token that admin, internal and Flight calls carry.
//! - [`health`]: what an executor reports of itself in its heartbeats (workers, memory, restarts).
//! - [`latency`]: end-to-end latency as fixed buckets, as tasks report it.
//! - [`durable`]: writes that survive a crash (checkpoint logs, manifests, the RM's state).
//! - [`store`]: the same files on a local disk or on HDFS (`hdfs://`), picked by the path.
//! - [`tls`]: the certificate, key and CA every endpoint serves and calls with.
//! - [`web`]: what the driver's and the resource manager's pages share (the token, the login).
//! - [`telemetry`]: the `/metrics` endpoint every process serves to Prometheus, and /proc readers.

pub mod argv;
pub mod auth;
pub mod driver_record;
pub mod durable;
pub mod fields;
pub mod hadoop_tokens;
pub mod health;
pub mod latency;
pub mod manifest;
pub mod model_version;
pub mod offsets;
pub mod progress;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod web;

pub use spec::JobSpec;
