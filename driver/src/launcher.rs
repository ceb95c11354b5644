//! Starting, replacing and releasing executors.
//!
//! A [`Launcher`] keeps a number of executors alive: [`LocalLauncher`] as child processes of the
//! driver (`run --local N`), [`crate::cluster::ClusterLauncher`] as containers the resource
//! manager places on node agents. Either way an executor runs this same binary
//! (`embedstream executor --driver URL ...`), fetches the job spec from the driver, loads the
//! model and registers. The [`reconcile`] loop compares what is alive with what the query wants
//! (`Control::target`, changed by `Scale`), marks ended executors lost, starts replacements and
//! drains extras.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedstream_proto::pb::ShutdownRequest;
use tokio::process::{Child, Command};

use crate::admin::Control;
use crate::scheduler::ExecutorRegistry;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start executor {id} ({exe}): {source}")]
    Spawn { id: String, exe: PathBuf, source: std::io::Error },
    #[error("executor {id} ended before it registered: {why} (its log says more)")]
    ExitedEarly { id: String, why: String },
    #[error("{registered} of {wanted} executors registered within {waited:?}")]
    Timeout { registered: usize, wanted: usize, waited: Duration },
    #[error("{0} executors ended before they registered; giving up")]
    TooManyFailures(u32),
    #[error("resource manager {url}: {message}")]
    ResourceManager { url: String, message: String },
}

/// An executor that ended, as its launcher saw it.
#[derive(Debug, Clone)]
pub struct Ended {
    pub id: String,
    pub why: String,
}

#[tonic::async_trait]
pub trait Launcher: Send {
    /// Works toward `target` executors alive (started or starting), counting a draining executor
    /// as alive until it exits or is in `release`: drained executors that did not exit within
    /// [`DRAIN_TIMEOUT`], to be given up (killed, on a cluster). Returns the executors that ended
    /// since the last call.
    async fn reconcile(&mut self, target: u32, release: &[String]) -> Result<Vec<Ended>, LaunchError>;
    /// Waits up to `grace` for the executors to exit after a Shutdown call, then kills the rest.
    async fn stop(&mut self, grace: Duration);
    /// The query ended (`ok`, or failed with `diagnostics`): tells whoever granted the executors.
    async fn finish(&mut self, _ok: bool, _diagnostics: &str) {}
}

/// Executors as child processes of the driver.
pub struct LocalLauncher {
    exe: PathBuf,
    driver_url: String,
    cores: u32,
    next_id: u32,
    /// The cluster token, handed to executors in their environment.
    token: Option<String>,
    children: Vec<(String, Child)>,
    /// Released executors, left to exit after their Shutdown.
    leaving: Vec<(String, Child)>,
}

impl LocalLauncher {
    /// `exe` is the `embedstream` binary (usually `std::env::current_exe()`).
    pub fn new(exe: PathBuf, driver_url: &str, cores: u32, token: Option<String>) -> Self {
        LocalLauncher {
            exe,
            driver_url: driver_url.into(),
            cores,
            next_id: 0,
            token,
            children: Vec::new(),
            leaving: Vec::new(),
        }
    }

    fn spawn(&mut self) -> Result<(), LaunchError> {
        let id = format!("exec-{}", self.next_id);
        self.next_id += 1;
        let mut command = Command::new(&self.exe);
        if let Some(t) = &self.token {
            command.env(embedstream_proto::auth::TOKEN_ENV, t);
        }
        let child = command
            .args(["executor", "--driver", &self.driver_url, "--executor-id", &id, "--cores", &self.cores.to_string()])
            // Executors log to the same stderr as the driver; stdout stays the driver's.
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LaunchError::Spawn { id: id.clone(), exe: self.exe.clone(), source })?;
        tracing::info!(executor = %id, "starting a local executor");
        self.children.push((id, child));
        Ok(())
    }
}

#[tonic::async_trait]
impl Launcher for LocalLauncher {
    async fn reconcile(&mut self, target: u32, release: &[String]) -> Result<Vec<Ended>, LaunchError> {
        let mut ended = Vec::new();
        let mut alive = Vec::new();
        for (id, mut child) in self.children.drain(..) {
            if release.contains(&id) {
                self.leaving.push((id, child));
                continue;
            }
            match child.try_wait() {
                Ok(Some(status)) => ended.push(Ended { id, why: format!("process exited with {status}") }),
                _ => alive.push((id, child)),
            }
        }
        self.children = alive;
        self.leaving.retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
        while (self.children.len() as u32) < target {
            self.spawn()?;
        }
        Ok(ended)
    }

    async fn stop(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for (id, child) in self.children.iter_mut().chain(self.leaving.iter_mut()) {
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(Ok(status)) => tracing::debug!(executor = %id, %status, "executor exited"),
                _ => {
                    tracing::warn!(executor = %id, "executor did not exit in time; killing it");
                    let _ = child.kill().await;
                }
            }
        }
        self.children.clear();
        self.leaving.clear();
    }
}

/// Executors that may end before registering, in all, before the query gives up: a model that
/// cannot load fails every executor the same way.
fn failure_budget(target: u32) -> u32 {
    2 * target + 2
}

/// Starts the executors the query wants and waits until `target` have registered, failing early
/// when one ends before it registered (a bad model fails them all the same way).
pub async fn start(
    launcher: &mut dyn Launcher,
    registry: &ExecutorRegistry,
    target: u32,
    timeout: Duration,
) -> Result<(), LaunchError> {
    let mut registered = registry.subscribe();
    let started = Instant::now();
    loop {
        for e in launcher.reconcile(target, &[]).await? {
            if !registry.knows(&e.id) {
                return Err(LaunchError::ExitedEarly { id: e.id, why: e.why });
            }
            registry.mark_lost(&e.id);
        }
        if registry.live().len() >= target as usize {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(LaunchError::Timeout {
                registered: registry.live().len(),
                wanted: target as usize,
                waited: timeout,
            });
        }
        // Wake on a registration, or look at the executors again shortly.
        let _ = tokio::time::timeout(Duration::from_millis(200), registered.changed()).await;
    }
}

/// How long a draining executor may take to finish its tasks and exit before it is released
/// anyway: longer than any sensible task, short enough that a hung executor does not hold its
/// container for good.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Every `every`, until the query stops: executors that ended are marked lost (their tasks are
/// retried elsewhere), replacements are started, and beyond `Control::target` the newest
/// executors are drained: no new tasks, and Shutdown lets the tasks in flight finish before the
/// executor exits by itself. One that is still there after [`DRAIN_TIMEOUT`] is released.
pub async fn reconcile(
    launcher: Arc<tokio::sync::Mutex<Box<dyn Launcher>>>,
    registry: Arc<ExecutorRegistry>,
    control: Arc<Control>,
    every: Duration,
) -> Result<(), LaunchError> {
    let mut failures = 0;
    let mut draining_since: Vec<(String, Instant)> = Vec::new();
    let mut ticks = tokio::time::interval(every);
    let mut target_changed = control.target.subscribe();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = target_changed.changed() => {}
        }
        if control.stopping() {
            return Ok(());
        }
        let target = *control.target.borrow();
        let live = registry.live();
        let extra = live.len().saturating_sub(target as usize);
        for e in live.iter().rev().take(extra) {
            tracing::info!(executor = %e.id, "draining: no new tasks, then shut down");
            registry.drain(&e.id);
            draining_since.push((e.id.clone(), Instant::now()));
            let mut client = e.client();
            tokio::spawn(async move {
                let _ = client.shutdown(ShutdownRequest {}).await;
            });
        }
        let (overdue, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut draining_since).into_iter().partition(|(_, since)| since.elapsed() > DRAIN_TIMEOUT);
        draining_since = waiting;
        let release: Vec<String> = overdue.into_iter().map(|(id, _)| id).collect();
        for id in &release {
            tracing::warn!(executor = %id, timeout = ?DRAIN_TIMEOUT, "executor still draining; releasing it");
        }
        let ended = launcher.lock().await.reconcile(target, &release).await?;
        for e in ended {
            if !registry.knows(&e.id) {
                failures += 1;
                tracing::warn!(executor = %e.id, why = %e.why, "executor ended before it registered");
                if failures > failure_budget(target) {
                    return Err(LaunchError::TooManyFailures(failures));
                }
            } else if registry.is_live(&e.id) {
                tracing::warn!(executor = %e.id, why = %e.why, "executor lost; starting a replacement");
            }
            registry.mark_lost(&e.id);
            draining_since.retain(|(id, _)| *id != e.id);
        }
    }
}
