//! The resource manager: nodes and their capacity, applications and their containers, and
//! where each container runs.
//!
//! - Node agents register and heartbeat; a heartbeat's answer carries the containers to start
//!   and to kill on that node. A node silent for `node_timeout` is lost: its containers are
//!   reported LOST to their applications.
//! - `SubmitApplication` queues a driver container; the driver's `Allocate` calls say how many
//!   executor containers it wants, which it releases, and when it is done. Containers are placed
//!   on the node with the most free vcores that fits them (spread across nodes).
//! - Applications and containers are kept in a state file, rewritten after every change, so a
//!   restarted RM knows the running queries; nodes register again with what they run.
//!
//! [`state`] is the model and its transitions, [`placement`] where containers go, [`persist`]
//! the state file, [`service`] the gRPC service, [`page`] the cluster's web page; this module holds the service's state and the
//! watch that declares silent nodes lost.

pub mod page;
mod persist;
mod placement;
mod service;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embedstream_proto::pb::ContainerState;

pub use state::{Application, Container, Role};

use persist::StateFile;
use placement::schedule;
use state::{end_container, LostNode, State};

/// The environment variable that hands a driver container its job spec.
pub const JOB_TOML_ENV: &str = "EMBEDSTREAM_JOB_TOML";

#[derive(Debug, thiserror::Error)]
pub enum RmError {
    #[error("state file {path}: {message}")]
    State { path: String, message: String },
    #[error("--listen {0}: drivers and node agents cannot reach {ip}; give --advertise HOST:PORT, the address they use", ip = .0.ip())]
    NoAdvertise(std::net::SocketAddr),
    #[error(
        "--listen {0}: a resource manager others can reach needs a cluster token (EMBEDSTREAM_TOKEN \
         or --token-file), or anyone who reaches it could run processes on every node; without one it \
         listens on loopback only"
    )]
    NoToken(std::net::SocketAddr),
    #[error(
        "--web-listen {0}: the cluster's page signs in with the cluster token, which would travel in \
         clear to an address others reach: serve it over TLS (--tls-cert, --tls-key) or on loopback"
    )]
    PageInClear(std::net::SocketAddr),
    #[error("--web-listen {listen}: cannot serve the cluster's page: {source}")]
    Web { listen: std::net::SocketAddr, source: std::io::Error },
}

pub struct ResourceManagerService {
    pub(crate) state: Mutex<State>,
    state_file: StateFile,
    /// How RM's own address appears to the drivers it starts.
    pub(crate) advertise: String,
    node_timeout: Duration,
    pub(crate) started: Instant,
}

impl ResourceManagerService {
    /// Loads the state file if there is one (an RM restart).
    pub fn open(state_file: PathBuf, advertise: String, node_timeout: Duration) -> Result<Arc<Self>, RmError> {
        let state_file = StateFile::new(state_file);
        let p = state_file.load()?;
        let queue = p.containers.values().filter(|c| c.alive() && c.node_id.is_empty()).map(|c| c.id.clone()).collect();
        let running = p.applications.values().filter(|a| !a.ended()).count();
        tracing::info!(applications = p.applications.len(), running, "resource manager state loaded");
        Ok(Arc::new(ResourceManagerService {
            state: Mutex::new(State { p, nodes: BTreeMap::new(), lost_nodes: BTreeMap::new(), queue }),
            state_file,
            advertise,
            node_timeout,
            started: Instant::now(),
        }))
    }

    /// The state to write, taken under the state's lock; [`Self::persist`] it once the lock is let go.
    pub(crate) fn snapshot(&self, p: &state::Persisted) -> persist::Snapshot {
        self.state_file.snapshot(p)
    }

    /// Writes the state file if `snapshot` changed it, off the async threads.
    pub(crate) async fn persist(&self, snapshot: persist::Snapshot) {
        self.state_file.persist(snapshot).await
    }

    /// Declares nodes lost after `node_timeout` without a heartbeat; runs until the process ends.
    pub async fn watch_nodes(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(Duration::from_millis(250));
        loop {
            ticks.tick().await;
            let snapshot = {
                let mut s = self.state.lock().unwrap();
                let lost: Vec<String> = s
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.last_heartbeat.elapsed() > self.node_timeout)
                    .map(|(id, _)| id.clone())
                    .collect();
                for node in &lost {
                    tracing::warn!(node = %node, timeout = ?self.node_timeout, "node lost: no heartbeat");
                    if let Some(n) = s.nodes.remove(node) {
                        s.lost_nodes
                            .insert(node.clone(), LostNode { capacity: n.capacity, last_heartbeat: n.last_heartbeat });
                    }
                }
                let mut changed = !lost.is_empty();
                changed |=
                    state::prune(&mut s.p, state::MAX_COMPLETED_APPLICATIONS, state::MAX_ENDED_CONTAINERS_PER_APP) > 0;
                // After an RM restart, nodes get two timeouts to register again with what they run.
                let restart_grace_over = self.started.elapsed() > self.node_timeout * 2;
                let orphaned: Vec<String> =
                    s.p.containers
                        .values()
                        .filter(|c| c.alive() && !c.node_id.is_empty() && !s.nodes.contains_key(&c.node_id))
                        .filter(|c| lost.contains(&c.node_id) || restart_grace_over)
                        .map(|c| c.id.clone())
                        .collect();
                for id in orphaned {
                    let node = s.p.containers[&id].node_id.clone();
                    end_container(&mut s, &id, ContainerState::Lost, 0, &format!("node {node} lost"));
                    changed = true;
                }
                changed.then(|| {
                    schedule(&mut s);
                    self.snapshot(&s.p)
                })
            };
            if let Some(snapshot) = snapshot {
                self.persist(snapshot).await;
            }
        }
    }
}
