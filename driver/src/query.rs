//! One streaming query: start executors, then plan, log, dispatch and commit micro-batches until
//! stopped (or, with `available_now`, until what was there at the start is processed).
//!
//! A batch goes through these steps, in this order:
//! 1. plan: discover partitions, read the broker's offsets, check for data loss, apply the rate
//!    limit (or take the uncommitted batch from the checkpoint unchanged);
//! 2. write `offsets/<N>` (write-ahead: nothing runs before the plan is durable);
//! 3. run the tasks on the executors, retrying failed attempts;
//! 4. write `commits/<N>`, then commit the end offsets to the consumer group.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedstream_proto::pb::driver_service_server::DriverServiceServer;
use embedstream_proto::pb::{OffsetRange as PbRange, ShutdownRequest, TaskDefinition};
use embedstream_proto::spec::StartAt;
use embedstream_proto::JobSpec;
use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::checkpoint::{self, Checkpoint, CheckpointError, CommitLogEntry, OffsetLogEntry, Recovery};
use crate::launcher::{LaunchError, LocalLauncher};
use crate::planner::{self, DataLoss, PartitionOffsets, TopicPartition};
use crate::scheduler::{BatchStats, DriverServiceImpl, ExecutorRegistry, Scheduler, SchedulerError};
use crate::source::{KafkaSource, SourceError};

/// How long executors may take to start and load their model.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How often an idle query without a trigger interval looks for new data.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Test hook: the driver exits (as if killed) right after writing `offsets/<N>` for this N.
pub const CRASH_AFTER_WAL_ENV: &str = "EMBEDSTREAM_TEST_CRASH_AFTER_WAL";

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
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

/// Runs `spec` with `executors.count` local executor processes started from `exe`, until `stop`
/// turns true (after the batch in flight) or an `available_now` query has caught up.
pub async fn run_local(spec: JobSpec, exe: PathBuf, stop: watch::Receiver<bool>) -> Result<QuerySummary, DriverError> {
    let checkpoint = Checkpoint::open(&spec.checkpoint_location)?;
    let source = Arc::new(KafkaSource::new(&spec)?);
    let registry = Arc::new(ExecutorRegistry::default());

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| DriverError::Service(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| DriverError::Service(e.to_string()))?;
    let service = DriverServiceImpl {
        registry: registry.clone(),
        job_spec_toml: spec.to_toml(),
        query_id: checkpoint.query_id().to_string(),
    };
    let (server_stop, server_stopped) = watch::channel(false);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DriverServiceServer::new(service))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let mut s = server_stopped;
                let _ = s.wait_for(|&v| v).await;
            }),
    );
    tracing::info!(query = %spec.name, query_id = checkpoint.query_id(), driver = %addr, "query starting");

    let mut launcher = LocalLauncher::new(exe);
    let result = async {
        let url = format!("http://{addr}");
        for i in 0..spec.executors.count {
            launcher.spawn(&format!("exec-{i}"), &url, spec.executors.cores)?;
        }
        launcher.wait_registered(&registry, spec.executors.count as usize, REGISTRATION_TIMEOUT).await?;
        let mut query = Query {
            spec: &spec,
            checkpoint: &checkpoint,
            source: source.clone(),
            scheduler: Scheduler::new(registry.clone()),
        };
        query.run(stop).await
    }
    .await;

    for exec in registry.live() {
        let _ = exec.client().shutdown(ShutdownRequest {}).await;
    }
    launcher.stop(Duration::from_secs(15)).await;
    let _ = server_stop.send(true);
    let _ = server.await;
    result
}

struct Query<'a> {
    spec: &'a JobSpec,
    checkpoint: &'a Checkpoint,
    source: Arc<KafkaSource>,
    scheduler: Scheduler,
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

    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<QuerySummary, DriverError> {
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
        let mut first_dispatch: Option<Instant> = None;

        loop {
            if *stop.borrow() {
                tracing::info!("stop requested; no new batch");
                break;
            }
            let trigger_start = tokio::time::Instant::now();
            let (entry, replay) = match rerun.take() {
                Some(entry) => (entry, true),
                None => match self.plan(next_batch_id, &start, target.as_ref()).await? {
                    Some(entry) => (entry, false),
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
            if !replay {
                self.checkpoint.write_offsets(&entry)?;
            }
            if std::env::var(CRASH_AFTER_WAL_ENV).ok().and_then(|v| v.parse().ok()) == Some(entry.batch_id) {
                tracing::error!(batch_id = entry.batch_id, "{CRASH_AFTER_WAL_ENV}: exiting after the write-ahead log");
                std::process::exit(86);
            }

            let tasks = tasks_for(
                &entry,
                summary.query_id.as_str(),
                spec.source.min_partitions,
                sink_partitions,
                dlq_partitions,
            );
            let batch_started = Instant::now();
            first_dispatch.get_or_insert(batch_started);
            let stats = self.scheduler.run_batch(entry.batch_id, tasks).await?;
            self.checkpoint.write_commit(&CommitLogEntry {
                version: 1,
                batch_id: entry.batch_id,
                timestamp_ms: checkpoint::now_ms(),
                input_rows: stats.rows_read,
                embeddings: stats.embeddings,
                dead_letters: stats.dead_letters,
            })?;
            let end = checkpoint::from_json(&entry.end);
            let committed = end.clone();
            if let Err(e) = self.broker(move |s| s.commit_group(&committed)).await {
                // The checkpoint is the source of truth; the group only shows progress.
                tracing::warn!(error = %e, "could not commit offsets to the consumer group");
            }
            log_batch(entry.batch_id, &stats, batch_started.elapsed());
            summary.batches += 1;
            summary.input_rows += stats.rows_read;
            summary.embeddings += stats.embeddings;
            summary.dead_letters += stats.dead_letters;
            summary.task_retries += stats.failed_attempts;
            summary.processing_seconds = first_dispatch.map_or(0.0, |t| t.elapsed().as_secs_f64());
            start = end;
            next_batch_id = entry.batch_id + 1;

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
    ) -> Result<Option<OffsetLogEntry>, DriverError> {
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
        Ok(Some(OffsetLogEntry {
            version: 1,
            batch_id,
            timestamp_ms: checkpoint::now_ms(),
            start: checkpoint::to_json(&start),
            end: checkpoint::to_json(&end),
        }))
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
