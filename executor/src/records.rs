//! The records every part of the executor agrees on: the row schemas the sinks take
//! (`embedstream_sinks::rows`, re-exported), the check that decides whether a Flight text can be
//! embedded, and the recent output that tasks keep and Arrow Flight's `DoGet` serves. Tasks and
//! Flight both use this module, and neither uses the other for these.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

pub use embedstream_sinks::rows::{embedding_array, embedding_type, input_schema, output_schema, Output};

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

/// The latest output batches of this executor's tasks, at most `capacity`, oldest first, all of
/// one schema.
pub struct RecentOutput {
    capacity: usize,
    schema: SchemaRef,
    batches: Mutex<VecDeque<RecordBatch>>,
}

impl RecentOutput {
    pub fn new(capacity: usize, schema: SchemaRef) -> RecentOutput {
        RecentOutput { capacity, schema, batches: Mutex::new(VecDeque::with_capacity(capacity)) }
    }

    /// The schema of every batch it keeps: the tasks' output rows.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
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
        let recent = RecentOutput::new(2, output_schema(&[], false));
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
