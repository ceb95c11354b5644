//! Image preprocessing (issue 16): the executor's tensors of real photos (the setup's cat and
//! coffee from scikit-image, as PNG, lossless WebP, JPEG, and a PNG fading to transparent)
//! against the numpy reference of tests/fixtures/image_reference.py over Pillow's decoders.

mod common;

use std::process::Command;

use common::cache;
use embedstream_core::spec::image::{Channels, PreprocessSpec};
use embedstream_executor::images::preprocess;

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
