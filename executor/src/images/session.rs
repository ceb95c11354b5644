//! An `image-onnx` model's ONNX Runtime session: what an image model's worker runs. It takes a
//! batch of preprocessed tensors (`[N, 3, crop, crop]`, made by the executor from the fetched
//! images) and gives one vector an image from the output the spec names: `[N, D]`, or
//! `[N, D, 1, 1]` as a pooled convolution gives it.
//!
//! Loaded once by the model daemon (one intra-op thread, as every forked session), checked on
//! load: one float input of `[batch, 3, crop, crop]` (a fixed size that differs from the spec's
//! crop is refused, naming both), and a warm-up image of zeros that must give a finite vector.

use std::path::PathBuf;
use std::sync::Mutex;

use embedstream_core::spec::ImageSpec;
use ort::session::Session;
use ort::value::{Tensor, ValueType};

use crate::model::ModelError;

pub struct ImageSession {
    path: PathBuf,
    session: Mutex<Session>,
    input: String,
    output: String,
    /// Values in one image's tensor, and its side.
    tensor_len: usize,
    crop: usize,
    normalize: bool,
    dim: usize,
}

impl ImageSession {
    pub fn load(spec: &ImageSpec) -> Result<ImageSession, ModelError> {
        let err = |message: String| ModelError::Onnx { path: spec.onnx.clone(), message };
        let session = crate::model::session::session_builder(1)
            .and_then(|b| b.commit_from_file(&spec.onnx))
            .map_err(|e| err(e.to_string()))?;
        let crop = spec.preprocess.crop as usize;
        let [input] = &session.inputs[..] else {
            let names: Vec<&str> = session.inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(err(format!("takes the inputs {names:?}; an image model takes one, [batch, 3, H, W]")));
        };
        let shape = match &input.input_type {
            ValueType::Tensor { shape, .. } => shape.to_vec(),
            other => return Err(err(format!("input `{}` is {other:?}, not a tensor", input.name))),
        };
        let fits = |d: i64, want: usize| d < 0 || d as usize == want;
        if shape.len() != 4 || !fits(shape[1], 3) || !fits(shape[2], crop) || !fits(shape[3], crop) {
            return Err(err(format!(
                "input `{}` has shape {shape:?}, but preprocess makes [batch, 3, {crop}, {crop}] (preprocess.crop = {crop})",
                input.name
            )));
        }
        let outputs: Vec<String> = session.outputs.iter().map(|o| o.name.clone()).collect();
        let output = match &spec.output {
            Some(name) if outputs.contains(name) => name.clone(),
            Some(name) => return Err(err(format!("has no output `{name}` (outputs: {outputs:?})"))),
            None => outputs.first().cloned().ok_or_else(|| err("has no outputs".into()))?,
        };
        let mut loaded = ImageSession {
            path: spec.onnx.clone(),
            input: input.name.clone(),
            session: Mutex::new(session),
            output,
            tensor_len: spec.preprocess.tensor_len(),
            crop,
            normalize: spec.normalize,
            dim: 0,
        };
        let (vector, dim) = loaded
            .run_rows(&vec![0.0; loaded.tensor_len], 1)
            .map_err(|e| err(format!("a warm-up image of zeros: {e}")))?;
        if dim == 0 || vector.iter().any(|v| !v.is_finite()) {
            return Err(err("a warm-up image of zeros gave no finite vector".into()));
        }
        loaded.dim = dim;
        Ok(loaded)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The vectors of `pixels.len() / tensor_len` images, one after the other.
    pub fn embed(&self, pixels: &[f32]) -> Result<Vec<f32>, ModelError> {
        if !pixels.len().is_multiple_of(self.tensor_len) {
            return Err(ModelError::Inference(format!(
                "{} values are not whole images of {} values",
                pixels.len(),
                self.tensor_len
            )));
        }
        let rows = pixels.len() / self.tensor_len;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let (values, dim) = self.run_rows(pixels, rows)?;
        if dim != self.dim {
            return Err(ModelError::Inference(format!("model gave {dim} values an image, not {}", self.dim)));
        }
        Ok(values)
    }

    fn run_rows(&self, pixels: &[f32], rows: usize) -> Result<(Vec<f32>, usize), ModelError> {
        let inference = |e: ort::Error| ModelError::Inference(format!("image model {}: {e}", self.path.display()));
        let tensor = Tensor::from_array(([rows, 3, self.crop, self.crop], pixels.to_vec())).map_err(inference)?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(ort::inputs![self.input.as_str() => tensor]).map_err(inference)?;
        let (shape, values) = outputs[self.output.as_str()].try_extract_tensor::<f32>().map_err(inference)?;
        // [N, D], or [N, D, 1, 1] from a pooled convolution.
        let pooled = shape.len() >= 2 && shape[2..].iter().all(|&d| d == 1);
        if !pooled || shape[0] as usize != rows {
            return Err(ModelError::Inference(format!(
                "image model {}: output `{}` has shape {shape:?}, not [batch, dim]",
                self.path.display(),
                self.output
            )));
        }
        let dim = shape[1] as usize;
        let mut values = values.to_vec();
        if self.normalize {
            values.chunks_exact_mut(dim).for_each(crate::model::session::l2_normalize);
        }
        Ok((values, dim))
    }
}
