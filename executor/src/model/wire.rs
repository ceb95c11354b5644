//! Frames between an executor and its model workers over a Unix socket: a kind byte, a u32
//! little-endian length, then the payload. Requests carry an Arrow IPC stream of one batch with
//! a `text` (Utf8) column; replies an Arrow IPC stream with an `embedding`
//! (FixedSizeList<Float32>) column, or a UTF-8 error message.

use std::io::{self, Read, Write};
use std::sync::Arc;

use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema};

pub const TEXTS: u8 = 1;
pub const VECTORS: u8 = 2;
pub const ERROR: u8 = 3;

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

pub fn encode_vectors(values: Vec<f32>, dim: usize) -> Vec<u8> {
    let list = crate::records::embedding_array(values, dim);
    let schema = Arc::new(Schema::new(vec![Field::new("embedding", list.data_type().clone(), false)]));
    ipc(&RecordBatch::try_new(schema, vec![Arc::new(list)]).expect("one list column"))
}

/// The vectors, flat, and their dimension.
pub fn decode_vectors(bytes: &[u8]) -> io::Result<(Vec<f32>, usize)> {
    let b = batch(bytes)?;
    let list = b
        .column_by_name("embedding")
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no `embedding` list column"))?;
    let values = list
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "embedding items are not f32"))?;
    Ok((values.values().to_vec(), list.value_length() as usize))
}

pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// The next frame, or `None` when the peer closed the connection between frames.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes")) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_vectors_round_trip() {
        let texts = ["a shoe", "", "naïve café"];
        assert_eq!(decode_texts(&encode_texts(&texts)).unwrap(), texts);
        let v: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        assert_eq!(decode_vectors(&encode_vectors(v.clone(), 3)).unwrap(), (v, 3));
        let mut buf = Vec::new();
        write_frame(&mut buf, TEXTS, b"xyz").unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_frame(&mut r).unwrap(), Some((TEXTS, b"xyz".to_vec())));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }
}
