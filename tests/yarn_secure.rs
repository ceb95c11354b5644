//! `--master yarn` on a Kerberized Hadoop (issue 39): Hadoop's own mini cluster with
//! `hadoop.security.authentication = kerberos` on a realm of its own (Debian's MIT KDC,
//! `tests/common/kdc.rs`): service principals for the NameNode, DataNode, ResourceManager and
//! NodeManagers, block access tokens and SASL on data transfer; a user principal with a keytab.
//!
//! A test binary of its own: this process reads the table as the test user, through
//! HADOOP_CONF_DIR and a ticket cache, which would not do for the cluster without Kerberos.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::hadoop::{app_id, executors_of, the_driver, HadoopCluster, USER};
use common::kdc::{Kdc, REALM};
use common::table::read_table;
use common::*;
use embedstream_core::store;

struct Secure {
    /// Stopped before the KDC (fields drop in order).
    hadoop: HadoopCluster,
    kdc: Kdc,
}

fn secure() -> &'static Secure {
    static SECURE: OnceLock<Secure> = OnceLock::new();
    SECURE.get_or_init(|| {
        let started = Instant::now();
        let kdc = Kdc::start();
        let hadoop = HadoopCluster::start_secure(&kdc);
        eprintln!("the Kerberized mini cluster started in {:.1} s", started.elapsed().as_secs_f64());
        // This process reads HDFS as the test user, with its ticket, as `hdfs dfs` would.
        let k = hadoop.kerberos.as_ref().unwrap();
        std::env::set_var("HADOOP_CONF_DIR", &hadoop.conf_dir);
        std::env::set_var("KRB5_CONFIG", &k.krb5_conf);
        std::env::set_var("KRB5CCNAME", hadoop.ticket_cache());
        Secure { hadoop, kdc }
    })
}

/// One application at a time: each wants most of the two NodeManagers.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job reading topic `name` into a Parquet table on HDFS, its checkpoint there too, with
/// `source_kafka` in its `[source.kafka]` and `rest` appended.
fn secure_job(broker: &Broker, hadoop: &HadoopCluster, name: &str, trigger: &str, rest: &str) -> (Job, PathBuf) {
    let table = hadoop.url(&format!("/tables/{name}"));
    let source = format!("subscribe = [\"{name}\"]\nmax_offsets_per_trigger = 40");
    let job = Job::new(broker, name, &source, trigger, rest).with_parquet_sink(&table);
    let text = std::fs::read_to_string(&job.path).unwrap();
    let line = text.lines().find(|l| l.starts_with("checkpoint_location")).unwrap().to_string();
    let checkpoint = hadoop.url(&format!("/checkpoints/{name}"));
    let text = text.replace(&line, &format!("checkpoint_location = \"{}\"", checkpoint.display()));
    std::fs::write(&job.path, text).unwrap();
    (job, table)
}

/// `submit --master yarn` of `job` with `extra` arguments, with no ticket (`extra` may log in).
fn submit(hadoop: &HadoopCluster, job: &Job, extra: &[&str]) -> Output {
    submit_as(hadoop.embedstream(), job, extra)
}

/// `submit --master yarn` of `job` through `c` (`embedstream`, with or without a ticket).
fn submit_as(mut c: std::process::Command, job: &Job, extra: &[&str]) -> Output {
    c.arg("submit").arg(&job.path).args(["--master", "yarn", "--driver-memory", "512m"]).args(extra);
    run_to_end(c, Duration::from_secs(300))
}

/// `--principal NAME@REALM --keytab KEYTAB`
fn keytab_login(name: &str, keytab: &std::path::Path) -> [String; 4] {
    ["--principal".into(), format!("{name}@{REALM}"), "--keytab".into(), keytab.display().to_string()]
}

/// [`keytab_login`] as the test user.
fn user_login(hadoop: &HadoopCluster) -> [String; 4] {
    keytab_login(USER, &hadoop.kerberos.as_ref().unwrap().user_keytab)
}

/// Waits until the table holds `n` rows through its manifests (failing early if `app` ended).
fn wait_for_rows(hadoop: &HadoopCluster, table: &std::path::Path, n: usize, app: &str) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while read_table(table).1 < n {
        let report = hadoop.report(app);
        let ended = matches!(report["state"].as_str(), "FINISHED" | "FAILED" | "KILLED");
        assert!(
            Instant::now() < deadline && !ended,
            "the table did not fill: {report:?}\n{}\n{}\n{}",
            hadoop.logs(app, "driver.log"),
            hadoop.logs(app, "stderr"),
            hadoop.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every input once in the table, read through its manifests.
fn assert_each_record_once(table: &std::path::Path, inputs: &[String]) {
    let (rows, count) = read_table(table);
    assert_eq!(count, inputs.len(), "each record once");
    let written: BTreeSet<&str> = rows.values().map(|(t, _)| t.as_str()).collect();
    assert_eq!(written, inputs.iter().map(String::as_str).collect::<BTreeSet<_>>());
}

fn staging(hadoop: &HadoopCluster) -> PathBuf {
    hadoop.url(&format!("/user/{USER}/.embedstream-staging"))
}

/// Items 1, 2 and 7: without a ticket or keytab `submit` fails at once, in one line naming
/// Kerberos, and writes nothing. With `--principal --keytab` it logs in, gets HDFS delegation
/// tokens for the job's HDFS and hands them to the application: the master, the driver and the
/// executors write the checkpoint and the Parquet table with them (the keytab goes to the
/// master's container only, for renewals), every record once. The admin commands work with
/// the user's ticket (`kinit`).
#[test]
fn a_query_on_kerberized_yarn_and_hdfs_runs_on_delegation_tokens() {
    let _serial = one_at_a_time();
    let Secure { hadoop, .. } = secure();
    let name = "secure-all";
    let broker = Broker::start();
    let inputs = texts(60, 5);
    broker.create_topic(name, 2);
    broker.produce_texts(name, 2, 0, &inputs);
    let executors = "[executors]\ncount = 2\ncores = 1\nmemory = \"800m\"\nmemory_overhead = \"400m\"\n";
    let (job, table) = secure_job(&broker, hadoop, name, "processing_time = \"500ms\"", executors);
    let checkpoint = hadoop.url(&format!("/checkpoints/{name}"));

    // No ticket (the command's ticket cache is empty) and no keytab: refused in one line.
    let staged_before = store::list(&staging(hadoop)).unwrap().map(|e| e.len());
    let out = submit(hadoop, &job, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "submit without credentials: {stderr}");
    let said: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(said.len(), 1, "one line: {stderr}");
    assert!(said[0].contains("Kerberos") && said[0].contains("--principal and --keytab"), "{stderr}");
    assert_eq!(store::list(&staging(hadoop)).unwrap().map(|e| e.len()), staged_before, "nothing was staged");
    assert_eq!(store::list(&checkpoint).unwrap(), None, "nothing was written");

    let login = user_login(hadoop);
    let out = submit(hadoop, &job, &login.each_ref().map(String::as_str));
    assert!(out.status.success(), "submit with a keytab: {}", String::from_utf8_lossy(&out.stderr));
    let app = app_id(&out);
    wait_for_rows(hadoop, &table, inputs.len(), &app);
    assert_each_record_once(&table, &inputs);

    // An executor's container killed: its replacement gets the application's tokens from the
    // master and reads and writes HDFS with them.
    let executors = executors_of(&app);
    assert!(!executors.is_empty(), "no executor process of {app}");
    kill_hard(executors[0].0);
    let second = texts(30, 7);
    broker.produce_texts(name, 2, inputs.len(), &second);
    let mut all: Vec<String> = inputs.iter().chain(&second).cloned().collect();
    wait_for_rows(hadoop, &table, all.len(), &app);

    // The master killed: YARN's second attempt gets the application's tokens too and resumes
    // from the HDFS checkpoint.
    kill_hard(the_driver().0);
    let third = texts(30, 8);
    broker.produce_texts(name, 2, all.len(), &third);
    all.extend(third);
    wait_for_rows(hadoop, &table, all.len(), &app);
    assert_eq!(hadoop.report(&app)["attempt"], "2", "YARN's second attempt runs the query");
    assert_each_record_once(&table, &all);

    // The keytab went to the master only (which renews the tokens with it): the driver's
    // container has it, no executor's does; they work on the tokens.
    let staged: Vec<String> =
        store::list(&staging(hadoop).join(&app)).unwrap().unwrap_or_default().into_iter().map(|e| e.name).collect();
    assert!(staged.contains(&"user.keytab".to_string()), "{staged:?}");
    let cwd = |pid: u32| std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert!(cwd(the_driver().0).join("user.keytab").is_file(), "the master's container has the keytab");
    let executors = executors_of(&app);
    assert!(!executors.is_empty());
    for (pid, _) in executors {
        assert!(!cwd(pid).join("user.keytab").exists(), "an executor's container has the keytab");
    }

    // The admin commands with the user's ticket.
    let admin = |args: &[&str]| {
        let mut c = hadoop.embedstream_with_ticket();
        c.args(args).args(["--master", "yarn", "--app", &app]);
        run_to_end(c, Duration::from_secs(60))
    };
    let out = admin(&["progress"]);
    assert!(out.status.success(), "progress: {}", String::from_utf8_lossy(&out.stderr));
    let mut list = hadoop.embedstream_with_ticket();
    list.args(["list", "--master", "yarn"]);
    let out = run_to_end(list, Duration::from_secs(60));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&app), "list: {}", String::from_utf8_lossy(&out.stderr));
    // Without a ticket, an admin command says what is missing.
    let mut c = hadoop.embedstream();
    c.args(["status", "--master", "yarn", "--app", &app]);
    let out = run_to_end(c, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("Kerberos") && stderr.contains("kinit"), "{stderr}");
    let out = admin(&["stop"]);
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
    let report = hadoop.wait_for_end(&app, Duration::from_secs(120));
    assert_eq!(report["final_status"], "SUCCEEDED", "{report:?}");
}

/// Item 4 (and item 1's ticket): a Kafka source over SASL/GSSAPI read from YARN containers.
/// The spec names the Kafka client's keytab on the submitting machine; `submit` stages it as a private file of the
/// application (librdkafka has no use for Kafka delegation tokens), which YARN localizes into
/// the driver's and executors' containers, each logging in into a ticket cache of its own. The
/// job is submitted with the user's ticket from `kinit`, as a short job may be.
#[test]
fn a_kafka_source_over_gssapi_is_read_from_yarn_containers() {
    let _serial = one_at_a_time();
    let Secure { hadoop, kdc } = secure();
    let client_keytab = kdc.add_principal("embedstream-kafka");
    let broker = Broker::start_kerberized(kdc);
    let name = "secure-gssapi";
    let inputs = texts(40, 6);
    broker.create_topic(name, 2);
    broker.produce_texts(name, 2, 0, &inputs);
    let executors = "[executors]\ncount = 1\ncores = 1\nmemory = \"800m\"\nmemory_overhead = \"400m\"\n";
    let (job, table) = secure_job(&broker, hadoop, name, "available_now = true", executors);
    let source = format!(
        "[source.kafka]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"GSSAPI\"\n\
         \"sasl.kerberos.service.name\" = \"kafka\"\n\"sasl.kerberos.principal\" = \"embedstream-kafka@{REALM}\"\n\
         \"sasl.kerberos.keytab\" = \"{}\"\n\n",
        client_keytab.display()
    );
    let text = std::fs::read_to_string(&job.path).unwrap().replacen("[trigger]", &format!("{source}[trigger]"), 1);
    std::fs::write(&job.path, text).unwrap();
    let job = job.with_bootstrap(broker.listener("SASL_PLAINTEXT"));

    // A short job, submitted with the user's ticket (`kinit`) rather than a keytab.
    let out = submit_as(hadoop.embedstream_with_ticket(), &job, &["--wait"]);
    let app = app_id(&out);
    assert!(
        out.status.success(),
        "submit --wait: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        hadoop.logs(&app, "driver.log"),
        hadoop.logs(&app, "stderr")
    );
    assert_each_record_once(&table, &inputs);
}

/// Item 3: a streaming query outlives its delegation tokens. The cluster's tokens live three
/// minutes (renewal and max lifetime alike); the master, with the keytab `submit` gave it, logs
/// in again and gets new ones half way to expiry (90 s before it at the latest), the driver
/// takes them at its next allocate and its executors at their next heartbeat. Past the max
/// lifetime of every token the application started with, an executor's container is killed:
/// its replacement is localized and reads and writes HDFS with renewed tokens, and the query
/// writes every record once.
///
/// Item 8, in the same three minutes (a second application beside the first): a query whose
/// keytab stops working (its principal is deleted from the KDC) cannot be renewed; before its
/// tokens expire the query ends, and YARN's diagnostics say why in one line.
#[test]
fn a_query_outlives_its_delegation_tokens_on_a_keytab() {
    let _serial = one_at_a_time();
    let Secure { hadoop, kdc } = secure();
    let name = "secure-renewal";
    let broker = Broker::start();
    let first = texts(30, 9);
    broker.create_topic(name, 2);
    broker.produce_texts(name, 2, 0, &first);
    let executors = "[executors]\ncount = 1\ncores = 1\nmemory = \"800m\"\nmemory_overhead = \"400m\"\n";
    let (job, table) = secure_job(&broker, hadoop, name, "processing_time = \"500ms\"", executors);
    let login = user_login(hadoop);
    let submitted = Instant::now();
    let out = submit(hadoop, &job, &login.each_ref().map(String::as_str));
    assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
    let app = app_id(&out);
    wait_for_rows(hadoop, &table, first.len(), &app);

    // Beside it, carol's query, whose keytab stops working once it runs.
    let carol = "carol";
    let carol_keytab = kdc.add_principal(carol);
    let failing = "secure-renewal-fails";
    broker.create_topic(failing, 1);
    broker.produce_texts(failing, 1, 0, &first);
    let (carol_job, carol_table) = secure_job(&broker, hadoop, failing, "processing_time = \"500ms\"", executors);
    let carol_login = keytab_login(carol, &carol_keytab);
    let out = submit(hadoop, &carol_job, &carol_login.each_ref().map(String::as_str));
    assert!(out.status.success(), "submit as {carol}: {}", String::from_utf8_lossy(&out.stderr));
    let carol_app = app_id(&out);
    wait_for_rows(hadoop, &carol_table, first.len(), &carol_app);
    kdc.delete_principal(carol);

    // Every token the application started with (the submit's, and the master's first) has
    // reached its max lifetime once the master has renewed twice after its first: the driver
    // logs each renewal it takes, numbered.
    let lifetime = Duration::from_secs(180);
    let deadline = Instant::now() + Duration::from_secs(420);
    loop {
        let log = hadoop.logs(&app, "driver.log");
        let renewed = log.matches("renewed Hadoop delegation tokens").count();
        if renewed >= 3 && submitted.elapsed() > lifetime {
            break;
        }
        assert!(Instant::now() < deadline, "{renewed} renewals within 420 s:\n{log}\n{}", hadoop.logs(&app, "stderr"));
        std::thread::sleep(Duration::from_secs(1));
    }
    let executor_log = hadoop.logs(&app, "stderr");
    assert!(executor_log.contains("took the driver's renewed Hadoop delegation tokens"), "{executor_log}");

    let victims = executors_of(&app);
    assert!(!victims.is_empty(), "no executor process of {app}");
    kill_hard(victims[0].0);
    let second = texts(30, 10);
    broker.produce_texts(name, 2, first.len(), &second);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    wait_for_rows(hadoop, &table, all.len(), &app);
    assert_each_record_once(&table, &all);
    let log = hadoop.logs(&app, "driver.log");
    eprintln!(
        "renewals the driver took:\n{}",
        log.lines().filter(|l| l.contains("renewed Hadoop delegation tokens")).collect::<Vec<_>>().join("\n")
    );
    hadoop.kill(&app);

    // carol's query ended on its own, before its tokens did, saying why.
    let report = hadoop.wait_for_end(&carol_app, Duration::from_secs(180));
    let master_log = hadoop.logs(&carol_app, "stderr");
    assert_eq!(report["final_status"], "FAILED", "{report:?}\n{master_log}");
    let why = &report["diagnostics"];
    for said in ["Kerberos", "could not renew", "HDFS delegation tokens", "--keytab"] {
        assert!(why.contains(said), "{said:?} in the diagnostics: {why}\n{master_log}");
    }
    eprintln!("the failed renewal, as YARN reports it: {why}");
}
