//! The embedding model: a Hugging Face tokenizer and an ONNX Runtime session.
//!
//! [`Embedder::embed`] tokenizes every text of a task, orders them by token length and cuts
//! batches of `batch_size` from that order, so each batch pads only to its own longest text
//! (the shipped tokenizer.json pads everything to 128 tokens; that setting is switched off).
//! Pooling and normalisation are those of sentence-transformers: the mean of the token vectors
//! under the attention mask (or the CLS vector), then L2 normalisation.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use embedstream_core::spec::{ModelSpec, Pooling};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use tokenizers::{Encoding, Tokenizer, TruncationParams};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("ONNX Runtime library {path}: {message} (run deploy/setup.sh, or set EMBEDSTREAM_ORT_LIB)")]
    Runtime { path: PathBuf, message: String },
    #[error("model {path}: {message}")]
    Onnx { path: PathBuf, message: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("fastText model {path}: {message}")]
    FastText { path: PathBuf, message: String },
    #[error("tokenizer {tokenizer} does not fit model {model}: {message}")]
    Mismatch { tokenizer: PathBuf, model: PathBuf, message: String },
    #[error("inference: {0}")]
    Inference(String),
    #[error("model daemon: {0}")]
    Daemon(String),
}

/// The ONNX Runtime shared library: `EMBEDSTREAM_ORT_LIB`, else `ORT_DYLIB_PATH`, else
/// `lib/libonnxruntime.so` in the setup cache (`EMBEDSTREAM_CACHE`, default
/// `~/.cache/embedstream`).
pub fn ort_library() -> PathBuf {
    for var in ["EMBEDSTREAM_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
    }
    cache_dir().join("lib").join("libonnxruntime.so")
}

/// Where deploy/setup.sh puts the broker, ONNX Runtime and models.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("EMBEDSTREAM_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("embedstream")
}

/// A session's settings, every session of the project alike: `intra_threads` intra-op threads,
/// one inter-op thread, sequential, no spinning (a worker's session is forked from the daemon's
/// and must not hold threads that spin or a pool the fork would copy half of).
pub(crate) fn session_builder(intra_threads: usize) -> ort::Result<SessionBuilder> {
    Session::builder()
        .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3))
        .and_then(|b| b.with_intra_threads(intra_threads.max(1)))
        .and_then(|b| b.with_inter_threads(1))
        .and_then(|b| b.with_parallel_execution(false))
        .and_then(|b| b.with_intra_op_spinning(false))
        .and_then(|b| b.with_inter_op_spinning(false))
}

/// Loads ONNX Runtime from `lib` once per process; later calls do nothing.
pub fn init_runtime(lib: &Path) -> Result<(), ModelError> {
    let err = |message: String| ModelError::Runtime { path: lib.to_path_buf(), message };
    if !lib.is_file() {
        return Err(err("no such file".into()));
    }
    ort::init_from(lib.display().to_string()).with_name("embedstream").commit().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// The spec's tokenizer, without the padding its file may ask for (batches pad to their own
/// longest text) and truncating at `max_seq_len`.
pub fn load_tokenizer(spec: &ModelSpec) -> Result<Tokenizer, ModelError> {
    let tok_err = |message: String| ModelError::Tokenizer { path: spec.tokenizer.clone(), message };
    let mut tokenizer = Tokenizer::from_file(&spec.tokenizer).map_err(|e| tok_err(e.to_string()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams { max_length: spec.max_seq_len, ..Default::default() }))
        .map_err(|e| tok_err(e.to_string()))?;
    Ok(tokenizer)
}

/// Each text's encoding with the special tokens, by a tokenizer from [`load_tokenizer`]; the first
/// text the tokenizer refuses fails them all.
pub fn encode_all<S: AsRef<str>>(tokenizer: &Tokenizer, texts: &[S]) -> Result<Vec<Encoding>, ModelError> {
    (texts.iter())
        .map(|t| tokenizer.encode(t.as_ref(), true).map_err(|e| ModelError::Inference(format!("tokenizer: {e}"))))
        .collect()
}

/// Token count of each text (after truncation), for ordering texts before batches are cut.
pub fn token_lengths(tokenizer: &Tokenizer, texts: &[String]) -> Vec<usize> {
    texts.iter().map(|t| tokenizer.encode(t.as_str(), true).map_or(usize::MAX, |e| e.len())).collect()
}

pub struct Embedder {
    tokenizer: Tokenizer,
    session: Mutex<Session>,
    /// The inputs the model takes, among input_ids, attention_mask, token_type_ids.
    wants_token_types: bool,
    output: String,
    dim: usize,
    spec: ModelSpec,
}

impl Embedder {
    /// Loads the tokenizer and the model with `intra_threads` ONNX Runtime threads, and runs one
    /// warm-up batch, which also proves that the tokenizer fits the model.
    pub fn load(spec: &ModelSpec, intra_threads: usize) -> Result<Embedder, ModelError> {
        let tokenizer = load_tokenizer(spec)?;

        let onnx_err = |e: ort::Error| ModelError::Onnx { path: spec.onnx.clone(), message: e.to_string() };
        let session = session_builder(intra_threads).and_then(|b| b.commit_from_file(&spec.onnx)).map_err(onnx_err)?;
        let inputs: Vec<String> = session.inputs.iter().map(|i| i.name.clone()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !inputs.iter().any(|n| n == required) {
                return Err(ModelError::Onnx {
                    path: spec.onnx.clone(),
                    message: format!("has no `{required}` input (inputs: {inputs:?}); not a transformer encoder"),
                });
            }
        }
        let output = session
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .find(|n| n == "last_hidden_state")
            .or_else(|| session.outputs.first().map(|o| o.name.clone()))
            .ok_or_else(|| ModelError::Onnx { path: spec.onnx.clone(), message: "has no outputs".into() })?;

        let mut embedder = Embedder {
            wants_token_types: inputs.iter().any(|n| n == "token_type_ids"),
            tokenizer,
            session: Mutex::new(session),
            output,
            dim: 0,
            spec: spec.clone(),
        };
        // Warm up with text whose tokens span the vocabulary's ranges; a tokenizer made for
        // another model yields ids the embedding table does not have, and fails here.
        let probe = "Warm-up: the quick brown fox, 12345, naïve café, zebra xylophone quartz!";
        let enc = embedder.encode(&[probe])?;
        let rows: Vec<(&[u32], &[u32])> = enc.iter().map(|e| (e.get_ids(), e.get_type_ids())).collect();
        let (vectors, dim) = embedder.run_batch(&rows).map_err(|e| ModelError::Mismatch {
            tokenizer: spec.tokenizer.clone(),
            model: spec.onnx.clone(),
            message: e.to_string(),
        })?;
        if dim == 0 || vectors.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::Mismatch {
                tokenizer: spec.tokenizer.clone(),
                model: spec.onnx.clone(),
                message: "the warm-up batch gave no finite vector".into(),
            });
        }
        embedder.dim = dim;
        Ok(embedder)
    }

    /// Length of each vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokenizes `texts` (no padding, truncated at `max_seq_len`).
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Encoding>, ModelError> {
        encode_all(&self.tokenizer, texts)
    }

    /// Embeds `texts`; the result holds `texts.len() * dim()` values, text `i` at `i * dim()`.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<f32>, ModelError> {
        self.embed_encoded(&self.encode(texts)?)
    }

    /// [`Embedder::embed`] for texts tokenized already: ordered by length, cut into batches.
    pub fn embed_encoded(&self, encodings: &[Encoding]) -> Result<Vec<f32>, ModelError> {
        let rows: Vec<(&[u32], &[u32])> = encodings.iter().map(|e| (e.get_ids(), e.get_type_ids())).collect();
        self.embed_tokens(&rows)
    }

    /// Embeds texts given as their tokenizer's (ids, type ids), unpadded (the executor's
    /// tokenization, sent to a worker): ordered by length, cut into batches.
    pub fn embed_tokens(&self, rows: &[(&[u32], &[u32])]) -> Result<Vec<f32>, ModelError> {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].0.len());
        let mut out = vec![0f32; rows.len() * self.dim];
        for chunk in order.chunks(self.spec.batch_size) {
            let batch: Vec<(&[u32], &[u32])> = chunk.iter().map(|&i| rows[i]).collect();
            let (vectors, dim) = self.run_batch(&batch)?;
            debug_assert_eq!(dim, self.dim);
            for (row, &i) in chunk.iter().enumerate() {
                out[i * dim..(i + 1) * dim].copy_from_slice(&vectors[row * dim..(row + 1) * dim]);
            }
        }
        Ok(out)
    }

    /// Runs one batch of unpadded (ids, type ids) padded to its longest; returns pooled (and
    /// normalised) vectors. Every token of a text is attended to (the tokenizer pads nothing).
    fn run_batch(&self, batch: &[(&[u32], &[u32])]) -> Result<(Vec<f32>, usize), ModelError> {
        let rows = batch.len();
        let width = batch.iter().map(|e| e.0.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; rows * width];
        let mut mask = vec![0i64; rows * width];
        let mut types = vec![0i64; rows * width];
        for (r, (text_ids, text_types)) in batch.iter().enumerate() {
            for (c, (&id, &t)) in text_ids.iter().zip(text_types.iter()).enumerate() {
                ids[r * width + c] = id as i64;
                mask[r * width + c] = 1;
                types[r * width + c] = t as i64;
            }
        }
        let inference = |e: ort::Error| ModelError::Inference(e.to_string());
        let tensor = |v: Vec<i64>| Tensor::from_array(([rows, width], v)).map_err(inference);
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> =
            vec![("input_ids".into(), tensor(ids)?.into()), ("attention_mask".into(), tensor(mask.clone())?.into())];
        if self.wants_token_types {
            inputs.push(("token_type_ids".into(), tensor(types)?.into()));
        }

        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(inputs).map_err(inference)?;
        let (shape, hidden) = outputs[self.output.as_str()].try_extract_tensor::<f32>().map_err(inference)?;
        if shape.len() != 3 || shape[0] as usize != rows || shape[1] as usize != width {
            return Err(ModelError::Inference(format!(
                "output `{}` has shape {shape:?}, not [batch, tokens, dim]",
                self.output
            )));
        }
        let dim = shape[2] as usize;
        let mut pooled = vec![0f32; rows * dim];
        for r in 0..rows {
            let v = &mut pooled[r * dim..(r + 1) * dim];
            pool(
                self.spec.pooling,
                &hidden[r * width * dim..(r + 1) * width * dim],
                &mask[r * width..(r + 1) * width],
                v,
            );
            if self.spec.normalize {
                l2_normalize(v);
            }
        }
        Ok((pooled, dim))
    }
}

/// Pools one text's token vectors (`tokens` is `width * dim`) into `out` (`dim`).
/// Mean pooling sums the vectors under the mask and divides by the mask's sum, clamped at 1e-9,
/// as sentence-transformers does.
fn pool(pooling: Pooling, tokens: &[f32], mask: &[i64], out: &mut [f32]) {
    let dim = out.len();
    match pooling {
        Pooling::Cls => out.copy_from_slice(&tokens[..dim]),
        Pooling::Mean => {
            let mut count = 0f32;
            for (t, &m) in mask.iter().enumerate() {
                if m != 0 {
                    count += 1.0;
                    for (o, x) in out.iter_mut().zip(&tokens[t * dim..(t + 1) * dim]) {
                        *o += x;
                    }
                }
            }
            let count = count.max(1e-9);
            out.iter_mut().for_each(|o| *o /= count);
        }
    }
}

/// Divides by the L2 norm, clamped at 1e-12 as torch's `F.normalize` does.
pub(crate) fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_ignores_masked_tokens() {
        let tokens = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0]; // 3 tokens of dim 2
        let mut out = [0.0; 2];
        pool(Pooling::Mean, &tokens, &[1, 1, 0], &mut out);
        assert_eq!(out, [2.0, 3.0]);
        pool(Pooling::Cls, &tokens, &[1, 1, 0], &mut out);
        assert_eq!(out, [1.0, 2.0]);
    }

    #[test]
    fn normalisation_gives_unit_length() {
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut zero = [0.0, 0.0];
        l2_normalize(&mut zero);
        assert_eq!(zero, [0.0, 0.0]);
    }
}
