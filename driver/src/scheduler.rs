//! Task dispatch.
//!
//! Executors register with the driver's service (`crate::service`) once their model is loaded,
//! into the registry (`crate::executors`). [`Scheduler`] then
//! pushes each task to a free core of a live executor with `ExecutorService.RunTask` and retries
//! a failed attempt (on whichever core is free next) until `MAX_TASK_ATTEMPTS`, as Spark's
//! `spark.task.maxFailures` does. An executor whose RPC fails at the transport level is lost: its
//! cores take no more tasks.
//!
//! A partition's task goes to the executor that last ran that partition (as Spark's Kafka source
//! prefers one executor a partition for its cached consumer), so that an executor's embedding
//! cache sees the same keys again. When that executor has no free core the task waits for one
//! up to `executors.locality_wait` (Spark's `spark.locality.wait`), then takes any free core. A
//! partition never run before goes to the executor that runs the fewest partitions, so that
//! partitions spread over the executors rather than all staying where the first batch put them.

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
    /// Records skipped because their input was the one last embedded for their key.
    pub unchanged: u64,
    /// Inputs the models computed (their workers' batch sizes summed).
    pub model_inputs: u64,
    pub task_attempts: u64,
    pub failed_attempts: u64,
    pub read_micros: u64,
    pub infer_micros: u64,
    pub sink_micros: u64,
    /// The slowest task's exactly-once transaction calls (the batch waits for it): beginning,
    /// and committing; 0 with other sinks.
    pub transaction_begin_micros: u64,
    pub transaction_commit_micros: u64,
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
        self.unchanged += s.unchanged;
        self.model_inputs += s.model_inputs;
        self.read_micros += s.read_micros;
        self.infer_micros += s.infer_micros;
        self.sink_micros += s.sink_micros;
        self.transaction_begin_micros = self.transaction_begin_micros.max(s.transaction_begin_micros);
        self.transaction_commit_micros = self.transaction_commit_micros.max(s.transaction_commit_micros);
    }
}

/// How one attempt ended, seen from the driver.
enum AttemptOutcome {
    Done(Box<TaskSuccessful>),
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
    /// How long a task waits for its partition's executor (`executors.locality_wait`).
    locality_wait: Duration,
}

impl Scheduler {
    pub fn new(registry: Arc<ExecutorRegistry>, deadline: impl Fn(u64) -> Duration + Send + Sync + 'static) -> Self {
        Scheduler {
            registry,
            deadline: Box::new(deadline),
            last_ran: Mutex::new(HashMap::new()),
            locality_wait: Duration::ZERO,
        }
    }

    /// Tasks wait up to `wait` for a core on their partition's last executor.
    pub fn with_locality_wait(mut self, wait: Duration) -> Self {
        self.locality_wait = wait;
        self
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
        // Since when each pending task has been offered slots (its locality wait's start).
        let mut waiting_since: HashMap<u32, Instant> = HashMap::new();

        while !pending.is_empty() || !running.is_empty() {
            for e in self.registry.live() {
                if seen.insert(e.id.clone()) {
                    free.extend(std::iter::repeat_n(e.clone(), e.cores as usize));
                }
            }
            // Drained or lost executors take no new task.
            free.retain(|e| self.registry.is_live(&e.id));
            let now = Instant::now();
            // `last_ran` changes only when an attempt ends, below: read it once a round, not once
            // a task (a batch of 10,000 partitions would count them 10,000 times).
            {
                let last_ran = self.last_ran.lock().expect("not poisoned");
                let owned = partitions_per_executor(&last_ran);
                let mut next = 0;
                while next < pending.len() && !free.is_empty() {
                    let avoid = failed_on.get(&pending[next].task_id).map(String::as_str);
                    let prefer = last_ran.get(&partition_of(&pending[next])).map(String::as_str);
                    let since = *waiting_since.entry(pending[next].task_id).or_insert(now);
                    let wait = prefer.is_some_and(|p| self.registry.is_live(p)) && now < since + self.locality_wait;
                    let choice = Choice { avoid, prefer, wait, owned: &owned };
                    let Some(slot) = pick_slot(&free, |e| e.id.as_str(), &choice) else {
                        // Its executor is busy: the tasks behind it may go meanwhile.
                        next += 1;
                        continue;
                    };
                    let exec = free.remove(slot);
                    let task = pending.remove(next).expect("checked in range");
                    waiting_since.remove(&task.task_id);
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
            }
            // The next moment a task waiting for its partition's executor stops waiting (from the
            // same `now`: a task that waits now has a wake-up).
            let wake = pending
                .iter()
                .filter_map(|t| waiting_since.get(&t.task_id))
                .map(|since| *since + self.locality_wait)
                .filter(|at| *at > now)
                .min();
            if running.is_empty() {
                if let Some(at) = wake {
                    tokio::time::sleep_until(at.into()).await;
                    continue;
                }
                // Tasks are pending and no executor is left: wait for a replacement.
                tracing::warn!(batch_id, pending = pending.len(), "no executor left; waiting for a replacement");
                match tokio::time::timeout(REPLACEMENT_WAIT, registrations.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return Err(SchedulerError::NoExecutors { batch_id }),
                }
            }
            let joined = match wake {
                Some(at) => tokio::select! {
                    joined = running.join_next() => joined,
                    () = tokio::time::sleep_until(at.into()) => continue,
                },
                None => running.join_next().await,
            };
            let joined = joined.expect("checked non-empty");
            let (exec, mut task, outcome) = joined.expect("task attempts do not panic");
            self.registry.task_ended(&exec.id, batch_id, task.task_id);
            stats.task_attempts += 1;
            let exec_id = exec.id.clone();
            let (reason, message) = match outcome {
                AttemptOutcome::Done(s) => {
                    stats.add(&exec.id, *s);
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

/// What decides a task's slot.
struct Choice<'a> {
    /// The executor its last attempt failed on.
    avoid: Option<&'a str>,
    /// The executor that last ran its partition.
    prefer: Option<&'a str>,
    /// Whether to wait for a slot on `prefer` rather than take another.
    wait: bool,
    /// Partitions each executor last ran.
    owned: &'a HashMap<String, usize>,
}

/// Partitions each executor last ran.
fn partitions_per_executor(last_ran: &HashMap<(String, i32), String>) -> HashMap<String, usize> {
    let mut owned = HashMap::new();
    for exec in last_ran.values() {
        *owned.entry(exec.clone()).or_default() += 1;
    }
    owned
}

/// The index in `free` of a task's slot, or none to wait: a slot not on `avoid` (where its last
/// attempt failed) if there is one; else one on `prefer` (where its partition last ran); else,
/// unless it waits for `prefer`, one on the executor that runs the fewest partitions.
fn pick_slot<T>(free: &[T], id: impl Fn(&T) -> &str, choice: &Choice) -> Option<usize> {
    if let Some(a) = choice.avoid {
        if let Some(i) = free.iter().rposition(|e| id(e) != a) {
            return Some(i);
        }
    }
    let prefer = choice.prefer.filter(|&p| choice.avoid != Some(p));
    if let Some(i) = prefer.and_then(|p| free.iter().rposition(|e| id(e) == p)) {
        return Some(i);
    }
    if choice.wait && prefer.is_some() {
        return None;
    }
    let load = |i: usize| choice.owned.get(id(&free[i])).copied().unwrap_or(0);
    // The last of the least loaded: `free` ends with the slots freed most recently.
    (0..free.len()).rev().min_by_key(|&i| load(i))
}

async fn run_attempt(exec: &ExecutorInfo, task: TaskDefinition) -> AttemptOutcome {
    match exec.client().run_task(task).await {
        Ok(resp) => match resp.into_inner().status {
            Some(task_status::Status::Successful(s)) => AttemptOutcome::Done(Box::new(s)),
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
    use std::collections::HashMap;

    use super::{pick_slot, Choice};

    fn pick(free: &mut Vec<&str>, avoid: Option<&str>, prefer: Option<&str>, wait: bool) -> Option<String> {
        pick_owned(free, avoid, prefer, wait, &HashMap::new())
    }

    fn pick_owned(
        free: &mut Vec<&str>,
        avoid: Option<&str>,
        prefer: Option<&str>,
        wait: bool,
        owned: &HashMap<String, usize>,
    ) -> Option<String> {
        let choice = Choice { avoid, prefer, wait, owned };
        pick_slot(free, |e| e, &choice).map(|i| free.remove(i).to_string())
    }

    /// Issue 14, finding 13: a retry prefers an executor other than the one it failed on.
    #[test]
    fn a_retry_goes_to_another_executor_when_there_is_one() {
        let mut free = vec!["b", "a", "a"];
        assert_eq!(pick(&mut free, Some("a"), Some("a"), true).as_deref(), Some("b"));
        assert_eq!(pick(&mut free, Some("a"), None, false).as_deref(), Some("a"), "only the failed one is left");
        assert_eq!(pick(&mut free, None, None, false).as_deref(), Some("a"));
        assert!(free.is_empty());
    }

    /// Issue 20: a partition's task goes back to the executor that ran it last, if it is free.
    #[test]
    fn a_partition_goes_back_to_its_last_executor_when_it_is_free() {
        let mut free = vec!["a", "b", "c"];
        assert_eq!(pick(&mut free, None, Some("a"), false).as_deref(), Some("a"));
        assert_eq!(pick(&mut free, None, Some("a"), false).as_deref(), Some("c"), "a is busy, no wait: any free one");
        assert_eq!(pick(&mut free, None, Some("gone"), false).as_deref(), Some("b"));
    }

    /// Within the locality wait a task whose executor is busy takes no other slot.
    #[test]
    fn a_task_waits_for_its_partitions_executor_within_the_locality_wait() {
        let mut free = vec!["a", "b"];
        assert_eq!(pick(&mut free, None, Some("c"), true), None, "c is busy");
        assert_eq!(pick(&mut free, Some("c"), Some("c"), true).as_deref(), Some("b"), "a retry does not wait for c");
        assert_eq!(pick(&mut free, None, Some("c"), false).as_deref(), Some("a"), "past the wait");
    }

    /// A partition never run before goes to the executor running the fewest partitions, so the
    /// partitions of batches that each hold one spread over the executors.
    #[test]
    fn a_new_partition_goes_to_the_executor_with_the_fewest_partitions() {
        let owned = HashMap::from([("a".to_string(), 2), ("b".to_string(), 1)]);
        let mut free = vec!["c", "b", "a"];
        assert_eq!(pick_owned(&mut free, None, None, false, &owned).as_deref(), Some("c"));
        assert_eq!(pick_owned(&mut free, None, None, false, &owned).as_deref(), Some("b"));
        assert_eq!(pick_owned(&mut free, None, None, false, &owned).as_deref(), Some("a"));
    }
}
