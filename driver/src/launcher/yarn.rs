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

#[cfg(test)]
mod tests;

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
///
/// One thread reads every answer, for the channel's whole life, and hands each over whole: a
/// call that timed out (a slow `allocate`, as during a ResourceManager failover) leaves its
/// answer to come, and the next call takes it first, so a "container completed" line in a late
/// answer is never lost to a timed-out read, nor read as the answer to another request.
pub struct AmChannel {
    requests: Box<dyn Write + Send>,
    /// Whether each request sent and not yet answered ends its answer with `end`.
    expecting: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<bool>>>,
    answers: tokio::sync::mpsc::UnboundedReceiver<std::io::Result<Vec<Vec<String>>>>,
    /// Answers still to come to calls that timed out.
    outstanding: usize,
    /// The lines of late answers, for the next `allocate` to report.
    late: Vec<Vec<String>>,
    timeout: Duration,
}

impl AmChannel {
    pub fn stdio() -> AmChannel {
        AmChannel::over(std::io::BufReader::new(std::io::stdin()), std::io::stdout(), AM_TIMEOUT)
    }

    /// A channel that reads answers from `answers` and writes requests to `requests`, waiting
    /// `timeout` for each answer.
    pub fn over(
        answers: impl BufRead + Send + 'static,
        requests: impl Write + Send + 'static,
        timeout: Duration,
    ) -> AmChannel {
        let expecting = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::<bool>::new()));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let modes = expecting.clone();
        std::thread::spawn(move || {
            let mut lines = answers.lines();
            loop {
                let mut answer = Vec::new();
                // The answer's kind is known once its first line is here, which is after its
                // request (and that request's kind) was sent.
                let mut multi = None;
                let ended = loop {
                    match lines.next() {
                        None => break Err(std::io::Error::other("the ApplicationMaster closed the channel")),
                        Some(Err(e)) => break Err(e),
                        Some(Ok(line)) => {
                            let multi =
                                *multi.get_or_insert_with(|| modes.lock().unwrap().pop_front().unwrap_or(false));
                            let fields: Vec<String> =
                                line.trim_end_matches('\r').split('\t').map(str::to_string).collect();
                            if fields[0] == "end" {
                                break Ok(());
                            }
                            answer.push(fields);
                            if !multi {
                                break Ok(());
                            }
                        }
                    }
                };
                let closed = ended.is_err();
                if tx.send(ended.map(|()| answer)).is_err() || closed {
                    return;
                }
            }
        });
        AmChannel { requests: Box::new(requests), expecting, answers: rx, outstanding: 0, late: Vec::new(), timeout }
    }

    /// Sends one request; returns the answer's lines up to `end` (`multi`) or its one line.
    async fn call(&mut self, fields: &[&str], multi: bool) -> Result<Vec<Vec<String>>, LaunchError> {
        let gone = |e: String| LaunchError::ResourceManager { url: "yarn".into(), message: e };
        // First the answers of calls that timed out, in order: the master answers one request
        // at a time.
        while self.outstanding > 0 {
            match tokio::time::timeout(self.timeout, self.answers.recv()).await {
                Ok(Some(Ok(answer))) => {
                    self.outstanding -= 1;
                    self.late.extend(answer.into_iter().filter(|f| f[0] != "error"));
                }
                Ok(Some(Err(e))) => return Err(gone(e.to_string())),
                Ok(None) => return Err(gone("the ApplicationMaster closed the channel".into())),
                Err(_) => {
                    return Err(gone(format!(
                        "the ApplicationMaster has not answered an earlier request within {:?}",
                        self.timeout
                    )))
                }
            }
        }
        let request: Vec<String> = fields.iter().map(|f| f.replace(['\t', '\n', '\r'], " ")).collect();
        self.expecting.lock().unwrap().push_back(multi);
        let sent = writeln!(self.requests, "{}", request.join("\t")).and_then(|()| self.requests.flush());
        if let Err(e) = sent {
            return Err(gone(e.to_string()));
        }
        let answer = match tokio::time::timeout(self.timeout, self.answers.recv()).await {
            Ok(Some(Ok(answer))) => answer,
            Ok(Some(Err(e))) => return Err(gone(e.to_string())),
            Ok(None) => return Err(gone("the ApplicationMaster closed the channel".into())),
            Err(_) => {
                self.outstanding += 1;
                return Err(LaunchError::Slow { waited: self.timeout });
            }
        };
        if let Some(error) = answer.iter().find(|f| f[0] == "error") {
            // Lines before the error (containers started, others completed) still count.
            self.late.extend(answer.iter().filter(|f| f[0] != "error").cloned());
            return Err(gone(error.get(1).cloned().unwrap_or_default()));
        }
        Ok(answer)
    }

    /// Registers the master with the ResourceManager: where its driver and tracking page are;
    /// and tells the master what to add to each executor's command line (`executor_args`, a
    /// shell word list).
    pub async fn register(
        &mut self,
        host: &str,
        port: u16,
        tracking_url: &str,
        executor_args: &str,
    ) -> Result<Registered, LaunchError> {
        let answer = self.call(&["register", host, &port.to_string(), tracking_url, executor_args], false).await?;
        let f = answer.first().cloned().unwrap_or_default();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(Registered { max_memory_mb: num(1), max_vcores: num(2) as u32, attempt: num(3) as u32 })
    }
}

/// `word` as one word of a POSIX shell: in single quotes, each `'` written `'\''`. No tab or
/// line break can reach the channel (they would split its fields and lines).
fn shell_quoted(word: &str) -> String {
    let word = word.replace(['\t', '\n', '\r'], " ");
    format!("'{}'", word.replace('\'', "'\\''"))
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
    /// Flags every executor's command line gets (its TLS files), shell-quoted.
    executor_args: String,
    /// The newest delegation tokens, for the executors' heartbeats to carry.
    hadoop_tokens: embedstream_core::hadoop_tokens::Credentials,
}

impl YarnLauncher {
    /// A launcher for the driver at `driver`; it registers the master at its first reconcile.
    pub fn new(channel: AmChannel, driver: &DriverEndpoints, vcores: u32, container_memory_mb: u64) -> YarnLauncher {
        let tracking = driver.page.clone();
        let unregistered = Some((driver.grpc.ip().to_string(), driver.grpc.port(), tracking));
        YarnLauncher {
            channel,
            vcores,
            container_memory_mb,
            unregistered,
            executor_args: String::new(),
            hadoop_tokens: driver.hadoop_tokens.clone(),
        }
    }

    /// Adds `flags` to every executor's command line (YARN runs it with a shell: each is quoted).
    pub fn with_executor_flags(mut self, flags: Vec<String>) -> YarnLauncher {
        self.executor_args = flags.iter().map(|f| shell_quoted(f)).collect::<Vec<_>>().join(" ");
        self
    }

    /// The tokens the master wrote to `file` (`about`: their ids and expiry, for the log).
    fn take_tokens(&mut self, file: &str, about: &str) {
        let tokens = match std::fs::read(file) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(file, error = %e, "cannot read the master's renewed Hadoop delegation tokens");
                return;
            }
        };
        if let Err(e) = embedstream_core::hadoop_tokens::replace_token_file(&tokens) {
            tracing::error!(error = %e, "cannot replace this driver's Hadoop delegation tokens");
            return;
        }
        let version = self.hadoop_tokens.set(tokens);
        tracing::info!(
            version,
            tokens = about,
            "renewed Hadoop delegation tokens: the driver's now, the executors' at their next heartbeat"
        );
    }

    async fn allocate(&mut self, wanted: u32, release: &[String]) -> Result<Vec<Ended>, LaunchError> {
        let release = release.join(",");
        let (wanted, vcores, memory) =
            (wanted.to_string(), self.vcores.to_string(), self.container_memory_mb.to_string());
        let answer = self.channel.call(&["allocate", &wanted, &vcores, &memory, "0.5", &release], true).await;
        // Late answers first (they came before this one), then this one's.
        let mut lines = std::mem::take(&mut self.channel.late);
        let failed = match answer {
            Ok(answer) => {
                lines.extend(answer);
                None
            }
            Err(e) => Some(e),
        };
        let mut ended = Vec::new();
        let mut renewal_failed = None;
        for f in lines {
            match f[0].as_str() {
                "allocated" => {
                    tracing::info!(container = %f[1], node = %f.get(2).map(String::as_str).unwrap_or(""), "executor container started");
                }
                // The master renewed the application's delegation tokens (YARN with Kerberos):
                // they replace this process's token file, and go to the executors.
                "tokens" if f.len() >= 2 => self.take_tokens(&f[1], f.get(2).map(String::as_str).unwrap_or("")),
                // The master gave up renewing them before they expire: the query ends, saying so.
                "renewal-failed" if f.len() >= 3 => {
                    renewal_failed = Some(LaunchError::TokenRenewal { expires: f[1].clone(), why: f[2].clone() });
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
        if let Some(e) = renewal_failed {
            return Err(e);
        }
        match failed {
            // YARN has ended this attempt: the query must stop, not run on without it.
            Some(e) if e.to_string().contains("ApplicationAttemptNotFoundException") => Err(e),
            // A slow or failed allocate (a ResourceManager failing over, a NodeManager that
            // would not start a container) is the master's heartbeat missed once: carry on, as
            // the standalone launcher does; the containers it reports come with a later answer.
            Some(e) => {
                tracing::warn!(error = %e, "YARN allocate failed; carrying on");
                Ok(ended)
            }
            None => Ok(ended),
        }
    }
}

#[tonic::async_trait]
impl Launcher for YarnLauncher {
    async fn reconcile(&mut self, target: u32, release: &[String]) -> Result<Vec<Ended>, LaunchError> {
        if let Some((host, port, tracking)) = self.unregistered.take() {
            let r = self.channel.register(&host, port, &tracking, &self.executor_args).await?;
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
