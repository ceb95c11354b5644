//! Exactly-once Kafka output (issue 34): with `sink.guarantee = "exactly_once"` each task's
//! records, dead letters and the group's offset go in one Kafka transaction. A
//! `read_committed` consumer that is not the project's (confluent-kafka, librdkafka through
//! Python) sees every input offset exactly once in the output, and every bad record once in
//! the dead-letter topic, after a driver that died between its tasks' commits and its own
//! commit log (the batch is run again: its tasks find their ranges committed and write nothing)
//! and after an executor SIGKILLed while the query runs.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// Reads `topic` to its end with `isolation.level = read_committed`: each record's
/// (`es.partition`, `es.offset`) headers, as JSON pairs.
const COMMITTED_READER: &str = r#"
import json, sys, time
from confluent_kafka import Consumer, TopicPartition
bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "committed-reader", "isolation.level": "read_committed",
              "auto.offset.reset": "earliest", "enable.partition.eof": True, "enable.auto.commit": False})
c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
at_end, out, deadline = set(), [], time.time() + 60
while len(at_end) < partitions and time.time() < deadline:
    m = c.poll(1.0)
    if m is None:
        continue
    if m.error():
        if m.error().code() == -191:  # _PARTITION_EOF: the last stable offset is reached
            at_end.add(m.partition())
        continue
    h = {k: v.decode() for k, v in (m.headers() or [])}
    out.append([int(h["es.partition"]), int(h["es.offset"])])
c.close()
assert len(at_end) == partitions, "the end of every partition was not reached"
print(json.dumps(out))
"#;

/// How many times a `read_committed` consumer sees each input (partition, offset) in `topic`.
fn committed_origins(broker: &Broker, topic: &str, partitions: i32) -> BTreeMap<(i32, i64), usize> {
    let out = std::process::Command::new(cache().join("pyenv/bin/python"))
        .args(["-c", COMMITTED_READER, &broker.addr, topic, &partitions.to_string()])
        .output()
        .expect("pyenv python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pairs: Vec<(i32, i64)> = serde_json::from_slice(&out.stdout).unwrap();
    let mut seen = BTreeMap::new();
    for pair in pairs {
        *seen.entry(pair).or_default() += 1;
    }
    seen
}

#[test]
fn every_record_once_for_read_committed_consumers_after_a_driver_crash_and_a_killed_executor() {
    let broker = Broker::start();
    broker.create_topic("events", 2);
    // Every tenth record is empty: a dead letter.
    let texts: Vec<String> =
        texts(160, 51).into_iter().enumerate().map(|(i, t)| if i % 10 == 3 { String::new() } else { t }).collect();
    broker.produce_texts("events", 2, 0, &texts);
    let job = Job::new(
        &broker,
        "eos",
        "subscribe = [\"events\"]\nmax_offsets_per_trigger = 20",
        "processing_time = \"100ms\"",
        "guarantee = \"exactly_once\"",
    )
    .with_batching(1, 1);

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
    q.wait_until("batch 3 under way", Duration::from_secs(60), |_| {
        broker.committed("eos-group", "events", 2).iter().sum::<i64>() >= 60
    });
    kill_hard(q.executor_pids()[0]);
    q.wait_until("all 160 records committed", Duration::from_secs(180), |_| {
        broker.committed("eos-group", "events", 2) == vec![80, 80]
    });
    let log = q.log();
    let summary = q.stop();
    assert!(log.contains("the range was committed by an earlier attempt"), "batch 1 was found committed:\n{log}");

    // A read_committed consumer: every good record once in the output, every bad one once in
    // the dead letters.
    let want = |bad: bool| -> BTreeMap<(i32, i64), usize> {
        (0..texts.len())
            .filter(|&n| texts[n].is_empty() == bad)
            .map(|n| (((n % 2) as i32, (n / 2) as i64), 1))
            .collect()
    };
    let output = committed_origins(&broker, "eos-out", 2);
    let twice: Vec<_> = output.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "records written more than once: {twice:?} ({summary})");
    assert_eq!(output, want(false), "every good record once in eos-out");
    assert_eq!(committed_origins(&broker, "eos-dlq", 2), want(true), "every bad record once in eos-dlq");
}
