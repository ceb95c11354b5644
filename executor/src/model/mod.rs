//! The model side of an executor, which runs apart from its async process:
//!
//! - [`session`]: the tokenizer and the ONNX Runtime session, pooling and normalisation (what a
//!   worker runs);
//! - [`daemon`]: `embedstream model-daemon`, which loads the model once and forks the workers;
//! - [`fork`]: the fork, `_exit` and parent-death signal under it (the executor's unsafe code);
//! - [`wire`]: the frames and Arrow IPC between the executor and its workers;
//! - [`workers`]: the executor's side: start and supervise the daemon, order texts by tokens,
//!   send batches to free workers.

pub mod daemon;
pub mod fork;
pub mod session;
pub mod wire;
pub mod workers;

pub use session::{cache_dir, init_runtime, load_tokenizer, ort_library, token_lengths, Embedder, ModelError};
