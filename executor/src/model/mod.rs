//! The model side of an executor, which runs apart from its async process:
//!
//! - [`session`]: the tokenizer and the ONNX Runtime session, pooling and normalisation (what a
//!   worker runs);
//! - [`daemon`]: `embedstream model-daemon`, which loads the model once and forks the workers;
//! - [`fork`]: the fork, `_exit` and parent-death signal under it (the executor's unsafe code);
//! - [`wire`]: the frames and Arrow IPC between the executor and its workers;
//! - [`workers`]: the executor's side: start and supervise the daemon, order texts by tokens,
//!   send batches to free workers.
//!
//! [`Embed`] is what the rest of the executor (tasks, Arrow Flight) asks for: texts in, vectors
//! out. The forked [`workers::WorkerPool`] is its implementation; another backend (a GPU
//! session, a remote server) is one more.

pub mod daemon;
pub mod fork;
pub mod session;
pub mod wire;
pub mod workers;

pub use session::{cache_dir, init_runtime, load_tokenizer, ort_library, token_lengths, Embedder, ModelError};

use std::sync::Arc;

use futures::future::BoxFuture;

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
