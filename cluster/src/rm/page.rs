//! The resource manager's page (issue 18), YARN's RM web UI for this cluster: nodes (capacity,
//! used, lost), applications (state, driver attempts, a link to each driver's own page) and
//! their containers (node, role, state, why they ended, memory). Served on `--web-listen`.
//!
//! - `GET /`: the page (`page.html`, no build step, nothing fetched from elsewhere);
//! - `GET /api/nodes`: each node, live first, then the lost;
//! - `GET /api/applications`: each application with its containers.
//!
//! With a cluster token every route wants it, as the driver's page does
//! ([`embedstream_core::web`]).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use embedstream_core::auth::ClusterToken;
use embedstream_core::web::{self, json_response};
use embedstream_proto::pb::{ApplicationState, ContainerState, Resources};
use serde_json::json;

use super::ResourceManagerService;

/// The page's routes.
pub fn router(rm: Arc<ResourceManagerService>, token: ClusterToken, tls: bool) -> axum::Router {
    let api = axum::Router::new()
        .route("/api/nodes", get(nodes))
        .route("/api/applications", get(applications))
        .with_state(rm);
    web::site(include_str!("page.html"), api, token, tls)
}

fn resources(r: Option<Resources>) -> serde_json::Value {
    let r = r.unwrap_or_default();
    json!({"vcores": r.vcores, "memoryMb": r.memory_mb})
}

/// An enum's protobuf name without its prefix, in lower case: `CONTAINER_STATE_KILLED_MEMORY`
/// is `killed_memory`.
fn label(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_lowercase()
}

async fn nodes(State(rm): State<Arc<ResourceManagerService>>) -> Response {
    let rows: Vec<serde_json::Value> = (rm.nodes().into_iter())
        .map(|n| {
            json!({
                "id": n.node_id,
                "lost": n.lost,
                "capacity": resources(n.capacity),
                "used": resources(n.used),
                "lastHeartbeatMsAgo": n.last_heartbeat_ms_ago,
                "containers": n.containers,
            })
        })
        .collect();
    json_response(json!({"nodes": rows, "uptimeSeconds": rm.started.elapsed().as_secs()}))
}

async fn applications(State(rm): State<Arc<ResourceManagerService>>) -> Response {
    let rows: Vec<serde_json::Value> = (rm.applications().into_iter())
        .map(|a| {
            let state = ApplicationState::try_from(a.state).unwrap_or(ApplicationState::Unspecified);
            let containers: Vec<serde_json::Value> = (a.containers.iter())
                .map(|c| {
                    let state = ContainerState::try_from(c.state).unwrap_or(ContainerState::Unspecified);
                    json!({
                        "id": c.container_id,
                        "node": c.node_id,
                        "role": c.role,
                        "state": label(state.as_str_name(), "CONTAINER_STATE_"),
                        "resources": resources(c.resources),
                        "diagnostics": c.diagnostics,
                    })
                })
                .collect();
            json!({
                "id": a.app_id,
                "name": a.name,
                "state": label(state.as_str_name(), "APPLICATION_STATE_"),
                "driverAddress": a.driver_address,
                "driverPage": a.driver_page,
                "driverAttempts": a.driver_attempts,
                "diagnostics": a.diagnostics,
                "containers": containers,
            })
        })
        .collect();
    json_response(json!({"applications": rows}))
}
