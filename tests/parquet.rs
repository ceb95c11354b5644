//! The Parquet sink: a table that holds every input record exactly once after an executor is
//! killed in the middle of a batch and the driver is restarted between batches, read back through
//! the manifests, and read again by an independent reader (pyarrow).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::table::{file_being_written, read_table};
use common::*;
use embedstream_core::manifest;

#[test]
fn the_table_holds_every_record_once_after_an_executor_kill_and_a_driver_restart() {
    let broker = Broker::start();
    broker.create_topic("docs", 2);
    let input = texts(160, 11);
    broker.produce_texts("docs", 2, 0, &input);
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("embeddings");
    // 40 records a batch, 20 a task, embedded and written one at a time: a task spans many writes.
    let job = Job::new(
        &broker,
        "pq",
        "subscribe = [\"docs\"]\nmax_offsets_per_trigger = 40",
        "processing_time = \"100ms\"",
        "",
    )
    .with_batching(1, 1)
    .with_parquet_sink(&table);

    // 1. The driver dies right after logging batch 1: batch 0 is in the table, batch 1 is not.
    let mut cmd = embedstream();
    cmd.args(["run", job.path.to_str().unwrap(), "--local", "1"]).env("EMBEDSTREAM_TEST_CRASH_AFTER_WAL", "1");
    let out = run_to_end(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(86), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(manifest::committed(&table, 0).unwrap().is_some());
    assert!(manifest::committed(&table, 1).unwrap().is_none());

    // 2. A new driver re-runs batch 1 and goes on; an executor is killed while it writes a batch.
    let mut q = Running::start(&job, 2);
    q.wait_until("two registered executors", Duration::from_secs(60), |q| q.executor_pids().len() == 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (batch, victim) = loop {
        if let Some(found) = file_being_written(&table) {
            break found;
        }
        assert!(Instant::now() < deadline, "no batch was seen being written:\n{}", q.log());
        std::thread::sleep(Duration::from_millis(5));
    };
    kill_hard(pid_of_executor(&victim, &q.executor_pids()));
    q.wait_until("all 160 records committed", Duration::from_secs(120), |_| {
        broker.committed("pq-group", "docs", 2) == vec![80, 80]
    });
    let log = q.log();
    let summary = q.stop();
    assert!(log.contains("deleted files of failed attempts"), "the killed attempt's file was cleaned up:\n{log}");
    assert!(summary["task_retries"].as_u64().unwrap() >= 1, "the killed executor's task was retried: {summary}");

    // Through the manifests: every input once, with its text and a unit vector.
    let (rows, count) = read_table(&table);
    assert_eq!(count, 160, "rows in the published files (batch {batch} was being written by {victim} when killed)");
    for (n, text) in input.iter().enumerate() {
        let (p, o) = ((n % 2) as i32, (n / 2) as i64);
        let (value, vector) = rows.get(&(p, o)).unwrap_or_else(|| panic!("input {p}-{o} is missing"));
        assert_eq!(value, text);
        assert_eq!(vector.len(), 384);
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{p}-{o}: norm {norm}");
    }
    // Nothing left behind by the killed attempt, and files sit in Hive-style date directories.
    let visible: Vec<PathBuf> = {
        let mut v = manifest::visible_files(&table).unwrap();
        v.sort();
        v
    };
    assert_eq!(manifest::data_files(&table).unwrap(), visible, "files outside the manifests remain");
    assert!(visible.iter().all(|f| f.parent().unwrap().file_name().unwrap().to_str().unwrap().starts_with("dt=")));

    // An independent reader: pyarrow reads the same files as plain Parquet.
    let python = cache().join("pyenv/bin/python");
    let script = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.ParquetDataset(sys.argv[1:]).read()
emb = t.schema.field("embedding").type
print(json.dumps({"rows": t.num_rows, "list_size": emb.list_size, "value_type": str(emb.value_type),
                  "origins": len(set(zip(t["partition"].to_pylist(), t["offset"].to_pylist()))),
                  "timestamp": str(t.schema.field("kafka_timestamp").type),
                  "codec": pq.ParquetFile(sys.argv[1]).metadata.row_group(0).column(0).compression}))
"#;
    let out = std::process::Command::new(&python).arg("-c").arg(script).args(&visible).output().expect("pyenv python");
    assert!(out.status.success(), "pyarrow: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["rows"], 160);
    assert_eq!(got["origins"], 160);
    assert_eq!(got["list_size"], 384);
    assert_eq!(got["value_type"], "float");
    assert_eq!(got["timestamp"], "timestamp[ms, tz=UTC]");
    assert_eq!(got["codec"], "ZSTD");
}

#[test]
fn a_batch_published_before_a_driver_crash_is_not_written_again() {
    let broker = Broker::start();
    broker.create_topic("notes", 1);
    let input = texts(60, 12);
    broker.produce_texts("notes", 1, 0, &input);
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("embeddings");
    let job =
        Job::new(&broker, "pqm", "subscribe = [\"notes\"]\nmax_offsets_per_trigger = 20", "available_now = true", "")
            .with_parquet_sink(&table);

    // The driver dies after publishing batch 1's manifest, before logging its commit.
    let mut cmd = embedstream();
    cmd.args(["run", job.path.to_str().unwrap(), "--local", "1"]).env("EMBEDSTREAM_TEST_CRASH_AFTER_MANIFEST", "1");
    let out = run_to_end(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(86), "{}", String::from_utf8_lossy(&out.stderr));
    let published = manifest::committed(&table, 1).unwrap().expect("batch 1 is published");
    assert_eq!(job.logged_batches("commits"), vec![0], "batch 1's commit was not logged");

    // The next driver replays batch 1 from its log, finds it published and does not run it again.
    let mut cmd = embedstream();
    cmd.args(["run", job.path.to_str().unwrap(), "--local", "1"]);
    let out = run_to_end(cmd, Duration::from_secs(120));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("batch already in the sink's manifest; not run again"), "{log}");
    let again = manifest::committed(&table, 1).unwrap().unwrap();
    assert_eq!(
        again.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
        published.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
        "batch 1's manifest is the one written before the crash"
    );
    assert_eq!(job.logged_batches("commits"), vec![0, 1, 2]);
    assert_eq!(broker.committed("pqm-group", "notes", 1), vec![60]);

    let (rows, count) = read_table(&table);
    assert_eq!(count, 60, "each input once through the manifests");
    for (o, text) in input.iter().enumerate() {
        assert_eq!(&rows[&(0, o as i64)].0, text);
    }
    assert_eq!(manifest::data_files(&table).unwrap().len(), manifest::visible_files(&table).unwrap().len());

    // Another query (a new checkpoint) on the same table is refused before it writes anything:
    // its batch 0 is not the one in the table, and skipping it would lose its records.
    let other =
        Job::new(&broker, "pqn", "subscribe = [\"notes\"]\nmax_offsets_per_trigger = 20", "available_now = true", "")
            .with_parquet_sink(&table);
    let files_before = manifest::data_files(&table).unwrap();
    let mut cmd = embedstream();
    cmd.args(["run", other.path.to_str().unwrap(), "--local", "1"]);
    let out = run_to_end(cmd, Duration::from_secs(120));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("batch 0 there was written by query") && log.contains("sink.path"), "{log}");
    assert_eq!(manifest::data_files(&table).unwrap(), files_before, "nothing written");
    assert!(broker.committed("pqn-group", "notes", 1).iter().all(|&o| o <= 0), "no offsets committed");

    // The first query resumed with another model version (a shorter max_seq_len): refused
    // before its first batch, naming the table's column and both versions.
    let version_a = validated_version(&job);
    broker.produce_texts("notes", 1, input.len(), &texts(4, 13));
    assert_another_version_is_refused(&job, &version_a);
    assert_eq!(manifest::data_files(&table).unwrap(), files_before, "nothing written");
}
