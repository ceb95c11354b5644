//! The `fasttext` model kind's speed, side by side in one run (ratios are the claims: these
//! machines are shared).
//!
//!     deploy/setup.sh --python && cargo bench --bench fasttext
//!
//! On product texts (a title and a description, 12 to 40 words) with the setup's trained
//! 128-dim model, embeddings per second of:
//! 1. the executor's in-process model (`FastTextModel`), one thread, and on all cores;
//! 2. the same model behind a socket, as a forked worker would be: texts written to a Unix
//!    socket, the far side computes them and writes the vectors back (what a worker would
//!    cost or gain against computing in the executor's process);
//! 3. the Python fastText package's `get_sentence_vector`, one text at a time in one process,
//!    the way a `pandas_udf` calls it (the baseline), and the workloads' stated 100/s per CPU.
//!
//! Writes target/embedstream-bench/fasttext.json besides the table.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use embedstream_core::spec::FastTextSpec;
use embedstream_executor::model::fasttext::FastTextModel;
use embedstream_executor::model::{self, Embed};

const TEXTS: usize = 20_000;
const BATCH: usize = 256;
/// The seed's figure for its FastText 1x128 model on Spark: embeddings per second per CPU.
const SEED_PER_CPU: f64 = 100.0;

fn spec() -> FastTextSpec {
    let path = model::cache_dir().join("models/fasttext-products/model.bin");
    assert!(path.is_file(), "run deploy/setup.sh --python first");
    FastTextSpec {
        name: "words".into(),
        text: None,
        model: path,
        normalize: false,
        max_text_bytes: 1 << 20,
        skip_unchanged: false,
    }
}

/// Product-like texts of 12 to 40 words, some in the model's vocabulary, some not.
fn product_texts(n: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "lightweight",
        "waterproof",
        "leather",
        "sneakers",
        "boots",
        "stainless",
        "steel",
        "skillet",
        "kettle",
        "bluetooth",
        "speaker",
        "headphones",
        "ergonomic",
        "desk",
        "lamp",
        "backpack",
        "tent",
        "merino",
        "wool",
        "scarf",
        "cordless",
        "drill",
        "wooden",
        "puzzle",
        "for",
        "kids",
        "with",
        "free",
        "shipping",
        "brand12",
        "model431",
        "Zürich",
        "café",
        "dishwasher",
        "safe",
        "rubber",
        "sole",
        "the",
        "and",
    ];
    (0..n)
        .map(|i| {
            let len = 12 + (i * 7) % 29;
            (0..len).map(|w| WORDS[(i * 31 + w * 17 + w * w) % WORDS.len()]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

fn rate(n: usize, secs: f64) -> f64 {
    n as f64 / secs
}

/// The texts through a socket: batches written as length-prefixed texts, vectors read back.
fn through_socket(model: Arc<FastTextModel>, texts: &[String]) -> f64 {
    let (mut here, there) = UnixStream::pair().unwrap();
    let dim = model.dim();
    let worker = std::thread::spawn(move || {
        let mut input = BufReader::new(there.try_clone().unwrap());
        let mut out = there;
        loop {
            let mut count = [0u8; 4];
            if input.read_exact(&mut count).is_err() {
                return;
            }
            let mut batch = Vec::new();
            for _ in 0..u32::from_le_bytes(count) {
                let mut len = [0u8; 4];
                input.read_exact(&mut len).unwrap();
                let mut text = vec![0u8; u32::from_le_bytes(len) as usize];
                input.read_exact(&mut text).unwrap();
                batch.push(String::from_utf8(text).unwrap());
            }
            let vectors = model.vectors(&batch);
            let bytes: Vec<u8> = vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
            out.write_all(&bytes).unwrap();
        }
    });
    let started = Instant::now();
    let mut reply = Vec::new();
    for batch in texts.chunks(BATCH) {
        let mut frame = (batch.len() as u32).to_le_bytes().to_vec();
        for t in batch {
            frame.extend((t.len() as u32).to_le_bytes());
            frame.extend(t.as_bytes());
        }
        here.write_all(&frame).unwrap();
        reply.resize(batch.len() * dim * 4, 0);
        here.read_exact(&mut reply).unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    drop(here);
    worker.join().unwrap();
    rate(texts.len(), secs)
}

/// Python fastText, one `get_sentence_vector` per text, timed inside Python after the load.
fn python(texts: &[String]) -> f64 {
    let script = "import json, sys, time, fasttext\n\
                  m = fasttext.load_model(sys.argv[1]); texts = json.load(sys.stdin)\n\
                  t = time.perf_counter()\n\
                  for s in texts: m.get_sentence_vector(s)\n\
                  print(time.perf_counter() - t)";
    let mut child = Command::new(model::cache_dir().join("pyenv/bin/python"))
        .args(["-c", script, spec().model.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the setup's Python (deploy/setup.sh --python)");
    child.stdin.take().unwrap().write_all(serde_json::to_string(texts).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python fasttext failed");
    rate(texts.len(), String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let texts = product_texts(TEXTS);
    let words: usize = texts.iter().map(|t| t.split(' ').count()).sum();
    println!(
        "embedstream bench: fastText sentence vectors ({cores} cores, {TEXTS} texts of {:.1} words on average, dim 128)\n",
        words as f64 / TEXTS as f64
    );
    let one = Arc::new(FastTextModel::load(&spec(), 1).unwrap());
    let all = Arc::new(FastTextModel::load(&spec(), cores).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Each contender runs twice; the second run counts.
    let best = |run: &dyn Fn() -> f64| {
        run();
        run()
    };
    let in_process = best(&|| {
        let t = Instant::now();
        for batch in texts.chunks(BATCH) {
            std::hint::black_box(one.vectors(batch));
        }
        rate(texts.len(), t.elapsed().as_secs_f64())
    });
    let all_cores = best(&|| {
        let t = Instant::now();
        for batch in texts.chunks(BATCH * cores) {
            std::hint::black_box(rt.block_on(all.clone().embed(batch.to_vec())).unwrap());
        }
        rate(texts.len(), t.elapsed().as_secs_f64())
    });
    let socket = best(&|| through_socket(one.clone(), &texts));
    let python = best(&|| python(&texts));

    println!("embeddings/s                          one core   per core  vs Python  vs seed (100/s per CPU)");
    let row = |name: &str, r: f64, on: usize| {
        let per = r / on as f64;
        println!("{name:<36} {r:>10.0} {per:>10.0} {:>9.2}x {:>12.0}x", per / python, per / SEED_PER_CPU);
    };
    row("in process, 1 thread", in_process, 1);
    row(&format!("in process, {cores} threads"), all_cores, cores);
    row("behind a socket (as a worker)", socket, 1);
    row("Python fasttext, one text a call", python, 1);
    println!("\nin process / behind a socket: {:.2}x", in_process / socket);

    let report = serde_json::json!({
        "cores": cores, "texts": TEXTS,
        "in_process_one_thread": in_process, "in_process_all_cores": all_cores,
        "behind_socket": socket, "python_fasttext": python, "seed_per_cpu": SEED_PER_CPU,
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/embedstream-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("fasttext.json"), serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    println!("report: {}", out.join("fasttext.json").display());
}
