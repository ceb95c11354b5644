//! embedstream against the limit and against what a team would write instead, side by side in
//! one run on the same model, texts and cores (issue 6). Ratios are the claims.
//!
//!     deploy/setup.sh --python && cargo bench --bench pipeline
//!
//! For uniform short titles and for mixed-length English (Python's docstrings):
//! 1. the limit: a plain ONNX Runtime session in this process, intra-op threads = cores, fed
//!    pre-tokenized batches of 32 (length-sorted, and in arrival order);
//! 2. embedstream end to end: the texts already in a topic of a real local broker,
//!    `run --local 1` with `cores` workers (and with 1, for scaling), `available_now`, Kafka sink;
//!    embeddings/s from the first task dispatched to the last batch committed; peak total PSS of
//!    its process tree (driver, executor, model daemon, workers);
//! 3. benches/baseline_consumer.py: one Python process with confluent-kafka, tokenizers and
//!    onnxruntime (default threading), consumer group, batches of 32 in arrival order; its peak PSS;
//! 4. latency: uniform texts produced at half of (2)'s rate into a continuous query with a 1 s
//!    trigger; p50/p95/p99 from each input's Kafka timestamp to its output's.
//!
//! EMBEDSTREAM_BENCH_TEXTS sets the number of texts per set (default 2000). Writes
//! target/embedstream-bench/pipeline.json besides the table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{model_dir, Broker, Job, Running};
use embedstream_executor::model::{self, Embedder};
use embedstream_proto::spec::ModelSpec;
use embedstream_proto::telemetry::pss_bytes;

const BATCH: usize = 32;
/// The job spec's default `model.sort_window`.
const SORT_WINDOW: usize = 256;

fn uniform_texts(n: usize) -> Vec<String> {
    const ADJ: &[&str] = &["lightweight", "waterproof", "vintage", "ergonomic", "organic", "wireless"];
    const THING: &[&str] = &["running shoes", "desk lamp", "coffee grinder", "backpack", "wool scarf"];
    (0..n).map(|i| format!("{} {} model {}", ADJ[i % ADJ.len()], THING[(i / 7) % THING.len()], i)).collect()
}

fn mixed_texts(n: usize) -> Vec<String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/demo/sample_texts.py");
    let out = Command::new("python3").args(["-I", script.to_str().unwrap(), &n.to_string()]).output().expect("python3");
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

/// Produces uniform texts at `rate` a second for 20 s into a running query; returns the p50, p95
/// and p99 of input-to-output latency in ms, and the number of records.
fn latency_at(broker: &Broker, rate: f64, cores: usize) -> (f64, f64, f64, usize) {
    broker.create_topic("latency-in", 2);
    let job = Job::new(
        broker,
        "latency",
        "subscribe = [\"latency-in\"]\nstarting_offsets = \"latest\"",
        "processing_time = \"1s\"",
        &format!("\n[executors]\ncores = {cores}"),
    )
    .without_default_starting_offsets()
    .with_batching(BATCH, SORT_WINDOW);
    let mut q = Running::start(&job, 1);
    q.wait_until("model workers", std::time::Duration::from_secs(60), |q| q.log().contains("model workers ready"));
    // Let the query log its starting offsets before the first record arrives.
    q.wait_until("the initial offsets", std::time::Duration::from_secs(30), |_| {
        job.checkpoint().join("initial_offsets").exists()
    });
    let texts = uniform_texts((rate * 20.0) as usize);
    let started = Instant::now();
    let tick = std::time::Duration::from_millis(100);
    let per_tick = (rate / 10.0).ceil() as usize;
    for (i, chunk) in texts.chunks(per_tick).enumerate() {
        broker.produce_texts("latency-in", 2, i * per_tick, chunk);
        let next = started + tick * (i as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let highs = broker.high_watermarks("latency-in", 2);
    q.wait_until("all records processed", std::time::Duration::from_secs(120), |_| {
        broker.committed("latency-group", "latency-in", 2) == highs
    });
    q.stop();
    let input: std::collections::HashMap<(i32, i64), i64> =
        broker.read_all("latency-in", 2).iter().map(|r| ((r.partition, r.offset), r.timestamp_ms.unwrap())).collect();
    let mut ms: Vec<f64> = broker
        .read_all("latency-out", 2)
        .iter()
        .map(|r| (r.timestamp_ms.unwrap() - input[&r.origin()]) as f64)
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95), at(0.99), ms.len())
}

/// Pids of `root` and all its descendants, from /proc.
fn process_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|&&(_, pp)| pp == parent).map(|&(p, _)| p));
        i += 1;
    }
    tree
}

/// Runs `cmd` to its end while sampling the total PSS of its process tree; returns its stdout
/// and the peak.
fn run_measuring_memory(mut cmd: Command) -> (Vec<u8>, u64) {
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let root = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(process_tree(root).into_iter().filter_map(pss_bytes).sum::<u64>());
                // Reading smaps walks page tables: sample rarely, so as not to slow what is measured.
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            peak
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::Relaxed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (out.stdout, sampler.join().unwrap())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    std::env::set_var("TOKENIZERS_PARALLELISM", "false");
    let n: usize = std::env::var("EMBEDSTREAM_BENCH_TEXTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
    let python = common::cache().join("pyenv/bin/python");
    assert!(python.is_file(), "{} is missing: run deploy/setup.sh --python", python.display());
    let dir = model_dir();
    let spec = ModelSpec { batch_size: BATCH, ..ModelSpec::new(dir.join("model.onnx"), dir.join("tokenizer.json")) };
    model::init_runtime(&model::ort_library()).unwrap();
    let plain = Embedder::load(&spec, cores).unwrap();
    let broker = Broker::start();

    println!("embedstream bench: pipeline ({cores} cores, {n} texts a set, batch {BATCH}, all-MiniLM-L6-v2 int8)\n");
    println!("embeddings/s       limit sorted  limit arrival  embedstream  python consumer  embedstream/limit  embedstream/python");
    let mut report = Vec::new();
    for (name, texts) in [("uniform", uniform_texts(n)), ("mixed", mixed_texts(n))] {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = plain.encode(&refs).unwrap();
        plain.embed_encoded(&encodings[..BATCH * 2]).unwrap();
        let rate = |t: Instant| n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        plain.embed_encoded(&encodings).unwrap();
        let limit_sorted = rate(t);
        let t = Instant::now();
        for chunk in encodings.chunks(BATCH) {
            plain.embed_encoded(chunk).unwrap();
        }
        let limit_arrival = rate(t);

        let topic = format!("{name}-in");
        broker.create_topic(&topic, 2);
        broker.produce_texts(&topic, 2, 0, &texts);
        // embedstream with 1 worker, then with one per core (the figure compared).
        let mut by_workers = Vec::new();
        let mut embedstream_pss = 0;
        for workers in [1, cores] {
            let job = Job::new(
                &broker,
                &format!("bench-{name}-{workers}"),
                &format!("subscribe = [\"{topic}\"]"),
                "available_now = true",
                &format!("\n[executors]\ncores = {workers}"),
            )
            .with_batching(BATCH, SORT_WINDOW);
            let mut cmd = common::embedstream();
            cmd.args(["run", job.path.to_str().unwrap(), "--local", "1"]);
            let (stdout, pss) = run_measuring_memory(cmd);
            let summary: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
            assert_eq!(summary["embeddings"], n);
            by_workers.push((workers, summary["embeddings_per_second"].as_f64().unwrap()));
            embedstream_pss = pss;
        }
        let embedstream = by_workers.last().unwrap().1;

        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/baseline_consumer.py");
        let mut cmd = Command::new(&python);
        cmd.arg(&script).args([&broker.addr, &topic, &format!("{name}-python-out"), dir.to_str().unwrap()]);
        let (stdout, python_pss) = run_measuring_memory(cmd);
        let py: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
        assert_eq!(py["embeddings"], n);
        let python_rate = py["embeddings_per_second"].as_f64().unwrap();

        println!(
            "{name:<18} {limit_sorted:>12.1}  {limit_arrival:>13.1}  {embedstream:>11.1}  {python_rate:>15.1}  {:>17.2}  {:>18.2}",
            embedstream / limit_sorted,
            embedstream / python_rate
        );
        let mib = |b: u64| b as f64 / 1048576.0;
        println!(
            "{:<18} embedstream with {} -> {} workers: {:.1} -> {:.1}/s; peak total PSS embedstream {:.0} MiB, python {:.0} MiB ({:.2})",
            "",
            by_workers[0].0,
            by_workers[1].0,
            by_workers[0].1,
            by_workers[1].1,
            mib(embedstream_pss),
            mib(python_pss),
            embedstream_pss as f64 / python_pss as f64
        );
        report.push(serde_json::json!({
            "texts": name, "count": n, "limit_sorted": limit_sorted, "limit_arrival_order": limit_arrival,
            "embedstream": embedstream, "python_consumer": python_rate,
            "embedstream_by_workers": by_workers, "embedstream_peak_pss_bytes": embedstream_pss,
            "python_peak_pss_bytes": python_pss,
        }));
    }
    // 4. Latency at half load: uniform texts produced at half the measured capacity into a
    //    continuous query (1 s trigger); Kafka timestamp of each input to that of its output,
    //    which the sink's producer stamps when it sends.
    let capacity = report[0]["embedstream"].as_f64().unwrap();
    let rate = (capacity / 2.0).max(1.0);
    let (p50, p95, p99, count) = latency_at(&broker, rate, cores);
    println!(
        "\nlatency at half load ({rate:.0} records/s for 20 s, 1 s trigger): p50 {p50:.0} ms, p95 {p95:.0} ms, p99 {p99:.0} ms \
         over {count} records; goal p99 < 2 x trigger = 2000 ms ({})",
        if p99 < 2000.0 { "met" } else { "missed" }
    );
    let latency = serde_json::json!({"records_per_second": rate, "trigger_ms": 1000, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "records": count});
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/embedstream-bench");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("pipeline.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&serde_json::json!({"cores": cores, "runs": report, "latency": latency})).unwrap(),
    )
    .unwrap();
    println!("\nreport: {}", path.display());
}
