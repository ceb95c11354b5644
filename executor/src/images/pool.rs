//! An `image-onnx` model's executor side: a window's image URLs in, one vector an image out, or
//! the reason an image has none (its fetch failed for good or its decoding failed: a dead
//! letter, not a failed task). An image whose host still fails transiently after the fetcher's
//! retries (`fetch.retry_window`) fails the window instead: an outage is retried, never
//! dead-lettered.
//!
//! Downloads run ahead of inference. Every URL of a window is fetched at once (the fetcher
//! bounds the downloads in flight by `fetch.concurrency`), each image is decoded and
//! preprocessed as it arrives (on blocking threads, at most one per core), and a batch of
//! `batch_size` tensors goes to a free worker as soon as it is full, in the order images
//! arrive: the workers compute while later images are still on the wire, and a slow host
//! delays only its own image.

use std::sync::Arc;

use embedstream_core::spec::ImageSpec;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Semaphore;

use super::fetch::Fetcher;
use super::preprocess;
use crate::metrics::FetchMetrics;
use crate::model::workers::Workers;
use crate::model::{wire, ModelError};

/// A window's vectors: `dim` values an image in the URLs' order (zeros where `failed` says
/// why there are none), the size of each batch the workers ran, and the images that failed.
pub struct ImageVectors {
    pub values: Vec<f32>,
    pub batch_sizes: Vec<usize>,
    pub failed: Vec<(usize, String)>,
}

pub struct ImagePool {
    workers: Workers,
    fetcher: Arc<Fetcher>,
    spec: ImageSpec,
    /// Decodes at once: one a core, as the workers are.
    decoders: Semaphore,
    metrics: FetchMetrics,
}

impl ImagePool {
    /// `workers` runs the model; `fetcher` is the executor's (its concurrency shared by every
    /// image model).
    pub fn new(workers: Workers, fetcher: Arc<Fetcher>, spec: &ImageSpec, cores: usize, metrics: FetchMetrics) -> Self {
        ImagePool { workers, fetcher, spec: spec.clone(), decoders: Semaphore::new(cores.max(1)), metrics }
    }

    pub fn dim(&self) -> usize {
        self.workers.dim()
    }

    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The vectors of the images at `urls`.
    pub async fn embed(self: &Arc<Self>, urls: Vec<String>) -> Result<ImageVectors, ModelError> {
        let dim = self.dim();
        let tensor_len = self.spec.preprocess.tensor_len();
        let mut arriving: FuturesUnordered<_> = urls
            .into_iter()
            .enumerate()
            .map(|(i, url)| {
                let pool = self.clone();
                async move { (i, pool.tensor(&url).await) }
            })
            .collect();
        let rows = arriving.len();
        let mut out = ImageVectors { values: vec![0f32; rows * dim], batch_sizes: Vec::new(), failed: Vec::new() };
        let mut batches = tokio::task::JoinSet::new();
        let mut batch: (Vec<usize>, Vec<f32>) = (Vec::new(), Vec::new());
        let mut send = |batch: &mut (Vec<usize>, Vec<f32>)| {
            let (rows, pixels) = std::mem::take(batch);
            let pool = self.clone();
            batches.spawn(async move {
                let request = wire::encode_pixels(pixels, tensor_len);
                let vectors = pool.workers.run(wire::IMAGES, &request, rows.len()).await;
                (rows, vectors)
            });
        };
        while let Some((i, tensor)) = arriving.next().await {
            match tensor {
                Ok(pixels) => {
                    batch.0.push(i);
                    batch.1.extend_from_slice(&pixels);
                    if batch.0.len() == self.spec.batch_size {
                        send(&mut batch);
                    }
                }
                Err(Unavailable::Permanently(reason)) => out.failed.push((i, reason)),
                Err(Unavailable::ForNow(reason)) => return Err(ModelError::Inference(reason)),
            }
        }
        if !batch.0.is_empty() {
            send(&mut batch);
        }
        while let Some(done) = batches.join_next().await {
            let (rows, vectors) = done.expect("image batches do not panic");
            let vectors = vectors?;
            for (r, &i) in rows.iter().enumerate() {
                out.values[i * dim..(i + 1) * dim].copy_from_slice(&vectors[r * dim..(r + 1) * dim]);
            }
            out.batch_sizes.push(rows.len());
        }
        out.failed.sort_unstable_by_key(|(i, _)| *i);
        Ok(out)
    }

    /// The image at `url` as the model's input tensor, or why there is none.
    async fn tensor(&self, url: &str) -> Result<Vec<f32>, Unavailable> {
        let fetched = self.fetcher.fetch(url).await.map_err(|e| match e.transient() {
            true => {
                Unavailable::ForNow(format!("{e}, still after fetch.retry_window (an outage: the task is retried)"))
            }
            false => Unavailable::Permanently(e.to_string()),
        })?;
        let _decoding = self.decoders.acquire().await.expect("the semaphore is never closed");
        let preprocess = self.spec.preprocess.clone();
        let max_pixels = self.fetcher.max_pixels();
        let tensor = tokio::task::spawn_blocking(move || preprocess::tensor(&fetched.bytes, &preprocess, max_pixels))
            .await
            .map_err(|e| Unavailable::Permanently(format!("decoding the image: {e}")))?;
        tensor.map_err(|why| {
            self.metrics.failures.with_label_values(&["decode"]).inc();
            Unavailable::Permanently(format!("image URL `{url}`: {why}"))
        })
    }
}

/// Why an image has no tensor.
enum Unavailable {
    /// Its URL, its bytes or its pixels will never do: a dead letter.
    Permanently(String),
    /// Its host did not answer, or answered 429 or 5xx, for the whole retry window: the
    /// window fails, and its task is retried.
    ForNow(String),
}
