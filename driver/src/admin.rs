//! The query's admin API (`QueryAdmin` in `proto/cluster.proto`), served by every driver: status,
//! the latest progress records, stop, pause and resume, and scaling executors while it runs.
//!
//! [`Control`] is what the API changes and the micro-batch loop and the executor reconciler
//! watch; [`Snapshot`] is what the loop publishes after every batch.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use embedstream_core::offsets::PartitionOffsets;
use embedstream_proto::convert::offsets_to_pb;
use embedstream_proto::pb::query_admin_server::QueryAdmin;
use embedstream_proto::pb::{
    ExecutorReport, PauseRequest, PauseResponse, ProgressRequest, ProgressResponse, QueryState, QueryStatus,
    QueryStatusRequest, ResumeRequest, ResumeResponse, ScaleRequest, ScaleResponse, StopRequest, StopResponse,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::executors::ExecutorRegistry;

/// Executors one query may ask for.
pub const MAX_EXECUTORS: u32 = 256;

/// Switches shared by the admin API, the batch loop and the reconciler.
pub struct Control {
    pub stop: watch::Sender<bool>,
    pub paused: watch::Sender<bool>,
    /// Executors wanted.
    pub target: watch::Sender<u32>,
    pub snapshot: Mutex<Snapshot>,
    /// Why no batch is planned now, while a backfill gives way to its live query
    /// (`[trigger.yield_to]`).
    pub yielding: Mutex<Option<String>>,
    /// The source's latest offsets as the broker last said them: refreshed every
    /// `monitoring.lag_refresh_interval` and at every plan, also while paused or idle, so that
    /// the page's lag is the broker's, not the last batch's.
    pub latest: Mutex<PartitionOffsets>,
}

/// What the batch loop last published.
#[derive(Default, Clone)]
pub struct Snapshot {
    pub batches_committed: u64,
    pub next_batch_id: u64,
    /// The end offsets of the last committed batch.
    pub committed: PartitionOffsets,
}

impl Control {
    pub fn new(executors: u32) -> Arc<Control> {
        Arc::new(Control {
            stop: watch::channel(false).0,
            paused: watch::channel(false).0,
            target: watch::channel(executors).0,
            snapshot: Mutex::new(Snapshot::default()),
            yielding: Mutex::new(None),
            latest: Mutex::new(PartitionOffsets::new()),
        })
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    // The switches are set with `send_replace`, which keeps the value whether or not anything
    // watches yet: `send` drops it when no receiver exists, as before the batch loop starts
    // (a stop during start-up was lost, and the query ran on).

    /// Stop after the batch in flight.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    pub fn set_target(&self, executors: u32) {
        self.target.send_replace(executors);
    }
}

pub struct AdminService {
    pub query: String,
    pub query_id: String,
    pub checkpoint: PathBuf,
    pub control: Arc<Control>,
    pub registry: Arc<ExecutorRegistry>,
}

#[tonic::async_trait]
impl QueryAdmin for AdminService {
    async fn get_status(&self, _: Request<QueryStatusRequest>) -> Result<Response<QueryStatus>, Status> {
        let snapshot = self.control.snapshot.lock().unwrap().clone();
        let state = if self.control.stopping() {
            QueryState::Stopping
        } else if *self.control.paused.borrow() {
            QueryState::Paused
        } else {
            QueryState::Running
        };
        let executors = self
            .registry
            .all()
            .into_iter()
            .map(|(e, draining)| ExecutorReport {
                executor_id: e.id,
                flight_address: e.address.clone(),
                address: e.address,
                metrics_address: e.metrics_address,
                cores: e.cores,
                draining,
            })
            .collect();
        Ok(Response::new(QueryStatus {
            query: self.query.clone(),
            query_id: self.query_id.clone(),
            state: state as i32,
            batches_committed: snapshot.batches_committed,
            next_batch_id: snapshot.next_batch_id,
            executors_wanted: *self.control.target.borrow(),
            executors,
            committed_offsets: offsets_to_pb(&snapshot.committed),
        }))
    }

    async fn get_progress(&self, request: Request<ProgressRequest>) -> Result<Response<ProgressResponse>, Status> {
        let last = request.into_inner().last.max(1) as usize;
        let records = crate::progress::read_progress(&self.checkpoint).map_err(|e| Status::internal(e.to_string()))?;
        let records = records[records.len().saturating_sub(last)..]
            .iter()
            .map(embedstream_proto::pb::ProgressRecord::from)
            .collect();
        Ok(Response::new(ProgressResponse { records }))
    }

    async fn stop(&self, _: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        tracing::info!("stop requested through the admin API; stopping after the batch in flight");
        self.control.request_stop();
        Ok(Response::new(StopResponse {}))
    }

    async fn pause(&self, _: Request<PauseRequest>) -> Result<Response<PauseResponse>, Status> {
        tracing::info!("paused through the admin API: no new batch starts");
        self.control.set_paused(true);
        Ok(Response::new(PauseResponse {}))
    }

    async fn resume(&self, _: Request<ResumeRequest>) -> Result<Response<ResumeResponse>, Status> {
        tracing::info!("resumed through the admin API");
        self.control.set_paused(false);
        Ok(Response::new(ResumeResponse {}))
    }

    async fn scale(&self, request: Request<ScaleRequest>) -> Result<Response<ScaleResponse>, Status> {
        let n = request.into_inner().executors;
        if !(1..=MAX_EXECUTORS).contains(&n) {
            return Err(Status::invalid_argument(format!("executors must be between 1 and {MAX_EXECUTORS}, got {n}")));
        }
        tracing::info!(executors = n, "scale requested through the admin API");
        self.control.set_target(n);
        Ok(Response::new(ScaleResponse { executors_wanted: n }))
    }
}

#[cfg(test)]
mod tests {
    use super::Control;

    /// A stop, pause or scale asked for before the batch loop and the reconciler watch (while
    /// executors start) is kept, and seen by those that watch later.
    #[test]
    fn a_switch_set_before_anyone_watches_is_kept() {
        let control = Control::new(2);
        control.request_stop();
        control.set_paused(true);
        control.set_target(5);
        assert!(control.stopping());
        assert!(*control.stop.subscribe().borrow());
        assert!(*control.paused.subscribe().borrow());
        assert_eq!(*control.target.subscribe().borrow(), 5);
    }
}
