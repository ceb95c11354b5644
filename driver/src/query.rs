//! One streaming query: start executors, then plan, log, dispatch and commit micro-batches until
//! stopped (or, with `available_now`, until what was there at the start is processed).
//!
//! A batch goes through these steps, in this order:
//! 1. plan: discover partitions, read the broker's offsets, check for data loss, apply the rate
//!    limit (or take the uncommitted batch from the checkpoint unchanged);
//! 2. write `offsets/<N>` (write-ahead: nothing runs before the plan is durable);
//! 3. run the tasks on the executors, retrying failed attempts;
//! 4. write `commits/<N>`, then commit the end offsets to the consumer group.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embedstream_proto::auth::{ClusterToken, RequireToken};
use embedstream_proto::manifest::{self, ManifestError};
use embedstream_proto::pb::driver_service_server::DriverServiceServer;
use embedstream_proto::pb::query_admin_server::QueryAdminServer;
use embedstream_proto::pb::{OffsetRange as PbRange, ShutdownRequest, TaskDefinition};
use embedstream_proto::serve::{self, DRIVER_SERVICE, QUERY_ADMIN};
use embedstream_proto::spec::{SinkKind, StartAt};
use embedstream_proto::{telemetry, JobSpec};
use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::{AdminService, Control, Snapshot};
use crate::checkpoint::{self, Checkpoint, CheckpointError, CommitLogEntry, OffsetLogEntry, Recovery};
use crate::launcher::{self, LaunchError, Launcher, LocalLauncher};
use crate::metrics::{self, DriverMetrics};
use crate::planner::{self, DataLoss, PartitionOffsets, TopicPartition};
use crate::progress::{ProgressLog, ProgressRecord, SourceProgress};
use crate::scheduler::{BatchStats, DriverServiceImpl, ExecutorRegistry, Scheduler, SchedulerError};
use crate::source::{KafkaSource, SourceError};

/// How long executors may take to start and load their model.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the driver looks for ended executors and reconciles their number with the target.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// How often an idle query without a trigger interval looks for new data.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Test hook: the driver exits (as if killed) right after writing `offsets/<N>` for this N.
pub const CRASH_AFTER_WAL_ENV: &str = "EMBEDSTREAM_TEST_CRASH_AFTER_WAL";
/// Test hook: the driver exits right after writing a file sink's manifest for batch N, before
/// its commit log entry.
pub const CRASH_AFTER_MANIFEST_ENV: &str = "EMBEDSTREAM_TEST_CRASH_AFTER_MANIFEST";

/// Exits as if killed when the test hook `env` names `batch_id`.
fn crash_point(env: &str, batch_id: u64) {
    if std::env::var(env).ok().and_then(|v| v.parse().ok()) == Some(batch_id) {
        tracing::error!(batch_id, "{env}: exiting here");
        std::process::exit(86);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("sink manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error(
        "sink.path {path}: batch {batch_id} there was written by query {other} (offsets {start} to {end}), not by this \
         checkpoint's query {ours}; a table belongs to the checkpoint that wrote it: give a new sink.path, or the old checkpoint_location"
    )]
    ForeignTable { path: String, batch_id: u64, other: String, ours: String, start: String, end: String },
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("data loss (set source.fail_on_data_loss = false to skip lost offsets): {0}")]
    DataLoss(#[from] DataLoss),
    #[error("job spec: `source.starting_offsets`: {0}")]
    StartingOffsets(String),
    #[error("driver service: {0}")]
    Service(String),
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
    /// From the first task dispatched to the last batch committed.
    pub processing_seconds: f64,
    pub embeddings_per_second: f64,
}

/// How a driver is set up: where it listens and how it gets executors.
pub struct DriverOptions {
    /// Where the driver serves DriverService and QueryAdmin (port 0 picks one).
    pub listen: SocketAddr,
    /// Required on every call when set.
    pub token: ClusterToken,
}

impl DriverOptions {
    pub fn local(token: ClusterToken) -> DriverOptions {
        DriverOptions { listen: SocketAddr::from(([127, 0, 0, 1], 0)), token }
    }
}

/// Runs `spec` with `executors.count` local executor processes started from `exe`, until `stop`
/// turns true (after the batch in flight) or an `available_now` query has caught up.
pub async fn run_local(spec: JobSpec, exe: PathBuf, stop: watch::Receiver<bool>) -> Result<QuerySummary, DriverError> {
    let token =
        ClusterToken::load(spec.security.token_file.as_deref()).map_err(|e| DriverError::Service(e.to_string()))?;
    let (cores, secret) = (spec.executors.cores, token.secret().map(str::to_string));
    let launcher = move |driver: &str| -> Box<dyn Launcher> {
        Box::new(LocalLauncher::new(exe, &format!("http://{driver}"), cores, secret))
    };
    run_query(spec, DriverOptions::local(token), launcher, stop).await
}

/// Runs `spec` with executors from the launcher that `make_launcher` builds for the driver's
/// address, until `stop` turns true or the admin API stops it (after the batch in flight), or an
/// `available_now` query has caught up.
pub async fn run_query(
    spec: JobSpec,
    options: DriverOptions,
    make_launcher: impl FnOnce(&str) -> Box<dyn Launcher>,
    mut stop: watch::Receiver<bool>,
) -> Result<QuerySummary, DriverError> {
    let checkpoint = Checkpoint::open(&spec.checkpoint_location)?;
    let source = Arc::new(KafkaSource::new(&spec)?);
    let registry = Arc::new(ExecutorRegistry::default());
    let metrics = Arc::new(DriverMetrics::new(&spec.name));
    let metrics_addr = telemetry::serve_metrics(&spec.monitoring.metrics_listen, metrics.registry.clone())
        .await
        .map_err(|e| DriverError::Service(format!("metrics endpoint {}: {e}", spec.monitoring.metrics_listen)))?;
    metrics.executors_requested.set(spec.executors.count as i64);
    metrics.trigger_interval.set(spec.trigger.interval().as_secs_f64());
    metrics.last_batch_timestamp.set(checkpoint::now_ms() as f64 / 1000.0);
    let targets = Targets {
        checkpoint: spec.checkpoint_location.clone(),
        query: spec.name.clone(),
        driver: metrics_addr.to_string(),
    };
    targets.write(&registry);

    let control = Control::new(spec.executors.count);
    // A signal (or the caller) stops the query the same way the admin API does.
    let forward = control.clone();
    let _forward_stop = AbortOnDrop(tokio::spawn(async move {
        if stop.wait_for(|&s| s).await.is_ok() {
            let _ = forward.stop.send(true);
        }
    }));

    let listener =
        tokio::net::TcpListener::bind(options.listen).await.map_err(|e| DriverError::Service(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| DriverError::Service(e.to_string()))?;
    let service = DriverServiceImpl {
        registry: registry.clone(),
        token: options.token.clone(),
        job_spec_toml: spec.to_toml(),
        query_id: checkpoint.query_id().to_string(),
    };
    let admin = AdminService {
        query: spec.name.clone(),
        query_id: checkpoint.query_id().to_string(),
        checkpoint: spec.checkpoint_location.clone(),
        control: control.clone(),
        registry: registry.clone(),
    };
    let (server_stop, server_stopped) = watch::channel(false);
    let guard = RequireToken::new(options.token.clone());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DriverServiceServer::with_interceptor(service, guard.clone()))
            .add_service(QueryAdminServer::with_interceptor(admin, guard))
            .add_service(serve::health(&[DRIVER_SERVICE, QUERY_ADMIN]).await)
            .add_service(serve::reflection())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let mut s = server_stopped;
                let _ = s.wait_for(|&v| v).await;
            }),
    );
    tracing::info!(
        query = %spec.name, query_id = checkpoint.query_id(), driver = %addr, metrics = %metrics_addr,
        "query starting"
    );

    let launcher = Arc::new(tokio::sync::Mutex::new(make_launcher(&addr.to_string())));
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
            scheduler: Scheduler::new(registry.clone()),
            metrics: metrics.clone(),
            targets: &targets,
            progress: ProgressLog::new(&spec.checkpoint_location),
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

    let _ = control.stop.send(true);
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
    result
}

struct Query<'a> {
    spec: &'a JobSpec,
    checkpoint: &'a Checkpoint,
    source: Arc<KafkaSource>,
    scheduler: Scheduler,
    metrics: Arc<DriverMetrics>,
    targets: &'a Targets,
    progress: ProgressLog,
    control: Arc<Control>,
}

/// Keeps `<checkpoint>/monitoring/targets.json` listing the driver and the live executors.
struct Targets {
    checkpoint: PathBuf,
    query: String,
    driver: String,
}

impl Targets {
    fn write(&self, registry: &ExecutorRegistry) {
        let executors: Vec<metrics::ExecutorTarget> = registry
            .live()
            .into_iter()
            .map(|e| metrics::ExecutorTarget {
                id: e.id,
                metrics_address: e.metrics_address,
                flight_address: e.address,
            })
            .collect();
        if let Err(e) = metrics::write_targets(&self.checkpoint, &self.query, &self.driver, &executors) {
            tracing::warn!(error = %e, "cannot write the Prometheus target list");
        }
    }
}

/// Aborts a background task when dropped, on every way out of the scope that owns it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the broker's latest offsets every `interval` and sets the offset and lag gauges
/// against the query's position, so lag is current even while a batch is slow.
fn spawn_lag_refresher(
    source: Arc<KafkaSource>,
    metrics: Arc<DriverMetrics>,
    position: Arc<Mutex<PartitionOffsets>>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            let s = source.clone();
            let latest = tokio::task::spawn_blocking(move || s.partitions().and_then(|tps| s.watermarks(&tps)))
                .await
                .expect("broker calls do not panic");
            match latest {
                Ok((_, latest)) => metrics.set_offsets(&latest, &position.lock().unwrap()),
                Err(e) => tracing::debug!(error = %e, "lag refresh failed"),
            }
        }
    })
}

impl Query<'_> {
    /// Runs a blocking broker call off the async threads.
    async fn broker<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KafkaSource) -> Result<T, SourceError> + Send + 'static,
    ) -> Result<T, SourceError> {
        let source = self.source.clone();
        tokio::task::spawn_blocking(move || f(&source)).await.expect("broker calls do not panic")
    }

    async fn run(&mut self) -> Result<QuerySummary, DriverError> {
        let mut stop = self.control.stop.subscribe();
        let mut paused = self.control.paused.subscribe();
        let spec = self.spec;
        let partitions = self.broker(KafkaSource::partitions).await?;
        let source_partitions = partitions.iter().map(|tp| tp.partition + 1).max().unwrap_or(1);
        let (sink_partitions, dlq_partitions) = self.source.ensure_sink_topics(source_partitions).await?;

        let mut summary = QuerySummary { query_id: self.checkpoint.query_id().to_string(), ..Default::default() };
        let (mut next_batch_id, mut start, mut rerun) = match self.checkpoint.recover()? {
            Recovery::Fresh => (0, self.initial_offsets(&partitions).await?, None),
            Recovery::Rerun(entry) => {
                tracing::info!(batch_id = entry.batch_id, "re-running the uncommitted batch with its logged offsets");
                (entry.batch_id, checkpoint::from_json(&entry.start), Some(entry))
            }
            Recovery::Continue { next_batch_id, start } => (next_batch_id, start, None),
        };
        // available_now: everything up to the offsets that exist now, and nothing after.
        let target = if spec.trigger.available_now {
            Some(self.broker(move |s| s.watermarks(&partitions)).await?.1)
        } else {
            None
        };
        let interval = spec.trigger.interval();
        let table = match spec.sink.kind {
            SinkKind::Parquet => spec.sink.path.clone(),
            SinkKind::Kafka => None,
        };
        let mut first_dispatch: Option<Instant> = None;
        let mut previous_trigger: Option<Instant> = None;
        let position = Arc::new(Mutex::new(start.clone()));
        let _refresher = AbortOnDrop(spawn_lag_refresher(
            self.source.clone(),
            self.metrics.clone(),
            position.clone(),
            spec.monitoring.lag_refresh(),
        ));

        loop {
            // Paused: no new batch until resumed (or stopped).
            while *paused.borrow_and_update() && !*stop.borrow() {
                tokio::select! {
                    _ = paused.changed() => {}
                    _ = stop.changed() => {}
                }
            }
            if *stop.borrow() {
                tracing::info!("stop requested; no new batch");
                break;
            }
            let trigger_start = tokio::time::Instant::now();
            let (entry, latest, replay) = match rerun.take() {
                Some(entry) => {
                    let end = checkpoint::from_json(&entry.end);
                    (entry, end, true)
                }
                None => match self.plan(next_batch_id, &start, target.as_ref()).await? {
                    Some((entry, latest)) => (entry, latest, false),
                    None if target.is_some() => break,
                    None => {
                        let wait = interval.max(IDLE_POLL);
                        tokio::select! {
                            _ = tokio::time::sleep_until(trigger_start + wait) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                },
            };
            let plan_took = trigger_start.elapsed();
            let wal_started = Instant::now();
            if !replay {
                self.checkpoint.write_offsets(&entry)?;
            }
            let wal_took = wal_started.elapsed();
            crash_point(CRASH_AFTER_WAL_ENV, entry.batch_id);

            let tasks = tasks_for(
                &entry,
                summary.query_id.as_str(),
                spec.source.min_partitions,
                sink_partitions,
                dlq_partitions,
            );
            let batch_started = Instant::now();
            first_dispatch.get_or_insert(batch_started);
            let (start_offsets, end_offsets) = (checkpoint::from_json(&entry.start), checkpoint::from_json(&entry.end));
            let planned: i64 =
                planner::ranges(&start_offsets, &end_offsets).iter().map(planner::OffsetRange::size).sum();
            self.metrics.input_rows.inc_by(planned as u64);
            // A file sink's batch whose manifest exists is published already: not written again.
            let published = match &table {
                Some(t) => manifest::committed(t, entry.batch_id)?.map(|m| (t, m)),
                None => None,
            };
            if let Some((t, m)) = &published {
                if !m.written_by(summary.query_id.as_str(), &entry.start, &entry.end) {
                    return Err(DriverError::ForeignTable {
                        path: t.display().to_string(),
                        batch_id: entry.batch_id,
                        other: m.query_id.clone(),
                        ours: summary.query_id.clone(),
                        start: serde_json::to_string(&m.start).unwrap_or_default(),
                        end: serde_json::to_string(&m.end).unwrap_or_default(),
                    });
                }
                // The driver may have stopped between the manifest and deleting the files of
                // failed attempts.
                manifest::remove_orphans(t, m)?;
            }
            let already_published = published.is_some();
            let stats = match published {
                Some((_, m)) => {
                    tracing::info!(
                        batch_id = entry.batch_id,
                        files = m.files.len(),
                        "batch already in the sink's manifest; not run again"
                    );
                    Ok(BatchStats { embeddings: m.files.iter().map(|f| f.rows).sum(), ..Default::default() })
                }
                None => self.scheduler.run_batch(entry.batch_id, tasks).await,
            };
            self.metrics.executors.set(self.scheduler.registry().live().len() as i64);
            self.targets.write(self.scheduler.registry());
            let stats = stats?;
            let commit_started = Instant::now();
            if let (Some(t), false) = (&table, already_published) {
                let files =
                    stats.files.iter().map(|f| manifest::ManifestFile { path: f.path.clone(), rows: f.rows }).collect();
                let removed = manifest::commit(
                    t,
                    &manifest::BatchManifest {
                        version: 1,
                        batch_id: entry.batch_id,
                        query_id: summary.query_id.clone(),
                        start: entry.start.clone(),
                        end: entry.end.clone(),
                        files,
                    },
                )?;
                if removed > 0 {
                    tracing::info!(batch_id = entry.batch_id, removed, "deleted files of failed attempts");
                }
                crash_point(CRASH_AFTER_MANIFEST_ENV, entry.batch_id);
            }
            self.checkpoint.write_commit(&CommitLogEntry {
                version: 1,
                batch_id: entry.batch_id,
                timestamp_ms: checkpoint::now_ms(),
                input_rows: stats.rows_read,
                embeddings: stats.embeddings,
                dead_letters: stats.dead_letters,
            })?;
            let keep_from = (entry.batch_id + 1).saturating_sub(self.spec.min_batches_to_retain);
            match self.checkpoint.purge_before(keep_from) {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(keep_from, removed, "old checkpoint entries deleted"),
                // The batch is committed; stale entries only take space until the next try.
                Err(e) => tracing::warn!(error = %e, "could not delete old checkpoint entries"),
            }
            let end = checkpoint::from_json(&entry.end);
            let committed = end.clone();
            if let Err(e) = self.broker(move |s| s.commit_group(&committed)).await {
                // The checkpoint is the source of truth; the group only shows progress.
                tracing::warn!(error = %e, "could not commit offsets to the consumer group");
            }
            let commit_took = commit_started.elapsed();
            *position.lock().unwrap() = end.clone();
            self.metrics.set_offsets(&latest, &end);
            log_batch(entry.batch_id, &stats, batch_started.elapsed());
            let timings = BatchTimings {
                trigger: trigger_start.into_std(),
                previous_trigger: previous_trigger.replace(trigger_start.into_std()),
                plan: plan_took,
                wal: wal_took,
                commit: commit_took,
            };
            self.record_batch(&entry, &latest, &stats, &timings);
            summary.batches += 1;
            summary.input_rows += stats.rows_read;
            summary.embeddings += stats.embeddings;
            summary.dead_letters += stats.dead_letters;
            summary.task_retries += stats.failed_attempts;
            summary.processing_seconds = first_dispatch.map_or(0.0, |t| t.elapsed().as_secs_f64());
            start = end;
            next_batch_id = entry.batch_id + 1;
            *self.control.snapshot.lock().unwrap() = Snapshot {
                batches_committed: summary.batches,
                next_batch_id,
                committed_offsets_json: serde_json::to_string(&entry.end).expect("offsets serialise"),
            };

            if !interval.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep_until(trigger_start + interval) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        if summary.processing_seconds > 0.0 {
            summary.embeddings_per_second = summary.embeddings as f64 / summary.processing_seconds;
        }
        Ok(summary)
    }

    /// Metrics and the progress record of a committed batch.
    fn record_batch(
        &mut self,
        entry: &OffsetLogEntry,
        latest: &PartitionOffsets,
        stats: &BatchStats,
        t: &BatchTimings,
    ) {
        let m = &self.metrics;
        let took = t.trigger.elapsed();
        let secs = |d: Duration| d.as_secs_f64();
        m.processed_rows.inc_by(stats.rows_read);
        m.dead_letter_rows.inc_by(stats.dead_letters);
        m.tasks_failed.inc_by(stats.failed_attempts);
        m.batches.inc();
        m.batch_duration.observe(secs(took));
        let micros = |us: u64| Duration::from_micros(us);
        let phases = [
            ("plan", t.plan),
            ("wal", t.wal),
            ("read", micros(stats.read_micros)),
            ("infer", micros(stats.infer_micros)),
            ("sink", micros(stats.sink_micros)),
            ("commit", t.commit),
        ];
        for (phase, d) in phases {
            m.batch_phase.with_label_values(&[phase]).observe(secs(d));
        }
        let rows = stats.rows_read as f64;
        let processed_rate = rows / secs(took).max(1e-9);
        let input_rate = t.previous_trigger.map_or(processed_rate, |p| rows / secs(t.trigger - p).max(1e-9));
        m.input_rows_per_second.set(input_rate);
        m.processed_rows_per_second.set(processed_rate);
        for &l in &stats.latencies {
            m.end_to_end_latency.observe(l as f64);
        }
        m.last_batch_timestamp.set(checkpoint::now_ms() as f64 / 1000.0);

        let end = checkpoint::from_json(&entry.end);
        let behind: i64 = end.iter().map(|(tp, &e)| (latest.get(tp).copied().unwrap_or(e) - e).max(0)).sum();
        let mut duration_ms: BTreeMap<String, u64> =
            phases.iter().map(|(p, d)| (p.to_string(), d.as_millis() as u64)).collect();
        duration_ms.insert("triggerExecution".into(), took.as_millis() as u64);
        let record = ProgressRecord {
            id: self.checkpoint.query_id().to_string(),
            name: self.spec.name.clone(),
            batch_id: entry.batch_id,
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now() - took).to_string(),
            num_input_rows: stats.rows_read,
            input_rows_per_second: input_rate,
            processed_rows_per_second: processed_rate,
            duration_ms,
            sources: vec![SourceProgress {
                description: self.source_description(),
                start_offset: entry.start.clone(),
                end_offset: entry.end.clone(),
                latest_offset: checkpoint::to_json(latest),
                num_input_rows: stats.rows_read,
                offsets_behind_latest: behind,
            }],
            embeddings: stats.embeddings,
            dead_letters: stats.dead_letters,
            task_retries: stats.failed_attempts,
            executors: stats.rows_per_executor.clone(),
        };
        if let Err(e) = self.progress.append(record) {
            tracing::warn!(error = %e, "cannot write the progress log");
        }
    }

    /// Spark's way of naming a Kafka source: `KafkaV2[Subscribe[a,b]]`.
    fn source_description(&self) -> String {
        let s = &self.spec.source;
        let how = match (&s.subscribe, &s.subscribe_pattern) {
            (Some(t), _) => format!("Subscribe[{}]", t.join(",")),
            (None, Some(p)) => format!("SubscribePattern[{p}]"),
            (None, None) => format!("Assign[{}]", self.spec.source_topics().join(",")),
        };
        format!("KafkaV2[{how}]")
    }

    /// Where a new query starts (`starting_offsets`), logged so that a restart before the first
    /// batch starts from the same place rather than from a newer "latest".
    async fn initial_offsets(&self, partitions: &[TopicPartition]) -> Result<PartitionOffsets, DriverError> {
        if let Some(logged) = self.checkpoint.initial_offsets()? {
            return Ok(checkpoint::from_json(&logged));
        }
        let tps = partitions.to_vec();
        let (earliest, latest) = self.broker(move |s| s.watermarks(&tps)).await?;
        let mut start = PartitionOffsets::new();
        for tp in partitions {
            let at = self.spec.source.starting_offsets.for_partition(&tp.topic, tp.partition).ok_or_else(|| {
                DriverError::StartingOffsets(format!("partition {} of topic {} is not listed", tp.partition, tp.topic))
            })?;
            let offset = match at {
                StartAt::Earliest => earliest[tp],
                StartAt::Latest => latest[tp],
                StartAt::Offset(o) => o,
            };
            start.insert(tp.clone(), offset);
        }
        self.checkpoint.write_initial_offsets(&checkpoint::to_json(&start))?;
        Ok(start)
    }

    /// The next batch from `start`, or `None` when there is nothing new to read.
    async fn plan(
        &self,
        batch_id: u64,
        start: &PartitionOffsets,
        target: Option<&PartitionOffsets>,
    ) -> Result<Option<(OffsetLogEntry, PartitionOffsets)>, DriverError> {
        let partitions = self.broker(KafkaSource::partitions).await?;
        let (earliest, latest) = self.broker(move |s| s.watermarks(&partitions)).await?;

        let mut start = start.clone();
        for tp in earliest.keys() {
            if !start.contains_key(tp) {
                // Spark's rule: partitions discovered while the query runs start at earliest.
                tracing::info!(partition = %tp, "new partition");
                start.insert(tp.clone(), earliest[tp]);
            }
        }
        let (start, losses) = planner::check_data_loss(&start, &earliest, &latest, self.spec.source.fail_on_data_loss)?;
        for loss in losses {
            tracing::warn!(%loss, "data loss: skipping what the broker no longer has");
        }
        let cap: PartitionOffsets = start
            .iter()
            .map(|(tp, &from)| {
                let mut end = latest.get(tp).copied().unwrap_or(from);
                if let Some(target) = target {
                    end = end.min(target.get(tp).copied().unwrap_or(from));
                }
                (tp.clone(), end.max(from))
            })
            .collect();
        let end = planner::rate_limit(&start, &cap, self.spec.source.max_offsets_per_trigger);
        if planner::ranges(&start, &end).is_empty() {
            return Ok(None);
        }
        let entry = OffsetLogEntry {
            version: 1,
            batch_id,
            timestamp_ms: checkpoint::now_ms(),
            start: checkpoint::to_json(&start),
            end: checkpoint::to_json(&end),
        };
        Ok(Some((entry, latest)))
    }
}

/// The tasks of a logged batch; the same entry always gives the same tasks.
fn tasks_for(
    entry: &OffsetLogEntry,
    query_id: &str,
    min_partitions: Option<u32>,
    sink_partitions: i32,
    dlq_partitions: i32,
) -> Vec<TaskDefinition> {
    let ranges = planner::ranges(&checkpoint::from_json(&entry.start), &checkpoint::from_json(&entry.end));
    planner::split_ranges(ranges, min_partitions)
        .into_iter()
        .enumerate()
        .map(|(i, r)| TaskDefinition {
            query_id: query_id.to_string(),
            batch_id: entry.batch_id,
            task_id: i as u32,
            attempt: 0,
            sink_partition: r.tp.partition % sink_partitions,
            dead_letter_partition: r.tp.partition % dlq_partitions,
            range: Some(PbRange {
                topic: r.tp.topic,
                partition: r.tp.partition,
                from_offset: r.from,
                until_offset: r.until,
            }),
        })
        .collect()
}

/// When a batch's driver-side phases happened.
struct BatchTimings {
    trigger: Instant,
    previous_trigger: Option<Instant>,
    plan: Duration,
    wal: Duration,
    commit: Duration,
}

fn log_batch(batch_id: u64, s: &BatchStats, took: Duration) {
    let secs = took.as_secs_f64().max(1e-9);
    tracing::info!(
        batch_id,
        rows = s.rows_read,
        embeddings = s.embeddings,
        dead_letters = s.dead_letters,
        offset_gaps = s.offset_gaps,
        retries = s.failed_attempts,
        duration_ms = took.as_millis() as u64,
        read_ms = s.read_micros / 1000,
        infer_ms = s.infer_micros / 1000,
        sink_ms = s.sink_micros / 1000,
        rows_per_second = format!("{:.1}", s.rows_read as f64 / secs),
        "batch committed"
    );
}
