//! Images for `image-onnx` models: [`fetch`] downloads them by URL within `[fetch]`'s limits
//! (refusing internal addresses), [`preprocess`] turns their bytes into the model's tensor.

pub mod fetch;
pub mod preprocess;
