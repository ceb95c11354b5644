//! The models a query runs: `[model]` (one text model, as the first specs wrote it) or
//! `[[models]]`, entries chosen by `kind`:
//!
//! - `text-onnx` ([`ModelSpec`]): an ONNX model and its tokenizer, its input a template over the
//!   record's fields, and how its texts are batched;
//! - `fasttext` ([`FastTextSpec`]): a fastText model's sentence vectors, over a template too;
//! - `image-onnx` ([`ImageSpec`]): an ONNX image model, its input an image URL (a template),
//!   its preprocessing stated in the spec;
//! - `combine` ([`CombineSpec`]): a vector made of other models' vectors (concatenated, or an
//!   ONNX head's output; L2 normalised if asked).
//!
//! `[[models]]` entries are parsed by hand on `kind`, as `[sink]` is, so that an error inside
//! one names its key (`models[1].batch_size`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::image::PreprocessSpec;
use super::input::InputSpec;
use super::units::{HumanDuration, MemorySize};
use super::SpecError;
use crate::fields::Template;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

/// What a text model does with a text longer than `max_seq_len` tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongText {
    /// Embeds its first `max_seq_len` tokens, as sentence-transformers does.
    #[default]
    Truncate,
    /// Splits it by the model's tokenizer into windows of `max_seq_len` tokens that overlap by
    /// `chunk_overlap`, embeds each and pools them (`chunk_pooling`).
    Chunk,
}

/// What the chunks of a long text give.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkPooling {
    /// One vector: the mean of the chunks', scaled to length 1 if the model normalises.
    #[default]
    Mean,
    /// One output per chunk (`"none"`), with its index and token span: a vector traces back to
    /// its record's offset and its place in the text.
    #[serde(rename = "none")]
    Each,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Its name in `[[models]]`: the output column `embedding_<name>`, `es.model`, what a
    /// `combine` entry and `sink.models` call it. `[model]` has none: it is named by its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its input text, a template over the record's fields (`"{title}. {description}"`).
    /// Default `"{value}"`: the record's whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    /// Model id written in the `es.model` header. Default: the ONNX file's directory name.
    #[serde(default)]
    pub id: Option<String>,
    /// Texts longer than this many tokens are truncated, as sentence-transformers does.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Texts over `max_seq_len` tokens: truncated (the default), or embedded in chunks.
    #[serde(default)]
    pub long_text: LongText,
    /// Tokens that two neighbouring chunks share (`long_text = "chunk"`).
    #[serde(default = "default_chunk_overlap")]
    pub chunk_overlap: usize,
    #[serde(default)]
    pub chunk_pooling: ChunkPooling,
    #[serde(default = "default_pooling")]
    pub pooling: Pooling,
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Texts per inference batch; batches are cut from length-sorted texts.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Padded tokens per inference batch (texts x the batch's longest), as text-embeddings-
    /// inference cuts batches: over the length-sorted window, a batch ends at `batch_size` texts
    /// or when one more text would pass this budget, so short texts go in large batches and long
    /// ones in small. Each forked worker's ONNX Runtime arena grows to its largest batch: the
    /// default, 1024, held the workers to 0.61 of their memory with `batch_size` alone on
    /// mixed-length English, at the same speed (`cargo bench --bench pipeline`, docs/performance.md).
    #[serde(default = "default_max_batch_tokens", skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<usize>,
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
    /// The embedding cache ("256m", "1g"): vectors of texts this model already embedded in the
    /// executor, by the SHA-256 of the exact text, least recently used out first, shared by the
    /// executor's tasks and Arrow Flight calls. Default: none (every text is computed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<MemorySize>,
    /// Records whose input (this model's rendered text or URL, with the model's version) is the
    /// one last embedded for their key cost no inference and write nothing: the sink keeps each
    /// key's input fingerprint (pgvector's `input_hash` column, a Kafka sink's compacted state
    /// topic). With several models, every model that reads records says the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_unchanged: bool,
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
fn default_chunk_overlap() -> usize {
    16
}
fn default_pooling() -> Pooling {
    Pooling::Mean
}
fn default_batch_size() -> usize {
    32
}
/// Eight texts of 128 tokens, or 32 of 32.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 1024;

fn default_max_batch_tokens() -> Option<usize> {
    Some(DEFAULT_MAX_BATCH_TOKENS)
}
/// Records sorted together by default; also the window of a job with no ONNX model.
pub const DEFAULT_SORT_WINDOW: usize = 1024;

fn default_sort_window() -> usize {
    DEFAULT_SORT_WINDOW
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
            name: None,
            text: None,
            onnx,
            tokenizer,
            id: None,
            max_seq_len: default_max_seq_len(),
            long_text: LongText::Truncate,
            chunk_overlap: default_chunk_overlap(),
            chunk_pooling: ChunkPooling::Mean,
            pooling: default_pooling(),
            normalize: true,
            batch_size: default_batch_size(),
            max_batch_tokens: default_max_batch_tokens(),
            sort_window: default_sort_window(),
            max_text_bytes: default_max_text_bytes(),
            worker_timeout_per_text: default_worker_timeout_per_text(),
            cache_bytes: None,
            skip_unchanged: false,
        }
    }

    /// The template of its input text.
    pub fn template(&self) -> Template {
        template_of(&self.text)
    }

    /// Its name (in `[[models]]`), else its id, else its ONNX file's directory's name.
    pub fn model_id(&self) -> String {
        self.name.clone().or_else(|| self.id.clone()).unwrap_or_else(|| {
            self.onnx
                .parent()
                .and_then(Path::file_name)
                .or_else(|| self.onnx.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        })
    }

    /// Checks its values; `at` is its key in errors (`model`, `models[0]`).
    pub(super) fn validate(&self, at: &str, input: &InputSpec) -> Result<(), SpecError> {
        let m = self;
        let key = |k: &str| format!("{at}.{k}");
        if !(1..=512).contains(&m.max_seq_len) {
            return Err(SpecError::new(&key("max_seq_len"), "must be between 1 and 512"));
        }
        // A chunk of `max_seq_len` tokens holds the model's special tokens ([CLS], [SEP]) too;
        // neighbours may share at most half of the rest.
        let most_overlap = m.max_seq_len.saturating_sub(2) / 2;
        if m.long_text == LongText::Chunk && m.chunk_overlap > most_overlap {
            return Err(SpecError::new(
                &key("chunk_overlap"),
                format!("must be at most half of {at}.max_seq_len's tokens less 2 special ones: {most_overlap}"),
            ));
        }
        if m.chunk_pooling == ChunkPooling::Each && m.long_text != LongText::Chunk {
            return Err(SpecError::new(&key("chunk_pooling"), "is only read with long_text = \"chunk\""));
        }
        if !(1..=4096).contains(&m.batch_size) {
            return Err(SpecError::new(&key("batch_size"), "must be between 1 and 4096"));
        }
        if m.sort_window < m.batch_size {
            return Err(SpecError::new(&key("sort_window"), format!("must be at least {at}.batch_size")));
        }
        if let Some(budget) = m.max_batch_tokens {
            if budget < m.max_seq_len {
                return Err(SpecError::new(
                    &key("max_batch_tokens"),
                    format!(
                        "must be at least {at}.max_seq_len ({}): a batch holds one text of that length",
                        m.max_seq_len
                    ),
                ));
            }
        }
        if m.max_text_bytes == 0 {
            return Err(SpecError::new(&key("max_text_bytes"), "must be at least 1"));
        }
        if m.worker_timeout_per_text.get().is_zero() {
            return Err(SpecError::new(
                &key("worker_timeout_per_text"),
                "must be a duration above zero, such as \"1s\"",
            ));
        }
        if m.cache_bytes.is_some() && m.chunk_pooling == ChunkPooling::Each {
            return Err(SpecError::new(
                &key("cache_bytes"),
                "caches one vector a text: it is not read with chunk_pooling = \"none\"",
            ));
        }
        check_template(&key("text"), &m.text, input)
    }

    /// The model's files exist here (run where they are loaded: the driver and the executors).
    pub(super) fn check_files(&self, at: &str) -> Result<(), SpecError> {
        check_model_file(&format!("{at}.onnx"), &self.onnx)?;
        check_model_file(&format!("{at}.tokenizer"), &self.tokenizer)
    }
}

/// The template `text` says, `{value}` when it says none (validated by [`check_template`]).
fn template_of(text: &Option<String>) -> Template {
    Template::parse(text.as_deref().unwrap_or("{value}")).expect("validated")
}

/// A model's `text` (at `key`) parses, and every field it reads is one the records have.
fn check_template(key: &str, text: &Option<String>, input: &InputSpec) -> Result<(), SpecError> {
    let Some(text) = text else { return Ok(()) };
    let template = Template::parse(text).map_err(|e| SpecError::new(key, e))?;
    let mut fields = template.fields();
    match fields.find(|f| !input.has_field(f)) {
        Some(f) => {
            Err(SpecError::new(key, format!("`{{{f}}}` is not a field: name one of input.fields (or key, value)")))
        }
        None => Ok(()),
    }
}

/// `kind = "fasttext"`: a fastText model's sentence vector (the mean of its words' normalised
/// vectors, as fastText's `get_sentence_vector`), computed in the executor's own process: a
/// lookup and a sum per word, no model worth forking for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastTextSpec {
    pub name: String,
    /// Its input text, a template over the record's fields; default `"{value}"`. Line breaks
    /// are read as spaces (fastText reads one line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The model: fastText's `.bin`, or `.ftz` (quantised).
    pub model: PathBuf,
    /// Scale each sentence vector to length 1 (fastText's own are not).
    #[serde(default)]
    pub normalize: bool,
    /// Longer texts go to the dead-letter topic.
    #[serde(default = "default_max_text_bytes")]
    pub max_text_bytes: usize,
    /// Records whose input (this model's rendered text or URL, with the model's version) is the
    /// one last embedded for their key cost no inference and write nothing: the sink keeps each
    /// key's input fingerprint (pgvector's `input_hash` column, a Kafka sink's compacted state
    /// topic). With several models, every model that reads records says the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_unchanged: bool,
}

impl FastTextSpec {
    pub fn template(&self) -> Template {
        template_of(&self.text)
    }

    fn validate(&self, at: &str, input: &InputSpec) -> Result<(), SpecError> {
        if self.max_text_bytes == 0 {
            return Err(SpecError::new(&format!("{at}.max_text_bytes"), "must be at least 1"));
        }
        check_template(&format!("{at}.text"), &self.text, input)
    }

    pub(super) fn check_files(&self, at: &str) -> Result<(), SpecError> {
        check_model_file(&format!("{at}.model"), &self.model)
    }
}

/// `kind = "image-onnx"`: an ONNX image model over images fetched by URL (`[fetch]`), each
/// preprocessed as `preprocess` says into a `[3, crop, crop]` tensor, batched by image, run by
/// the model's own forked workers as text models are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub name: String,
    /// The image's URL, a template over the record's fields (`"{image}"`); default
    /// `"{value}"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    pub onnx: PathBuf,
    /// The model's output to take (`[batch, D]`, or `[batch, D, 1, 1]`); default its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub preprocess: PreprocessSpec,
    /// Scale each vector to length 1.
    #[serde(default)]
    pub normalize: bool,
    /// Images per inference batch.
    #[serde(default = "default_image_batch_size")]
    pub batch_size: usize,
    /// Longer URLs go to the dead-letter topic.
    #[serde(default = "default_max_url_bytes")]
    pub max_url_bytes: usize,
    /// How long a worker may take per image of a batch, on top of [`WORKER_GRACE`], before it
    /// counts as hung (killed, forked again, the batch sent again). Downloads are not in it:
    /// `[fetch]` bounds them.
    #[serde(default = "default_worker_timeout_per_image")]
    pub worker_timeout_per_image: HumanDuration,
    /// Records whose input (this model's rendered text or URL, with the model's version) is the
    /// one last embedded for their key cost no inference and write nothing: the sink keeps each
    /// key's input fingerprint (pgvector's `input_hash` column, a Kafka sink's compacted state
    /// topic). With several models, every model that reads records says the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_unchanged: bool,
}

fn default_image_batch_size() -> usize {
    16
}
fn default_max_url_bytes() -> usize {
    2048
}
fn default_worker_timeout_per_image() -> HumanDuration {
    HumanDuration::parse("2s").expect("a valid duration")
}

impl ImageSpec {
    /// The template of its image's URL.
    pub fn template(&self) -> Template {
        template_of(&self.image_url)
    }

    fn validate(&self, at: &str, input: &InputSpec) -> Result<(), SpecError> {
        let key = |k: &str| format!("{at}.{k}");
        if !(1..=1024).contains(&self.batch_size) {
            return Err(SpecError::new(&key("batch_size"), "must be between 1 and 1024"));
        }
        if self.max_url_bytes == 0 {
            return Err(SpecError::new(&key("max_url_bytes"), "must be at least 1"));
        }
        if self.worker_timeout_per_image.get().is_zero() {
            return Err(SpecError::new(
                &key("worker_timeout_per_image"),
                "must be a duration above zero, such as \"2s\"",
            ));
        }
        self.preprocess.validate(&key("preprocess"))?;
        check_template(&key("image_url"), &self.image_url, input)
    }

    pub(super) fn check_files(&self, at: &str) -> Result<(), SpecError> {
        check_model_file(&format!("{at}.onnx"), &self.onnx)
    }
}

/// A model file the spec names exists here (one on HDFS is checked where it is fetched, by the
/// executor).
fn check_model_file(key: &str, path: &Path) -> Result<(), SpecError> {
    if !crate::store::is_hdfs(path) && !path.is_file() {
        return Err(SpecError::new(key, format!("no such file: {}", path.display())));
    }
    Ok(())
}

/// How a `combine` entry makes one vector of its inputs'.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CombineMethod {
    /// The inputs' vectors one after the other, in `inputs` order.
    #[default]
    Concat,
    /// An ONNX model (`onnx`) that takes each input's vectors as the input of its name
    /// (`[batch, dim]` f32) and gives the combined vector (`output`, `[batch, D]`).
    Onnx,
}

/// `kind = "combine"`: a vector made of other models' vectors (Prod2Vec's shape: two text
/// towers and an image tower into one vector).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CombineSpec {
    pub name: String,
    /// The models whose vectors it takes, each named before it in `[[models]]`.
    pub inputs: Vec<String>,
    #[serde(default)]
    pub method: CombineMethod,
    /// The head, with `method = "onnx"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<PathBuf>,
    /// The head's output to take; default its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Scale the combined vector to length 1.
    #[serde(default)]
    pub normalize: bool,
}

impl CombineSpec {
    pub(super) fn check_files(&self, at: &str) -> Result<(), SpecError> {
        match &self.onnx {
            Some(path) => check_model_file(&format!("{at}.onnx"), path),
            None => Ok(()),
        }
    }
}

/// One entry of `[[models]]`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ModelEntry {
    TextOnnx(ModelSpec),
    #[serde(rename = "fasttext")]
    FastText(FastTextSpec),
    ImageOnnx(ImageSpec),
    Combine(CombineSpec),
}

/// The model kinds, as `kind` names them.
const KINDS: &str = "`text-onnx`, `image-onnx`, `fasttext` or `combine`";

impl ModelEntry {
    pub fn name(&self) -> &str {
        match self {
            ModelEntry::TextOnnx(m) => m.name.as_deref().unwrap_or_default(),
            ModelEntry::FastText(f) => &f.name,
            ModelEntry::ImageOnnx(m) => &m.name,
            ModelEntry::Combine(c) => &c.name,
        }
    }

    /// Whether it reads records (its input a template over their fields), not other models.
    pub fn reads_records(&self) -> bool {
        !matches!(self, ModelEntry::Combine(_))
    }

    /// The template of its input (a text, or an image's URL), for a model that reads records.
    pub fn template(&self) -> Option<Template> {
        match self {
            ModelEntry::TextOnnx(m) => Some(m.template()),
            ModelEntry::FastText(f) => Some(f.template()),
            ModelEntry::ImageOnnx(m) => Some(m.template()),
            ModelEntry::Combine(_) => None,
        }
    }

    /// The most bytes of input it takes and the key that says so (`max_text_bytes`,
    /// `max_url_bytes`), for a model that reads records.
    pub fn input_limit(&self) -> Option<(usize, &'static str)> {
        match self {
            ModelEntry::TextOnnx(m) => Some((m.max_text_bytes, "max_text_bytes")),
            ModelEntry::FastText(f) => Some((f.max_text_bytes, "max_text_bytes")),
            ModelEntry::ImageOnnx(m) => Some((m.max_url_bytes, "max_url_bytes")),
            ModelEntry::Combine(_) => None,
        }
    }

    /// Whether its unchanged inputs are skipped (`skip_unchanged`), for a model that reads records.
    pub fn skip_unchanged(&self) -> Option<bool> {
        match self {
            ModelEntry::TextOnnx(m) => Some(m.skip_unchanged),
            ModelEntry::FastText(f) => Some(f.skip_unchanged),
            ModelEntry::ImageOnnx(m) => Some(m.skip_unchanged),
            ModelEntry::Combine(_) => None,
        }
    }

    /// The most bytes of input text it takes, for a model that embeds texts.
    pub fn max_text_bytes(&self) -> Option<usize> {
        match self {
            ModelEntry::TextOnnx(m) => Some(m.max_text_bytes),
            ModelEntry::FastText(f) => Some(f.max_text_bytes),
            ModelEntry::ImageOnnx(_) | ModelEntry::Combine(_) => None,
        }
    }

    /// Entry `index` of `[[models]]`, its errors' keys under `models[index].`.
    pub fn from_value(index: usize, value: toml::Value) -> Result<ModelEntry, SpecError> {
        let at = format!("models[{index}]");
        let toml::Value::Table(mut table) = value else {
            return Err(SpecError::new(&at, format!("must be a table with a `kind`: {KINDS}")));
        };
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(_) => return Err(SpecError::new(&format!("{at}.kind"), format!("must be a string: {KINDS}"))),
            None => return Err(SpecError::new(&format!("{at}.kind"), format!("missing: {KINDS}"))),
        };
        if !table.contains_key("name") {
            return Err(SpecError::new(&format!("{at}.name"), "missing: every entry of [[models]] has a name"));
        }
        match kind.as_str() {
            "text-onnx" => super::section_at(&at, table).map(ModelEntry::TextOnnx),
            "fasttext" => super::section_at(&at, table).map(ModelEntry::FastText),
            "image-onnx" => super::section_at(&at, table).map(ModelEntry::ImageOnnx),
            "combine" => super::section_at(&at, table).map(ModelEntry::Combine),
            other => Err(SpecError::new(&format!("{at}.kind"), format!("unknown kind `{other}`, expected {KINDS}"))),
        }
    }

    /// `[[models]]` as a whole, each entry's errors under its index.
    pub fn list_from_value(value: toml::Value) -> Result<Vec<ModelEntry>, SpecError> {
        let toml::Value::Array(entries) = value else {
            return Err(SpecError::new("models", "must be an array of tables: [[models]]"));
        };
        entries.into_iter().enumerate().map(|(i, v)| ModelEntry::from_value(i, v)).collect()
    }
}

impl<'de> Deserialize<'de> for ModelEntry {
    /// As [`ModelEntry::from_value`]; `JobSpec::from_toml` reports its errors with their key.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        ModelEntry::from_value(0, value).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// A model's name: letters, digits, '_' and '-' (it names a column and a header value).
fn is_model_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
}

/// Checks `[[models]]` as a whole: names, inputs, templates.
pub(super) fn validate_entries(entries: &[ModelEntry], input: &InputSpec) -> Result<(), SpecError> {
    let mut seen: Vec<&str> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("models[{i}]");
        let name = entry.name();
        if !is_model_name(name) {
            return Err(SpecError::new(&format!("{at}.name"), "must be non-empty letters, digits, '_' or '-'"));
        }
        if seen.contains(&name) {
            return Err(SpecError::new(&format!("{at}.name"), format!("`{name}` names an earlier model too")));
        }
        match entry {
            ModelEntry::TextOnnx(m) => m.validate(&at, input)?,
            ModelEntry::FastText(f) => f.validate(&at, input)?,
            ModelEntry::ImageOnnx(m) => m.validate(&at, input)?,
            ModelEntry::Combine(c) => {
                let key = format!("{at}.inputs");
                if c.inputs.is_empty() {
                    return Err(SpecError::new(&key, "must name at least one model"));
                }
                for (n, input) in c.inputs.iter().enumerate() {
                    if !seen.contains(&input.as_str()) {
                        return Err(SpecError::new(
                            &key,
                            format!("`{input}` is not a model named before this one in [[models]]"),
                        ));
                    }
                    if c.inputs[..n].contains(input) {
                        return Err(SpecError::new(&key, format!("`{input}` is named twice")));
                    }
                }
                match (c.method, &c.onnx) {
                    (CombineMethod::Onnx, None) => {
                        return Err(SpecError::new(
                            &format!("{at}.onnx"),
                            "is needed with method = \"onnx\": the head's file",
                        ))
                    }
                    (CombineMethod::Concat, Some(_)) => {
                        return Err(SpecError::new(&format!("{at}.onnx"), "is only read with method = \"onnx\""))
                    }
                    (CombineMethod::Concat, None) if c.output.is_some() => {
                        return Err(SpecError::new(&format!("{at}.output"), "is only read with method = \"onnx\""))
                    }
                    _ => {}
                }
            }
        }
        seen.push(name);
    }
    if !entries.iter().any(ModelEntry::reads_records) {
        return Err(SpecError::new(
            "models",
            "needs at least one model that reads the records (kind = \"text-onnx\", \"image-onnx\" or \"fasttext\")",
        ));
    }
    Ok(())
}
