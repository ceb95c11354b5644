//! Starting, replacing and releasing executors.
//!
//! A [`Launcher`] keeps a number of executors alive: [`local::LocalLauncher`] as child processes
//! of the driver (`run --local N`), [`resource_manager::ResourceManagerLauncher`] as containers
//! the resource manager places on node agents. A new way to get executors (YARN) is one more
//! module here implementing [`Launcher`]: [`yarn::YarnLauncher`] asks YARN for containers. Either way an executor runs this same binary
//! (`embedstream executor --driver URL ...`), fetches the job spec from the driver, loads the
//! model and registers. The [`reconcile`] loop compares what is alive with what the query wants
//! (`Control::target`, changed by `Scale`), marks ended executors lost, starts replacements and
//! drains extras.

pub mod local;
pub mod resource_manager;
pub mod yarn;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedstream_proto::pb::ShutdownRequest;

pub use local::{private_token_file, LocalLauncher};
pub use resource_manager::ResourceManagerLauncher;
pub use yarn::YarnLauncher;

use crate::admin::Control;
use crate::executors::ExecutorRegistry;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("the ApplicationMaster did not answer within {waited:?}")]
    Slow { waited: Duration },
    #[error("cannot start executor {id} ({exe}): {source}")]
    Spawn { id: String, exe: PathBuf, source: std::io::Error },
    #[error("executor {id} ended before it registered: {why} (its log says more)")]
    ExitedEarly { id: String, why: String },
    #[error("{registered} of {wanted} executors registered within {waited:?}")]
    Timeout { registered: usize, wanted: usize, waited: Duration },
    #[error("{count} executors ended before they registered; giving up (the last: {why})")]
    TooManyFailures { count: u32, why: String },
    #[error(
        "{kills} executors were killed for using more than executors.memory (the last: {why}); \
         giving up: raise executors.memory"
    )]
    OverMemory { kills: u32, why: String },
    #[error(
        "Kerberos: the ApplicationMaster could not renew the application's HDFS delegation tokens, \
         which expire at {expires}: {why}; the query stops here and resumes from its checkpoint \
         when submitted again with a valid --keytab"
    )]
    TokenRenewal { expires: String, why: String },
    #[error("resource manager {url}: {message}")]
    ResourceManager { url: String, message: String },
}

/// Where the driver serves, as its launcher tells executors and the cluster.
#[derive(Debug, Clone)]
pub struct DriverEndpoints {
    /// The driver's gRPC services (executors, admin).
    pub grpc: std::net::SocketAddr,
    /// Its /metrics.
    pub metrics: std::net::SocketAddr,
    /// Its page's URL, on the metrics listener (YARN's tracking URL, the RM page's link).
    pub page: String,
    /// Where a launcher puts renewed Hadoop delegation tokens for the executors (YARN).
    pub hadoop_tokens: embedstream_core::hadoop_tokens::Credentials,
}

/// An executor that ended, as its launcher saw it.
#[derive(Debug, Clone)]
pub struct Ended {
    pub id: String,
    pub why: String,
    /// Killed by its node for using more than `executors.memory`.
    pub over_memory: bool,
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

/// Executors that may end before registering, in all, before the query gives up: a model that
/// cannot load fails every executor the same way.
fn failure_budget(target: u32) -> u32 {
    2 * target + 2
}

/// Counts an executor killed over its memory (a replacement follows); past the failure budget,
/// the error that says to raise `executors.memory`.
fn count_memory_kill(kills: &mut u32, e: &Ended, target: u32) -> Result<(), LaunchError> {
    *kills += 1;
    tracing::warn!(executor = %e.id, why = %e.why, memory_kills = *kills, "executor killed over its memory; starting a replacement");
    if *kills > failure_budget(target) {
        return Err(LaunchError::OverMemory { kills: *kills, why: e.why.clone() });
    }
    Ok(())
}

/// Starts the executors the query wants and waits until `target` have registered, failing early
/// when one ends before it registered (a bad model fails them all the same way), except one
/// killed over its memory: that one is replaced, up to the failure budget.
pub async fn start(
    launcher: &mut dyn Launcher,
    registry: &ExecutorRegistry,
    target: u32,
    timeout: Duration,
) -> Result<(), LaunchError> {
    let mut registered = registry.subscribe();
    let started = Instant::now();
    let mut memory_kills = 0;
    loop {
        for e in launcher.reconcile(target, &[]).await? {
            if e.over_memory {
                // Killed over its memory while it loaded the model: replaced as after it
                // registered, until the budget says the size will never do.
                count_memory_kill(&mut memory_kills, &e, target)?;
            } else if !registry.knows(&e.id) {
                return Err(LaunchError::ExitedEarly { id: e.id, why: e.why });
            }
            registry.ended(&e.id, &e.why);
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
    // An executor killed over its memory after it registered is replaced, but counted: a spec
    // whose executors never fit would otherwise be replaced forever.
    let mut memory_kills = 0;
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
            // Over its memory, registered or not (a replacement killed while it loads the
            // model): counted as memory kills, whose error says to raise the memory.
            if e.over_memory {
                count_memory_kill(&mut memory_kills, &e, target)?;
            } else if !registry.knows(&e.id) {
                failures += 1;
                tracing::warn!(executor = %e.id, why = %e.why, "executor ended before it registered");
                if failures > failure_budget(target) {
                    return Err(LaunchError::TooManyFailures { count: failures, why: e.why });
                }
            } else if registry.is_live(&e.id) {
                tracing::warn!(executor = %e.id, why = %e.why, "executor lost; starting a replacement");
            }
            registry.ended(&e.id, &e.why);
            draining_since.retain(|(id, _)| *id != e.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executors::ExecutorInfo;

    /// Each call, the one executor it started registers and is killed over its memory: what a
    /// spec whose `executors.memory` is too small does on a cluster.
    struct KilledOverMemory {
        registry: Arc<ExecutorRegistry>,
        started: u32,
        running: Option<String>,
    }

    #[tonic::async_trait]
    impl Launcher for KilledOverMemory {
        async fn reconcile(&mut self, _: u32, _: &[String]) -> Result<Vec<Ended>, LaunchError> {
            let ended = self.running.take().map(|id| Ended {
                id,
                why: "process tree used 900 MiB, over its 512 MiB (executors.memory)".into(),
                over_memory: true,
            });
            let id = format!("exec-{}", self.started);
            self.started += 1;
            let info =
                ExecutorInfo::connect(id.clone(), "127.0.0.1:9".into(), 1, 0, String::new(), &Default::default());
            self.registry.register(info.unwrap());
            self.running = Some(id);
            Ok(ended.into_iter().collect())
        }

        async fn stop(&mut self, _: Duration) {}
    }

    /// Issue 14, finding 12: executors killed over their memory after they registered count
    /// against the failure budget; the query fails saying to raise `executors.memory`, instead
    /// of replacing them forever.
    #[tokio::test]
    async fn executors_killed_over_their_memory_end_the_query_after_the_budget() {
        let registry = Arc::new(ExecutorRegistry::default());
        let launcher: Box<dyn Launcher> =
            Box::new(KilledOverMemory { registry: registry.clone(), started: 0, running: None });
        let launcher = Arc::new(tokio::sync::Mutex::new(launcher));
        let reconciling = reconcile(launcher, registry, Control::new(1), Duration::from_millis(1));
        let e = tokio::time::timeout(Duration::from_secs(30), reconciling).await.expect("it gives up").unwrap_err();
        assert!(matches!(e, LaunchError::OverMemory { kills: 5, .. }), "{e}");
        assert!(e.to_string().contains("raise executors.memory"), "{e}");
    }
}
