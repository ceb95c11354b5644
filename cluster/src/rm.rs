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

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use embedstream_proto::pb::resource_manager_server::ResourceManager;
use embedstream_proto::pb::{
    AllocateRequest, AllocateResponse, ApplicationReport, ApplicationState, ContainerLaunch, ContainerReport,
    ContainerState, ContainerStatus, KillApplicationRequest, KillApplicationResponse, ListApplicationsRequest,
    ListApplicationsResponse, ListNodesRequest, ListNodesResponse, NodeHeartbeatRequest, NodeHeartbeatResponse,
    NodeReport, RegisterNodeRequest, RegisterNodeResponse, Resources, SubmitApplicationRequest,
    SubmitApplicationResponse,
};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

/// The environment variable that hands a driver container its job spec.
pub const JOB_TOML_ENV: &str = "EMBEDSTREAM_JOB_TOML";

#[derive(Debug, thiserror::Error)]
pub enum RmError {
    #[error("state file {path}: {message}")]
    State { path: String, message: String },
    #[error("--listen {0}: drivers and node agents cannot reach {ip}; give --advertise HOST:PORT, the address they use", ip = .0.ip())]
    NoAdvertise(std::net::SocketAddr),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Role {
    Driver,
    Executor,
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
    fn state(&self) -> ContainerState {
        ContainerState::try_from(self.state).unwrap_or(ContainerState::Unspecified)
    }

    /// Placed or running: it holds capacity.
    fn alive(&self) -> bool {
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
}

impl Application {
    fn state(&self) -> ApplicationState {
        ApplicationState::try_from(self.state).unwrap_or(ApplicationState::Unspecified)
    }

    fn ended(&self) -> bool {
        matches!(self.state(), ApplicationState::Finished | ApplicationState::Failed | ApplicationState::Killed)
    }
}

/// What survives an RM restart.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    next_app: u64,
    next_container: u64,
    applications: BTreeMap<String, Application>,
    containers: BTreeMap<String, Container>,
}

struct Node {
    capacity: Resources,
    last_heartbeat: Instant,
    /// Containers to kill, sent with the next heartbeat answer.
    kill: Vec<String>,
}

/// A node declared lost, listed (as YARN's `node -list -all` does) until it registers again.
struct LostNode {
    capacity: Resources,
    last_heartbeat: Instant,
}

struct State {
    p: Persisted,
    nodes: BTreeMap<String, Node>,
    lost_nodes: BTreeMap<String, LostNode>,
    /// Containers placed nowhere yet, oldest first.
    queue: VecDeque<String>,
}

pub struct ResourceManagerService {
    state: Mutex<State>,
    state_file: PathBuf,
    /// How RM's own address appears to the drivers it starts.
    advertise: String,
    node_timeout: Duration,
    started: Instant,
    /// What the state file holds, to skip writes that would change nothing.
    saved: Mutex<Vec<u8>>,
}

impl ResourceManagerService {
    /// Loads the state file if there is one (an RM restart).
    pub fn open(state_file: PathBuf, advertise: String, node_timeout: Duration) -> Result<Arc<Self>, RmError> {
        let err = |message: String| RmError::State { path: state_file.display().to_string(), message };
        let p: Persisted = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(err(e.to_string())),
        };
        let queue = p.containers.values().filter(|c| c.alive() && c.node_id.is_empty()).map(|c| c.id.clone()).collect();
        let running = p.applications.values().filter(|a| !a.ended()).count();
        tracing::info!(applications = p.applications.len(), running, "resource manager state loaded");
        Ok(Arc::new(ResourceManagerService {
            state: Mutex::new(State { p, nodes: BTreeMap::new(), lost_nodes: BTreeMap::new(), queue }),
            state_file,
            advertise,
            node_timeout,
            started: Instant::now(),
            saved: Mutex::new(Vec::new()),
        }))
    }

    /// Writes the state file when the state changed (every driver's `Allocate`, once a second,
    /// usually changes nothing): to a temporary file, synced, renamed over the old one, and the
    /// directory synced, so a power loss leaves the old state or the new one, never a torn file.
    fn save(&self, p: &Persisted) {
        let bytes = serde_json::to_vec_pretty(p).expect("state serialises");
        let mut saved = self.saved.lock().unwrap();
        if *saved == bytes {
            return;
        }
        match embedstream_proto::durable::write_atomic(&self.state_file, &bytes) {
            Ok(()) => *saved = bytes,
            Err(e) => tracing::error!(path = %self.state_file.display(), error = %e, "cannot write the state file"),
        }
    }

    /// Declares nodes lost after `node_timeout` without a heartbeat; runs until the process ends.
    pub async fn watch_nodes(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(Duration::from_millis(250));
        loop {
            ticks.tick().await;
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
            if changed {
                schedule(&mut s);
                self.save(&s.p);
            }
        }
    }
}

fn now_id() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Ends a container: frees its capacity and tells its application.
fn end_container(s: &mut State, id: &str, state: ContainerState, exit_code: i32, diagnostics: &str) {
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
fn alive_containers(p: &Persisted, app_id: &str, role: Option<Role>) -> Vec<String> {
    p.containers
        .values()
        .filter(|c| c.app_id == app_id && c.alive() && role.is_none_or(|r| c.role == r))
        .map(|c| c.id.clone())
        .collect()
}

/// Asks the container's node to kill it (with its next heartbeat answer) and ends it.
fn kill_container(s: &mut State, id: &str, why: &str) {
    let node = s.p.containers.get(id).map(|c| c.node_id.clone()).unwrap_or_default();
    if let Some(n) = s.nodes.get_mut(&node) {
        n.kill.push(id.to_string());
    }
    end_container(s, id, ContainerState::Killed, 0, why);
}

/// Executor containers to add so that each running application has what it wants, then places
/// every queued container that fits somewhere.
fn schedule(s: &mut State) {
    let apps: Vec<Application> =
        s.p.applications.values().filter(|a| a.state() == ApplicationState::Running).cloned().collect();
    for app in apps {
        let alive = alive_containers(&s.p, &app.id, Some(Role::Executor)).len() as u32;
        for _ in alive..app.executors_wanted {
            let id = new_container_id(s, &app.id);
            let c = Container {
                id: id.clone(),
                app_id: app.id.clone(),
                role: Role::Executor,
                node_id: String::new(),
                vcores: app.executor_vcores,
                memory_mb: app.executor_memory_mb,
                args: app.executor_args.clone(),
                env: BTreeMap::new(),
                state: ContainerState::Allocated as i32,
                diagnostics: String::new(),
                launched: false,
            };
            s.p.containers.insert(id.clone(), c);
            s.queue.push_back(id);
        }
    }
    let queued: Vec<String> = s.queue.drain(..).collect();
    for id in queued {
        let (vcores, memory) = {
            let c = &s.p.containers[&id];
            (c.vcores, c.memory_mb)
        };
        // Spread: the node with the most free vcores (then memory) that fits.
        let best = s
            .nodes
            .iter()
            .map(|(nid, n)| {
                let (used_v, used_m) = used(&s.p, nid);
                (nid.clone(), n.capacity.vcores.saturating_sub(used_v), n.capacity.memory_mb.saturating_sub(used_m))
            })
            .filter(|(_, free_v, free_m)| *free_v >= vcores && *free_m >= memory)
            .max_by_key(|(nid, free_v, free_m)| (*free_v, *free_m, std::cmp::Reverse(nid.clone())));
        match best {
            Some((node, _, _)) => {
                let c = s.p.containers.get_mut(&id).expect("queued containers exist");
                c.node_id = node.clone();
                tracing::info!(container = %id, app = %c.app_id, role = ?c.role, node = %node, "container placed");
                if c.role == Role::Executor {
                    let app_id = c.app_id.clone();
                    if let Some(app) = s.p.applications.get_mut(&app_id) {
                        app.allocated.push(id.clone());
                    }
                }
            }
            None => s.queue.push_back(id),
        }
    }
}

fn used(p: &Persisted, node: &str) -> (u32, u64) {
    p.containers
        .values()
        .filter(|c| c.node_id == node && c.alive())
        .fold((0, 0), |(v, m), c| (v + c.vcores, m + c.memory_mb))
}

fn new_container_id(s: &mut State, app_id: &str) -> String {
    s.p.next_container += 1;
    format!("{app_id}-c{:04}", s.p.next_container)
}

fn launch_of(c: &Container) -> ContainerLaunch {
    ContainerLaunch {
        container_id: c.id.clone(),
        app_id: c.app_id.clone(),
        args: c.args.clone(),
        env: c.env.clone().into_iter().collect(),
        resources: Some(Resources { vcores: c.vcores, memory_mb: c.memory_mb }),
    }
}

fn report_of(c: &Container) -> ContainerReport {
    ContainerReport {
        container_id: c.id.clone(),
        node_id: c.node_id.clone(),
        role: match c.role {
            Role::Driver => "driver",
            Role::Executor => "executor",
        }
        .into(),
        state: c.state,
        resources: Some(Resources { vcores: c.vcores, memory_mb: c.memory_mb }),
        diagnostics: c.diagnostics.clone(),
    }
}

#[tonic::async_trait]
impl ResourceManager for ResourceManagerService {
    async fn register_node(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        let r = request.into_inner();
        let capacity = r.capacity.ok_or_else(|| Status::invalid_argument("capacity is required"))?;
        if r.node_id.is_empty() || capacity.vcores == 0 || capacity.memory_mb == 0 {
            return Err(Status::invalid_argument("a node needs an id, vcores and memory"));
        }
        let mut s = self.state.lock().unwrap();
        tracing::info!(node = %r.node_id, vcores = capacity.vcores, memory_mb = capacity.memory_mb, running = r.running.len(), "node registered");
        s.lost_nodes.remove(&r.node_id);
        s.nodes.insert(r.node_id.clone(), Node { capacity, last_heartbeat: Instant::now(), kill: Vec::new() });
        // After an RM restart: containers the node still runs are adopted; those it does not
        // know were lost with it, and those unknown to the RM are killed.
        let running: Vec<&str> = r.running.iter().map(|c| c.container_id.as_str()).collect();
        let ours: Vec<String> =
            s.p.containers.values().filter(|c| c.node_id == r.node_id && c.alive()).map(|c| c.id.clone()).collect();
        for id in &ours {
            if !running.contains(&id.as_str()) && s.p.containers[id].launched {
                end_container(&mut s, id, ContainerState::Lost, 0, "its node came back without it");
            }
        }
        for id in running {
            match s.p.containers.get(id) {
                Some(c) if c.alive() => {}
                _ => s.nodes.get_mut(&r.node_id).expect("inserted").kill.push(id.to_string()),
            }
        }
        schedule(&mut s);
        self.save(&s.p);
        Ok(Response::new(RegisterNodeResponse {}))
    }

    async fn node_heartbeat(
        &self,
        request: Request<NodeHeartbeatRequest>,
    ) -> Result<Response<NodeHeartbeatResponse>, Status> {
        let r = request.into_inner();
        let mut s = self.state.lock().unwrap();
        let Some(node) = s.nodes.get_mut(&r.node_id) else {
            return Ok(Response::new(NodeHeartbeatResponse { known: false, ..Default::default() }));
        };
        node.last_heartbeat = Instant::now();
        let mut kill = std::mem::take(&mut node.kill);
        let mut changed = false;
        // A node lists every container it runs, and those that ended until an answer reaches
        // it, and starts what it is told before its next heartbeat: a container launched here
        // that it does not list never reached it (the answer was lost). Send it again.
        let reported: Vec<&str> = r.containers.iter().map(|c| c.container_id.as_str()).collect();
        for c in s.p.containers.values_mut() {
            if c.node_id == r.node_id && c.alive() && c.launched && !reported.contains(&c.id.as_str()) {
                tracing::warn!(container = %c.id, node = %r.node_id, "the node never got this container; launching it again");
                c.launched = false;
            }
        }
        for status in r.containers {
            let state = ContainerState::try_from(status.state).unwrap_or(ContainerState::Unspecified);
            let known = s.p.containers.get(&status.container_id).map(|c| (c.alive(), c.state()));
            match (state, known) {
                (ContainerState::Running, Some((true, ContainerState::Allocated))) => {
                    s.p.containers.get_mut(&status.container_id).expect("known").state = ContainerState::Running as i32;
                    changed = true;
                }
                (ContainerState::Running, Some((true, _))) => {}
                // Running here but over (released, killed, lost) for the RM: kill it.
                (ContainerState::Running, _) => kill.push(status.container_id.clone()),
                (_, Some((true, _))) => {
                    end_container(&mut s, &status.container_id, state, status.exit_code, &status.diagnostics);
                    changed = true;
                }
                _ => {}
            }
        }
        schedule(&mut s);
        let launch: Vec<ContainerLaunch> =
            s.p.containers
                .values_mut()
                .filter(|c| c.node_id == r.node_id && c.alive() && !c.launched)
                .map(|c| {
                    c.launched = true;
                    launch_of(c)
                })
                .collect();
        if changed || !launch.is_empty() {
            self.save(&s.p);
        }
        kill.sort();
        kill.dedup();
        Ok(Response::new(NodeHeartbeatResponse { known: true, launch, kill }))
    }

    async fn submit_application(
        &self,
        request: Request<SubmitApplicationRequest>,
    ) -> Result<Response<SubmitApplicationResponse>, Status> {
        let r = request.into_inner();
        // Refuse a bad job before anything starts, naming the key.
        let spec = embedstream_proto::JobSpec::from_toml(&r.job_spec_toml)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let driver = r.driver_resources.unwrap_or(Resources { vcores: 1, memory_mb: 1024 });
        let mut s = self.state.lock().unwrap();
        // A container no node could ever hold would wait forever: refuse it now, as YARN does
        // a request over its maximum allocation (while no node has registered, nothing is known).
        let largest = s.nodes.values().map(|n| n.capacity).max_by_key(|c| (c.vcores, c.memory_mb));
        if let Some(largest) = largest {
            let executor = Resources { vcores: spec.executors.cores, memory_mb: spec.executors.memory_mb() };
            for (what, need) in [
                ("the driver (--driver-cores, --driver-memory)", driver),
                ("an executor (executors.cores, executors.memory)", executor),
            ] {
                if !s.nodes.values().any(|n| n.capacity.vcores >= need.vcores && n.capacity.memory_mb >= need.memory_mb)
                {
                    return Err(Status::invalid_argument(format!(
                        "{what} needs {} vcores and {} MiB; no node has that much (the largest offers {} vcores and {} MiB)",
                        need.vcores, need.memory_mb, largest.vcores, largest.memory_mb
                    )));
                }
            }
        }
        s.p.next_app += 1;
        let id = format!("app-{}-{:04}", now_id(), s.p.next_app);
        let app = Application {
            id: id.clone(),
            name: if r.name.is_empty() { spec.name.clone() } else { r.name },
            job_spec_toml: r.job_spec_toml.clone(),
            state: ApplicationState::Submitted as i32,
            diagnostics: String::new(),
            driver_address: String::new(),
            driver_vcores: driver.vcores.max(1),
            driver_memory_mb: driver.memory_mb.max(1),
            executors_wanted: 0,
            executor_vcores: spec.executors.cores,
            executor_memory_mb: spec.executors.memory_mb(),
            executor_args: Vec::new(),
            driver_attempts: 1,
            completed: Vec::new(),
            allocated: Vec::new(),
        };
        let cid = new_container_id(&mut s, &id);
        let container = Container {
            id: cid.clone(),
            app_id: id.clone(),
            role: Role::Driver,
            node_id: String::new(),
            vcores: app.driver_vcores,
            memory_mb: app.driver_memory_mb,
            args: ["driver", "--rm", &self.advertise, "--app-id", &id, "--listen", "{host}:0"]
                .iter()
                .map(|a| a.to_string())
                .collect(),
            env: BTreeMap::from([(JOB_TOML_ENV.to_string(), r.job_spec_toml)]),
            state: ContainerState::Allocated as i32,
            diagnostics: String::new(),
            launched: false,
        };
        tracing::info!(app = %id, name = %app.name, "application submitted");
        s.p.applications.insert(id.clone(), app);
        s.p.containers.insert(cid.clone(), container);
        s.queue.push_back(cid);
        schedule(&mut s);
        self.save(&s.p);
        Ok(Response::new(SubmitApplicationResponse { app_id: id }))
    }

    async fn allocate(&self, request: Request<AllocateRequest>) -> Result<Response<AllocateResponse>, Status> {
        let r = request.into_inner();
        let mut s = self.state.lock().unwrap();
        let Some(app) = s.p.applications.get_mut(&r.app_id) else {
            return Err(Status::not_found(format!("no application {}", r.app_id)));
        };
        let state = ApplicationState::try_from(r.state).unwrap_or(ApplicationState::Running);
        if app.ended() {
            return Err(Status::failed_precondition(format!(
                "application {} is over ({:?}) {}",
                r.app_id,
                app.state(),
                app.diagnostics
            )));
        }
        if app.state() == ApplicationState::Submitted {
            tracing::info!(app = %r.app_id, driver = %r.driver_address, "application running");
        }
        app.state = match state {
            ApplicationState::Finished | ApplicationState::Failed => state as i32,
            _ => ApplicationState::Running as i32,
        };
        if !r.diagnostics.is_empty() {
            app.diagnostics = r.diagnostics.clone();
        }
        app.driver_address = r.driver_address;
        app.executors_wanted = r.executors_wanted;
        if let Some(res) = r.executor_resources {
            app.executor_vcores = res.vcores.max(1);
            app.executor_memory_mb = res.memory_mb.max(1);
        }
        app.executor_args = r.executor_args;
        let completed: Vec<ContainerStatus> = std::mem::take(&mut app.completed)
            .into_iter()
            .map(|(container_id, state, diagnostics)| ContainerStatus {
                container_id,
                state,
                exit_code: 0,
                diagnostics,
            })
            .collect();
        let allocated: Vec<ContainerReport> = std::mem::take(&mut app.allocated)
            .into_iter()
            .filter_map(|id| s.p.containers.get(&id).map(report_of))
            .collect();
        let app_id = r.app_id.clone();
        let ended = s.p.applications[&app_id].ended();
        // Release the executors the driver gave back, and all of them once it is done. Their
        // ends come back to the driver as KILLED with its next call.
        let executors = alive_containers(&s.p, &app_id, Some(Role::Executor));
        let release =
            if ended { executors } else { r.release.into_iter().filter(|id| executors.contains(id)).collect() };
        for id in release {
            kill_container(&mut s, &id, "released by the driver");
        }
        schedule(&mut s);
        self.save(&s.p);
        Ok(Response::new(AllocateResponse { allocated, completed }))
    }

    async fn list_nodes(&self, _: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        let s = self.state.lock().unwrap();
        let lost = s.lost_nodes.iter().map(|(id, n)| NodeReport {
            node_id: id.clone(),
            capacity: Some(n.capacity),
            used: Some(Resources::default()),
            lost: true,
            last_heartbeat_ms_ago: n.last_heartbeat.elapsed().as_millis() as u64,
            containers: Vec::new(),
        });
        let nodes = s
            .nodes
            .iter()
            .map(|(id, n)| {
                let (v, m) = used(&s.p, id);
                NodeReport {
                    node_id: id.clone(),
                    capacity: Some(n.capacity),
                    used: Some(Resources { vcores: v, memory_mb: m }),
                    lost: false,
                    last_heartbeat_ms_ago: n.last_heartbeat.elapsed().as_millis() as u64,
                    containers: s
                        .p
                        .containers
                        .values()
                        .filter(|c| c.node_id == *id && c.alive())
                        .map(|c| c.id.clone())
                        .collect(),
                }
            })
            .chain(lost)
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn list_applications(
        &self,
        _: Request<ListApplicationsRequest>,
    ) -> Result<Response<ListApplicationsResponse>, Status> {
        let s = self.state.lock().unwrap();
        let applications =
            s.p.applications
                .values()
                .map(|a| ApplicationReport {
                    app_id: a.id.clone(),
                    name: a.name.clone(),
                    state: a.state,
                    driver_address: a.driver_address.clone(),
                    diagnostics: a.diagnostics.clone(),
                    containers: s.p.containers.values().filter(|c| c.app_id == a.id).map(report_of).collect(),
                    driver_attempts: a.driver_attempts,
                })
                .collect();
        Ok(Response::new(ListApplicationsResponse { applications }))
    }

    async fn kill_application(
        &self,
        request: Request<KillApplicationRequest>,
    ) -> Result<Response<KillApplicationResponse>, Status> {
        let id = request.into_inner().app_id;
        let mut s = self.state.lock().unwrap();
        let Some(app) = s.p.applications.get_mut(&id) else {
            return Err(Status::not_found(format!("no application {id}")));
        };
        if !app.ended() {
            app.state = ApplicationState::Killed as i32;
            app.diagnostics = "killed through the admin API".into();
        }
        for cid in alive_containers(&s.p, &id, None) {
            kill_container(&mut s, &cid, "application killed");
        }
        tracing::info!(app = %id, "application killed");
        self.save(&s.p);
        Ok(Response::new(KillApplicationResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const NODE: &str = "127.0.0.2:8040";

    /// A job spec that validates: its model files exist (empty) in `dir`.
    fn job(dir: &Path) -> String {
        for f in ["model.onnx", "tokenizer.json"] {
            std::fs::write(dir.join(f), b"{}").unwrap();
        }
        format!(
            "name = \"q\"\ncheckpoint_location = \"{d}/cp\"\n[source]\nbootstrap_servers = \"127.0.0.1:9092\"\n\
             subscribe = [\"in\"]\n[model]\nonnx = \"{d}/model.onnx\"\ntokenizer = \"{d}/tokenizer.json\"\n\
             [sink]\nkind = \"kafka\"\ntopic = \"out\"\n",
            d = dir.display()
        )
    }

    fn heartbeat(containers: Vec<ContainerStatus>) -> Request<NodeHeartbeatRequest> {
        Request::new(NodeHeartbeatRequest { node_id: NODE.into(), containers })
    }

    #[tokio::test]
    async fn a_launch_the_node_never_got_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("rm-state.json");
        let rm = ResourceManagerService::open(state.clone(), "127.0.0.1:8030".into(), Duration::from_secs(60)).unwrap();
        let capacity = Some(Resources { vcores: 2, memory_mb: 4096 });
        let node = RegisterNodeRequest { node_id: NODE.into(), capacity, running: Vec::new() };
        rm.register_node(Request::new(node)).await.unwrap();
        let submit =
            SubmitApplicationRequest { name: "q".into(), job_spec_toml: job(dir.path()), driver_resources: None };
        rm.submit_application(Request::new(submit)).await.unwrap();

        let first = rm.node_heartbeat(heartbeat(Vec::new())).await.unwrap().into_inner();
        assert_eq!(first.launch.len(), 1, "the driver's container goes to the only node");
        let driver = first.launch[0].container_id.clone();
        // That answer never reached the node: its next heartbeat does not list the container.
        let again = rm.node_heartbeat(heartbeat(Vec::new())).await.unwrap().into_inner();
        let ids: Vec<&str> = again.launch.iter().map(|l| l.container_id.as_str()).collect();
        assert_eq!(ids, [driver.as_str()], "the launch is sent again");
        // Once the node runs it, it is not sent a third time, and the state file says so.
        let running = ContainerStatus {
            container_id: driver.clone(),
            state: ContainerState::Running as i32,
            ..Default::default()
        };
        let third = rm.node_heartbeat(heartbeat(vec![running])).await.unwrap().into_inner();
        assert!(third.launch.is_empty(), "{third:?}");
        let saved: Persisted = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        assert_eq!(saved.containers[&driver].state(), ContainerState::Running);
    }

    #[tokio::test]
    async fn a_container_bigger_than_every_node_is_refused_at_submit() {
        let dir = tempfile::tempdir().unwrap();
        let rm =
            ResourceManagerService::open(dir.path().join("s.json"), "127.0.0.1:8030".into(), Duration::from_secs(60))
                .unwrap();
        let capacity = Some(Resources { vcores: 2, memory_mb: 2048 });
        let node = RegisterNodeRequest { node_id: NODE.into(), capacity, running: Vec::new() };
        rm.register_node(Request::new(node)).await.unwrap();
        let submit = |toml: String, memory_mb| SubmitApplicationRequest {
            name: "q".into(),
            job_spec_toml: toml,
            driver_resources: Some(Resources { vcores: 1, memory_mb }),
        };
        let e = rm.submit_application(Request::new(submit(job(dir.path()), 4096))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("--driver-memory") && e.message().contains("2048 MiB"), "{}", e.message());
        let big_executors = format!("{}[executors]\nmemory = \"3g\"\n", job(dir.path()));
        let e = rm.submit_application(Request::new(submit(big_executors, 1024))).await.unwrap_err();
        assert!(e.message().contains("executors.memory") && e.message().contains("3072 MiB"), "{}", e.message());
        rm.submit_application(Request::new(submit(job(dir.path()), 1024))).await.expect("what fits is accepted");
    }
}
