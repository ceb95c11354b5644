//! The models a task runs for every record, in the spec's order (`[model]`, or `[[models]]`):
//! each model that reads records renders its template over the record's fields (a text, or an
//! image's URL) and computes with its own backend (a text model's workers or fastText, an image
//! model's fetcher and workers); each `combine` entry makes one vector of earlier ones'. The
//! sink writes the models `sink.models` picks, one vector column each ([`Pipeline::outputs`]).
//!
//! A window goes through it in three steps: [`Pipeline::prepare`] reads every record's fields
//! once and renders every template (a record any model cannot take is refused with the reason,
//! naming the field or the model); [`Pipeline::embed`] runs every model on its inputs at once,
//! each in its own batches, and computes the combined vectors; [`Pipeline::finish`] drops the
//! rows whose image could not be fetched or decoded (with the reason) and those with a vector
//! that is not finite, and builds the output columns.

use std::sync::Arc;

use arrow_array::{ArrayRef, Int32Array};
use arrow_schema::SchemaRef;
use embedstream_core::fields::{Cell, RecordFields, Template};
use embedstream_core::spec::{CombineMethod, FieldColumn, InputSpec, ModelEntry, SinkKind};
use embedstream_core::JobSpec;

use crate::images::pool::ImagePool;
use crate::model::cache::{CacheCount, Cached};
use crate::model::chunk::{ChunkSpan, Chunked};
use crate::model::head::OnnxHead;
use crate::model::{Embed, ModelError};
use crate::records::{embedding_array, field_array, Output};

/// What computes a model that reads records.
pub enum Backend {
    /// Texts to vectors: an ONNX text model's workers, fastText.
    Texts(Arc<dyn Embed>),
    /// Texts to vectors through the model's embedding cache (`cache_bytes`).
    Cached(Arc<Cached>),
    /// Texts to one vector a chunk (`chunk_pooling = "none"`, the query's one model).
    Chunks(Arc<Chunked>),
    /// Image URLs to vectors, or to the reason an image has none.
    Images(Arc<ImagePool>),
}

/// A model's vectors of a window's inputs: one an input (or one a chunk, with `spans`), the
/// size of each batch that ran, and the inputs that have none (with the reason).
struct Computed {
    vectors: Vec<f32>,
    batch_sizes: Vec<usize>,
    failed: Vec<(usize, String)>,
    spans: Option<Vec<ChunkSpan>>,
    cache: CacheCount,
}

impl Backend {
    fn dim(&self) -> usize {
        match self {
            Backend::Texts(e) => e.dim(),
            Backend::Cached(c) => c.dim(),
            Backend::Chunks(c) => c.dim(),
            Backend::Images(p) => p.dim(),
        }
    }

    async fn compute(&self, inputs: Vec<String>) -> Result<Computed, ModelError> {
        let computed = |vectors, batch_sizes, failed, spans| Computed {
            vectors,
            batch_sizes,
            failed,
            spans,
            cache: CacheCount::default(),
        };
        match self {
            Backend::Texts(e) => e.clone().embed(inputs).await.map(|(v, sizes)| computed(v, sizes, Vec::new(), None)),
            Backend::Cached(c) => c
                .clone()
                .embed_counted(inputs)
                .await
                .map(|c| Computed { cache: c.count, ..computed(c.vectors, c.batch_sizes, Vec::new(), None) }),
            Backend::Chunks(c) => {
                c.embed_each(inputs).await.map(|e| computed(e.vectors, e.batch_sizes, Vec::new(), Some(e.spans)))
            }
            Backend::Images(p) => p.embed(inputs).await.map(|v| computed(v.values, v.batch_sizes, v.failed, None)),
        }
    }
}

/// A model that reads records.
struct Reader {
    name: String,
    template: Template,
    /// The most bytes its input may have, and the key that says so (`models[1].max_text_bytes`).
    limit: usize,
    limit_key: String,
    backend: Backend,
}

enum Step {
    Reads(Reader),
    /// `head` is the ONNX head of `method = "onnx"`; without one, the inputs are concatenated.
    Combine {
        name: String,
        inputs: Vec<usize>,
        head: Option<OnnxHead>,
        normalize: bool,
    },
}

impl Step {
    fn name(&self) -> &str {
        match self {
            Step::Reads(t) => &t.name,
            Step::Combine { name, .. } => name,
        }
    }
}

pub struct Pipeline {
    input: InputSpec,
    /// The fields the sink writes beside the vectors, typed.
    columns: Vec<FieldColumn>,
    /// The sink's text cannot hold a NUL byte (PostgreSQL's): a text field with one is refused.
    text_without_nul: bool,
    steps: Vec<Step>,
    /// Each step's vector length.
    dims: Vec<usize>,
    /// The steps the sink writes, with their columns.
    written: Vec<(usize, Output)>,
    /// `skip_unchanged`: records are fingerprinted ([`Pipeline::fingerprints`]), and their rows
    /// carry the fingerprint.
    skip_unchanged: bool,
    /// The versions of the models that read records, in order: part of every fingerprint.
    input_versions: String,
}

/// A window's good rows and their texts, one list per text model, and its refused rows.
pub struct Prepared {
    pub good: Vec<usize>,
    pub texts: Vec<Vec<String>>,
    pub refused: Vec<(usize, String)>,
    /// The field columns the sink writes, a row per record (null where refused).
    pub columns: Vec<ArrayRef>,
}

impl Prepared {
    /// Keeps the good rows whose `keep` is true (one per good row), with their inputs.
    pub fn keep(&mut self, keep: &[bool]) {
        let pick = |list: &mut Vec<String>| {
            let mut k = keep.iter();
            list.retain(|_| *k.next().expect("one per good row"));
        };
        self.texts.iter_mut().for_each(pick);
        let mut k = keep.iter();
        self.good.retain(|_| *k.next().expect("one per good row"));
    }
}

/// Every model's vectors for a window's good rows (row-major, one list per model, in the spec's
/// order), the size of every model batch that ran, and the rows (of the good ones) that a model
/// could not compute, with the reason.
pub struct Embedded {
    vectors: Vec<Vec<f32>>,
    pub batch_sizes: Vec<usize>,
    failed: Vec<(usize, String)>,
    /// With one output a chunk: each vector's chunk.
    spans: Option<Vec<ChunkSpan>>,
    /// The embedding caches' hits and misses, all models together.
    pub cache: CacheCount,
}

/// A window's output: the rows kept, their vector columns (as [`Pipeline::outputs`]), the rows
/// a model could not compute (an image not fetched or not decoded) with the reason, and those
/// dropped because a model gave a vector with NaN or infinite values.
pub struct Finished {
    /// The input row of each output row (a record's row once a chunk, with one output a chunk).
    pub rows: Vec<usize>,
    /// The vector columns, then with one output a chunk the chunk columns.
    pub columns: Vec<ArrayRef>,
    pub failed: Vec<(usize, String)>,
    pub non_finite: Vec<usize>,
}

impl Pipeline {
    /// The spec's models, those that read records computed by `backends` (one each, in the
    /// spec's order); ONNX heads are loaded here (ONNX Runtime initialised already).
    pub fn new(spec: &JobSpec, backends: Vec<Backend>) -> Result<Pipeline, ModelError> {
        let single = spec.model.is_some();
        let mut backends = backends.into_iter();
        let mut steps: Vec<Step> = Vec::new();
        let mut dims = Vec::new();
        for (i, entry) in spec.model_entries().into_iter().enumerate() {
            let step = match entry {
                ModelEntry::Combine(c) => {
                    let inputs: Vec<usize> = (c.inputs.iter())
                        .map(|n| steps.iter().position(|s| s.name() == n).expect("validated: named before"))
                        .collect();
                    let head = match c.method {
                        CombineMethod::Concat => None,
                        CombineMethod::Onnx => {
                            let named = inputs.iter().map(|&i| (steps[i].name().to_string(), dims[i])).collect();
                            let path = c.onnx.as_ref().expect("validated: method = onnx has onnx");
                            Some(OnnxHead::load(path, named, c.output.as_deref())?)
                        }
                    };
                    dims.push(head.as_ref().map_or_else(|| inputs.iter().map(|&i| dims[i]).sum(), OnnxHead::dim));
                    Step::Combine { name: c.name, inputs, head, normalize: c.normalize }
                }
                reads => {
                    let backend = backends.next().expect("one backend per model that reads records");
                    let key = if single { "model".to_string() } else { format!("models[{i}]") };
                    let (limit, limit_name) = reads.input_limit().expect("a model that reads records");
                    dims.push(backend.dim());
                    Step::Reads(Reader {
                        name: reads.name().to_string(),
                        template: reads.template().expect("a model that reads records"),
                        limit,
                        limit_key: format!("{key}.{limit_name}"),
                        backend,
                    })
                }
            };
            steps.push(step);
        }
        let written = (spec.written_models().iter())
            .map(|name| {
                let i = steps.iter().position(|s| s.name() == name).expect("validated: a model");
                (
                    i,
                    Output {
                        model: name.clone(),
                        version: String::new(),
                        column: spec.output_column(name),
                        dim: dims[i],
                    },
                )
            })
            .collect();
        Ok(Pipeline {
            input: spec.input.clone(),
            columns: spec.field_columns(),
            text_without_nul: matches!(spec.sink.kind, SinkKind::Pgvector(_)),
            steps,
            dims,
            written,
            skip_unchanged: spec.skip_unchanged(),
            input_versions: String::new(),
        })
    }

    /// The vector columns the sink writes, in order.
    pub fn outputs(&self) -> Vec<Output> {
        self.written.iter().map(|(_, o)| o.clone()).collect()
    }

    /// Gives each written output its model's version (`embedstream_core::model_version`).
    pub fn with_versions(mut self, versions: &std::collections::BTreeMap<String, String>) -> Pipeline {
        for (_, o) in &mut self.written {
            o.version = versions.get(&o.model).cloned().unwrap_or_default();
        }
        self.input_versions =
            (self.readers()).map(|r| versions.get(&r.name).map_or("", String::as_str)).collect::<Vec<_>>().join(",");
        self
    }

    /// Whether records whose inputs are unchanged for their key are skipped.
    pub fn skips_unchanged(&self) -> bool {
        self.skip_unchanged
    }

    /// The input fingerprint of each good row of `prepared` ([`crate::unchanged::fingerprint`]).
    pub fn fingerprints(&self, prepared: &Prepared) -> Vec<String> {
        (0..prepared.good.len())
            .map(|j| crate::unchanged::fingerprint(&self.input_versions, prepared.texts.iter().map(|t| t[j].as_str())))
            .collect()
    }

    /// Whether its rows are chunks (`chunk_pooling = "none"`).
    pub fn chunked(&self) -> bool {
        self.readers().any(|r| matches!(r.backend, Backend::Chunks(_)))
    }

    /// The schema of the rows it gives the sink.
    pub fn output_schema(&self) -> SchemaRef {
        let schema = crate::records::output_schema(&self.outputs(), self.chunked(), &self.columns);
        match self.skip_unchanged {
            true => embedstream_sinks::rows::with_input_hash(&schema),
            false => schema,
        }
    }

    /// The models' names, for labels.
    pub fn names(&self) -> String {
        self.steps.iter().map(Step::name).collect::<Vec<_>>().join(",")
    }

    fn readers(&self) -> impl Iterator<Item = &Reader> {
        self.steps.iter().filter_map(|s| match s {
            Step::Reads(t) => Some(t),
            Step::Combine { .. } => None,
        })
    }

    /// Reads each record (`(key, value, headers)` of row `i`, the headers `input.headers` reads
    /// in its order) and renders every text model's input. `decoded` holds each value decoded
    /// with its registered schema (Avro, Protobuf), or why it could not be, when the input has
    /// schemas; the value of a decoded row is then its JSON text.
    pub fn prepare<'a>(
        &self,
        records: impl Iterator<Item = (Option<&'a [u8]>, Option<&'a [u8]>, Vec<Option<&'a [u8]>>)>,
        decoded: Option<&[crate::schemas::Decoded]>,
    ) -> Prepared {
        let texts = self.readers().map(|_| Vec::new()).collect();
        let mut out = Prepared { good: Vec::new(), texts, refused: Vec::new(), columns: Vec::new() };
        let mut rendered = Vec::new();
        // Row-major: each record's cells, one per field column (nulls for a refused record).
        let mut cells: Vec<Cell> = Vec::new();
        let nulls = || std::iter::repeat_n(Cell::Null, self.columns.len());
        for (i, (key, value, headers)) in records.enumerate() {
            rendered.clear();
            let fields = match decoded.map(|d| &d[i]) {
                None => RecordFields::read(&self.input, &self.columns, key, value, &headers),
                Some(Ok(doc)) => RecordFields::read_decoded(&self.input, &self.columns, key, value, doc, &headers),
                Some(Err(reason)) => Err(reason.clone()),
            };
            let fields = fields.and_then(|f| match self.nul_in_text(&f) {
                Some(reason) => Err(reason),
                None => Ok(f),
            });
            let reason = match &fields {
                Err(reason) => Some(reason.clone()),
                Ok(fields) => self.readers().find_map(|m| match m.text(fields) {
                    Ok(text) => {
                        rendered.push(text);
                        None
                    }
                    Err(reason) => Some(reason),
                }),
            };
            match (reason, fields) {
                (None, Ok(fields)) => {
                    out.good.push(i);
                    cells.extend(fields.cells().iter().cloned());
                    for (texts, text) in out.texts.iter_mut().zip(rendered.drain(..)) {
                        texts.push(text);
                    }
                }
                (reason, _) => {
                    out.refused.push((i, reason.unwrap_or_default()));
                    cells.extend(nulls());
                }
            }
        }
        let width = self.columns.len();
        out.columns = (self.columns.iter().enumerate())
            .map(|(c, column)| field_array(column.ty, cells.iter().skip(c).step_by(width.max(1))))
            .collect();
        out
    }

    /// Why a record's text field cannot go into the sink, if it cannot.
    fn nul_in_text(&self, fields: &RecordFields) -> Option<String> {
        if !self.text_without_nul {
            return None;
        }
        (self.columns.iter().zip(fields.cells())).find_map(|(c, cell)| match cell {
            Cell::Text(t) if t.contains('\0') => {
                Some(format!("field `{}` holds a NUL byte, which PostgreSQL's text cannot store", c.name))
            }
            _ => None,
        })
    }

    /// Computes the inputs of [`Pipeline::prepare`], every model at once.
    pub fn embed(
        self: Arc<Self>,
        texts: Vec<Vec<String>>,
    ) -> futures::future::BoxFuture<'static, Result<Embedded, ModelError>> {
        Box::pin(async move {
            let calls = self.readers().zip(texts).map(|(m, inputs)| m.backend.compute(inputs));
            let mut read = Vec::new();
            let mut batch_sizes = Vec::new();
            let mut failed: Vec<(usize, String)> = Vec::new();
            let mut spans = None;
            let mut cache = CacheCount::default();
            for computed in futures::future::try_join_all(calls).await? {
                cache += computed.cache;
                read.push(computed.vectors);
                batch_sizes.extend(computed.batch_sizes);
                spans = spans.or(computed.spans);
                // A row two image models cannot take keeps the first model's reason.
                for (row, reason) in computed.failed {
                    if !failed.iter().any(|(r, _)| *r == row) {
                        failed.push((row, reason));
                    }
                }
            }
            if spans.is_some() {
                // Validated: the query's one model, no combine entry over it.
                return Ok(Embedded { vectors: read, batch_sizes, failed, spans, cache });
            }
            failed.sort_unstable_by_key(|(r, _)| *r);
            // The combined vectors: concatenations here; a head computes, on a blocking thread.
            let vectors = match self.steps.iter().any(|s| matches!(s, Step::Combine { head: Some(_), .. })) {
                false => self.combine(read)?,
                true => tokio::task::spawn_blocking(move || self.combine(read))
                    .await
                    .map_err(|e| ModelError::Inference(format!("combining vectors: {e}")))??,
            };
            Ok(Embedded { vectors, batch_sizes, failed, spans: None, cache })
        })
    }

    /// Every step's vectors, from those of the models that read records (`read`, in order).
    fn combine(&self, read: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, ModelError> {
        let rows = match (read.first(), self.dims.first()) {
            (Some(v), Some(&d)) if d > 0 => v.len() / d,
            _ => 0,
        };
        let mut read = read.into_iter();
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(self.steps.len());
        for (s, step) in self.steps.iter().enumerate() {
            let computed = match step {
                Step::Reads(_) => read.next().expect("one list per model that reads records"),
                Step::Combine { inputs, head: None, normalize, .. } => {
                    let parts: Vec<(&[f32], usize)> = inputs.iter().map(|&i| (&vectors[i][..], self.dims[i])).collect();
                    concat(&parts, rows, self.dims[s], *normalize)
                }
                Step::Combine { inputs, head: Some(head), normalize, .. } => {
                    let parts: Vec<&[f32]> = inputs.iter().map(|&i| &vectors[i][..]).collect();
                    let mut out = head.run(&parts, rows)?;
                    if *normalize {
                        out.chunks_exact_mut(self.dims[s]).for_each(l2_normalize);
                    }
                    out
                }
            };
            vectors.push(computed);
        }
        Ok(vectors)
    }

    /// The output of `good` (the rows [`Pipeline::prepare`] kept) from their vectors.
    pub fn finish(&self, good: &[usize], embedded: Embedded) -> Finished {
        if let Some(spans) = &embedded.spans {
            return self.finish_chunks(good, &embedded.vectors[0], spans);
        }
        let (vectors, failed) = (embedded.vectors, embedded.failed);
        let finite = |r: usize| {
            vectors.iter().zip(&self.dims).all(|(v, &d)| v[r * d..(r + 1) * d].iter().all(|x| x.is_finite()))
        };
        let computed = (0..good.len()).filter(|r| failed.binary_search_by_key(r, |(f, _)| *f).is_err());
        let (kept, non_finite): (Vec<usize>, Vec<usize>) = computed.partition(|&r| finite(r));
        let dropped = non_finite.len() + failed.len();
        let columns = (self.written.iter())
            .map(|(s, o)| {
                let v = &vectors[*s];
                let values = match dropped == 0 {
                    true => v.clone(),
                    false => kept.iter().flat_map(|&r| &v[r * o.dim..(r + 1) * o.dim]).copied().collect(),
                };
                Arc::new(embedding_array(values, o.dim)) as ArrayRef
            })
            .collect();
        Finished {
            rows: kept.iter().map(|&r| good[r]).collect(),
            columns,
            failed: failed.into_iter().map(|(r, reason)| (good[r], reason)).collect(),
            non_finite: non_finite.iter().map(|&r| good[r]).collect(),
        }
    }
}

impl Pipeline {
    /// One output row a chunk: its record's row, its vector, its index and span. A record with
    /// a chunk whose vector is not finite is dropped whole (a dead letter), none of its chunks
    /// written.
    fn finish_chunks(&self, good: &[usize], vectors: &[f32], spans: &[ChunkSpan]) -> Finished {
        let dim = self.dims[0];
        let finite = |c: usize| vectors[c * dim..(c + 1) * dim].iter().all(|x| x.is_finite());
        let mut bad: Vec<usize> = (0..spans.len()).filter(|&c| !finite(c)).map(|c| spans[c].text).collect();
        bad.dedup();
        let kept: Vec<usize> = (0..spans.len()).filter(|&c| !bad.contains(&spans[c].text)).collect();
        let values: Vec<f32> = kept.iter().flat_map(|&c| &vectors[c * dim..(c + 1) * dim]).copied().collect();
        let int = |f: fn(&ChunkSpan) -> usize| {
            Arc::new(Int32Array::from_iter_values(kept.iter().map(|&c| f(&spans[c]) as i32))) as ArrayRef
        };
        Finished {
            rows: kept.iter().map(|&c| good[spans[c].text]).collect(),
            columns: vec![Arc::new(embedding_array(values, dim)), int(|s| s.index), int(|s| s.start), int(|s| s.end)],
            failed: Vec::new(),
            non_finite: bad.iter().map(|&t| good[t]).collect(),
        }
    }
}

impl Reader {
    /// The model's input for `fields` (a text, an image's URL), or why it cannot take the record.
    fn text(&self, fields: &RecordFields) -> Result<String, String> {
        let text = self.template.render(fields)?;
        // What the reasons call the text: the field it is, or the model's text.
        let what = || match self.template.single_field() {
            Some(field) => field.to_string(),
            None => format!("the text of model `{}` ({})", self.name, self.template.source()),
        };
        if text.len() > self.limit {
            return Err(format!("{} is {} bytes, over {} = {}", what(), text.len(), self.limit_key, self.limit));
        }
        if text.trim().is_empty() {
            return Err(format!("{} is empty", what()));
        }
        Ok(text)
    }
}

/// `rows` vectors of `dim` values: each row's parts one after the other, scaled to length 1 if
/// `normalize`.
fn concat(parts: &[(&[f32], usize)], rows: usize, dim: usize, normalize: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * dim);
    for r in 0..rows {
        let start = out.len();
        for &(values, d) in parts {
            out.extend_from_slice(&values[r * d..(r + 1) * d]);
        }
        if normalize {
            l2_normalize(&mut out[start..]);
        }
    }
    out
}

/// Scales `v` to length 1. A zero vector becomes NaN, and its row a dead letter: a combined
/// vector of nothing says nothing.
fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::Lengths;

    fn product_spec(sink_models: &str) -> JobSpec {
        let text = format!(
            r#"
name = "p"
checkpoint_location = "/tmp/p"
[source]
bootstrap_servers = "127.0.0.1:9092"
subscribe = ["in"]
[input]
format = "json"
fields = {{ title = "/title", description = "/description" }}
required = ["title"]
[[models]]
name = "title"
kind = "text-onnx"
text = "{{title}}"
onnx = "/m/model.onnx"
tokenizer = "/m/tokenizer.json"
max_text_bytes = 20
[[models]]
name = "text"
kind = "text-onnx"
text = "{{title}}. {{description}}"
onnx = "/m/model.onnx"
tokenizer = "/m/tokenizer.json"
[[models]]
name = "both"
kind = "combine"
inputs = ["title", "text"]
[sink]
kind = "kafka"
topic = "out"
{sink_models}
"#
        );
        JobSpec::from_toml(&text).unwrap()
    }

    #[tokio::test]
    async fn records_go_through_every_model() {
        let spec = product_spec("");
        let pipeline = Arc::new(
            Pipeline::new(&spec, vec![Backend::Texts(Arc::new(Lengths)), Backend::Texts(Arc::new(Lengths))]).unwrap(),
        );
        let names: Vec<String> = pipeline.outputs().iter().map(|o| format!("{}:{}", o.column, o.dim)).collect();
        assert_eq!(names, ["embedding_title:2", "embedding_text:2", "embedding_both:4"]);
        let values: [&[u8]; 5] = [
            br#"{"title": "Shoe", "description": "Red"}"#,
            br#"{"description": "no title"}"#,
            br#"{"title": "a title far over twenty bytes"}"#,
            br#"{"title": "nan"}"#,
            br#"{"title": "Hat"}"#,
        ];
        let prepared = pipeline.prepare(values.iter().map(|v| (None, Some(*v), Vec::new())), None);
        assert_eq!(prepared.good, [0, 3, 4]);
        assert_eq!(prepared.texts[1], ["Shoe. Red", "nan. ", "Hat. "]);
        let refused: Vec<(usize, &str)> = prepared.refused.iter().map(|(i, r)| (*i, r.as_str())).collect();
        assert_eq!(
            refused,
            [
                (1, "required field `title` (/title) is missing"),
                (2, "title is 29 bytes, over models[0].max_text_bytes = 20"),
            ]
        );
        let embedded = pipeline.clone().embed(prepared.texts).await.unwrap();
        let finished = pipeline.finish(&prepared.good, embedded);
        assert_eq!((finished.rows, finished.non_finite), (vec![0, 4], vec![3]));
        let both = finished.columns[2].as_any().downcast_ref::<arrow_array::FixedSizeListArray>().unwrap();
        let values = both.values().as_any().downcast_ref::<arrow_array::Float32Array>().unwrap();
        assert_eq!(values.values().as_ref(), [4.0, 1.0, 9.0, 1.0, 3.0, 1.0, 5.0, 1.0]);
    }

    #[test]
    fn the_sink_writes_the_models_it_names() {
        let spec = product_spec("models = [\"both\"]");
        let pipeline =
            Pipeline::new(&spec, vec![Backend::Texts(Arc::new(Lengths)), Backend::Texts(Arc::new(Lengths))]).unwrap();
        let both = Output { model: "both".into(), version: String::new(), column: "embedding_both".into(), dim: 4 };
        assert_eq!(pipeline.outputs(), [both]);
    }

    #[test]
    fn concat_joins_and_normalises() {
        let a = [3.0, 0.0, 0.0, 1.0];
        let b = [4.0, 0.0];
        assert_eq!(concat(&[(&a, 2), (&b, 1)], 2, 3, false), [3.0, 0.0, 4.0, 0.0, 1.0, 0.0]);
        assert_eq!(concat(&[(&a, 2), (&b, 1)], 2, 3, true), [0.6, 0.0, 0.8, 0.0, 1.0, 0.0]);
        // A zero vector cannot be normalised: it is NaN, and its row is dropped as non-finite.
        assert!(concat(&[(&[0.0], 1)], 1, 1, true)[0].is_nan());
    }
}
