//! Images (issue 16). Preprocessing: the executor's tensors of real photos (the setup's cat and
//! coffee from scikit-image, as PNG, lossless WebP, JPEG, and a PNG fading to transparent)
//! against the numpy reference of tests/fixtures/image_reference.py over Pillow's decoders.
//! Fetching: the executor's fetcher against the tests' image host on loopback, each way a host
//! fails giving its reason, and loopback refused unless `fetch.allow` lists it.
//! The `image-onnx` model: a product-shaped job (JSON records with a title, a description and
//! an image URL; two text models, EfficientNet-Lite0 and a concatenation) against a real
//! Apache Kafka broker gives Python onnxruntime's vectors, and every image that cannot be had
//! is a dead letter with its reason. The image model's forked workers: one killed mid-batch is
//! replaced and every image gets its vector once; clip art of one of Debian's openclipart
//! folders is nearer its own folder than another's.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::image_server::ImageServer;
use common::reference::{max_diff, numpy_concat, onnx_embeddings, onnx_image_vectors};
use common::table::read_vectors;
use common::*;
use embedstream_core::spec::image::{Channels, FetchSpec, PreprocessSpec};
use embedstream_core::spec::units::HumanDuration;
use embedstream_core::spec::{ImageSpec, ModelEntry};
use embedstream_executor::images::fetch::{FetchError, Fetcher};
use embedstream_executor::images::pool::ImagePool;
use embedstream_executor::images::preprocess;
use embedstream_executor::metrics::ExecutorMetrics;
use embedstream_executor::model::workers::{BatchLimits, Workers};

fn python(args: &[&str]) -> Vec<u8> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/image_reference.py");
    let out = Command::new(cache().join("pyenv/bin/python"))
        .arg(script)
        .args(args)
        .output()
        .expect("the setup's Python (deploy/setup.sh --python)");
    assert!(out.status.success(), "image_reference.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn reference(spec: &PreprocessSpec, file: &std::path::Path) -> Vec<f32> {
    let list = |v: [f32; 3]| v.map(|x| x.to_string()).join(",");
    let out = python(&[
        "tensor",
        &spec.resize.to_string(),
        &spec.crop.to_string(),
        &list(spec.mean),
        &list(spec.scale),
        file.to_str().unwrap(),
    ]);
    out.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn tensors_equal_the_numpy_reference() {
    let dir = tempfile::tempdir().unwrap();
    python(&["make", dir.path().to_str().unwrap()]);
    let photos = cache().join("images/photos");
    let spec = PreprocessSpec { resize: 256, crop: 224, mean: [127.0; 3], scale: [128.0; 3], channels: Channels::Rgb };
    let exact = [photos.join("chelsea.png"), photos.join("coffee.png"), dir.path().join("chelsea.webp")];
    let fading = dir.path().join("coffee-fading.png");
    for file in exact.iter().chain([&fading]) {
        let ours = preprocess::tensor(&std::fs::read(file).unwrap(), &spec, MAX_PIXELS).unwrap();
        let want = reference(&spec, file);
        assert_eq!(ours.len(), want.len(), "{}", file.display());
        let worst = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-4, "{}: {worst}", file.display());
    }
    // Over white: the fading photo's clear rows (the crop's bottom fifth) are white in every
    // channel, (255 - 127) / 128 = 1.
    let ours = preprocess::tensor(&std::fs::read(&fading).unwrap(), &spec, MAX_PIXELS).unwrap();
    for c in 0..3 {
        let last_row = &ours[(c * 224 + 223) * 224..(c * 224 + 224) * 224];
        assert!(last_row.iter().all(|x| (x - 1.0).abs() < 1e-5), "channel {c}: the transparent end is white");
    }

    // JPEG decoders round differently (Pillow's libjpeg against the `image` crate's): near.
    let jpeg = dir.path().join("chelsea.jpg");
    let ours = preprocess::tensor(&std::fs::read(&jpeg).unwrap(), &spec, MAX_PIXELS).unwrap();
    let want = reference(&spec, &jpeg);
    let mean = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>() / ours.len() as f32;
    assert!(mean < 0.02, "JPEG: mean difference {mean}");
    eprintln!("JPEG: mean difference from Pillow's decoding {mean}");

    // BGR is the same values in the other order.
    let bgr = PreprocessSpec { channels: Channels::Bgr, ..spec.clone() };
    let png = std::fs::read(&exact[0]).unwrap();
    let (rgb, bgr) =
        (preprocess::tensor(&png, &spec, MAX_PIXELS).unwrap(), preprocess::tensor(&png, &bgr, MAX_PIXELS).unwrap());
    let plane = 224 * 224;
    assert_eq!(rgb[..plane], bgr[2 * plane..]);
    assert_eq!(rgb[plane..2 * plane], bgr[plane..2 * plane]);
}

/// `fetch.max_pixels`'s default.
const MAX_PIXELS: u64 = 40_000_000;

fn duration(text: &str) -> HumanDuration {
    HumanDuration::parse(text).unwrap()
}

#[test]
fn fetches_follow_the_limits_and_every_failure_has_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let photo = std::fs::read(cache().join("images/photos/chelsea.png")).unwrap();
    std::fs::write(dir.path().join("cat.png"), &photo).unwrap();
    std::fs::write(dir.path().join("again.png"), &photo).unwrap();
    let server = ImageServer::start(dir.path());
    let spec = FetchSpec {
        concurrency: 2,
        timeout: duration("2s"),
        backoff: duration("10ms"),
        retries: 2,
        allow: vec!["127.0.0.1/32".parse().unwrap()],
        ..FetchSpec::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = ExecutorMetrics::new("q", "e", "image").fetch;
    let fetcher = Fetcher::new(spec.clone(), metrics.clone());
    let fetch = |fetcher: &Fetcher, path: &str| rt.block_on(fetcher.fetch(&server.url(path)));

    // The file, whole; through two relative redirects too.
    let got = fetch(&fetcher, "/files/cat.png").unwrap();
    assert_eq!((got.bytes.as_ref(), got.attempts), (photo.as_slice(), 1));
    assert_eq!(fetch(&fetcher, "/redirect/2/cat.png").unwrap().bytes.as_ref(), photo.as_slice());

    // Each failure's reason, and the transient one retried.
    let url = |path: &str| server.url(path);
    let fails = |path: &str| fetch(&fetcher, path).unwrap_err();
    assert_eq!(fails("/status/404"), FetchError::Status { url: url("/status/404"), status: 404 });
    assert_eq!(server.count("404"), 1, "a 404 is not retried");
    assert_eq!(fails("/status/503"), FetchError::Status { url: url("/status/503"), status: 503 });
    assert_eq!(server.count("503"), 3, "a 503 is tried 1 + fetch.retries times");
    let flaky = fetch(&fetcher, "/flaky/k1/again.png").unwrap();
    assert_eq!((flaky.bytes.len(), flaky.attempts), (photo.len(), 2));
    let limit = 10 << 20;
    assert_eq!(fails("/huge"), FetchError::TooLarge { url: url("/huge"), limit });
    assert_eq!(fails("/huge-streamed"), FetchError::TooLarge { url: url("/huge-streamed"), limit });
    let e = fails("/html");
    assert_eq!(
        e.to_string(),
        format!("image URL `{}`: not an image (Content-Type text/html; charset=utf-8)", url("/html"))
    );
    assert_eq!(e.label(), "not_an_image");
    assert_eq!(fails("/redirect/5/cat.png"), FetchError::Redirects { url: url("/redirect/5/cat.png"), limit: 3 });
    let quick = Fetcher::new(FetchSpec { timeout: duration("300ms"), retries: 0, ..spec.clone() }, metrics.clone());
    assert!(matches!(fetch(&quick, "/hang"), Err(FetchError::Timeout { .. })));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = rt.block_on(quick.fetch(&format!("http://127.0.0.1:{closed}/a.png"))).unwrap_err();
    assert_eq!(e.label(), "connect", "{e}");

    // Internal addresses: loopback is refused by default, by literal and by name, and a
    // redirect to an address the allow list does not cover is refused too.
    let strict = Fetcher::new(FetchSpec { allow: vec![], ..spec.clone() }, metrics.clone());
    let e = fetch(&strict, "/files/cat.png").unwrap_err();
    assert_eq!(e.label(), "refused_address");
    assert!(e.to_string().contains("127.0.0.1, an internal address (fetch.allow does not list it)"), "{e}");
    let by_name = format!("http://localhost:{}/files/cat.png", server.port);
    assert_eq!(rt.block_on(strict.fetch(&by_name)).unwrap_err().label(), "refused_address");
    let elsewhere = format!("/redirect-to?url=http://127.0.0.2:{}/files/cat.png", server.port);
    assert!(
        matches!(fetch(&fetcher, &elsewhere), Err(FetchError::Refused { addr, .. }) if addr.to_string() == "127.0.0.2")
    );
    assert!(matches!(fetch(&fetcher, "/redirect-to?url=file:///etc/passwd"), Err(FetchError::BadUrl { .. })));

    // At most `concurrency` requests in flight: six slow images fetched at once.
    let slow = url("/slow/200/cat.png");
    let calls: Vec<_> = (0..6).map(|_| fetcher.fetch(&slow)).collect();
    let fetched = rt.block_on(futures::future::join_all(calls));
    assert!(fetched.iter().all(|f| f.as_ref().is_ok_and(|f| f.bytes.len() == photo.len())));
    assert_eq!(server.ask("/most-in-flight").trim(), "2");

    // Every fetch counted: 3 files and 6 slow ones, and each failure by its reason.
    assert_eq!(metrics.fetched.get(), 9);
    assert_eq!(metrics.bytes.get(), 9 * photo.len() as u64);
    assert_eq!(metrics.seconds.get_sample_count(), 9);
    let failures = |reason: &str| metrics.failures.with_label_values(&[reason]).get();
    assert_eq!(failures("http_status"), 2);
    assert_eq!((failures("too_large"), failures("not_an_image"), failures("redirects")), (2, 1, 1));
    assert_eq!((failures("timeout"), failures("connect")), (1, 1));
    assert_eq!((failures("refused_address"), failures("bad_url")), (3, 1));
}

/// EfficientNet-Lite0's preprocessing, as the issue states it.
fn effnet_preprocess() -> PreprocessSpec {
    PreprocessSpec { resize: 256, crop: 224, mean: [127.0; 3], scale: [128.0; 3], channels: Channels::Rgb }
}

fn effnet() -> PathBuf {
    let onnx = cache().join("models/efficientnet-lite0/model.onnx");
    assert!(onnx.is_file(), "{} is missing: run deploy/setup.sh --python", onnx.display());
    onnx
}

const EFFNET_DIM: usize = 1280;

/// The first `n` clip art PNGs of openclipart's `folder` (Debian's openclipart-png, installed
/// by deploy/setup.sh), in name order: files, not links, under 500 kB.
fn clip_art(folder: &str, n: usize) -> Vec<PathBuf> {
    let dir = Path::new("/usr/share/openclipart/png").join(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (deploy/setup.sh installs openclipart-png)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.len() < 500_000))
        .collect();
    files.sort();
    files.truncate(n);
    assert_eq!(files.len(), n, "{} has fewer than {n} PNGs", dir.display());
    files
}

const PRODUCT_MODELS: &str = r#"[input]
format = "json"
fields = { title = "/title", description = "/description", image = "/image_url" }
required = ["title", "image"]

[[models]]
name = "title"
kind = "text-onnx"
text = "{title}"
onnx = "TEXT/model.onnx"
tokenizer = "TEXT/tokenizer.json"
batch_size = 4

[[models]]
name = "text"
kind = "text-onnx"
text = "{title}. {description}"
onnx = "TEXT/model.onnx"
tokenizer = "TEXT/tokenizer.json"
batch_size = 8

[[models]]
name = "image"
kind = "image-onnx"
image_url = "{image}"
onnx = "IMAGE"
output = "embedding"
preprocess = { resize = 256, crop = 224, mean = [127.0, 127.0, 127.0], scale = [128.0, 128.0, 128.0] }
batch_size = 4

[[models]]
name = "product"
kind = "combine"
inputs = ["text", "image"]
normalize = true

[fetch]
concurrency = 8
timeout = "3s"
max_bytes = 4194304
retries = 1
backoff = "10ms"
allow = ["127.0.0.1/32"]"#;

#[test]
fn product_records_get_text_image_and_combined_vectors_and_images_that_fail_their_reason() {
    // The image host's files: the setup's photos, the same cat as lossless WebP and JPEG, the
    // coffee fading to transparent, and a file named .png that is not an image.
    let images = tempfile::tempdir().unwrap();
    let photos = cache().join("images/photos");
    for name in ["chelsea.png", "coffee.png"] {
        std::fs::copy(photos.join(name), images.path().join(name)).unwrap();
    }
    python(&["make", images.path().to_str().unwrap()]);
    std::fs::write(images.path().join("broken.png"), b"these bytes are not a PNG").unwrap();
    let server = ImageServer::start(images.path());

    // Good products: each photo by a plain URL, after a delay, and after a 503.
    let exact = ["chelsea.png", "coffee.png", "chelsea.webp", "coffee-fading.png"];
    let mut paths: Vec<(String, &str)> = Vec::new();
    for (n, name) in exact.iter().enumerate() {
        paths.push((format!("/files/{name}"), name));
        paths.push((format!("/slow/150/{name}"), name));
        paths.push((format!("/flaky/k{n}/{name}"), name));
    }
    paths.push(("/files/chelsea.jpg".to_string(), "chelsea.jpg"));
    let sentences = texts(2 * paths.len(), 31);
    let mut records: Vec<RawRecord> = Vec::new();
    let mut good: BTreeMap<i64, (String, String, &str)> = BTreeMap::new();
    for (n, (path, name)) in paths.iter().enumerate() {
        let (title, description) = (&sentences[2 * n], &sentences[2 * n + 1]);
        let doc = serde_json::json!({ "title": title, "description": description, "image_url": server.url(path) });
        good.insert(records.len() as i64, (title.clone(), format!("{title}. {description}"), *name));
        records.push((0, Some(format!("sku-{n}").into_bytes()), Some(doc.to_string().into_bytes())));
    }
    // Bad products, each with the start of its dead letter's reason.
    let url = |path: &str| server.url(path);
    let bad_images = [
        (url("/status/404"), format!("image URL `{}`: HTTP 404", url("/status/404"))),
        (url("/html"), format!("image URL `{}`: not an image (Content-Type text/html", url("/html"))),
        (url("/huge"), format!("image URL `{}`: over fetch.max_bytes = 4194304 bytes", url("/huge"))),
        (
            url("/files/broken.png"),
            format!("image URL `{}`: not an image (JPEG, PNG or WebP)", url("/files/broken.png")),
        ),
        (
            "http://10.255.255.1/a.png".to_string(),
            "image URL `http://10.255.255.1/a.png`: 10.255.255.1 is 10.255.255.1, an internal address".to_string(),
        ),
        ("ftp://127.0.0.1/a.png".to_string(), "image URL `ftp://127.0.0.1/a.png` is not an http(s) URL".to_string()),
    ];
    let mut bad: BTreeMap<i64, String> = BTreeMap::new();
    for (n, (image, reason)) in bad_images.into_iter().enumerate() {
        bad.insert(records.len() as i64, reason);
        let doc = serde_json::json!({ "title": format!("bad {n}"), "image_url": image });
        records.push((0, Some(format!("bad-{n}").into_bytes()), Some(doc.to_string().into_bytes())));
    }
    bad.insert(records.len() as i64, "required field `image` (/image_url) is missing".to_string());
    records.push((0, Some(b"no-image".to_vec()), Some(br#"{"title": "a mug"}"#.to_vec())));

    let broker = Broker::start();
    broker.create_topic("shop", 1);
    broker.produce("shop", &records);
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("vectors");
    let models = PRODUCT_MODELS
        .replace("TEXT", &model_dir().display().to_string())
        .replace("IMAGE", &effnet().display().to_string());
    let job =
        Job::new(&broker, "shop", "subscribe = [\"shop\"]\nmax_offsets_per_trigger = 12", "available_now = true", "")
            .with_models(&models)
            .with_parquet_sink(&table);
    let summary = run_job(&job, 1);
    assert_eq!(summary["embeddings"], good.len(), "{summary}");
    assert_eq!(summary["dead_letters"], bad.len(), "{summary}");
    assert_eq!(broker.committed("shop-group", "shop", 1), broker.high_watermarks("shop", 1), "every offset committed");

    // Every good record once, with the vectors Python computes for its text and its image.
    let columns = ["embedding_title", "embedding_text", "embedding_image", "embedding_product"];
    let (rows, count) = read_vectors(&table, &columns);
    assert_eq!(count, good.len());
    let files: Vec<PathBuf> = exact.iter().chain(["chelsea.jpg"].iter()).map(|n| images.path().join(n)).collect();
    let want_images = onnx_image_vectors(&effnet(), "embedding", &effnet_preprocess(), &files);
    let titles: Vec<String> = good.values().map(|(t, _, _)| t.clone()).collect();
    let texts: Vec<String> = good.values().map(|(_, t, _)| t.clone()).collect();
    let (want_texts, want_titles) = (onnx_embeddings(&texts), onnx_embeddings(&titles));
    let (mut worst, mut jpeg_cosine) = (0f32, 1f32);
    for (n, (offset, (_, _, name))) in good.iter().enumerate() {
        let (_, vectors) = rows.get(&(0, *offset)).unwrap_or_else(|| panic!("offset {offset} has no row"));
        let [title, text, image, product] = &vectors[..] else { panic!("four vector columns") };
        assert_eq!((text.len(), image.len(), product.len()), (DIM, EFFNET_DIM, DIM + EFFNET_DIM));
        let want_image = &want_images[files.iter().position(|f| f.ends_with(name)).unwrap()];
        worst = worst.max(max_diff(title, &want_titles[n])).max(max_diff(text, &want_texts[n]));
        worst = worst.max(max_diff(product, &numpy_concat(&[text, image])));
        if name.ends_with(".jpg") {
            jpeg_cosine = cosine(image, want_image);
        } else {
            worst = worst.max(max_diff(image, want_image));
        }
    }
    eprintln!("product job: max difference from Python {worst:e}; JPEG image's cosine to Pillow's {jpeg_cosine}");
    assert!(worst < 1e-4, "max difference from Python: {worst}");
    // JPEG decoders round differently (libjpeg under Pillow, the `image` crate here): near.
    assert!(jpeg_cosine > 0.99, "the JPEG's vector: cosine {jpeg_cosine} to Python's");
    // The slow and the flaky URLs gave the same image as the plain one; each image was
    // fetched once, the flaky one again after its 503.
    assert_eq!(server.count("chelsea.png"), 4, "plain, slow, and the flaky one twice (a 503, then the file)");

    // Every bad record in the dead-letter topic with its reason; nothing written twice.
    let dead = broker.read_all("shop-dlq", 1);
    assert_eq!(dead.len(), bad.len());
    for rec in &dead {
        let offset = rec.origin().1;
        let want = bad.get(&offset).unwrap_or_else(|| panic!("offset {offset} is not a bad record"));
        let reason = rec.header("es.error");
        assert!(reason.starts_with(want.as_str()), "offset {offset}: `{reason}`, want `{want}`");
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The mean cosine between each vector of `a` and each of `b` (each pair once when they are
/// the same list).
fn mean_cosine(a: &[Vec<f32>], b: &[Vec<f32>], same: bool) -> f32 {
    let mut sims = Vec::new();
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            if !same || j > i {
                sims.push(cosine(x, y));
            }
        }
    }
    sims.iter().sum::<f32>() / sims.len() as f32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_workers_replace_one_killed_mid_batch_and_clip_art_clusters_by_folder() {
    let (fruit, computers) = (clip_art("food/fruit", 8), clip_art("computer", 8));
    let served = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for (i, file) in fruit.iter().chain(&computers).enumerate() {
        let name = format!("{i:02}.png");
        std::fs::copy(file, served.path().join(&name)).unwrap();
        names.push(name);
    }
    let server = ImageServer::start(served.path());
    let spec = ImageSpec {
        name: "image".into(),
        image_url: None,
        onnx: effnet(),
        output: Some("embedding".into()),
        preprocess: effnet_preprocess(),
        normalize: false,
        batch_size: 2,
        max_url_bytes: 2048,
        worker_timeout_per_image: HumanDuration::parse("5s").unwrap(),
        skip_unchanged: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let limits = BatchLimits { batch_size: spec.batch_size, per_item: spec.worker_timeout_per_image.get() };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_embedstream"));
    let lib = embedstream_executor::model::ort_library();
    let entry = ModelEntry::ImageOnnx(spec.clone());
    let workers = Workers::start(&exe, &entry, 2, &lib, dir.path().join("sockets"), limits).await.unwrap();
    let metrics = ExecutorMetrics::new("q", "e", "image").fetch;
    let allow = FetchSpec { allow: vec!["127.0.0.1/32".parse().unwrap()], ..FetchSpec::default() };
    let fetcher = Arc::new(Fetcher::new(allow, metrics.clone()));
    let pool = Arc::new(ImagePool::new(workers, fetcher, &spec, 2, metrics.clone()));
    let urls: Vec<String> = names.iter().map(|n| server.url(&format!("/files/{n}"))).collect();
    let clean = pool.embed(urls.clone()).await.unwrap();
    assert!(clean.failed.is_empty(), "{:?}", clean.failed);
    assert_eq!(clean.batch_sizes.iter().sum::<usize>(), 16);

    // The same images again, and a worker killed while the batches run.
    let victim = pool.workers().state().worker_pids[0];
    let again = {
        let (pool, urls) = (pool.clone(), urls.clone());
        tokio::spawn(async move { pool.embed(urls).await })
    };
    until("a batch holds a worker", || pool.workers().idle_workers() < 2).await;
    Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap();
    let again = again.await.unwrap().unwrap();
    assert_eq!(again.batch_sizes.iter().sum::<usize>(), 16, "every image in exactly one batch");
    let differ = again.values.iter().zip(&clean.values).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differ, 0, "every image has its own vector despite the kill");
    let state = pool.workers().state();
    assert_eq!(state.restarts, 1, "the daemon forked one replacement");
    assert_ne!(state.worker_pids[0], victim);
    drop(state);
    assert_eq!(metrics.fetched.get(), 32);

    // The vectors are Python's, and fruit is nearer fruit than computers, computers nearer
    // computers than fruit.
    let vectors: Vec<Vec<f32>> = clean.values.chunks(EFFNET_DIM).map(<[f32]>::to_vec).collect();
    let files: Vec<PathBuf> = fruit.iter().chain(&computers).cloned().collect();
    let want = onnx_image_vectors(&effnet(), "embedding", &effnet_preprocess(), &files);
    let worst = vectors.iter().zip(&want).map(|(a, b)| max_diff(a, b)).fold(0f32, f32::max);
    assert!(worst < 1e-4, "max difference from Python: {worst}");
    let (f, c) = (&vectors[..8], &vectors[8..]);
    let (ff, cc, fc) = (mean_cosine(f, f, true), mean_cosine(c, c, true), mean_cosine(f, c, false));
    eprintln!("clip art: mean cosine fruit-fruit {ff:.3}, computer-computer {cc:.3}, fruit-computer {fc:.3}");
    assert!(ff > fc && cc > fc, "each folder nearer itself: {ff} {cc} against {fc}");
}

/// One image model over `/image_url`, fetching from loopback, for the bad-input tests.
fn image_only_models(fetch_extra: &str) -> String {
    format!(
        r#"[input]
format = "json"
fields = {{ image = "/image_url" }}
required = ["image"]

[[models]]
name = "image"
kind = "image-onnx"
image_url = "{{image}}"
onnx = "{}"
output = "embedding"
preprocess = {{ resize = 256, crop = 224, mean = [127.0, 127.0, 127.0], scale = [128.0, 128.0, 128.0] }}
batch_size = 4

[fetch]
concurrency = 32
timeout = "5s"
retries = 0
allow = ["127.0.0.1/32"]
{fetch_extra}"#,
        effnet().display()
    )
}

fn image_record(key: String, url: &str) -> RawRecord {
    (0, Some(key.into_bytes()), Some(serde_json::json!({ "image_url": url }).to_string().into_bytes()))
}

/// Issue 31, item 1: every failing URL used to be its own dead-letter class, and a task that
/// reported 2,500 of them (with 1,800-character URLs) outgrew gRPC's 4 MiB message: the batch
/// failed as not retryable, on every restart.
#[test]
fn many_distinct_dead_letter_reasons() {
    let images = tempfile::tempdir().unwrap();
    std::fs::copy(cache().join("images/photos/chelsea.png"), images.path().join("chelsea.png")).unwrap();
    let server = ImageServer::start(images.path());
    let mut records = Vec::new();
    for n in 0..2_500 {
        // Distinct, 1,800 characters long, and all 404.
        let path = format!("/status/404/{n:0>1780}");
        let url = server.url(&path);
        assert!(url.len() >= 1_800);
        records.push(image_record(format!("missing-{n}"), &url));
        if n % 500 == 0 {
            records.push(image_record(format!("good-{n}"), &server.url("/files/chelsea.png")));
        }
    }
    let broker = Broker::start();
    broker.create_topic("cdn", 1);
    broker.produce("cdn", &records);
    let job =
        Job::new(&broker, "cdn", "subscribe = [\"cdn\"]\nmax_offsets_per_trigger = 10000", "available_now = true", "")
            .with_models(&image_only_models(""));
    let summary = run_job(&job, 1);
    assert_eq!(summary["dead_letters"], 2_500, "{summary}");
    assert_eq!(summary["embeddings"], 5, "{summary}");
    assert_eq!(broker.committed("cdn-group", "cdn", 1), broker.high_watermarks("cdn", 1), "every offset committed");

    // One batch, its reasons counted under one class, the good images written.
    let progress = progress_records(&job);
    let batches: Vec<&serde_json::Value> = progress.iter().filter(|p| p["numInputRows"].as_u64() > Some(0)).collect();
    assert_eq!(batches.len(), 1, "{progress:?}");
    let reasons = &batches[0]["deadLetterReasons"];
    assert_eq!(reasons, &serde_json::json!({ "image URL `…`: HTTP 404": 2500 }), "{reasons}");
    let out = broker.read_all("cdn-out", 1);
    let mut keys: Vec<String> =
        out.iter().map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap()).into_owned()).collect();
    keys.sort();
    assert_eq!(keys, ["good-0", "good-1000", "good-1500", "good-2000", "good-500"]);
    let dead = broker.read_all("cdn-dlq", 1);
    assert_eq!(dead.len(), 2_500);
    for d in &dead {
        let reason = d.header("es.error");
        assert!(reason.starts_with("image URL `http://127.0.0.1:") && reason.ends_with("`: HTTP 404"), "{reason}");
    }
}

/// The bound on the executor's peak resident memory in [`decompression_bombs`]: its models'
/// processes are forked apart, so this is the executor's runtime, its Kafka clients and one
/// decoded image at a time a core (149 MiB measured). Decoding the 81-megapixel bomb alone took 1.5 GB before
/// `fetch.max_pixels`.
const EXECUTOR_PEAK_RSS: u64 = 300 << 20;

/// Issue 31, item 2: a 9000 x 9000 PNG of 250 KB decoded to 1.5 GB (RGB, RGBA, and floats of
/// the whole image). It is refused by its header now, and a 36-megapixel image under the
/// limit is resized from its 8-bit pixels.
#[test]
fn decompression_bombs() {
    let images = tempfile::tempdir().unwrap();
    let (bomb, large) = (images.path().join("bomb.png"), images.path().join("large.png"));
    python(&["solid", "9000", "9000", bomb.to_str().unwrap()]);
    python(&["solid", "6000", "6000", large.to_str().unwrap()]);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20, "a small file");
    std::fs::copy(cache().join("images/photos/chelsea.png"), images.path().join("chelsea.png")).unwrap();
    let server = ImageServer::start(images.path());
    let records = vec![
        image_record("cat".into(), &server.url("/files/chelsea.png")),
        image_record("bomb".into(), &server.url("/files/bomb.png")),
        image_record("large".into(), &server.url("/files/large.png")),
        image_record("cat-again".into(), &server.url("/files/chelsea.png")),
    ];
    let broker = Broker::start();
    broker.create_topic("bombs", 1);
    broker.produce("bombs", &records);
    // A continuous query, so that its executor's peak memory can be read once it is done.
    let models = image_only_models("max_bytes = 4194304");
    let job =
        Job::new(&broker, "bombs", "subscribe = [\"bombs\"]", "processing_time = \"200ms\"", "").with_models(&models);
    let mut running = Running::start(&job, 1);
    running.wait_until("the four records' batch", Duration::from_secs(120), |_| {
        progress_records(&job).iter().map(|p| p["numInputRows"].as_u64().unwrap_or(0)).sum::<u64>() == 4
    });
    let executors = running.executor_pids();
    assert_eq!(executors.len(), 1, "{}", running.log());
    let peak = vm_kb(executors[0], "VmHWM:") << 10;
    eprintln!("executor peak RSS {} MiB (bound {} MiB)", peak >> 20, EXECUTOR_PEAK_RSS >> 20);
    let summary = running.stop();
    assert_eq!(summary["dead_letters"], 1, "{summary}");
    assert_eq!(summary["embeddings"], 3, "{summary}");
    assert!(peak < EXECUTOR_PEAK_RSS, "executor peak RSS {} MiB", peak >> 20);
    let dead = broker.read_all("bombs-dlq", 1);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].header("es.error"),
        format!(
            "image URL `{}`: image is 9000 x 9000 pixels (81000000), over fetch.max_pixels = 40000000",
            server.url("/files/bomb.png")
        )
    );
    let mut out: Vec<String> = broker
        .read_all("bombs-out", 1)
        .iter()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap()).into_owned())
        .collect();
    out.sort();
    assert_eq!(out, ["cat", "cat-again", "large"], "no executor lost, every other image embedded");
}

/// Issue 31, item 5: an image host answering 503 (or not at all) made its records permanent
/// dead letters after two quick retries, and in upsert mode their keys kept their old
/// vectors. A transient failure that lasts the whole `fetch.retry_window` now fails the task:
/// retried, then the query stops with the reason, nothing is dead-lettered and no offset is
/// committed; a run once the host is back embeds every record.
#[test]
fn transient_image_failures() {
    let images = tempfile::tempdir().unwrap();
    std::fs::copy(cache().join("images/photos/chelsea.png"), images.path().join("chelsea.png")).unwrap();
    let server = ImageServer::start(images.path());
    let down = server.url("/status/503");
    let records = vec![
        image_record("cat".into(), &server.url("/files/chelsea.png")),
        image_record("cdn-down".into(), &down),
        image_record("missing".into(), &server.url("/status/404")),
    ];
    let broker = Broker::start();
    broker.create_topic("outage", 1);
    broker.produce("outage", &records);
    let models =
        image_only_models("retries = 20\nbackoff = \"10ms\"\nretry_window = \"1s\"").replace("retries = 0\n", "");
    let job = Job::new(&broker, "outage", "subscribe = [\"outage\"]", "available_now = true", "").with_models(&models);
    let (ok, _, log) = run_local(&job, Duration::from_secs(180));
    assert!(!ok, "the query stops while the host is down:\n{log}");
    assert!(log.contains(&format!("image URL `{down}`: HTTP 503, still after fetch.retry_window")), "{log}");
    let attempts = server.count("503");
    assert!(attempts > 3, "retried over the window and with the task: {attempts} requests");
    assert!(broker.read_all("outage-dlq", 1).is_empty(), "an outage is not a dead letter");
    assert_eq!(broker.try_committed("outage-group", "outage", 1), Some(vec![-1]), "no offset committed");
}
