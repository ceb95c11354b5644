//! The one way an embedstream process serves gRPC: [`GrpcServer`] puts its services behind the
//! cluster token, adds gRPC health checking (`grpc.health.v1.Health`, SERVING for each service
//! and for the server as a whole) and server reflection (so `grpcurl` and other generic clients
//! can list and call the services without the .proto files), and stops gracefully on a signal.
//! Health and reflection need no token: they reveal no data and change nothing.
//! Also [`grpc_url`], how every client turns an address into a URL.

use std::convert::Infallible;
use std::future::Future;

use embedstream_core::auth::{ClusterToken, RequireToken};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{InterceptedService, Service};
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

/// The URL of a gRPC server given as `HOST:PORT` or as a URL (`http://HOST:PORT`).
pub fn grpc_url(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// What tonic generates for a service (`FooServer::new(impl)`), as the router takes it.
pub trait GeneratedServer:
    Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
    + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GeneratedServer for S where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A gRPC server under construction: add services, then [`GrpcServer::serve`] them.
pub struct GrpcServer {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    guard: RequireToken,
}

impl GrpcServer {
    /// A server whose guarded services require `token` (none: calls are not checked).
    pub fn new(token: ClusterToken) -> GrpcServer {
        GrpcServer { routes: RoutesBuilder::default(), names: Vec::new(), guard: RequireToken::new(token) }
    }

    /// Adds `service` behind the cluster token.
    pub fn guarded<S: GeneratedServer>(mut self, service: S) -> GrpcServer {
        self.names.push(S::NAME);
        self.routes.add_service(InterceptedService::new(service, self.guard.clone()));
        self
    }

    /// Adds a service that checks its callers itself (Arrow Flight reads the token per call).
    pub fn open<S: GeneratedServer>(mut self, service: S) -> GrpcServer {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Serves on `listener` until `shutdown` completes; calls in flight then finish.
    pub async fn serve(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in &self.names {
            reporter.set_service_status(*name, tonic_health::ServingStatus::Serving).await;
        }
        reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the compiled descriptor set is valid");
        self.routes.add_service(health).add_service(reflection);
        tonic::transport::Server::builder()
            .add_routes(self.routes.routes())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }
}
