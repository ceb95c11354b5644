//! Executors as YARN containers: the driver is the application's master, with YARN's own
//! client libraries beside it.
//!
//! On YARN the driver runs in the application master's container as the child of a small Java
//! ApplicationMaster (`deploy/hadoop/src/io/embedstream/yarn/ApplicationMaster.java`), which
//! speaks YARN's protocols (AMRM to the ResourceManager, the NodeManagers' container API) with
//! Hadoop's own client, as Spark's and Flink's masters do. The two talk over the driver's
//! standard input and output, one request and its answer at a time, a line each, fields
//! separated by tabs (the Java file's header lists them). [`YarnLauncher`] is this side:
//! every reconcile (once a second) is one `allocate`, which YARN needs as the master's
//! heartbeat anyway; containers that ended come back with YARN's exit status and
//! diagnostics, those YARN killed over their memory marked so, and the reconciler replaces them
//! as it does on the standalone manager.

use std::time::Duration;

use std::io::{BufRead, Write};

use super::{DriverEndpoints, Ended, LaunchError, Launcher};

/// What YARN answered at registration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Registered {
    pub max_memory_mb: u64,
    pub max_vcores: u32,
    /// This application attempt, from 1.
    pub attempt: u32,
}

/// The channel to the ApplicationMaster: this process's standard input and output, which
/// nothing else in a YARN driver uses (its log is standard error).
pub struct AmChannel(());

impl AmChannel {
    pub fn stdio() -> AmChannel {
        AmChannel(())
    }

    /// Sends one request; returns the answer's lines up to `end` (`multi`) or its one line.
    async fn call(&mut self, fields: &[&str], multi: bool) -> Result<Vec<Vec<String>>, LaunchError> {
        let request: Vec<String> = fields.iter().map(|f| f.replace(['\t', '\n', '\r'], " ")).collect();
        let gone = |e: String| LaunchError::ResourceManager { url: "yarn".into(), message: e };
        // Blocking pipe reads on a thread of their own; `&mut self` keeps one call at a time.
        let exchange = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Vec<String>>> {
            let mut out = std::io::stdout().lock();
            out.write_all(format!("{}\n", request.join("\t")).as_bytes())?;
            out.flush()?;
            let mut input = std::io::stdin().lock();
            let mut answer = Vec::new();
            loop {
                let mut line = String::new();
                if input.read_line(&mut line)? == 0 {
                    return Err(std::io::Error::other("the ApplicationMaster closed the channel"));
                }
                let fields: Vec<String> = line.trim_end_matches(['\n', '\r']).split('\t').map(str::to_string).collect();
                if fields[0] == "end" {
                    return Ok(answer);
                }
                answer.push(fields);
                if !multi {
                    return Ok(answer);
                }
            }
        });
        let answer = match tokio::time::timeout(AM_TIMEOUT, exchange).await {
            Ok(Ok(Ok(answer))) => answer,
            Ok(Ok(Err(e))) => return Err(gone(e.to_string())),
            Ok(Err(e)) => return Err(gone(e.to_string())),
            Err(_) => return Err(gone(format!("the ApplicationMaster did not answer within {AM_TIMEOUT:?}"))),
        };
        if let Some(error) = answer.iter().find(|f| f[0] == "error") {
            return Err(gone(error.get(1).cloned().unwrap_or_default()));
        }
        Ok(answer)
    }

    /// Registers the master with the ResourceManager: where its driver and tracking page are.
    pub async fn register(&mut self, host: &str, port: u16, tracking_url: &str) -> Result<Registered, LaunchError> {
        let answer = self.call(&["register", host, &port.to_string(), tracking_url], false).await?;
        let f = answer.first().cloned().unwrap_or_default();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(Registered { max_memory_mb: num(1), max_vcores: num(2) as u32, attempt: num(3) as u32 })
    }
}

/// How long the ApplicationMaster may take to answer: an allocate is one ResourceManager call
/// and a container start per new container.
const AM_TIMEOUT: Duration = Duration::from_secs(60);

pub struct YarnLauncher {
    channel: AmChannel,
    /// Each executor container's vcores and memory (`executors.memory` plus its overhead).
    vcores: u32,
    container_memory_mb: u64,
    /// The driver's host, port and tracking URL, until the master has registered them.
    unregistered: Option<(String, u16, String)>,
}

impl YarnLauncher {
    /// A launcher for the driver at `driver`; it registers the master at its first reconcile.
    pub fn new(channel: AmChannel, driver: &DriverEndpoints, vcores: u32, container_memory_mb: u64) -> YarnLauncher {
        let tracking = driver.page.clone();
        let unregistered = Some((driver.grpc.ip().to_string(), driver.grpc.port(), tracking));
        YarnLauncher { channel, vcores, container_memory_mb, unregistered }
    }

    async fn allocate(&mut self, wanted: u32, release: &[String]) -> Result<Vec<Ended>, LaunchError> {
        let release = release.join(",");
        let (wanted, vcores, memory) =
            (wanted.to_string(), self.vcores.to_string(), self.container_memory_mb.to_string());
        let answer = self.channel.call(&["allocate", &wanted, &vcores, &memory, "0.5", &release], true).await?;
        let mut ended = Vec::new();
        for f in answer {
            match f[0].as_str() {
                "allocated" => {
                    tracing::info!(container = %f[1], node = %f.get(2).map(String::as_str).unwrap_or(""), "executor container started");
                }
                "completed" if f.len() >= 4 => {
                    let diagnostics = f.get(4).map(String::as_str).unwrap_or("").trim();
                    ended.push(Ended {
                        id: f[1].clone(),
                        why: format!("YARN container exit status {}: {diagnostics}", f[2]),
                        over_memory: f[3] == "1",
                    });
                }
                _ => tracing::warn!(line = ?f, "unexpected answer from the ApplicationMaster"),
            }
        }
        Ok(ended)
    }
}

#[tonic::async_trait]
impl Launcher for YarnLauncher {
    async fn reconcile(&mut self, target: u32, release: &[String]) -> Result<Vec<Ended>, LaunchError> {
        if let Some((host, port, tracking)) = self.unregistered.take() {
            let r = self.channel.register(&host, port, &tracking).await?;
            tracing::info!(
                attempt = r.attempt,
                max_memory_mb = r.max_memory_mb,
                max_vcores = r.max_vcores,
                "registered with YARN's ResourceManager"
            );
            if self.container_memory_mb > r.max_memory_mb && r.max_memory_mb > 0 {
                return Err(LaunchError::ResourceManager {
                    url: "yarn".into(),
                    message: format!(
                        "an executor container needs {} MiB (executors.memory plus executors.memory_overhead), over the cluster's largest, {} MiB (yarn.scheduler.maximum-allocation-mb)",
                        self.container_memory_mb, r.max_memory_mb
                    ),
                });
            }
        }
        self.allocate(target, release).await
    }

    async fn stop(&mut self, _grace: Duration) {
        // The executors were told to shut down and exit by themselves; give up the rest.
        if let Err(e) = self.allocate(0, &[]).await {
            tracing::warn!(error = %e, "could not release the executor containers");
        }
    }

    async fn finish(&mut self, ok: bool, diagnostics: &str) {
        let status = if ok { "SUCCEEDED" } else { "FAILED" };
        if let Err(e) = self.channel.call(&["finish", status, diagnostics], false).await {
            tracing::warn!(error = %e, "could not report the application's end to YARN");
        }
    }
}
