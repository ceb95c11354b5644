//! What every embedstream gRPC server adds to its own services: gRPC health checking
//! (`grpc.health.v1.Health`, SERVING for each named service) and server reflection (so
//! `grpcurl` and other generic clients can list and call the services without the .proto files).
//! Neither needs the cluster token: they reveal no data and change nothing.
//! Also [`grpc_url`], how every client turns an address into a URL.

use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

pub const DRIVER_SERVICE: &str = "embedstream.v1.DriverService";
pub const EXECUTOR_SERVICE: &str = "embedstream.v1.ExecutorService";
pub const QUERY_ADMIN: &str = "embedstream.v1.QueryAdmin";
pub const RESOURCE_MANAGER: &str = "embedstream.v1.ResourceManager";
pub const NODE_AGENT: &str = "embedstream.v1.NodeAgent";

/// The URL of a gRPC server given as `HOST:PORT` or as a URL (`http://HOST:PORT`).
pub fn grpc_url(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// A health service that reports `services` (and the server as a whole, "") as SERVING.
pub async fn health(services: &[&str]) -> HealthServer<impl Health> {
    let (reporter, server) = tonic_health::server::health_reporter();
    for name in services {
        reporter.set_service_status(*name, tonic_health::ServingStatus::Serving).await;
    }
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    server
}

/// Server reflection over every embedstream service.
pub fn reflection() -> ServerReflectionServer<impl ServerReflection> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the compiled descriptor set is valid")
}
