//! One streaming query: start executors, then plan, log, dispatch and commit micro-batches until
//! stopped (or, with `available_now`, until what was there at the start is processed).
//!
//! This module wires a query together (checkpoint, broker, metrics, the driver's gRPC server,
//! executors) and takes it down; [`batch`] is the loop and one batch's steps, [`recovery`]
//! where a (re)started query begins, [`report`] the metrics, progress records and summary of a
//! committed batch, [`targets`] the Prometheus target file.

pub mod batch;
mod recovery;
mod report;
mod targets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use embedstream_core::auth::ClusterToken;
use embedstream_core::tls::Tls;
use embedstream_core::{telemetry, JobSpec};
use embedstream_proto::pb::driver_service_server::DriverServiceServer;
use embedstream_proto::pb::query_admin_server::QueryAdminServer;
use embedstream_proto::pb::ShutdownRequest;
use embedstream_proto::serve::{Caller, GrpcServer};
use serde::Serialize;
use tokio::sync::watch;

use self::batch::Query;
use self::report::Reporter;
use self::targets::Targets;
use crate::admin::{AdminService, Control};
use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::executors::ExecutorRegistry;
use crate::launcher::{self, DriverEndpoints, LaunchError, Launcher, LocalLauncher};
use crate::metrics::DriverMetrics;
use crate::planner::DataLoss;
use crate::scheduler::{Scheduler, SchedulerError};
use crate::service::DriverServiceImpl;
use crate::source::{KafkaSource, SourceError};
use embedstream_sinks::CommitError;

/// How long executors may take to start and load their model.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the driver looks for ended executors and reconciles their number with the target.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Secret(#[from] embedstream_core::spec::SecretError),
    #[error(transparent)]
    Spec(#[from] embedstream_core::spec::SpecError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("data loss (set source.fail_on_data_loss = false to skip lost offsets): {0}")]
    DataLoss(#[from] DataLoss),
    #[error("job spec: `source.starting_offsets`: {0}")]
    StartingOffsets(String),
    #[error("driver service: {0}")]
    Service(String),
    #[error(transparent)]
    ModelVersion(#[from] embedstream_core::model_version::VersionError),
}

/// What a query did, printed by `embedstream run` when it ends.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QuerySummary {
    pub query_id: String,
    pub batches: u64,
    pub input_rows: u64,
    pub embeddings: u64,
    pub dead_letters: u64,
    pub task_retries: u64,
    /// Records skipped because their input was unchanged (`skip_unchanged`).
    pub unchanged: u64,
    /// From the first task dispatched to the last batch committed (with a processing-time
    /// trigger, the waits between batches too).
    pub processing_seconds: f64,
    /// `embeddings` over `processing_seconds`.
    pub embeddings_per_second: f64,
    /// The batches' own time, plan to commit, summed: what processing took, idle time left out.
    pub busy_seconds: f64,
    /// `embeddings` over `busy_seconds`: the rate while there was work, whatever the trigger.
    pub embeddings_per_busy_second: f64,
    /// From the batch loop's start (the executors started) to the query's end.
    pub wall_seconds: f64,
}

/// How a driver is set up: where it listens and how it gets executors.
pub struct DriverOptions {
    /// Where the driver serves DriverService and QueryAdmin (port 0 picks one).
    pub listen: SocketAddr,
    /// Required on every call when set.
    pub token: ClusterToken,
    /// The driver's servers (gRPC, /metrics) and its calls to executors use it.
    pub tls: Tls,
    /// When `listen`'s port is taken, the next ones tried (Spark's `spark.port.maxRetries`).
    pub port_retries: u16,
    /// The file of the token a local query made for itself, named in `driver.json`.
    pub own_token_file: Option<PathBuf>,
}

impl DriverOptions {
    pub fn local(token: ClusterToken, tls: Tls) -> DriverOptions {
        DriverOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token,
            tls,
            port_retries: 0,
            own_token_file: None,
        }
    }
}

/// Binds `listen`, or the first free one of the `retries` ports after it (port 0: any).
async fn bind(listen: SocketAddr, retries: u16) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for n in 0..=if listen.port() == 0 { 0 } else { retries } {
        let Some(port) = listen.port().checked_add(n) else { break };
        match tokio::net::TcpListener::bind(SocketAddr::new(listen.ip(), port)).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

/// The page's URL: the metrics listener's address, or with the driver's own host where the
/// listener is on every interface (`0.0.0.0:9090` is no address to link to).
fn page_url(metrics: std::net::SocketAddr, driver: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = if metrics.ip().is_unspecified() { driver.ip() } else { metrics.ip() };
    format!("{scheme}://{}/", std::net::SocketAddr::new(host, metrics.port()))
}

/// Runs `spec` with `executors.count` local executor processes started from `exe`, until `stop`
/// turns true (after the batch in flight) or an `available_now` query has caught up.
pub async fn run_local(spec: JobSpec, exe: PathBuf, stop: watch::Receiver<bool>) -> Result<QuerySummary, DriverError> {
    let token =
        ClusterToken::load(spec.security.token_file.as_deref()).map_err(|e| DriverError::Service(e.to_string()))?;
    // Without a configured token the query makes its own, so that no other local user can
    // register an executor, run a task or read texts with Flight.
    let generated = !token.is_set();
    let token = if token.is_set() { token } else { ClusterToken::generate() };
    let tls = spec.security.tls()?;
    let tls_files = spec.security.tls_files();
    let private = launcher::private_token_file(&token).map_err(|e| DriverError::Service(e.to_string()))?;
    let (cores, token_file) = (spec.executors.cores, Some(private.path().join("token")));
    // Executors get the spec's secrets from the driver, not from the variables they came from.
    let scrub = spec.secret_env_vars();
    let calls_tls = tls.clone();
    let launcher = move |driver: &DriverEndpoints| -> Box<dyn Launcher> {
        let driver_url = calls_tls.url(&driver.grpc.to_string());
        Box::new(LocalLauncher::new(exe, &driver_url, cores, token_file).without_env(scrub).with_tls(tls_files))
    };
    let listen = spec.monitoring.driver_listen.parse().expect("validated");
    let own_token_file = generated.then(|| private.path().join("token"));
    let options = DriverOptions { listen, token, tls, port_retries: 16, own_token_file };
    let summary = run_query(spec, options, launcher, stop).await;
    drop(private);
    summary
}

/// Runs `spec` with executors from the launcher that `make_launcher` builds for the driver's
/// address, until `stop` turns true or the admin API stops it (after the batch in flight), or an
/// `available_now` query has caught up.
pub async fn run_query(
    mut spec: JobSpec,
    options: DriverOptions,
    make_launcher: impl FnOnce(&DriverEndpoints) -> Box<dyn Launcher>,
    mut stop: watch::Receiver<bool>,
) -> Result<QuerySummary, DriverError> {
    let secrets = spec.read_secrets()?;
    let probed = (spec.clone(), secrets.clone());
    tokio::task::spawn_blocking(move || crate::source::probe_clusters(&probed.0, &probed.1))
        .await
        .expect("the probe does not panic")?;
    let checkpoint = Checkpoint::open(&spec.checkpoint_location)?;
    // Avro fields written as columns take their types from the registry's latest schema where
    // `[input.types]` does not give one: the executors get the spec with them.
    let registry_password = spec.registry_password_value(&secrets)?;
    embedstream_sinks::type_fields_from_registry(&mut spec, registry_password).await.map_err(CommitError::from)?;
    // Every model's version, from its files' bytes: an output that holds vectors of another
    // version is refused now (or its rows replaced, `sink.on_model_change`).
    let versions = {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || embedstream_core::model_version::model_versions(&spec))
            .await
            .expect("hashing the model files does not panic")?
    };
    tracing::info!(?versions, "model versions");
    embedstream_sinks::versions::check(
        &spec,
        &versions,
        spec.sink_client(&secrets)?,
        spec.sink_password_value(&secrets)?,
        &embedstream_sinks::versions::Start {
            fresh: matches!(checkpoint.recover()?, checkpoint::Recovery::Fresh),
            earliest: matches!(&spec.source.starting_offsets, embedstream_core::spec::StartingOffsets::Named(n) if n == "earliest"),
        },
    )
    .await
    .map_err(CommitError::from)?;
    // A Kafka sink's Avro output schema is registered now: a registry that refuses it (an
    // incompatible subject) stops the query before anything starts, naming the subject.
    embedstream_sinks::register_avro_output(&spec, registry_password).await.map_err(CommitError::from)?;
    // The sink's committer reaches its server now (pgvector): a wrong password, or a table
    // another query's checkpoint writes, stops the query before anything starts.
    let committer = embedstream_sinks::committer(&spec, spec.sink_password_value(&secrets)?, checkpoint.query_id())
        .await
        .map_err(CommitError::from)?;
    // progress.jsonl, driver.json and monitoring/: beside the logs, or on this machine when the
    // logs are on HDFS.
    let local_state = spec.local_state_dir();
    std::fs::create_dir_all(&local_state)
        .map_err(|source| crate::checkpoint::CheckpointError::Io { path: local_state.clone(), source })?;
    let source = Arc::new(KafkaSource::new(&spec, &secrets)?);
    let registry = Arc::new(ExecutorRegistry::default());
    let metrics = Arc::new(DriverMetrics::new(&spec.name));
    let control = Control::new(spec.executors.count);
    let progress = crate::progress::ProgressLog::new(&local_state);
    let page = crate::page::router(Arc::new(crate::page::PageState {
        query: spec.name.clone(),
        query_id: checkpoint.query_id().to_string(),
        trigger: match (&spec.trigger.processing_time, spec.trigger.available_now) {
            (_, true) => "available now".to_string(),
            (Some(every), _) => format!("every {every}"),
            (None, false) => "as soon as data is there".to_string(),
        },
        trigger_interval: spec.trigger.interval(),
        sink: crate::page::describe_sink(&spec.sink),
        started: std::time::Instant::now(),
        progress: progress.shared(),
        control: control.clone(),
        registry: registry.clone(),
        // A token the query made for itself guards its gRPC services from other local users; the
        // page shows what /metrics shows, and asks for a token only when one is configured.
        token: if options.own_token_file.is_some() { ClusterToken::default() } else { options.token.clone() },
        tls: options.tls.serves_tls(),
    }));
    let metrics_addr =
        telemetry::serve_metrics_with(&spec.monitoring.metrics_listen, metrics.registry.clone(), &options.tls, page)
            .await
            .map_err(|e| DriverError::Service(format!("metrics endpoint {}: {e}", spec.monitoring.metrics_listen)))?;
    metrics.executors_requested.set(spec.executors.count as i64);
    metrics.trigger_interval.set(spec.trigger.interval().as_secs_f64());
    metrics.last_batch_timestamp.set(checkpoint::now_ms() as f64 / 1000.0);
    let targets = Targets {
        checkpoint: local_state.clone(),
        query: spec.name.clone(),
        driver: metrics_addr.to_string(),
        https: options.tls.serves_tls(),
    };
    targets.write(&registry);

    // A signal (or the caller) stops the query the same way the admin API does.
    let forward = control.clone();
    let _forward_stop = AbortOnDrop(tokio::spawn(async move {
        if stop.wait_for(|&s| s).await.is_ok() {
            forward.request_stop();
        }
    }));

    let listener = bind(options.listen, options.port_retries).await.map_err(|e| {
        let tried = match options.port_retries {
            0 => options.listen.to_string(),
            n => format!("{} and the {n} ports after it", options.listen),
        };
        DriverError::Service(format!("monitoring.driver_listen: cannot listen on {tried}: {e}"))
    })?;
    let addr = listener.local_addr().map_err(|e| DriverError::Service(e.to_string()))?;
    let record = embedstream_core::driver_record::DriverRecord {
        query: spec.name.clone(),
        query_id: checkpoint.query_id().to_string(),
        address: addr.to_string(),
        pid: std::process::id(),
        checkpoint: local_state.clone(),
        tls: options.tls.serves_tls(),
        token_file: options.own_token_file.clone(),
        started_ms: checkpoint::now_ms(),
    };
    if let Err(e) = record.write() {
        tracing::warn!(error = %e, "cannot write driver.json (admin commands given the job spec will not find this driver)");
    }
    let hadoop_tokens = embedstream_core::hadoop_tokens::Credentials::default();
    let service = DriverServiceImpl {
        registry: registry.clone(),
        caller: Caller { token: options.token.clone(), tls: options.tls.clone() },
        job_spec_toml: spec.to_toml(),
        secrets,
        query_id: checkpoint.query_id().to_string(),
        hadoop_tokens: hadoop_tokens.clone(),
    };
    let admin = AdminService {
        query: spec.name.clone(),
        query_id: checkpoint.query_id().to_string(),
        checkpoint: local_state.clone(),
        control: control.clone(),
        registry: registry.clone(),
    };
    let (server_stop, server_stopped) = watch::channel(false);
    let server = tokio::spawn(
        GrpcServer::new(options.token.clone(), options.tls.clone())
            .guarded(DriverServiceServer::new(service))
            .guarded(QueryAdminServer::new(admin))
            .serve(listener, async move {
                let mut s = server_stopped;
                let _ = s.wait_for(|&v| v).await;
            }),
    );
    tracing::info!(
        query = %spec.name, query_id = checkpoint.query_id(), driver = %addr, metrics = %metrics_addr,
        "query starting"
    );

    let launcher = Arc::new(tokio::sync::Mutex::new(make_launcher(&DriverEndpoints {
        grpc: addr,
        metrics: metrics_addr,
        page: page_url(metrics_addr, addr, options.tls.serves_tls()),
        hadoop_tokens,
    })));
    let result = async {
        launcher::start(launcher.lock().await.as_mut(), &registry, spec.executors.count, REGISTRATION_TIMEOUT).await?;
        targets.write(&registry);
        metrics.executors.set(registry.live().len() as i64);
        let mut reconciler =
            tokio::spawn(launcher::reconcile(launcher.clone(), registry.clone(), control.clone(), RECONCILE_INTERVAL));
        let mut query = Query {
            spec: &spec,
            checkpoint: &checkpoint,
            source: source.clone(),
            scheduler: Scheduler::new(registry.clone(), {
                let spec = spec.clone();
                move |records| spec.task_deadline(records)
            })
            .with_locality_wait(spec.locality_wait()),
            committer,
            reporter: Reporter::new(&spec, checkpoint.query_id(), metrics.clone(), progress, versions),
            targets: &targets,
            control: control.clone(),
        };
        let run = query.run();
        tokio::pin!(run);
        // The reconciler ends by itself only once the query is stopping (then the batch loop
        // ends after its batch), or with an error that ends the query.
        let first = tokio::select! {
            result = &mut run => Some(result),
            ended = &mut reconciler => match ended {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(Err(e.into())),
                Err(e) => Some(Err(DriverError::Service(format!("executor reconciler: {e}")))),
            },
        };
        let result = match first {
            Some(result) => result,
            None => run.await,
        };
        reconciler.abort();
        result
    }
    .await;

    control.request_stop();
    // Want no executors before telling them to go, so that none that exits is replaced.
    let _ = launcher.lock().await.reconcile(0, &[]).await;
    for exec in registry.live() {
        let _ = exec.client().shutdown(ShutdownRequest {}).await;
    }
    {
        let mut launcher = launcher.lock().await;
        launcher.stop(Duration::from_secs(15)).await;
        let diagnostics = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
        launcher.finish(result.is_ok(), &diagnostics).await;
    }
    let _ = server_stop.send(true);
    let _ = server.await;
    record.remove_running();
    result
}

/// Aborts a background task when dropped, on every way out of the scope that owns it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
