//! Starting executors. In local mode each executor is a child process running this same binary
//! (`embedstream executor --driver URL ...`), which fetches the job spec from the driver, loads
//! the model and registers.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::scheduler::ExecutorRegistry;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start executor {id} ({exe}): {source}")]
    Spawn { id: String, exe: PathBuf, source: std::io::Error },
    #[error("executor {id} exited with {status} before it registered (its log above says why)")]
    ExitedEarly { id: String, status: ExitStatus },
    #[error("{registered} of {wanted} executors registered within {waited:?}")]
    Timeout { registered: usize, wanted: usize, waited: Duration },
}

pub struct LocalLauncher {
    exe: PathBuf,
    children: Vec<(String, Child)>,
}

impl LocalLauncher {
    /// `exe` is the `embedstream` binary (usually `std::env::current_exe()`).
    pub fn new(exe: PathBuf) -> Self {
        LocalLauncher { exe, children: Vec::new() }
    }

    pub fn spawn(&mut self, id: &str, driver_url: &str, cores: u32) -> Result<(), LaunchError> {
        let child = Command::new(&self.exe)
            .args(["executor", "--driver", driver_url, "--executor-id", id, "--cores", &cores.to_string()])
            // Executors log to the same stderr as the driver; stdout stays the driver's.
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LaunchError::Spawn { id: id.into(), exe: self.exe.clone(), source })?;
        self.children.push((id.to_string(), child));
        Ok(())
    }

    /// Waits until `wanted` executors have registered, failing early when one of them exits.
    pub async fn wait_registered(
        &mut self,
        registry: &ExecutorRegistry,
        wanted: usize,
        timeout: Duration,
    ) -> Result<(), LaunchError> {
        let mut registered = registry.subscribe();
        let start = Instant::now();
        loop {
            if *registered.borrow_and_update() >= wanted {
                return Ok(());
            }
            for (id, child) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(LaunchError::ExitedEarly { id: id.clone(), status });
                }
            }
            if start.elapsed() > timeout {
                return Err(LaunchError::Timeout { registered: *registered.borrow(), wanted, waited: timeout });
            }
            // Wake on a registration, or look at the children again shortly.
            let _ = tokio::time::timeout(Duration::from_millis(200), registered.changed()).await;
        }
    }

    /// Waits up to `grace` for the executors to exit after a Shutdown call, then kills the rest.
    pub async fn stop(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for (id, child) in &mut self.children {
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(Ok(status)) => tracing::debug!(executor = %id, %status, "executor exited"),
                _ => {
                    tracing::warn!(executor = %id, "executor did not exit in time; killing it");
                    let _ = child.kill().await;
                }
            }
        }
        self.children.clear();
    }
}
