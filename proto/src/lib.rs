//! Contracts between embedstream's processes.
//!
//! - [`pb`]: the gRPC services and messages: `embedstream.proto` (driver <-> executor) and
//!   `cluster.proto` (resource manager, node agents, the admin API).
//! - [`spec`]: the job spec, one typed and validated struct read from TOML, which the driver
//!   validates before anything starts and hands to every executor.
//! - [`manifest`]: the Parquet sink's per-batch manifests, written by the driver, read by readers.
//! - [`auth`]: the shared cluster token that admin, internal and Flight calls carry.
//! - [`serve`]: gRPC health checking and server reflection, added to every server.
//! - [`telemetry`]: the `/metrics` endpoint every process serves to Prometheus.

pub mod auth;
pub mod durable;
pub mod manifest;
pub mod serve;
pub mod spec;
pub mod telemetry;

/// Generated gRPC code for package `embedstream.v1`.
pub mod pb {
    tonic::include_proto!("embedstream.v1");

    /// The encoded descriptors of every service, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("embedstream_descriptor");
}

pub use spec::JobSpec;
