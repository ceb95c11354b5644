//! Images for `image-onnx` models: [`preprocess`] turns an image's bytes into the model's input
//! tensor, as the spec's `preprocess` says.

pub mod preprocess;
