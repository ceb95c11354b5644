//! Task dispatch.
//!
//! Executors register with the driver's service (`crate::service`) once their model is loaded,
//! into the registry (`crate::executors`). [`Scheduler`] then
//! pushes each task to a free core of a live executor with `ExecutorService.RunTask` and retries
//! a failed attempt (on whichever core is free next) until `MAX_TASK_ATTEMPTS`, as Spark's
//! `spark.task.maxFailures` does. An executor whose RPC fails at the transport level is lost: its
//! cores take no more tasks.
//!
//! A partition's task goes to the executor that last ran that partition when it has a free core
//! (as Spark's Kafka source prefers one executor a partition for its cached consumer), so that
//! an executor's embedding cache sees the same keys again; otherwise to any free core (no
//! waiting for locality).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embedstream_core::latency::LatencyHistogram;
use embedstream_core::offsets::OffsetRange;
use embedstream_core::progress::{count_reason, keep_newest, sample_reason, DeadLetterSample};

use embedstream_proto::pb::{task_status, FailureReason, TaskDefinition, TaskSuccessful};
use tokio::task::JoinSet;

use crate::executors::{ExecutorInfo, ExecutorRegistry, RunningTask};

/// Attempts per task before the batch fails.
pub const MAX_TASK_ATTEMPTS: u32 = 4;
/// How long a batch whose executors are all gone waits for a replacement to register.
const REPLACEMENT_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("task {task_id} of batch {batch_id} failed {attempts} times, last: {reason:?}: {message}")]
    TaskFailed { batch_id: u64, task_id: u32, attempts: u32, reason: FailureReason, message: String },
    #[error("task {task_id} of batch {batch_id} cannot succeed: {reason:?}: {message}")]
    Fatal { batch_id: u64, task_id: u32, reason: FailureReason, message: String },
    #[error("no live executor is left to run batch {batch_id}")]
    NoExecutors { batch_id: u64 },
}

/// What the tasks of one batch did, summed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchStats {
    pub rows_read: u64,
    pub embeddings: u64,
    pub dead_letters: u64,
    pub offset_gaps: u64,
    /// Offsets deleted by the broker before they were read (skipped: `fail_on_data_loss = false`),
    /// found when the batch was planned or by its tasks.
    pub lost_offsets: u64,
    /// Texts the executors' embedding caches answered, and those they sent to the model.
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub task_attempts: u64,
    pub failed_attempts: u64,
    pub read_micros: u64,
    pub infer_micros: u64,
    pub sink_micros: u64,
    /// Input rows per executor id.
    pub rows_per_executor: BTreeMap<String, u64>,
    /// Seconds from each output record's Kafka timestamp to the sink's acknowledgement.
    pub latency: LatencyHistogram,
    /// Files the successful attempts wrote (file sinks), for the batch's manifest.
    pub files: Vec<embedstream_core::manifest::ManifestFile>,
    /// Dead letters by the class of their reason, and the newest few.
    pub dead_letter_reasons: BTreeMap<String, u64>,
    pub dead_letter_samples: Vec<DeadLetterSample>,
}

impl BatchStats {
    fn add(&mut self, executor: &str, s: TaskSuccessful) {
        *self.rows_per_executor.entry(executor.to_string()).or_default() += s.rows_read;
        // A histogram of the wrong shape (another version's executor) is left out of the metric.
        if let Some(l) = s.latency.and_then(|l| LatencyHistogram::try_from(l).ok()) {
            self.latency.merge(&l);
        }
        self.files.extend(s.files.into_iter().map(Into::into));
        // Bounded again: a task from an older executor may report any number of classes.
        for (reason, n) in s.dead_letter_reasons {
            count_reason(&mut self.dead_letter_reasons, reason, n);
        }
        self.dead_letter_samples.extend(s.dead_letter_samples.into_iter().map(|d| {
            let mut d: DeadLetterSample = d.into();
            d.reason = sample_reason(&d.reason);
            d
        }));
        keep_newest(&mut self.dead_letter_samples);
        self.rows_read += s.rows_read;
        self.embeddings += s.embeddings_written;
        self.dead_letters += s.dead_letters;
        self.offset_gaps += s.offset_gaps;
        self.lost_offsets += s.lost_offsets;
        self.cache_hits += s.cache_hits;
        self.cache_misses += s.cache_misses;
        self.read_micros += s.read_micros;
        self.infer_micros += s.infer_micros;
        self.sink_micros += s.sink_micros;
    }
}

/// How one attempt ended, seen from the driver.
enum AttemptOutcome {
    Done(TaskSuccessful),
    Failed {
        reason: FailureReason,
        message: String,
        retryable: bool,
    },
    ExecutorLost(String),
    /// The attempt ran past its deadline.
    TimedOut(Duration),
}

pub struct Scheduler {
    registry: Arc<ExecutorRegistry>,
    /// A task attempt's deadline, from its number of records.
    deadline: Box<dyn Fn(u64) -> Duration + Send + Sync>,
    /// The executor that last ran each source partition's task to success.
    last_ran: Mutex<HashMap<(String, i32), String>>,
}

impl Scheduler {
    pub fn new(registry: Arc<ExecutorRegistry>, deadline: impl Fn(u64) -> Duration + Send + Sync + 'static) -> Self {
        Scheduler { registry, deadline: Box::new(deadline), last_ran: Mutex::new(HashMap::new()) }
    }

    /// The executors this scheduler dispatches to.
    pub fn registry(&self) -> &ExecutorRegistry {
        &self.registry
    }

    /// Runs every task of a batch to success, or fails the batch.
    pub async fn run_batch(&self, batch_id: u64, tasks: Vec<TaskDefinition>) -> Result<BatchStats, SchedulerError> {
        let mut pending: VecDeque<TaskDefinition> = tasks.into();
        // One slot per core of each live executor; executors that register during the batch
        // (replacements, scale-up) add theirs.
        let mut seen: HashSet<String> = HashSet::new();
        let mut free: Vec<ExecutorInfo> = Vec::new();
        let mut running = JoinSet::new();
        let mut stats = BatchStats::default();
        let mut registrations = self.registry.subscribe();
        // Where each task's last attempt failed: its retry goes elsewhere when it can (the
        // executor may be the reason, a broken producer or a sick disk).
        let mut failed_on: HashMap<u32, String> = HashMap::new();

        while !pending.is_empty() || !running.is_empty() {
            for e in self.registry.live() {
                if seen.insert(e.id.clone()) {
                    free.extend(std::iter::repeat_n(e.clone(), e.cores as usize));
                }
            }
            // Drained or lost executors take no new task.
            free.retain(|e| self.registry.is_live(&e.id));
            while !pending.is_empty() && !free.is_empty() {
                let task = pending.pop_front().expect("checked non-empty");
                let avoid = failed_on.get(&task.task_id).map(String::as_str);
                let prefer = self.last_ran.lock().expect("not poisoned").get(&partition_of(&task)).cloned();
                let exec = take_slot(&mut free, |e| e.id.as_str(), avoid, prefer.as_deref());
                let records = task.range.as_ref().map_or(0, |r| (r.until_offset - r.from_offset).max(0) as u64);
                let deadline = (self.deadline)(records);
                self.registry.task_started(
                    &exec.id,
                    RunningTask {
                        batch_id,
                        task_id: task.task_id,
                        attempt: task.attempt,
                        range: task.range.clone().and_then(|r| OffsetRange::try_from(r).ok()),
                        started: Instant::now(),
                    },
                );
                running.spawn(async move {
                    // Past its deadline the attempt's call is dropped (the executor cancels the
                    // task, and its workers come back) and the task runs again.
                    let outcome = match tokio::time::timeout(deadline, run_attempt(&exec, task.clone())).await {
                        Ok(outcome) => outcome,
                        Err(_) => AttemptOutcome::TimedOut(deadline),
                    };
                    (exec, task, outcome)
                });
            }
            if running.is_empty() {
                // Tasks are pending and no executor is left: wait for a replacement.
                tracing::warn!(batch_id, pending = pending.len(), "no executor left; waiting for a replacement");
                match tokio::time::timeout(REPLACEMENT_WAIT, registrations.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return Err(SchedulerError::NoExecutors { batch_id }),
                }
            }
            let joined = running.join_next().await.expect("checked non-empty");
            let (exec, mut task, outcome) = joined.expect("task attempts do not panic");
            self.registry.task_ended(&exec.id, batch_id, task.task_id);
            stats.task_attempts += 1;
            let exec_id = exec.id.clone();
            let (reason, message) = match outcome {
                AttemptOutcome::Done(s) => {
                    stats.add(&exec.id, s);
                    self.last_ran.lock().expect("not poisoned").insert(partition_of(&task), exec.id.clone());
                    free.push(exec);
                    continue;
                }
                AttemptOutcome::Failed { reason, message, retryable: false } => {
                    return Err(SchedulerError::Fatal { batch_id, task_id: task.task_id, reason, message });
                }
                AttemptOutcome::Failed { reason, message, .. } => {
                    if !self.registry.is_lost(&exec.id) {
                        free.push(exec);
                    }
                    (reason, message)
                }
                // The executor may still be busy with it: its slot stays taken, so the retry
                // goes to another slot, on another executor where there is one.
                AttemptOutcome::TimedOut(deadline) => (
                    FailureReason::TimedOut,
                    format!("no answer from executor {} in {deadline:?} (executors.task_timeout)", exec.id),
                ),
                AttemptOutcome::ExecutorLost(message) => {
                    tracing::warn!(executor = %exec.id, %message, "executor lost");
                    self.registry.lost_with(&exec.id, &message);
                    free.retain(|e| e.id != exec.id);
                    (FailureReason::Unspecified, format!("executor {} lost: {message}", exec.id))
                }
            };
            stats.failed_attempts += 1;
            failed_on.insert(task.task_id, exec_id);
            task.attempt += 1;
            tracing::warn!(batch_id, task_id = task.task_id, attempt = task.attempt, ?reason, %message, "task attempt failed");
            self.registry.task_failed(format!(
                "batch {batch_id}, task {}, attempt {} failed: {message}",
                task.task_id, task.attempt
            ));
            if task.attempt >= MAX_TASK_ATTEMPTS {
                // A task that lost its executors failed of why they ended, where a launcher said.
                let message = match (reason, self.registry.last_end()) {
                    (FailureReason::Unspecified, Some((id, why))) if message.contains(" lost: ") => {
                        format!("{message} (the last executor that ended, {id}: {why})")
                    }
                    _ => message,
                };
                return Err(SchedulerError::TaskFailed {
                    batch_id,
                    task_id: task.task_id,
                    attempts: task.attempt,
                    reason,
                    message,
                });
            }
            pending.push_front(task);
        }
        Ok(stats)
    }
}

/// A task's source partition.
fn partition_of(task: &TaskDefinition) -> (String, i32) {
    task.range.as_ref().map_or((String::new(), -1), |r| (r.topic.clone(), r.partition))
}

/// A free slot for a task: one not on `avoid` (where its last attempt failed) if there is one;
/// else one on `prefer` (where its partition last ran) if there is one.
fn take_slot<T>(free: &mut Vec<T>, id: impl Fn(&T) -> &str, avoid: Option<&str>, prefer: Option<&str>) -> T {
    if let Some(a) = avoid {
        if let Some(i) = free.iter().rposition(|e| id(e) != a) {
            return free.remove(i);
        }
    }
    let preferred = prefer.filter(|&p| avoid != Some(p)).and_then(|p| free.iter().rposition(|e| id(e) == p));
    match preferred {
        Some(i) => free.remove(i),
        None => free.pop().expect("a free slot"),
    }
}

async fn run_attempt(exec: &ExecutorInfo, task: TaskDefinition) -> AttemptOutcome {
    match exec.client().run_task(task).await {
        Ok(resp) => match resp.into_inner().status {
            Some(task_status::Status::Successful(s)) => AttemptOutcome::Done(s),
            Some(task_status::Status::Failed(f)) => {
                AttemptOutcome::Failed { reason: f.reason(), message: f.message, retryable: f.retryable }
            }
            None => AttemptOutcome::Failed {
                reason: FailureReason::Unspecified,
                message: "executor answered without a status".into(),
                retryable: true,
            },
        },
        // An answer over the message limit is not a lost executor: the executor is fine, and
        // replacing it would write the output again for nothing.
        Err(status) if status.code() == tonic::Code::OutOfRange => AttemptOutcome::Failed {
            reason: FailureReason::Unspecified,
            message: format!("the executor's answer was refused: {}", status.message()),
            retryable: false,
        },
        Err(status) => AttemptOutcome::ExecutorLost(status.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::take_slot;

    /// Issue 14, finding 13: a retry prefers an executor other than the one it failed on.
    #[test]
    fn a_retry_goes_to_another_executor_when_there_is_one() {
        let mut free = vec!["b", "a", "a"];
        assert_eq!(take_slot(&mut free, |e| e, Some("a"), Some("a")), "b");
        assert_eq!(take_slot(&mut free, |e| e, Some("a"), None), "a", "only the failed one is left");
        assert_eq!(take_slot(&mut free, |e| e, None, None), "a");
        assert!(free.is_empty());
    }

    /// Issue 20: a partition's task goes back to the executor that ran it last, if it is free.
    #[test]
    fn a_partition_goes_back_to_its_last_executor_when_it_is_free() {
        let mut free = vec!["a", "b", "c"];
        assert_eq!(take_slot(&mut free, |e| e, None, Some("a")), "a");
        assert_eq!(take_slot(&mut free, |e| e, None, Some("a")), "c", "a is busy: any free one");
        assert_eq!(take_slot(&mut free, |e| e, None, Some("gone")), "b");
    }
}
