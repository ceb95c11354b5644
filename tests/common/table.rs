//! Reading a Parquet sink's table back through its manifests, as a reader that honours them does.

use std::collections::BTreeMap;
use std::path::Path;

use arrow_array::{Array, FixedSizeListArray, Float32Array, Int32Array, Int64Array, StringArray};
use embedstream_core::manifest;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// (partition, offset) -> (text, embedding).
pub type Rows = BTreeMap<(i32, i64), (String, Vec<f32>)>;

/// (partition, offset) -> (text, embedding) of every row in the files the manifests list.
pub fn read_table(table: &Path) -> (Rows, usize) {
    let (rows, count) = read_vectors(table, &["embedding"]);
    (rows.into_iter().map(|(at, (text, mut vectors))| (at, (text, vectors.remove(0)))).collect(), count)
}

/// (partition, offset) -> (value, one vector per column asked for).
pub type VectorRows = BTreeMap<(i32, i64), (String, Vec<Vec<f32>>)>;

/// (partition, offset) -> (value, the vectors of `columns`) of every row the manifests list.
pub fn read_vectors(table: &Path, columns: &[&str]) -> (VectorRows, usize) {
    let mut rows = BTreeMap::new();
    let mut count = 0;
    let copies = tempfile::tempdir().unwrap();
    for (i, file) in manifest::visible_files(table).unwrap().into_iter().enumerate() {
        // A table on HDFS is read through a local copy of each file.
        let file = if embedstream_core::store::is_hdfs(&file) {
            let copy = copies.path().join(format!("{i}.parquet"));
            embedstream_core::store::download(&file, &copy).unwrap();
            copy
        } else {
            file
        };
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap()).unwrap().build().unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let col = |n: &str| batch.column_by_name(n).unwrap().clone();
            let (p, o, v) = (col("partition"), col("offset"), col("value"));
            let p = p.as_any().downcast_ref::<Int32Array>().unwrap();
            let o = o.as_any().downcast_ref::<Int64Array>().unwrap();
            let v = v.as_any().downcast_ref::<StringArray>().unwrap();
            let vectors: Vec<_> = columns.iter().map(|c| col(c)).collect();
            for i in 0..batch.num_rows() {
                let row = (vectors.iter())
                    .map(|e| {
                        let vector = e.as_any().downcast_ref::<FixedSizeListArray>().unwrap().value(i);
                        vector.as_any().downcast_ref::<Float32Array>().unwrap().values().to_vec()
                    })
                    .collect();
                rows.insert((p.value(i), o.value(i)), (v.value(i).to_string(), row));
                count += 1;
            }
        }
    }
    (rows, count)
}

/// A file of a batch that has no manifest yet: (its batch, the executor writing it).
pub fn file_being_written(table: &Path) -> Option<(u64, String)> {
    file_of_a_batch_in_flight(table, |batch| manifest::committed(table, batch).unwrap().is_some())
}

/// A data file under `table` of a batch that `published` says is not published yet, and the
/// executor that wrote it (from its name).
pub fn file_of_a_batch_in_flight(table: &Path, published: impl Fn(u64) -> bool) -> Option<(u64, String)> {
    manifest::data_files(table).unwrap().into_iter().find_map(|f| {
        // part-<batch>-<task>-<attempt>-<executor id>-<hex>.parquet
        let name = f.file_name()?.to_str()?.strip_prefix("part-")?.strip_suffix(".parquet")?.to_string();
        let mut parts = name.splitn(4, '-');
        let batch: u64 = parts.next()?.parse().ok()?;
        let (_task, _attempt) = (parts.next()?, parts.next()?);
        let executor = parts.next()?.rsplit_once('-')?.0.to_string();
        (!published(batch)).then_some((batch, executor))
    })
}
