//! Executors as containers from the resource manager: the driver is the application's master.
//!
//! Every reconcile (once a second) is one `Allocate` call: how many executor containers the
//! query wants and which it releases. The RM places new containers on node agents with free
//! capacity and answers with this application's containers that ended: exited, killed for their
//! memory, or lost with their node. Those executors are marked lost by the reconciler, their
//! tasks are retried, and since fewer are alive than wanted the RM places replacements. An RM
//! that does not answer (it restarts) costs nothing but a warning: the query runs on with the
//! executors it has. An RM that answers that the application is over (killed, or failed) stops
//! the query.

use std::time::Duration;

use embedstream_core::auth::ClusterToken;
use embedstream_proto::pb::resource_manager_client::ResourceManagerClient;
use embedstream_proto::pb::{AllocateRequest, ApplicationState, ContainerState, Resources};
use embedstream_proto::serve::Caller;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{Ended, LaunchError, Launcher};

pub type RmClient = ResourceManagerClient<InterceptedService<Channel, ClusterToken>>;

/// A client for the RM at `address` (host:port, or a URL whose scheme the caller's TLS
/// decides), carrying the caller's token.
pub fn rm_client(address: &str, caller: &Caller) -> Result<RmClient, LaunchError> {
    let url = caller.tls.url(address);
    let channel = caller
        .endpoint(address)
        .map_err(|e| LaunchError::ResourceManager { url: url.clone(), message: e.to_string() })?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    Ok(ResourceManagerClient::with_interceptor(channel, caller.token.clone()))
}

pub struct ResourceManagerLauncher {
    pub rm: RmClient,
    pub rm_address: String,
    pub app_id: String,
    /// The driver's host:port, as executors reach it.
    pub driver_address: String,
    /// The driver's page, which the RM's page links to.
    pub driver_page: String,
    /// What each executor container needs; the RM runs `executor` with `vcores` cores in it.
    pub executor_resources: Resources,
    /// The application's secret, issued by the RM at submit; every `Allocate` carries it.
    pub app_secret: AppSecret,
}

/// An application's secret as its driver holds it: never printed.
#[derive(Clone, Default)]
pub struct AppSecret(pub String);

impl std::fmt::Debug for AppSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppSecret(..)")
    }
}

impl ResourceManagerLauncher {
    fn request(&self, wanted: u32, release: &[String], state: ApplicationState, diagnostics: &str) -> AllocateRequest {
        AllocateRequest {
            app_id: self.app_id.clone(),
            driver_address: self.driver_address.clone(),
            executors_wanted: wanted,
            executor_resources: Some(self.executor_resources),
            release: release.to_vec(),
            state: state as i32,
            diagnostics: diagnostics.into(),
            app_secret: self.app_secret.0.clone(),
            driver_page: self.driver_page.clone(),
        }
    }
}

#[tonic::async_trait]
impl Launcher for ResourceManagerLauncher {
    async fn reconcile(&mut self, target: u32, release: &[String]) -> Result<Vec<Ended>, LaunchError> {
        let request = self.request(target, release, ApplicationState::Running, "");
        let answer = match self.rm.allocate(request).await {
            Ok(a) => a.into_inner(),
            // The RM has ended this application (killed, or failed while it could not reach
            // this driver): the query must stop, not run on without it.
            Err(status) if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound) => {
                return Err(LaunchError::ResourceManager {
                    url: self.rm_address.clone(),
                    message: status.message().into(),
                });
            }
            Err(status) => {
                tracing::warn!(rm = %self.rm_address, error = %status.message(), "resource manager unreachable; carrying on");
                return Ok(Vec::new());
            }
        };
        for c in &answer.allocated {
            tracing::info!(container = %c.container_id, node = %c.node_id, "executor container placed");
        }
        Ok(answer
            .completed
            .into_iter()
            .map(|c| {
                let state = ContainerState::try_from(c.state).unwrap_or(ContainerState::Unspecified);
                Ended {
                    id: c.container_id,
                    why: format!("container {}: {}", state.as_str_name(), c.diagnostics),
                    over_memory: state == ContainerState::KilledMemory,
                }
            })
            .collect())
    }

    async fn stop(&mut self, _grace: Duration) {
        // The executors were told to shut down; releasing them all lets their node agents reap them.
        let request = self.request(0, &[], ApplicationState::Running, "");
        let _ = self.rm.allocate(request).await;
    }

    async fn finish(&mut self, ok: bool, diagnostics: &str) {
        let state = if ok { ApplicationState::Finished } else { ApplicationState::Failed };
        if let Err(e) = self.rm.allocate(self.request(0, &[], state, diagnostics)).await {
            tracing::warn!(error = %e.message(), "could not report the application's end to the resource manager");
        }
    }
}
