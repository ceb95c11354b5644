//! The one way an embedstream process serves gRPC: [`GrpcServer`] puts its services behind the
//! cluster token, adds gRPC health checking (`grpc.health.v1.Health`, SERVING for each service
//! and for the server as a whole) and server reflection (so `grpcurl` and other generic clients
//! can list and call the services without the .proto files), and stops gracefully on a signal.
//! Health and reflection need no token: they reveal no data and change nothing. With a
//! certificate (`embedstream_core::tls`) the server speaks only TLS, and under mutual TLS it
//! accepts only clients whose certificate chains to the CA.
//! Also [`endpoint`], how every client reaches a server: over TLS, verifying the server against
//! the CA, when its process has one.

use std::convert::Infallible;
use std::future::Future;

use std::time::Duration;

use embedstream_core::auth::{ClusterToken, RequireToken};
use embedstream_core::tls::Tls;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{InterceptedService, Service};
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint a client of a process with `tls` calls `address` (`HOST:PORT`, or a URL whose
/// scheme `tls` decides) through: `https://`, trusting only the CA and presenting the process's
/// certificate (for servers that require one), when the process calls over TLS; else `http://`.
/// Timeouts and laziness are the caller's.
pub fn endpoint(address: &str, tls: &Tls) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(tls.url(address))?;
    let Some(ca) = tls.ca() else { return Ok(endpoint) };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).timeout(HANDSHAKE_TIMEOUT);
    if let Some((chain, key)) = tls.identity() {
        config = config.identity(Identity::from_pem(chain, key));
    }
    // One certificate for hosts not known in advance: its name is checked, not the host's.
    if let Some(name) = tls.server_name() {
        config = config.domain_name(name);
    }
    endpoint.tls_config(config)
}

/// What a client process calls with: the cluster token on every call, and its TLS.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub token: ClusterToken,
    pub tls: Tls,
}

impl Caller {
    /// [`endpoint`] with this caller's TLS.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, tonic::transport::Error> {
        endpoint(address, &self.tls)
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
    tls: Tls,
}

impl GrpcServer {
    /// A server whose guarded services require `token` (none: calls are not checked), serving
    /// TLS when `tls` has a certificate.
    pub fn new(token: ClusterToken, tls: Tls) -> GrpcServer {
        GrpcServer { routes: RoutesBuilder::default(), names: Vec::new(), guard: RequireToken::new(token), tls }
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
        let mut builder = tonic::transport::Server::builder();
        if let Some((chain, key)) = self.tls.identity() {
            let mut config = ServerTlsConfig::new().identity(Identity::from_pem(chain, key)).timeout(HANDSHAKE_TIMEOUT);
            if self.tls.client_auth() {
                let ca = self.tls.ca().expect("mutual TLS is only loaded with a CA");
                config = config.client_ca_root(Certificate::from_pem(ca));
            }
            builder = builder.tls_config(config)?;
        }
        builder
            .add_routes(self.routes.routes())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }
}
