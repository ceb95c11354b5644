//! The model side of an executor, which runs apart from its async process:
//!
//! - [`session`]: the tokenizer and the ONNX Runtime session, pooling and normalisation (what a
//!   worker runs);
//! - [`daemon`]: `embedstream model-daemon`, which loads the model once and forks the workers;
//! - [`fork`]: the fork, `_exit` and parent-death signal under it (the executor's unsafe code);
//! - [`wire`]: the frames and Arrow IPC between the executor and its workers;
//! - [`workers`]: the executor's side: start and supervise the daemon, order texts by tokens,
//!   send batches to free workers;
//! - [`fasttext`]: fastText sentence vectors, computed in the executor's process (no workers);
//! - [`head`]: a `combine` entry's ONNX head over other models' vectors (in-process);
//! - [`cache`]: the embedding cache (`model.cache_bytes`) in front of a text model;
//! - [`chunk`]: long texts split by the tokenizer into overlapping windows, embedded by the
//!   model's workers and pooled (`long_text = "chunk"`).
//!
//! [`Embed`] is what the rest of the executor (tasks, Arrow Flight) asks for: texts in, vectors
//! out. The forked [`workers::WorkerPool`] (ONNX models) and [`fasttext::FastTextModel`] are
//! its implementations; another backend (a GPU session, a remote server) is one more.

pub mod cache;
pub mod chunk;
pub mod daemon;
pub mod fasttext;
pub mod fork;
pub mod head;
pub mod session;
pub mod wire;
pub mod workers;

pub use session::{cache_dir, init_runtime, load_tokenizer, ort_library, token_lengths, Embedder, ModelError};

use std::path::Path;
use std::sync::Arc;

use embedstream_core::store;
use embedstream_core::JobSpec;
use futures::future::BoxFuture;

/// Fetches the spec's model files that are on HDFS (`hdfs://...`) into `dir` and points the
/// spec at the copies: ONNX Runtime, the tokenizer and fastText read local files. Each executor
/// fetches once, at start; the workers then share the one loaded model.
pub fn fetch_from_hdfs(spec: &mut JobSpec, dir: &Path) -> Result<(), ModelError> {
    // `[model]`'s id comes from its path (its directory's name) unless the spec names it: keep
    // the one the driver derived, not the copy's.
    if let Some(m) = &mut spec.model {
        m.id = Some(m.model_id());
    }
    for (name, path) in spec.model_files_mut() {
        if !store::is_hdfs(path) {
            continue;
        }
        let local = dir.join(name);
        let started = std::time::Instant::now();
        store::download(path, &local)
            .map_err(|e| ModelError::Onnx { path: path.clone(), message: format!("cannot fetch it from HDFS: {e}") })?;
        tracing::info!(from = %path.display(), to = %local.display(), took = ?started.elapsed(), "model file fetched from HDFS");
        *path = local;
    }
    Ok(())
}

/// What [`Embed::embed`] gives back: the vectors, one after the other, and each model batch's
/// size.
/// Vectors (`dim` values a text, in the texts' order) and the size of each batch the model ran.
pub type Vectors = Result<(Vec<f32>, Vec<usize>), ModelError>;
pub type Embedded = BoxFuture<'static, Vectors>;

/// Texts in, vectors out.
pub trait Embed: Send + Sync {
    /// The length of one vector.
    fn dim(&self) -> usize;

    /// Embeds `texts`: `texts.len() * dim()` values, text `i` at `i * dim()`, and the size of
    /// each batch the model ran.
    fn embed(self: Arc<Self>, texts: Vec<String>) -> Embedded;
}

impl Embed for workers::WorkerPool {
    fn dim(&self) -> usize {
        workers::WorkerPool::dim(self)
    }

    fn embed(self: Arc<Self>, texts: Vec<String>) -> Embedded {
        Box::pin(async move { workers::WorkerPool::embed(&self, texts).await })
    }
}

/// Test doubles of [`Embed`] for the executor's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A text's vector is its length in bytes and 1, or NaN and 1 for a text that says "nan";
    /// one batch a call.
    pub struct Lengths;

    impl Embed for Lengths {
        fn dim(&self) -> usize {
            2
        }
        fn embed(self: Arc<Self>, texts: Vec<String>) -> Embedded {
            let v = texts.iter().flat_map(|t| [if t.contains("nan") { f32::NAN } else { t.len() as f32 }, 1.0]);
            let vectors: Vec<f32> = v.collect();
            Box::pin(async move { Ok((vectors, vec![texts.len()])) })
        }
    }
}
