//! The commands that talk to a running cluster or query over gRPC: `submit` (to the resource
//! manager), the driver container's entry (`driver`), and the admin commands (`status`,
//! `progress`, `stop`, `pause`, `resume`, `scale`) that reach the RM and a query's driver.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use embedstream_core::argv::DriverCommand;
use embedstream_core::auth::ClusterToken;
use embedstream_core::spec::parse_memory_mb;
use embedstream_core::tls::{Naming, Role, TlsFiles};
use embedstream_core::JobSpec;
use embedstream_driver::launcher::resource_manager::{rm_client, AppSecret, ResourceManagerLauncher, RmClient};
use embedstream_driver::launcher::{DriverEndpoints, Launcher};
use embedstream_driver::DriverOptions;
use embedstream_proto::pb::query_admin_client::QueryAdminClient;
use embedstream_proto::pb::{
    ApplicationReport, ApplicationState, ContainerState, ListApplicationsRequest, ListNodesRequest, PauseRequest,
    ProgressRequest, QueryStatusRequest, Resources, ResumeRequest, ScaleRequest, StopRequest, SubmitApplicationRequest,
};
use embedstream_proto::serve::Caller;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Where a command sends its calls: `rm://HOST:PORT` (a cluster), `yarn` (Hadoop YARN) or
/// `local[N]` (this machine).
#[derive(Debug, Clone, PartialEq)]
pub enum Master {
    Rm(String),
    /// Apache Hadoop YARN, as HADOOP_CONF_DIR configures it.
    Yarn,
    Local(u32),
}

pub fn parse_master(text: &str) -> Result<Master, String> {
    if let Some(addr) = text.strip_prefix("rm://") {
        if addr.is_empty() {
            return Err("rm:// needs HOST:PORT".into());
        }
        return Ok(Master::Rm(addr.to_string()));
    }
    if text == "yarn" {
        return Ok(Master::Yarn);
    }
    if let Some(n) = text.strip_prefix("local[").and_then(|r| r.strip_suffix(']')) {
        return n.parse::<u32>().ok().filter(|&n| n > 0).map(Master::Local).ok_or("local[N] needs N >= 1".into());
    }
    Err(format!("`{text}` is none of rm://HOST:PORT, yarn and local[N]"))
}

/// The cluster token from `EMBEDSTREAM_TOKEN` or `file`.
pub fn token(file: Option<&Path>) -> Result<ClusterToken> {
    Ok(ClusterToken::load(file)?)
}

/// A local query named by its job spec (a file) or its checkpoint (a directory), as admin
/// commands take it instead of `--driver`: its driver's address and how to call it (the token
/// and TLS flags first, then the spec's `[security]`, then the token file the query made).
/// `None`: `arg` names no file or directory (an application id).
pub fn local_query(arg: &str, token_file: Option<&Path>, tls: &TlsFiles) -> Result<Option<(String, Caller)>> {
    use embedstream_core::driver_record::DriverRecord;
    let path = Path::new(arg);
    if !path.exists() {
        return Ok(None);
    }
    let (spec, checkpoint) = match path.is_dir() {
        true => (None, path.to_path_buf()),
        false => {
            let spec = JobSpec::from_file(path)?;
            let checkpoint = spec.checkpoint_location.clone();
            (Some(spec), checkpoint)
        }
    };
    let record = DriverRecord::read(&checkpoint)
        .with_context(|| format!("{}: no driver has run here yet", DriverRecord::path(&checkpoint).display()))?;
    if !record.alive() {
        bail!("query {} is not running (its driver, pid {}, was at {})", record.query, record.pid, record.address);
    }
    let mut token = ClusterToken::load(token_file.or(spec.as_ref().and_then(|s| s.security.token_file.as_deref())))?;
    if !token.is_set() {
        if let Some(own) = &record.token_file {
            token = ClusterToken::load(Some(own))?;
        }
    }
    let tls = match (tls.is_empty(), &spec) {
        (false, _) => tls.load(Role::Client, Naming::Flags)?,
        (true, Some(spec)) => spec.security.tls_files().load(Role::Client, Naming::Spec)?,
        (true, None) if record.tls => {
            bail!("query {} serves TLS: give --tls-ca (and --tls-cert, --tls-key)", record.query)
        }
        (true, None) => embedstream_core::tls::Tls::plaintext(),
    };
    Ok(Some((record.address, Caller { token, tls })))
}

/// `embedstream list`: the queries running on this machine (this user's), from their records.
pub fn list_local() {
    let records = embedstream_core::driver_record::DriverRecord::running();
    if records.is_empty() {
        eprintln!("no query is running here (for this user)");
        return;
    }
    out!("{:<20} {:<38} {:<22} {:>8}  CHECKPOINT", "QUERY", "QUERY ID", "DRIVER", "PID");
    for r in records {
        out!("{:<20} {:<38} {:<22} {:>8}  {}", r.query, r.query_id, r.address, r.pid, r.checkpoint.display());
    }
}

/// The caller of an admin command: the token from `EMBEDSTREAM_TOKEN` or `token_file`, and
/// the TLS of the `--tls-*` flags.
pub fn caller(token_file: Option<&Path>, tls: &TlsFiles) -> Result<Caller> {
    Ok(Caller { token: token(token_file)?, tls: tls.load(Role::Client, Naming::Flags)? })
}

fn rm(address: &str, caller: &Caller) -> Result<RmClient> {
    Ok(rm_client(address, caller)?)
}

const RM: &str = "resource manager";
const DRIVER: &str = "driver";

/// A call's answer, or one line that says what went wrong with the `what` at `address`:
/// unreachable (and why), too slow, the token refused, or the server's own message; never
/// tonic's debug dump of the error chain.
trait Answer<T> {
    fn answer(self, what: &str, address: &str) -> Result<T>;
}

impl<T> Answer<T> for Result<tonic::Response<T>, tonic::Status> {
    fn answer(self, what: &str, address: &str) -> Result<T> {
        self.map(tonic::Response::into_inner).map_err(|status| call_failed(what, address, &status))
    }
}

fn call_failed(what: &str, address: &str, status: &tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let message = status.message();
    match status.code() {
        Code::Unauthenticated => anyhow::anyhow!(
            "the {what} at {address} refused the call: {message} (the token comes from EMBEDSTREAM_TOKEN or --token-file)"
        ),
        Code::PermissionDenied => anyhow::anyhow!("the {what} at {address} refused the call: {message}"),
        Code::DeadlineExceeded | Code::Cancelled => {
            anyhow::anyhow!("the {what} at {address} did not answer in time ({message})")
        }
        Code::Unavailable | Code::Unknown | Code::Internal => match transport_cause(status) {
            Some(cause) => anyhow::anyhow!("cannot reach the {what} at {address}: {cause}"),
            None if status.code() == Code::Unavailable => {
                anyhow::anyhow!("cannot reach the {what} at {address}: {message}")
            }
            None => anyhow::anyhow!("the {what} at {address}: {message}"),
        },
        _ => anyhow::anyhow!("the {what} at {address}: {message}"),
    }
}

/// What ended a call at the transport (a refused connection, a failed TLS handshake), in
/// words: the innermost error of the chain, without its errno.
fn transport_cause(status: &tonic::Status) -> Option<String> {
    std::error::Error::source(status).map(innermost_in_words)
}

/// The innermost error of `error`'s chain, in words.
fn innermost_in_words(mut error: &(dyn std::error::Error + 'static)) -> String {
    while let Some(inner) = error.source() {
        error = inner;
    }
    in_words(&error.to_string())
}

/// "Connection refused (os error 111)" -> "connection refused".
fn in_words(text: &str) -> String {
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text,
    };
    // A capitalised first word ("Connection") is lowered; a name ("UnknownIssuer") is kept.
    let first = text.split_whitespace().next().unwrap_or_default();
    let mut chars = first.chars();
    let capitalised = chars.next().is_some_and(char::is_uppercase) && chars.all(char::is_lowercase);
    match capitalised {
        true => text[..1].to_lowercase() + &text[1..],
        false => text.to_string(),
    }
}

type AdminClient = QueryAdminClient<InterceptedService<Channel, ClusterToken>>;

async fn admin(driver: &str, caller: &Caller) -> Result<AdminClient> {
    let channel = caller
        .endpoint(driver)
        .with_context(|| format!("--driver {driver}: not HOST:PORT"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the driver at {driver}: {}", innermost_in_words(&e)))?;
    Ok(QueryAdminClient::with_interceptor(channel, caller.token.clone()))
}

async fn application(rm: &mut RmClient, address: &str, app_id: &str) -> Result<ApplicationReport> {
    let apps = rm.list_applications(ListApplicationsRequest {}).await.answer(RM, address)?.applications;
    apps.into_iter().find(|a| a.app_id == app_id).with_context(|| format!("no application {app_id}"))
}

fn app_state(a: &ApplicationReport) -> ApplicationState {
    ApplicationState::try_from(a.state).unwrap_or(ApplicationState::Unspecified)
}

/// `embedstream submit JOB --master rm://ADDR [--wait]`: prints the application id; with
/// `--wait`, follows the application and fails unless it finishes. The RM is called over the
/// TLS of the `--tls-*` flags, or else of the spec's `[security] tls_*`.
pub async fn submit(
    (job, conf): (&Path, &[String]),
    master: &str,
    wait: bool,
    (driver_cores, driver_memory): (u32, &str),
    tls: &TlsFiles,
) -> Result<()> {
    // The spec is checked here first, so a bad one is refused before anything starts.
    refuse_relative_outputs(job)?;
    let spec = JobSpec::from_file_with(job, conf)?;
    spec.check_files()?;
    let tls = match tls.is_empty() {
        false => tls.load(Role::Client, Naming::Flags)?,
        true => spec.security.tls_files().load(Role::Client, Naming::Spec)?,
    };
    // The same token the driver will use: EMBEDSTREAM_TOKEN, or the spec's `security.token_file`.
    let caller = Caller { token: token(spec.security.token_file.as_deref())?, tls };
    let Master::Rm(address) = parse_master(master).map_err(anyhow::Error::msg)? else {
        unreachable!("local[N] is run by the caller")
    };
    let memory_mb = parse_memory_mb(driver_memory).with_context(|| format!("--driver-memory `{driver_memory}`"))?;
    let mut rm = rm(&address, &caller)?;
    let submitted = rm
        .submit_application(SubmitApplicationRequest {
            name: spec.name.clone(),
            job_spec_toml: spec.to_toml(),
            driver_resources: Some(Resources { vcores: driver_cores, memory_mb }),
        })
        .await
        .answer(RM, &address)?;
    let (app_id, secret) = (submitted.app_id, submitted.app_secret);
    if !secret.is_empty() {
        let path = save_app_secret(&address, &app_id, &secret)?;
        eprintln!("{app_id}: its driver takes the application's secret, kept in {} (0600)", path.display());
    }
    out!("{app_id}");
    if !wait {
        return Ok(());
    }
    let mut last = ApplicationState::Unspecified;
    loop {
        match application(&mut rm, &address, &app_id).await {
            Ok(app) => {
                let state = app_state(&app);
                if state != last {
                    eprintln!("{app_id}: {}", state.as_str_name());
                    last = state;
                }
                match state {
                    ApplicationState::Finished => return Ok(()),
                    ApplicationState::Failed | ApplicationState::Killed => {
                        bail!("{app_id} {}: {}", state.as_str_name(), app.diagnostics)
                    }
                    _ => {}
                }
            }
            // The RM may be restarting: keep following.
            Err(e) => tracing::warn!(error = %e, "cannot read the application's state; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A relative checkpoint or table path is resolved against the spec's folder on this machine,
/// which a driver on another node does not have: `submit` wants them absolute (on storage every
/// node shares).
fn refuse_relative_outputs(job: &Path) -> Result<()> {
    let text = std::fs::read_to_string(job).with_context(|| format!("cannot read {}", job.display()))?;
    let table: toml::Table = text.parse().map_err(|e| anyhow::anyhow!("{}: {e}", job.display()))?;
    let checkpoint = table.get("checkpoint_location").and_then(|v| v.as_str());
    let sink = table.get("sink").and_then(|s| s.get("path")).and_then(|v| v.as_str());
    for (key, value) in [("checkpoint_location", checkpoint), ("sink.path", sink)] {
        if let Some(v) = value.filter(|v| Path::new(v).is_relative()) {
            bail!(
                "job spec: `{key}`: `{v}` is relative; on a cluster the driver runs on another node, so give an \
                 absolute path on storage every node shares"
            );
        }
    }
    Ok(())
}

/// The driver container's entry: the job spec comes in `EMBEDSTREAM_JOB_TOML`, executors from
/// the RM; its TLS files are its node agent's, its application's secret in the file the node
/// agent wrote.
pub async fn driver_container(command: DriverCommand) -> Result<()> {
    let DriverCommand { rm: rm_address, app_id, listen, app_secret_file, tls } = command;
    let listen: SocketAddr = listen.parse().with_context(|| format!("--listen {listen}: not HOST:PORT"))?;
    let tls = tls.load(Role::Peer, Naming::Flags)?;
    let app_secret = match app_secret_file {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--app-secret-file {}: cannot read it", path.display()))?;
            AppSecret(text.lines().next().unwrap_or_default().trim().to_string())
        }
        None => AppSecret::default(),
    };
    let toml = std::env::var(embedstream_cluster::rm::JOB_TOML_ENV)
        .with_context(|| format!("{} is not set (the node agent sets it)", embedstream_cluster::rm::JOB_TOML_ENV))?;
    let spec = JobSpec::from_toml(&toml)?;
    spec.check_files()?;
    let token = ClusterToken::load(spec.security.token_file.as_deref())?;
    let client = rm(&rm_address, &Caller { token, tls: tls.clone() })?;
    // The cluster token reaches the RM alone: the driver's own services (DriverService for its
    // executors, QueryAdmin and the page for the submitter) and its calls to its executors take
    // the application's secret. An RM that issued none leaves the driver on the cluster token.
    let own = match &app_secret.0 {
        secret if !secret.is_empty() => ClusterToken::application(secret),
        _ => ClusterToken::load(spec.security.token_file.as_deref())?,
    };
    let resources = Resources { vcores: spec.executors.cores, memory_mb: spec.executors.memory_mb() };
    let launcher = move |driver: &DriverEndpoints| -> Box<dyn Launcher> {
        Box::new(ResourceManagerLauncher {
            rm: client,
            rm_address,
            app_id,
            driver_address: driver.grpc.to_string(),
            driver_page: driver.page.clone(),
            executor_resources: resources,
            app_secret,
        })
    };
    let summary = embedstream_driver::run_query(
        spec,
        DriverOptions { listen, token: own, tls, port_retries: 0, own_token_file: None },
        launcher,
        stop_on_signal(),
    )
    .await?;
    out!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// A stop signal that turns true on Ctrl-C or SIGTERM (a query stops after the batch in flight).
pub fn stop_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping (a query: after the batch in flight)");
        let _ = tx.send(true);
    });
    rx
}

/// Where `submit` keeps the secrets of the applications it submitted to the RM at `rm`, for
/// this user's later admin commands: `$XDG_CONFIG_HOME/embedstream/applications/<rm>/`, else
/// `~/.config/...` (0700), one file an application (0600).
pub fn app_secrets_dir(rm: &str) -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    let rm: String =
        rm.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    config.join("embedstream").join("applications").join(rm)
}

fn save_app_secret(rm: &str, app_id: &str, secret: &str) -> Result<PathBuf> {
    let dir = app_secrets_dir(rm);
    embedstream_core::durable::create_private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(app_id);
    embedstream_core::durable::write_private(&path, format!("{secret}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The secret `submit` kept for `app_id` of the RM at `rm`.
fn load_app_secret(rm: &str, app_id: &str) -> Result<ClusterToken> {
    let path = app_secrets_dir(rm).join(app_id);
    if !path.exists() {
        bail!(
            "{app_id}'s driver takes only its application's secret, and there is none in {}: run this where the \
             application was submitted, or give --driver HOST:PORT with --token-file naming a copy of that file",
            path.display()
        );
    }
    ClusterToken::application_from_file(&path).with_context(|| format!("{app_id}'s secret"))
}

/// Which driver an admin command talks to.
pub struct Target {
    pub master: Option<String>,
    pub driver: Option<String>,
    pub app: Option<String>,
}

impl Target {
    /// The driver's address, and how to call it: with `--driver`, as the caller; with an
    /// application, the RM (with the cluster token) names its driver, and the driver is called
    /// with the application's secret that `submit` kept.
    async fn driver(&self, caller: &Caller) -> Result<(String, Caller)> {
        if let Some(d) = &self.driver {
            return Ok((d.clone(), caller.clone()));
        }
        let (Some(master), Some(app)) = (&self.master, &self.app) else {
            bail!("name the query: APP_ID with --master rm://HOST:PORT, or --driver HOST:PORT");
        };
        let Master::Rm(address) = parse_master(master).map_err(anyhow::Error::msg)? else {
            bail!("--master local[N] has no admin API; use --driver HOST:PORT (the driver's log says it)");
        };
        let report = application(&mut rm(&address, caller)?, &address, app).await?;
        if report.driver_address.is_empty() {
            bail!("{app} has no driver yet ({})", app_state(&report).as_str_name());
        }
        let own = Caller { token: load_app_secret(&address, app)?, tls: caller.tls.clone() };
        Ok((report.driver_address, own))
    }
}

/// `embedstream status`: the cluster (nodes and applications) without a query, else the query's
/// status, executors and latest progress.
pub async fn status(target: Target, caller: Caller) -> Result<()> {
    if target.app.is_none() && target.driver.is_none() {
        let master = target.master.as_deref().context("--master rm://HOST:PORT (or --driver HOST:PORT)")?;
        let Master::Rm(address) = parse_master(master).map_err(anyhow::Error::msg)? else {
            bail!("--master rm://HOST:PORT")
        };
        let mut rm = rm(&address, &caller)?;
        let nodes = rm.list_nodes(ListNodesRequest {}).await.answer(RM, &address)?.nodes;
        out!("{:<24} {:<8} {:>12} {:>16} {:>10}", "NODE", "STATE", "VCORES USED", "MEMORY USED", "CONTAINERS");
        for n in nodes {
            let (cap, used) = (n.capacity.unwrap_or_default(), n.used.unwrap_or_default());
            out!(
                "{:<24} {:<8} {:>12} {:>16} {:>10}",
                n.node_id,
                if n.lost { "lost" } else { "running" },
                format!("{}/{}", used.vcores, cap.vcores),
                format!("{}/{} MiB", used.memory_mb, cap.memory_mb),
                n.containers.len()
            );
        }
        out!();
        out!("{:<28} {:<20} {:<10} {:<22} {:>10}", "APPLICATION", "NAME", "STATE", "DRIVER", "EXECUTORS");
        for a in rm.list_applications(ListApplicationsRequest {}).await.answer(RM, &address)?.applications {
            let executors = a
                .containers
                .iter()
                .filter(|c| c.role == "executor" && c.state == ContainerState::Running as i32)
                .count();
            let state = app_state(&a).as_str_name().trim_start_matches("APPLICATION_STATE_").to_lowercase();
            out!("{:<28} {:<20} {:<10} {:<22} {:>10}", a.app_id, a.name, state, a.driver_address, executors);
        }
        return Ok(());
    }
    let (driver, caller) = target.driver(&caller).await?;
    let mut client = admin(&driver, &caller).await?;
    let s = client.get_status(QueryStatusRequest {}).await.answer(DRIVER, &driver)?;
    out!(
        "query {} ({}) {}: {} batches committed, next batch {}",
        s.query,
        s.query_id,
        s.state().label(),
        s.batches_committed,
        s.next_batch_id
    );
    out!("committed offsets: {}", embedstream_proto::convert::offsets_from_pb(s.committed_offsets));
    out!("executors: {} wanted", s.executors_wanted);
    for e in s.executors {
        let draining = if e.draining { " (draining)" } else { "" };
        out!(
            "  {} at {} cores {} flight {} metrics {}{draining}",
            e.executor_id,
            e.address,
            e.cores,
            e.flight_address,
            e.metrics_address
        );
    }
    let progress = client.get_progress(ProgressRequest { last: 5 }).await.answer(DRIVER, &driver)?;
    for r in progress.records {
        let record = embedstream_driver::progress::ProgressRecord::from(r);
        out!("{}", serde_json::to_string(&record)?);
    }
    Ok(())
}

/// The latest `last` progress records of the query, from its driver.
pub async fn progress(
    target: &Target,
    caller: &Caller,
    last: u32,
) -> Result<Vec<embedstream_driver::progress::ProgressRecord>> {
    let (driver, caller) = target.driver(caller).await?;
    let records =
        admin(&driver, &caller).await?.get_progress(ProgressRequest { last }).await.answer(DRIVER, &driver)?.records;
    Ok(records.into_iter().map(Into::into).collect())
}

pub enum Action {
    Stop,
    Pause,
    Resume,
    Scale(u32),
}

pub async fn act(target: Target, action: Action, caller: Caller) -> Result<()> {
    let (driver, caller) = target.driver(&caller).await?;
    let mut client = admin(&driver, &caller).await?;
    match action {
        Action::Stop => {
            client.stop(StopRequest {}).await.answer(DRIVER, &driver)?;
            eprintln!("stopping after the batch in flight");
        }
        Action::Pause => {
            client.pause(PauseRequest {}).await.answer(DRIVER, &driver)?;
            eprintln!("paused: no new batch starts");
        }
        Action::Resume => {
            client.resume(ResumeRequest {}).await.answer(DRIVER, &driver)?;
            eprintln!("resumed");
        }
        Action::Scale(n) => {
            let r = client.scale(ScaleRequest { executors: n }).await.answer(DRIVER, &driver)?;
            eprintln!("executors wanted: {}", r.executors_wanted);
        }
    }
    Ok(())
}

/// `--state` default for the RM.
pub fn default_state_file() -> PathBuf {
    PathBuf::from("embedstream-rm-state.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_in_words() {
        assert_eq!(in_words("Connection refused (os error 111)"), "connection refused");
        assert_eq!(in_words("UnknownIssuer"), "UnknownIssuer");
        assert_eq!(in_words("invalid peer certificate: UnknownIssuer"), "invalid peer certificate: UnknownIssuer");
    }

    #[test]
    fn masters() {
        assert_eq!(parse_master("rm://10.0.0.1:8030"), Ok(Master::Rm("10.0.0.1:8030".into())));
        assert_eq!(parse_master("local[3]"), Ok(Master::Local(3)));
        assert!(parse_master("local[0]").is_err());
        assert_eq!(parse_master("yarn"), Ok(Master::Yarn));
        assert!(parse_master("yarn-cluster").unwrap_err().contains("none of rm://HOST:PORT, yarn and local[N]"));
    }
}
