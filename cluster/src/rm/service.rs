//! The `ResourceManager` gRPC service: node registration and heartbeats, submission, the
//! drivers' `Allocate`, listings and kills, each a transition of the state under one lock.

use std::collections::BTreeMap;
use std::time::Instant;

use embedstream_proto::pb::resource_manager_server::ResourceManager;
use embedstream_proto::pb::{
    AllocateRequest, AllocateResponse, ApplicationReport, ApplicationState, ContainerLaunch, ContainerReport,
    ContainerState, ContainerStatus, KillApplicationRequest, KillApplicationResponse, ListApplicationsRequest,
    ListApplicationsResponse, ListNodesRequest, ListNodesResponse, NodeHeartbeatRequest, NodeHeartbeatResponse,
    NodeReport, RegisterNodeRequest, RegisterNodeResponse, Resources, SubmitApplicationRequest,
    SubmitApplicationResponse,
};
use tonic::{Request, Response, Status};

use embedstream_core::argv::{
    DriverCommand, ExecutorCommand, ProcessCommand, CONTAINER_ID_PLACEHOLDER, HOST_PLACEHOLDER,
};

use super::placement::schedule;
use super::state::{
    alive_containers, end_container, kill_container, new_container_id, now_id, used, AppSecret, Application, Container,
    Node, Role,
};
use super::{ResourceManagerService, JOB_TOML_ENV};

/// What a node agent gets to start `c`, with its application's secret: a driver requires it of
/// its callers and executors, and an executor of its driver.
fn launch_of(c: &Container, app: Option<&Application>) -> ContainerLaunch {
    let app_secret = app.map(|a| a.secret.0.clone()).unwrap_or_default();
    ContainerLaunch {
        container_id: c.id.clone(),
        app_id: c.app_id.clone(),
        args: c.args.clone(),
        env: c.env.clone().into_iter().collect(),
        resources: Some(Resources { vcores: c.vcores, memory_mb: c.memory_mb }),
        app_secret,
        role: c.role.name().to_string(),
    }
}

fn report_of(c: &Container) -> ContainerReport {
    ContainerReport {
        container_id: c.id.clone(),
        node_id: c.node_id.clone(),
        role: c.role.name().into(),
        state: c.state,
        resources: Some(Resources { vcores: c.vcores, memory_mb: c.memory_mb }),
        diagnostics: c.diagnostics.clone(),
    }
}

impl ResourceManagerService {
    /// Every node, live ones first, then the lost (as YARN's `node -list -all`).
    pub(crate) fn nodes(&self) -> Vec<NodeReport> {
        let s = self.state.lock().unwrap();
        let lost = s.lost_nodes.iter().map(|(id, n)| NodeReport {
            node_id: id.clone(),
            capacity: Some(n.capacity),
            used: Some(Resources::default()),
            lost: true,
            last_heartbeat_ms_ago: n.last_heartbeat.elapsed().as_millis() as u64,
            containers: Vec::new(),
        });
        let live = s.nodes.iter().map(|(id, n)| {
            let (v, m) = used(&s.p, id);
            NodeReport {
                node_id: id.clone(),
                capacity: Some(n.capacity),
                used: Some(Resources { vcores: v, memory_mb: m }),
                lost: false,
                last_heartbeat_ms_ago: n.last_heartbeat.elapsed().as_millis() as u64,
                containers: (s.p.containers.values())
                    .filter(|c| c.node_id == *id && c.alive())
                    .map(|c| c.id.clone())
                    .collect(),
            }
        });
        live.chain(lost).collect()
    }

    /// Every application the RM knows, with its containers.
    pub(crate) fn applications(&self) -> Vec<ApplicationReport> {
        let s = self.state.lock().unwrap();
        (s.p.applications.values())
            .map(|a| ApplicationReport {
                app_id: a.id.clone(),
                name: a.name.clone(),
                state: a.state,
                driver_address: a.driver_address.clone(),
                diagnostics: a.diagnostics.clone(),
                containers: s.p.containers.values().filter(|c| c.app_id == a.id).map(report_of).collect(),
                driver_attempts: a.driver_attempts,
                driver_page: a.driver_page.clone(),
            })
            .collect()
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
        let (snapshot, answer) = {
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
            let snapshot = self.snapshot(&s.p);
            (snapshot, RegisterNodeResponse {})
        };
        self.persist(snapshot).await;
        Ok(Response::new(answer))
    }

    async fn node_heartbeat(
        &self,
        request: Request<NodeHeartbeatRequest>,
    ) -> Result<Response<NodeHeartbeatResponse>, Status> {
        let r = request.into_inner();
        let (snapshot, answer) = {
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
                        s.p.containers.get_mut(&status.container_id).expect("known").state =
                            ContainerState::Running as i32;
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
            let p = &mut s.p;
            let launch: Vec<ContainerLaunch> = p
                .containers
                .values_mut()
                .filter(|c| c.node_id == r.node_id && c.alive() && !c.launched)
                .map(|c| {
                    c.launched = true;
                    launch_of(c, p.applications.get(&c.app_id))
                })
                .collect();
            let snapshot = (changed || !launch.is_empty()).then(|| self.snapshot(&s.p));
            kill.sort();
            kill.dedup();
            (snapshot, NodeHeartbeatResponse { known: true, launch, kill })
        };
        if let Some(snapshot) = snapshot {
            self.persist(snapshot).await;
        }
        Ok(Response::new(answer))
    }

    async fn submit_application(
        &self,
        request: Request<SubmitApplicationRequest>,
    ) -> Result<Response<SubmitApplicationResponse>, Status> {
        let r = request.into_inner();
        // Refuse a bad job before anything starts, naming the key.
        let spec = embedstream_core::JobSpec::from_toml(&r.job_spec_toml)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let driver = r.driver_resources.unwrap_or(Resources { vcores: 1, memory_mb: 1024 });
        let (snapshot, answer) = {
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
                    if !s
                        .nodes
                        .values()
                        .any(|n| n.capacity.vcores >= need.vcores && n.capacity.memory_mb >= need.memory_mb)
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
                driver_page: String::new(),
                driver_vcores: driver.vcores.max(1),
                driver_memory_mb: driver.memory_mb.max(1),
                executors_wanted: 0,
                executor_vcores: spec.executors.cores,
                executor_memory_mb: spec.executors.memory_mb(),
                executor_args: Vec::new(),
                driver_attempts: 1,
                completed: Vec::new(),
                allocated: Vec::new(),
                secret: AppSecret(embedstream_core::auth::random_secret()),
            };
            let cid = new_container_id(&mut s, &id);
            let container = Container {
                id: cid.clone(),
                app_id: id.clone(),
                role: Role::Driver,
                node_id: String::new(),
                vcores: app.driver_vcores,
                memory_mb: app.driver_memory_mb,
                args: DriverCommand {
                    rm: self.advertise.clone(),
                    app_id: id.clone(),
                    listen: format!("{HOST_PLACEHOLDER}:0"),
                    // The node agent writes the secret's file and adds its own certificate's files.
                    app_secret_file: None,
                    tls: Default::default(),
                }
                .argv(),
                env: BTreeMap::from([(JOB_TOML_ENV.to_string(), r.job_spec_toml)]),
                state: ContainerState::Allocated as i32,
                diagnostics: String::new(),
                launched: false,
            };
            tracing::info!(app = %id, name = %app.name, "application submitted");
            let app_secret = app.secret.0.clone();
            s.p.applications.insert(id.clone(), app);
            s.p.containers.insert(cid.clone(), container);
            s.queue.push_back(cid);
            schedule(&mut s);
            let snapshot = self.snapshot(&s.p);
            (snapshot, SubmitApplicationResponse { app_id: id, app_secret })
        };
        self.persist(snapshot).await;
        Ok(Response::new(answer))
    }

    async fn allocate(&self, request: Request<AllocateRequest>) -> Result<Response<AllocateResponse>, Status> {
        let r = request.into_inner();
        let (snapshot, answer) = {
            let mut s = self.state.lock().unwrap();
            let Some(app) = s.p.applications.get_mut(&r.app_id) else {
                return Err(Status::not_found(format!("no application {}", r.app_id)));
            };
            // Only the application's own driver may steer it: the cluster token lets a caller in,
            // the secret issued at submit says which application it speaks for.
            let secret = app.secret.0.as_bytes();
            if !secret.is_empty() && !embedstream_core::auth::constant_time_eq(r.app_secret.as_bytes(), secret) {
                tracing::warn!(app = %r.app_id, "refused an Allocate call without the application's secret");
                return Err(Status::permission_denied(format!(
                    "Allocate for {} needs the secret the RM issued to its driver at submit",
                    r.app_id
                )));
            }
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
            // Node agents run what the RM builds, never a caller's command line: the executor
            // subcommand, for this application's driver and cores.
            if r.driver_address.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
                return Err(Status::invalid_argument(format!("driver_address {:?}: not HOST:PORT", r.driver_address)));
            }
            app.driver_address = r.driver_address;
            // The RM's page links to it: an http(s) URL and nothing else.
            if !r.driver_page.is_empty() {
                let scheme_ok = r.driver_page.starts_with("http://") || r.driver_page.starts_with("https://");
                if !scheme_ok || r.driver_page.contains(|c: char| c.is_whitespace() || "\"'<>".contains(c)) {
                    return Err(Status::invalid_argument(format!(
                        "driver_page {:?}: not an http(s) URL",
                        r.driver_page
                    )));
                }
                app.driver_page = r.driver_page;
            }
            app.executors_wanted = r.executors_wanted;
            if let Some(res) = r.executor_resources {
                app.executor_vcores = res.vcores.max(1);
                app.executor_memory_mb = res.memory_mb.max(1);
            }
            app.executor_args = ExecutorCommand {
                driver: format!("http://{}", app.driver_address),
                executor_id: CONTAINER_ID_PLACEHOLDER.into(),
                cores: app.executor_vcores,
                listen: format!("{HOST_PLACEHOLDER}:0"),
                token_file: None,
                // The node agent writes the application's secret to a file and names it.
                app_secret_file: None,
                tls: Default::default(),
            }
            .argv();
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
            let snapshot = self.snapshot(&s.p);
            (snapshot, AllocateResponse { allocated, completed })
        };
        self.persist(snapshot).await;
        Ok(Response::new(answer))
    }

    async fn list_nodes(&self, _: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(ListNodesResponse { nodes: self.nodes() }))
    }

    async fn list_applications(
        &self,
        _: Request<ListApplicationsRequest>,
    ) -> Result<Response<ListApplicationsResponse>, Status> {
        Ok(Response::new(ListApplicationsResponse { applications: self.applications() }))
    }

    async fn kill_application(
        &self,
        request: Request<KillApplicationRequest>,
    ) -> Result<Response<KillApplicationResponse>, Status> {
        let id = request.into_inner().app_id;
        let (snapshot, answer) = {
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
            let snapshot = self.snapshot(&s.p);
            (snapshot, KillApplicationResponse {})
        };
        self.persist(snapshot).await;
        Ok(Response::new(answer))
    }
}
