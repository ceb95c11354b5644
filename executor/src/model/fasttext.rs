//! `kind = "fasttext"`: a fastText model's sentence vectors, computed in the executor's own
//! process. A sentence vector is a hash lookup and a sum per word, some 20 µs for a product
//! text: the same model behind a socket, as a forked worker would be, ran at the same speed
//! (0.94 to 1.03 times, `benches/fasttext.rs`), so it runs here, with no daemon to start and
//! supervise. The model is loaded once per executor and shared by every task; a call's texts
//! are split over `threads` blocking threads.

use std::path::Path;
use std::sync::Arc;

use embedstream_core::spec::FastTextSpec;

use super::{Embed, Embedded, ModelError};

/// Texts below which a call is not split over threads.
const TEXTS_PER_THREAD: usize = 64;

pub struct FastTextModel {
    model: Arc<fasttext::FastText>,
    normalize: bool,
    dim: usize,
    threads: usize,
}

impl FastTextModel {
    /// Loads the model (`.bin` or `.ftz`); `threads` is how many of a call's texts run at once.
    pub fn load(spec: &FastTextSpec, threads: usize) -> Result<FastTextModel, ModelError> {
        let model = fasttext::FastText::load_model(&spec.model).map_err(|e| error(&spec.model, e))?;
        let dim = model.get_dimension() as usize;
        Ok(FastTextModel { model: Arc::new(model), normalize: spec.normalize, dim, threads: threads.max(1) })
    }

    /// The sentence vectors of `texts`, row-major.
    pub fn vectors(&self, texts: &[String]) -> Vec<f32> {
        sentence_vectors(&self.model, self.dim, self.normalize, texts)
    }
}

fn error(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::FastText { path: path.to_path_buf(), message: e.to_string() }
}

fn sentence_vectors(model: &fasttext::FastText, dim: usize, normalize: bool, texts: &[String]) -> Vec<f32> {
    let mut out = vec![0f32; texts.len() * dim];
    for (text, row) in texts.iter().zip(out.chunks_exact_mut(dim)) {
        // fastText reads one line: a line break inside a text is a space.
        let line: std::borrow::Cow<str> = match text.contains(['\n', '\r']) {
            true => text.replace(['\n', '\r'], " ").into(),
            false => text.into(),
        };
        model.get_sentence_vector_into(&line, row);
        if normalize {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            // A text of no known word or subword is the zero vector: left as it is, it is
            // written; over its norm it would be NaN and a dead letter.
            if norm > 0.0 {
                row.iter_mut().for_each(|x| *x /= norm);
            }
        }
    }
    out
}

impl Embed for FastTextModel {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(self: Arc<Self>, texts: Vec<String>) -> Embedded {
        Box::pin(async move {
            let texts = Arc::new(texts);
            let parts = self.threads.min(texts.len().div_ceil(TEXTS_PER_THREAD)).max(1);
            let per_part = texts.len().div_ceil(parts).max(1);
            let calls: Vec<_> = (0..parts)
                .map(|p| {
                    let (model, texts) = (self.model.clone(), texts.clone());
                    let (dim, normalize) = (self.dim, self.normalize);
                    tokio::task::spawn_blocking(move || {
                        let range = (p * per_part).min(texts.len())..((p + 1) * per_part).min(texts.len());
                        sentence_vectors(&model, dim, normalize, &texts[range])
                    })
                })
                .collect();
            let mut vectors = Vec::with_capacity(texts.len() * self.dim);
            for call in calls {
                vectors.extend(call.await.map_err(|e| ModelError::Inference(format!("fastText: {e}")))?);
            }
            Ok((vectors, vec![texts.len()]))
        })
    }
}
