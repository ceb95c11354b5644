//! The columns every sink takes: what a task read from Kafka ([`input_schema`]), its
//! models' vectors ([`output_schema`], one column per [`Output`]) and the input fields written
//! beside them (`[sink] columns`, typed: [`field_type`]), and the vector and field columns
//! themselves. The executor's tasks and Arrow Flight build their rows with these.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use embedstream_core::fields::Cell;
use embedstream_core::spec::{FieldColumn, FieldType};

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

/// One vector column of the rows a task writes: the model that made it (`es.model`, the
/// Parquet `model` column), its version (`es.model_version`, [`Output::version_column`];
/// `embedstream_core::model_version`), the column's name and the vectors' length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub model: String,
    pub version: String,
    pub column: String,
    pub dim: usize,
}

impl Output {
    /// The one `embedding` column of a single model's rows.
    pub fn single(model: &str, version: &str, dim: usize) -> Output {
        Output { model: model.to_string(), version: version.to_string(), column: "embedding".into(), dim }
    }

    /// The table column that holds this output's model version ([`version_column`]).
    pub fn version_column(&self, outputs: &[Output]) -> String {
        version_column(&self.column, outputs.len())
    }
}

/// The table column that holds the model version of the vectors in `column`: `model_version`
/// when the rows have one vector, `<column>_version` when they have several.
pub fn version_column(column: &str, outputs: usize) -> String {
    match outputs {
        1 => "model_version".to_string(),
        _ => format!("{column}_version"),
    }
}

/// With `skip_unchanged`, the last column of the rows a sink takes: each row's input fingerprint
/// (text), which the sink keeps for its key.
pub const INPUT_HASH: &str = "input_hash";

/// `schema` with the [`INPUT_HASH`] column last.
pub fn with_input_hash(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(INPUT_HASH, DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// The columns of a chunk's row (`chunk_pooling = "none"`): its index among its record's
/// chunks, and its span of the text's tokens (first, past the last; special tokens not counted).
pub const CHUNK_COLUMNS: [&str; 3] = ["chunk", "token_start", "token_end"];

/// The rows a task writes: the input record's columns ([`input_schema`]), one vector column per
/// output, in order, with `chunks` (a row a chunk) the [`CHUNK_COLUMNS`] (Int32), then the
/// field `columns` (nullable, of [`field_type`]).
pub fn output_schema(outputs: &[Output], chunks: bool, columns: &[FieldColumn]) -> SchemaRef {
    let input = input_schema();
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(outputs.iter().map(|o| Field::new(&o.column, embedding_type(o.dim), false)));
    if chunks {
        fields.extend(CHUNK_COLUMNS.iter().map(|c| Field::new(*c, DataType::Int32, false)));
    }
    fields.extend(columns.iter().map(field_of));
    Arc::new(Schema::new(fields))
}

/// The Arrow type of a field column: Utf8, Int64, Float64, Boolean, or milliseconds in UTC.
pub fn field_type(ty: FieldType) -> DataType {
    match ty {
        FieldType::Text => DataType::Utf8,
        FieldType::Bigint => DataType::Int64,
        FieldType::Double => DataType::Float64,
        FieldType::Boolean => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
    }
}

/// A field column as a sink's schema has it: nullable (a record may lack the field).
pub fn field_of(column: &FieldColumn) -> Field {
    Field::new(&column.name, field_type(column.ty), true)
}

/// The column of type `ty` of `cells` (one per row; a cell of another type, which
/// `RecordFields` never makes for this column, is null).
pub fn field_array<'a>(ty: FieldType, cells: impl Iterator<Item = &'a Cell>) -> ArrayRef {
    macro_rules! build {
        ($builder:expr, $variant:ident) => {{
            let mut b = $builder;
            for c in cells {
                b.append_option(match c {
                    Cell::$variant(v) => Some(v.clone()),
                    _ => None,
                });
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match ty {
        FieldType::Text => build!(StringBuilder::new(), Text),
        FieldType::Bigint => build!(Int64Builder::new(), Bigint),
        FieldType::Double => build!(Float64Builder::new(), Double),
        FieldType::Boolean => build!(BooleanBuilder::new(), Boolean),
        FieldType::Timestamp => {
            let b = TimestampMillisecondBuilder::new().with_timezone("UTC");
            build!(b, Timestamp)
        }
    }
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

/// Row `i` of a field column ([`field_array`]'s) as its cell.
pub fn cell_at(array: &ArrayRef, i: usize) -> Cell {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
    use arrow_array::Array;
    if array.is_null(i) {
        return Cell::Null;
    }
    match array.data_type() {
        DataType::Utf8 => Cell::Text(array.as_string::<i32>().value(i).to_string()),
        DataType::Int64 => Cell::Bigint(array.as_primitive::<Int64Type>().value(i)),
        DataType::Float64 => Cell::Double(array.as_primitive::<Float64Type>().value(i)),
        DataType::Boolean => Cell::Boolean(array.as_boolean().value(i)),
        DataType::Timestamp(..) => Cell::Timestamp(array.as_primitive::<TimestampMillisecondType>().value(i)),
        other => unreachable!("a field column is never {other}"),
    }
}
