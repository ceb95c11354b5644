//! Avro input's speed against JSON input's on the same product records, in one run (issue 33's
//! goal: at least 0.95 x JSON). Starts a Kafka broker and a Schema Registry (Apicurio, as the
//! tests do) on loopback, writes the same products once as JSON and once as Avro (by
//! confluent-kafka's `AvroSerializer`, which registers the schema), then runs the same
//! `available_now` query (one local executor of one core, 400 records a batch, the template
//! `{title}. {brand}` over JSON pointers) over each topic in turn, twice over, interleaved so
//! that the machine's drift falls on both. Each run starts from a new checkpoint.
//!
//!     deploy/setup.sh --python && cargo bench --bench formats
//!
//! EMBEDSTREAM_BENCH_TEXTS sets the number of records (default 4000). The figure is the query's
//! own `embeddings_per_second` (first task dispatched to last batch committed); the best of the
//! two runs of each format is kept. Writes target/embedstream-bench/formats.json besides the
//! table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use common::registry::{produce, product_schema, Registry};
use common::{model_dir, run_job, texts, Broker, Job};

const ROUNDS: usize = 2;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("EMBEDSTREAM_BENCH_TEXTS").ok().and_then(|v| v.parse().ok()).unwrap_or(4000);
    let registry = Registry::start();
    let broker = Broker::start();
    let products: Vec<serde_json::Value> = texts(n, 5)
        .into_iter()
        .enumerate()
        .map(|(i, title)| {
            serde_json::json!({
                "title": title, "description": "A product of the catalog.",
                "details": {"brand": format!("brand{}", i % 50), "price": i as f64 / 4.0},
                "attributes": {"color": "red"}, "tags": ["catalog"]
            })
        })
        .collect();
    // JSON: the same documents as text.
    broker.create_topic("catalog-json", 2);
    let records: Vec<_> = (products.iter().enumerate())
        .map(|(i, p)| ((i % 2) as i32, Some(format!("sku-{i}").into_bytes()), Some(p.to_string().into_bytes())))
        .collect();
    broker.produce("catalog-json", &records);
    // Avro: the same documents, through the serializer (`details` is a union with null).
    broker.create_topic("catalog-avro", 2);
    let schema = product_schema();
    let plan: Vec<serde_json::Value> = (products.iter().enumerate())
        .map(|(i, p)| serde_json::json!({"partition": i % 2, "key": format!("sku-{i}"), "kind": "v1", "value": p}))
        .collect();
    produce(&broker, &registry, "catalog-avro", &serde_json::json!({"schemas": {"v1": schema}, "records": plan}));

    let formats = ["json", "avro"];
    let mut best = [0f64; 2];
    for round in 0..ROUNDS {
        for (i, format) in formats.iter().enumerate() {
            let name = format!("bench{round}{i}");
            let registry_line = match *format {
                "avro" => format!("schema_registry = {{ url = \"{}\" }}\n", registry.url),
                _ => String::new(),
            };
            let models = format!(
                "[input]\nformat = \"{format}\"\nfields = {{ title = \"/title\", brand = \"/details/brand\" }}\n\
                 required = [\"title\"]\n{registry_line}\n[model]\ntext = \"{{title}}. {{brand}}\"\n\
                 onnx = \"{m}/model.onnx\"\ntokenizer = \"{m}/tokenizer.json\"\nbatch_size = 32\nsort_window = 1024",
                m = model_dir().display()
            );
            let job = Job::new(
                &broker,
                &name,
                &format!("subscribe = [\"catalog-{format}\"]\nmax_offsets_per_trigger = 400"),
                "available_now = true",
                "",
            )
            .with_models(&models);
            let summary = run_job(&job, 1);
            assert_eq!(summary["embeddings"].as_u64(), Some(n as u64), "{format}: {summary}");
            let rate = summary["embeddings_per_second"].as_f64().expect("a rate");
            eprintln!("round {round}: {format}: {rate:.1} embeddings/s");
            best[i] = best[i].max(rate);
        }
    }

    println!("\n{n} product records, 2 partitions, 400 a batch, 1 executor of 1 core, best of {ROUNDS}");
    println!("{:<10} {:>14} {:>10}", "input", "embeddings/s", "vs json");
    for (i, format) in formats.iter().enumerate() {
        println!("{format:<10} {:>14.1} {:>9.2}x", best[i], best[i] / best[0]);
    }
    let report = serde_json::json!({
        "records": n, "rounds": ROUNDS, "batch": 400,
        "json_per_s": best[0], "avro_per_s": best[1], "avro_vs_json": best[1] / best[0],
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/embedstream-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("formats.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
}
