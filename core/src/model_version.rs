//! Model versions (issue 35): a short fingerprint of everything that changes a model entry's
//! vectors, so that vectors of two models that share a name and a dimension are never mixed
//! silently. It hashes the bytes of the model's files (never their paths: a file renamed or a
//! directory moved keeps its version) and the spec keys that change what the model computes:
//!
//! - `text-onnx`: the ONNX file, the tokenizer file, `max_seq_len`, `pooling`, `normalize`,
//!   `long_text` (and with chunks, `chunk_overlap` and `chunk_pooling`);
//! - `fasttext`: the model file and `normalize`;
//! - `image-onnx`: the ONNX file, `output`, `preprocess` and `normalize`;
//! - `combine`: `method`, the head's ONNX file and `output` when it has one, `normalize`, and
//!   the versions of its inputs, in order.
//!
//! Keys that change only how fast vectors come (batching, timeouts, caches) or which records
//! are embedded (the `text` template, the input) are left out. The version is the first 12 hex
//! digits of a SHA-256 over a tagged, length-prefixed encoding of those parts.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::spec::{JobSpec, LongText, ModelEntry};

/// How many hex digits a version keeps (48 bits: no two versions of one model collide by chance).
const VERSION_HEX_DIGITS: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// A model file could not be read (it is hashed whole).
    #[error("{key} = \"{path}\": cannot read it to take the model's version: {source}")]
    Read { key: String, path: PathBuf, source: std::io::Error },
    /// A combine entry names an input that is not a model (the spec's validation refuses it).
    #[error("{key}: no model named {input}")]
    NoInput { key: String, input: String },
}

/// The hash of one model entry's parts, each tagged and length-prefixed so that two
/// different sequences of parts never hash the same bytes.
struct Fingerprint(Sha256);

impl Fingerprint {
    fn new(kind: &str) -> Fingerprint {
        let mut f = Fingerprint(Sha256::new());
        f.part("kind", kind.as_bytes());
        f
    }

    fn part(&mut self, tag: &str, bytes: &[u8]) {
        for piece in [tag.as_bytes(), bytes] {
            self.0.update((piece.len() as u64).to_le_bytes());
            self.0.update(piece);
        }
    }

    fn value(&mut self, tag: &str, value: impl std::fmt::Debug) {
        self.part(tag, format!("{value:?}").as_bytes());
    }

    /// The file's bytes (not its path), read as it streams: a model can be hundreds of MB.
    fn file(&mut self, key: &str, path: &Path) -> Result<(), VersionError> {
        let failed = |source| VersionError::Read { key: key.to_string(), path: path.to_path_buf(), source };
        let mut file_hash = Sha256::new();
        if crate::store::is_hdfs(path) {
            let bytes = crate::store::read(path)
                .map_err(failed)?
                .ok_or_else(|| failed(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file on HDFS")))?;
            file_hash.update(&bytes);
        } else {
            let mut file = std::fs::File::open(path).map_err(failed)?;
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buffer).map_err(failed)?;
                if n == 0 {
                    break;
                }
                file_hash.update(&buffer[..n]);
            }
        }
        self.part(key.rsplit('.').next().unwrap_or(key), &file_hash.finalize());
        Ok(())
    }

    fn finish(self) -> String {
        let digest = self.0.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        hex[..VERSION_HEX_DIGITS].to_string()
    }
}

/// The version of every model entry of `spec`, by the entry's name; `[model]` is entry
/// `model`, `[[models]]` entry i is `models[i]` in errors.
pub fn model_versions(spec: &JobSpec) -> Result<BTreeMap<String, String>, VersionError> {
    let entries = spec.model_entries();
    let at = |i: usize| if spec.model.is_some() { "model".to_string() } else { format!("models[{i}]") };
    let mut versions = BTreeMap::new();
    // A combine entry's inputs come before it (the spec's validation says so).
    for (i, entry) in entries.iter().enumerate() {
        let version = entry_version(&at(i), entry, &versions)?;
        versions.insert(entry.name().to_string(), version);
    }
    Ok(versions)
}

fn entry_version(at: &str, entry: &ModelEntry, before: &BTreeMap<String, String>) -> Result<String, VersionError> {
    let key = |k: &str| format!("{at}.{k}");
    Ok(match entry {
        ModelEntry::TextOnnx(m) => {
            let mut f = Fingerprint::new("text-onnx");
            f.file(&key("onnx"), &m.onnx)?;
            f.file(&key("tokenizer"), &m.tokenizer)?;
            f.value("max_seq_len", m.max_seq_len);
            f.value("pooling", m.pooling);
            f.value("normalize", m.normalize);
            f.value("long_text", m.long_text);
            if m.long_text == LongText::Chunk {
                f.value("chunk_overlap", m.chunk_overlap);
                f.value("chunk_pooling", m.chunk_pooling);
            }
            f.finish()
        }
        ModelEntry::FastText(m) => {
            let mut f = Fingerprint::new("fasttext");
            f.file(&key("model"), &m.model)?;
            f.value("normalize", m.normalize);
            f.finish()
        }
        ModelEntry::ImageOnnx(m) => {
            let mut f = Fingerprint::new("image-onnx");
            f.file(&key("onnx"), &m.onnx)?;
            f.value("output", &m.output);
            f.value("preprocess", &m.preprocess);
            f.value("normalize", m.normalize);
            f.finish()
        }
        ModelEntry::Combine(c) => {
            let mut f = Fingerprint::new("combine");
            f.value("method", c.method);
            if let Some(onnx) = &c.onnx {
                f.file(&key("onnx"), onnx)?;
                f.value("output", &c.output);
            }
            f.value("normalize", c.normalize);
            for input in &c.inputs {
                let version = before
                    .get(input)
                    .ok_or_else(|| VersionError::NoInput { key: key("inputs"), input: input.clone() })?;
                f.part("input", version.as_bytes());
            }
            f.finish()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec over `dir/<onnx>` and `dir/<tokenizer>`, with `model` keys added.
    fn version(dir: &Path, onnx: &str, tokenizer: &str, model: &str) -> String {
        let text = format!(
            "name = \"q\"\ncheckpoint_location = \"/tmp/cp\"\n[source]\nbootstrap_servers = \"127.0.0.1:9092\"\n\
             subscribe = [\"t\"]\n[model]\nonnx = \"{}\"\ntokenizer = \"{}\"\nid = \"m\"\n{model}\n\
             [sink]\nkind = \"kafka\"\ntopic = \"out\"\n",
            dir.join(onnx).display(),
            dir.join(tokenizer).display(),
        );
        let spec = JobSpec::from_toml(&text).unwrap();
        model_versions(&spec).unwrap()["m"].clone()
    }

    #[test]
    fn what_changes_the_vectors_changes_the_version_and_where_the_files_are_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("model.onnx"), b"weights A").unwrap();
        std::fs::write(d.join("tokenizer.json"), b"{\"vocab\": 1}").unwrap();
        let base = version(d, "model.onnx", "tokenizer.json", "");
        assert_eq!(base.len(), 12);
        assert!(base.chars().all(|c| c.is_ascii_hexdigit()), "{base}");
        assert_eq!(version(d, "model.onnx", "tokenizer.json", ""), base, "the same files and keys");

        // Renamed files in a moved directory: the same bytes, the same version.
        let moved = d.join("elsewhere");
        std::fs::create_dir(&moved).unwrap();
        std::fs::copy(d.join("model.onnx"), moved.join("renamed.onnx")).unwrap();
        std::fs::copy(d.join("tokenizer.json"), moved.join("tok.json")).unwrap();
        assert_eq!(version(&moved, "renamed.onnx", "tok.json", ""), base, "renamed and moved");
        // Keys that do not change the vectors.
        assert_eq!(version(d, "model.onnx", "tokenizer.json", "batch_size = 8\nsort_window = 64"), base);

        let mut seen = std::collections::BTreeSet::from([base.clone()]);
        let mut differs =
            |what: &str, v: String| assert!(seen.insert(v.clone()), "{what} gave a version seen before: {v}");
        differs("pooling", version(d, "model.onnx", "tokenizer.json", "pooling = \"cls\""));
        differs("max_seq_len", version(d, "model.onnx", "tokenizer.json", "max_seq_len = 64"));
        differs("normalize", version(d, "model.onnx", "tokenizer.json", "normalize = false"));
        differs("long_text", version(d, "model.onnx", "tokenizer.json", "long_text = \"chunk\""));
        std::fs::write(d.join("tokenizer.json"), b"{\"vocab\": 2}").unwrap();
        differs("the tokenizer's bytes", version(d, "model.onnx", "tokenizer.json", ""));
        std::fs::write(d.join("tokenizer.json"), b"{\"vocab\": 1}").unwrap();
        std::fs::write(d.join("model.onnx"), b"weights B").unwrap();
        differs("the model's bytes", version(d, "model.onnx", "tokenizer.json", ""));
        std::fs::write(d.join("model.onnx"), b"weights A").unwrap();
        assert_eq!(version(d, "model.onnx", "tokenizer.json", ""), base, "the first bytes again");
    }

    #[test]
    fn a_missing_file_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "name = \"q\"\ncheckpoint_location = \"/tmp/cp\"\n[source]\nbootstrap_servers = \"b:9092\"\n\
             subscribe = [\"t\"]\n[model]\nonnx = \"{}\"\ntokenizer = \"{}\"\n[sink]\nkind = \"kafka\"\ntopic = \"o\"\n",
            dir.path().join("gone.onnx").display(),
            dir.path().join("tokenizer.json").display(),
        );
        let err = model_versions(&JobSpec::from_toml(&text).unwrap()).unwrap_err().to_string();
        assert!(err.starts_with("model.onnx = \"") && err.contains("gone.onnx"), "{err}");
    }
}
