//! Exactly-once Kafka output (issue 34): with `sink.guarantee = "exactly_once"` each task's
//! records, dead letters and the group's offset go in one Kafka transaction. A
//! `read_committed` consumer that is not the project's (confluent-kafka, librdkafka through
//! Python) sees every input offset exactly once in the output, and every bad record once in
//! the dead-letter topic, after: a driver that died between its tasks' commits and its own
//! commit log (the batch is run again: its tasks find their ranges committed and write
//! nothing); an executor SIGKILLed while the query runs; the driver and its executors
//! SIGKILLed mid-batch, twice; the broker killed and restarted mid-batch. And an attempt held
//! (SIGSTOP) inside its commit past its deadline cannot commit once it is resumed; a new
//! checkpoint on the same group embeds everything again.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// One (partition, offset) of each of `texts` (text `n` at partition `n % 2`, offset `n / 2`)
/// whose emptiness is `bad`, each seen once.
fn once_each(texts: &[String], bad: bool) -> BTreeMap<(i32, i64), usize> {
    (0..texts.len()).filter(|&n| texts[n].is_empty() == bad).map(|n| (((n % 2) as i32, (n / 2) as i64), 1)).collect()
}

/// The newest batch in the offsets log (the write-ahead log) and in the commits log.
fn newest(job: &Job, log: &str) -> Option<u64> {
    job.logged_batches(log).last().copied()
}

/// Starts the query on two executors and waits until a batch that this driver planned is in
/// flight: in the offsets log, not in the commits log.
fn start_until_mid_batch(job: &Job) -> Running {
    let after = newest(job, "offsets");
    let mut q = Running::start(job, 2);
    q.wait_until("a batch in flight", Duration::from_secs(120), |_| {
        let planned = newest(job, "offsets");
        planned > after && planned > newest(job, "commits")
    });
    q
}

#[test]
fn every_record_once_for_read_committed_consumers_after_crashes_kills_and_a_broker_restart() {
    let mut broker = Broker::start();
    broker.create_topic("events", 2);
    // Every tenth record is empty: a dead letter.
    let texts: Vec<String> =
        texts(280, 51).into_iter().enumerate().map(|(i, t)| if i % 10 == 3 { String::new() } else { t }).collect();
    broker.produce_texts("events", 2, 0, &texts[..160]);
    let job = Job::new(
        &broker,
        "eos",
        "subscribe = [\"events\"]\nmax_offsets_per_trigger = 20",
        "processing_time = \"100ms\"",
        "guarantee = \"exactly_once\"",
    )
    .with_batching(1, 1);
    let committed = |b: &Broker| b.try_committed("eos-group", "events", 2).unwrap_or_default();

    // 1. The driver dies after batch 1's tasks committed their transactions, before its own
    //    commit log: the next driver runs batch 1 again, and its tasks find their ranges
    //    committed in the group.
    let mut cmd = embedstream();
    cmd.args(["run", job.path.to_str().unwrap(), "--local", "1"]).env("EMBEDSTREAM_TEST_CRASH_AFTER_MANIFEST", "1");
    let out = run_to_end(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(86), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(job.logged_batches("commits"), vec![0], "batch 1's commit was not logged");

    // 2. A new driver goes on; one of its two executors is SIGKILLed while the query runs.
    let mut q = Running::start(&job, 2);
    q.wait_until("two registered executors", Duration::from_secs(60), |q| q.executor_pids().len() == 2);
    q.wait_until("batch 3 under way", Duration::from_secs(60), |_| committed(&broker).iter().sum::<i64>() >= 60);
    kill_hard(q.executor_pids()[0]);
    q.wait_until("all 160 records committed", Duration::from_secs(180), |_| committed(&broker) == vec![80, 80]);
    let log = q.log();
    q.stop();
    assert!(log.contains("the range was committed by an earlier attempt"), "batch 1 was found committed:\n{log}");

    // 3. Twice, the driver and both executors are SIGKILLed while a batch is in flight (in
    //    the offsets log, not in the commits log, which nothing changes after the kill).
    broker.produce_texts("events", 2, 160, &texts[160..]);
    for round in 0..2 {
        let q = start_until_mid_batch(&job);
        q.kill_all();
        assert!(newest(&job, "offsets") > newest(&job, "commits"), "round {round}: a batch was in flight");
    }

    // 4. The broker is killed and started again while a batch is in flight; the query goes on
    //    to the end of the input.
    let mut q = start_until_mid_batch(&job);
    broker.restart();
    q.wait_until("all 280 records committed", Duration::from_secs(240), |_| committed(&broker) == vec![140, 140]);
    let summary = q.stop();

    // A read_committed consumer: every good record once in the output, every bad one once in
    // the dead letters.
    let output = broker.committed_origins("eos-out", 2);
    let twice: Vec<_> = output.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "records written more than once: {twice:?} ({summary})");
    assert_eq!(output, once_each(&texts, false), "every good record once in eos-out");
    assert_eq!(broker.committed_origins("eos-dlq", 2), once_each(&texts, true), "every bad record once in eos-dlq");

    // Each batch's progress record gives its slowest transaction's begin and commit.
    let records = progress_records(&job);
    let with_rows: Vec<_> = records.iter().filter(|r| r["numInputRows"].as_u64() > Some(0)).collect();
    assert!(!with_rows.is_empty(), "progress records");
    for r in with_rows {
        let commit = &r["durationMs"]["transactionCommit"];
        assert!(commit.is_u64() && r["durationMs"]["transactionBegin"].is_u64(), "transaction phases: {r}");
        assert!(commit.as_u64() <= r["durationMs"]["triggerExecution"].as_u64(), "inside the batch: {r}");
    }
}

/// The state letter of `/proc/<pid>/stat` ('T' for a stopped process).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[test]
fn an_attempt_held_inside_its_commit_past_its_deadline_cannot_commit_when_resumed() {
    let broker = Broker::start();
    broker.create_topic("held", 2);
    let texts = texts(60, 52);
    broker.produce_texts("held", 2, 0, &texts);
    let job = Job::new(
        &broker,
        "held",
        "subscribe = [\"held\"]\nmax_offsets_per_trigger = 20",
        "processing_time = \"100ms\"",
        "guarantee = \"exactly_once\"\n[executors]\ntask_timeout = \"8s\"",
    );
    // The first attempt of batch 1's task of partition 0 stops its executor after sending the
    // group's offset to its transaction, before committing it.
    let mut q = Running::start_with_env(&job, 2, &[("EMBEDSTREAM_TEST_FREEZE_BEFORE_COMMIT", "1")]);
    q.wait_until("two registered executors", Duration::from_secs(60), |q| q.executor_pids().len() == 2);
    let mut held = None;
    q.wait_until("an executor held before its commit", Duration::from_secs(120), |q| {
        held = q.executor_pids().into_iter().find(|&pid| state(pid) == Some('T'));
        held.is_some()
    });
    let held = held.unwrap();
    // Past the deadline the driver runs the task again elsewhere; the query goes on to the end.
    q.wait_until("all 60 records committed", Duration::from_secs(180), |_| {
        broker.try_committed("held-group", "held", 2) == Some(vec![30, 30])
    });
    assert_eq!(state(held), Some('T'), "the held executor is still stopped");
    let resumed = std::process::Command::new("kill").args(["-CONT", &held.to_string()]).status().unwrap();
    assert!(resumed.success(), "kill -CONT {held}: {resumed}");
    // Resumed, the held attempt commits: the broker refuses it (its producer was fenced by the
    // retry's, or its transaction timed out).
    let refused = |log: &str| {
        let (_, after) = log.split_once("EMBEDSTREAM_TEST_FREEZE_BEFORE_COMMIT: resumed; committing")?;
        after.lines().find(|l| l.contains("Failed to end transaction") && l.contains("fenced")).map(String::from)
    };
    q.wait_until("the held attempt's commit refused", Duration::from_secs(60), |q| refused(&q.log()).is_some());
    let summary = q.stop();

    let output = broker.committed_origins("held-out", 2);
    assert_eq!(output, once_each(&texts, false), "every record once in held-out ({summary})");

    // A new checkpoint with the same group (the same name) reading from the earliest offsets
    // embeds everything again: the group's offsets name the other query, so its tasks do not
    // take their ranges for committed.
    let again = Job::new(
        &broker,
        "held",
        "subscribe = [\"held\"]\nmax_offsets_per_trigger = 20",
        "available_now = true",
        "guarantee = \"exactly_once\"",
    );
    run_job(&again, 1);
    let twice: BTreeMap<(i32, i64), usize> = once_each(&texts, false).into_keys().map(|o| (o, 2)).collect();
    assert_eq!(broker.committed_origins("held-out", 2), twice, "each record once more in held-out");
}

/// Issue 35, item 2, for Kafka output: each key's last input lives in the query's compacted
/// state topic, written in the task's transaction. A catalog of 2,000 products embedded, the
/// driver and both executors SIGKILLed, the catalog sent again with 80 % price-only changes:
/// the second pass computes exactly the 400 changed titles and writes only their records (a
/// read_committed reader sees each unchanged product once, each changed one twice, the newer
/// with its new title's reference vector); a tombstone forgets its key, so the key's next
/// record is embedded even though its title is the one embedded before.
#[test]
fn unchanged_inputs_cost_no_inference_and_a_tombstone_forgets_its_key() {
    let broker = Broker::start();
    broker.create_topic("products", 2);
    let job = Job::new(
        &broker,
        "skipk",
        "subscribe = [\"products\"]\nmax_offsets_per_trigger = 600",
        "processing_time = \"200ms\"",
        &format!("guarantee = \"exactly_once\"\n{CATALOG_INPUT}"),
    )
    .edit_model(CATALOG_MODEL);

    first_pass_then_kill_all(&broker, &job);
    assert_eq!(broker.read_committed("skipk-out-state", 2).len(), 2000, "a fingerprint per key");

    let (second, titles) = catalog(2000, 1, 2);
    broker.produce("products", &second);
    // Then product 1 is deleted and comes back with the title it had.
    let again = second.iter().find(|r| r.1.as_deref() == Some(&b"sku-1"[..])).unwrap().clone();
    broker.produce("products", &[(again.0, again.1.clone(), None), again]);
    let mut q = Running::start(&job, 2);
    q.wait_until("the second pass committed", Duration::from_secs(240), |_| skipped_and_computed(&job).0 >= 4002);
    q.stop();
    assert_eq!(skipped_and_computed(&job), (4002, 1600, 2401), "the 400 changed titles and product 1 again");

    let mut by_key: BTreeMap<String, Vec<common::Record>> = BTreeMap::new();
    for r in broker.read_committed("skipk-out", 2) {
        by_key.entry(String::from_utf8(r.key.clone().unwrap()).unwrap()).or_default().push(r);
    }
    assert_eq!(by_key.len(), 2000);
    let changed: Vec<usize> = (0..2000).filter(|i| i % 5 == 0).collect();
    for i in 0..2000 {
        let want = if i % 5 == 0 || i == 1 { 2 } else { 1 };
        assert_eq!(by_key[&format!("sku-{i}")].len(), want, "sku-{i}'s output records");
    }
    let reference = common::reference::onnx_embeddings(&changed.iter().map(|&i| titles[i].clone()).collect::<Vec<_>>());
    for (&i, want) in changed.iter().zip(&reference) {
        let newest = by_key[&format!("sku-{i}")].iter().max_by_key(|r| r.origin().1).unwrap();
        let diff = common::reference::max_diff(&newest.vector(), want);
        assert!(diff < 1e-4, "sku-{i} holds its new title's vector: {diff}");
    }
}
