//! `combine` with `method = "onnx"`: a head that makes one vector of other models' vectors (the
//! Prod2Vec shape: two text towers and an image tower into one vector), run in the executor's
//! process. Its inputs are named as the models it combines, each `[batch, dim]` f32; its output
//! is `[batch, D]`. A head is a few matrix products a window: no workers to fork for it; it runs
//! on one intra-op thread, as the workers' sessions do, in the blocking thread that finishes the
//! window.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;

use super::ModelError;

pub struct OnnxHead {
    path: PathBuf,
    session: Mutex<Session>,
    /// The inputs, named as the models they take, and each one's vector length.
    inputs: Vec<(String, usize)>,
    output: String,
    dim: usize,
}

impl OnnxHead {
    /// Loads the head at `path` for `inputs` (each model's name and vector length) and runs it
    /// once on zeros: its inputs must be exactly those models, and it must give `[1, D]`.
    pub fn load(path: &Path, inputs: Vec<(String, usize)>, output: Option<&str>) -> Result<OnnxHead, ModelError> {
        let err = |message: String| ModelError::Onnx { path: path.to_path_buf(), message };
        let session = super::session::session_builder(1)
            .and_then(|b| b.commit_from_file(path))
            .map_err(|e| err(e.to_string()))?;
        let mut takes: Vec<String> = session.inputs.iter().map(|i| i.name.clone()).collect();
        let mut given: Vec<String> = inputs.iter().map(|(n, _)| n.clone()).collect();
        takes.sort();
        given.sort();
        if takes != given {
            return Err(err(format!("takes the inputs {takes:?}, but the entry's inputs are {given:?}")));
        }
        let outputs: Vec<String> = session.outputs.iter().map(|o| o.name.clone()).collect();
        let output = match output {
            Some(name) if outputs.iter().any(|o| o == name) => name.to_string(),
            Some(name) => return Err(err(format!("has no output `{name}` (outputs: {outputs:?})"))),
            None => outputs.first().cloned().ok_or_else(|| err("has no outputs".into()))?,
        };
        let mut head = OnnxHead { path: path.to_path_buf(), session: Mutex::new(session), inputs, output, dim: 0 };
        let zeros: Vec<Vec<f32>> = head.inputs.iter().map(|(_, d)| vec![0.0; *d]).collect();
        let parts: Vec<&[f32]> = zeros.iter().map(Vec::as_slice).collect();
        let (values, dim) = head.run_rows(&parts, 1).map_err(|e| err(format!("a warm-up row of zeros: {e}")))?;
        if dim == 0 || values.iter().any(|v| !v.is_finite()) {
            return Err(err("a warm-up row of zeros gave no finite vector".into()));
        }
        head.dim = dim;
        Ok(head)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The head's vectors of `rows` rows, its inputs' vectors given in the entry's order.
    pub fn run(&self, parts: &[&[f32]], rows: usize) -> Result<Vec<f32>, ModelError> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        let (values, dim) = self.run_rows(parts, rows)?;
        if dim != self.dim {
            return Err(ModelError::Inference(format!(
                "head {} gave {dim} values a row, not {}",
                self.path.display(),
                self.dim
            )));
        }
        Ok(values)
    }

    fn run_rows(&self, parts: &[&[f32]], rows: usize) -> Result<(Vec<f32>, usize), ModelError> {
        let inference = |e: ort::Error| ModelError::Inference(format!("head {}: {e}", self.path.display()));
        let mut feed: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = Vec::new();
        for ((name, dim), values) in self.inputs.iter().zip(parts) {
            let tensor = Tensor::from_array(([rows, *dim], values.to_vec())).map_err(inference)?;
            feed.push((name.clone().into(), tensor.into()));
        }
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(feed).map_err(inference)?;
        let (shape, values) = outputs[self.output.as_str()].try_extract_tensor::<f32>().map_err(inference)?;
        if shape.len() != 2 || shape[0] as usize != rows {
            return Err(ModelError::Inference(format!(
                "head {}: output `{}` has shape {shape:?}, not [batch, dim]",
                self.path.display(),
                self.output
            )));
        }
        Ok((values.to_vec(), shape[1] as usize))
    }
}
