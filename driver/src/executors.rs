//! The executors a driver knows: registered, draining (finishing their tasks, taking no new
//! one) or lost; and how the driver calls one. For the page it also keeps what each executor
//! last said of itself (its heartbeat's [`ExecutorHealth`]), the tasks it runs now, and why a
//! lost one ended.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use embedstream_core::auth::ClusterToken;
use embedstream_core::health::ExecutorHealth;
use embedstream_core::offsets::OffsetRange;
use embedstream_proto::pb::executor_service_client::ExecutorServiceClient;
use embedstream_proto::serve::Caller;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

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
    /// An executor at `address` (host:port), reached lazily with the caller's TLS, its token on
    /// every call.
    pub fn connect(
        id: String,
        address: String,
        cores: u32,
        pid: u32,
        metrics_address: String,
        caller: &Caller,
    ) -> Result<ExecutorInfo, String> {
        let channel = caller
            .endpoint(&address)
            .map_err(|e| format!("address {address}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let client = ExecutorServiceClient::with_interceptor(channel, caller.token.clone());
        Ok(ExecutorInfo { id, address, cores, pid, metrics_address, client })
    }

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
    /// The last executor whose launcher said how it ended (YARN's exit status and diagnostics,
    /// a node agent's memory kill), and why: what a task that lost its executor failed of.
    last_end: Mutex<Option<(String, String)>>,
    /// Why each executor that ended did, as its launcher or the scheduler saw it.
    ended_why: Mutex<HashMap<String, String>>,
    /// Each executor's last heartbeat report, and the one before (for rates).
    health: Mutex<HashMap<String, Beats>>,
    /// The task attempts each executor runs now, by (batch, task).
    running: Mutex<HashMap<String, TasksInFlight>>,
    /// Worker restarts as heartbeats reported them: when, which executor, how many more.
    restarts: Mutex<VecDeque<(Instant, String, u64)>>,
    /// The last task attempt that failed: when, and why.
    last_failure: Mutex<Option<(Instant, String)>>,
    registered: watch::Sender<usize>,
}

/// How long reported worker restarts are kept (the restart alert's window).
const RESTARTS_KEPT: Duration = Duration::from_secs(15 * 60);

/// An executor's task attempts in flight, by (batch, task).
type TasksInFlight = BTreeMap<(u64, u32), RunningTask>;

/// An executor's last two heartbeat reports, with when they came.
#[derive(Clone)]
pub struct Beats {
    pub last: (ExecutorHealth, Instant),
    pub previous: Option<(ExecutorHealth, Instant)>,
}

impl Beats {
    /// Embeddings per second between the last two reports (0 with one report).
    pub fn embeddings_per_second(&self) -> f64 {
        match &self.previous {
            Some((before, at)) => {
                let secs = self.last.1.duration_since(*at).as_secs_f64();
                let done = self.last.0.embeddings.saturating_sub(before.embeddings);
                if secs > 0.0 {
                    done as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        }
    }
}

/// A task attempt in flight on an executor.
#[derive(Debug, Clone)]
pub struct RunningTask {
    pub batch_id: u64,
    pub task_id: u32,
    pub attempt: u32,
    pub range: Option<OffsetRange>,
    pub started: Instant,
}

impl Default for ExecutorRegistry {
    fn default() -> Self {
        ExecutorRegistry {
            executors: Mutex::default(),
            lost: Mutex::default(),
            draining: Mutex::default(),
            last_end: Mutex::default(),
            ended_why: Mutex::default(),
            health: Mutex::default(),
            running: Mutex::default(),
            restarts: Mutex::default(),
            last_failure: Mutex::default(),
            registered: watch::channel(0).0,
        }
    }
}

impl ExecutorRegistry {
    /// Executors that take tasks, by id.
    pub fn live(&self) -> Vec<ExecutorInfo> {
        self.all().into_iter().filter(|(_, draining)| !draining).map(|(e, _)| e).collect()
    }

    /// Executors that were lost, with why where it is known, by id.
    pub fn lost(&self) -> Vec<(ExecutorInfo, Option<String>)> {
        let lost = self.lost.lock().unwrap().clone();
        let why = self.ended_why.lock().unwrap();
        let mut v: Vec<_> = (self.executors.lock().unwrap().values())
            .filter(|e| lost.contains(&e.id))
            .map(|e| (e.clone(), why.get(&e.id).cloned()))
            .collect();
        v.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        v
    }

    /// Keeps `executor`'s heartbeat report.
    pub fn beat(&self, executor: &str, report: ExecutorHealth) {
        let mut health = self.health.lock().unwrap();
        let now = Instant::now();
        let before = health.get(executor).map_or(0, |b| b.last.0.worker_restarts);
        if report.worker_restarts > before {
            let mut restarts = self.restarts.lock().unwrap();
            restarts.push_back((now, executor.to_string(), report.worker_restarts - before));
            // The page looks back 15 minutes at most.
            while restarts.front().is_some_and(|(at, _, _)| now.duration_since(*at) > RESTARTS_KEPT) {
                restarts.pop_front();
            }
        }
        let beats = match health.remove(executor) {
            Some(b) => Beats { previous: Some(b.last), last: (report, now) },
            None => Beats { last: (report, now), previous: None },
        };
        health.insert(executor.to_string(), beats);
    }

    /// Worker restarts per executor reported within `span` of now.
    pub fn restarts_within(&self, span: Duration) -> BTreeMap<String, u64> {
        let mut by_executor = BTreeMap::new();
        for (at, executor, n) in self.restarts.lock().unwrap().iter() {
            if at.elapsed() <= span {
                *by_executor.entry(executor.clone()).or_default() += n;
            }
        }
        by_executor
    }

    /// `executor`'s last heartbeat reports, if it sent one.
    pub fn beats(&self, executor: &str) -> Option<Beats> {
        self.health.lock().unwrap().get(executor).cloned()
    }

    /// A task attempt starts on `executor`.
    pub fn task_started(&self, executor: &str, task: RunningTask) {
        let mut running = self.running.lock().unwrap();
        running.entry(executor.to_string()).or_default().insert((task.batch_id, task.task_id), task);
    }

    /// A task attempt on `executor` ended (done, failed or given up on).
    pub fn task_ended(&self, executor: &str, batch_id: u64, task_id: u32) {
        if let Some(tasks) = self.running.lock().unwrap().get_mut(executor) {
            tasks.remove(&(batch_id, task_id));
        }
    }

    /// A task attempt failed (it is retried, or its batch fails): why, for the page.
    pub fn task_failed(&self, why: String) {
        *self.last_failure.lock().unwrap() = Some((Instant::now(), why));
    }

    /// The last task attempt that failed, and how long ago.
    pub fn last_task_failure(&self) -> Option<(Duration, String)> {
        self.last_failure.lock().unwrap().as_ref().map(|(at, why)| (at.elapsed(), why.clone()))
    }

    /// The task attempts `executor` runs now.
    pub fn running(&self, executor: &str) -> Vec<RunningTask> {
        self.running.lock().unwrap().get(executor).map(|t| t.values().cloned().collect()).unwrap_or_default()
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

    /// Marks `id` lost with how its launcher saw it end.
    pub fn ended(&self, id: &str, why: &str) {
        self.mark_lost(id);
        self.ended_why.lock().unwrap().insert(id.to_string(), why.to_string());
        *self.last_end.lock().unwrap() = Some((id.to_string(), why.to_string()));
    }

    /// Marks `id` lost because a call to it failed, with the call's error (unless its launcher
    /// already said why it ended).
    pub fn lost_with(&self, id: &str, error: &str) {
        self.mark_lost(id);
        self.ended_why.lock().unwrap().entry(id.to_string()).or_insert_with(|| error.to_string());
    }

    /// The last executor that ended, as its launcher told it: (id, why).
    pub fn last_end(&self) -> Option<(String, String)> {
        self.last_end.lock().unwrap().clone()
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

    pub fn is_lost(&self, id: &str) -> bool {
        self.lost.lock().unwrap().contains(id)
    }

    /// Adds (or, registering again, replaces) an executor; it is live.
    pub fn register(&self, info: ExecutorInfo) {
        self.lost.lock().unwrap().remove(&info.id);
        self.executors.lock().unwrap().insert(info.id.clone(), info);
        self.registered.send_modify(|n| *n += 1);
    }

    /// Waits until at least `n` executors have registered.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.registered.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_count_what_each_heartbeat_adds_and_rates_come_from_the_last_two() {
        let registry = ExecutorRegistry::default();
        let beat =
            |restarts, embeddings| ExecutorHealth { worker_restarts: restarts, embeddings, ..Default::default() };
        registry.beat("exec-1", beat(0, 0));
        registry.beat("exec-1", beat(2, 10));
        registry.beat("exec-1", beat(2, 20));
        registry.beat("exec-2", beat(1, 0));
        registry.beat("exec-1", beat(5, 30));
        let restarts = registry.restarts_within(Duration::from_secs(60));
        assert_eq!(restarts, [("exec-1".to_string(), 5), ("exec-2".to_string(), 1)].into_iter().collect());
        let beats = registry.beats("exec-1").unwrap();
        assert_eq!((beats.previous.unwrap().0.embeddings, beats.last.0.embeddings), (20, 30));
        assert!(registry.beats("exec-3").is_none());
    }
}
