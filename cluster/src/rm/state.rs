//! The resource manager's model: applications, their containers, the nodes that hold them, and
//! the transitions every RPC shares (a container ends, is killed, gets an id).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use embedstream_proto::pb::{ApplicationState, ContainerState, Resources};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Role {
    Driver,
    Executor,
}

impl Role {
    /// As the wire says it (`ContainerLaunch.role`, `ContainerReport.role`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Driver => "driver",
            Role::Executor => "executor",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub app_id: String,
    pub role: Role,
    /// Empty until placed.
    pub node_id: String,
    pub vcores: u32,
    pub memory_mb: u64,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// A `ContainerState` number.
    pub state: i32,
    pub diagnostics: String,
    /// Sent to its node (a launch is sent once).
    pub launched: bool,
}

impl Container {
    pub(crate) fn state(&self) -> ContainerState {
        ContainerState::try_from(self.state).unwrap_or(ContainerState::Unspecified)
    }

    /// Placed or running: it holds capacity.
    pub(crate) fn alive(&self) -> bool {
        matches!(self.state(), ContainerState::Allocated | ContainerState::Running)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Application {
    pub id: String,
    pub name: String,
    pub job_spec_toml: String,
    /// An `ApplicationState` number.
    pub state: i32,
    pub diagnostics: String,
    pub driver_address: String,
    /// The driver's page URL, as its driver gave it (empty before, and in older state files).
    #[serde(default)]
    pub driver_page: String,
    pub driver_vcores: u32,
    pub driver_memory_mb: u64,
    pub executors_wanted: u32,
    pub executor_vcores: u32,
    pub executor_memory_mb: u64,
    pub executor_args: Vec<String>,
    pub driver_attempts: u32,
    /// Executor containers that ended, not yet told to the driver.
    pub completed: Vec<(String, i32, String)>,
    /// Executor containers placed, not yet told to the driver.
    pub allocated: Vec<String>,
    /// Issued at submit, given only to its driver container; `Allocate` must carry it. Empty
    /// for an application from a state file older than the secrets (its calls are not checked).
    #[serde(default)]
    pub secret: AppSecret,
}

/// An application's secret: never printed (its `Debug` says only whether it is set).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct AppSecret(pub String);

impl std::fmt::Debug for AppSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "AppSecret(none)" } else { "AppSecret(set)" })
    }
}

impl Application {
    pub(crate) fn state(&self) -> ApplicationState {
        ApplicationState::try_from(self.state).unwrap_or(ApplicationState::Unspecified)
    }

    pub(crate) fn ended(&self) -> bool {
        matches!(self.state(), ApplicationState::Finished | ApplicationState::Failed | ApplicationState::Killed)
    }
}

/// What survives an RM restart.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Persisted {
    pub(crate) next_app: u64,
    pub(crate) next_container: u64,
    pub(crate) applications: BTreeMap<String, Application>,
    pub(crate) containers: BTreeMap<String, Container>,
}

pub(crate) struct Node {
    pub(crate) capacity: Resources,
    pub(crate) last_heartbeat: Instant,
    /// Containers to kill, sent with the next heartbeat answer.
    pub(crate) kill: Vec<String>,
}

/// A node declared lost, listed (as YARN's `node -list -all` does) until it registers again.
pub(crate) struct LostNode {
    pub(crate) capacity: Resources,
    pub(crate) last_heartbeat: Instant,
}

pub(crate) struct State {
    pub(crate) p: Persisted,
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(crate) lost_nodes: BTreeMap<String, LostNode>,
    /// Containers placed nowhere yet, oldest first.
    pub(crate) queue: VecDeque<String>,
}

pub(crate) fn now_id() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Ends a container: frees its capacity and tells its application.
pub(crate) fn end_container(s: &mut State, id: &str, state: ContainerState, exit_code: i32, diagnostics: &str) {
    let Some(c) = s.p.containers.get_mut(id) else { return };
    if !c.alive() {
        return;
    }
    c.state = state as i32;
    c.diagnostics = diagnostics.to_string();
    let c = c.clone();
    s.queue.retain(|q| q != id);
    tracing::info!(container = id, app = %c.app_id, node = %c.node_id, ?state, exit_code, diagnostics, "container ended");
    let Some(app) = s.p.applications.get_mut(&c.app_id) else { return };
    match c.role {
        Role::Executor => app.completed.push((c.id.clone(), state as i32, diagnostics.to_string())),
        Role::Driver if !app.ended() => {
            let ok = state == ContainerState::Exited && exit_code == 0;
            app.state = if ok { ApplicationState::Finished } else { ApplicationState::Failed } as i32;
            if !ok {
                app.diagnostics = format!("driver container {id}: {state:?} (exit {exit_code}) {diagnostics}");
            }
        }
        Role::Driver => {}
    }
    if c.role == Role::Driver {
        // The application is over: its executors go too.
        for eid in alive_containers(&s.p, &c.app_id, Some(Role::Executor)) {
            kill_container(s, &eid, "the application's driver ended");
        }
    }
}

/// Ids of an application's containers that are placed or running, of one role or of any.
pub(crate) fn alive_containers(p: &Persisted, app_id: &str, role: Option<Role>) -> Vec<String> {
    p.containers
        .values()
        .filter(|c| c.app_id == app_id && c.alive() && role.is_none_or(|r| c.role == r))
        .map(|c| c.id.clone())
        .collect()
}

/// Asks the container's node to kill it (with its next heartbeat answer) and ends it.
pub(crate) fn kill_container(s: &mut State, id: &str, why: &str) {
    let node = s.p.containers.get(id).map(|c| c.node_id.clone()).unwrap_or_default();
    if let Some(n) = s.nodes.get_mut(&node) {
        n.kill.push(id.to_string());
    }
    end_container(s, id, ContainerState::Killed, 0, why);
}

/// Capacity (vcores, MiB) that placed or running containers hold on `node`.
pub(crate) fn used(p: &Persisted, node: &str) -> (u32, u64) {
    p.containers
        .values()
        .filter(|c| c.node_id == node && c.alive())
        .fold((0, 0), |(v, m), c| (v + c.vcores, m + c.memory_mb))
}

pub(crate) fn new_container_id(s: &mut State, app_id: &str) -> String {
    s.p.next_container += 1;
    format!("{app_id}-c{:04}", s.p.next_container)
}

/// Ended applications the RM keeps (their state, diagnostics and containers), as YARN's
/// `yarn.resourcemanager.max-completed-applications`; older ones are forgotten.
pub const MAX_COMPLETED_APPLICATIONS: usize = 1000;
/// Ended containers an application keeps listed once its driver has heard of them.
pub const MAX_ENDED_CONTAINERS_PER_APP: usize = 100;

/// Forgets the oldest ended applications beyond `keep_apps` (with their containers), and each
/// application's oldest ended containers beyond `keep_containers` once its driver was told,
/// so that the state and its file stay bounded over months. Returns how many entries went.
pub(crate) fn prune(p: &mut Persisted, keep_apps: usize, keep_containers: usize) -> usize {
    let holds_capacity = |p: &Persisted, app: &str| p.containers.values().any(|c| c.app_id == app && c.alive());
    // Ids sort by submission time (`app-<seconds>-<sequence>`), oldest first.
    let ended: Vec<String> =
        p.applications.values().filter(|a| a.ended() && !holds_capacity(p, &a.id)).map(|a| a.id.clone()).collect();
    let mut removed = 0;
    for id in &ended[..ended.len().saturating_sub(keep_apps)] {
        p.applications.remove(id);
        let before = p.containers.len();
        p.containers.retain(|_, c| &c.app_id != id);
        removed += 1 + before - p.containers.len();
    }
    for app in p.applications.values() {
        let told = |c: &&Container| !c.alive() && !app.completed.iter().any(|(id, _, _)| id == &c.id);
        let ended: Vec<String> =
            p.containers.values().filter(|c| c.app_id == app.id).filter(told).map(|c| c.id.clone()).collect();
        for id in &ended[..ended.len().saturating_sub(keep_containers)] {
            p.containers.remove(id);
            removed += 1;
        }
    }
    removed
}
