//! The Parquet sink: zstd-compressed Parquet files in Hive-style partition directories
//! (`dt=YYYY-MM-DD/`, from each record's Kafka timestamp in UTC), published per batch by the
//! driver's manifest (`embedstream_core::manifest`, written by [`ManifestCommitter`]), which
//! makes them exactly-once for readers.
//!
//! Columns: `key` (binary), `topic`, `partition`, `offset`, `kafka_timestamp` (ms, UTC), then
//! for one model `model` and `embedding` (FixedSizeList<Float32>), for several one
//! `embedding_<name>` column per written model, `chunk`, `token_start` and `token_end` (Int32)
//! when rows are chunks (`chunk_pooling = "none"`), `value` (the record's value as text)
//! when `sink.columns` names it, then the other fields `sink.columns` names, typed by
//! `[input.types]` (string, int64, double, boolean, timestamp in ms UTC; null when absent).
//!
//! A table on HDFS (`path = "hdfs://..."`) is written the same way through
//! [`embedstream_core::store`]: each task attempt's file is built in memory and written whole
//! when the task commits (a task's file is a batch's share of one partition: megabytes).

mod committer;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use embedstream_core::manifest::{self, ManifestFile};
use embedstream_core::spec::{FieldColumn, ParquetSinkSpec, PartitionBy};
use embedstream_core::store;
use futures::future::BoxFuture;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

pub use committer::ManifestCommitter;

use crate::rows::{embedding_type, field_of, Output, CHUNK_COLUMNS};
use crate::{SinkContext, SinkError, TaskInfo, TaskOutput, TaskWriter};

pub struct ParquetSink {
    table: PathBuf,
    partition_by: PartitionBy,
    with_value: bool,
    /// The input fields written as columns after `value`.
    fields: Vec<FieldColumn>,
    outputs: Vec<Output>,
    /// Rows are chunks: the chunk's index and token span are columns too.
    chunks: bool,
    /// Tells apart the files of attempts that share batch, task and attempt numbers (a driver
    /// that ran the batch again after a restart).
    unique: String,
    schema: SchemaRef,
}

impl ParquetSink {
    pub fn new(spec: &ParquetSinkSpec, ctx: &SinkContext<'_>) -> Result<ParquetSink, SinkError> {
        let (outputs, chunks) = (ctx.outputs.clone(), ctx.chunks);
        let table = spec.path.clone();
        store::create_dir_all(&table, false).map_err(|e| file_error(&table, e))?;
        let with_value = spec.with_value();
        let mut fields = vec![
            Field::new("key", DataType::Binary, true),
            Field::new("topic", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("offset", DataType::Int64, false),
            Field::new("kafka_timestamp", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        ];
        if let [one] = outputs.as_slice() {
            fields.push(Field::new("model", DataType::Utf8, false));
            fields.push(Field::new(&one.column, embedding_type(one.dim), false));
        } else {
            fields.extend(outputs.iter().map(|o| Field::new(&o.column, embedding_type(o.dim), false)));
        }
        fields.extend(outputs.iter().map(|o| Field::new(o.version_column(&outputs), DataType::Utf8, false)));
        if chunks {
            fields.extend(CHUNK_COLUMNS.iter().map(|c| Field::new(*c, DataType::Int32, false)));
        }
        if with_value {
            fields.push(Field::new("value", DataType::Utf8, true));
        }
        fields.extend(ctx.fields.iter().map(field_of));
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(ParquetSink {
            table,
            partition_by: spec.partition_by,
            with_value,
            fields: ctx.fields.clone(),
            outputs,
            chunks,
            unique: format!("{}-{:x}", ctx.executor_id, started.as_nanos()),
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The file schema's columns for `rows` (columns of `crate::rows::output_schema`).
    fn columns(&self, rows: &RecordBatch) -> Result<RecordBatch, SinkError> {
        let col = |name: &str| rows.column_by_name(name).expect("the output schema").clone();
        let stamps = col("timestamp_ms");
        let stamps = stamps.as_any().downcast_ref::<Int64Array>().expect("int64 timestamps");
        let stamps =
            TimestampMillisecondArray::new(stamps.values().clone(), stamps.nulls().cloned()).with_timezone("UTC");
        let mut columns: Vec<ArrayRef> =
            vec![col("key"), col("topic"), col("partition"), col("offset"), Arc::new(stamps)];
        if let [one] = self.outputs.as_slice() {
            columns.push(Arc::new(StringArray::from(vec![one.model.as_str(); rows.num_rows()])));
        }
        columns.extend(self.outputs.iter().map(|o| col(&o.column)));
        let versions = self.outputs.iter().map(|o| StringArray::from(vec![o.version.as_str(); rows.num_rows()]));
        columns.extend(versions.map(|v| Arc::new(v) as ArrayRef));
        if self.chunks {
            columns.extend(CHUNK_COLUMNS.iter().map(|c| col(c)));
        }
        if self.with_value {
            let values = col("value");
            let values = values.as_any().downcast_ref::<BinaryArray>().expect("binary values");
            // Embedded rows hold UTF-8 text: anything else went to the dead-letter topic.
            columns.push(Arc::new(StringArray::from_iter(
                values.iter().map(|v| v.and_then(|b| std::str::from_utf8(b).ok())),
            )));
        }
        columns.extend(self.fields.iter().map(|f| col(&f.name)));
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| file_error(&self.table, e))
    }

    /// The partition directory of a record with this Kafka timestamp.
    fn directory(&self, timestamp_ms: Option<i64>) -> String {
        let Some(ms) = timestamp_ms else {
            return match self.partition_by {
                PartitionBy::None => String::new(),
                _ => "dt=__HIVE_DEFAULT_PARTITION__".into(),
            };
        };
        let (y, m, d) = civil_date(ms.div_euclid(86_400_000));
        match self.partition_by {
            PartitionBy::Date => format!("dt={y:04}-{m:02}-{d:02}"),
            PartitionBy::Hour => format!("dt={y:04}-{m:02}-{d:02}/hr={:02}", ms.rem_euclid(86_400_000) / 3_600_000),
            PartitionBy::None => String::new(),
        }
    }
}

fn file_error(path: &std::path::Path, e: impl std::fmt::Display) -> SinkError {
    SinkError::File { path: path.display().to_string(), message: e.to_string() }
}

/// (year, month, day) of a day count since 1970-01-01, in the proleptic Gregorian calendar
/// (eras of 400 years, each 146097 days long, counted from March 1st).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl crate::Sink for Arc<ParquetSink> {
    fn open(&self, task: &TaskInfo) -> Result<Box<dyn TaskWriter>, SinkError> {
        let name = manifest::file_name(task.batch_id, task.task_id, task.attempt, &self.unique);
        Ok(Box::new(ParquetTaskWriter { sink: self.clone(), name, files: BTreeMap::new() }))
    }
}

struct OpenFile {
    path: PathBuf,
    writer: ArrowWriter<Out>,
    rows: u64,
}

/// Where a task's file is written: straight to a local file, or into memory for HDFS.
enum Out {
    File(File),
    Memory(Vec<u8>),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::File(f) => f.write(buf),
            Out::Memory(m) => m.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::File(f) => f.flush(),
            Out::Memory(_) => Ok(()),
        }
    }
}

struct ParquetTaskWriter {
    sink: Arc<ParquetSink>,
    /// The file name of this attempt, the same in every partition directory.
    name: String,
    /// By partition directory.
    files: BTreeMap<String, OpenFile>,
}

impl ParquetTaskWriter {
    fn write_rows(&mut self, rows: &RecordBatch) -> Result<(), SinkError> {
        let stamps = rows.column_by_name("timestamp_ms").expect("the output schema");
        let stamps = stamps.as_any().downcast_ref::<Int64Array>().expect("int64 timestamps");
        let mut by_dir: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for i in 0..rows.num_rows() {
            by_dir.entry(self.sink.directory(stamps.is_valid(i).then(|| stamps.value(i)))).or_default().push(i as u32);
        }
        for (dir, indices) in by_dir {
            let part = if indices.len() == rows.num_rows() {
                rows.clone()
            } else {
                arrow_select::take::take_record_batch(rows, &UInt32Array::from(indices))
                    .map_err(|e| file_error(&self.sink.table, e))?
            };
            let batch = self.sink.columns(&part)?;
            let file = match self.files.entry(dir.clone()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let dir_path = self.sink.table.join(&dir);
                    let path = dir_path.join(&self.name);
                    let out = if store::is_hdfs(&path) {
                        Out::Memory(Vec::new())
                    } else {
                        std::fs::create_dir_all(&dir_path).map_err(|e| file_error(&dir_path, e))?;
                        Out::File(File::create(&path).map_err(|e| file_error(&path, e))?)
                    };
                    let props = WriterProperties::builder()
                        .set_compression(Compression::ZSTD(ZstdLevel::default()))
                        .set_created_by(format!("embedstream {}", env!("CARGO_PKG_VERSION")))
                        .build();
                    let writer = ArrowWriter::try_new(out, self.sink.schema.clone(), Some(props))
                        .map_err(|e| file_error(&path, e))?;
                    e.insert(OpenFile { path, writer, rows: 0 })
                }
            };
            file.writer.write(&batch).map_err(|e| file_error(&file.path, e))?;
            file.rows += batch.num_rows() as u64;
        }
        Ok(())
    }

    fn close(self) -> Result<TaskOutput, SinkError> {
        let mut out = TaskOutput::default();
        for (dir, file) in self.files {
            let OpenFile { path, writer, rows } = file;
            match writer.into_inner().map_err(|e| file_error(&path, e))? {
                // HDFS makes the file's parent directories and has the file whole at close.
                Out::Memory(bytes) => store::write_new(&path, bytes).map_err(|e| file_error(&path, e))?,
                Out::File(f) => {
                    f.sync_all().map_err(|e| file_error(&path, e))?;
                    // The file's name and any partition directory made for it must be durable
                    // too before the driver lists it in a manifest: sync each directory up to
                    // the table's.
                    let mut dir_path = path.parent();
                    while let Some(d) = dir_path.filter(|d| d.starts_with(&self.sink.table)) {
                        embedstream_core::durable::sync_dir(d).map_err(|e| file_error(d, e))?;
                        dir_path = d.parent();
                    }
                }
            }
            let rel = if dir.is_empty() { self.name.clone() } else { format!("{dir}/{}", self.name) };
            out.files.push(ManifestFile { path: rel, rows });
        }
        Ok(out)
    }
}

impl TaskWriter for ParquetTaskWriter {
    fn write<'a>(&'a mut self, rows: &'a RecordBatch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { tokio::task::block_in_place(|| self.write_rows(rows)) })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<TaskOutput, SinkError>> {
        Box::pin(
            async move { tokio::task::spawn_blocking(move || self.close()).await.expect("closing does not panic") },
        )
    }

    /// Deletes this attempt's files; what a killed attempt leaves, the batch's commit deletes.
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            for file in self.files.into_values() {
                drop(file.writer);
                let _ = store::remove_file(&file.path);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::civil_date;

    #[test]
    fn dates_of_day_numbers() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(-1), (1969, 12, 31));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_516), (2026, 3, 4));
        assert_eq!(civil_date(19_722), (2023, 12, 31));
    }
}
