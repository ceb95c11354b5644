//! The file sinks' speed against the Kafka sink's, on the same texts, in one run (issue 32's
//! goal for Delta: at least 0.9 x Kafka). Starts a Kafka broker on loopback, produces product
//! texts once, then runs the same `available_now` query (one local executor of one core, 400
//! records a batch, so that a run has many batches and many Delta commits) into each sink in
//! turn, twice over, interleaved so that the machine's drift falls on all: a Kafka topic, a
//! Parquet table (manifests), a Delta table (a Delta commit per batch, a checkpoint every 10),
//! and a Kafka topic written exactly once (`guarantee = "exactly_once"`: a transaction per task,
//! issue 34's goal: at least 0.85 x Kafka at least once).
//! Each run starts from a new checkpoint and a new table.
//!
//!     deploy/setup.sh && cargo bench --bench sinks
//!
//! EMBEDSTREAM_BENCH_TEXTS sets the number of texts (default 4000). The figure is the query's
//! own `embeddings_per_second` (first task dispatched to last batch committed: the model's load
//! and the process start are left out); the best of the two runs of each sink is kept. Writes
//! target/embedstream-bench/sinks.json besides the table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

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
    let dir = tempfile::tempdir().unwrap();

    let sinks = ["kafka", "parquet", "delta", "kafka-eos"];
    let mut best = [0f64; 4];
    for round in 0..ROUNDS {
        for (i, sink) in sinks.iter().enumerate() {
            let name = format!("bench{round}{i}");
            let table = dir.path().join(&name);
            let guarantee = if *sink == "kafka-eos" { "guarantee = \"exactly_once\"" } else { "" };
            let job = Job::new(
                &broker,
                &name,
                "subscribe = [\"catalog\"]\nmax_offsets_per_trigger = 400",
                "available_now = true",
                guarantee,
            )
            .with_batching(32, 1024);
            let job = match *sink {
                "parquet" => job.with_parquet_sink(&table),
                "delta" => job.with_delta_sink(&table, ""),
                _ => job,
            };
            let summary = run_job(&job, 1);
            assert_eq!(summary["embeddings"].as_u64(), Some(n as u64), "{sink}: {summary}");
            let rate = summary["embeddings_per_second"].as_f64().expect("a rate");
            eprintln!("round {round}: {sink}: {rate:.1} embeddings/s");
            best[i] = best[i].max(rate);
        }
    }

    println!("\n{n} product texts, 2 partitions, 400 a batch, 1 executor of 1 core, best of {ROUNDS}");
    println!("{:<10} {:>14} {:>10}", "sink", "embeddings/s", "vs kafka");
    for (i, sink) in sinks.iter().enumerate() {
        println!("{sink:<10} {:>14.1} {:>9.2}x", best[i], best[i] / best[0]);
    }
    let report = serde_json::json!({
        "texts": n, "rounds": ROUNDS, "batch": 400,
        "kafka_per_s": best[0], "parquet_per_s": best[1], "delta_per_s": best[2],
        "kafka_exactly_once_per_s": best[3],
        "parquet_vs_kafka": best[1] / best[0], "delta_vs_kafka": best[2] / best[0],
        "exactly_once_vs_kafka": best[3] / best[0],
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/embedstream-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("sinks.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
}
