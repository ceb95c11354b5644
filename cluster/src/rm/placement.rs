//! Placement: which executor containers each running application still needs, and the node
//! each queued container goes to (the one with the most free vcores, then memory, that fits:
//! spread across nodes, as YARN's fair placement does).

use std::collections::BTreeMap;

use embedstream_proto::pb::{ApplicationState, ContainerState};

use super::state::{alive_containers, new_container_id, used, Application, Container, Role, State};

/// Executor containers to add so that each running application has what it wants, then places
/// every queued container that fits somewhere.
pub(crate) fn schedule(s: &mut State) {
    let apps: Vec<Application> =
        s.p.applications.values().filter(|a| a.state() == ApplicationState::Running).cloned().collect();
    for app in apps {
        let alive = alive_containers(&s.p, &app.id, Some(Role::Executor)).len() as u32;
        for _ in alive..app.executors_wanted {
            let id = new_container_id(s, &app.id);
            let c = Container {
                id: id.clone(),
                app_id: app.id.clone(),
                role: Role::Executor,
                node_id: String::new(),
                vcores: app.executor_vcores,
                memory_mb: app.executor_memory_mb,
                args: app.executor_args.clone(),
                env: BTreeMap::new(),
                state: ContainerState::Allocated as i32,
                diagnostics: String::new(),
                launched: false,
            };
            s.p.containers.insert(id.clone(), c);
            s.queue.push_back(id);
        }
    }
    let queued: Vec<String> = s.queue.drain(..).collect();
    for id in queued {
        let (vcores, memory) = {
            let c = &s.p.containers[&id];
            (c.vcores, c.memory_mb)
        };
        // Spread: the node with the most free vcores (then memory) that fits.
        let best = s
            .nodes
            .iter()
            .map(|(nid, n)| {
                let (used_v, used_m) = used(&s.p, nid);
                (nid.clone(), n.capacity.vcores.saturating_sub(used_v), n.capacity.memory_mb.saturating_sub(used_m))
            })
            .filter(|(_, free_v, free_m)| *free_v >= vcores && *free_m >= memory)
            .max_by_key(|(nid, free_v, free_m)| (*free_v, *free_m, std::cmp::Reverse(nid.clone())));
        match best {
            Some((node, _, _)) => {
                let c = s.p.containers.get_mut(&id).expect("queued containers exist");
                c.node_id = node.clone();
                tracing::info!(container = %id, app = %c.app_id, role = ?c.role, node = %node, "container placed");
                if c.role == Role::Executor {
                    let app_id = c.app_id.clone();
                    if let Some(app) = s.p.applications.get_mut(&app_id) {
                        app.allocated.push(id.clone());
                    }
                }
            }
            None => s.queue.push_back(id),
        }
    }
}
