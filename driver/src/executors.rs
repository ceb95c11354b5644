//! The executors a driver knows: registered, draining (finishing their tasks, taking no new
//! one) or lost; and how the driver calls one.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use embedstream_core::auth::ClusterToken;
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
    registered: watch::Sender<usize>,
}

impl Default for ExecutorRegistry {
    fn default() -> Self {
        ExecutorRegistry {
            executors: Mutex::default(),
            lost: Mutex::default(),
            draining: Mutex::default(),
            last_end: Mutex::default(),
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

    /// Marks `id` lost with how its launcher saw it end.
    pub fn ended(&self, id: &str, why: &str) {
        self.mark_lost(id);
        *self.last_end.lock().unwrap() = Some((id.to_string(), why.to_string()));
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
