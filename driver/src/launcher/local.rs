//! Executors as child processes of the driver (`run --local N`): each an `embedstream executor`
//! on loopback, logging to the driver's stderr, killed if the driver goes.

use std::path::PathBuf;
use std::time::Duration;

use embedstream_core::argv::{ExecutorCommand, ProcessCommand};
use embedstream_core::auth::ClusterToken;
use embedstream_core::tls::TlsFiles;
use tokio::process::{Child, Command};

use super::{Ended, LaunchError, Launcher};

/// A new directory only this user can enter (0700, removed when dropped) holding `token` in
/// `token` (0600), for local executors' `--token-file`.
pub fn private_token_file(token: &ClusterToken) -> std::io::Result<tempfile::TempDir> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::Builder::new().prefix("embedstream-driver-").tempdir()?;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.path().join("token"))?;
    file.write_all(token.secret().unwrap_or_default().as_bytes())?;
    Ok(dir)
}

/// Executors as child processes of the driver.
pub struct LocalLauncher {
    exe: PathBuf,
    driver_url: String,
    cores: u32,
    next_id: u32,
    /// The file holding the cluster token (mode 0600), named on executors' command lines; the
    /// token itself is never in their environment or argv.
    token_file: Option<PathBuf>,
    /// Variables of the driver's environment that executors must not inherit (the ones the
    /// spec's secrets are read from).
    scrub_env: Vec<String>,
    /// The driver's certificate, key and CA files, named on executors' command lines.
    tls: TlsFiles,
    children: Vec<(String, Child)>,
    /// Released executors, left to exit after their Shutdown.
    leaving: Vec<(String, Child)>,
}

impl LocalLauncher {
    /// `exe` is the `embedstream` binary (usually `std::env::current_exe()`).
    pub fn new(exe: PathBuf, driver_url: &str, cores: u32, token_file: Option<PathBuf>) -> Self {
        LocalLauncher {
            exe,
            driver_url: driver_url.into(),
            cores,
            next_id: 0,
            token_file,
            scrub_env: Vec::new(),
            tls: TlsFiles::default(),
            children: Vec::new(),
            leaving: Vec::new(),
        }
    }

    /// Removes `vars` from the environment executors inherit.
    pub fn without_env(mut self, vars: Vec<String>) -> Self {
        self.scrub_env = vars;
        self
    }

    /// Executors serve and call with these files (the driver's own).
    pub fn with_tls(mut self, tls: TlsFiles) -> Self {
        self.tls = tls;
        self
    }

    fn spawn(&mut self) -> Result<(), LaunchError> {
        let id = format!("exec-{}", self.next_id);
        self.next_id += 1;
        let mut command = Command::new(&self.exe);
        for var in &self.scrub_env {
            command.env_remove(var);
        }
        command.env_remove(embedstream_core::auth::TOKEN_ENV);
        let argv = ExecutorCommand {
            driver: self.driver_url.clone(),
            executor_id: id.clone(),
            cores: self.cores,
            listen: "127.0.0.1:0".into(),
            token_file: self.token_file.clone(),
            app_secret_file: None,
            tls: self.tls.clone(),
        }
        .argv();
        let child = command
            .args(argv)
            // Executors log to the same stderr as the driver; stdout stays the driver's.
            .stdout(std::process::Stdio::null())
            // A process group of its own: a terminal's Ctrl-C (SIGINT to the foreground group)
            // reaches the driver only, which stops after the batch in flight and then stops
            // its executors, instead of killing them mid-batch.
            .process_group(0)
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
                Ok(Some(status)) => {
                    ended.push(Ended { id, why: format!("process exited with {status}"), over_memory: false })
                }
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
