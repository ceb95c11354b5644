//! The records every part of the executor agrees on: the row schemas the sinks take
//! (`embedstream_sinks::rows`, re-exported), the check that decides whether a value can be
//! embedded, and the recent output that tasks keep and Arrow Flight's `DoGet` serves. Tasks and
//! Flight both use this module, and neither uses the other for these.

use std::collections::VecDeque;
use std::sync::Mutex;

use arrow_array::RecordBatch;

pub use embedstream_sinks::rows::{embedding_array, embedding_type, input_schema, output_schema};

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

/// Splits a window's rows by their vectors (`dim` values a row): the rows whose every value is
/// finite with their vectors, and the rows that are not.
pub fn keep_finite(rows: &[usize], vectors: Vec<f32>, dim: usize) -> (Vec<usize>, Vec<f32>, Vec<usize>) {
    let finite = |r: usize| vectors[r * dim..(r + 1) * dim].iter().all(|x| x.is_finite());
    if dim == 0 || (0..rows.len()).all(finite) {
        return (rows.to_vec(), vectors, Vec::new());
    }
    let (mut kept, mut kept_vectors, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
    for (r, &row) in rows.iter().enumerate() {
        if finite(r) {
            kept.push(row);
            kept_vectors.extend_from_slice(&vectors[r * dim..(r + 1) * dim]);
        } else {
            dropped.push(row);
        }
    }
    (kept, kept_vectors, dropped)
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

    /// Issue 14, finding 14: a NaN or infinite vector is not written.
    #[test]
    fn non_finite_vectors_are_split_off() {
        let vectors = vec![0.5, 0.5, f32::NAN, 1.0, 2.0, 2.0, 1.0, f32::INFINITY];
        let (kept, kept_vectors, dropped) = keep_finite(&[10, 11, 12, 13], vectors, 2);
        assert_eq!((kept, dropped), (vec![10, 12], vec![11, 13]));
        assert_eq!(kept_vectors, [0.5, 0.5, 2.0, 2.0]);
        let (kept, _, dropped) = keep_finite(&[1, 2], vec![1.0, -1.0], 1);
        assert_eq!((kept.len(), dropped.len()), (2, 0));
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
