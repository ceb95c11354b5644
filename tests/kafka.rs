//! Apache Kafka as users run it: a query through an authenticated listener (SASL/SCRAM, users
//! made with Kafka's own kafka-configs) with its password in a secret file and a variable, a wrong
//! password refused before anything is written, Kafka's own kafka-consumer-groups reading the
//! query's position, and input written in transactions, committed and aborted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

const PASSWORD: &str = "alice-Sc7am-pa55";

/// A SASL_PLAINTEXT listener beside PLAINTEXT, taking SCRAM-SHA-512.
const SCRAM: &str = "sasl.enabled.mechanisms=SCRAM-SHA-512\n\
    listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n";

fn scram_properties(password: &str) -> String {
    format!(
        "\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"alice\"\n\"sasl.password\" = {password}\n"
    )
}

/// The offset gaps of every batch, from the driver's "batch committed" lines.
fn offset_gaps(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("batch committed"))
        .filter_map(|l| l.split("offset_gaps=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Every file under `dir`, read as bytes and searched for `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle)) {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn a_query_reads_and_writes_through_a_sasl_scram_listener_and_a_wrong_password_stops_it_first() {
    let broker = Broker::start_with(&["SASL_PLAINTEXT"], SCRAM);
    broker.add_scram_user("alice", PASSWORD);
    broker.create_topic("secure", 2);
    broker.produce_texts("secure", 2, 0, &texts(40, 3));
    let sasl = broker.listener("SASL_PLAINTEXT").to_string();

    // The source's password from a file, the sink's (the same user) from a variable.
    let secrets = tempfile::tempdir().unwrap();
    let pass = secrets.path().join("kafka.pass");
    std::fs::write(&pass, format!("{PASSWORD}\n")).unwrap();
    let source = format!("[source.kafka]\n{}", scram_properties(&format!("{{ file = \"{}\" }}", pass.display())));
    let sink = format!(
        "bootstrap_servers = \"{sasl}\"\n[sink.kafka]\n{}",
        scram_properties("{ env = \"EMBEDSTREAM_TEST_KAFKA_PASSWORD\" }")
    );
    let job =
        Job::new(&broker, "secure", &format!("subscribe = [\"secure\"]\n{source}"), "processing_time = \"1s\"", &sink)
            .with_bootstrap(&sasl);

    let mut validate = embedstream();
    validate.args(["validate", job.path.to_str().unwrap()]).env("EMBEDSTREAM_TEST_KAFKA_PASSWORD", PASSWORD);
    let out = run_to_end(validate, TIMEOUT);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("EMBEDSTREAM_TEST_KAFKA_PASSWORD") && !printed.contains(PASSWORD), "{printed}");

    let mut query = Running::start_with_env(&job, 1, &[("EMBEDSTREAM_TEST_KAFKA_PASSWORD", PASSWORD)]);
    query.wait_until("every record committed to the group", TIMEOUT, |_| {
        broker.committed("secure-group", "secure", 2) == vec![20, 20]
    });
    // The executors got the secrets from the driver: not in their argv, nor in their environment.
    let pids = query.executor_pids();
    assert!(!pids.is_empty(), "{}", query.log());
    for pid in pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let (environ, cmdline) = (String::from_utf8_lossy(&environ), String::from_utf8_lossy(&cmdline));
        assert!(!environ.contains(PASSWORD) && !environ.contains("EMBEDSTREAM_TEST_KAFKA_PASSWORD"), "{environ}");
        assert!(!cmdline.contains(PASSWORD), "{cmdline}");
    }
    let log = query.log();
    let summary = query.stop();
    assert_eq!(summary["embeddings"], 40);
    let seen: BTreeSet<(i32, i64)> = broker.read_all("secure-out", 2).iter().map(Record::origin).collect();
    assert_eq!(seen, (0..2).flat_map(|p| (0..20).map(move |o| (p, o))).collect(), "each input once");
    assert!(!log.contains(PASSWORD), "the password is in the log");
    assert_eq!(files_containing(&job.checkpoint(), PASSWORD), Vec::<std::path::PathBuf>::new());
    let mut progress = embedstream();
    progress.args(["progress", job.path.to_str().unwrap(), "--json"]);
    let out = run_to_end(progress, TIMEOUT);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains(PASSWORD));

    // A wrong password: `run` stops before the first batch, naming the listener and the cause,
    // and writes nothing.
    let wrong = secrets.path().join("wrong.pass");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let source = format!("[source.kafka]\n{}", scram_properties(&format!("{{ file = \"{}\" }}", wrong.display())));
    let job = Job::new(&broker, "refused", &format!("subscribe = [\"secure\"]\n{source}"), "available_now = true", "")
        .with_bootstrap(&sasl);
    let stderr = run_refused(&job);
    assert!(stderr.contains(&sasl) && stderr.contains("SASL_PLAINTEXT"), "names the listener: {stderr}");
    assert!(
        stderr.contains("SASL authentication error") && stderr.contains("invalid credentials"),
        "the cause: {stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
    assert!(!broker.topic_exists("refused-out"), "nothing was written");
    assert!(job.logged_batches("offsets").is_empty(), "no batch was planned");
}

#[test]
fn kafka_consumer_groups_shows_the_query_and_a_reset_of_its_group_does_not_move_it() {
    let broker = Broker::start();
    broker.create_topic("groups", 2);
    broker.produce_texts("groups", 2, 0, &texts(20, 4));
    let job = Job::new(&broker, "groups", "subscribe = [\"groups\"]", "available_now = true", "");
    assert_eq!(run_job(&job, 1)["embeddings"], 20);

    let describe = || broker.consumer_group("groups-group", "groups");
    let (rows, out) = describe();
    assert_eq!(rows, vec![(0, 10, 10, 0), (1, 10, 10, 0)], "position and lag per partition:\n{out}");

    broker.produce_texts("groups", 2, 20, &texts(6, 5));
    let (rows, out) = describe();
    assert_eq!(rows, vec![(0, 10, 13, 3), (1, 10, 13, 3)], "the new records show as lag:\n{out}");

    // Kafka's reset moves the group, not the query: the checkpoint decides where it goes on.
    let out = broker.tool(
        "kafka-consumer-groups.sh",
        &["--reset-offsets", "--group", "groups-group", "--topic", "groups", "--to-earliest", "--execute"],
    );
    assert_eq!(describe().0, vec![(0, 0, 13, 13), (1, 0, 13, 13)], "the reset took:\n{out}");
    assert_eq!(run_job(&job, 1)["embeddings"], 6, "only the new records");
    let seen: Vec<(i32, i64)> = broker.read_all("groups-out", 2).iter().map(Record::origin).collect();
    let unique: BTreeSet<_> = seen.iter().copied().collect();
    assert_eq!((seen.len(), unique.len()), (26, 26), "each input once");
    assert_eq!(describe().0, vec![(0, 13, 13, 0), (1, 13, 13, 0)], "the query committed its position again");
}

#[test]
fn aborted_transactions_are_not_embedded_and_their_markers_count_as_gaps() {
    let broker = Broker::start();
    broker.create_topic("txn", 1);
    // Five transactions of four records, the second and the fourth aborted.
    let mut want = BTreeSet::new();
    for t in 0..5 {
        let commit = t % 2 == 0;
        let values: Vec<String> = (0..4)
            .map(|i| format!("{} transaction {t} record {i}", ["aborted", "committed"][commit as usize]))
            .collect();
        broker.produce_transaction("txn", &values, commit);
        if commit {
            want.extend(values);
        }
    }
    // 20 records and 5 markers: the log ends at 25.
    assert_eq!(broker.high_watermarks("txn", 1), vec![25]);
    // A task that waited for an offset that holds no record would time out (after Job::new's
    // poll_timeout) and be retried.
    let job = Job::new(&broker, "txn", "subscribe = [\"txn\"]", "available_now = true", "");
    let (summary, stderr) = run_logged(&job);
    assert_eq!((summary["embeddings"].as_u64(), summary["task_retries"].as_u64()), (Some(12), Some(0)), "{stderr}");

    let inputs = broker.read_committed("txn", 1);
    let by_offset: std::collections::HashMap<i64, String> =
        inputs.iter().map(|r| (r.offset, String::from_utf8(r.value.clone().unwrap()).unwrap())).collect();
    let embedded: BTreeSet<String> =
        broker.read_all("txn-out", 1).iter().map(|r| by_offset[&r.origin().1].clone()).collect();
    assert_eq!(embedded, want, "every committed record once, no aborted one");
    // 8 aborted records and 5 markers hold no committed record: 13 gaps.
    let gaps = offset_gaps(&stderr);
    assert_eq!(gaps, 13, "{stderr}");
    assert_eq!(broker.committed("txn-group", "txn", 1), vec![25], "the query's position is the log's end");
}

#[test]
fn offsets_deleted_before_they_are_read_stop_the_query_or_are_counted_as_lost() {
    let broker = Broker::start();
    broker.create_topic("ret", 1);
    broker.produce_texts("ret", 1, 0, &texts(30, 6));
    let job = Job::new(&broker, "ret", "subscribe = [\"ret\"]", "available_now = true", "");

    // Batch 0 (offsets 0..30) is planned and logged, then the driver dies before running it,
    // and Kafka's kafka-delete-records removes offsets 0..10 while it is down.
    let mut cmd = embedstream();
    cmd.args(["run", job.path.to_str().unwrap(), "--local", "1"]).env("EMBEDSTREAM_TEST_CRASH_AFTER_WAL", "0");
    let out = run_to_end(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(86), "{}", String::from_utf8_lossy(&out.stderr));
    let delete = |offset: i64| {
        let file = job.dir.path().join("delete.json");
        let json = format!(r#"{{"version":1,"partitions":[{{"topic":"ret","partition":0,"offset":{offset}}}]}}"#);
        std::fs::write(&file, json).unwrap();
        broker.tool("kafka-delete-records.sh", &["--offset-json-file", file.to_str().unwrap()]);
    };
    delete(10);

    // fail_on_data_loss = true (the default): the restarted driver re-runs the logged batch, its
    // task finds the deletion, and the query stops naming the partition and the offsets.
    let stderr = run_refused(&job);
    // (The task's words, not the planner's: the logged batch is re-run as it was planned.)
    assert!(
        stderr.contains("ret-0: offsets 0..10 were deleted (retention or delete-records) before they were read"),
        "names what was lost: {stderr}"
    );
    assert!(!broker.topic_exists("ret-out") || broker.read_all("ret-out", 1).is_empty(), "nothing written");
    assert_eq!(job.logged_batches("commits"), Vec::<u64>::new());
    assert_eq!(broker.committed("ret-group", "ret", 1), vec![-1]);

    // fail_on_data_loss = false: the same batch goes on from the log's new start, and the lost
    // offsets are counted in its progress record.
    let spec = std::fs::read_to_string(&job.path).unwrap();
    std::fs::write(&job.path, spec.replace("[source]\n", "[source]\nfail_on_data_loss = false\n")).unwrap();
    assert_eq!(run_job(&job, 1)["embeddings"], 20);
    let origins: Vec<i64> = broker.read_all("ret-out", 1).iter().map(|r| r.origin().1).collect();
    assert_eq!(origins.iter().copied().collect::<BTreeSet<_>>(), (10..30).collect(), "{origins:?}");
    assert_eq!(origins.len(), 20, "each surviving input once");
    let records = progress_records(&job);
    assert_eq!(records.last().unwrap()["lostOffsets"], 10, "{records:?}");

    // Deleted before the next batch is planned: the plan starts at the new log start.
    broker.produce_texts("ret", 1, 30, &texts(10, 7));
    delete(35);
    assert_eq!(run_job(&job, 1)["embeddings"], 5);
    let records = progress_records(&job);
    assert_eq!(records.last().unwrap()["lostOffsets"], 5, "{records:?}");
    let origins: BTreeSet<i64> = broker.read_all("ret-out", 1).iter().map(|r| r.origin().1).collect();
    assert_eq!(origins, (10..30).chain(35..40).collect());
    assert_eq!(broker.committed("ret-group", "ret", 1), vec![40]);
}

#[test]
fn a_query_through_sasl_ssl_trusts_the_ca_it_is_given_and_an_untrusted_certificate_stops_it_first() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, server) = tls::certificates(certs.path(), "embedstream-test-ca");
    let (other_ca, _) = tls::certificates(certs.path(), "another-ca");
    let tls = format!(
        "sasl.enabled.mechanisms=SCRAM-SHA-512\n\
         listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
         ssl.keystore.type=PEM\nssl.keystore.location={}\n",
        server.display()
    );
    let broker = Broker::start_with(&["SASL_SSL"], &tls);
    broker.add_scram_user_on("SASL_SSL", "alice", PASSWORD, &[("ssl.ca.location", ca.to_str().unwrap())]);
    broker.create_topic("tls", 2);
    broker.produce_texts("tls", 2, 0, &texts(16, 8));
    let listener = broker.listener("SASL_SSL").to_string();
    let pass = certs.path().join("kafka.pass");
    std::fs::write(&pass, PASSWORD).unwrap();
    let source = |ca: &std::path::Path| {
        let props =
            scram_properties(&format!("{{ file = \"{}\" }}", pass.display())).replace("SASL_PLAINTEXT", "SASL_SSL");
        format!("subscribe = [\"tls\"]\n[source.kafka]\n{props}\"ssl.ca.location\" = \"{}\"\n", ca.display())
    };

    let job = Job::new(&broker, "tls", &source(&ca), "available_now = true", "").with_bootstrap(&listener);
    assert_eq!(run_job(&job, 1)["embeddings"], 16);
    let seen: BTreeSet<(i32, i64)> = broker.read_all("tls-out", 2).iter().map(Record::origin).collect();
    assert_eq!(seen, (0..2).flat_map(|p| (0..8).map(move |o| (p, o))).collect());

    // The broker's certificate is not signed by the CA this job trusts.
    let job = Job::new(&broker, "untrusted", &source(&other_ca), "available_now = true", "").with_bootstrap(&listener);
    let stderr = run_refused(&job);
    assert!(stderr.contains(&listener) && stderr.contains("SASL_SSL"), "names the listener: {stderr}");
    assert!(stderr.contains("certificate verify failed"), "names the cause: {stderr}");
    assert!(!broker.topic_exists("untrusted-out"), "nothing was written");
    assert!(job.logged_batches("offsets").is_empty(), "no batch was planned");
}

#[test]
fn a_broker_restart_while_the_query_runs_loses_nothing_and_added_partitions_are_read_from_their_start() {
    let mut broker = Broker::start();
    broker.create_topic("grow", 2);
    broker.produce_texts("grow", 2, 0, &texts(40, 9));
    let job = Job::new(
        &broker,
        "grow",
        "subscribe = [\"grow\"]\nmax_offsets_per_trigger = 10",
        "processing_time = \"1s\"",
        "",
    );
    let mut query = Running::start(&job, 1);
    query.wait_until("a first batch", TIMEOUT, |_| broker.committed("grow-group", "grow", 2).iter().sum::<i64>() > 0);

    // The broker is killed and comes back while batches of the backlog are planned and run.
    broker.restart();
    broker.produce_texts("grow", 2, 40, &texts(20, 10));
    query.wait_until("the backlog after the restart", Duration::from_secs(180), |_| {
        broker.committed("grow-group", "grow", 2) == vec![30, 30]
    });

    // A third partition, added while the query runs, is read from its first offset.
    let out = broker.tool("kafka-topics.sh", &["--alter", "--topic", "grow", "--partitions", "3"]);
    broker.produce(
        "grow",
        &(0..5)
            .map(|i| (2, Some(format!("new-{i}").into_bytes()), Some(format!("added partition {i}").into_bytes())))
            .collect::<Vec<_>>(),
    );
    query.wait_until("the added partition", TIMEOUT, |_| broker.committed("grow-group", "grow", 3) == vec![30, 30, 5]);
    let summary = query.stop();
    // The output topic keeps the two partitions it was made with.
    let seen: BTreeSet<(i32, i64)> = broker.read_all("grow-out", 2).iter().map(Record::origin).collect();
    let want: BTreeSet<(i32, i64)> =
        (0..2).flat_map(|p| (0..30).map(move |o| (p, o))).chain((0..5).map(|o| (2, o))).collect();
    assert_eq!(seen, want, "every input embedded ({out}) {summary}");
}

#[test]
fn a_compacted_topic_with_holes_embeds_each_surviving_record_once_and_counts_the_holes_as_gaps() {
    // The log cleaner looks for work every 200 ms instead of every 15 s.
    let broker = Broker::start_with(&[], "log.cleaner.backoff.ms=200\n");
    let topic_config = [
        "cleanup.policy=compact",
        "segment.ms=100",
        "min.cleanable.dirty.ratio=0.01",
        "min.compaction.lag.ms=0",
        "delete.retention.ms=0",
    ];
    let mut args = vec!["--create", "--topic", "compacted", "--partitions", "1", "--replication-factor", "1"];
    for c in &topic_config {
        args.extend(["--config", c]);
    }
    broker.tool("kafka-topics.sh", &args);
    // Ten keys written four times, a round at a time; the pause between rounds outlasts
    // segment.ms, so each round's first record rolls a new segment (this shapes the input's
    // timing, nothing waits on it). A last record closes the fourth round's segment, so the
    // cleaner may clean them all.
    for round in 0..4 {
        let records: Vec<RawRecord> = (0..10)
            .map(|k| {
                (0, Some(format!("key-{k}").into_bytes()), Some(format!("product {k}, version {round}").into_bytes()))
            })
            .collect();
        broker.produce("compacted", &records);
        std::thread::sleep(Duration::from_millis(150));
    }
    broker.produce("compacted", &[(0, Some(b"last".to_vec()), Some(b"the record that rolls the segment".to_vec()))]);
    let high = broker.high_watermarks("compacted", 1)[0];
    assert_eq!(high, 41);
    // Wait for the cleaner: the outcome the test needs is a log with holes.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let survivors = loop {
        let survivors = broker.read_committed("compacted", 1);
        if survivors.len() < 41 {
            break survivors;
        }
        assert!(std::time::Instant::now() < deadline, "the log cleaner never compacted the topic");
        std::thread::sleep(Duration::from_millis(200));
    };

    let job = Job::new(&broker, "compacted", "subscribe = [\"compacted\"]", "available_now = true", "");
    let (summary, stderr) = run_logged(&job);
    // The cleaner may have gone on after the survivors were read: count what the query saw.
    let embedded: Vec<i64> = broker.read_all("compacted-out", 1).iter().map(|r| r.origin().1).collect();
    let unique: BTreeSet<i64> = embedded.iter().copied().collect();
    assert_eq!(unique.len(), embedded.len(), "each surviving record once");
    let surviving: BTreeSet<i64> = survivors.iter().map(|r| r.offset).collect();
    assert!(unique.is_subset(&surviving), "only records that survived: {unique:?} of {surviving:?}");
    assert!(unique.contains(&40), "the newest record is never compacted away");
    assert_eq!(summary["embeddings"].as_u64(), Some(embedded.len() as u64));
    assert_eq!(summary["task_retries"].as_u64(), Some(0), "{stderr}");
    let gaps = offset_gaps(&stderr);
    assert_eq!(gaps, high as u64 - embedded.len() as u64, "the holes are counted as gaps: {stderr}");
    assert_eq!(broker.committed("compacted-group", "compacted", 1), vec![high]);
}

#[test]
fn in_a_three_broker_cluster_a_leader_killed_mid_query_loses_nothing_and_outputs_have_three_replicas() {
    let mut cluster = KafkaCluster::start(3);
    let kafka = cluster.client();
    kafka.create_topic("replicated", 2);
    kafka.produce_texts("replicated", 2, 0, &texts(60, 11));
    // Two queries read the topic: one at least once, one exactly once (issue 34).
    let job = |name: &str, rest: &str| {
        let source = "subscribe = [\"replicated\"]\nmax_offsets_per_trigger = 10";
        Job::new(&kafka, name, source, "processing_time = \"1s\"", rest)
    };
    let jobs = [job("replicated", ""), job("replicated-eos", "guarantee = \"exactly_once\"")];
    let committed = |name: &str| kafka.try_committed(&format!("{name}-group"), "replicated", 2);
    let mut queries: Vec<Running> = jobs.iter().map(|j| Running::start(j, 1)).collect();
    for (q, name) in queries.iter_mut().zip(["replicated", "replicated-eos"]) {
        q.wait_until("a first batch", TIMEOUT, |_| committed(name).is_some_and(|c| c.iter().sum::<i64>() > 0));
    }

    // The leader of partition 0 is killed while batches of the backlog run; more input arrives
    // through the two brokers left.
    let leader = cluster.leader("replicated", 0);
    cluster.kill(leader);
    kafka.produce_texts("replicated", 2, 60, &texts(20, 12));
    let mut summaries = Vec::new();
    for (mut q, name) in queries.into_iter().zip(["replicated", "replicated-eos"]) {
        q.wait_until("every record after the leader's death", Duration::from_secs(240), |_| {
            committed(name) == Some(vec![40, 40])
        });
        summaries.push(q.stop());
    }
    assert_ne!(cluster.leader("replicated", 0), leader, "the partition has a new leader");
    let every: BTreeSet<(i32, i64)> = (0..2).flat_map(|p| (0..40).map(move |o| (p, o))).collect();
    let seen: BTreeSet<(i32, i64)> = kafka.read_all("replicated-out", 2).iter().map(Record::origin).collect();
    assert_eq!(seen, every, "every input at least once: {:?}", summaries[0]);
    // Exactly once, for a read_committed consumer that is not the project's.
    let once: BTreeMap<(i32, i64), usize> = every.iter().map(|&o| (o, 1)).collect();
    assert_eq!(kafka.committed_origins("replicated-eos-out", 2), once, "every input once: {:?}", summaries[1]);

    // The output topics the driver made have the cluster's replication factor, not 1.
    for topic in ["replicated-out", "replicated-dlq", "replicated-eos-out"] {
        let out = kafka.tool("kafka-topics.sh", &["--describe", "--topic", topic]);
        assert!(out.contains("ReplicationFactor: 3"), "{topic}:\n{out}");
    }
}

#[test]
fn a_query_authenticates_with_kerberos_against_a_real_kdc_and_an_unknown_principal_stops_it_first() {
    let kdc = kdc::Kdc::start();
    let client_keytab = kdc.add_principal("embedstream");
    let broker = Broker::start_kerberized(&kdc);
    broker.create_topic("kerberos", 2);
    broker.produce_texts("kerberos", 2, 0, &texts(12, 13));
    let listener = broker.listener("SASL_PLAINTEXT").to_string();
    let work = tempfile::tempdir().unwrap();
    let run = |name: &str, principal: &str, keytab: &std::path::Path| {
        let source = format!(
            "subscribe = [\"kerberos\"]\n[source.kafka]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
             \"sasl.mechanism\" = \"GSSAPI\"\n\"sasl.kerberos.service.name\" = \"kafka\"\n\
             \"sasl.kerberos.principal\" = \"{principal}@{}\"\n\"sasl.kerberos.keytab\" = \"{}\"\n",
            kdc::REALM,
            keytab.display()
        );
        let job = Job::new(&broker, name, &source, "available_now = true", "").with_bootstrap(&listener);
        let mut cmd = embedstream();
        // librdkafka runs kinit with the keytab into this ticket cache.
        cmd.args(["run", job.path.to_str().unwrap(), "--local", "1"])
            .env("KRB5_CONFIG", kdc.krb5_conf())
            .env("KRB5CCNAME", format!("FILE:{}", work.path().join(format!("{name}.cc")).display()));
        (run_to_end(cmd, Duration::from_secs(180)), job)
    };

    let (out, _job) = run("kerberos", "embedstream", &client_keytab);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["embeddings"], 12, "{stderr}");
    let seen: BTreeSet<(i32, i64)> = broker.read_all("kerberos-out", 2).iter().map(Record::origin).collect();
    assert_eq!(seen, (0..2).flat_map(|p| (0..6).map(move |o| (p, o))).collect());

    // A principal the KDC no longer knows: refused before the first batch, nothing written.
    let stranger = kdc.add_principal("stranger");
    kdc.delete_principal("stranger");
    let (out, job) = run("stranger", "stranger", &stranger);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&listener) && stderr.contains("SASL_PLAINTEXT"), "names the listener: {stderr}");
    assert!(stderr.contains("GSSAPI Error"), "names the cause: {stderr}");
    assert!(!broker.topic_exists("stranger-out"), "nothing was written");
    assert!(job.logged_batches("offsets").is_empty(), "no batch was planned");
}

/// Issue 35, item 1: every output record says which version of its model made its vector
/// (`es.model_version`, as `validate` shows it); a topic whose last records another version
/// made is refused before the first batch, unless `on_model_change = "replace"`.
#[test]
fn every_vector_says_its_model_version_and_a_topic_of_another_version_is_refused() {
    let broker = Broker::start();
    broker.create_topic("versions", 1);
    broker.produce_texts("versions", 1, 0, &texts(6, 44));
    let job = |model: &str, rest: &str| {
        Job::new(&broker, "versions", "subscribe = [\"versions\"]", "available_now = true", rest).edit_model(model)
    };
    let first = job("batch_size = 16\nsort_window = 16", "");
    let version_a = validated_version(&first);
    run_job(&first, 1);
    let versions = || -> Vec<String> {
        broker.read_all("versions-out", 1).iter().map(|r| r.header("es.model_version").to_string()).collect()
    };
    assert_eq!(versions(), vec![version_a.clone(); 6]);

    let second = job("max_seq_len = 64", "");
    let version_b = validated_version(&second);
    assert_ne!(version_a, version_b);
    let refused = run_refused(&second);
    let named = format!("version {version_a}; this query's is {version_b}");
    assert!(
        refused.contains("sink.topic `versions-out` (partition 0) holds vectors of model") && refused.contains(&named),
        "{refused}"
    );
    assert_eq!(versions().len(), 6, "nothing written");

    run_job(&job("max_seq_len = 64", "on_model_change = \"replace\""), 1);
    let after = versions();
    assert_eq!(after[..6], vec![version_a; 6][..]);
    assert_eq!(after[6..], vec![version_b; 6][..], "the new version after the old");
}
