//! `[model]`: the ONNX model and tokenizer a query embeds with, and how texts are batched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::HumanDuration;
use super::SpecError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    /// Model id written in the `es.model` header. Default: the ONNX file's directory name.
    #[serde(default)]
    pub id: Option<String>,
    /// Texts longer than this many tokens are truncated, as sentence-transformers does.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    #[serde(default = "default_pooling")]
    pub pooling: Pooling,
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Texts per inference batch; batches are cut from length-sorted texts.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Texts ordered by token length together. A task embeds its records window by window, in
    /// offset order, and writes each window while the next is embedded: a larger window pads
    /// less, a smaller one delivers sooner. On mixed-length English, windows of 512, 256 and 128
    /// ran at 0.86, 0.75 and 0.55 times the speed of 2000 texts sorted together; 1024 at 0.98.
    #[serde(default = "default_sort_window")]
    pub sort_window: usize,
    /// Values longer than this go to the dead-letter topic instead of the model.
    #[serde(default = "default_max_text_bytes")]
    pub max_text_bytes: usize,
    /// How long a worker may take per text of a batch, on top of [`WORKER_GRACE`], before it
    /// counts as hung: it is killed, the daemon forks a new one and the batch is sent again.
    /// The default is some 50 times what the bundled MiniLM takes for a text of 128 tokens.
    #[serde(default = "default_worker_timeout_per_text")]
    pub worker_timeout_per_text: HumanDuration,
}

/// What every batch's deadline allows beyond its texts' share: a fresh fork's first page faults,
/// a worker finishing the batch of a caller that gave up.
pub const WORKER_GRACE: Duration = Duration::from_secs(5);

fn default_true() -> bool {
    true
}
fn default_max_seq_len() -> usize {
    128
}
fn default_pooling() -> Pooling {
    Pooling::Mean
}
fn default_batch_size() -> usize {
    32
}
fn default_sort_window() -> usize {
    1024
}
fn default_max_text_bytes() -> usize {
    64 * 1024
}
fn default_worker_timeout_per_text() -> HumanDuration {
    HumanDuration::parse("1s").expect("a valid duration")
}

impl ModelSpec {
    /// A model with the spec's defaults for everything but its files.
    pub fn new(onnx: PathBuf, tokenizer: PathBuf) -> ModelSpec {
        ModelSpec {
            onnx,
            tokenizer,
            id: None,
            max_seq_len: default_max_seq_len(),
            pooling: default_pooling(),
            normalize: true,
            batch_size: default_batch_size(),
            sort_window: default_sort_window(),
            max_text_bytes: default_max_text_bytes(),
            worker_timeout_per_text: default_worker_timeout_per_text(),
        }
    }

    /// How long a worker may take for a batch of `texts` texts before it counts as hung.
    pub fn worker_deadline(&self, texts: usize) -> Duration {
        WORKER_GRACE + self.worker_timeout_per_text.get().saturating_mul(texts.max(1) as u32)
    }

    pub fn model_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            self.onnx
                .parent()
                .and_then(Path::file_name)
                .or_else(|| self.onnx.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        })
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        let m = self;
        if !(1..=512).contains(&m.max_seq_len) {
            return Err(SpecError::new("model.max_seq_len", "must be between 1 and 512"));
        }
        if !(1..=4096).contains(&m.batch_size) {
            return Err(SpecError::new("model.batch_size", "must be between 1 and 4096"));
        }
        if m.sort_window < m.batch_size {
            return Err(SpecError::new("model.sort_window", "must be at least model.batch_size"));
        }
        if m.max_text_bytes == 0 {
            return Err(SpecError::new("model.max_text_bytes", "must be at least 1"));
        }
        if m.worker_timeout_per_text.get().is_zero() {
            return Err(SpecError::new(
                "model.worker_timeout_per_text",
                "must be a duration above zero, such as \"1s\"",
            ));
        }
        Ok(())
    }

    /// The model's files exist here (run where they are loaded: the driver and the executors).
    pub(super) fn check_files(&self) -> Result<(), SpecError> {
        for (key, path) in [("model.onnx", &self.onnx), ("model.tokenizer", &self.tokenizer)] {
            // A model on HDFS is checked where it is fetched, by the executor.
            if !crate::store::is_hdfs(path) && !path.is_file() {
                return Err(SpecError::new(key, format!("no such file: {}", path.display())));
            }
        }
        Ok(())
    }
}
