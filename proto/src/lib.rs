//! The wire between embedstream's processes.
//!
//! - [`pb`]: the gRPC services and messages: `embedstream.proto` (driver <-> executor) and
//!   `cluster.proto` (resource manager, node agents, the admin API).
//! - [`convert`]: `From`/`TryFrom` between messages and `embedstream-core`'s domain types.
//! - [`serve`]: [`serve::GrpcServer`], the one bootstrap of every gRPC server (token, health,
//!   reflection, TLS, graceful stop), and [`serve::endpoint`] for clients.

pub mod convert;
pub mod serve;

/// Generated gRPC code for package `embedstream.v1`.
pub mod pb {
    tonic::include_proto!("embedstream.v1");

    /// The encoded descriptors of every service, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("embedstream_descriptor");
}
