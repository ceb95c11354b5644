//! Reference computations in the setup's Python (deploy/setup.sh --python): what embedstream's
//! vectors are compared with, made by the libraries users would otherwise call.

use std::io::Write;
use std::process::{Command, Stdio};

use super::cache;

/// Runs the setup's Python on `args` with `input` as JSON on stdin; its stdout read as JSON.
fn python<T: serde::de::DeserializeOwned>(args: &[&str], input: &impl serde::Serialize) -> T {
    let mut child = Command::new(cache().join("pyenv/bin/python"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the setup's Python (deploy/setup.sh --python)");
    child.stdin.take().unwrap().write_all(serde_json::to_string(input).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python {args:?} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Python onnxruntime's embeddings of `texts` (tests/fixtures/make_reference.py).
pub fn onnx_embeddings(texts: &[String]) -> Vec<Vec<f32>> {
    onnx_embeddings_truncated(texts, 128)
}

/// Python onnxruntime's embeddings of `texts`' first `max_seq_len` tokens.
pub fn onnx_embeddings_truncated(texts: &[String], max_seq_len: usize) -> Vec<Vec<f32>> {
    python(&[&fixture("make_reference.py"), "--stdin", "--max-seq-len", &max_seq_len.to_string()], &texts)
}

/// Python onnxruntime's embeddings of `texts` as `long_text = "chunk"` makes them: the mean of
/// their windows' embeddings, normalised.
pub fn onnx_chunked_embeddings(texts: &[String], max_seq_len: usize, overlap: usize) -> Vec<Vec<f32>> {
    let (max_seq_len, overlap) = (max_seq_len.to_string(), overlap.to_string());
    python(&[&fixture("make_reference.py"), "--stdin", "--max-seq-len", &max_seq_len, "--chunk", &overlap], &texts)
}

/// The Python fastText package's sentence vectors of `texts` with the model at `model`.
pub fn fasttext_vectors(model: &std::path::Path, texts: &[String]) -> Vec<Vec<f32>> {
    python(&[&fixture("fasttext_reference.py"), model.to_str().unwrap()], &texts)
}

/// The combined vector as numpy makes it: the parts one after the other, over their norm.
pub fn numpy_concat(parts: &[&[f32]]) -> Vec<f32> {
    let script = "import json, sys, numpy as np\n\
                  v = np.concatenate([np.array(p, dtype=np.float32) for p in json.load(sys.stdin)])\n\
                  print(json.dumps([float(x) for x in v / np.linalg.norm(v)]))";
    python(&["-c", script], &parts)
}

/// Makes the tests' `combine` head (tests/fixtures/onnx_head.py) at `out`.
pub fn make_onnx_head(out: &std::path::Path) {
    let _: serde_json::Value = python(&[&fixture("onnx_head.py"), "make", out.to_str().unwrap()], &());
}

/// numpy's vectors of the head at `head` for each (title, text) pair, normalised.
pub fn numpy_head(head: &std::path::Path, pairs: &[(&[f32], &[f32])]) -> Vec<Vec<f32>> {
    python(&[&fixture("onnx_head.py"), "apply", head.to_str().unwrap()], &pairs)
}

/// The largest difference between two vectors of one length.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Python onnxruntime's vectors of the image files `files` from the image model `onnx`'s
/// `output`, each preprocessed by numpy as the executor does (tests/fixtures/image_reference.py).
pub fn onnx_image_vectors(
    onnx: &std::path::Path,
    output: &str,
    preprocess: &embedstream_core::spec::PreprocessSpec,
    files: &[std::path::PathBuf],
) -> Vec<Vec<f32>> {
    let list = |v: [f32; 3]| v.map(|x| x.to_string()).join(",");
    let mut args = vec![
        fixture("image_reference.py"),
        "embed".into(),
        onnx.display().to_string(),
        output.into(),
        preprocess.resize.to_string(),
        preprocess.crop.to_string(),
        list(preprocess.mean),
        list(preprocess.scale),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    python(&refs, &serde_json::Value::Null)
}

/// One window of a text as `chunk_pooling = "none"` outputs it: its token span and vector.
#[derive(Debug, serde::Deserialize)]
pub struct ChunkVector {
    pub start: usize,
    pub end: usize,
    pub vector: Vec<f32>,
}

/// Python onnxruntime's vector of each window of each text, with the window's token span.
pub fn onnx_each_chunk(texts: &[String], max_seq_len: usize, overlap: usize) -> Vec<Vec<ChunkVector>> {
    let (max_seq_len, overlap) = (max_seq_len.to_string(), overlap.to_string());
    let args = [&fixture("make_reference.py"), "--stdin", "--max-seq-len", &max_seq_len, "--chunk", &overlap];
    python(&[&args[..], &["--each-chunk"]].concat(), &texts)
}
