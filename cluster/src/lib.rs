//! Cluster mode, YARN-like: [`rm`] is the resource manager (nodes, applications, containers,
//! placement, its state file), [`node`] the node agent that runs containers on a machine.
//! The driver's side (asking for executor containers) is `embedstream_driver::cluster`.

pub mod node;
pub mod rm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use embedstream_core::auth::ClusterToken;
use embedstream_core::tls::Tls;
use embedstream_proto::pb::resource_manager_server::ResourceManagerServer;
use embedstream_proto::serve::GrpcServer;
use tokio::sync::watch;

pub struct RmArgs {
    pub listen: SocketAddr,
    /// host:port drivers and node agents use to reach the RM; default the listen address.
    pub advertise: Option<String>,
    pub state_file: PathBuf,
    pub node_timeout: Duration,
    pub token: ClusterToken,
    /// Its certificate (it serves TLS with one; node agents and drivers must then call over TLS).
    pub tls: Tls,
    /// Where to serve the cluster's page ([`rm::page`]), over the same TLS and token.
    pub web_listen: SocketAddr,
}

/// Serves the resource manager until `stop` turns true.
pub async fn run_resource_manager(args: RmArgs, mut stop: watch::Receiver<bool>) -> Result<(), rm::RmError> {
    if args.listen.ip().is_unspecified() && args.advertise.is_none() {
        return Err(rm::RmError::NoAdvertise(args.listen));
    }
    if !args.listen.ip().is_loopback() && !args.token.is_set() {
        return Err(rm::RmError::NoToken(args.listen));
    }
    let listen_err = |e: std::io::Error| rm::RmError::State { path: args.listen.to_string(), message: e.to_string() };
    let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(listen_err)?;
    let address = listener.local_addr().map_err(listen_err)?;
    let advertise = args.advertise.clone().unwrap_or_else(|| address.to_string());
    let service = rm::ResourceManagerService::open(args.state_file.clone(), advertise.clone(), args.node_timeout)?;
    let watcher = tokio::spawn(Arc::clone(&service).watch_nodes());
    // The page's sign-in takes the cluster token: never in clear where others can listen.
    if !args.web_listen.ip().is_loopback() && args.token.is_set() && !args.tls.serves_tls() {
        return Err(rm::RmError::PageInClear(args.web_listen));
    }
    let page = rm::page::router(service.clone(), args.token.clone(), args.tls.serves_tls());
    let web = embedstream_core::telemetry::serve_router(&args.web_listen.to_string(), &args.tls, page)
        .await
        .map_err(|source| rm::RmError::Web { listen: args.web_listen, source })?;
    let scheme = if args.tls.serves_tls() { "https" } else { "http" };
    if !args.listen.ip().is_loopback() && !args.tls.serves_tls() {
        tracing::warn!(
            "no TLS (--tls-cert, --tls-key, --tls-ca) on a reachable address: the cluster token and the job specs travel in clear"
        );
    }
    if !args.token.is_set() {
        tracing::warn!(
            "no cluster token (EMBEDSTREAM_TOKEN or --token-file): any local user who reaches this port can launch processes"
        );
    }
    tracing::info!(
        %address, %advertise, state = %args.state_file.display(), tls = args.tls.serves_tls(),
        mutual_tls = args.tls.client_auth(), page = %format!("{scheme}://{web}/"), "resource manager listening"
    );
    let result = GrpcServer::new(args.token, args.tls)
        .guarded(ResourceManagerServer::from_arc(service))
        .serve(listener, async move {
            let _ = stop.wait_for(|&s| s).await;
        })
        .await;
    watcher.abort();
    result.map_err(|e| rm::RmError::State { path: address.to_string(), message: e.to_string() })
}
