//! The Delta table's schema and partition values, from the Parquet sink's files: the data
//! columns as the first committed file holds them (its Arrow schema, read from its footer; the
//! file is read whole, local or on HDFS: a task's file is megabytes),
//! then the partition columns (`dt`, `hr`), which Delta keeps out of the files and in each
//! file's `partitionValues`.

use std::collections::HashMap;
use std::path::Path;

use arrow_schema::DataType as ArrowType;
use deltalake_core::kernel::{ArrayType, DataType, StructField};
use embedstream_core::spec::PartitionBy;

/// Hive's name for a partition whose value is null (a record without a timestamp).
const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// The partition columns of a table laid out by `by`.
pub fn partition_columns(by: PartitionBy) -> Vec<String> {
    match by {
        PartitionBy::Date => vec!["dt".into()],
        PartitionBy::Hour => vec!["dt".into(), "hr".into()],
        PartitionBy::None => vec![],
    }
}

/// The Delta columns of the Parquet file `file`, then `partitions` (strings).
pub fn columns(file: &Path, partitions: &[String]) -> Result<Vec<StructField>, String> {
    let bytes = embedstream_core::store::read(file).map_err(|e| e.to_string())?.ok_or("no such file")?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .map_err(|e| e.to_string())?;
    let mut fields = Vec::new();
    for f in builder.schema().fields() {
        let t = delta_type(f.data_type())
            .ok_or_else(|| format!("column `{}`: {} has no Delta type", f.name(), f.data_type()))?;
        fields.push(StructField::new(f.name(), t, f.is_nullable()));
    }
    fields.extend(partitions.iter().map(|p| StructField::new(p, DataType::STRING, true)));
    Ok(fields)
}

/// The Delta type of a column the Parquet sink writes. Timestamps are Delta's `timestamp`
/// (UTC); the files hold them in milliseconds, which every Parquet reader takes as such.
fn delta_type(t: &ArrowType) -> Option<DataType> {
    Some(match t {
        ArrowType::Binary => DataType::BINARY,
        ArrowType::Utf8 => DataType::STRING,
        ArrowType::Int32 => DataType::INTEGER,
        ArrowType::Int64 => DataType::LONG,
        ArrowType::Float32 => DataType::FLOAT,
        ArrowType::Float64 => DataType::DOUBLE,
        ArrowType::Boolean => DataType::BOOLEAN,
        ArrowType::Timestamp(_, Some(_)) => DataType::TIMESTAMP,
        ArrowType::FixedSizeList(item, _) | ArrowType::List(item) => {
            ArrayType::new(delta_type(item.data_type())?, item.is_nullable()).into()
        }
        _ => return None,
    })
}

/// The partition values of a file at `path` (relative to the table: `dt=2026-12-07/part-…`).
pub fn partition_values(path: &str, partitions: &[String]) -> HashMap<String, Option<String>> {
    let mut values: HashMap<String, Option<String>> = partitions.iter().map(|p| (p.clone(), None)).collect();
    for segment in path.split('/') {
        if let Some((name, value)) = segment.split_once('=') {
            if let Some(slot) = values.get_mut(name) {
                *slot = (value != HIVE_NULL).then(|| value.to_string());
            }
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_of_hive_paths() {
        let cols = partition_columns(PartitionBy::Hour);
        let v = partition_values("dt=2026-12-07/hr=05/part-0000000003-00001-0-x.parquet", &cols);
        assert_eq!(v["dt"].as_deref(), Some("2026-12-07"));
        assert_eq!(v["hr"].as_deref(), Some("05"));
        let v = partition_values(&format!("dt={HIVE_NULL}/part-1.parquet"), &partition_columns(PartitionBy::Date));
        assert_eq!(v["dt"], None);
        assert!(partition_values("part-1.parquet", &[]).is_empty());
    }
}
