//! Forked model workers against the alternatives, side by side in one run (ratios, not absolute
//! times, are the claims: these machines are shared).
//!
//!     cargo bench --bench workers            (needs deploy/setup.sh's cache and python3)
//!
//! 1. Memory: total PSS of the daemon and W workers (each after a batch) against W separate
//!    processes that each load the model (the way each Python worker of a pandas_udf does).
//! 2. Start: a replacement worker's first finished batch (fork, connect, one batch) against a cold
//!    process that loads the model and runs the same batch.
//! 3. Throughput on the machine's cores: the workers against one plain ONNX Runtime session in
//!    this process with as many intra-op threads, fed the same length-sorted batches; on mixed
//!    lengths also against that session fed in arrival order.
//! 4. Token-budget batches (`max_batch_tokens`, issue 20) against fixed batch sizes, on both text
//!    sets: embeddings/s and the workers' total PSS after the runs (a budget bounds the largest
//!    tensor, so each worker's arena). `cargo bench --bench workers -- --budget` runs only this.
//! 5. One tokenization (issue 20): the pool sending workers the token ids it made to sort the
//!    texts, against sending the texts for each worker to tokenize again (the way before), on
//!    both sets. `cargo bench --bench workers -- --tokens` runs only this.
//!
//! Writes target/embedstream-bench/workers.json besides the table.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedstream_core::spec::ModelSpec;
use embedstream_core::telemetry::pss_bytes;
use embedstream_executor::model::workers::WorkerPool;
use embedstream_executor::model::{self, wire, Embedder};

const BATCH: usize = 32;

fn spec() -> ModelSpec {
    let dir = model::cache_dir().join("models/all-MiniLM-L6-v2");
    assert!(dir.join("model.onnx").is_file(), "run deploy/setup.sh first");
    ModelSpec { batch_size: BATCH, ..ModelSpec::new(dir.join("model.onnx"), dir.join("tokenizer.json")) }
}

/// `--naive`: this bench re-executed as a plain process that loads the model, embeds one batch,
/// says "ready" and waits for its stdin to close.
fn naive_process() {
    model::init_runtime(&model::ort_library()).unwrap();
    let e = Embedder::load(&spec(), 1).unwrap();
    e.embed(&["a first batch of text to embed"; 8]).unwrap();
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn start_naive() -> (std::process::Child, Duration) {
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--naive")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    (child, started.elapsed())
}

fn uniform_texts(n: usize) -> Vec<String> {
    const ADJ: &[&str] = &["lightweight", "waterproof", "vintage", "ergonomic", "organic", "wireless"];
    const THING: &[&str] = &["running shoes", "desk lamp", "coffee grinder", "backpack", "wool scarf"];
    (0..n).map(|i| format!("{} {} model {}", ADJ[i % ADJ.len()], THING[(i / 7) % THING.len()], i)).collect()
}

/// Real English of 5 to 120 words: the prose of Python's standard-library docstrings.
fn mixed_texts(n: usize) -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args(["-I", root.join("deploy/demo/sample_texts.py").to_str().unwrap(), &n.to_string()])
        .output()
        .expect("python3");
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--naive") {
        return naive_process();
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; nothing to run here
    }
    std::env::set_var("TOKENIZERS_PARALLELISM", "false");
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_embedstream"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let spec = spec();
    let mut report = serde_json::Map::new();
    if std::env::args().any(|a| a == "--budget") {
        report.insert("token_budget".into(), token_budget(&rt, &exe, cores));
        return write_report(report, "workers-budget.json");
    }
    if std::env::args().any(|a| a == "--tokens") {
        report.insert("one_tokenization".into(), one_tokenization(&rt, &exe, cores));
        return write_report(report, "workers-tokens.json");
    }
    println!("embedstream bench: forked model workers ({cores} cores, batch {BATCH}, all-MiniLM-L6-v2 int8)\n");

    // 1. Memory.
    let (mut one, _) = start_naive();
    let model_rss = pss_bytes(one.id()).unwrap() as f64;
    drop(one.stdin.take());
    one.wait().unwrap();
    println!("memory (total PSS, MiB)      workers  forked  naive processes  forked/naive  goal <= model*1.2 + W*30");
    let mut memory = Vec::new();
    for w in [1usize, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let forked = rt.block_on(async {
            let pool =
                Arc::new(WorkerPool::start(&exe, &spec, w, &model::ort_library(), dir.path().join("s")).await.unwrap());
            // Every worker runs a batch, so its pages are as they are in service.
            pool.embed(uniform_texts(BATCH * w)).await.unwrap();
            let s = pool.state();
            let total: u64 =
                std::iter::once(s.daemon_pid).chain(s.worker_pids.iter().copied()).filter_map(pss_bytes).sum();
            total as f64
        });
        let mut naive = Vec::new();
        for _ in 0..w {
            naive.push(start_naive().0);
        }
        let naive_total: f64 = naive.iter().filter_map(|c| pss_bytes(c.id())).sum::<u64>() as f64;
        for mut c in naive {
            drop(c.stdin.take());
            c.wait().unwrap();
        }
        let goal = model_rss * 1.2 + w as f64 * 30.0 * 1048576.0;
        let mib = |b: f64| b / 1048576.0;
        println!(
            "                             {w:>7}  {:>6.0}  {:>15.0}  {:>12.2}  {:>6.0} ({})",
            mib(forked),
            mib(naive_total),
            forked / naive_total,
            mib(goal),
            if forked <= goal { "met" } else { "missed" }
        );
        memory.push(serde_json::json!({"workers": w, "forked_pss_bytes": forked, "naive_pss_bytes": naive_total, "goal_bytes": goal}));
    }
    report.insert("model_process_pss_bytes".into(), model_rss.into());
    report.insert("memory".into(), memory.into());

    // 2. Start: a replacement worker's first batch against a cold process.
    let batch = uniform_texts(8);
    let (fork_ms, warm_ms, cold_ms) = rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let pool =
            Arc::new(WorkerPool::start(&exe, &spec, 1, &model::ort_library(), dir.path().join("s")).await.unwrap());
        pool.embed(batch.clone()).await.unwrap();
        let (mut fork_times, mut warm_times) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let victim = pool.state().worker_pids[0];
            Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap();
            while std::fs::metadata(format!("/proc/{victim}/stat")).is_ok_and(|_| {
                std::fs::read_to_string(format!("/proc/{victim}/stat")).is_ok_and(|s| !s.contains(") Z"))
            }) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let t = Instant::now();
            pool.embed(batch.clone()).await.unwrap();
            fork_times.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            pool.embed(batch.clone()).await.unwrap();
            warm_times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let cold: Vec<f64> = (0..3)
            .map(|_| {
                let (mut c, took) = start_naive();
                drop(c.stdin.take());
                c.wait().unwrap();
                took.as_secs_f64() * 1000.0
            })
            .collect();
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        (median(fork_times), median(warm_times), median(cold))
    });
    println!(
        "\nstart to first batch of 8 texts (median ms)   replacement fork {fork_ms:.1} (the same batch on a warm worker {warm_ms:.1})   cold process {cold_ms:.0}   ratio {:.3}   goal < 20 ms ({})",
        fork_ms / cold_ms,
        if fork_ms < 20.0 { "met" } else { "missed" }
    );
    report.insert(
        "start".into(),
        serde_json::json!({"fork_first_batch_ms": fork_ms, "warm_worker_batch_ms": warm_ms, "cold_process_first_batch_ms": cold_ms}),
    );

    // 3. Throughput on all cores.
    model::init_runtime(&model::ort_library()).unwrap();
    let plain = Embedder::load(&spec, cores).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pool = rt.block_on(async {
        Arc::new(WorkerPool::start(&exe, &spec, cores, &model::ort_library(), dir.path().join("s")).await.unwrap())
    });
    println!(
        "\nthroughput (embeddings/s)    texts     workers  plain session sorted  ratio  plain in arrival order  ratio"
    );
    let mut throughput = Vec::new();
    for (name, texts, goal) in [("uniform", uniform_texts(1536), 0.95), ("mixed", mixed_texts(1536), 3.0)] {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        // Each contender runs the set twice and the second run counts: the first grows ONNX
        // Runtime's buffers to these lengths (in each worker process, and in the plain session).
        let second_run = |run: &mut dyn FnMut()| {
            run();
            let t = Instant::now();
            run();
            rate(texts.len(), t.elapsed())
        };
        let forked = second_run(&mut || {
            rt.block_on(pool.embed(texts.clone())).unwrap();
        });
        let sorted = second_run(&mut || {
            plain.embed(&refs).unwrap(); // sorts by token length, then batches
        });
        let arrival = second_run(&mut || {
            for chunk in refs.chunks(BATCH) {
                plain.embed(chunk).unwrap(); // each arrival-order batch padded to its longest text
            }
        });
        let (vs, against) = if name == "uniform" { (forked / sorted, "sorted") } else { (forked / arrival, "arrival") };
        println!(
            "                             {name:<8} {forked:>8.1}  {sorted:>20.1}  {:>5.2}  {arrival:>22.1}  {:>5.2}   goal >= {goal} x {against} ({})",
            forked / sorted,
            forked / arrival,
            if vs >= goal { "met" } else { "missed" }
        );
        throughput.push(serde_json::json!({"texts": name, "workers": forked, "plain_sorted": sorted, "plain_arrival_order": arrival}));
    }
    report.insert("throughput".into(), throughput.into());
    report.insert("cores".into(), cores.into());
    drop(pool);
    report.insert("token_budget".into(), token_budget(&rt, &exe, cores));
    report.insert("one_tokenization".into(), one_tokenization(&rt, &exe, cores));
    write_report(report, "workers.json");
}

/// The way before one tokenization: the texts tokenized here to be sorted, then sent as texts,
/// which each worker tokenizes again.
async fn embed_as_texts(pool: &WorkerPool, lengths: &dyn Fn(&[String]) -> Vec<usize>, texts: &[String]) {
    let lengths = lengths(texts);
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let batches = order.chunks(BATCH).map(|chunk| {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
        let request = wire::encode_texts(&batch);
        async move { pool.workers().run(wire::TEXTS, &request, batch.len()).await.unwrap() }
    });
    futures::future::join_all(batches).await;
}

/// Part 5: texts against tokens to the workers, interleaved, each run twice (the second counts),
/// best of two rounds.
fn one_tokenization(rt: &tokio::runtime::Runtime, exe: &std::path::Path, cores: usize) -> serde_json::Value {
    let spec = spec();
    let tokenizer = model::load_tokenizer(&spec).unwrap();
    let lengths = |texts: &[String]| model::token_lengths(&tokenizer, texts);
    let dir = tempfile::tempdir().unwrap();
    let pool = rt.block_on(async {
        Arc::new(WorkerPool::start(exe, &spec, cores, &model::ort_library(), dir.path().join("s")).await.unwrap())
    });
    println!("\none tokenization (embeddings/s, {cores} workers, batches of {BATCH}, best of 2)");
    println!("  {:<10} {:>22} {:>22} {:>8}", "texts", "texts to the workers", "tokens to the workers", "ratio");
    let mut rows = Vec::new();
    for (name, texts) in [("uniform", uniform_texts(1536)), ("mixed", mixed_texts(1536))] {
        let (mut as_texts, mut as_tokens) = (0f64, 0f64);
        for _ in 0..2 {
            rt.block_on(embed_as_texts(&pool, &lengths, &texts));
            let t = Instant::now();
            rt.block_on(embed_as_texts(&pool, &lengths, &texts));
            as_texts = as_texts.max(rate(texts.len(), t.elapsed()));
            rt.block_on(pool.embed(texts.clone())).unwrap();
            let t = Instant::now();
            rt.block_on(pool.embed(texts.clone())).unwrap();
            as_tokens = as_tokens.max(rate(texts.len(), t.elapsed()));
        }
        println!("  {name:<10} {as_texts:>22.1} {as_tokens:>22.1} {:>8.2}", as_tokens / as_texts);
        rows.push(serde_json::json!({"texts": name, "texts_to_workers_per_s": as_texts, "tokens_to_workers_per_s": as_tokens}));
    }
    rows.into()
}

fn write_report(report: serde_json::Map<String, serde_json::Value>, name: &str) {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/embedstream-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(name), serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    println!("\nreport: {}", out.join(name).display());
}

/// Part 4: batches cut by a token budget against fixed batch sizes: one pool of `cores` workers per
/// way of cutting, each text set run twice (the second counts), then the workers' total PSS.
fn token_budget(rt: &tokio::runtime::Runtime, exe: &std::path::Path, cores: usize) -> serde_json::Value {
    let ways: [(&str, usize, Option<usize>); 4] = [
        ("fixed 32 (the default)", 32, None),
        ("fixed 128", 128, None),
        ("budget 2048 tokens, up to 256", 256, Some(2048)),
        ("budget 4096 tokens, up to 256", 256, Some(4096)),
    ];
    let sets = [("uniform", uniform_texts(1536)), ("mixed", mixed_texts(1536))];
    println!("\ntoken budget (embeddings/s; PSS of the workers after both sets)");
    println!("  {:<32} {:>10} {:>10} {:>10} {:>14}", "batches", "uniform", "mixed", "vs fixed 32", "workers MiB");
    let mut rows = Vec::new();
    let mut base = None;
    for (label, batch_size, max_batch_tokens) in ways {
        let spec = ModelSpec { batch_size, max_batch_tokens, sort_window: 1536, ..spec() };
        let dir = tempfile::tempdir().unwrap();
        let pool = rt.block_on(async {
            Arc::new(WorkerPool::start(exe, &spec, cores, &model::ort_library(), dir.path().join("s")).await.unwrap())
        });
        let rates: Vec<f64> = sets
            .iter()
            .map(|(_, texts)| {
                rt.block_on(pool.embed(texts.clone())).unwrap();
                let t = Instant::now();
                rt.block_on(pool.embed(texts.clone())).unwrap();
                rate(texts.len(), t.elapsed())
            })
            .collect();
        let pss: u64 = {
            let s = pool.state();
            std::iter::once(s.daemon_pid).chain(s.worker_pids.iter().copied()).filter_map(pss_bytes).sum()
        };
        let (uniform, mixed) = (rates[0], rates[1]);
        let (bu, bm) = *base.get_or_insert((uniform, mixed));
        println!(
            "  {label:<32} {uniform:>10.1} {mixed:>10.1} {:>5.2}, {:>4.2} {:>14.0}",
            uniform / bu,
            mixed / bm,
            pss as f64 / 1048576.0
        );
        rows.push(serde_json::json!({"batches": label, "batch_size": batch_size, "max_batch_tokens": max_batch_tokens,
            "uniform_per_s": uniform, "mixed_per_s": mixed, "workers_pss_bytes": pss}));
    }
    rows.into()
}
