//! The node agent: registers the node's capacity with the resource manager, heartbeats, starts
//! the containers the RM places here as child processes (`embedstream ARGS`, with their
//! environment and their own log files), reports how they end, and kills a container whose
//! process tree uses more memory than it was granted, as YARN's physical-memory check does.
//!
//! Memory is the proportional set size (PSS) of the container's process tree: the model
//! workers share the weights copy-on-write, and RSS would count them once per worker.
//! Containers run in their own process group, so a kill reaches the model daemon and workers too.
//! If the agent itself dies its containers run on; the RM declares the node lost and the drivers
//! stop using them (an executor whose driver no longer knows it exits).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use embedstream_core::argv::{CONTAINER_ID_PLACEHOLDER, HOST_PLACEHOLDER};
use embedstream_core::auth::ClusterToken;
use embedstream_core::telemetry;
use embedstream_core::tls::{Tls, TlsFiles};
use embedstream_proto::pb::resource_manager_client::ResourceManagerClient;
use embedstream_proto::pb::{
    ContainerLaunch, ContainerState, ContainerStatus, NodeHeartbeatRequest, RegisterNodeRequest, Resources,
};
use embedstream_proto::serve::{self, GrpcServer};
use tokio::process::{Child, Command};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("resource manager {url}: {message}")]
    ResourceManager { url: String, message: String },
    #[error("work directory {path}: {source}")]
    WorkDir { path: String, source: std::io::Error },
    #[error("--secret-dir {secret_dir}: it holds or lies in the work directory {work_dir}, where every container's application secret is kept; a job spec must not read those")]
    SecretDirHoldsWork { secret_dir: String, work_dir: String },
    #[error("--listen {0}: a node is known by this address and its containers listen on its host, so it must be the host's own address that the RM and the other nodes reach, not {ip}", ip = .0.ip())]
    Unspecified(SocketAddr),
}

pub struct NodeArgs {
    pub rm: String,
    pub listen: SocketAddr,
    pub vcores: u32,
    pub memory_mb: u64,
    /// Containers' log directories go under it: `<work_dir>/<app>/<container>/{stdout,stderr}`.
    pub work_dir: PathBuf,
    /// The `embedstream` binary containers run.
    pub exe: PathBuf,
    pub token: ClusterToken,
    pub heartbeat: Duration,
    /// A container's log file past this size is rotated ([`rotate_if_over`]).
    pub log_max_bytes: u64,
    /// Its TLS, loaded from `tls_files`: its own port and its calls to the RM.
    pub tls: Tls,
    /// The files, passed on to every container it starts (`--tls-*`).
    pub tls_files: TlsFiles,
    /// Where its containers' drivers may read `{ file = ... }` secrets (`--secret-dir`).
    pub secret_dirs: embedstream_core::spec::SecretDirs,
}

struct Running {
    child: Child,
    pid: u32,
    memory_mb: u64,
    /// Its log directory (`stdout`, `stderr`).
    dir: PathBuf,
}

/// The names of a container's log files in its directory.
const LOG_FILES: [&str; 2] = ["stdout", "stderr"];

/// Opens a container's log file for appending (mode 0600): after a rotation empties it, the
/// container's next write lands at its start, not past a hole the size of what was moved.
pub fn open_log(dir: &Path, name: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(dir.join(name))
}

/// Rotates `dir/name` once it is over `max_bytes`, as logrotate's `copytruncate`: its content
/// goes to `name.1` (replacing the one before) and the file is emptied in place, because the
/// container keeps it open. Lines written between the copy and the truncation are lost; the
/// logs of a container take at most about twice `max_bytes` each.
pub fn rotate_if_over(dir: &Path, name: &str, max_bytes: u64) -> std::io::Result<bool> {
    let path = dir.join(name);
    if std::fs::metadata(&path)?.len() <= max_bytes {
        return Ok(false);
    }
    let old = dir.join(format!("{name}.1"));
    let _ = std::fs::remove_file(&old);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut to = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&old)?;
        std::io::copy(&mut std::fs::File::open(&path)?, &mut to)?;
    }
    std::fs::OpenOptions::new().write(true).open(&path)?.set_len(0)?;
    Ok(true)
}

/// Runs the node agent until `stop` turns true; its containers are then killed.
pub async fn run(args: NodeArgs, mut stop: watch::Receiver<bool>) -> Result<(), NodeError> {
    if args.listen.ip().is_unspecified() {
        return Err(NodeError::Unspecified(args.listen));
    }
    std::fs::create_dir_all(&args.work_dir)
        .map_err(|source| NodeError::WorkDir { path: args.work_dir.display().to_string(), source })?;
    if let Some(d) = args.secret_dirs.overlapping(&args.work_dir) {
        return Err(NodeError::SecretDirHoldsWork {
            secret_dir: d.display().to_string(),
            work_dir: args.work_dir.display().to_string(),
        });
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| NodeError::Listen { addr: args.listen, source })?;
    let address = listener.local_addr().map_err(|source| NodeError::Listen { addr: args.listen, source })?;
    let node_id = address.to_string();
    let host = address.ip().to_string();
    let mut server_stop = stop.clone();
    // Health and reflection, for probes (systemd, load balancers, grpcurl).
    let server = tokio::spawn(GrpcServer::new(args.token.clone(), args.tls.clone()).serve(listener, async move {
        let _ = server_stop.wait_for(|&s| s).await;
    }));
    let url = args.tls.url(&args.rm);
    let channel = serve::endpoint(&args.rm, &args.tls)
        .map_err(|e| NodeError::ResourceManager { url: url.clone(), message: e.to_string() })?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut rm = ResourceManagerClient::with_interceptor(channel, args.token.clone());
    let capacity = Resources { vcores: args.vcores, memory_mb: args.memory_mb };
    tracing::info!(node = %node_id, rm = %url, vcores = args.vcores, memory_mb = args.memory_mb, "node agent starting");

    let mut running: HashMap<String, Running> = HashMap::new();
    // Ended containers not yet acknowledged by the RM.
    let mut ended: BTreeMap<String, ContainerStatus> = BTreeMap::new();
    let mut registered = false;
    let mut ticks = tokio::time::interval(args.heartbeat);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|&s| s) => break,
        }
        check_containers(&mut running, &mut ended, args.log_max_bytes);
        let statuses: Vec<ContainerStatus> = running
            .keys()
            .map(|id| ContainerStatus {
                container_id: id.clone(),
                state: ContainerState::Running as i32,
                ..Default::default()
            })
            .chain(ended.values().cloned())
            .collect();
        if !registered {
            let request =
                RegisterNodeRequest { node_id: node_id.clone(), capacity: Some(capacity), running: statuses.clone() };
            match rm.register_node(request).await {
                Ok(_) => {
                    tracing::info!(node = %node_id, "registered with the resource manager");
                    registered = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e.message(), "cannot register with the resource manager; retrying");
                    continue;
                }
            }
        }
        let answer =
            match rm.node_heartbeat(NodeHeartbeatRequest { node_id: node_id.clone(), containers: statuses }).await {
                Ok(a) => a.into_inner(),
                Err(e) => {
                    tracing::warn!(error = %e.message(), "heartbeat failed");
                    continue;
                }
            };
        if !answer.known {
            tracing::warn!(
                "the resource manager does not know this node (it restarted, or declared it lost); registering again"
            );
            registered = false;
            continue;
        }
        ended.clear();
        for id in answer.kill {
            if let Some(r) = running.remove(&id) {
                kill_tree(r.pid);
                tracing::info!(container = %id, "container killed on request");
                ended.insert(id.clone(), status(&id, ContainerState::Killed, -1, "killed on request".into()));
                reap(r.child);
            }
        }
        for launch in answer.launch {
            let id = launch.container_id.clone();
            if running.contains_key(&id) {
                continue; // sent again because an earlier answer seemed lost; it runs already
            }
            match start(&args, &host, &launch) {
                Ok(r) => {
                    tracing::info!(container = %id, app = %launch.app_id, pid = r.pid, "container started");
                    running.insert(id, r);
                }
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "container failed to start");
                    ended.insert(id.clone(), status(&id, ContainerState::FailedToStart, -1, e));
                }
            }
        }
    }
    for (id, r) in running.drain() {
        tracing::info!(container = %id, "node agent stopping: killing its container");
        kill_tree(r.pid);
        reap(r.child);
    }
    let _ = server.await;
    Ok(())
}

fn status(id: &str, state: ContainerState, exit_code: i32, diagnostics: String) -> ContainerStatus {
    ContainerStatus { container_id: id.into(), state: state as i32, exit_code, diagnostics }
}

/// Collects ended containers, kills those over their memory, and rotates logs over their size.
fn check_containers(
    running: &mut HashMap<String, Running>,
    ended: &mut BTreeMap<String, ContainerStatus>,
    log_max_bytes: u64,
) {
    if running.is_empty() {
        return; // an idle node does not read /proc
    }
    let tree = process_tree();
    let mut gone = Vec::new();
    for (id, r) in running.iter_mut() {
        for name in LOG_FILES {
            match rotate_if_over(&r.dir, name, log_max_bytes) {
                Ok(true) => tracing::info!(container = %id, log = name, "container log rotated"),
                Ok(false) => {}
                Err(e) => tracing::warn!(container = %id, log = name, error = %e, "cannot rotate the container log"),
            }
        }
        if let Ok(Some(exit)) = r.child.try_wait() {
            let (code, why) = match (exit.code(), std::os::unix::process::ExitStatusExt::signal(&exit)) {
                (Some(c), _) => (c, format!("exited with code {c}")),
                (None, Some(sig)) => (128 + sig, format!("killed by signal {sig}")),
                _ => (-1, exit.to_string()),
            };
            tracing::info!(container = %id, %why, "container ended");
            ended.insert(id.clone(), status(id, ContainerState::Exited, code, why));
            gone.push(id.clone());
            continue;
        }
        let used_mb = descendants(&tree, r.pid).iter().filter_map(|&p| telemetry::pss_bytes(p)).sum::<u64>() >> 20;
        if used_mb > r.memory_mb {
            let why = format!("process tree used {used_mb} MiB, over its {} MiB (executors.memory)", r.memory_mb);
            tracing::warn!(container = %id, %why, "killing the container");
            kill_tree(r.pid);
            ended.insert(id.clone(), status(id, ContainerState::KilledMemory, -1, why));
            gone.push(id.clone());
        }
    }
    for id in gone {
        if let Some(r) = running.remove(&id) {
            reap(r.child);
        }
    }
}

/// Starts a container: `exe ARGS` with ENV (placeholders filled), in its own process group,
/// stdout and stderr to files in its log directory.
fn start(args: &NodeArgs, host: &str, launch: &ContainerLaunch) -> Result<Running, String> {
    let fill = |s: &str| s.replace(HOST_PLACEHOLDER, host).replace(CONTAINER_ID_PLACEHOLDER, &launch.container_id);
    let dir = args.work_dir.join(&launch.app_id).join(&launch.container_id);
    // A container's logs may hold what its process printed about its job: its owner's only.
    embedstream_core::durable::create_private_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let open = |name: &str| open_log(&dir, name).map_err(|e| format!("{}: {e}", dir.join(name).display()));
    let mut command = Command::new(&args.exe);
    command.args(launch.args.iter().map(|a| fill(a)));
    // The application's secret: in a file only its owner reads, named on the command line, so
    // it is in no argv, no environment and no log.
    if !launch.app_secret.is_empty() {
        let path = dir.join("app-secret");
        embedstream_core::durable::write_private(&path, format!("{}\n", launch.app_secret).as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        command.arg("--app-secret-file").arg(&path);
    }
    command
        // Drivers and executors serve and call with this node's certificate, key and CA.
        .args(args.tls_files.flags())
        .envs(launch.env.iter().map(|(k, v)| (k.clone(), fill(v))))
        .env("EMBEDSTREAM_CONTAINER_ID", &launch.container_id)
        .env("EMBEDSTREAM_NODE_HOST", host)
        // Confines the job's secrets to what the operator allows (set even when empty).
        .env(embedstream_core::spec::SECRET_DIRS_ENV, args.secret_dirs.to_env())
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(open("stdout")?)
        .stderr(open("stderr")?)
        .process_group(0);
    // The cluster token reaches a driver alone (its calls to the RM): an executor, which runs
    // the job's models and reads its inputs, has its application's secret and nothing more,
    // not even the token the agent's own environment holds.
    match args.token.secret().filter(|_| launch.role != "executor") {
        Some(t) => command.env(embedstream_core::auth::TOKEN_ENV, t),
        None => command.env_remove(embedstream_core::auth::TOKEN_ENV),
    };
    let child = command.spawn().map_err(|e| format!("cannot start {}: {e}", args.exe.display()))?;
    let pid = child.id().ok_or("the container exited at once")?;
    let memory_mb = launch.resources.map_or(u64::MAX, |r| r.memory_mb);
    Ok(Running { child, pid, memory_mb, dir })
}

/// Kills a container's process group (its leader's pid), model daemon and workers included.
fn kill_tree(pid: u32) {
    let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
}

/// Waits for a killed child in the background, so that it leaves no zombie.
fn reap(mut child: Child) {
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
}

/// Parent of every process: pid -> ppid, from /proc.
fn process_tree() -> HashMap<u32, u32> {
    let mut tree = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return tree };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(ppid) = embedstream_core::telemetry::parent_pid(pid) {
            tree.insert(pid, ppid);
        }
    }
    tree
}

/// `root` and every process below it.
fn descendants(tree: &HashMap<u32, u32>, root: u32) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(tree.iter().filter(|(_, &pp)| pp == parent).map(|(&p, _)| p));
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_follow_parents() {
        let tree = HashMap::from([(10, 1), (11, 10), (12, 11), (13, 1), (14, 10)]);
        let mut d = descendants(&tree, 10);
        d.sort();
        assert_eq!(d, vec![10, 11, 12, 14]);
        assert!(process_tree().contains_key(&std::process::id()), "this process is in /proc");
    }

    /// Issue 14, finding 15: container logs are rotated. A log over its size moves to `stderr.1`
    /// and the container, writing on through the descriptor it holds, starts the file afresh
    /// (no hole where the old content was); a second rotation replaces `stderr.1`.
    #[test]
    fn a_container_log_over_its_size_is_rotated_under_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = open_log(dir.path(), "stderr").unwrap();
        use std::io::Write;
        writer.write_all(&vec![b'a'; 3000]).unwrap();
        assert!(!rotate_if_over(dir.path(), "stderr", 4096).unwrap(), "under the size: left alone");
        writer.write_all(&vec![b'b'; 3000]).unwrap();
        assert!(rotate_if_over(dir.path(), "stderr", 4096).unwrap());
        writer.write_all(b"after the rotation\n").unwrap();
        let current = std::fs::read(dir.path().join("stderr")).unwrap();
        assert_eq!(current, b"after the rotation\n", "the writer goes on at the start of the emptied file");
        let rotated = std::fs::read(dir.path().join("stderr.1")).unwrap();
        assert_eq!(rotated.len(), 6000);
        assert!(rotated.starts_with(b"aaa") && rotated.ends_with(b"bbb"));
        use std::os::unix::fs::PermissionsExt;
        for name in ["stderr", "stderr.1"] {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        writer.write_all(&vec![b'c'; 5000]).unwrap();
        assert!(rotate_if_over(dir.path(), "stderr", 4096).unwrap());
        let rotated = std::fs::read(dir.path().join("stderr.1")).unwrap();
        assert!(rotated.starts_with(b"after the rotation\n") && rotated.len() == 5019, "the newer content replaced it");
        assert!(std::fs::read(dir.path().join("stderr")).unwrap().is_empty());
    }
}
