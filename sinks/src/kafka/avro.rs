//! The Kafka sink's Avro values (`format = "avro"`): the output schema, registered under
//! `<topic>-value` (Confluent's TopicNameStrategy) in the query's Schema Registry, and each
//! output record in the Confluent wire format (a zero byte, the schema id in four bytes
//! big-endian, the Avro binary body), so that Kafka Connect, ksqlDB and any consumer with an
//! `AvroDeserializer` read it without knowing embedstream.
//!
//! The schema: `embedding` (`array<float>`), `model` (string), `origin` (a record of topic,
//! partition, offset), `chunk`, `token_start`, `token_end` (int) when rows are chunks, then
//! `value` and the `sink.columns` fields, each a union of null and its type (`string`, `long`,
//! `double`, `boolean`, `long` with `timestamp-millis`), default null.

use apache_avro::types::Value;
use apache_avro::Schema;
use embedstream_core::fields::Cell;
use embedstream_core::spec::{FieldColumn, FieldType};

use crate::registry::{Registry, RegistryError};

/// The output schema and the id the registry gave it.
pub struct AvroOutput {
    schema: Schema,
    id: u32,
}

/// What an output record carries, in the schema's order.
pub struct AvroRecord<'a> {
    pub vector: &'a [f32],
    pub model: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub chunk: Option<[i32; 3]>,
    /// `value` (when `columns` names it) and the field columns' cells, in the schema's order.
    pub fields: Vec<Cell>,
}

/// The Avro type of a field column.
fn avro_type(ty: FieldType) -> serde_json::Value {
    match ty {
        FieldType::Text => "string".into(),
        FieldType::Bigint => "long".into(),
        FieldType::Double => "double".into(),
        FieldType::Boolean => "boolean".into(),
        FieldType::Timestamp => serde_json::json!({"type": "long", "logicalType": "timestamp-millis"}),
    }
}

/// The output schema as JSON: see the module's header. `value` is the record's value as text.
pub fn schema_json(chunks: bool, with_value: bool, fields: &[FieldColumn]) -> serde_json::Value {
    let mut columns = vec![
        serde_json::json!({"name": "embedding", "type": {"type": "array", "items": "float"}}),
        serde_json::json!({"name": "model", "type": "string"}),
        serde_json::json!({"name": "origin", "type": {"type": "record", "name": "Origin", "fields": [
            {"name": "topic", "type": "string"},
            {"name": "partition", "type": "int"},
            {"name": "offset", "type": "long"}
        ]}}),
    ];
    if chunks {
        columns.extend(["chunk", "token_start", "token_end"].map(|c| serde_json::json!({"name": c, "type": "int"})));
    }
    let nullable =
        |name: &str, ty: serde_json::Value| serde_json::json!({"name": name, "type": ["null", ty], "default": null});
    if with_value {
        columns.push(nullable("value", "string".into()));
    }
    columns.extend(fields.iter().map(|f| nullable(&f.name, avro_type(f.ty))));
    serde_json::json!({"type": "record", "name": "Embedding", "namespace": "embedstream", "fields": columns})
}

impl AvroOutput {
    /// Registers the schema under `subject` (or finds it there) and parses it.
    pub async fn register(
        registry: &Registry,
        subject: &str,
        schema: &serde_json::Value,
    ) -> Result<AvroOutput, RegistryError> {
        let id = registry.register(subject, &schema.to_string()).await?;
        let schema = Schema::parse(schema).map_err(|e| RegistryError::Register {
            url: String::new(),
            subject: subject.into(),
            reason: format!("the output schema does not parse: {e}"),
        })?;
        Ok(AvroOutput { schema, id })
    }

    /// The id the registry gave the schema.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// One record's value in the Confluent wire format.
    pub fn encode(&self, record: AvroRecord<'_>) -> Vec<u8> {
        let mut columns = vec![
            ("embedding".to_string(), Value::Array(record.vector.iter().map(|&x| Value::Float(x)).collect())),
            ("model".to_string(), Value::String(record.model.into())),
            (
                "origin".to_string(),
                Value::Record(vec![
                    ("topic".into(), Value::String(record.topic.into())),
                    ("partition".into(), Value::Int(record.partition)),
                    ("offset".into(), Value::Long(record.offset)),
                ]),
            ),
        ];
        if let Some(c) = record.chunk {
            columns.extend(
                ["chunk", "token_start", "token_end"].into_iter().zip(c).map(|(n, v)| (n.into(), Value::Int(v))),
            );
        }
        let names: Vec<String> = match &self.schema {
            Schema::Record(r) => r.fields.iter().skip(columns.len()).map(|f| f.name.clone()).collect(),
            _ => unreachable!("the output schema is a record"),
        };
        for (name, cell) in names.into_iter().zip(record.fields) {
            let value = match cell {
                Cell::Null => Value::Union(0, Box::new(Value::Null)),
                Cell::Text(t) => Value::Union(1, Box::new(Value::String(t))),
                Cell::Bigint(v) => Value::Union(1, Box::new(Value::Long(v))),
                Cell::Double(v) => Value::Union(1, Box::new(Value::Double(v))),
                Cell::Boolean(v) => Value::Union(1, Box::new(Value::Boolean(v))),
                Cell::Timestamp(ms) => Value::Union(1, Box::new(Value::TimestampMillis(ms))),
            };
            columns.push((name, value));
        }
        let mut out = Vec::with_capacity(5 + 4 * record.vector.len() + 64);
        out.push(0);
        out.extend(self.id.to_be_bytes());
        apache_avro::writer::datum::GenericDatumWriter::builder(&self.schema)
            .build()
            .and_then(|w| w.write_value(&mut out, Value::Record(columns)))
            .expect("a record built from the schema's own fields encodes");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_with_the_schema_they_name() {
        let fields = [
            FieldColumn { name: "price".into(), ty: FieldType::Double },
            FieldColumn { name: "since".into(), ty: FieldType::Timestamp },
        ];
        let json = schema_json(false, true, &fields);
        let out = AvroOutput { schema: Schema::parse(&json).unwrap(), id: 7 };
        let bytes = out.encode(AvroRecord {
            vector: &[0.5, -1.0],
            model: "m",
            topic: "items",
            partition: 1,
            offset: 42,
            chunk: None,
            fields: vec![Cell::Text("{\"a\":1}".into()), Cell::Double(2.5), Cell::Null],
        });
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 7]);
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(&out.schema).build().unwrap();
        let back = reader.read_value(&mut &bytes[5..]).unwrap();
        let back = serde_json::Value::try_from(back).unwrap();
        assert_eq!(back["embedding"], serde_json::json!([0.5, -1.0]));
        assert_eq!(back["origin"]["offset"], 42);
        assert_eq!(back["price"], 2.5);
        assert_eq!(back["since"], serde_json::Value::Null);
        assert_eq!(back["value"], "{\"a\":1}");
    }
}
