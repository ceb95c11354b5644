//! The Delta Lake sink (issue 32): a table whose exactly-once promise is in the Delta log, read
//! by readers that know nothing of embedstream (Spark with Delta Lake's jars, and `deltalake`
//! from PyPI): every record once
//! after an executor is killed in the middle of a batch, after the driver dies between a
//! batch's Delta commit and its own commit log, and after the driver and its executors are
//! SIGKILLed mid-batch (Spark reading before the restart sees whole batches only); files of failed attempts are in no Delta
//! commit and are deleted; the log is checkpointed; a second query on the table is refused
//! before its first batch, naming `sink.path` and the owner.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::delta::{read_with_deltalake, read_with_spark};
use common::table::file_of_a_batch_in_flight;
use common::*;

/// The batch ids the table's Delta log holds a transaction for (read from its JSON commits).
fn committed_batches(table: &Path) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(table.join("_delta_log")).into_iter().flatten().filter_map(Result::ok) {
        if !e.file_name().to_string_lossy().ends_with(".json") {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap_or_default().lines() {
            let Ok(action) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if let Some(v) = action["txn"]["version"].as_u64() {
                out.insert(v);
            }
        }
    }
    out
}

/// Every data file under the table (`part-*.parquet`), relative to it.
fn data_files(table: &Path) -> BTreeSet<String> {
    embedstream_core::manifest::data_files(table)
        .unwrap()
        .into_iter()
        .map(|f| f.strip_prefix(table).unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_delta_table_holds_every_record_once_for_spark_and_deltalake() {
    let broker = Broker::start();
    broker.create_topic("items", 2);
    let input = texts(160, 21);
    broker.produce_texts("items", 2, 0, &input);
    let dir = tempfile::tempdir().unwrap();
    let table: PathBuf = dir.path().join("embeddings");
    let job = Job::new(
        &broker,
        "dl",
        "subscribe = [\"items\"]\nmax_offsets_per_trigger = 20",
        "processing_time = \"100ms\"",
        "",
    )
    .with_batching(1, 1)
    .with_delta_sink(&table, "checkpoint_interval = 3");

    // 1. The driver dies after batch 1's Delta commit, before its own commit log: the next
    //    driver finds batch 1 in the table's transactions and does not write it again.
    let mut cmd = embedstream();
    cmd.args(["run", job.path.to_str().unwrap(), "--local", "1"]).env("EMBEDSTREAM_TEST_CRASH_AFTER_MANIFEST", "1");
    let out = run_to_end(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(86), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(committed_batches(&table), BTreeSet::from([0, 1]));
    assert_eq!(job.logged_batches("commits"), vec![0], "batch 1's commit was not logged");
    let files_of_1: BTreeSet<String> =
        data_files(&table).into_iter().filter(|f| f.contains("part-0000000001-")).collect();
    // As if that driver had died before deleting a failed attempt's file of batch 1, too.
    let kept = table.join(files_of_1.first().unwrap());
    let orphan = kept.with_file_name("part-0000000001-99-9.parquet");
    std::fs::copy(&kept, &orphan).unwrap();

    // 2. A new driver goes on; an executor is killed while it writes a batch.
    let mut q = Running::start(&job, 2);
    q.wait_until("two registered executors", Duration::from_secs(60), |q| q.executor_pids().len() == 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (batch, victim) = loop {
        let done = committed_batches(&table);
        if let Some(found) = file_of_a_batch_in_flight(&table, |b| done.contains(&b)) {
            break found;
        }
        assert!(Instant::now() < deadline, "no batch was seen being written:\n{}", q.log());
        std::thread::sleep(Duration::from_millis(5));
    };
    kill_hard(pid_of_executor(&victim, &q.executor_pids()));
    q.wait_until("all 160 records committed", Duration::from_secs(120), |_| {
        broker.committed("dl-group", "items", 2) == vec![80, 80]
    });
    let log = q.log();
    let summary = q.stop();
    assert!(log.contains("batch already in the Delta table's log; not run again"), "{log}");
    assert!(summary["task_retries"].as_u64().unwrap() >= 1, "the killed executor's task was retried: {summary}");
    let now_of_1: BTreeSet<String> =
        data_files(&table).into_iter().filter(|f| f.contains("part-0000000001-")).collect();
    assert_eq!(now_of_1, files_of_1, "batch 1 was not written again");
    assert!(!orphan.exists(), "the failed attempt's file of batch 1 is deleted when the batch is found committed");

    // 3. More records; the driver and its executors are SIGKILLed while a batch is being
    //    written. Spark, reading before the restart, sees whole batches only: exactly the
    //    records up to the end offsets of the last batch in the Delta log, each once.
    let more = texts(80, 22);
    broker.produce_texts("items", 2, input.len(), &more);
    let input: Vec<String> = input.into_iter().chain(more).collect();
    let q = Running::start(&job, 2);
    let signal = |name: &str| Command::new("kill").args([name, &q.pid().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let in_flight = loop {
        assert!(Instant::now() < deadline, "no batch was seen being written:\n{}", q.log());
        let done = committed_batches(&table);
        let Some((b, _)) = file_of_a_batch_in_flight(&table, |b| done.contains(&b)) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        // The driver is stopped first, so that it cannot commit batch b between this look
        // at the log and the kill.
        signal("-STOP");
        if !committed_batches(&table).contains(&b) {
            break b;
        }
        signal("-CONT");
    };
    q.kill_all();
    let last = *committed_batches(&table).last().unwrap();
    assert!(last < in_flight, "batch {in_flight} was being written, {last} the last in the log");
    let end = read_checkpoint_file(&job.checkpoint().join(format!("offsets/{last}")));
    let end: Vec<i64> = (0..2).map(|p| end["end"]["items"][p.to_string()].as_i64().unwrap()).collect();
    let want: Vec<serde_json::Value> = (0..2usize)
        .flat_map(|p| (0..end[p] as usize).map(move |o| (p, o)))
        .map(|(p, o)| serde_json::json!([p, o, input[2 * o + p]]))
        .collect();
    let before = read_with_spark(&table);
    assert_eq!(
        before["rows"].as_array().unwrap().len(),
        want.len(),
        "Spark before the restart: batches 0..={last} whole, batch {in_flight} not at all ({end:?})"
    );
    assert_eq!(before["rows"].as_array().unwrap(), &want, "Spark before the restart");
    eprintln!("Spark before the restart: {} rows, batches 0..={last}; batch {in_flight} was in flight", want.len());

    // 4. A restart finishes the batch that was in flight and the rest.
    let mut q = Running::start(&job, 2);
    q.wait_until("all 240 records committed", Duration::from_secs(120), |_| {
        broker.committed("dl-group", "items", 2) == vec![120, 120]
    });
    q.stop();

    // An independent reader: each input once, with its text and a unit vector.
    let got = read_with_deltalake(&table);
    let rows = got["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 240, "rows a Delta reader sees (batch {batch} was being written by {victim} when killed)");
    for (n, text) in input.iter().enumerate() {
        let (p, o) = ((n % 2) as i64, (n / 2) as i64);
        let row = rows.iter().find(|r| r[0] == p && r[1] == o).unwrap_or_else(|| panic!("input {p}-{o} is missing"));
        assert_eq!(row[2], text.as_str());
    }
    let origins: BTreeSet<(i64, i64)> = rows.iter().map(|r| (r[0].as_i64().unwrap(), r[1].as_i64().unwrap())).collect();
    assert_eq!(origins.len(), 240, "no record twice");
    assert!(got["norms"].as_array().unwrap().iter().all(|n| (n.as_f64().unwrap() - 1.0).abs() < 1e-3));
    assert_eq!(got["partition_columns"], serde_json::json!(["dt"]));
    assert_eq!(got["dt"].as_array().unwrap().len(), 1, "one day of records: {}", got["dt"]);
    // The table belongs to the query, whose transaction is at its last committed batch.
    let owner = got["owner"].as_str().expect("the table names its query");
    assert!(!owner.is_empty());
    assert_eq!(got["txn"].as_u64(), job.logged_batches("commits").last().copied(), "{got}");
    // Files of failed attempts are in no commit, and gone; the log has checkpoints.
    let referenced: BTreeSet<String> =
        got["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
    assert_eq!(data_files(&table), referenced, "files on disk that no Delta commit adds");
    assert!(log.contains("deleted files of failed attempts"), "{log}");
    let checkpoints = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".checkpoint.parquet"))
        .count();
    assert!(checkpoints >= 2, "a checkpoint every 3 commits of {}: {checkpoints}", got["version"]);

    // Spark, with Delta Lake's own reader, sees the same rows, once each.
    let spark = read_with_spark(&table);
    assert_eq!(spark["rows"], got["rows"], "Spark and deltalake read the same rows");
    eprintln!("Spark after the restart: {} rows of 240, each once", spark["rows"].as_array().unwrap().len());
    assert_eq!(spark["dims"], serde_json::json!([384]));
    let types = &spark["types"];
    assert_eq!(
        (&types["embedding"], &types["kafka_timestamp"], &types["dt"]),
        (&serde_json::json!("array<float>"), &serde_json::json!("timestamp"), &serde_json::json!("string"))
    );

    // 3. Another query (a new checkpoint) on the same table: refused before its first batch,
    //    naming sink.path and the owner.
    let other =
        Job::new(&broker, "dl2", "subscribe = [\"items\"]\nmax_offsets_per_trigger = 20", "available_now = true", "")
            .with_delta_sink(&table, "");
    let files_before = data_files(&table);
    let mut cmd = embedstream();
    cmd.args(["run", other.path.to_str().unwrap(), "--local", "1"]);
    let out = run_to_end(cmd, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("sink.path") && stderr.contains(owner), "{stderr}");
    assert_eq!(data_files(&table), files_before, "nothing written");
    assert!(broker.committed("dl2-group", "items", 2).iter().all(|&o| o <= 0), "no offsets committed");

    // Every row says its model's version, as `validate` computes it; the query resumed with
    // another version (a shorter max_seq_len) is refused before its first batch, naming the
    // column and both versions.
    let version_a = validated_version(&job);
    assert_eq!(got["model_versions"], serde_json::json!([version_a]), "deltalake reads each row's version");
    assert_eq!(types["model_version"], "string");
    broker.produce_texts("items", 2, input.len(), &texts(4, 23));
    assert_another_version_is_refused(&job, &version_a);
    assert_eq!(data_files(&table), files_before, "nothing written");
}
