//! Images for `image-onnx` models: [`fetch`] downloads them by URL within `[fetch]`'s limits
//! (refusing internal addresses), [`preprocess`] turns their bytes into the model's tensor,
//! [`session`] is the model as its forked workers run it, and [`pool`] is the executor's side:
//! a window's URLs to vectors, downloads ahead of inference.

pub mod fetch;
pub mod pool;
pub mod preprocess;
pub mod session;
