//! The embedding cache (`model.cache_bytes`, issue 20): a keyed catalog sent twice to a running
//! query on a real Apache Kafka broker, with two executors of one core and four partitions. The
//! second pass's unchanged texts come from the cache (the progress records count them): each
//! partition's task waits for the executor that ran it (`executors.locality_wait`) rather than
//! take the other's free core. Their vectors in the output topic are bit for bit those the model
//! computed for the first pass.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const PARTITIONS: i32 = 4;

#[test]
fn a_catalog_sent_again_comes_from_the_cache_with_the_same_vectors() {
    let broker = Broker::start();
    broker.create_topic("catalog", PARTITIONS);
    // A wait longer than any task: a partition's task never runs on the executor without its cache.
    let job = Job::new(
        &broker,
        "cached",
        "subscribe = [\"catalog\"]",
        "processing_time = \"200ms\"",
        "[executors]\nlocality_wait = \"60s\"",
    )
    .edit_model("batch_size = 16\nsort_window = 16\ncache_bytes = \"16m\"");
    let mut q = Running::start(&job, 2);
    // Both executors first: each partition's task then goes back to the executor that ran it,
    // two partitions a core, so the second of each pair waits for the first.
    q.wait_until("two executors", Duration::from_secs(90), |q| q.executor_pids().len() == 2);

    let first = texts(40, 7);
    assert_eq!(first.iter().collect::<std::collections::HashSet<_>>().len(), 40, "distinct texts");
    broker.produce_texts("catalog", PARTITIONS, 0, &first);
    q.wait_until("the first pass", Duration::from_secs(90), |_| {
        broker.committed("cached-group", "catalog", PARTITIONS) == vec![10; 4]
    });
    // The second pass: 32 texts unchanged, 8 changed, each on the partition it was on (keys
    // 40.. go to partition key % 4, as keys 0.. did).
    let mut second = first.clone();
    for (i, text) in second.iter_mut().enumerate().skip(32) {
        *text = format!("{text} (new edition {i})");
    }
    broker.produce_texts("catalog", PARTITIONS, 40, &second);
    q.wait_until("the second pass", Duration::from_secs(90), |_| {
        broker.committed("cached-group", "catalog", PARTITIONS) == vec![20; 4]
    });
    let summary = q.stop();
    assert_eq!(summary["embeddings"], 80);

    let records = progress_records(&job);
    let sum = |key: &str| records.iter().map(|r| r[key].as_u64().unwrap_or(0)).sum::<u64>();
    assert_eq!(sum("cacheHits"), 32, "the unchanged texts: {records:?}");
    assert_eq!(sum("cacheMisses"), 48, "the first pass and the changed texts");

    // Each text's vector: the first pass computed it, the second pass's copy is the same bits.
    let out = broker.read_all("cached-out", PARTITIONS);
    assert_eq!(out.len(), 80);
    let text_of = |r: &Record| {
        let (p, offset) = r.origin();
        let n = (offset * PARTITIONS as i64 + p as i64) as usize;
        if n < 40 {
            first[n].clone()
        } else {
            second[n - 40].clone()
        }
    };
    let mut computed: HashMap<String, Vec<u32>> = HashMap::new();
    let bits = |r: &Record| r.vector().iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for r in out.iter().filter(|r| r.origin().1 < 10) {
        computed.insert(text_of(r), bits(r));
    }
    let mut same = 0;
    for r in out.iter().filter(|r| r.origin().1 >= 10) {
        match computed.get(&text_of(r)) {
            Some(v) => {
                assert_eq!(&bits(r), v, "{:?}: the cached vector is the computed one", r.origin());
                same += 1;
            }
            None => assert_eq!(r.vector().len(), DIM),
        }
    }
    assert_eq!(same, 32);
}
