//! The model path against a reference made with Python onnxruntime (tests/fixtures), and the
//! errors a bad model setup gives. Needs deploy/setup.sh's cache.

use std::path::PathBuf;

use embedstream_core::spec::ModelSpec;
use embedstream_executor::model::{self, Embedder, ModelError};

#[derive(serde::Deserialize)]
struct Reference {
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/reference_embeddings.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model_dir() -> PathBuf {
    let dir = model::cache_dir().join("models/all-MiniLM-L6-v2");
    assert!(dir.join("model.onnx").is_file(), "{} has no model: run deploy/setup.sh", dir.display());
    dir
}

fn spec(batch_size: usize) -> ModelSpec {
    let dir = model_dir();
    ModelSpec { batch_size, ..ModelSpec::new(dir.join("model.onnx"), dir.join("tokenizer.json")) }
}

fn embedder(batch_size: usize) -> Embedder {
    model::init_runtime(&model::ort_library()).unwrap();
    Embedder::load(&spec(batch_size), 1).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn vectors_match_python_onnxruntime_in_any_batching() {
    let r = reference();
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    // Batches of 1 (no padding), 3 (length-sorted, padded to the longest) and all at once.
    for batch_size in [1, 3, 32] {
        let e = embedder(batch_size);
        assert_eq!(e.dim(), 384);
        let got = e.embed(&texts).unwrap();
        for (i, want) in r.embeddings.iter().enumerate() {
            let v = &got[i * 384..(i + 1) * 384];
            let worst = v.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "batch_size {batch_size}, sentence {i} ({:?}): max diff {worst}", texts[i]);
        }
    }
}

#[test]
fn paraphrases_are_closer_than_unrelated_sentences() {
    let r = reference();
    let e = embedder(32);
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    let v = e.embed(&texts).unwrap();
    let at = |i: usize| &v[i * 384..(i + 1) * 384];
    // Sentences 0/1, 2/3 and 4/5 are paraphrase pairs; 6 and 7 are unrelated to all of them.
    for (a, b) in [(0, 1), (2, 3), (4, 5)] {
        let para = cosine(at(a), at(b));
        for other in [6, 7] {
            assert!(para > cosine(at(a), at(other)) + 0.2, "pair {a}/{b}: {para} vs {other}");
        }
    }
    for i in 0..texts.len() {
        let norm = cosine(at(i), at(i)).sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "sentence {i} has norm {norm}");
    }
}

#[test]
fn long_texts_are_truncated_not_refused() {
    let e = embedder(8);
    let long = "word ".repeat(2000);
    let v = e.embed(&[long.as_str(), "short"]).unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn start_errors_name_the_file() {
    model::init_runtime(&model::ort_library()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut missing = spec(4);
    missing.onnx = dir.path().join("absent.onnx");
    let e = Embedder::load(&missing, 1).err().unwrap();
    assert!(matches!(e, ModelError::Onnx { .. }) && e.to_string().contains("absent.onnx"), "{e}");

    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"this is not a protobuf model").unwrap();
    let mut bad_spec = spec(4);
    bad_spec.onnx = bad;
    let e = Embedder::load(&bad_spec, 1).err().unwrap();
    assert!(e.to_string().contains("bad.onnx"), "{e}");

    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, b"{\"not\": \"a tokenizer\"}").unwrap();
    let mut bad_tok = spec(4);
    bad_tok.tokenizer = tok;
    let e = Embedder::load(&bad_tok, 1).err().unwrap();
    assert!(matches!(e, ModelError::Tokenizer { .. }) && e.to_string().contains("tokenizer.json"), "{e}");

    let e = model::init_runtime(&dir.path().join("libonnxruntime.so")).unwrap_err();
    assert!(e.to_string().contains("libonnxruntime.so"), "{e}");
}
