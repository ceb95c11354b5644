//! Images (issue 16). Preprocessing: the executor's tensors of real photos (the setup's cat and
//! coffee from scikit-image, as PNG, lossless WebP, JPEG, and a PNG fading to transparent)
//! against the numpy reference of tests/fixtures/image_reference.py over Pillow's decoders.
//! Fetching: the executor's fetcher against the tests' image host on loopback, each way a host
//! fails giving its reason, and loopback refused unless `fetch.allow` lists it.

mod common;

use std::process::Command;

use common::cache;
use common::image_server::ImageServer;
use embedstream_core::spec::image::{Channels, FetchSpec, PreprocessSpec};
use embedstream_core::spec::units::HumanDuration;
use embedstream_executor::images::fetch::{FetchError, Fetcher};
use embedstream_executor::images::preprocess;
use embedstream_executor::metrics::ExecutorMetrics;

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
        let ours = preprocess::tensor(&std::fs::read(file).unwrap(), &spec).unwrap();
        let want = reference(&spec, file);
        assert_eq!(ours.len(), want.len(), "{}", file.display());
        let worst = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-4, "{}: {worst}", file.display());
    }
    // Over white: the fading photo's clear rows (the crop's bottom fifth) are white in every
    // channel, (255 - 127) / 128 = 1.
    let ours = preprocess::tensor(&std::fs::read(&fading).unwrap(), &spec).unwrap();
    for c in 0..3 {
        let last_row = &ours[(c * 224 + 223) * 224..(c * 224 + 224) * 224];
        assert!(last_row.iter().all(|x| (x - 1.0).abs() < 1e-5), "channel {c}: the transparent end is white");
    }

    // JPEG decoders round differently (Pillow's libjpeg against the `image` crate's): near.
    let jpeg = dir.path().join("chelsea.jpg");
    let ours = preprocess::tensor(&std::fs::read(&jpeg).unwrap(), &spec).unwrap();
    let want = reference(&spec, &jpeg);
    let mean = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>() / ours.len() as f32;
    assert!(mean < 0.02, "JPEG: mean difference {mean}");
    eprintln!("JPEG: mean difference from Pillow's decoding {mean}");

    // BGR is the same values in the other order.
    let bgr = PreprocessSpec { channels: Channels::Bgr, ..spec.clone() };
    let png = std::fs::read(&exact[0]).unwrap();
    let (rgb, bgr) = (preprocess::tensor(&png, &spec).unwrap(), preprocess::tensor(&png, &bgr).unwrap());
    let plane = 224 * 224;
    assert_eq!(rgb[..plane], bgr[2 * plane..]);
    assert_eq!(rgb[plane..2 * plane], bgr[plane..2 * plane]);
}

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
