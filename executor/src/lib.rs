//! The executor: a process that runs tasks for one driver.
//!
//! It fetches the job spec from the driver, loads the model, serves `ExecutorService` and
//! registers. Each ONNX model (text or image) runs in workers forked from one process that
//! loaded it ([`model`]: the session, the daemon, the workers, their wire and the fork), one
//! daemon per model; image models' inputs are fetched and preprocessed here ([`images`]). Each
//! task ([`task`]) goes through [`reader`] (Kafka range to an Arrow batch), the [`pipeline`] of
//! the job's models (fields read once, bad records to the dead-letter topic, every model's
//! vectors), and the sink (`embedstream_sinks`: Kafka or Parquet behind one trait, and the dead
//! letters). The first text model also answers Arrow Flight calls ([`flight`]) on the
//! executor's address.

pub mod flight;
pub mod images;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod reader;
pub mod records;
pub mod schemas;
pub mod task;
pub mod unchanged;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use embedstream_core::auth::ClusterToken;
use embedstream_core::health::{ExecutorHealth, WorkerHealth};
use embedstream_core::spec::{ChunkPooling, LongText, ModelEntry, SpecError};
use embedstream_core::tls::Tls;
use embedstream_core::{telemetry, JobSpec};
use embedstream_proto::convert::heartbeat_to_pb;
use embedstream_proto::pb::driver_service_client::DriverServiceClient;
use embedstream_proto::pb::executor_service_server::{ExecutorService, ExecutorServiceServer};
use embedstream_proto::pb::{
    task_status, GetJobSpecRequest, RegisterExecutorRequest, ShutdownRequest, ShutdownResponse, TaskDefinition,
    TaskStatus,
};
use embedstream_proto::serve::{self, GrpcServer};
use tokio::sync::{watch, Semaphore};
use tonic::{Request, Response, Status};

use crate::images::fetch::Fetcher;
use crate::images::pool::ImagePool;
use crate::metrics::ExecutorMetrics;
use crate::model::cache::{Cached, EmbeddingCache};
use crate::model::chunk::Chunked;
use crate::model::workers::{BatchLimits, WorkerPool, Workers};
use crate::model::ModelError;
use crate::pipeline::Backend;
use crate::reader::KafkaReader;
use embedstream_sinks::{DeadLetters, KafkaProducer, SinkContext, SinkError};

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Missed heartbeats after which an executor decides its driver is gone and exits.
const MAX_MISSED_HEARTBEATS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("driver {url}: {message}")]
    Driver { url: String, message: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Token(#[from] embedstream_core::auth::TokenError),
    #[error(transparent)]
    Tls(#[from] embedstream_core::tls::TlsError),
    #[error(transparent)]
    Secret(#[from] embedstream_core::spec::SecretError),
    #[error("executor service: {0}")]
    Serve(String),
    #[error(transparent)]
    Registry(#[from] schemas::registry::RegistryError),
    #[error(transparent)]
    ModelVersion(#[from] embedstream_core::model_version::VersionError),
}

pub struct ExecutorArgs {
    pub driver_url: String,
    pub executor_id: String,
    pub cores: u32,
    /// Where to serve ExecutorService; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The cluster token's file, when it is not in the environment.
    pub token_file: Option<PathBuf>,
    /// Its application's secret's file (a cluster's executor), which wins over any cluster token.
    pub app_secret_file: Option<PathBuf>,
    /// Its certificate, key and CA (read from `--tls-*`): it serves its ports and calls the
    /// driver with them.
    pub tls: Tls,
    /// ONNX Runtime shared library; default [`model::ort_library`].
    pub ort_library: Option<PathBuf>,
    /// The `embedstream` binary, re-executed as `model-daemon`.
    pub exe: PathBuf,
}

/// Runs an executor until the driver shuts it down or is gone.
pub async fn run(args: ExecutorArgs) -> Result<(), ExecutorError> {
    let driver_err = |message: String| ExecutorError::Driver { url: args.driver_url.clone(), message };
    // The token is needed before the job spec can be fetched. In a cluster it is the
    // application's secret (its node agent wrote the file); a local executor's comes from the
    // file its driver wrote, or the environment.
    let token = match &args.app_secret_file {
        Some(file) => ClusterToken::application_from_file(file)?,
        None => ClusterToken::load(args.token_file.as_deref())?,
    };
    let channel = serve::endpoint(&args.driver_url, &args.tls)
        .map_err(|e| driver_err(e.to_string()))?
        .connect()
        .await
        .map_err(|e| driver_err(e.to_string()))?;
    let mut driver = DriverServiceClient::with_interceptor(channel, token.clone());
    let job = driver
        .get_job_spec(GetJobSpecRequest { executor_id: args.executor_id.clone() })
        .await
        .map_err(|e| driver_err(e.to_string()))?
        .into_inner();
    let mut spec = JobSpec::from_toml(&job.job_spec_toml)?;
    let secrets = embedstream_proto::convert::secrets_from_pb(job.secrets);

    let lib = args.ort_library.clone().unwrap_or_else(model::ort_library);
    // The workers' sockets (and models fetched from HDFS) live in a directory of a random name
    // that only this user can enter (mode 0700), removed when the executor ends.
    let private = tempfile::Builder::new()
        .prefix(&format!("embedstream-{}-", args.executor_id))
        .tempdir()
        .map_err(|e| ExecutorError::Serve(format!("the workers' socket directory: {e}")))?;
    model::fetch_from_hdfs(&mut spec, private.path())?;
    spec.check_files()?;
    // Each model's name, for the metrics' `model` label (as the pipeline names them).
    let model_id = (spec.model_entries().iter()).map(|e| e.name().to_string()).collect::<Vec<_>>().join(",");
    let metrics = Arc::new(ExecutorMetrics::new(&spec.name, &args.executor_id, &model_id));
    // Each ONNX model has its own daemon and workers, its own socket directory; a fastText
    // model is loaded here. Image models share one fetcher: `fetch.concurrency` is the
    // executor's.
    let cores = args.cores as usize;
    let fetcher = Arc::new(Fetcher::new(spec.fetch.clone(), metrics.fetch.clone()));
    let mut pools: Pools = Vec::new();
    let mut backends = Vec::new();
    let mut flight_model: Option<(Arc<dyn model::Embed>, usize)> = None;
    for (i, entry) in spec.model_entries().iter().enumerate() {
        let socket_dir = private.path().join(format!("workers-{i}"));
        let backend = match entry {
            ModelEntry::TextOnnx(m) => {
                let pool = Arc::new(WorkerPool::start(&args.exe, m, cores, &lib, socket_dir).await?);
                let pids = format!("{:?}", pool.state().worker_pids);
                tracing::info!(executor = %args.executor_id, model = %entry.name(), dim = pool.dim(), worker_pids = %pids, "model workers ready");
                pools.push((entry.name().to_string(), ModelWorkers::Text(pool.clone())));
                match (m.long_text, m.chunk_pooling) {
                    (LongText::Chunk, ChunkPooling::Each) => Backend::Chunks(Arc::new(Chunked::new(pool, m)?)),
                    (long_text, _) => {
                        let texts: Arc<dyn model::Embed> = match long_text {
                            LongText::Truncate => pool,
                            LongText::Chunk => Arc::new(Chunked::new(pool, m)?),
                        };
                        // Validated: no cache with one output a chunk.
                        match &m.cache_bytes {
                            None => Backend::Texts(texts),
                            Some(size) => {
                                let bytes = size.get().0 as usize * 1024 * 1024;
                                let cache = EmbeddingCache::new(bytes, metrics.cache(entry.name()));
                                Backend::Cached(Arc::new(Cached::new(texts, cache)))
                            }
                        }
                    }
                }
            }
            ModelEntry::ImageOnnx(m) => {
                let limits = BatchLimits { batch_size: m.batch_size, per_item: m.worker_timeout_per_image.get() };
                let workers = Workers::start(&args.exe, entry, cores, &lib, socket_dir, limits).await?;
                let pids = format!("{:?}", workers.state().worker_pids);
                tracing::info!(executor = %args.executor_id, model = %entry.name(), dim = workers.dim(), worker_pids = %pids, "image model workers ready");
                let pool = Arc::new(ImagePool::new(workers, fetcher.clone(), m, cores, metrics.fetch.clone()));
                pools.push((entry.name().to_string(), ModelWorkers::Image(pool.clone())));
                Backend::Images(pool)
            }
            ModelEntry::FastText(f) => {
                let loaded = model::fasttext::FastTextModel::load(f, cores)?;
                tracing::info!(executor = %args.executor_id, model = %entry.name(), dim = model::Embed::dim(&loaded), "fastText model loaded");
                Backend::Texts(Arc::new(loaded))
            }
            ModelEntry::Combine(_) => continue,
        };
        // Flight embeds a text into one vector: a chunked model's is its chunks' mean.
        let embeds_texts: Option<Arc<dyn model::Embed>> = match &backend {
            Backend::Texts(embed) => Some(embed.clone()),
            Backend::Cached(cached) => Some(cached.clone()),
            Backend::Chunks(chunked) => Some(chunked.clone()),
            Backend::Images(_) => None,
        };
        if let (Some(embed), None) = (embeds_texts, &flight_model) {
            flight_model = Some((embed, entry.max_text_bytes().unwrap_or(0)));
        }
        backends.push(backend);
    }
    // A combine entry's ONNX head runs in this process: ONNX Runtime is loaded here too.
    let heads = spec.model_entries().iter().any(|e| matches!(e, ModelEntry::Combine(c) if c.onnx.is_some()));
    if heads {
        model::init_runtime(&lib)?;
    }
    // Every vector carries its model's version: the model files' bytes and the keys that change
    // the vectors, hashed here from the files this executor loaded.
    let versions = embedstream_core::model_version::model_versions(&spec)?;
    tracing::info!(?versions, "model versions");
    let pipeline = Arc::new(pipeline::Pipeline::new(&spec, backends)?.with_versions(&versions));

    let reader = KafkaReader::new(
        spec.source_client(&secrets)?,
        &format!("{}-executor", spec.group_id()),
        spec.source.poll_timeout(),
        spec.source.fail_on_data_loss,
        spec.input.header_names(),
    );
    let producer = Arc::new(KafkaProducer::new(spec.sink_client(&secrets)?)?);
    let dead_letter_producer = match spec.dead_letters_have_own_client() {
        true => Arc::new(KafkaProducer::new(spec.dead_letter_client(&secrets)?)?),
        false => producer.clone(),
    };
    let dead_letters = DeadLetters::new(&spec, dead_letter_producer, model_id.clone());
    let decoder = schemas::Decoder::of(&spec, spec.registry_password_value(&secrets)?)?.map(Arc::new);
    let sink = embedstream_sinks::open(
        &spec.sink,
        SinkContext {
            producer,
            outputs: pipeline.outputs(),
            chunks: pipeline.chunked(),
            fields: spec.field_columns(),
            executor_id: &args.executor_id,
            password: spec.sink_password_value(&secrets)?,
            avro: embedstream_sinks::register_avro_output(&spec, spec.registry_password_value(&secrets)?).await?,
            transactions: match spec.sink.exactly_once_kafka() {
                false => None,
                true => Some(embedstream_sinks::kafka::transactions::Transactions::new(
                    spec.sink_client(&secrets)?,
                    spec.source_client(&secrets)?,
                    &spec.group_id(),
                    spec.transaction_timeout(),
                )?),
            },
            input_state: match (&spec.sink.kind, spec.skip_unchanged()) {
                (embedstream_core::spec::SinkKind::Kafka(k), true) => Some(
                    embedstream_sinks::kafka::state::InputState::new(spec.sink_client(&secrets)?, &k.state_topic())?,
                ),
                _ => None,
            },
            skip_unchanged: spec.skip_unchanged(),
        },
    )
    .await?;
    let metrics_address =
        telemetry::serve_metrics(&spec.monitoring.executor_metrics_listen, metrics.registry.clone(), &args.tls)
            .await
            .map_err(|e| ExecutorError::Serve(format!("metrics endpoint: {e}")))?;
    // The sampler's last look at the model processes, which each heartbeat carries to the driver.
    let health = Arc::new(std::sync::Mutex::new(ExecutorHealth::default()));
    spawn_worker_sampler(metrics.clone(), pools.clone(), health.clone());
    let beat_metrics = metrics.clone();
    let recent = Arc::new(records::RecentOutput::new(
        spec.flight.recent_batches,
        spec.flight.recent_bytes,
        pipeline.output_schema(),
    ));
    // Flight's DoExchange embeds texts with the first model that embeds texts.
    let (first, first_max_bytes) = flight_model.unzip();
    let flight = flight::FlightEmbedder::new(
        spec.name.clone(),
        first,
        spec.flight.clone(),
        first_max_bytes.unwrap_or(0),
        token.clone(),
        recent.clone(),
        metrics.clone(),
    );
    // A call may send up to max_bytes_per_call of text in one message; leave room for the rest.
    let flight_message_limit = spec.flight.max_bytes_per_call.saturating_add(1 << 20);
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let shutdown_tx = Arc::new(shutdown_tx);
    let state = Arc::new(task::TaskContext {
        executor_id: args.executor_id.clone(),
        spec,
        reader: Arc::new(reader),
        decoder,
        pipeline,
        sink,
        dead_letters,
        metrics,
        recent,
    });
    let service =
        Service { state, slots: Arc::new(Semaphore::new(args.cores as usize)), shutdown: shutdown_tx.clone() };

    let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| ExecutorError::Serve(e.to_string()))?;
    let address = listener.local_addr().map_err(|e| ExecutorError::Serve(e.to_string()))?;
    let mut server_stop = shutdown_rx.clone();
    let server = tokio::spawn(
        GrpcServer::new(token, args.tls.clone())
            .guarded(ExecutorServiceServer::new(service))
            .open(FlightServiceServer::new(flight).max_decoding_message_size(flight_message_limit))
            .serve(listener, async move {
                let _ = server_stop.wait_for(|&s| s).await;
            }),
    );
    driver
        .register_executor(RegisterExecutorRequest {
            executor_id: args.executor_id.clone(),
            address: address.to_string(),
            cores: args.cores,
            pid: std::process::id(),
            metrics_address: metrics_address.to_string(),
        })
        .await
        .map_err(|e| driver_err(e.to_string()))?;
    tracing::info!(executor = %args.executor_id, %address, "executor registered (ExecutorService and Arrow Flight)");

    let mut missed = 0;
    // The delegation tokens held: those YARN gave the container (0), then the driver's newer.
    let mut tokens_version = 0;
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown_rx.wait_for(|&s| s) => break,
            _ = ticks.tick() => {}
        }
        let report = {
            let mut h = health.lock().expect("not poisoned").clone();
            (h.embeddings, h.cache_hits, h.cache_misses) = beat_metrics.counts();
            h
        };
        let beat = driver.heartbeat(heartbeat_to_pb(&args.executor_id, &report, tokens_version)).await;
        match beat {
            Ok(r) if r.get_ref().known => {
                missed = 0;
                let r = r.into_inner();
                if r.hadoop_tokens_version > tokens_version && !r.hadoop_tokens.is_empty() {
                    match embedstream_core::hadoop_tokens::replace_token_file(&r.hadoop_tokens) {
                        Ok(file) => {
                            tokens_version = r.hadoop_tokens_version;
                            tracing::info!(version = tokens_version, file = ?file, "took the driver's renewed Hadoop delegation tokens");
                        }
                        // Kept trying at the next heartbeat: the old tokens serve until then.
                        Err(e) => tracing::warn!(error = %e, "could not write the renewed Hadoop delegation tokens"),
                    }
                }
            }
            Ok(_) => {
                tracing::warn!("the driver no longer knows this executor; exiting");
                break;
            }
            Err(e) => {
                missed += 1;
                if missed >= MAX_MISSED_HEARTBEATS {
                    tracing::warn!(error = %e, "driver unreachable; exiting");
                    break;
                }
            }
        }
    }
    // The loop also ends when the driver is gone: stop serving either way (tasks in flight finish).
    let _ = shutdown_tx.send(true);
    server.await.map_err(|e| ExecutorError::Serve(e.to_string()))?.map_err(|e| ExecutorError::Serve(e.to_string()))?;
    Ok(())
}

/// A model's forked workers: a text model's or an image model's.
#[derive(Clone)]
enum ModelWorkers {
    Text(Arc<WorkerPool>),
    Image(Arc<ImagePool>),
}

impl ModelWorkers {
    fn workers(&self) -> &Workers {
        match self {
            ModelWorkers::Text(p) => p.workers(),
            ModelWorkers::Image(p) => p.workers(),
        }
    }
}

/// Every ONNX model's workers, with its model's name.
type Pools = Vec<(String, ModelWorkers)>;

/// Samples the memory (PSS) of the model daemon and each worker, and counts worker restarts:
/// into the metrics, and into `health` for the heartbeats.
fn spawn_worker_sampler(metrics: Arc<ExecutorMetrics>, pools: Pools, health: Arc<std::sync::Mutex<ExecutorHealth>>) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        // One model's processes are `daemon`, `0`, `1`...; several models' `<model>/daemon`...
        let several = pools.len() > 1;
        loop {
            ticks.tick().await;
            let mut restarts = 0;
            let mut seen = Vec::new();
            for (name, pool) in &pools {
                let (daemon, workers, restarted) = {
                    let s = pool.workers().state();
                    (s.daemon_pid, s.worker_pids.clone(), s.restarts)
                };
                restarts += restarted;
                let labels = std::iter::once(("daemon".to_string(), daemon))
                    .chain(workers.iter().enumerate().map(|(i, &p)| (i.to_string(), p)));
                for (label, pid) in labels {
                    let label = if several { format!("{name}/{label}") } else { label };
                    if let Some(pss) = telemetry::pss_bytes(pid) {
                        metrics.worker_pss_bytes.with_label_values(&[label.as_str()]).set(pss as i64);
                        seen.push(WorkerHealth { name: label, pid, pss_bytes: pss });
                    }
                }
            }
            let counted = metrics.worker_restarts.get();
            metrics.worker_restarts.inc_by(restarts.saturating_sub(counted));
            let mut h = health.lock().expect("not poisoned");
            h.workers = seen;
            h.worker_restarts = restarts;
        }
    });
}

struct Service {
    state: Arc<task::TaskContext>,
    slots: Arc<Semaphore>,
    shutdown: Arc<watch::Sender<bool>>,
}

#[tonic::async_trait]
impl ExecutorService for Service {
    async fn run_task(&self, request: Request<TaskDefinition>) -> Result<Response<TaskStatus>, Status> {
        let def = request.into_inner();
        let mut status = TaskStatus {
            batch_id: def.batch_id,
            task_id: def.task_id,
            attempt: def.attempt,
            executor_id: self.state.executor_id.clone(),
            status: None,
        };
        let Ok(_permit) = self.slots.clone().acquire_owned().await else {
            status.status = Some(task_status::Status::Failed(task::TaskError::ShuttingDown.into()));
            return Ok(Response::new(status));
        };
        status.status = Some(task::run(self.state.clone(), def).await);
        Ok(Response::new(status))
    }

    async fn shutdown(&self, _: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        tracing::info!(executor = %self.state.executor_id, "shutdown requested");
        let _ = self.shutdown.send(true);
        Ok(Response::new(ShutdownResponse {}))
    }
}
