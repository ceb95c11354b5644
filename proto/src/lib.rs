//! Contracts between embedstream's processes.
//!
//! - [`pb`]: the gRPC services and messages from `embedstream.proto` (driver <-> executor).
//! - [`spec`]: the job spec, one typed and validated struct read from TOML, which the driver
//!   validates before anything starts and hands to every executor.
//! - [`manifest`]: the Parquet sink's per-batch manifests, written by the driver, read by readers.
//! - [`auth`]: the shared cluster token that admin, internal and Flight calls carry.
//! - [`telemetry`]: the `/metrics` endpoint every process serves to Prometheus.

pub mod auth;
pub mod manifest;
pub mod spec;
pub mod telemetry;

/// Generated gRPC code for package `embedstream.v1`.
pub mod pb {
    tonic::include_proto!("embedstream.v1");
}

pub use spec::JobSpec;
