//! Cluster mode with real processes on loopback: a resource manager, node agents on 127.0.0.2 and
//! 127.0.0.3 (so placement is visible), `embedstream submit`, and the failures a cluster lives
//! with: a killed executor, a lost node, a restarted RM, a killed driver.

#[path = "../common/mod.rs"]
mod common;
mod harness;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::table::{file_being_written, read_table};
use common::*;
use embedstream_proto::pb::{ApplicationState, ContainerState, ListNodesRequest};
use harness::*;

#[test]
fn a_submitted_query_spreads_over_nodes_survives_a_killed_executor_and_obeys_the_admin_api() {
    let broker = Broker::start();
    broker.create_topic("clicks", 2);
    broker.produce_texts("clicks", 2, 0, &texts(100, 40));
    let cluster = Cluster::start();
    let job = cluster_job(&broker, "cq", "clicks");
    let app_id = cluster.submit(&job);

    // The driver and two executors, the executors on different nodes (spread by free vcores).
    cluster.wait_for("two running executors", |c| {
        c.app(&app_id).is_some_and(|a| executors(&a, ContainerState::Running).len() == 2)
    });
    let app = cluster.app(&app_id).unwrap();
    let hosts: BTreeSet<&str> = executors(&app, ContainerState::Running).iter().map(|c| host(&c.node_id)).collect();
    assert_eq!(hosts, BTreeSet::from(["127.0.0.2", "127.0.0.3"]), "executors spread over both nodes: {app:?}");
    assert!(!app.driver_address.is_empty());

    // SIGKILL an executor while batches run: its tasks are retried, and the RM places a replacement.
    cluster.wait_for("the first batch", |_| broker.committed("cq-group", "clicks", 2).iter().sum::<i64>() >= 20);
    broker.produce_texts("clicks", 2, 100, &texts(200, 41));
    let victim = executors(&app, ContainerState::Running)[0].container_id.clone();
    let pids = cluster.pids_with(&format!("--executor-id {victim} "));
    assert_eq!(pids.len(), 1, "one process for {victim}");
    kill9(pids[0]);
    cluster.wait_for("all 300 records committed", |_| broker.committed("cq-group", "clicks", 2) == vec![150, 150]);
    cluster.wait_for("a replacement executor", |c| {
        c.app(&app_id).is_some_and(|a| {
            executors(&a, ContainerState::Running).len() == 2
                && a.containers.iter().any(|x| x.container_id == victim && x.diagnostics.contains("signal 9"))
        })
    });
    assert_every_input_embedded(&broker, "cq-out", &[150, 150]);
    cluster_page_shows_nodes_applications_and_the_killed_executor(&cluster, &app_id, &victim);

    // The admin API, through the CLI: status names the executors and their Flight addresses.
    let status = cluster.admin(&["status", &app_id]);
    assert!(status.contains("query cq") && status.contains("running") && status.contains("2 wanted"), "{status}");
    assert_eq!(status.matches(" flight 127.0.0.").count(), 2, "{status}");
    let listing = cluster.admin(&["status"]);
    assert!(listing.contains(&app_id) && listing.contains("127.0.0.2:") && listing.contains("127.0.0.3:"), "{listing}");

    // Pause: the query says so; resume: new records are processed.
    cluster.admin(&["pause", &app_id]);
    assert!(cluster.admin(&["status", &app_id]).contains(") paused:"));
    broker.produce_texts("clicks", 2, 300, &texts(20, 42));
    cluster.admin(&["resume", &app_id]);
    cluster.wait_for("the 20 new records", |_| broker.committed("cq-group", "clicks", 2) == vec![160, 160]);

    // Scale down to one executor: the other drains (finishes its tasks) and exits by itself,
    // not killed; the query goes on with the one left.
    let before = executors(&cluster.app(&app_id).unwrap(), ContainerState::Running).len();
    assert_eq!(before, 2);
    cluster.admin(&["scale", &app_id, "--executors", "1"]);
    cluster.wait_for("one executor", |c| {
        c.app(&app_id).is_some_and(|a| {
            executors(&a, ContainerState::Running).len() == 1
                && executors(&a, ContainerState::Exited).iter().any(|x| x.diagnostics == "exited with code 0")
        })
    });
    let app = cluster.app(&app_id).unwrap();
    assert!(executors(&app, ContainerState::Killed).is_empty(), "no executor killed to scale down: {app:?}");
    broker.produce_texts("clicks", 2, 320, &texts(20, 43));
    cluster.wait_for("records after scaling down", |_| broker.committed("cq-group", "clicks", 2) == vec![170, 170]);
    assert_every_input_embedded(&broker, "cq-out", &[170, 170]);

    // Progress through the admin API: Spark-style records of the committed batches.
    let progress = cluster.admin(&["progress", "--app", &app_id, "--json", "--last", "3"]);
    let records: Vec<serde_json::Value> = progress.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 3, "{progress}");
    assert!(records.windows(2).all(|w| w[0]["batchId"].as_u64() < w[1]["batchId"].as_u64()));

    // Stop: graceful, the application finishes.
    cluster.admin(&["stop", &app_id]);
    cluster.wait_for("the application to finish", |c| {
        c.app(&app_id).is_some_and(|a| state(&a) == ApplicationState::Finished)
    });

    // Without the token nothing is answered, and the refusal is logged; health and reflection are open.
    let mut anonymous = cluster.client(None);
    let refused = cluster.runtime.block_on(anonymous.list_nodes(ListNodesRequest {})).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // The RM's stderr is read by another thread: the line may come a moment after the answer.
    cluster.wait_for("the refusal in the RM's log", |c| c.rm.log().contains("refused a call without a cluster token"));
    cluster.runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.rm_address()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let check = tonic_health::pb::HealthCheckRequest { service: "embedstream.v1.ResourceManager".into() };
        let serving = health.check(check).await.unwrap().into_inner().status;
        assert_eq!(serving, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers =
            reflection.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("no service list")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"embedstream.v1.ResourceManager".to_string()), "{names:?}");
        assert!(names.contains(&"embedstream.v1.QueryAdmin".to_string()), "{names:?}");
    });
}

/// The RM's page in a real browser (issue 18): both nodes live, the application running with a
/// link to its driver's page, the killed executor's container with its exit reason; the link
/// leads to the driver's page, which shows the query running. Writes a screenshot to
/// target/embedstream-cluster-page.png.
fn cluster_page_shows_nodes_applications_and_the_killed_executor(cluster: &Cluster, app_id: &str, victim: &str) {
    let url = cluster.page_url();
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    assert_eq!(http_get(address, "/api/applications").0, 401, "the cluster's data wants the token");
    let browser = common::browser::Browser::start();
    browser.goto(&url);
    browser.sign_in_if_asked(TOKEN);
    for node in ["127.0.0.2", "127.0.0.3"] {
        let cell = format!("#nodes tr[data-node^=\"{node}:\"] td:nth-child(2)");
        browser.wait_text(&cell, TIMEOUT, |t| t == "live");
    }
    let app = format!("#applications tr[data-app=\"{app_id}\"]");
    browser.wait_text(&format!("{app} td:nth-child(3)"), TIMEOUT, |t| t == "running");
    let reason = format!("#containers tr[data-container=\"{victim}\"] td:nth-child(8)");
    browser.wait_text(&reason, TIMEOUT, |t| t.contains("signal 9"));
    let link = browser.wait_text(&format!("{app} td:nth-child(4) a"), TIMEOUT, |t| t.starts_with("http://"));
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/embedstream-cluster-page.png");
    browser.screenshot(&shot);

    browser.click(&format!("{app} td:nth-child(4) a"));
    // The driver's page takes its application's secret, not the cluster token.
    browser.sign_in_if_asked(&cluster.app_secret(app_id));
    browser.wait_text("#title", TIMEOUT, |t| t == "cq");
    browser.wait_text("#state", TIMEOUT, |t| t == "running");
    assert_eq!(browser.url(), link, "the driver's page");
}

#[test]
fn a_lost_node_a_restarted_rm_and_a_killed_driver_lose_no_data() {
    let broker = Broker::start();
    broker.create_topic("docs", 2);
    broker.produce_texts("docs", 2, 0, &texts(100, 50));
    let mut cluster = Cluster::start();
    let job = cluster_job(&broker, "lq", "docs");
    let app_id = cluster.submit(&job);
    cluster.wait_for("100 records committed", |_| broker.committed("lq-group", "docs", 2) == vec![50, 50]);

    // Kill the node agent that does not run the driver: after the 2 s timeout the RM declares
    // the node lost, and the driver gets a replacement executor on the other node.
    let app = cluster.app(&app_id).unwrap();
    let driver_node = app.containers.iter().find(|c| c.role == "driver").unwrap().node_id.clone();
    let (lost, kept) = if host(&driver_node) == "127.0.0.2" { (1, "127.0.0.2") } else { (0, "127.0.0.3") };
    cluster.nodes[lost].kill();
    broker.produce_texts("docs", 2, 100, &texts(100, 51));
    cluster.wait_for("the node declared lost", |c| c.nodes().iter().filter(|n| !n.lost).count() == 1);
    let lost_node = cluster.nodes().into_iter().find(|n| n.lost).expect("the lost node is listed as lost");
    assert!(host(&lost_node.node_id) != kept && lost_node.containers.is_empty(), "{lost_node:?}");
    let status = cluster.admin(&["status"]);
    let row = status.lines().find(|l| l.starts_with(&lost_node.node_id)).unwrap_or_default();
    assert_eq!(row.split_whitespace().nth(1), Some("lost"), "`status` shows the node as lost:\n{status}");
    cluster.wait_for("two executors on the kept node", |c| {
        c.app(&app_id).is_some_and(|a| {
            let running = executors(&a, ContainerState::Running);
            running.len() == 2
                && running.iter().all(|x| host(&x.node_id) == kept)
                && a.containers.iter().any(|x| x.state == ContainerState::Lost as i32)
        })
    });
    cluster.wait_for("200 records committed", |_| broker.committed("lq-group", "docs", 2) == vec![100, 100]);

    // Restart the RM: the node registers again and the query carries on.
    cluster.rm.kill();
    cluster.rm = Cluster::start_rm(cluster.dir.path(), cluster.rm_port, &cluster.tls);
    cluster.wait_for("the node back", |c| c.nodes().len() == 1);
    let app = cluster.app(&app_id).expect("the restarted RM knows the application");
    assert_eq!(state(&app), ApplicationState::Running);
    broker.produce_texts("docs", 2, 200, &texts(100, 52));
    cluster.wait_for("300 records committed", |_| broker.committed("lq-group", "docs", 2) == vec![150, 150]);
    assert_eq!(executors(&cluster.app(&app_id).unwrap(), ContainerState::Running).len(), 2);

    // Kill the driver: the application fails; resubmitting the job resumes from its checkpoint.
    let drivers = cluster.pids_with(&format!("--app-id {app_id} "));
    assert_eq!(drivers.len(), 1);
    kill9(drivers[0]);
    cluster
        .wait_for("the application failed", |c| c.app(&app_id).is_some_and(|a| state(&a) == ApplicationState::Failed));
    broker.produce_texts("docs", 2, 300, &texts(100, 53));
    let mut waiting = cluster.submit_waiting(&job);
    cluster.wait_for("400 records committed", |_| broker.committed("lq-group", "docs", 2) == vec![200, 200]);
    let second =
        waiting.log().lines().find(|l| l.starts_with("app-") && !l.contains(':')).unwrap_or_default().to_string();
    assert!(second.starts_with("app-") && second != app_id, "{}", waiting.log());
    cluster.admin(&["stop", &second]);
    let exit = waiting.wait(Duration::from_secs(60));
    assert!(exit.success(), "submit --wait exits 0 when the query finishes: {}", waiting.log());

    assert_every_input_embedded(&broker, "lq-out", &[200, 200]);
    // One plan per batch id, and every planned batch committed: the second driver went on from
    // the first one's checkpoint.
    let (offsets, commits) = (job.logged_batches("offsets"), job.logged_batches("commits"));
    assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    assert_eq!(commits, offsets);
}

#[test]
fn an_executor_over_its_memory_is_killed_with_the_reason_and_a_killed_application_leaves_nothing() {
    let broker = Broker::start();
    broker.create_topic("small", 1);
    let cluster = Cluster::start();
    let job = cluster_job(&broker, "mq", "small");
    // An executor, its model daemon and worker use far more than 100 MiB together.
    let text = std::fs::read_to_string(&job.path).unwrap().replace("memory = \"3g\"", "memory = \"100m\"");
    std::fs::write(&job.path, text).unwrap();
    let app_id = cluster.submit(&job);
    cluster.wait_for("an executor killed for its memory", |c| {
        c.app(&app_id).is_some_and(|a| {
            a.containers.iter().any(|x| {
                x.state == ContainerState::KilledMemory as i32 && x.diagnostics.contains("MiB, over its 100 MiB")
            })
        })
    });
    let nodes = cluster.nodes.iter().map(Proc::log).collect::<Vec<_>>().join("\n");
    assert!(nodes.contains("killing the container"), "the node agent logs why:\n{nodes}");

    // Killing the application ends all its containers (unless its driver already gave up,
    // failing the application with the reason).
    let mut client = cluster.client(Some(TOKEN));
    let kill = embedstream_proto::pb::KillApplicationRequest { app_id: app_id.clone() };
    cluster.runtime.block_on(client.kill_application(kill)).unwrap();
    cluster.wait_for("the application's processes gone", |c| c.pids_with(&app_id).is_empty());
    let app = cluster.app(&app_id).unwrap();
    match state(&app) {
        ApplicationState::Killed => {}
        ApplicationState::Failed => assert!(app.diagnostics.contains("over its 100 MiB"), "{}", app.diagnostics),
        other => panic!("the application is {other:?}"),
    }
    assert!(app
        .containers
        .iter()
        .all(|c| c.state != ContainerState::Running as i32 && c.state != ContainerState::Allocated as i32));
}

#[test]
fn an_executor_killed_while_it_writes_parquet_leaves_each_record_once_in_the_table() {
    let broker = Broker::start();
    broker.create_topic("notes", 2);
    let input = texts(160, 60);
    broker.produce_texts("notes", 2, 0, &input);
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("embeddings");
    // One text per model call and per window: a task spans many writes to its file.
    let job = cluster_job(&broker, "pc", "notes").with_batching(1, 1).with_parquet_sink(&table);
    let cluster = Cluster::start();
    let app_id = cluster.submit(&job);

    // SIGKILL the executor writing a file of a batch that is not published yet.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (batch, pid) = loop {
        let found = file_being_written(&table).and_then(|(batch, executor)| {
            Some((batch, *cluster.pids_with(&format!("--executor-id {executor} ")).first()?))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no batch seen being written:\n{}", cluster.container_logs());
        std::thread::sleep(Duration::from_millis(5));
    };
    kill9(pid);
    cluster.wait_for("all 160 records committed", |_| broker.committed("pc-group", "notes", 2) == vec![80, 80]);
    cluster.wait_for("a replacement executor", |c| {
        c.app(&app_id).is_some_and(|a| executors(&a, ContainerState::Running).len() == 2)
    });

    let (rows, count) = read_table(&table);
    assert_eq!(count, 160, "each input once through the manifests (batch {batch} was being written when killed)");
    for (n, text) in input.iter().enumerate() {
        let (p, o) = ((n % 2) as i32, (n / 2) as i64);
        assert_eq!(&rows.get(&(p, o)).unwrap_or_else(|| panic!("input {p}-{o} is missing")).0, text);
    }
    let mut visible = embedstream_core::manifest::visible_files(&table).unwrap();
    visible.sort();
    assert_eq!(embedstream_core::manifest::data_files(&table).unwrap(), visible, "the killed attempt's file is gone");
    cluster.admin(&["stop", &app_id]);
}

/// Issue 31, item 14: with two applications running, the cluster token alone is refused by B's
/// driver (`PERMISSION_DENIED`: it reaches the RM only), and so is A's secret; B's secret, which
/// `submit` kept for its submitter, is answered. The job spec with its passwords
/// (`GetJobSpec`) is B's executors' alone. No executor has the cluster token in its
/// environment; the CLI's admin commands reach B with the secret `submit` kept.
fn a_driver_takes_only_its_applications_secret(cluster: &Cluster, broker: &Broker, a: &str) {
    use embedstream_proto::pb::driver_service_client::DriverServiceClient;
    use embedstream_proto::pb::query_admin_client::QueryAdminClient;
    use embedstream_proto::pb::{GetJobSpecRequest, QueryStatusRequest};
    let job = cluster_job(broker, "second", "sealed");
    let text = std::fs::read_to_string(&job.path).unwrap().replace("count = 2", "count = 1");
    std::fs::write(&job.path, text).unwrap();
    let b = cluster.submit(&job);
    cluster.wait_for("B's executor", |c| {
        c.app(&b)
            .is_some_and(|app| executors(&app, ContainerState::Running).len() == 1 && !app.driver_address.is_empty())
    });
    let driver = cluster.app(&b).unwrap().driver_address;
    let (secret_a, secret_b) = (cluster.app_secret(a), cluster.app_secret(&b));
    assert_ne!(secret_a, secret_b);
    let channel = {
        let _guard = cluster.runtime.enter();
        embedstream_proto::serve::endpoint(&driver, &cluster.client_tls()).unwrap().connect_lazy()
    };
    let token = |t: &str| embedstream_core::auth::ClusterToken::new(t);
    cluster.runtime.block_on(async {
        for (who, bearer) in [("the cluster token", TOKEN), ("A's secret", secret_a.as_str())] {
            let mut admin = QueryAdminClient::with_interceptor(channel.clone(), token(bearer));
            let refused = admin.get_status(QueryStatusRequest {}).await.expect_err(who);
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{who}: {refused}");
            let mut service = DriverServiceClient::with_interceptor(channel.clone(), token(bearer));
            let request = GetJobSpecRequest { executor_id: "anyone".into() };
            let refused = service.get_job_spec(request).await.expect_err(who);
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{who}: {refused}");
        }
        let mut admin = QueryAdminClient::with_interceptor(channel.clone(), token(&secret_b));
        let status = admin.get_status(QueryStatusRequest {}).await.expect("B's secret is answered").into_inner();
        assert_eq!(status.query, "second");
    });
    for pid in cluster.pids_with("executor --driver") {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let environ = String::from_utf8_lossy(&environ);
        assert!(!environ.contains(TOKEN), "executor {pid} has the cluster token in its environment");
    }
    let status = cluster.admin(&["status", &b]);
    assert!(status.contains("query second"), "{status}");
    cluster.admin(&["stop", &b]);
    cluster.wait_for("B to finish", |c| c.app(&b).is_some_and(|app| state(&app) == ApplicationState::Finished));
}

/// Issue 14, finding 7: a cluster over mutual TLS. The RM and the node agents serve TLS and
/// call each other over it; the drivers and executors they start get the node's files and run
/// a query over it; the CLI submits and administers with the CA and a client certificate. A
/// plaintext client, and one without a client certificate, are refused by the RM.
#[test]
fn a_cluster_runs_a_query_over_mutual_tls_refuses_plaintext_and_keeps_each_application_to_its_driver() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, identity) =
        common::tls::certificates_for(certs.path(), "cluster-ca", &["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    let tls = embedstream_core::tls::TlsFiles {
        tls_cert: Some(identity.clone()),
        tls_key: Some(identity),
        tls_ca: Some(ca.clone()),
        tls_client_auth: true,
        tls_server_name: None,
    };
    let broker = Broker::start();
    broker.create_topic("sealed", 2);
    broker.produce_texts("sealed", 2, 0, &texts(60, 81));
    let cluster = Cluster::start_with_tls(tls);
    let app_id = cluster.submit(&cluster_job(&broker, "sealed", "sealed"));
    cluster.wait_for("all 60 records committed", |_| broker.committed("sealed-group", "sealed", 2) == vec![30, 30]);
    assert_every_input_embedded(&broker, "sealed-out", &[30, 30]);
    let status = cluster.admin(&["status", &app_id]);
    assert!(status.contains("query sealed") && status.contains("2 wanted"), "{status}");

    let refused = |tls: embedstream_core::tls::Tls| {
        cluster.runtime.block_on(async {
            let channel = embedstream_proto::serve::endpoint(&cluster.rm_address(), &tls).unwrap().connect_lazy();
            let mut rm = embedstream_proto::pb::resource_manager_client::ResourceManagerClient::with_interceptor(
                channel,
                embedstream_core::auth::ClusterToken::new(TOKEN),
            );
            rm.list_nodes(ListNodesRequest {}).await.expect_err("refused")
        })
    };
    // Refused at the transport, before any gRPC answer (not even UNAUTHENTICATED).
    let at_transport = |s: &tonic::Status| {
        std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>())
            && s.code() != tonic::Code::Unauthenticated
    };
    let plaintext = refused(embedstream_core::tls::Tls::plaintext());
    assert!(at_transport(&plaintext), "a plaintext client: {plaintext}");
    let only_ca = embedstream_core::tls::TlsFiles { tls_ca: Some(ca), ..Default::default() };
    let anonymous =
        refused(only_ca.load(embedstream_core::tls::Role::Client, embedstream_core::tls::Naming::Flags).unwrap());
    assert!(at_transport(&anonymous), "a client without a certificate: {anonymous}");

    // Issue 14, finding 6: the application's secret reached its driver in a 0600 file, and no
    // process's argv or environment, nor the RM's log; the cluster token alone cannot steer it.
    let driver = cluster.pids_with(&format!("driver --rm {} --app-id {app_id}", cluster.rm_address()));
    assert_eq!(driver.len(), 1, "one driver process");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", driver[0])).unwrap();
    let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let file = &args[args.iter().position(|a| a == "--app-secret-file").expect("the secret's file") + 1];
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(file).unwrap().permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read_to_string(file).unwrap().trim().to_string();
    assert_eq!(secret.len(), 64);
    for pid in cluster.pids_with("") {
        for what in ["cmdline", "environ"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&bytes).contains(&secret), "the secret in {pid}'s {what}");
        }
    }
    assert!(!cluster.rm.log().contains(&secret) && !cluster.container_logs().contains(&secret));
    let mut rm = cluster.client(Some(TOKEN));
    let steer = embedstream_proto::pb::AllocateRequest {
        app_id: app_id.clone(),
        driver_address: "127.0.0.1:1".into(),
        executors_wanted: 0,
        state: ApplicationState::Finished as i32,
        ..Default::default()
    };
    let refused = cluster.runtime.block_on(rm.allocate(steer)).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{}", refused.message());
    let app = cluster.app(&app_id).unwrap();
    assert_eq!(state(&app), ApplicationState::Running, "the application runs on: {app:?}");
    assert_ne!(app.driver_address, "127.0.0.1:1");

    a_driver_takes_only_its_applications_secret(&cluster, &broker, &app_id);

    cluster.admin(&["stop", &app_id]);
    cluster.wait_for("the application to finish", |c| {
        c.app(&app_id).is_some_and(|a| state(&a) == ApplicationState::Finished)
    });
}
