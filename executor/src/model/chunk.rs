//! `long_text = "chunk"`: a text model's long texts embedded in pieces. Each text is split by
//! the model's own tokenizer into windows of `max_seq_len` tokens (less its special tokens)
//! that overlap by `chunk_overlap`; each window's text (the source between its first token's
//! start and its last token's end) is embedded by the model's workers as any text is, in their
//! length-sorted batches; a text's vector is the mean of its chunks' (`chunk_pooling = "mean"`),
//! scaled to length 1 if the model normalises, or each chunk is an output of its own with its
//! index and token span (`chunk_pooling = "none"`, [`Chunked::embed_each`]). A text that fits one window is embedded whole,
//! as `truncate` would. A window cut inside a word starts its text mid-word, which the
//! tokenizer reads as a word of its own: a chunk may then be a token or two over the window and
//! lose them to truncation.

use std::sync::Arc;

use embedstream_core::spec::ModelSpec;
use tokenizers::{PostProcessor, Tokenizer};

use super::{Embed, Embedded, ModelError};

pub struct Chunked {
    inner: Arc<dyn Embed>,
    tokenizer: Tokenizer,
    /// Tokens a chunk holds, and how far the next one starts.
    window: usize,
    stride: usize,
    normalize: bool,
}

impl Chunked {
    /// `inner` (the model's workers) embedding the chunks of `spec`'s texts.
    pub fn new(inner: Arc<dyn Embed>, spec: &ModelSpec) -> Result<Chunked, ModelError> {
        let tok_err = |message: String| ModelError::Tokenizer { path: spec.tokenizer.clone(), message };
        let mut tokenizer = Tokenizer::from_file(&spec.tokenizer).map_err(|e| tok_err(e.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| tok_err(e.to_string()))?;
        let special = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        let window = spec.max_seq_len.saturating_sub(special).max(1);
        // Validated: the overlap is at most half the window.
        let stride = window.saturating_sub(spec.chunk_overlap).max(1);
        Ok(Chunked { inner, tokenizer, window, stride, normalize: spec.normalize })
    }

    /// `text`'s chunks: itself if it fits one window, else each window's source text.
    pub fn chunks<'t>(&self, text: &'t str) -> Vec<&'t str> {
        self.windows(text).into_iter().map(|(piece, _)| piece).collect()
    }

    /// `text`'s chunks with their spans of its tokens (first, past the last).
    fn windows<'t>(&self, text: &'t str) -> Vec<(&'t str, (usize, usize))> {
        let Ok(encoding) = self.tokenizer.encode(text, false) else { return vec![(text, (0, 0))] };
        let offsets = encoding.get_offsets();
        if offsets.len() <= self.window {
            return vec![(text, (0, offsets.len()))];
        }
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + self.window).min(offsets.len());
            out.push((&text[offsets[start].0..offsets[end - 1].1], (start, end)));
            if end == offsets.len() {
                return out;
            }
            start += self.stride;
        }
    }

    /// One vector a chunk (`chunk_pooling = "none"`): the chunks' vectors, one after the other,
    /// each chunk's text, index and token span, and the size of each batch that ran.
    pub async fn embed_each(&self, texts: Vec<String>) -> Result<EachChunk, ModelError> {
        let mut spans = Vec::new();
        let mut pieces = Vec::new();
        for (t, text) in texts.iter().enumerate() {
            for (index, (piece, (start, end))) in self.windows(text).into_iter().enumerate() {
                spans.push(ChunkSpan { text: t, index, start, end });
                pieces.push(piece.to_string());
            }
        }
        let (vectors, batch_sizes) = self.inner.clone().embed(pieces).await?;
        Ok(EachChunk { vectors, spans, batch_sizes })
    }
}

/// Where a chunk's vector comes from: its text (in the call's order), its index among that
/// text's chunks, and its span of the text's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    pub text: usize,
    pub index: usize,
    pub start: usize,
    pub end: usize,
}

/// What [`Chunked::embed_each`] gives.
pub struct EachChunk {
    pub vectors: Vec<f32>,
    pub spans: Vec<ChunkSpan>,
    pub batch_sizes: Vec<usize>,
}

impl Embed for Chunked {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn embed(self: Arc<Self>, texts: Vec<String>) -> Embedded {
        let mut counts = Vec::with_capacity(texts.len());
        let mut pieces = Vec::with_capacity(texts.len());
        for text in &texts {
            let chunks = self.chunks(text);
            counts.push(chunks.len());
            pieces.extend(chunks.into_iter().map(str::to_string));
        }
        let call = self.inner.clone().embed(pieces);
        Box::pin(async move {
            let (vectors, batches) = call.await?;
            let dim = self.dim();
            let mut out = Vec::with_capacity(texts.len() * dim);
            let mut rows = vectors.chunks_exact(dim);
            for count in counts {
                let mut mean = vec![0f32; dim];
                for row in rows.by_ref().take(count) {
                    mean.iter_mut().zip(row).for_each(|(m, x)| *m += x / count as f32);
                }
                if self.normalize {
                    super::session::l2_normalize(&mut mean);
                }
                out.extend(mean);
            }
            Ok((out, batches))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::testing::Lengths;

    fn chunked(max_seq_len: usize, overlap: usize) -> Chunked {
        let dir = crate::model::cache_dir().join("models/all-MiniLM-L6-v2");
        let spec = ModelSpec {
            max_seq_len,
            chunk_overlap: overlap,
            normalize: false,
            ..ModelSpec::new(dir.join("model.onnx"), dir.join("tokenizer.json"))
        };
        Chunked::new(Arc::new(Lengths), &spec).expect("deploy/setup.sh's tokenizer")
    }

    #[test]
    fn windows_cover_the_text_and_overlap() {
        // 10 + 2 special tokens a window, 4 shared: words of one token each start at 0, 6, 12.
        let c = chunked(12, 4);
        let words: Vec<String> = (0..20).map(|i| ["red", "blue", "green", "black"][i % 4].to_string()).collect();
        let text = words.join(" ");
        let chunks = c.chunks(&text);
        assert_eq!(chunks, [words[0..10].join(" "), words[6..16].join(" "), words[12..20].join(" ")]);
        // A short text is itself.
        assert_eq!(c.chunks("red blue"), ["red blue"]);
    }

    #[tokio::test]
    async fn a_texts_vector_is_its_chunks_mean() {
        let c = Arc::new(chunked(12, 4));
        let long = (0..20).map(|_| "red").collect::<Vec<_>>().join(" ");
        let (vectors, batches) = c.clone().embed(vec!["hat".into(), long]).await.unwrap();
        // "hat" alone; the long text's three chunks are 10, 10 and 8 words of 3 bytes and a space.
        let mean = (39.0 + 39.0 + 31.0) / 3.0;
        assert_eq!(vectors, [3.0, 1.0, mean, 1.0]);
        assert_eq!(batches, [4]);
    }

    #[tokio::test]
    async fn each_chunk_is_an_output_with_its_span() {
        let c = chunked(12, 4);
        let long = (0..20).map(|_| "red").collect::<Vec<_>>().join(" ");
        let each = c.embed_each(vec![long, "hat".into()]).await.unwrap();
        let spans: Vec<(usize, usize, usize, usize)> =
            each.spans.iter().map(|s| (s.text, s.index, s.start, s.end)).collect();
        assert_eq!(spans, [(0, 0, 0, 10), (0, 1, 6, 16), (0, 2, 12, 20), (1, 0, 0, 1)]);
        assert_eq!(each.vectors, [39.0, 1.0, 39.0, 1.0, 31.0, 1.0, 3.0, 1.0]);
    }
}
