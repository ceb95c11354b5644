//! The batch loop and one batch, in this order:
//! 1. plan: discover partitions, read the broker's offsets, check for data loss, apply the rate
//!    limit (or take the uncommitted batch from the checkpoint unchanged);
//! 2. write `offsets/<N>` (write-ahead: nothing runs before the plan is durable);
//! 3. run the tasks on the executors, retrying failed attempts (unless the sink's committer
//!    says an earlier run published the batch already);
//! 4. publish the output (the sink's committer), write `commits/<N>`, then commit the end
//!    offsets to the consumer group.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embedstream_core::offsets::{OffsetRange, PartitionOffsets, SourceIds};
use embedstream_core::JobSpec;
use embedstream_proto::pb::TaskDefinition;
use embedstream_sinks::{BatchCommitter, BatchRange};

use super::report::{spawn_lag_refresher, BatchTimings, Reporter};
use super::targets::Targets;
use super::{AbortOnDrop, DriverError, QuerySummary};
use crate::admin::{Control, Snapshot};
use crate::checkpoint::{self, Checkpoint, CommitLogEntry, OffsetLogEntry};
use crate::crash::{self, CrashPoint};
use crate::planner::{self, DataLoss};
use crate::scheduler::{BatchStats, Scheduler};
use crate::source::{KafkaSource, SourceError};

/// How often an idle query without a trigger interval looks for new data.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// How often a backfill that gives way looks at its live query's lag again (at least).
const YIELD_POLL: Duration = Duration::from_millis(500);

/// A running query's parts, borrowed from the wiring for the life of the loop.
pub(crate) struct Query<'a> {
    pub(crate) spec: &'a JobSpec,
    pub(crate) checkpoint: &'a Checkpoint,
    pub(crate) source: Arc<KafkaSource>,
    pub(crate) scheduler: Scheduler,
    pub(crate) committer: Box<dyn BatchCommitter>,
    pub(crate) reporter: Reporter,
    pub(crate) targets: &'a Targets,
    pub(crate) control: Arc<Control>,
}

/// A batch ready to run: its log entry and the broker's latest offsets when it was planned.
struct Planned {
    entry: OffsetLogEntry,
    latest: PartitionOffsets,
    /// Offsets the broker had deleted before they were planned (skipped).
    lost: u64,
    /// Taken from the checkpoint: its offsets are logged already.
    replay: bool,
}

impl Query<'_> {
    /// Runs a blocking broker call off the async threads. A request that failed (a broker
    /// restarting, a leader moving, a topic answered with an error) is tried again, with a
    /// growing pause, for `source.metadata_retry_timeout` before the error ends the query.
    pub(crate) async fn broker<T: Send + 'static>(
        &self,
        f: impl Fn(&KafkaSource) -> Result<T, SourceError> + Send + Sync + 'static,
    ) -> Result<T, SourceError> {
        let f = Arc::new(f);
        let deadline = Instant::now() + self.spec.source.metadata_retry_timeout.get();
        let mut pause = Duration::from_millis(200);
        loop {
            let (source, call) = (self.source.clone(), f.clone());
            let result = tokio::task::spawn_blocking(move || call(&source)).await.expect("broker calls do not panic");
            match result {
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "broker request failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    pub(crate) async fn run(&mut self) -> Result<QuerySummary, DriverError> {
        let started = Instant::now();
        let mut stop = self.control.stop.subscribe();
        let mut paused = self.control.paused.subscribe();
        let spec = self.spec;
        self.refuse_missing_topics().await?;
        let partitions = self.broker(KafkaSource::partitions).await?;
        let source_partitions = partitions.iter().map(|tp| tp.partition + 1).max().unwrap_or(1);
        let sink_partitions = self.source.ensure_sink_topics(source_partitions).await?;

        let mut summary = QuerySummary { query_id: self.checkpoint.query_id().to_string(), ..Default::default() };
        let resume = self.resume(&partitions).await?;
        let (mut next_batch_id, mut start, mut rerun, mut sources) =
            (resume.next_batch_id, resume.start, resume.rerun, resume.sources);
        // A query resumed from its checkpoint says where it is before its next batch commits.
        *self.control.snapshot.lock().unwrap() =
            Snapshot { batches_committed: 0, next_batch_id, committed: start.clone() };
        // available_now: everything up to the offsets that exist now, and nothing after.
        let read = partitions.clone();
        let target = if spec.trigger.available_now {
            Some(self.broker(move |s| s.watermarks(&partitions)).await?.1)
        } else {
            None
        };
        let interval = spec.trigger.interval();
        let mut first_dispatch: Option<Instant> = None;
        let mut previous_trigger: Option<Instant> = None;
        let position = Arc::new(Mutex::new(start.clone()));
        let _refresher = AbortOnDrop(spawn_lag_refresher(
            self.source.clone(),
            self.reporter.metrics.clone(),
            position.clone(),
            spec.monitoring.lag_refresh(),
            self.control.clone(),
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
            if rerun.is_none() && self.gives_way(&read).await? {
                tokio::select! {
                    _ = tokio::time::sleep_until(trigger_start + interval.max(YIELD_POLL)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let planned = match rerun.take() {
                Some(entry) => Planned { latest: entry.end.clone(), entry, replay: true, lost: 0 },
                None => match self.plan(next_batch_id, &start, &sources, target.as_ref()).await? {
                    Some(planned) => planned,
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
            let batch_started = Instant::now();
            first_dispatch.get_or_insert(batch_started);
            let (entry, mut stats, wal, commit) =
                self.run_batch(planned.entry, planned.replay, sink_partitions, &summary.query_id).await?;
            stats.lost_offsets += planned.lost;
            let end = entry.end.clone();
            *position.lock().unwrap() = end.clone();
            self.reporter.metrics.set_offsets(&planned.latest, &end);
            self.control.latest.lock().unwrap().extend(planned.latest.iter().map(|(tp, &o)| (tp.clone(), o)));
            let timings = BatchTimings {
                trigger: trigger_start.into_std(),
                previous_trigger: previous_trigger.replace(trigger_start.into_std()),
                plan: plan_took,
                wal,
                commit,
            };
            self.reporter.batch(&entry, &planned.latest, &stats, &timings, batch_started.elapsed());
            summary.add(&stats);
            summary.busy_seconds += (plan_took + batch_started.elapsed()).as_secs_f64();
            summary.processing_seconds = first_dispatch.map_or(0.0, |t| t.elapsed().as_secs_f64());
            start = end;
            sources = entry.sources.clone();
            next_batch_id = entry.batch_id + 1;
            *self.control.snapshot.lock().unwrap() =
                Snapshot { batches_committed: summary.batches, next_batch_id, committed: entry.end.clone() };

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
        if summary.busy_seconds > 0.0 {
            summary.embeddings_per_busy_second = summary.embeddings as f64 / summary.busy_seconds;
        }
        summary.wall_seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// A topic that `subscribe` or `assign` names and the cluster does not have stops the query
    /// before it starts, naming it (a one-shot query would end with nothing done, a continuous
    /// one wait without a word), unless `source.allow_missing_topics` says to wait. Asked twice,
    /// a second apart: a topic being created, or a controller that moved, answers "unknown" for
    /// a moment.
    async fn refuse_missing_topics(&self) -> Result<(), DriverError> {
        let src = &self.spec.source;
        let mut missing = self.broker(KafkaSource::missing_topics).await?;
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            missing = self.broker(KafkaSource::missing_topics).await?;
        }
        let Some(topic) = missing.first() else { return Ok(()) };
        let key = if src.subscribe.is_some() { "source.subscribe" } else { "source.assign" };
        if src.allow_missing_topics {
            tracing::warn!(%topic, "{key} names a topic that does not exist: waiting for it (source.allow_missing_topics)");
            return Ok(());
        }
        Err(SourceError::Topic {
            topic: topic.clone(),
            message: format!(
                "{key} names it, but it does not exist on {}: create it (embedstream produce makes it), or set \
                 source.allow_missing_topics = true to start and wait for it",
                src.bootstrap_servers
            ),
        }
        .into())
    }

    /// Whether this backfill gives way to its live query now (`[trigger.yield_to]`): that
    /// query's group lags by more than `max_lag` on the partitions this query reads. Said on
    /// the page and in `/metrics`, and logged when it starts and ends.
    async fn gives_way(&self, partitions: &[embedstream_core::offsets::TopicPartition]) -> Result<bool, DriverError> {
        let Some(y) = &self.spec.trigger.yield_to else { return Ok(false) };
        let tps = partitions.to_vec();
        let lag = self.broker(move |s| s.live_lag(&tps)).await?;
        let metrics = &self.reporter.metrics;
        metrics.live_lag.set(lag.unwrap_or(0));
        let why = lag
            .filter(|&l| l > y.max_lag as i64)
            .map(|l| format!("live group {} lags by {l} offsets (trigger.yield_to.max_lag = {})", y.group, y.max_lag));
        let mut yielding = self.control.yielding.lock().expect("not poisoned");
        match (&why, yielding.is_some()) {
            (Some(why), false) => tracing::info!(%why, "giving way to the live query: no batch planned"),
            (None, true) => tracing::info!(group = %y.group, "the live query caught up: planning batches again"),
            _ => {}
        }
        if why.is_some() {
            metrics.yielded_triggers.inc();
        }
        *yielding = why;
        Ok(yielding.is_some())
    }

    /// Steps 2 to 4 of one planned batch: returns the entry, what the tasks did, and how long
    /// the write-ahead log and the commit took.
    async fn run_batch(
        &self,
        entry: OffsetLogEntry,
        replay: bool,
        (sink_partitions, dlq_partitions): (i32, i32),
        query_id: &str,
    ) -> Result<(OffsetLogEntry, BatchStats, Duration, Duration), DriverError> {
        let wal_started = Instant::now();
        if !replay {
            self.checkpoint.write_offsets(&entry)?;
        }
        let wal_took = wal_started.elapsed();
        crash::point(CrashPoint::AfterWal, entry.batch_id);

        let tasks = tasks_for(&entry, query_id, self.spec.source.min_partitions, sink_partitions, dlq_partitions);
        let planned = entry.start.records_until(&entry.end);
        self.reporter.metrics.input_rows.inc_by(planned as u64);
        let range = BatchRange {
            batch_id: entry.batch_id,
            query_id,
            start: &entry.start,
            end: &entry.end,
            sources: &entry.sources,
        };
        // The sink's manifests and clean-ups are the query's state too: fenced like the logs.
        self.checkpoint.fence()?;
        let published = self.committer.published(&range).await?;
        let already_published = published.is_some();
        let stats = match published {
            Some(p) => Ok(BatchStats { embeddings: p.embeddings, ..Default::default() }),
            None => self.scheduler.run_batch(entry.batch_id, tasks).await,
        };
        self.reporter.metrics.executors.set(self.scheduler.registry().live().len() as i64);
        self.targets.write(self.scheduler.registry());
        let stats = stats?;

        let commit_started = Instant::now();
        if !already_published {
            self.checkpoint.fence()?;
            self.committer.publish(&range, &stats.files).await?;
            crash::point(CrashPoint::AfterManifest, entry.batch_id);
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
        let (committed, query) = (entry.end.clone(), query_id.to_string());
        if let Err(e) = self.broker(move |s| s.commit_group(&committed, &query)).await {
            // The checkpoint is the source of truth; the group only shows progress.
            tracing::warn!(error = %e, "could not commit offsets to the consumer group");
        }
        Ok((entry, stats, wal_took, commit_started.elapsed()))
    }

    /// The next batch from `start` (offsets in the incarnations `previous` names), or `None`
    /// when there is nothing new to read.
    async fn plan(
        &self,
        batch_id: u64,
        start: &PartitionOffsets,
        previous: &SourceIds,
        target: Option<&PartitionOffsets>,
    ) -> Result<Option<Planned>, DriverError> {
        // A partition the query reads that the answer lacks is asked about again before it
        // counts as gone: one "unknown topic" answer must not stop the query.
        let reading = start.clone();
        let (earliest, latest) = match self.broker(move |s| s.offsets_covering(&reading)).await {
            // Still missing after the retries: the data-loss check decides they are gone.
            Err(SourceError::PartitionsMissing { earliest, latest, .. }) => (earliest, latest),
            answer => answer?,
        };
        // Which incarnation of each topic those offsets are in: a topic deleted and created
        // again, or another cluster, starts over rather than being read from the old offsets.
        let mut topics: Vec<String> = earliest.keys().map(|tp| tp.topic.clone()).collect();
        topics.dedup();
        let sources = self.broker(move |s| s.source_ids(&topics)).await?;
        let mut start = start.clone();
        for loss in planner::check_incarnations(previous, &sources, &mut start, self.spec.source.fail_on_data_loss)? {
            tracing::warn!(%loss, "data loss: reading the new incarnation from its earliest offsets");
        }

        for tp in earliest.keys() {
            if !start.contains_key(tp) {
                // Spark's rule: partitions discovered while the query runs start at earliest.
                tracing::info!(partition = %tp, "new partition");
                start.insert(tp.clone(), earliest[tp]);
            }
        }
        let (start, losses) = planner::check_data_loss(&start, &earliest, &latest, self.spec.source.fail_on_data_loss)?;
        let mut lost = 0;
        for loss in losses {
            tracing::warn!(%loss, "data loss: skipping what the broker no longer has");
            if let DataLoss::Deleted { from, earliest, .. } = loss {
                lost += (earliest - from).max(0) as u64;
            }
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
        if OffsetRange::between(&start, &end).is_empty() {
            return Ok(None);
        }
        let entry = OffsetLogEntry { version: 1, batch_id, timestamp_ms: checkpoint::now_ms(), start, end, sources };
        Ok(Some(Planned { entry, latest, replay: false, lost }))
    }
}

/// The tasks of a logged batch; the same entry always gives the same tasks.
pub fn tasks_for(
    entry: &OffsetLogEntry,
    query_id: &str,
    min_partitions: Option<u32>,
    sink_partitions: i32,
    dlq_partitions: i32,
) -> Vec<TaskDefinition> {
    let ranges = OffsetRange::between(&entry.start, &entry.end);
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
            topic_id: entry.sources.topic_id(&r.tp.topic).to_string(),
            range: Some(r.into()),
        })
        .collect()
}
