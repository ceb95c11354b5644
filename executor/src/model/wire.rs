//! Frames between an executor and its model workers over a Unix socket: a kind byte, a u32
//! little-endian length, then the payload. Requests carry an Arrow IPC stream of one batch: a
//! text model's tokenized texts (`ids` and `types`, List<UInt32>: the executor tokenized them
//! to sort them, so the worker does not again) or its texts (`text`, Utf8), an image model's a
//! `pixels` column (each image's preprocessed tensor, FixedSizeList<Float32>). Replies carry an Arrow IPC stream with an
//! `embedding` (FixedSizeList<Float32>) column, or a UTF-8 error message.

use std::io::{self, Read, Write};
use std::sync::Arc;

use arrow_array::types::UInt32Type;
use arrow_array::{Array, FixedSizeListArray, Float32Array, ListArray, RecordBatch, StringArray, UInt32Array};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema};
use embedstream_core::spec::{ImageSpec, ModelSpec};

pub const TEXTS: u8 = 1;
pub const VECTORS: u8 = 2;
pub const ERROR: u8 = 3;
pub const IMAGES: u8 = 4;
pub const TOKENS: u8 = 5;

fn ipc(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema()).expect("schema encodes");
    w.write(batch).expect("batch encodes");
    w.finish().expect("stream ends");
    drop(w);
    out
}

fn batch(bytes: &[u8]) -> io::Result<RecordBatch> {
    let bad = |e: arrow_schema::ArrowError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut r = StreamReader::try_new(bytes, None).map_err(bad)?;
    r.next().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no record batch"))?.map_err(bad)
}

pub fn encode_texts<S: AsRef<str>>(texts: &[S]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
    let col = StringArray::from_iter_values(texts.iter().map(AsRef::as_ref));
    ipc(&RecordBatch::try_new(schema, vec![Arc::new(col)]).expect("one utf8 column"))
}

pub fn decode_texts(bytes: &[u8]) -> io::Result<Vec<String>> {
    let b = batch(bytes)?;
    let col = b
        .column_by_name("text")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no utf8 `text` column"))?;
    Ok(col.iter().map(|t| t.unwrap_or_default().to_string()).collect())
}

/// A batch of tokenized texts: each text's token ids and type ids, as its tokenizer gave them
/// (no padding: the worker pads the batch to its longest).
pub fn encode_tokens(rows: &[(&[u32], &[u32])]) -> Vec<u8> {
    let list = |types: bool| {
        ListArray::from_iter_primitive::<UInt32Type, _, _>(
            rows.iter().map(|&(i, t)| Some((if types { t } else { i }).iter().copied().map(Some).collect::<Vec<_>>())),
        )
    };
    let (ids, types) = (list(false), list(true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("ids", ids.data_type().clone(), false),
        Field::new("types", types.data_type().clone(), false),
    ]));
    ipc(&RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(types)]).expect("two u32 list columns"))
}

/// [`encode_tokens`]' rows: (ids, type ids) of each text, of one length.
pub fn decode_tokens(bytes: &[u8]) -> io::Result<Vec<(Vec<u32>, Vec<u32>)>> {
    let b = batch(bytes)?;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let lists = |name: &str| -> io::Result<Vec<Vec<u32>>> {
        let list = (b.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<ListArray>()))
            .ok_or_else(|| bad(format!("no `{name}` list column")))?;
        (0..list.len())
            .map(|i| {
                let row = list.value(i);
                let row =
                    row.as_any().downcast_ref::<UInt32Array>().ok_or_else(|| bad(format!("`{name}` is not u32")))?;
                Ok(row.values().to_vec())
            })
            .collect()
    };
    let (ids, types) = (lists("ids")?, lists("types")?);
    if ids.iter().zip(&types).any(|(i, t)| i.len() != t.len()) {
        return Err(bad("a text's ids and type ids differ in length".into()));
    }
    Ok(ids.into_iter().zip(types).collect())
}

/// One column `name` of f32 lists of `len` values (vectors, or images' tensors).
fn encode_lists(name: &str, values: Vec<f32>, len: usize) -> Vec<u8> {
    let list = crate::records::embedding_array(values, len);
    let schema = Arc::new(Schema::new(vec![Field::new(name, list.data_type().clone(), false)]));
    ipc(&RecordBatch::try_new(schema, vec![Arc::new(list)]).expect("one list column"))
}

/// Column `name`'s values, flat, and each list's length.
fn decode_lists(bytes: &[u8], name: &str) -> io::Result<(Vec<f32>, usize)> {
    let b = batch(bytes)?;
    let list = b
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no `{name}` list column")))?;
    let values = list
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("`{name}` items are not f32")))?;
    Ok((values.values().to_vec(), list.value_length() as usize))
}

pub fn encode_vectors(values: Vec<f32>, dim: usize) -> Vec<u8> {
    encode_lists("embedding", values, dim)
}

/// The vectors, flat, and their dimension.
pub fn decode_vectors(bytes: &[u8]) -> io::Result<(Vec<f32>, usize)> {
    decode_lists(bytes, "embedding")
}

/// A batch of images' tensors, `len` values each, one after the other.
pub fn encode_pixels(values: Vec<f32>, len: usize) -> Vec<u8> {
    encode_lists("pixels", values, len)
}

/// The tensors, flat, and each one's length.
pub fn decode_pixels(bytes: &[u8]) -> io::Result<(Vec<f32>, usize)> {
    decode_lists(bytes, "pixels")
}

pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// Room in a frame beyond its texts or vectors: Arrow IPC's schema and framing, or an error
/// message.
const FRAME_OVERHEAD: usize = 64 << 10;

/// The largest request a worker takes: a batch of `batch_size` texts of at most
/// `max_text_bytes` each, with their offsets.
pub fn request_limit(model: &ModelSpec) -> usize {
    // Texts, or their tokens: two u32 lists of at most max_seq_len values, with offsets.
    let text = model.max_text_bytes.saturating_add(8);
    let tokens = model.max_seq_len.saturating_mul(8).saturating_add(16);
    model.batch_size.saturating_mul(text.max(tokens)).saturating_add(FRAME_OVERHEAD)
}

/// The bytes of `rows` lists of `len` f32 values in Arrow IPC: 4 a value, and a validity bit a
/// value that the IPC writer sends for the list's child array.
fn lists_bytes(rows: usize, len: usize) -> usize {
    let values = rows.saturating_mul(len);
    values.saturating_mul(4).saturating_add(values.div_ceil(8))
}

/// The largest request an image model's worker takes: a batch of `batch_size` tensors.
pub fn image_request_limit(model: &ImageSpec) -> usize {
    lists_bytes(model.batch_size, model.preprocess.tensor_len()).saturating_add(FRAME_OVERHEAD)
}

/// The largest answer from a worker: a batch of `batch_size` vectors of `dim` f32 values.
pub fn answer_limit(batch_size: usize, dim: usize) -> usize {
    lists_bytes(batch_size, dim).saturating_add(FRAME_OVERHEAD)
}

/// The frame's header: its kind and the length of its payload, refused over `limit`.
pub fn frame_len(head: &[u8; 5], limit: usize) -> io::Result<usize> {
    let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes")) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, over the {limit} the batch limits allow"),
        ));
    }
    Ok(len)
}

/// The next frame of at most `limit` bytes, or `None` when the peer closed the connection
/// between frames.
pub fn read_frame(r: &mut impl Read, limit: usize) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut payload = vec![0u8; frame_len(&head, limit)?];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_fit_the_request_limit() {
        let rows: [(&[u32], &[u32]); 3] = [(&[101, 7, 102], &[0, 0, 0]), (&[], &[]), (&[101, 102], &[0, 1])];
        let back = decode_tokens(&encode_tokens(&rows)).unwrap();
        assert_eq!(back.iter().map(|(i, t)| (i.as_slice(), t.as_slice())).collect::<Vec<_>>(), rows);
        // A full batch of texts of max_seq_len tokens fits what a worker takes.
        let dir = std::path::PathBuf::from("m");
        let spec = ModelSpec { max_text_bytes: 1, ..ModelSpec::new(dir.join("model.onnx"), dir.join("t.json")) };
        let ids: Vec<u32> = (0..spec.max_seq_len as u32).collect();
        let full: Vec<(&[u32], &[u32])> = (0..spec.batch_size).map(|_| (ids.as_slice(), ids.as_slice())).collect();
        assert!(encode_tokens(&full).len() <= request_limit(&spec));
    }

    #[test]
    fn texts_and_vectors_round_trip() {
        let texts = ["a shoe", "", "naïve café"];
        assert_eq!(decode_texts(&encode_texts(&texts)).unwrap(), texts);
        let v: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        assert_eq!(decode_vectors(&encode_vectors(v.clone(), 3)).unwrap(), (v.clone(), 3));
        assert_eq!(decode_pixels(&encode_pixels(v.clone(), 2)).unwrap(), (v, 2));
        let mut buf = Vec::new();
        write_frame(&mut buf, TEXTS, b"xyz").unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_frame(&mut r, 3).unwrap(), Some((TEXTS, b"xyz".to_vec())));
        assert_eq!(read_frame(&mut r, 3).unwrap(), None);
        // Issue 14, finding 11: a frame over the limit is refused before anything is allocated.
        let mut huge = vec![TEXTS];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = read_frame(&mut &huge[..], request_limit(&ModelSpec::new("m".into(), "t".into()))).unwrap_err();
        assert!(e.to_string().contains("4294967295 bytes, over the"), "{e}");
    }

    /// A full batch's frame fits its limit: the workers refused EfficientNet's batches of 4
    /// (2.48 MB) when the limits counted 4 bytes a value and no validity bits.
    #[test]
    fn the_largest_batches_fit_their_limits() {
        use embedstream_core::spec::image::{Channels, PreprocessSpec};
        let preprocess =
            PreprocessSpec { resize: 256, crop: 224, mean: [127.0; 3], scale: [128.0; 3], channels: Channels::Rgb };
        for batch_size in [1, 4, 64] {
            let spec: ImageSpec = toml::from_str(&format!(
                "name = \"i\"\nonnx = \"/m.onnx\"\nbatch_size = {batch_size}\n[preprocess]\nresize = 256\ncrop = 224\n\
                 mean = [127.0, 127.0, 127.0]\nscale = [128.0, 128.0, 128.0]"
            ))
            .unwrap();
            assert_eq!(spec.preprocess, preprocess);
            let len = preprocess.tensor_len();
            let frame = encode_pixels(vec![0.5; batch_size * len], len);
            assert!(frame.len() <= image_request_limit(&spec), "{batch_size} images: {} bytes", frame.len());
            let answer = encode_vectors(vec![0.5; 4096 * 1024], 1024);
            assert!(answer.len() <= answer_limit(4096, 1024), "{} bytes", answer.len());
        }
    }
}
