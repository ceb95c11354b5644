//! `--master yarn` on Hadoop's own mini cluster (a real ResourceManager, two NodeManagers, HDFS;
//! `tests/common/hadoop.rs`) and a real Kafka broker: the driver as the application master,
//! executors in YARN containers, the checkpoint and the Parquet table on HDFS.
//!
//! The tests share one mini cluster (it takes a while to start) and run one at a time: each
//! wants most of its two NodeManagers. The cluster stops when the test process ends.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::capture::{Capture, Flow};
use common::hadoop::{app_id, executors_of, processes_with, the_driver, HadoopCluster};
use common::table::read_table;
use common::*;
use embedstream_core::store;

fn cluster() -> &'static HadoopCluster {
    static CLUSTER: OnceLock<HadoopCluster> = OnceLock::new();
    CLUSTER.get_or_init(HadoopCluster::start)
}

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Executor containers of 1200 MiB: a NodeManager (2048 MiB) holds one beside the 512 MiB
/// master but not two, so two executors land on both NodeManagers.
const TWO_EXECUTORS: &str = "[executors]\ncount = 2\ncores = 1\nmemory = \"800m\"\nmemory_overhead = \"400m\"\n";

/// A SASL_PLAINTEXT listener beside PLAINTEXT, taking SCRAM-SHA-512 (as tests/kafka.rs's).
const SCRAM: &str = "sasl.enabled.mechanisms=SCRAM-SHA-512\n\
    listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n";
const PASSWORD: &str = "yarn-kafka-password-3c1f";
const SCRAM_SOURCE: &str = "[source.kafka]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
    \"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"alice\"\n\
    \"sasl.password\" = { env = \"EMBEDSTREAM_TEST_KAFKA_PASSWORD\" }\n\n";

/// A job whose checkpoint and Parquet table are on the mini cluster's HDFS.
/// The topic is `name`, read in batches of at most 40 records.
fn yarn_job(broker: &Broker, hadoop: &HadoopCluster, name: &str, trigger: &str, rest: &str) -> Job {
    let source = format!("subscribe = [\"{name}\"]\nmax_offsets_per_trigger = 40");
    let job = Job::new(broker, name, &source, trigger, rest).with_parquet_sink(&table(hadoop, name));
    checkpoint_on_hdfs(job, hadoop, name)
}

/// `job` with its checkpoint at `/checkpoints/<name>` on the mini cluster's HDFS.
fn checkpoint_on_hdfs(job: Job, hadoop: &HadoopCluster, name: &str) -> Job {
    let text = std::fs::read_to_string(&job.path).unwrap();
    let line = text.lines().find(|l| l.starts_with("checkpoint_location")).unwrap().to_string();
    let checkpoint = hadoop.url(&format!("/checkpoints/{name}"));
    std::fs::write(&job.path, text.replace(&line, &format!("checkpoint_location = \"{}\"", checkpoint.display())))
        .unwrap();
    job
}

fn table(hadoop: &HadoopCluster, name: &str) -> PathBuf {
    hadoop.url(&format!("/tables/{name}"))
}

fn submit(hadoop: &HadoopCluster, job: &Job, extra: &[&str]) -> std::process::Command {
    let mut c = hadoop.embedstream();
    c.arg("submit").arg(&job.path).args(["--master", "yarn", "--driver-memory", "512m"]).args(extra);
    c
}

/// Runs `submit --wait` to its end: the application id, once it SUCCEEDED (else the driver's
/// and executors' logs in the failure).
fn waited(hadoop: &HadoopCluster, submitting: std::process::Command) -> String {
    let out = run_to_end(submitting, Duration::from_secs(300));
    let app = app_id(&out);
    assert!(
        out.status.success(),
        "submit --wait: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        hadoop.logs(&app, "driver.log") + &hadoop.logs(&app, "stderr")
    );
    app
}

/// Submits without --wait: the application id, once YARN has it running.
fn start(hadoop: &HadoopCluster, job: &Job) -> String {
    let out = run_to_end(submit(hadoop, job, &[]), Duration::from_secs(120));
    assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
    app_id(&out)
}

/// Every input text exactly once in the table, each with a unit vector.
fn assert_each_record_once(hadoop: &HadoopCluster, name: &str, inputs: &[String], app: &str) {
    let (rows, count) = read_table(&table(hadoop, name));
    let diagnostics = || hadoop.logs(app, "driver.log");
    assert_eq!(count, inputs.len(), "rows through the manifests:\n{}", diagnostics());
    let written: BTreeSet<&str> = rows.values().map(|(text, _)| text.as_str()).collect();
    let wanted: BTreeSet<&str> = inputs.iter().map(String::as_str).collect();
    assert_eq!(written, wanted, "the texts in the table");
    for ((p, o), (_, vector)) in &rows {
        assert_eq!(vector.len(), DIM);
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{p}-{o}: norm {norm}");
    }
}

/// Waits until the table holds `n` rows through its manifests.
fn wait_for_rows(hadoop: &HadoopCluster, name: &str, n: usize, app: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while read_table(&table(hadoop, name)).1 < n {
        assert!(
            Instant::now() < deadline,
            "the table did not reach {n} rows within {timeout:?}:\n{}",
            hadoop.logs(app, "driver.log")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A continuous query on YARN over `n` records in a new 2-partition topic `name`, once they are
/// all in its table: the broker, the texts and the application.
fn running(hadoop: &HadoopCluster, name: &str, n: usize, executors: &str) -> (Broker, Vec<String>, String) {
    let broker = Broker::start();
    broker.create_topic(name, 2);
    let first = texts(n, name.len());
    broker.produce_texts(name, 2, 0, &first);
    let job = yarn_job(&broker, hadoop, name, "processing_time = \"500ms\"", executors);
    let app = start(hadoop, &job);
    wait_for_rows(hadoop, name, first.len(), &app, Duration::from_secs(180));
    (broker, first, app)
}

fn staging_dir(hadoop: &HadoopCluster, app: &str) -> PathBuf {
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        String::from_utf8(std::process::Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().into()
    });
    hadoop.url(&format!("/user/{user}/.embedstream-staging/{app}"))
}

fn admin(hadoop: &HadoopCluster, args: &[&str], app: &str) -> Output {
    let mut c = hadoop.embedstream();
    c.args(args).args(["--master", "yarn", "--app", app]);
    run_to_end(c, Duration::from_secs(60))
}

/// Issue 32, item 5: a Delta table on HDFS, written by a query on YARN (its executors write the
/// files; its driver commits each batch to the Delta log on HDFS, create-without-overwrite
/// being the NameNode's atomic put-if-absent), and read from HDFS by Spark with Delta Lake's
/// jars: every record once, and the log checkpointed.
#[test]
fn a_delta_table_on_hdfs_written_from_yarn_is_read_by_spark() {
    let _serial = one_at_a_time();
    let hadoop = cluster();
    let name = "yarn-delta";
    let broker = Broker::start();
    let inputs = texts(60, 32);
    broker.create_topic(name, 2);
    broker.produce_texts(name, 2, 0, &inputs);
    let executors = "[executors]\ncount = 1\ncores = 1\nmemory = \"800m\"\nmemory_overhead = \"400m\"\n";
    let source = format!("subscribe = [\"{name}\"]\nmax_offsets_per_trigger = 20");
    let table = table(hadoop, name);
    let job = Job::new(&broker, name, &source, "available_now = true", executors)
        .with_delta_sink(&table, "checkpoint_interval = 2");
    let job = checkpoint_on_hdfs(job, hadoop, name);
    waited(hadoop, submit(hadoop, &job, &["--wait"]));

    let spark = common::delta::read_with_spark(&table);
    let rows = spark["rows"].as_array().unwrap();
    assert_eq!(rows.len(), inputs.len(), "each record once: {spark}");
    for (n, text) in inputs.iter().enumerate() {
        let (p, o) = ((n % 2) as i64, (n / 2) as i64);
        assert!(rows.iter().any(|r| r[0] == p && r[1] == o && r[2] == text.as_str()), "input {p}-{o} in {spark}");
    }
    assert_eq!(spark["dims"], serde_json::json!([384]));
    let log = store::list(&table.join("_delta_log")).unwrap().expect("the Delta log on HDFS");
    assert!(log.iter().any(|e| e.name.ends_with(".checkpoint.parquet")), "a checkpoint: {log:?}");
}

/// Item 1, 2 and 6: `submit --master yarn --wait` stages, runs the driver as the master and two
/// executors on both NodeManagers, reads through a SASL/SCRAM listener, writes every record once
/// to the HDFS table and exits 0 when the `available_now` query ends; the application SUCCEEDED
/// and its staging directory is gone.
#[test]
fn a_query_submitted_to_yarn_embeds_every_record_into_an_hdfs_table() {
    let _serial = one_at_a_time();
    let hadoop = cluster();
    // The source is read through a SASL/SCRAM listener, its password from a variable of the
    // submitting shell: it travels as a private staged file, not in the containers' environment.
    let broker = Broker::start_with(&["SASL_PLAINTEXT"], SCRAM);
    broker.add_scram_user("alice", PASSWORD);
    let inputs = texts(120, 1);
    broker.create_topic("yarn-all", 4);
    broker.produce_texts("yarn-all", 4, 0, &inputs);
    let sink = format!("bootstrap_servers = \"{}\"\n{TWO_EXECUTORS}", broker.addr);
    let job = yarn_job(&broker, hadoop, "yarn-all", "available_now = true", &sink);
    let text =
        std::fs::read_to_string(&job.path).unwrap().replacen("[trigger]", &format!("{SCRAM_SOURCE}[trigger]"), 1);
    std::fs::write(&job.path, text).unwrap();
    let job = job.with_bootstrap(broker.listener("SASL_PLAINTEXT"));

    let mut submitting = submit(hadoop, &job, &["--wait", "--name", "embed-products"]);
    submitting.env("EMBEDSTREAM_TEST_KAFKA_PASSWORD", PASSWORD);
    // Every byte on loopback from submit to the end: where did the password go?
    let capture = Capture::start(PASSWORD);
    let app = waited(hadoop, submitting);
    let flows = capture.finish();
    assert_each_record_once(hadoop, "yarn-all", &inputs, &app);
    let driver_log = hadoop.logs(&app, "driver.log");
    let logs = driver_log.clone() + &hadoop.logs(&app, "stderr");
    assert!(logs.contains("yarn-all") && !logs.contains(PASSWORD), "the password is in no container's log");

    // Issue 39, item 5: the executors fetched the job spec, with the password, from the driver
    // over TLS (the application's own CA, made at submit): the password is in none of the
    // bytes to or from the driver's port. HDFS without Kerberos carries files in clear, so the
    // staged secret file's blocks, to and from the DataNode, do hold it: that is the capture
    // seeing a password where one crosses loopback in clear, and the only place it does.
    let driver_port: u16 = driver_log
        .split("driver=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("the driver's address is not in its log:\n{driver_log}"));
    let carried: Vec<&Flow> = flows.iter().filter(|f| f.found).collect();
    assert!(
        carried.iter().any(|f| f.touches(hadoop.datanode_port)),
        "the capture saw the staged secret file's blocks in clear: {carried:?}"
    );
    assert!(
        carried.iter().all(|f| f.touches(hadoop.datanode_port)),
        "the password crossed loopback in clear outside HDFS's block transfers: {carried:?}"
    );
    let to_driver: Vec<&Flow> = flows.iter().filter(|f| f.dst.ends_with(&format!(":{driver_port}"))).collect();
    assert!(to_driver.len() >= 2, "both executors called the driver: {to_driver:?}");
    assert!(
        to_driver.iter().all(|f| f.tls),
        "every connection to the driver opened with a TLS handshake: {to_driver:?}"
    );
    let driver_bytes: u64 = flows.iter().filter(|f| f.touches(driver_port)).map(|f| f.bytes).sum();
    assert!(
        driver_bytes > 10_000,
        "the job spec, tasks and results went through the driver's port: {driver_bytes} bytes"
    );

    let report = hadoop.report(&app);
    assert_eq!(report["final_status"], "SUCCEEDED", "{report:?}");
    assert_eq!(report["name"], "embed-products");
    // The master is the application's first container; the executors are on both NodeManagers.
    let executors: BTreeSet<String> =
        hadoop.containers_of(&app).into_iter().filter(|(_, c)| !c.ends_with("_000001")).map(|(nm, _)| nm).collect();
    assert_eq!(executors.len(), 2, "executor containers by NodeManager: {:?}", hadoop.containers_of(&app));
    assert_eq!(store::list(&staging_dir(hadoop, &app)).unwrap(), None, "the staging directory is removed");
}

/// Issue 39, item 6: HDFS paths as Hadoop users write them. The checkpoint is `hdfs:///...`
/// (the default file system, core-site.xml's `fs.defaultFS`) and the table
/// `hdfs://embedstream-ns/...`, an HA name service of hdfs-site.xml whose first NameNode is down
/// (a closed port), so every client (submit, the driver, the executors) fails over to the
/// second, the mini cluster's. The job runs on YARN to its end and every record is in the
/// table once, read back through the NameNode's own address.
#[test]
fn hdfs_paths_as_hadoop_users_write_them_the_default_file_system_and_an_ha_name_service() {
    let _serial = one_at_a_time();
    let hadoop = cluster();
    let conf = tempfile::tempdir().unwrap();
    for file in ["core-site.xml", "yarn-site.xml"] {
        std::fs::copy(hadoop.conf_dir.join(file), conf.path().join(file)).unwrap();
    }
    let namenode = hadoop.hdfs.trim_start_matches("hdfs://");
    let down = format!("127.0.0.1:{}", free_port());
    let property =
        |name: &str, value: &str| format!("<property><name>{name}</name><value>{value}</value></property>\n");
    let site = [
        property("dfs.nameservices", "embedstream-ns"),
        property("dfs.ha.namenodes.embedstream-ns", "nn1,nn2"),
        property("dfs.namenode.rpc-address.embedstream-ns.nn1", &down),
        property("dfs.namenode.rpc-address.embedstream-ns.nn2", namenode),
        property(
            "dfs.client.failover.proxy.provider.embedstream-ns",
            "org.apache.hadoop.hdfs.server.namenode.ha.ConfiguredFailoverProxyProvider",
        ),
    ]
    .concat();
    std::fs::write(conf.path().join("hdfs-site.xml"), format!("<configuration>\n{site}</configuration>\n")).unwrap();

    let name = "yarn-paths";
    let broker = Broker::start();
    let inputs = texts(60, 9);
    broker.create_topic(name, 2);
    broker.produce_texts(name, 2, 0, &inputs);
    let job = yarn_job(&broker, hadoop, name, "available_now = true", TWO_EXECUTORS);
    let text = std::fs::read_to_string(&job.path)
        .unwrap()
        .replace(
            &hadoop.url(&format!("/checkpoints/{name}")).display().to_string(),
            &format!("hdfs:///checkpoints/{name}"),
        )
        .replace(&table(hadoop, name).display().to_string(), &format!("hdfs://embedstream-ns/tables/{name}"));
    assert!(text.contains("\"hdfs:///checkpoints/") && text.contains("\"hdfs://embedstream-ns/tables/"), "{text}");
    // Issue 39, item 5: the spec's own TLS files (one certificate for the nodes' address) are
    // staged and used by the driver and its executors, not refused.
    let (ca, identity) = common::tls::certificates(conf.path(), "site-ca");
    let security = format!(
        "\n[security]\ntls_cert = \"{0}\"\ntls_key = \"{0}\"\ntls_ca = \"{1}\"\n",
        identity.display(),
        ca.display()
    );
    std::fs::write(&job.path, text + &security).unwrap();

    let mut submitting = submit(hadoop, &job, &["--wait"]);
    submitting.env("HADOOP_CONF_DIR", conf.path());
    let app = waited(hadoop, submitting);
    assert_each_record_once(hadoop, name, &inputs, &app);
    let log = hadoop.logs(&app, "driver.log");
    assert!(
        log.contains("Tls(certificate: true, ca: true, client_auth: false, server_name: None)"),
        "the driver and its executors used the spec's certificate:\n{log}"
    );
    let checkpoint = hadoop.url(&format!("/checkpoints/{name}/commits"));
    assert!(
        store::list(&checkpoint).unwrap().is_some_and(|c| !c.is_empty()),
        "the checkpoint on the default file system"
    );
}

/// Item 2 and 5: an executor container's process killed mid-query is reported by YARN and
/// replaced; every record lands once. `scale` down and up changes the containers; `stop` ends
/// the application SUCCEEDED.
#[test]
fn an_executor_killed_on_yarn_is_replaced_and_scale_and_stop_work() {
    let _serial = one_at_a_time();
    let hadoop = cluster();
    let (broker, first, app) = running(hadoop, "yarn-kill", 60, TWO_EXECUTORS);
    // YARN's tracking URL (what its UI links to) is the driver's page, over TLS with the
    // application's own certificate, which chains to the CA staged beside it (issue 39, item 5);
    // nothing is served there in clear.
    let tracking = hadoop.report(&app)["tracking_url"].clone();
    let address = (tracking.strip_prefix("https://").and_then(|t| t.strip_suffix('/')))
        .unwrap_or_else(|| panic!("tracking URL {tracking:?}: not the driver's page over TLS"));
    let ca = tempfile::tempdir().unwrap();
    let ca_file = ca.path().join("app-ca.pem");
    let staged_ca = store::read(&staging_dir(hadoop, &app).join("app-ca.pem")).unwrap().expect("a staged CA");
    std::fs::write(&ca_file, staged_ca).unwrap();
    let page = common::tls::https_get_as(address, "/", &ca_file, embedstream_core::tls::APPLICATION_SERVER_NAME)
        .unwrap_or_else(|e| panic!("{tracking}: {e}"));
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("<title>embedstream"), "{tracking}: {page}");
    let other = embedstream_core::tls::application_certificates("another").unwrap();
    std::fs::write(&ca_file, other.ca).unwrap();
    let refused = common::tls::https_get_as(address, "/", &ca_file, embedstream_core::tls::APPLICATION_SERVER_NAME);
    assert!(refused.is_err(), "another application's CA must not vouch for this driver: {refused:?}");
    let plain = common::tls::http_get(address);
    assert!(!plain.is_ok_and(|a| a.contains("HTTP/1.1 200")), "the page is not served in clear");

    let victims = executors_of(&app);
    assert!(!victims.is_empty(), "no executor process of {app}");
    let (pid, _) = victims[0].clone();
    kill_hard(pid);
    let second = texts(60, 3);
    broker.produce_texts("yarn-kill", 2, first.len(), &second);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    wait_for_rows(hadoop, "yarn-kill", all.len(), &app, Duration::from_secs(180));
    let log = hadoop.logs(&app, "driver.log");
    assert!(log.contains("YARN container exit status"), "the driver logged YARN's report of the kill:\n{log}");

    // Scale down to one executor, then up to two: the driver drains one, then YARN starts one.
    let out = admin(hadoop, &["scale", "--executors", "1"], &app);
    assert!(out.status.success(), "scale: {}", String::from_utf8_lossy(&out.stderr));
    let executors_of = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = admin(hadoop, &["status"], &app);
            let text = String::from_utf8_lossy(&status.stdout).into_owned();
            let live = text.lines().filter(|l| l.contains("container_") && !l.contains("lost")).count();
            if live == n {
                return text;
            }
            assert!(Instant::now() < deadline, "not {n} executors within 120 s:\n{text}");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    executors_of(1);
    let out = admin(hadoop, &["scale", "--executors", "2"], &app);
    assert!(out.status.success(), "scale: {}", String::from_utf8_lossy(&out.stderr));
    executors_of(2);

    let third = texts(30, 4);
    broker.produce_texts("yarn-kill", 2, all.len(), &third);
    let all: Vec<String> = all.into_iter().chain(third).collect();
    wait_for_rows(hadoop, "yarn-kill", all.len(), &app, Duration::from_secs(180));

    let out = admin(hadoop, &["stop"], &app);
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
    let report = hadoop.wait_for_end(&app, Duration::from_secs(120));
    assert_eq!(report["final_status"], "SUCCEEDED", "{report:?}");
    assert_each_record_once(hadoop, "yarn-kill", &all, &app);
    assert_eq!(store::list(&staging_dir(hadoop, &app)).unwrap(), None, "the staging directory is removed");
    // `list --master yarn`: embedstream's applications as YARN reports them.
    let mut c = hadoop.embedstream();
    c.args(["list", "--master", "yarn"]);
    let out = run_to_end(c, Duration::from_secs(60));
    let listed = String::from_utf8_lossy(&out.stdout);
    let row = listed.lines().find(|l| l.starts_with(&app)).unwrap_or_else(|| panic!("{app} not listed: {listed}"));
    assert!(row.contains("yarn-kill") && row.contains("FINISHED") && row.contains("SUCCEEDED"), "{row}");
}

/// Item 3 and 5: the master's driver killed; YARN starts a second attempt, which resumes from
/// the HDFS checkpoint: no batch lost or written twice. Hadoop's own kill then ends it.
#[test]
fn a_killed_master_is_restarted_by_yarn_and_resumes_from_the_hdfs_checkpoint() {
    let _serial = one_at_a_time();
    let hadoop = cluster();
    let (broker, first, app) = running(hadoop, "yarn-am", 40, "[executors]\ncount = 1\nmemory = \"800m\"\n");

    kill_hard(the_driver().0);
    let second = texts(40, 6);
    broker.produce_texts("yarn-am", 2, first.len(), &second);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    wait_for_rows(hadoop, "yarn-am", all.len(), &app, Duration::from_secs(240));
    assert_eq!(hadoop.report(&app)["attempt"], "2", "YARN's second attempt runs the query");
    assert_each_record_once(hadoop, "yarn-am", &all, &app);

    // Hadoop's own kill (`yarn application -kill`): KILLED, and its processes are gone.
    hadoop.kill(&app);
    let report = hadoop.wait_for_end(&app, Duration::from_secs(120));
    assert_eq!(report["state"], "KILLED", "{report:?}");
    let containers = app.replace("application_", "container_");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes_with(&["embedstream", &containers]).is_empty() || !processes_with(&["yarn-driver"]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes of {app} left: {:?}",
            processes_with(&["embedstream", &containers])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Item 2: executors over their container's memory are killed by YARN's own check; the driver
/// logs YARN's reason and asks for replacements, and gives up saying to raise the memory.
#[test]
fn executors_over_their_container_memory_are_killed_by_yarn_and_replaced() {
    let _serial = one_at_a_time();
    let hadoop = cluster();
    let broker = Broker::start();
    broker.create_topic("yarn-mem", 1);
    broker.produce_texts("yarn-mem", 1, 0, &texts(20, 7));
    // 64 MiB in all: less than the model daemon alone.
    let small = "[executors]\ncount = 1\nmemory = \"32m\"\nmemory_overhead = \"32m\"\n";
    // A query that keeps running, so that each executor lives until YARN's check sees it.
    let job = yarn_job(&broker, hadoop, "yarn-mem", "processing_time = \"1s\"", small);
    let out = run_to_end(submit(hadoop, &job, &["--wait"]), Duration::from_secs(300));
    let app = app_id(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the query cannot run in 64 MiB executors");
    let log = hadoop.logs(&app, "driver.log");
    assert!(
        log.contains("executor killed over its memory; starting a replacement") && log.contains("physical memory used"),
        "the driver logged YARN's reason and replaced the executor:\n{log}"
    );
    // The query gives up (its task failed on every replacement, or the memory kills ran out
    // of budget): the application FAILED, with YARN's reason in its diagnostics either way.
    assert!(stderr.contains("FAILED") && stderr.contains("physical memory used"), "{stderr}");
    let report = hadoop.report(&app);
    assert_eq!(report["final_status"], "FAILED");
    assert!(report["diagnostics"].contains("physical memory used"), "{report:?}");
}

/// Item 6: a bad spec is refused before anything is submitted, naming the key; a local
/// checkpoint is refused for YARN; an unreachable ResourceManager fails in bounded time.
#[test]
fn bad_specs_and_an_unreachable_resource_manager_are_refused_clearly() {
    let broker = Broker::client_of("127.0.0.1:9");
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(&broker, "yarn-bad", "subscribe = [\"t\"]", "available_now = true", "");
    // A typo'd key: refused naming it, before any cluster is looked for.
    let text = std::fs::read_to_string(&job.path).unwrap().replace("batch_size = 16", "batch_sise = 16");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let mut c = embedstream();
    c.env("HADOOP_CONF_DIR", dir.path().join("nowhere")).args(["submit"]).arg(&bad).args(["--master", "yarn"]);
    let out = run_to_end(c, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("model.batch_sise"), "{stderr}");

    // A checkpoint on this machine's disk cannot be reached from the cluster's nodes.
    let mut c = embedstream();
    c.env("HADOOP_CONF_DIR", dir.path()).args(["submit"]).arg(&job.path).args(["--master", "yarn"]);
    let out = run_to_end(c, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("checkpoint_location: on YARN it must be an hdfs://"), "{stderr}");

    // TLS files that do not go together: refused naming the missing one, before any cluster is
    // called.
    let tls_job = dir.path().join("tls.toml");
    std::fs::write(&tls_job, std::fs::read_to_string(&job.path).unwrap() + "\n[security]\ntls_ca = \"/etc/ca.pem\"\n")
        .unwrap();
    let text = std::fs::read_to_string(&tls_job).unwrap();
    let line = text.lines().find(|l| l.starts_with("checkpoint_location")).unwrap().to_string();
    std::fs::write(&tls_job, text.replace(&line, "checkpoint_location = \"hdfs://127.0.0.1:9/cp\"")).unwrap();
    let mut c = embedstream();
    c.env("HADOOP_CONF_DIR", dir.path()).args(["submit"]).arg(&tls_job).args(["--master", "yarn"]);
    let out = run_to_end(c, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("security.tls_cert`: needed with a CA"), "{stderr}");

    // A ResourceManager that nothing listens on: a one-line error naming it, in bounded time.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let site = |props: &[(&str, String)]| {
        let p: String =
            props.iter().map(|(k, v)| format!("<property><name>{k}</name><value>{v}</value></property>")).collect();
        format!("<?xml version=\"1.0\"?><configuration>{p}</configuration>")
    };
    std::fs::write(conf.join("yarn-site.xml"), site(&[("yarn.resourcemanager.address", format!("127.0.0.1:{port}"))]))
        .unwrap();
    std::fs::write(conf.join("core-site.xml"), site(&[("fs.defaultFS", format!("hdfs://127.0.0.1:{port}"))])).unwrap();
    let hdfs_job = dir.path().join("hdfs.toml");
    let text = std::fs::read_to_string(&job.path).unwrap();
    let line = text.lines().find(|l| l.starts_with("checkpoint_location")).unwrap().to_string();
    std::fs::write(&hdfs_job, text.replace(&line, &format!("checkpoint_location = \"hdfs://127.0.0.1:{port}/cp\"")))
        .unwrap();
    let mut c = embedstream();
    c.env("HADOOP_CONF_DIR", &conf).args(["submit"]).arg(&hdfs_job).args(["--master", "yarn"]);
    let started = Instant::now();
    let out = run_to_end(c, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("YARN:") && stderr.contains(&port.to_string()), "names the ResourceManager: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    eprintln!("an unreachable ResourceManager failed the submit in {:?}", started.elapsed());
}
