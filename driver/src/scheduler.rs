//! Executors the driver knows, the gRPC service they talk to, and task dispatch.
//!
//! Executors register with [`DriverServiceImpl`] once their model is loaded. [`Scheduler`] then
//! pushes each task to a free core of a live executor with `ExecutorService.RunTask` and retries
//! a failed attempt (on whichever core is free next) until `MAX_TASK_ATTEMPTS`, as Spark's
//! `spark.task.maxFailures` does. An executor whose RPC fails at the transport level is lost: its
//! cores take no more tasks.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embedstream_proto::auth::ClusterToken;
use embedstream_proto::pb::driver_service_server::DriverService;
use embedstream_proto::pb::executor_service_client::ExecutorServiceClient;
use embedstream_proto::pb::{
    task_status, FailureReason, GetJobSpecRequest, GetJobSpecResponse, HeartbeatRequest, HeartbeatResponse,
    RegisterExecutorRequest, RegisterExecutorResponse, TaskDefinition, TaskSuccessful,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

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

/// A client of one executor's ExecutorService, carrying the cluster token.
pub type ExecutorClient = ExecutorServiceClient<InterceptedService<Channel, ClusterToken>>;

#[derive(Clone)]
pub struct ExecutorInfo {
    pub id: String,
    pub address: String,
    pub cores: u32,
    pub pid: u32,
    /// host:port of its /metrics; empty if it serves none.
    pub metrics_address: String,
    client: ExecutorClient,
}

impl ExecutorInfo {
    pub fn client(&self) -> ExecutorClient {
        self.client.clone()
    }
}

/// Executors registered with this driver; `registered` counts registrations for waiters.
/// A live executor takes tasks; a draining one finishes its tasks and takes no new one; a lost
/// one is gone.
pub struct ExecutorRegistry {
    executors: Mutex<HashMap<String, ExecutorInfo>>,
    lost: Mutex<HashSet<String>>,
    draining: Mutex<HashSet<String>>,
    registered: watch::Sender<usize>,
}

impl Default for ExecutorRegistry {
    fn default() -> Self {
        ExecutorRegistry {
            executors: Mutex::default(),
            lost: Mutex::default(),
            draining: Mutex::default(),
            registered: watch::channel(0).0,
        }
    }
}

impl ExecutorRegistry {
    /// Executors that take tasks, by id.
    pub fn live(&self) -> Vec<ExecutorInfo> {
        self.all().into_iter().filter(|(_, draining)| !draining).map(|(e, _)| e).collect()
    }

    /// Executors not lost, with whether each is draining, by id.
    pub fn all(&self) -> Vec<(ExecutorInfo, bool)> {
        let lost = self.lost.lock().unwrap();
        let draining = self.draining.lock().unwrap();
        let mut v: Vec<(ExecutorInfo, bool)> = self
            .executors
            .lock()
            .unwrap()
            .values()
            .filter(|e| !lost.contains(&e.id))
            .map(|e| (e.clone(), draining.contains(&e.id)))
            .collect();
        v.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        v
    }

    pub fn mark_lost(&self, id: &str) {
        self.lost.lock().unwrap().insert(id.to_string());
    }

    /// No new task goes to `id`; its tasks in flight finish.
    pub fn drain(&self, id: &str) {
        self.draining.lock().unwrap().insert(id.to_string());
    }

    /// Whether `id` ever registered.
    pub fn knows(&self, id: &str) -> bool {
        self.executors.lock().unwrap().contains_key(id)
    }

    /// Whether `id` is registered, not lost and not draining.
    pub fn is_live(&self, id: &str) -> bool {
        self.knows(id) && !self.is_lost(id) && !self.draining.lock().unwrap().contains(id)
    }

    fn is_lost(&self, id: &str) -> bool {
        self.lost.lock().unwrap().contains(id)
    }

    /// Waits until at least `n` executors have registered.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.registered.subscribe()
    }
}

/// The driver's gRPC service for its executors.
pub struct DriverServiceImpl {
    pub registry: Arc<ExecutorRegistry>,
    /// Sent on every call to executors.
    pub token: ClusterToken,
    pub job_spec_toml: String,
    pub query_id: String,
}

#[tonic::async_trait]
impl DriverService for DriverServiceImpl {
    async fn get_job_spec(&self, _: Request<GetJobSpecRequest>) -> Result<Response<GetJobSpecResponse>, Status> {
        Ok(Response::new(GetJobSpecResponse {
            job_spec_toml: self.job_spec_toml.clone(),
            query_id: self.query_id.clone(),
        }))
    }

    async fn register_executor(
        &self,
        request: Request<RegisterExecutorRequest>,
    ) -> Result<Response<RegisterExecutorResponse>, Status> {
        let r = request.into_inner();
        if r.cores == 0 {
            return Err(Status::invalid_argument("cores must be at least 1"));
        }
        let channel = Endpoint::from_shared(format!("http://{}", r.address))
            .map_err(|e| Status::invalid_argument(format!("address {}: {e}", r.address)))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        tracing::info!(executor = %r.executor_id, address = %r.address, cores = r.cores, pid = r.pid, "executor registered");
        let info = ExecutorInfo {
            id: r.executor_id.clone(),
            address: r.address,
            cores: r.cores,
            pid: r.pid,
            metrics_address: r.metrics_address,
            client: ExecutorServiceClient::with_interceptor(channel, self.token.clone()),
        };
        self.registry.executors.lock().unwrap().insert(r.executor_id.clone(), info);
        self.registry.lost.lock().unwrap().remove(&r.executor_id);
        self.registry.registered.send_modify(|n| *n += 1);
        Ok(Response::new(RegisterExecutorResponse {}))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let id = request.into_inner().executor_id;
        let known = self.registry.executors.lock().unwrap().contains_key(&id) && !self.registry.is_lost(&id);
        Ok(Response::new(HeartbeatResponse { known }))
    }
}

/// What the tasks of one batch did, summed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchStats {
    pub rows_read: u64,
    pub embeddings: u64,
    pub dead_letters: u64,
    pub offset_gaps: u64,
    pub task_attempts: u64,
    pub failed_attempts: u64,
    pub read_micros: u64,
    pub infer_micros: u64,
    pub sink_micros: u64,
    /// Input rows per executor id.
    pub rows_per_executor: BTreeMap<String, u64>,
    /// Seconds from each output record's Kafka timestamp to the sink's acknowledgement.
    pub latencies: Vec<f32>,
    /// Files the successful attempts wrote (file sinks), for the batch's manifest.
    pub files: Vec<embedstream_proto::pb::OutputFile>,
}

impl BatchStats {
    fn add(&mut self, executor: &str, s: TaskSuccessful) {
        *self.rows_per_executor.entry(executor.to_string()).or_default() += s.rows_read;
        self.latencies.extend(s.latency_seconds.iter().copied());
        self.files.extend(s.files);
        self.rows_read += s.rows_read;
        self.embeddings += s.embeddings_written;
        self.dead_letters += s.dead_letters;
        self.offset_gaps += s.offset_gaps;
        self.read_micros += s.read_micros;
        self.infer_micros += s.infer_micros;
        self.sink_micros += s.sink_micros;
    }
}

/// How one attempt ended, seen from the driver.
enum AttemptOutcome {
    Done(TaskSuccessful),
    Failed { reason: FailureReason, message: String, retryable: bool },
    ExecutorLost(String),
}

pub struct Scheduler {
    registry: Arc<ExecutorRegistry>,
}

impl Scheduler {
    pub fn new(registry: Arc<ExecutorRegistry>) -> Self {
        Scheduler { registry }
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

        while !pending.is_empty() || !running.is_empty() {
            for e in self.registry.live() {
                if seen.insert(e.id.clone()) {
                    free.extend(std::iter::repeat_n(e.clone(), e.cores as usize));
                }
            }
            // Drained or lost executors take no new task.
            free.retain(|e| self.registry.is_live(&e.id));
            while !pending.is_empty() && !free.is_empty() {
                let exec = free.pop().expect("checked non-empty");
                let task = pending.pop_front().expect("checked non-empty");
                running.spawn(async move {
                    let outcome = run_attempt(&exec, task.clone()).await;
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
            stats.task_attempts += 1;
            let (reason, message) = match outcome {
                AttemptOutcome::Done(s) => {
                    stats.add(&exec.id, s);
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
                AttemptOutcome::ExecutorLost(message) => {
                    tracing::warn!(executor = %exec.id, %message, "executor lost");
                    self.registry.mark_lost(&exec.id);
                    free.retain(|e| e.id != exec.id);
                    (FailureReason::Unspecified, format!("executor {} lost: {message}", exec.id))
                }
            };
            stats.failed_attempts += 1;
            task.attempt += 1;
            tracing::warn!(batch_id, task_id = task.task_id, attempt = task.attempt, ?reason, %message, "task attempt failed");
            if task.attempt >= MAX_TASK_ATTEMPTS {
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
        Err(status) => AttemptOutcome::ExecutorLost(status.to_string()),
    }
}
