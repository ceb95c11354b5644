//! The `image-onnx` model kind's speed, side by side in one run (ratios are the claims: these
//! machines are shared).
//!
//!     deploy/setup.sh --python && cargo bench --bench images
//!
//! EfficientNet-Lite0 (the setup's, 1280-dim) on clip art from Debian's openclipart-png, served
//! by the tests' image host on loopback, one forked worker a core, each image three times over in
//! one window (288 images). Images per second of:
//! 1. the model's raw speed: the images decoded and preprocessed beforehand, their tensors sent
//!    to the workers in batches (the limit: inference and the wire only);
//! 2. end to end from URLs (`ImagePool`: fetch, decode, preprocess, batches to the workers),
//!    with the host answering at once, and with 100 ms of latency added to every image (the
//!    goal: at least 0.9 of the raw speed, downloads hidden behind inference);
//! 3. the seed's figure, 1.5 to 3 images per second per CPU for its ResNet-50 on Spark.
//!
//! And records per second of a Prod2Vec-shaped pipeline (two text towers and the image model,
//! concatenated), on JSON records whose images are fetched with the same 100 ms latency.
//!
//! Writes target/embedstream-bench/images.json besides the table.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedstream_core::spec::image::{Channels, FetchSpec, PreprocessSpec};
use embedstream_core::spec::units::HumanDuration;
use embedstream_core::spec::{ImageSpec, JobSpec, ModelEntry};
use embedstream_executor::images::fetch::Fetcher;
use embedstream_executor::images::pool::ImagePool;
use embedstream_executor::images::preprocess;
use embedstream_executor::metrics::ExecutorMetrics;
use embedstream_executor::model::workers::{BatchLimits, WorkerPool, Workers};
use embedstream_executor::model::{self, wire};
use embedstream_executor::pipeline::{Backend, Pipeline};

const IMAGES: usize = 96;
/// Each image is in a window this many times (under other URLs for the fetches): a window of
/// 288 images, as a task's window of records would hold.
const ROUNDS: usize = 3;
const BATCH: usize = 16;
const LATENCY_MS: u64 = 100;
/// The seed's figures for its ResNet-50 on product images: images per second per CPU.
const SEED_PER_CPU: (f64, f64) = (1.5, 3.0);
/// Clip art folders the images come from, in turn.
const FOLDERS: &[&str] = &["food/fruit", "computer", "tools", "animals/birds", "transportation", "office"];

/// `n` clip art PNGs (files under 500 kB, not links), from each folder in turn, in name order.
fn clip_art(n: usize) -> Vec<PathBuf> {
    let lists: Vec<Vec<PathBuf>> = FOLDERS
        .iter()
        .map(|f| {
            let dir = Path::new("/usr/share/openclipart/png").join(f);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e} (run deploy/setup.sh)", dir.display()))
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "png"))
                .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.len() < 500_000))
                .collect();
            files.sort();
            files
        })
        .collect();
    (0..n).map(|i| lists[i % lists.len()][i / lists.len()].clone()).collect()
}

/// The tests' image host (tests/fixtures/image_server.py) over `dir`; stopped on drop.
struct Server(Child, u16);

impl Server {
    fn start(dir: &Path) -> Server {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/image_server.py");
        let mut child = Command::new(model::cache_dir().join("pyenv/bin/python"))
            .args([script, dir.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the setup's Python (deploy/setup.sh --python)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("port ").and_then(|p| p.parse().ok()).expect("`port N`");
        Server(child, port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.1)
    }

    /// The host's CPU time so far (it shares this machine's cores with the model).
    fn cpu(&self) -> Duration {
        cpu_time(&format!("/proc/{}/stat", self.0.id()))
    }
}

/// User and system CPU time of the process whose `/proc/<pid>/stat` is `stat`.
fn cpu_time(stat: &str) -> Duration {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<u64> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn image_spec(batch_size: usize) -> ImageSpec {
    let onnx = model::cache_dir().join("models/efficientnet-lite0/model.onnx");
    assert!(onnx.is_file(), "run deploy/setup.sh --python first");
    ImageSpec {
        name: "image".into(),
        image_url: Some("{image}".into()),
        onnx,
        output: Some("embedding".into()),
        preprocess: PreprocessSpec {
            resize: 256,
            crop: 224,
            mean: [127.0; 3],
            scale: [128.0; 3],
            channels: Channels::Rgb,
        },
        normalize: false,
        batch_size,
        max_url_bytes: 2048,
        worker_timeout_per_image: HumanDuration::parse("10s").unwrap(),
        skip_unchanged: false,
    }
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// The Prod2Vec-shaped job: two text towers (the setup's MiniLM, over the title and over the
/// description) and the image model, concatenated.
fn prod2vec_spec() -> JobSpec {
    let text = model::cache_dir().join("models/all-MiniLM-L6-v2");
    let image = image_spec(BATCH).onnx;
    JobSpec::from_toml(&format!(
        r#"
name = "prod2vec"
checkpoint_location = "/tmp/prod2vec"
[source]
bootstrap_servers = "127.0.0.1:9092"
subscribe = ["products"]
[input]
format = "json"
fields = {{ title = "/title", description = "/description", image = "/image_url" }}
required = ["title", "image"]
[[models]]
name = "title"
kind = "text-onnx"
text = "{{title}}"
onnx = "{t}/model.onnx"
tokenizer = "{t}/tokenizer.json"
[[models]]
name = "description"
kind = "text-onnx"
text = "{{description}}"
onnx = "{t}/model.onnx"
tokenizer = "{t}/tokenizer.json"
[[models]]
name = "image"
kind = "image-onnx"
image_url = "{{image}}"
onnx = "{i}"
output = "embedding"
preprocess = {{ resize = 256, crop = 224, mean = [127.0, 127.0, 127.0], scale = [128.0, 128.0, 128.0] }}
[[models]]
name = "product"
kind = "combine"
inputs = ["title", "description", "image"]
normalize = true
[fetch]
allow = ["127.0.0.1/32"]
[sink]
kind = "kafka"
topic = "out"
"#,
        t = text.display(),
        i = image.display()
    ))
    .unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_embedstream"));
    let lib = model::ort_library();
    let served = tempfile::tempdir().unwrap();
    let files = clip_art(IMAGES);
    let mut names = Vec::new();
    let mut bytes = 0;
    for (i, file) in files.iter().enumerate() {
        let name = format!("{i:03}.png");
        bytes += std::fs::copy(file, served.path().join(&name)).unwrap();
        names.push(name);
    }
    let server = Server::start(served.path());
    println!(
        "embedstream bench: EfficientNet-Lite0 on {IMAGES} openclipart PNGs ({:.0} kB on average) {ROUNDS} times \
         over, {cores} cores, {cores} workers, batches of {BATCH}\n",
        bytes as f64 / IMAGES as f64 / 1000.0
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build().unwrap();
    let spec = image_spec(BATCH);
    let dir = tempfile::tempdir().unwrap();
    let metrics = ExecutorMetrics::new("bench", "e", "image").fetch;
    let fetch = FetchSpec { allow: vec!["127.0.0.1/32".parse().unwrap()], ..FetchSpec::default() };
    let fetcher = Arc::new(Fetcher::new(fetch, metrics.clone()));
    let limits = BatchLimits { batch_size: BATCH, per_item: spec.worker_timeout_per_image.get() };
    let entry = ModelEntry::ImageOnnx(spec.clone());
    let workers = rt
        .block_on(Workers::start(&exe, &entry, cores, &lib, dir.path().join("images"), limits))
        .expect("the image model's workers");
    let pool = Arc::new(ImagePool::new(workers, fetcher.clone(), &spec, cores, metrics.clone()));

    // Each contender runs twice; the second run counts.
    let twice = |run: &dyn Fn() -> f64| {
        run();
        run()
    };
    // 1. Raw: tensors made beforehand, batches to every worker at once.
    let tensor_len = spec.preprocess.tensor_len();
    let decode_started = Instant::now();
    let tensors: Vec<Vec<f32>> = files
        .iter()
        .map(|f| {
            preprocess::tensor(&std::fs::read(f).unwrap(), &spec.preprocess, fetcher.max_pixels())
                .expect("a clip art decodes")
        })
        .collect();
    let decode_per_image_ms = decode_started.elapsed().as_secs_f64() * 1000.0 / IMAGES as f64;
    let frames: Vec<(usize, Vec<u8>)> =
        tensors.chunks(BATCH).map(|batch| (batch.len(), wire::encode_pixels(batch.concat(), tensor_len))).collect();
    let raw = twice(&|| {
        let started = Instant::now();
        rt.block_on(async {
            let all = frames.iter().cycle().take(frames.len() * ROUNDS);
            let calls = all.map(|(n, frame)| pool.workers().run(wire::IMAGES, frame, *n));
            futures::future::try_join_all(calls).await.unwrap();
        });
        rate(IMAGES * ROUNDS, started.elapsed())
    });
    // 2. From URLs, at once and with latency.
    // Each run's rate, and the CPU the image host and this process (fetching, decoding,
    // batching) spent an image.
    let from = |prefix: &str| {
        let urls: Vec<String> = (0..ROUNDS)
            .flat_map(|r| names.iter().map(move |n| (r, n)))
            .map(|(r, n)| server.url(&format!("{prefix}{n}?round={r}")))
            .collect();
        let run = || {
            let (host, here) = (server.cpu(), cpu_time("/proc/self/stat"));
            let started = Instant::now();
            let out = rt.block_on(pool.embed(urls.clone())).unwrap();
            assert!(out.failed.is_empty(), "{:?}", out.failed);
            let per_image = |d: Duration| d.as_secs_f64() * 1000.0 / urls.len() as f64;
            let cpu = (per_image(server.cpu() - host), per_image(cpu_time("/proc/self/stat") - here));
            (rate(urls.len(), started.elapsed()), cpu)
        };
        run();
        run()
    };
    // Fetching alone (no decoding, no model): how fast images arrive from the host.
    let fetch_only = {
        let urls: Vec<String> = (0..ROUNDS)
            .flat_map(|r| names.iter().map(move |n| (r, n)))
            .map(|(r, n)| server.url(&format!("/files/{n}?only={r}")))
            .collect();
        twice(&|| {
            let started = Instant::now();
            let all = rt.block_on(futures::future::join_all(urls.iter().map(|u| fetcher.fetch(u))));
            assert!(all.iter().all(Result::is_ok));
            rate(urls.len(), started.elapsed())
        })
    };
    let (local, (local_host_ms, local_here_ms)) = from("/files/");
    let (slow, _) = from(&format!("/slow/{LATENCY_MS}/"));

    // 3. The Prod2Vec-shaped pipeline on JSON records, images with the latency.
    let prod2vec = prod2vec_spec();
    let mut backends = Vec::new();
    for (i, m) in prod2vec.text_models().into_iter().enumerate() {
        let socket_dir = dir.path().join(format!("text-{i}"));
        let text = rt.block_on(WorkerPool::start(&exe, m, cores, &lib, socket_dir)).expect("a text tower");
        backends.push(Backend::Texts(Arc::new(text)));
    }
    backends.push(Backend::Images(pool.clone()));
    let pipeline = Arc::new(Pipeline::new(&prod2vec, backends).unwrap());
    let sentences = product_sentences(IMAGES);
    let records: Vec<Vec<u8>> = (0..IMAGES)
        .map(|i| {
            let image = server.url(&format!("/slow/{LATENCY_MS}/{}", names[i]));
            let (title, description) = &sentences[i];
            serde_json::json!({ "title": title, "description": description, "image_url": image })
                .to_string()
                .into_bytes()
        })
        .collect();
    let records_per_s = twice(&|| {
        let started = Instant::now();
        let prepared = pipeline.prepare(records.iter().map(|r| (None, Some(r.as_slice()), Vec::new())), None);
        assert!(prepared.refused.is_empty());
        let embedded = rt.block_on(pipeline.clone().embed(prepared.texts)).unwrap();
        let finished = pipeline.finish(&prepared.good, embedded);
        assert_eq!(finished.rows.len(), IMAGES);
        rate(IMAGES, started.elapsed())
    });

    println!("images/s                                      all cores   per core   vs raw   vs seed (1.5-3/s per CPU)");
    let row = |name: &str, r: f64| {
        let per = r / cores as f64;
        println!(
            "{name:<44} {r:>10.1} {per:>10.1} {:>7.2}x   {:.0}-{:.0}x",
            r / raw,
            per / SEED_PER_CPU.1,
            per / SEED_PER_CPU.0
        );
    };
    row("raw: preprocessed tensors to the workers", raw);
    row("from URLs, answered at once", local);
    row(&format!("from URLs, {LATENCY_MS} ms latency each"), slow);
    row("fetching alone (no decoding, no model)", fetch_only);
    println!(
        "\nProd2Vec shape (2 text towers + image, concatenated), {LATENCY_MS} ms latency: {records_per_s:.1} records/s"
    );
    println!("decoding and preprocessing one image, on one core: {decode_per_image_ms:.1} ms");
    println!(
        "CPU an image from URLs, on the model's cores: the image host {local_host_ms:.1} ms, this process (fetch, decode, \
         batches) {local_here_ms:.1} ms"
    );

    let report = serde_json::json!({
        "cores": cores, "images": IMAGES, "rounds": ROUNDS, "batch_size": BATCH, "latency_ms": LATENCY_MS,
        "raw_images_per_s": raw, "from_urls_images_per_s": local, "from_urls_with_latency_images_per_s": slow,
        "with_latency_vs_raw": slow / raw, "fetch_only_images_per_s": fetch_only, "prod2vec_records_per_s": records_per_s,
        "decode_ms_per_image": decode_per_image_ms, "host_cpu_ms_per_image": local_host_ms,
        "executor_side_cpu_ms_per_image": local_here_ms, "seed_per_cpu": [SEED_PER_CPU.0, SEED_PER_CPU.1],
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/embedstream-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("images.json"), serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    println!("report: {}", out.join("images.json").display());
}

/// A title and a description for each of `n` products.
fn product_sentences(n: usize) -> Vec<(String, String)> {
    const WORDS: &[&str] = &[
        "organic",
        "apple",
        "laptop",
        "stand",
        "ergonomic",
        "keyboard",
        "wireless",
        "mouse",
        "fresh",
        "banana",
        "steel",
        "wrench",
        "set",
        "bird",
        "feeder",
        "city",
        "bicycle",
        "office",
        "chair",
        "desk",
        "lamp",
        "with",
        "free",
        "shipping",
        "for",
        "home",
        "and",
        "garden",
    ];
    let words =
        |i: usize, len: usize| (0..len).map(|w| WORDS[(i * 7 + w * 5 + w * w) % WORDS.len()]).collect::<Vec<_>>();
    (0..n).map(|i| (words(i, 3 + i % 4).join(" "), words(i + 1, 12 + i % 20).join(" "))).collect()
}
