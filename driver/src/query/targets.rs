//! `<checkpoint>/monitoring/targets.json`: the driver and the live executors, for Prometheus'
//! file_sd and for `embedstream embed` users looking for a Flight address.

use std::path::PathBuf;

use crate::executors::ExecutorRegistry;
use crate::metrics;

/// Keeps the target list in step with the registry.
pub(crate) struct Targets {
    pub(crate) checkpoint: PathBuf,
    pub(crate) query: String,
    pub(crate) driver: String,
    /// The endpoints serve TLS.
    pub(crate) https: bool,
}

impl Targets {
    /// Rewrites the list; a failure is logged (the query does not depend on it).
    pub(crate) fn write(&self, registry: &ExecutorRegistry) {
        let executors: Vec<metrics::ExecutorTarget> = registry
            .live()
            .into_iter()
            .map(|e| metrics::ExecutorTarget {
                id: e.id,
                metrics_address: e.metrics_address,
                flight_address: e.address,
            })
            .collect();
        if let Err(e) = metrics::write_targets(&self.checkpoint, &self.query, (&self.driver, self.https), &executors) {
            tracing::warn!(error = %e, "cannot write the Prometheus target list");
        }
    }
}
