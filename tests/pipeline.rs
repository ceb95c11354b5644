//! End to end: a real Apache Kafka broker, `embedstream run` with executor processes, and what a user
//! finds in Kafka afterwards.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

#[derive(serde::Deserialize)]
struct Reference {
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference_embeddings.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every input (partition, offset) appears exactly once in `out`, and each partition's outputs
/// are in input order.
fn assert_exactly_once_in_order(out: &[Record], highs: &[i64]) {
    assert_exactly_once(out, highs, true)
}

/// With `ordered` false, only exactly once: tasks that split one partition (min_partitions) may
/// run at the same time on different executors.
fn assert_exactly_once(out: &[Record], highs: &[i64], ordered: bool) {
    for (p, recs) in by_partition(out) {
        let mut offsets: Vec<i64> = recs.iter().map(|r| r.origin().1).collect();
        if !ordered {
            offsets.sort();
        }
        let want: Vec<i64> = (0..highs[p as usize]).collect();
        assert_eq!(offsets, want, "partition {p}: outputs must be each input offset once, in order");
    }
    assert_eq!(out.len() as i64, highs.iter().sum::<i64>());
}

#[test]
fn every_record_is_embedded_once_in_order_and_offsets_are_committed() {
    let broker = Broker::start();
    broker.create_topic("products", 2);
    let r = reference();
    let mut input = texts(90, 1);
    input.extend(r.sentences.iter().cloned());
    broker.produce_texts("products", 2, 0, &input);

    let job = Job::new(
        &broker,
        "e2e",
        "subscribe = [\"products\"]\nmax_offsets_per_trigger = 40",
        "available_now = true",
        "",
    );
    let summary = run_job(&job, 2);
    assert_eq!(summary["embeddings"], input.len());
    assert_eq!(summary["dead_letters"], 0);

    let highs = broker.high_watermarks("products", 2);
    let out = broker.read_all("e2e-out", 2);
    assert_exactly_once_in_order(&out, &highs);

    // Keys, headers, and vectors that match the Python reference. `es.topic_id` tells this
    // incarnation of the topic from one deleted and created again (offsets from 0 again).
    let topic_id = broker.topic_id("products");
    for rec in &out {
        let (p, off) = rec.origin();
        let n = (off * 2 + p as i64) as usize; // text n went to partition n % 2 at offset n / 2
        assert_eq!(rec.key.as_deref(), Some(format!("key-{n}").as_bytes()));
        assert_eq!(rec.header("es.topic"), "products");
        assert_eq!(rec.header("es.topic_id"), topic_id);
        assert_eq!(rec.header("es.model"), "all-MiniLM-L6-v2");
        assert_eq!(rec.partition, p, "sink partition follows the source partition");
        let v = rec.vector();
        assert_eq!(v.len(), DIM);
        if let Some(i) = r.sentences.iter().position(|s| *s == input[n]) {
            let worst = v.iter().zip(&r.embeddings[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "reference sentence {i}: max diff {worst}");
        }
    }

    // 100 records at most 40 a batch: 3 batches, each planned then committed.
    assert_eq!(job.logged_batches("offsets"), vec![0, 1, 2]);
    assert_eq!(job.logged_batches("commits"), vec![0, 1, 2]);
    // The group holds the next offset to read, as lag tools expect.
    assert_eq!(broker.committed("e2e-group", "products", 2), highs);
    assert!(broker.read_all("e2e-dlq", 2).is_empty());
}

#[test]
fn a_crash_after_the_write_ahead_log_reruns_the_same_batch_without_gap() {
    let broker = Broker::start();
    broker.create_topic("items", 2);
    broker.produce_texts("items", 2, 0, &texts(40, 2));
    let job = Job::new(
        &broker,
        "crash",
        "subscribe = [\"items\"]\nmax_offsets_per_trigger = 15\nmin_partitions = 3",
        "available_now = true",
        "",
    );

    // Batch 0 completes; the driver dies right after logging batch 1, before running it.
    let mut cmd = embedstream();
    cmd.args(["run", job.path.to_str().unwrap(), "--local", "1"]).env("EMBEDSTREAM_TEST_CRASH_AFTER_WAL", "1");
    let out = run_to_end(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(86), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(job.logged_batches("offsets"), vec![0, 1]);
    assert_eq!(job.logged_batches("commits"), vec![0]);
    let planned = std::fs::read(job.checkpoint().join("offsets/1")).unwrap();

    // More data arrives while the query is down; the restart must not fold it into batch 1.
    broker.produce_texts("items", 2, 40, &texts(20, 3));
    let summary = run_job(&job, 2);
    assert_eq!(
        std::fs::read(job.checkpoint().join("offsets/1")).unwrap(),
        planned,
        "batch 1 re-ran with its logged ranges"
    );
    let end_of = |batch: u64| -> i64 {
        let entry = read_checkpoint_file(&job.checkpoint().join(format!("offsets/{batch}")));
        entry["end"]["items"].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum()
    };
    let (end0, end1) = (end_of(0), end_of(1));
    assert!(end0 > 0 && end0 <= 15 && end1 > end0 && end1 - end0 <= 15, "rate-limited batches: {end0}, {end1}");
    assert!(end1 <= 40, "batch 1 holds nothing that arrived after it was planned");
    assert_eq!(summary["input_rows"].as_i64().unwrap(), 60 - end0, "everything after batch 0, nothing of it again");

    let highs = broker.high_watermarks("items", 2);
    assert_eq!(highs.iter().sum::<i64>(), 60);
    assert_exactly_once(&broker.read_all("crash-out", 2), &highs, false);
    assert_eq!(broker.committed("crash-group", "items", 2), highs);
}

#[test]
fn sigterm_stops_after_the_batch_in_flight_and_a_restart_resumes() {
    let broker = Broker::start();
    broker.create_topic("stream", 1);
    broker.produce_texts("stream", 1, 0, &texts(30, 4));
    let job = Job::new(
        &broker,
        "term",
        "subscribe = [\"stream\"]\nmax_offsets_per_trigger = 10",
        "processing_time = \"200ms\"",
        "",
    );
    // Keep two batches in the checkpoint's logs: the restart must resume from those alone.
    let spec = std::fs::read_to_string(&job.path).unwrap().replacen(
        "\n\n[source]",
        "\nmin_batches_to_retain = 2\n\n[source]",
        1,
    );
    std::fs::write(&job.path, spec).unwrap();

    let mut q = Running::start(&job, 1);
    q.wait_until("the query catching up with 30 records", Duration::from_secs(90), |_| {
        broker.committed("term-group", "stream", 1) == vec![30]
    });
    let summary = q.stop();
    assert_eq!(summary["input_rows"], 30);
    let batches_before = job.logged_batches("commits");
    assert_eq!(job.logged_batches("offsets"), batches_before, "no batch left half-done");
    let last = *batches_before.last().expect("batches committed");
    assert!(last >= 2, "30 records in batches of at most 10");
    assert_eq!(batches_before, vec![last - 1, last], "only the last two batches are kept");

    broker.produce_texts("stream", 1, 30, &texts(12, 5));
    // The same query (same checkpoint), now told to process what is there and exit.
    let spec =
        std::fs::read_to_string(&job.path).unwrap().replace("processing_time = \"200ms\"", "available_now = true");
    std::fs::write(&job.path, spec).unwrap();
    let summary = run_job(&job, 1);
    assert_eq!(summary["input_rows"], 12, "the restart reads only what came after the stop");
    assert_exactly_once_in_order(&broker.read_all("term-out", 1), &broker.high_watermarks("stream", 1));
    assert_eq!(broker.committed("term-group", "stream", 1), vec![42]);
    let after = job.logged_batches("commits");
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after[0] > last, "the restart went on with new batch ids: {after:?} after {last}");
}

/// Issue 14, finding 8: Ctrl-C in a terminal (SIGINT to the whole process group) during a batch
/// lets that batch commit and exits 0; local executors are in a process group of their own, so
/// the signal does not kill them mid-batch. A restart resumes with no gap and no duplicate.
#[test]
fn ctrl_c_to_the_process_group_mid_batch_commits_the_batch_and_exits_0() {
    let broker = Broker::start();
    broker.create_topic("typed", 1);
    broker.produce_texts("typed", 1, 0, &texts(600, 27));
    let job = Job::new(
        &broker,
        "ctrlc",
        "subscribe = [\"typed\"]\nmax_offsets_per_trigger = 200",
        "processing_time = \"200ms\"",
        "",
    );
    let mut q = Running::start(&job, 1);
    q.wait_until("a batch in flight", Duration::from_secs(90), |_| {
        let (planned, committed) = (job.logged_batches("offsets"), job.logged_batches("commits"));
        planned.last().is_some_and(|b| !committed.contains(b))
    });
    let in_flight = *job.logged_batches("offsets").last().unwrap();
    let summary = q.interrupt_group();
    assert!(job.logged_batches("commits").contains(&in_flight), "batch {in_flight} committed before the exit");
    let first = summary["input_rows"].as_u64().unwrap();
    assert!(first > 0 && first < 600, "stopped part way: {first} of 600");

    let spec =
        std::fs::read_to_string(&job.path).unwrap().replace("processing_time = \"200ms\"", "available_now = true");
    std::fs::write(&job.path, spec).unwrap();
    let summary = run_job(&job, 1);
    assert_eq!(summary["input_rows"].as_u64().unwrap(), 600 - first, "the restart reads what was left");
    assert_exactly_once_in_order(&broker.read_all("ctrlc-out", 1), &broker.high_watermarks("typed", 1));
}

#[test]
fn bad_records_go_to_the_dead_letter_topic_with_a_reason() {
    let broker = Broker::start();
    broker.create_topic("raw", 1);
    let long = "y".repeat(300);
    let records: Vec<RawRecord> = vec![
        (0, Some(b"good-0".to_vec()), Some(b"a fine leather wallet".to_vec())),
        (0, Some(b"bad-utf8".to_vec()), Some(vec![0x66, 0x6f, 0xff, 0xfe])),
        (0, Some(b"empty".to_vec()), Some(Vec::new())),
        (0, Some(b"good-1".to_vec()), Some(b"a sturdy umbrella".to_vec())),
        (0, Some(b"too-long".to_vec()), Some(long.clone().into_bytes())),
        (0, Some(b"null".to_vec()), None),
        (0, Some(b"good-2".to_vec()), Some(b"noise cancelling headphones".to_vec())),
    ];
    broker.produce("raw", &records);
    let job = Job::new(&broker, "dlq", "subscribe = [\"raw\"]", "available_now = true", "");
    // A small size limit, so the 300-byte value is over it.
    let spec =
        std::fs::read_to_string(&job.path).unwrap().replace("batch_size = 16", "batch_size = 16\nmax_text_bytes = 200");
    std::fs::write(&job.path, spec).unwrap();

    let summary = run_job(&job, 1);
    assert_eq!((summary["embeddings"].as_u64(), summary["dead_letters"].as_u64()), (Some(3), Some(4)));

    let out = broker.read_all("dlq-out", 1);
    let good: BTreeSet<Vec<u8>> = out.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!(good, BTreeSet::from([b"good-0".to_vec(), b"good-1".to_vec(), b"good-2".to_vec()]));

    let dead = broker.read_all("dlq-dlq", 1);
    assert_eq!(dead.len(), 4);
    for d in &dead {
        let key = String::from_utf8(d.key.clone().unwrap()).unwrap();
        let (_, offset) = d.origin();
        let original = &records[offset as usize];
        assert_eq!(original.1.as_deref(), d.key.as_deref(), "dead letter keeps its key and origin");
        assert_eq!(
            original.2.as_deref().filter(|v| !v.is_empty()),
            d.value.as_deref().filter(|v| !v.is_empty()),
            "and its value"
        );
        let why = d.header("es.error");
        let expected = match key.as_str() {
            "bad-utf8" => "UTF-8",
            "empty" => "empty",
            "too-long" => "over model.max_text_bytes",
            "null" => "null",
            other => panic!("{other} should not be a dead letter"),
        };
        assert!(why.contains(expected), "{key}: {why}");
    }
    assert_eq!(broker.committed("dlq-group", "raw", 1), vec![7]);
}

#[test]
fn an_oversized_bad_record_goes_to_the_dead_letter_topic_truncated_and_the_batch_commits() {
    let broker = Broker::start();
    // An input topic that takes 4 MB records, as some users' do; the dead-letter topic the
    // driver makes has the broker's default limit of about 1 MB.
    broker.tool(
        "kafka-topics.sh",
        &["--create", "--topic", "big", "--partitions", "1", "--config", "max.message.bytes=4000000"],
    );
    let huge: Vec<u8> = (0..3_000_000).map(|i| b'a' + (i % 26) as u8).collect();
    let records: Vec<RawRecord> = vec![
        (0, Some(b"good-0".to_vec()), Some(b"a fine leather wallet".to_vec())),
        (0, Some(b"huge".to_vec()), Some(huge.clone())),
        (0, Some(b"good-1".to_vec()), Some(b"a sturdy umbrella".to_vec())),
    ];
    broker.produce("big", &records);
    let job = Job::new(&broker, "big", "subscribe = [\"big\"]", "available_now = true", "");
    let summary = run_job(&job, 1);
    let counts = ["embeddings", "dead_letters", "task_retries"].map(|k| summary[k].as_u64().unwrap());
    assert_eq!(counts, [2, 1, 0], "{summary}");

    let dead = broker.read_all("big-dlq", 1);
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.key.as_deref(), Some(&b"huge"[..]));
    assert!(d.header("es.error").contains("over model.max_text_bytes"), "{:?}", d.headers);
    assert_eq!((d.header("es.truncated"), d.header("es.original_size")), ("true", "3000000"));
    let value = d.value.as_deref().unwrap();
    assert!(value.len() < 1_000_000 && huge.starts_with(value), "the value's first {} bytes", value.len());
    assert_eq!(broker.committed("big-group", "big", 1), vec![3]);
}

/// Issue 31, item 4: a key near `message.max.bytes` made the output record, and then its dead
/// letter, too large (`MsgSizeTooLarge`): four attempts failed and the query stopped. Its
/// dead letter carries the key's first 16 KiB, saying so, and the batch commits.
#[test]
fn large_keys() {
    let broker = Broker::start();
    let long_key: Vec<u8> = (0..999_000).map(|i| b'a' + (i % 26) as u8).collect();
    let records: Vec<RawRecord> = vec![
        (0, Some(b"good-0".to_vec()), Some(b"a fine leather wallet".to_vec())),
        (0, Some(long_key.clone()), Some(b"a key longer than any output record can hold".to_vec())),
        (0, Some(b"good-1".to_vec()), Some(b"a sturdy umbrella".to_vec())),
    ];
    broker.create_topic("keys", 1);
    broker.produce("keys", &records);
    let job = Job::new(&broker, "keys", "subscribe = [\"keys\"]", "available_now = true", "");
    let summary = run_job(&job, 1);
    let counts = ["embeddings", "dead_letters", "task_retries"].map(|k| summary[k].as_u64().unwrap());
    assert_eq!(counts, [2, 1, 0], "{summary}");
    let out: Vec<Vec<u8>> = broker.read_all("keys-out", 1).into_iter().map(|r| r.key.unwrap()).collect();
    assert_eq!(out, [b"good-0".to_vec(), b"good-1".to_vec()]);

    let dead = broker.read_all("keys-dlq", 1);
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.origin(), (0, 1));
    assert!(
        d.header("es.error").starts_with("the key is 999000 bytes: its output record would be over"),
        "{:?}",
        d.headers
    );
    assert_eq!((d.header("es.key_truncated"), d.header("es.key_original_size")), ("true", "999000"));
    assert_eq!(d.key.as_deref(), Some(&long_key[..16 << 10]), "the key's first 16 KiB");
    assert_eq!(d.value.as_deref(), Some(&b"a key longer than any output record can hold"[..]));
    assert_eq!(broker.committed("keys-group", "keys", 1), vec![3]);
}

/// Issue 14, finding 5: a task's memory follows its windows, not its range. One task over
/// 200,000 records of 1 KB (200 MB, all over `max_text_bytes`, so to the dead-letter topic)
/// runs with the executor's peak RSS under 128 MiB (89 MiB measured, 28 MiB when idle). Before
/// the fix the reader built the whole range in memory, reserving builders for all of it up front.
#[test]
fn one_task_over_a_long_range_runs_in_bounded_memory() {
    const RECORDS: usize = 200_000;
    let broker = Broker::start();
    broker.create_topic("backlog", 1);
    for part in 0..4 {
        let records: Vec<RawRecord> = (0..RECORDS / 4)
            .map(|i| (0, None, Some(format!("{part}-{i:07}-{}", "x".repeat(1000)).into_bytes())))
            .collect();
        broker.produce("backlog", &records);
    }
    let job = Job::new(&broker, "backlog", "subscribe = [\"backlog\"]", "processing_time = \"500ms\"", "");
    let spec = std::fs::read_to_string(&job.path).unwrap().replacen(
        "sort_window = 16\n",
        "sort_window = 1024\nmax_text_bytes = 100\n",
        1,
    );
    let spec = spec.replacen("batch_size = 16\n", "batch_size = 32\n", 1);
    std::fs::write(&job.path, spec).unwrap();
    let mut q = Running::start(&job, 1);
    q.wait_until("a registered executor", Duration::from_secs(60), |q| q.executor_pids().len() == 1);
    let idle_kb = vm_kb(q.executor_pids()[0], "VmRSS:");
    q.wait_until("the 200,000 records committed", Duration::from_secs(300), |_| {
        broker.committed("backlog-group", "backlog", 1) == vec![RECORDS as i64]
    });
    let peak_kb = vm_kb(q.executor_pids()[0], "VmHWM:");
    let summary = q.stop();
    assert_eq!(summary["dead_letters"], RECORDS as u64, "{summary}");
    assert_eq!(job.logged_batches("commits").len(), 1, "one batch, so one task over the whole range");
    eprintln!(
        "executor RSS: {} MiB when it registered, {} MiB at its peak over a 200 MB range",
        idle_kb / 1024,
        peak_kb / 1024
    );
    assert!(peak_kb < 128 * 1024, "the executor's peak RSS was {} MiB for a 200 MB range", peak_kb / 1024);
}
