//! The driver's gRPC service for its executors: the job spec, registration and heartbeats.

use std::sync::Arc;

use embedstream_core::hadoop_tokens::Credentials;
use embedstream_core::health::ExecutorHealth;
use embedstream_core::spec::Secrets;
use embedstream_proto::convert::secrets_to_pb;
use embedstream_proto::pb::driver_service_server::DriverService;
use embedstream_proto::pb::{
    GetJobSpecRequest, GetJobSpecResponse, HeartbeatRequest, HeartbeatResponse, RegisterExecutorRequest,
    RegisterExecutorResponse,
};
use embedstream_proto::serve::Caller;
use tonic::{Request, Response, Status};

use crate::executors::{ExecutorInfo, ExecutorRegistry};

/// The driver's gRPC service for its executors.
pub struct DriverServiceImpl {
    pub registry: Arc<ExecutorRegistry>,
    /// How the driver calls its executors: the token on every call, over its TLS.
    pub caller: Caller,
    pub job_spec_toml: String,
    /// Read once by the driver; sent only in the answer to an authenticated GetJobSpec.
    pub secrets: Secrets,
    pub query_id: String,
    /// The newest Hadoop delegation tokens (YARN with Kerberos), for executors with older ones.
    pub hadoop_tokens: Credentials,
}

#[tonic::async_trait]
impl DriverService for DriverServiceImpl {
    async fn get_job_spec(&self, _: Request<GetJobSpecRequest>) -> Result<Response<GetJobSpecResponse>, Status> {
        Ok(Response::new(GetJobSpecResponse {
            job_spec_toml: self.job_spec_toml.clone(),
            query_id: self.query_id.clone(),
            secrets: secrets_to_pb(&self.secrets),
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
        tracing::info!(executor = %r.executor_id, address = %r.address, cores = r.cores, pid = r.pid, "executor registered");
        let info = ExecutorInfo::connect(r.executor_id, r.address, r.cores, r.pid, r.metrics_address, &self.caller)
            .map_err(Status::invalid_argument)?;
        self.registry.register(info);
        Ok(Response::new(RegisterExecutorResponse {}))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let beat = request.into_inner();
        let id = &beat.executor_id;
        let known = self.registry.knows(id) && !self.registry.is_lost(id);
        if known {
            self.registry.beat(id, ExecutorHealth::from(&beat));
        }
        let (hadoop_tokens_version, hadoop_tokens) = match self.hadoop_tokens.newer_than(beat.hadoop_tokens_version) {
            Some((version, tokens)) if known => (version, tokens.to_vec()),
            _ => (0, Vec::new()),
        };
        Ok(Response::new(HeartbeatResponse { known, hadoop_tokens, hadoop_tokens_version }))
    }
}
