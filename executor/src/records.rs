//! The records every part of the executor agrees on: the row schemas the sinks take
//! (`embedstream_sinks::rows`, re-exported), the check that decides whether a Flight text can be
//! embedded, the recent output that tasks keep and Arrow Flight's `DoGet` serves, and a read
//! window's columns ([`Rows`]). Tasks and Flight both use this module, and neither uses the
//! other for these.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

pub use embedstream_sinks::rows::{embedding_array, embedding_type, field_array, input_schema, output_schema, Output};

/// The columns a task reads: the input schema, then one Binary column per Kafka header that
/// `input.headers` reads as a field (`header:<name>`, null where a record has none). Those stay
/// in the executor: the sinks get [`input_schema`]'s columns.
pub fn read_schema(headers: &[String]) -> SchemaRef {
    let base = input_schema();
    let extra = headers.iter().map(|h| Arc::new(Field::new(format!("header:{h}"), DataType::Binary, true)));
    let fields: Vec<_> = base.fields().iter().cloned().chain(extra).collect();
    Arc::new(Schema::new(fields))
}

/// Why a value cannot be embedded, or `None` when it can.
pub fn reject_reason(value: Option<&[u8]>, max_bytes: usize) -> Option<String> {
    let Some(v) = value else {
        return Some("value is null".into());
    };
    if v.len() > max_bytes {
        return Some(format!("value is {} bytes, over model.max_text_bytes = {max_bytes}", v.len()));
    }
    match std::str::from_utf8(v) {
        Err(e) => Some(format!("value is not valid UTF-8: {e}")),
        Ok(s) if s.trim().is_empty() => Some("value is empty".into()),
        Ok(_) => None,
    }
}

/// The reason a row whose vector holds a NaN or an infinity goes to the dead-letter topic.
pub const NON_FINITE: &str = "the model gave a vector with NaN or infinite values";

/// The latest output batches of this executor's tasks, oldest first, all of one schema: at most
/// `capacity` of them and `max_bytes` in all (`flight.recent_batches`, `flight.recent_bytes`),
/// so that large records cannot make it hold gigabytes whether or not anyone calls `DoGet`. A
/// batch larger than `max_bytes` alone is not kept.
pub struct RecentOutput {
    capacity: usize,
    max_bytes: usize,
    schema: SchemaRef,
    batches: Mutex<(VecDeque<(RecordBatch, usize)>, usize)>,
}

impl RecentOutput {
    pub fn new(capacity: usize, max_bytes: usize, schema: SchemaRef) -> RecentOutput {
        RecentOutput { capacity, max_bytes, schema, batches: Mutex::new((VecDeque::with_capacity(capacity), 0)) }
    }

    /// The schema of every batch it keeps: the tasks' output rows.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Keeps `batch` (its columns are shared, not copied), dropping the oldest beyond the
    /// bounds. Its size is the memory of the buffers it refers to.
    pub fn push(&self, batch: &RecordBatch) {
        let size = batch.get_array_memory_size();
        if self.capacity == 0 || size > self.max_bytes {
            return;
        }
        let mut kept = self.batches.lock().unwrap();
        let (batches, bytes) = &mut *kept;
        while batches.len() == self.capacity || *bytes + size > self.max_bytes {
            let Some((_, old)) = batches.pop_front() else { break };
            *bytes -= old;
        }
        batches.push_back((batch.clone(), size));
        *bytes += size;
    }

    pub fn snapshot(&self) -> Vec<RecordBatch> {
        self.batches.lock().unwrap().0.iter().map(|(b, _)| b.clone()).collect()
    }

    /// Bytes of the batches kept now.
    pub fn bytes(&self) -> usize {
        self.batches.lock().unwrap().1
    }
}

/// A chunk's columns the checks and the dead letters read.
pub struct Rows<'a> {
    keys: &'a BinaryArray,
    values: &'a BinaryArray,
    offsets: &'a Int64Array,
    /// The header columns, in the order of `input.headers`.
    headers: Vec<&'a BinaryArray>,
}

/// `chunk` with each value that decoded replaced by the decoded record's JSON text.
pub fn with_decoded_values(chunk: &RecordBatch, decoded: &[crate::schemas::Decoded]) -> RecordBatch {
    let at = chunk.schema().index_of("value").expect("input schema column");
    let raw = chunk.column(at).as_any().downcast_ref::<BinaryArray>().expect("binary values");
    let texts: Vec<Option<Vec<u8>>> = (decoded.iter().enumerate())
        .map(|(i, d)| match d {
            Ok(doc) => Some(doc.to_string().into_bytes()),
            Err(_) => raw.is_valid(i).then(|| raw.value(i).to_vec()),
        })
        .collect();
    let mut columns = chunk.columns().to_vec();
    columns[at] = Arc::new(BinaryArray::from_iter(texts));
    RecordBatch::try_new(chunk.schema(), columns).expect("the same schema, one column replaced")
}

impl<'a> Rows<'a> {
    pub fn of(chunk: &'a RecordBatch) -> Rows<'a> {
        let col = |name: &str| chunk.column_by_name(name).expect("input schema column");
        Rows {
            keys: col("key").as_any().downcast_ref::<BinaryArray>().expect("binary keys"),
            values: col("value").as_any().downcast_ref::<BinaryArray>().expect("binary values"),
            offsets: col("offset").as_any().downcast_ref::<Int64Array>().expect("int64 offsets"),
            headers: (chunk.schema().fields().iter().enumerate())
                .filter(|(_, f)| f.name().starts_with("header:"))
                .map(|(i, _)| chunk.column(i).as_any().downcast_ref::<BinaryArray>().expect("binary headers"))
                .collect(),
        }
    }

    /// Row `i`'s values of the headers read as fields.
    pub fn headers(&self, i: usize) -> Vec<Option<&'a [u8]>> {
        self.headers.iter().map(|h| h.is_valid(i).then(|| h.value(i))).collect()
    }

    pub fn value(&self, i: usize) -> Option<&'a [u8]> {
        self.values.is_valid(i).then(|| self.values.value(i))
    }

    pub fn offset(&self, i: usize) -> i64 {
        self.offsets.value(i)
    }

    pub fn key(&self, i: usize) -> Option<&'a [u8]> {
        self.keys.is_valid(i).then(|| self.keys.value(i))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::Int64Array;

    use super::*;

    #[test]
    fn bad_values_have_reasons() {
        assert_eq!(reject_reason(Some(b"a shoe"), 100), None);
        assert!(reject_reason(None, 100).unwrap().contains("null"));
        assert!(reject_reason(Some(b""), 100).unwrap().contains("empty"));
        assert!(reject_reason(Some(b"  \n"), 100).unwrap().contains("empty"));
        assert!(reject_reason(Some(&[0xff, 0xfe]), 100).unwrap().contains("UTF-8"));
        assert!(reject_reason(Some(&[b'x'; 101]), 100).unwrap().contains("101 bytes"));
    }

    #[test]
    fn recent_output_keeps_the_latest() {
        let recent = RecentOutput::new(2, 1 << 20, output_schema(&[], false, &[]));
        for n in 1..=3 {
            recent.push(&RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(vec![n])) as _)]).unwrap());
        }
        let kept: Vec<i64> = recent
            .snapshot()
            .iter()
            .map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0))
            .collect();
        assert_eq!(kept, vec![2, 3]);
    }

    /// Issue 31, item 8: sixteen windows of 1 MB records were kept on every executor whether
    /// or not anyone used Flight.
    #[test]
    fn memory_bounded_in_bytes_not_rows() {
        let batch = |n: usize| {
            let values = arrow_array::BinaryArray::from_iter_values(std::iter::repeat_n(vec![7u8; 1 << 20], n));
            RecordBatch::try_from_iter([("value", Arc::new(values) as _)]).unwrap()
        };
        let size = batch(3).get_array_memory_size();
        assert!(size >= 3 << 20);
        // Room for two and a half windows of 3 MB.
        let bound = 2 * size + size / 2;
        let recent = RecentOutput::new(16, bound, output_schema(&[], false, &[]));
        for _ in 0..16 {
            recent.push(&batch(3));
        }
        assert!(recent.bytes() <= bound, "{} bytes kept", recent.bytes());
        assert_eq!(recent.snapshot().len(), 2, "two 3 MB windows fit");
        recent.push(&batch(9));
        assert_eq!(recent.snapshot().len(), 2, "a window over the bound alone is not kept");
    }
}
