//! The records every part of the executor agrees on: the schema of what is read from Kafka,
//! the schema of what a task writes (input columns and the embedding), the embedding column,
//! the check that decides whether a value can be embedded, and the recent output that tasks
//! keep and Arrow Flight's `DoGet` serves. Tasks, sinks and Flight all use this module, and
//! none of them uses another for these.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow_array::{FixedSizeListArray, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

/// The schema of records read from Kafka.
pub fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("timestamp_ms", DataType::Int64, true),
    ]))
}

/// The rows a task writes: the input record's columns (`reader::input_schema`) and its vector.
pub fn output_schema(dim: usize) -> SchemaRef {
    let input = input_schema();
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("embedding", embedding_type(dim), false));
    Arc::new(Schema::new(fields))
}

/// The item field of every embedding column: non-null Float32.
fn embedding_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

pub fn embedding_type(dim: usize) -> DataType {
    DataType::FixedSizeList(embedding_item(), dim as i32)
}

/// An embedding column of [`embedding_type`] from row-major `vectors`, `dim` values per row.
pub fn embedding_array(vectors: Vec<f32>, dim: usize) -> FixedSizeListArray {
    FixedSizeListArray::new(embedding_item(), dim as i32, Arc::new(Float32Array::from(vectors)), None)
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

/// The latest output batches of this executor's tasks, at most `capacity`, oldest first.
pub struct RecentOutput {
    capacity: usize,
    batches: Mutex<VecDeque<RecordBatch>>,
}

impl RecentOutput {
    pub fn new(capacity: usize) -> RecentOutput {
        RecentOutput { capacity, batches: Mutex::new(VecDeque::with_capacity(capacity)) }
    }

    /// Keeps `batch` (its columns are shared, not copied), dropping the oldest beyond capacity.
    pub fn push(&self, batch: &RecordBatch) {
        if self.capacity == 0 {
            return;
        }
        let mut batches = self.batches.lock().unwrap();
        if batches.len() == self.capacity {
            batches.pop_front();
        }
        batches.push_back(batch.clone());
    }

    pub fn snapshot(&self) -> Vec<RecordBatch> {
        self.batches.lock().unwrap().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
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
        let recent = RecentOutput::new(2);
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
}
