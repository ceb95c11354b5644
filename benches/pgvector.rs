//! The pgvector sink's speed against the Kafka sink's, on the same texts, in one run (issue 17's
//! goal: at least 0.9 x). Starts a Kafka broker and PostgreSQL with pgvector on loopback,
//! produces keyed product texts once, then runs the same `available_now` query (one local
//! executor of one core, the spec's default batching) into each sink in turn, twice over,
//! interleaved so that the machine's drift falls on both: a Kafka topic, a pgvector table in
//! upsert mode, the same without its HNSW index (what keeping the index costs the server, which
//! shares the machine's cores with the model here), and one in append mode. Each run starts from
//! a new checkpoint and a new table.
//!
//!     deploy/setup.sh --python && cargo bench --bench pgvector
//!
//! EMBEDSTREAM_BENCH_TEXTS sets the number of texts (default 4000). The figure is the query's
//! own `embeddings_per_second` (first task dispatched to last batch committed: the model's load
//! and the process start are left out); the best of the two runs of each sink is kept. Writes
//! target/embedstream-bench/pgvector.json besides the table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use common::postgres::{Postgres, PASSWORD};
use common::{run_job, texts, Broker, Job};

const ROUNDS: usize = 2;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("EMBEDSTREAM_BENCH_TEXTS").ok().and_then(|v| v.parse().ok()).unwrap_or(4000);
    let broker = Broker::start();
    broker.create_topic("catalog", 2);
    broker.produce_texts("catalog", 2, 0, &texts(n, 5));
    let pg = Postgres::start();

    let sinks: [(&str, &str); 4] = [
        ("kafka", ""),
        ("pgvector upsert", "mode = \"upsert\""),
        ("pgvector upsert, no index", "mode = \"upsert\"\nindex = \"none\""),
        ("pgvector append", "mode = \"append\""),
    ];
    let mut best = [0f64; 4];
    for round in 0..ROUNDS {
        for (i, (label, keys)) in sinks.iter().enumerate() {
            let name = format!("bench{round}{i}");
            let job = Job::new(&broker, &name, "subscribe = [\"catalog\"]", "available_now = true", "")
                .with_batching(32, 1024);
            let job = match *keys {
                "" => job,
                keys => job.with_pgvector_sink(&pg.url(), PASSWORD, &format!("table = \"{name}\"\n{keys}")),
            };
            let summary = run_job(&job, 1);
            assert_eq!(summary["embeddings"].as_u64(), Some(n as u64), "{label}: {summary}");
            let rate = summary["embeddings_per_second"].as_f64().expect("a rate");
            eprintln!("round {round}: {label}: {rate:.1} embeddings/s");
            best[i] = best[i].max(rate);
            if !keys.is_empty() {
                assert_eq!(pg.psql(&format!("SELECT count(*) FROM {name}")), n.to_string(), "{label}: rows");
            }
        }
    }

    println!("\n{n} product texts, 2 partitions, 1 executor of 1 core, all-MiniLM-L6-v2 int8, best of {ROUNDS}");
    println!("{:<26} {:>14} {:>10}", "sink", "embeddings/s", "vs kafka");
    for (i, (label, _)) in sinks.iter().enumerate() {
        println!("{label:<26} {:>14.1} {:>9.2}x", best[i], best[i] / best[0]);
    }
    let report = serde_json::json!({
        "texts": n, "rounds": ROUNDS,
        "kafka_per_s": best[0], "pgvector_upsert_per_s": best[1], "pgvector_upsert_no_index_per_s": best[2],
        "pgvector_append_per_s": best[3], "upsert_vs_kafka": best[1] / best[0],
        "upsert_no_index_vs_kafka": best[2] / best[0], "append_vs_kafka": best[3] / best[0],
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/embedstream-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("pgvector.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
}
