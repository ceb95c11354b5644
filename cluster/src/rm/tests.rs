//! The resource manager's own tests: the transitions no cluster test reaches reliably.

use std::path::Path;
use std::time::Duration;

use embedstream_proto::pb::resource_manager_server::ResourceManager;
use embedstream_proto::pb::{
    ContainerState, ContainerStatus, NodeHeartbeatRequest, RegisterNodeRequest, Resources, SubmitApplicationRequest,
};
use tonic::Request;

use super::state::Persisted;
use super::ResourceManagerService;

const NODE: &str = "127.0.0.2:8040";

/// A job spec that validates: its model files exist (empty) in `dir`.
fn job(dir: &Path) -> String {
    for f in ["model.onnx", "tokenizer.json"] {
        std::fs::write(dir.join(f), b"{}").unwrap();
    }
    format!(
        "name = \"q\"\ncheckpoint_location = \"{d}/cp\"\n[source]\nbootstrap_servers = \"127.0.0.1:9092\"\n\
         subscribe = [\"in\"]\n[model]\nonnx = \"{d}/model.onnx\"\ntokenizer = \"{d}/tokenizer.json\"\n\
         [sink]\nkind = \"kafka\"\ntopic = \"out\"\n",
        d = dir.display()
    )
}

fn heartbeat(containers: Vec<ContainerStatus>) -> Request<NodeHeartbeatRequest> {
    Request::new(NodeHeartbeatRequest { node_id: NODE.into(), containers })
}

#[tokio::test]
async fn a_launch_the_node_never_got_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rm-state.json");
    let rm = ResourceManagerService::open(state.clone(), "127.0.0.1:8030".into(), Duration::from_secs(60)).unwrap();
    let capacity = Some(Resources { vcores: 2, memory_mb: 4096 });
    let node = RegisterNodeRequest { node_id: NODE.into(), capacity, running: Vec::new() };
    rm.register_node(Request::new(node)).await.unwrap();
    let submit = SubmitApplicationRequest { name: "q".into(), job_spec_toml: job(dir.path()), driver_resources: None };
    rm.submit_application(Request::new(submit)).await.unwrap();

    let first = rm.node_heartbeat(heartbeat(Vec::new())).await.unwrap().into_inner();
    assert_eq!(first.launch.len(), 1, "the driver's container goes to the only node");
    let driver = first.launch[0].container_id.clone();
    // That answer never reached the node: its next heartbeat does not list the container.
    let again = rm.node_heartbeat(heartbeat(Vec::new())).await.unwrap().into_inner();
    let ids: Vec<&str> = again.launch.iter().map(|l| l.container_id.as_str()).collect();
    assert_eq!(ids, [driver.as_str()], "the launch is sent again");
    // Once the node runs it, it is not sent a third time, and the state file says so.
    let running =
        ContainerStatus { container_id: driver.clone(), state: ContainerState::Running as i32, ..Default::default() };
    let third = rm.node_heartbeat(heartbeat(vec![running])).await.unwrap().into_inner();
    assert!(third.launch.is_empty(), "{third:?}");
    let saved: Persisted = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved.containers[&driver].state(), ContainerState::Running);
}

#[tokio::test]
async fn a_container_bigger_than_every_node_is_refused_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    let rm = ResourceManagerService::open(dir.path().join("s.json"), "127.0.0.1:8030".into(), Duration::from_secs(60))
        .unwrap();
    let capacity = Some(Resources { vcores: 2, memory_mb: 2048 });
    let node = RegisterNodeRequest { node_id: NODE.into(), capacity, running: Vec::new() };
    rm.register_node(Request::new(node)).await.unwrap();
    let submit = |toml: String, memory_mb| SubmitApplicationRequest {
        name: "q".into(),
        job_spec_toml: toml,
        driver_resources: Some(Resources { vcores: 1, memory_mb }),
    };
    let e = rm.submit_application(Request::new(submit(job(dir.path()), 4096))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("--driver-memory") && e.message().contains("2048 MiB"), "{}", e.message());
    let big_executors = format!("{}[executors]\nmemory = \"3g\"\n", job(dir.path()));
    let e = rm.submit_application(Request::new(submit(big_executors, 1024))).await.unwrap_err();
    assert!(e.message().contains("executors.memory") && e.message().contains("3072 MiB"), "{}", e.message());
    rm.submit_application(Request::new(submit(job(dir.path()), 1024))).await.expect("what fits is accepted");
}

/// Issue 14, finding 12: the RM forgets the oldest ended applications (with their containers)
/// beyond its limit, and an application's oldest ended containers once its driver heard of them;
/// running applications and what holds capacity stay.
#[test]
fn ended_applications_and_containers_are_pruned() {
    use super::state::{prune, Application, Container, Role};
    use embedstream_proto::pb::ApplicationState;

    let app = |n: u32, state: ApplicationState| Application {
        id: format!("app-1700000000-{n:04}"),
        name: "q".into(),
        job_spec_toml: String::new(),
        state: state as i32,
        diagnostics: String::new(),
        driver_address: String::new(),
        driver_page: String::new(),
        driver_vcores: 1,
        driver_memory_mb: 512,
        executors_wanted: 1,
        executor_vcores: 1,
        executor_memory_mb: 512,
        executor_args: Vec::new(),
        driver_attempts: 1,
        completed: Vec::new(),
        allocated: Vec::new(),
        secret: Default::default(),
    };
    let container = |app: u32, n: u32, state: ContainerState| Container {
        id: format!("c-{app}-{n:04}"),
        app_id: format!("app-1700000000-{app:04}"),
        role: Role::Executor,
        node_id: NODE.into(),
        vcores: 1,
        memory_mb: 512,
        args: Vec::new(),
        env: Default::default(),
        state: state as i32,
        diagnostics: String::new(),
        launched: true,
    };
    let mut p = Persisted::default();
    for n in 1..=5 {
        p.applications.insert(app(n, ApplicationState::Finished).id.clone(), app(n, ApplicationState::Finished));
        let c = container(n, 0, ContainerState::Exited);
        p.containers.insert(c.id.clone(), c);
    }
    // A running application with 5 ended executors (one not yet told to its driver) and a live one.
    let mut running = app(6, ApplicationState::Running);
    running.completed.push(("c-6-0004".into(), ContainerState::Exited as i32, String::new()));
    p.applications.insert(running.id.clone(), running);
    for n in 0..5 {
        let c = container(6, n, ContainerState::Exited);
        p.containers.insert(c.id.clone(), c);
    }
    let live = container(6, 9, ContainerState::Running);
    p.containers.insert(live.id.clone(), live);

    let removed = prune(&mut p, 2, 1);
    let apps: Vec<&str> = p.applications.keys().map(String::as_str).collect();
    assert_eq!(
        apps,
        ["app-1700000000-0004", "app-1700000000-0005", "app-1700000000-0006"],
        "the newest two ended and the running one"
    );
    let mut containers: Vec<&str> = p.containers.keys().map(String::as_str).collect();
    containers.sort();
    assert_eq!(containers, ["c-4-0000", "c-5-0000", "c-6-0003", "c-6-0004", "c-6-0009"]);
    assert_eq!(removed, 3 * 2 + 3);
    assert_eq!(prune(&mut p, 2, 1), 0, "nothing more to prune");
}

/// Issue 14, finding 6 (in part): a node agent runs only command lines the RM builds. An
/// application's executors run `embedstream executor` for its own driver and cores, whatever
/// the caller would have liked; a driver address that is not HOST:PORT is refused.
#[tokio::test]
async fn executors_run_the_command_line_the_rm_builds() {
    use embedstream_proto::pb::AllocateRequest;

    let dir = tempfile::tempdir().unwrap();
    let rm = ResourceManagerService::open(dir.path().join("s.json"), "127.0.0.1:8030".into(), Duration::from_secs(60))
        .unwrap();
    let capacity = Some(Resources { vcores: 4, memory_mb: 8192 });
    let node = RegisterNodeRequest { node_id: NODE.into(), capacity, running: Vec::new() };
    rm.register_node(Request::new(node)).await.unwrap();
    let submit = SubmitApplicationRequest { name: "q".into(), job_spec_toml: job(dir.path()), driver_resources: None };
    let app_id = rm.submit_application(Request::new(submit)).await.unwrap().into_inner().app_id;
    let driver = rm.node_heartbeat(heartbeat(Vec::new())).await.unwrap().into_inner().launch.remove(0);
    let running = ContainerStatus {
        container_id: driver.container_id.clone(),
        state: ContainerState::Running as i32,
        ..Default::default()
    };
    rm.node_heartbeat(heartbeat(vec![running.clone()])).await.unwrap();

    let allocate = |driver_address: &str| AllocateRequest {
        app_id: app_id.clone(),
        driver_address: driver_address.into(),
        executors_wanted: 1,
        executor_resources: Some(Resources { vcores: 2, memory_mb: 1024 }),
        app_secret: driver.app_secret.clone(),
        ..Default::default()
    };
    let refused = rm.allocate(Request::new(allocate("--help"))).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{}", refused.message());
    rm.allocate(Request::new(allocate("127.0.0.2:7077"))).await.unwrap();
    let launch = rm.node_heartbeat(heartbeat(vec![running])).await.unwrap().into_inner().launch;
    let executor = launch.iter().find(|l| l.container_id != driver.container_id).expect("the executor's launch");
    assert_eq!(executor.args[0], "executor", "{:?}", executor.args);
    let args = executor.args.join(" ");
    assert!(args.contains("--driver http://127.0.0.2:7077") && args.contains("--cores 2"), "{args}");

    // The driver's page, which the RM's page links to: an http(s) URL only.
    let page = |url: &str| AllocateRequest { driver_page: url.into(), ..allocate("127.0.0.2:7077") };
    for bad in ["javascript:alert(1)", "http://x/\"><script>", "ftp://127.0.0.2:1/"] {
        let refused = rm.allocate(Request::new(page(bad))).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad}");
    }
    rm.allocate(Request::new(page("http://127.0.0.2:9090/"))).await.unwrap();
    assert_eq!(rm.state.lock().unwrap().p.applications[&app_id].driver_page, "http://127.0.0.2:9090/");
}

/// Issue 14, finding 6: an application's calls are authorised by the secret the RM issued at
/// submit, which only its driver's launch carries. Without it, or with another application's,
/// a caller that holds the cluster token can neither scale, re-point nor finish it; the driver
/// with it can. Executors' launches carry no secret, and the state's `Debug` hides it.
#[tokio::test]
async fn only_the_applications_driver_can_steer_it() {
    use embedstream_proto::pb::{AllocateRequest, ApplicationState};

    let dir = tempfile::tempdir().unwrap();
    let rm = ResourceManagerService::open(dir.path().join("s.json"), "127.0.0.1:8030".into(), Duration::from_secs(60))
        .unwrap();
    let capacity = Some(Resources { vcores: 8, memory_mb: 16384 });
    let node = RegisterNodeRequest { node_id: NODE.into(), capacity, running: Vec::new() };
    rm.register_node(Request::new(node)).await.unwrap();
    let mut drivers = Vec::new();
    let mut answered = Vec::new();
    for name in ["mine", "theirs"] {
        let submit =
            SubmitApplicationRequest { name: name.into(), job_spec_toml: job(dir.path()), driver_resources: None };
        answered.push(rm.submit_application(Request::new(submit)).await.unwrap().into_inner());
    }
    drivers.extend(rm.node_heartbeat(heartbeat(Vec::new())).await.unwrap().into_inner().launch);
    assert_eq!(drivers.len(), 2);
    let (mine, theirs) = (&drivers[0], &drivers[1]);
    assert_eq!(mine.app_secret.len(), 64, "a 32-byte secret, as hex");
    assert_ne!(mine.app_secret, theirs.app_secret, "one secret per application");
    assert!(drivers.iter().all(|d| d.role == "driver"));
    // The submitter is answered its application's secret; a listing never shows one.
    let submitted: Vec<(&str, &str)> = answered.iter().map(|a| (a.app_id.as_str(), a.app_secret.as_str())).collect();
    assert_eq!(
        submitted,
        vec![(mine.app_id.as_str(), mine.app_secret.as_str()), (theirs.app_id.as_str(), theirs.app_secret.as_str())]
    );
    let listed = format!("{:?}", rm.list_applications(Request::new(Default::default())).await.unwrap().into_inner());
    assert!(!listed.contains(&mine.app_secret) && !listed.contains(&theirs.app_secret), "{listed}");
    let running: Vec<ContainerStatus> = drivers
        .iter()
        .map(|d| ContainerStatus {
            container_id: d.container_id.clone(),
            state: ContainerState::Running as i32,
            ..Default::default()
        })
        .collect();
    rm.node_heartbeat(heartbeat(running.clone())).await.unwrap();

    let steer = |secret: &str, state: ApplicationState| AllocateRequest {
        app_id: mine.app_id.clone(),
        driver_address: "127.0.0.9:7077".into(),
        executors_wanted: 3,
        executor_resources: Some(Resources { vcores: 1, memory_mb: 512 }),
        state: state as i32,
        app_secret: secret.into(),
        ..Default::default()
    };
    for (secret, who) in [("", "no secret"), (theirs.app_secret.as_str(), "another application's secret")] {
        for state in [ApplicationState::Running, ApplicationState::Finished] {
            let refused = rm.allocate(Request::new(steer(secret, state))).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{who}: {}", refused.message());
        }
    }
    let apps = rm.list_applications(Request::new(Default::default())).await.unwrap().into_inner().applications;
    let app = apps.iter().find(|a| a.app_id == mine.app_id).unwrap();
    assert_eq!((app.driver_address.as_str(), app.state), ("", ApplicationState::Submitted as i32), "untouched");
    assert!(app.containers.iter().all(|c| c.role == "driver"), "no executor placed: {app:?}");

    // Its driver, with the secret, steers it: executors placed, each given its application's
    // secret (which it requires of its driver and sends it), as an executor (no cluster token).
    rm.allocate(Request::new(steer(&mine.app_secret, ApplicationState::Running))).await.unwrap();
    let launch = rm.node_heartbeat(heartbeat(running)).await.unwrap().into_inner().launch;
    assert_eq!(launch.len(), 3, "three executors");
    assert!(
        launch.iter().all(|l| l.app_secret == mine.app_secret && l.role == "executor"),
        "executors get their application's secret"
    );
    let state = std::fs::read_to_string(dir.path().join("s.json")).unwrap();
    assert!(state.contains(&mine.app_secret), "kept in the state file (0600) for a restarted RM");
    let debug = format!("{:?}", rm.state.lock().unwrap().p.applications);
    assert!(!debug.contains(&mine.app_secret) && debug.contains("AppSecret(set)"), "never printed");
}

/// Issue 14, finding 12: state writes run on the blocking pool after the state's lock is let go,
/// so concurrent handlers may finish their writes in any order. Whatever the order, the file
/// ends with the newest state (an older snapshot never overwrites a newer one), and every
/// answered submit survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_leave_the_newest_state_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let rm = ResourceManagerService::open(path.clone(), "127.0.0.1:8030".into(), Duration::from_secs(60)).unwrap();
    let capacity = Some(Resources { vcores: 64, memory_mb: 1 << 20 });
    let node = RegisterNodeRequest { node_id: NODE.into(), capacity, running: Vec::new() };
    rm.register_node(Request::new(node)).await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..48 {
        let (rm, job) = (rm.clone(), job(dir.path()));
        calls.spawn(async move {
            let submit = SubmitApplicationRequest { name: format!("q{n}"), job_spec_toml: job, driver_resources: None };
            rm.submit_application(Request::new(submit)).await.unwrap().into_inner().app_id
        });
    }
    let submitted: std::collections::BTreeSet<String> = calls.join_all().await.into_iter().collect();
    assert_eq!(submitted.len(), 48);
    let restarted = ResourceManagerService::open(path, "127.0.0.1:8030".into(), Duration::from_secs(60)).unwrap();
    let kept: std::collections::BTreeSet<String> =
        restarted.state.lock().unwrap().p.applications.keys().cloned().collect();
    assert_eq!(kept, submitted, "every answered submit is in the file");
}
