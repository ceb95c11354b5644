//! Avro and Protobuf values in the Confluent wire format (a zero byte, the writer schema's id in
//! four bytes big-endian, for Protobuf the message indexes, then the body), decoded into JSON
//! that `[input] fields` point into.
//!
//! Each value names its own writer schema, so records written with several versions of a
//! subject decode side by side. Schemas are fetched from the registry ([`registry`]) once per id
//! and kept for the executor's life (an id's schema never changes). A value that cannot be
//! decoded (no magic byte, an id the registry does not have, bytes that are not a record of
//! their schema) is a bad record: its reason goes to the dead-letter topic. A registry that
//! does not answer is not: the task fails, to be retried.

pub mod protobuf;
/// The registry client lives with the sinks, which register the Avro output's schema.
pub use embedstream_sinks::registry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use embedstream_core::spec::{InputFormat, JobSpec, Secret};

use registry::{Lookup, Registry, RegistryError};

/// A writer schema, parsed, with the schemas of the named types it takes from other subjects.
enum Writer {
    Avro { schema: apache_avro::Schema, referenced: Vec<apache_avro::Schema> },
    Protobuf(protobuf::ProtoSchema),
}

/// A writer schema made ready to decode values (its named types resolved), for one batch.
enum Reader<'s> {
    Avro(apache_avro::reader::datum::GenericDatumReader<'s>),
    Protobuf(&'s protobuf::ProtoSchema),
}

impl Writer {
    fn reader(&self, id: u32) -> Result<Reader<'_>, String> {
        match self {
            Writer::Avro { schema, referenced } => apache_avro::reader::datum::GenericDatumReader::builder(schema)
                .writer_schemata(referenced.iter().collect())
                .and_then(|b| b.build())
                .map(Reader::Avro)
                .map_err(|e| format!("schema id {id}'s named types do not resolve: {e}")),
            Writer::Protobuf(schema) => Ok(Reader::Protobuf(schema)),
        }
    }
}

pub struct Decoder {
    format: InputFormat,
    registry: Registry,
    /// Parsed schemas by id.
    cache: Mutex<HashMap<u32, Arc<Writer>>>,
}

/// What one value decodes to: the record as JSON, or why it cannot be read.
pub type Decoded = Result<serde_json::Value, String>;

impl Decoder {
    /// The decoder the spec's `[input]` needs, if its values carry schema ids.
    pub fn of(spec: &JobSpec, password: Option<&Secret>) -> Result<Option<Decoder>, RegistryError> {
        let (Some(registry), true) = (&spec.input.schema_registry, spec.input.format.uses_registry()) else {
            return Ok(None);
        };
        apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
        Ok(Some(Decoder {
            format: spec.input.format,
            registry: Registry::new(registry, password)?,
            cache: Mutex::new(HashMap::new()),
        }))
    }

    /// Each value decoded, in order. Fails only when the registry cannot be asked.
    pub async fn decode(&self, values: &[Option<&[u8]>]) -> Result<Vec<Decoded>, RegistryError> {
        let framed: Vec<Result<(u32, &[u8]), String>> = values.iter().map(|v| frame(*v)).collect();
        let mut unknown: HashMap<u32, String> = HashMap::new();
        let mut wanted: Vec<u32> = framed.iter().filter_map(|f| f.as_ref().ok().map(|(id, _)| *id)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        for id in wanted {
            if self.cache.lock().expect("not poisoned").contains_key(&id) {
                continue;
            }
            match self.load(id).await? {
                Ok(writer) => {
                    tracing::info!(id, "schema loaded from the registry");
                    self.cache.lock().expect("not poisoned").insert(id, Arc::new(writer));
                }
                Err(reason) => {
                    unknown.insert(id, reason);
                }
            }
        }
        let writers: HashMap<u32, Arc<Writer>> = {
            let cache = self.cache.lock().expect("not poisoned");
            framed
                .iter()
                .filter_map(|f| f.as_ref().ok())
                .filter_map(|(id, _)| Some((*id, cache.get(id)?.clone())))
                .collect()
        };
        let readers: HashMap<u32, Result<Reader<'_>, String>> =
            writers.iter().map(|(id, w)| (*id, w.reader(*id))).collect();
        Ok(framed
            .into_iter()
            .map(|f| {
                let (id, body) = f?;
                match readers.get(&id) {
                    Some(Ok(reader)) => decode_with(reader, id, body),
                    Some(Err(reason)) => Err(reason.clone()),
                    None => Err(unknown.get(&id).cloned().unwrap_or_else(|| format!("schema id {id} is unknown"))),
                }
            })
            .collect())
    }

    /// Fetches and parses schema `id`: the writer, or why records naming it are bad.
    async fn load(&self, id: u32) -> Result<Result<Writer, String>, RegistryError> {
        let found = match self.registry.schema(id).await? {
            Lookup::Found(s) => s,
            Lookup::Unknown(reason) => return Ok(Err(reason)),
        };
        let want = match self.format {
            InputFormat::Protobuf => "PROTOBUF",
            _ => "AVRO",
        };
        if found.kind != want {
            return Ok(Err(format!(
                "schema id {id} is a {} schema, and input.format is \"{}\"",
                found.kind,
                want.to_lowercase()
            )));
        }
        // What it refers to: Avro's named types, Protobuf's imports (by their import names).
        let mut texts = Vec::new();
        for reference in &found.references {
            match self.registry.referenced(reference, id).await? {
                Lookup::Found(s) => texts.push((reference.name.clone(), s.schema)),
                Lookup::Unknown(reason) => return Ok(Err(reason)),
            }
        }
        if self.format == InputFormat::Protobuf {
            return Ok(protobuf::ProtoSchema::compile(id, &found.schema, texts).map(Writer::Protobuf));
        }
        let texts: Vec<String> = texts.into_iter().map(|(_, text)| text).collect();
        let parsed = if texts.is_empty() {
            apache_avro::Schema::parse_str(&found.schema).map(|schema| Writer::Avro { schema, referenced: Vec::new() })
        } else {
            apache_avro::Schema::parse_str_with_list(&found.schema, &texts)
                .map(|(schema, referenced)| Writer::Avro { schema, referenced })
        };
        let writer = match parsed {
            Ok(w) => w,
            Err(e) => return Ok(Err(format!("schema id {id} is not a valid Avro schema: {e}"))),
        };
        if let Writer::Avro { schema, referenced } = &writer {
            if let Some(path) = std::iter::once(schema).chain(referenced).find_map(|s| unbounded_collection(s, "")) {
                return Ok(Err(format!(
                    "schema id {id} has a collection of items that take no bytes ({path}): a value of a few bytes \
                     could claim millions of them, so its values are not decoded"
                )));
            }
        }
        Ok(Ok(writer))
    }
}

/// The most bytes the Avro decoder may allocate for one string, bytes or collection of a value
/// (apache-avro's default is 512 MiB): a value that claims more is a bad record. Kafka values
/// are megabytes.
const MAX_AVRO_ALLOCATION: usize = 64 << 20;

/// Where (a JSON-pointer-like path) `schema` has an array or map whose items encode in zero
/// bytes (null, an empty record, `fixed` of size 0): its count alone would decide how much a
/// decoder allocates. Other items take at least a byte each, so a value's size bounds them.
fn unbounded_collection(schema: &apache_avro::Schema, at: &str) -> Option<String> {
    use apache_avro::Schema;
    let (items, path) = match schema {
        Schema::Array(a) => (&*a.items, format!("{at}/items")),
        Schema::Map(m) => (&*m.types, format!("{at}/values")),
        Schema::Record(r) => {
            return r.fields.iter().find_map(|f| unbounded_collection(&f.schema, &format!("{at}/{}", f.name)))
        }
        Schema::Union(u) => return u.variants().iter().find_map(|v| unbounded_collection(v, at)),
        _ => return None,
    };
    match takes_no_bytes(items) {
        true => Some(if path.starts_with('/') { path } else { format!("/{path}") }),
        false => unbounded_collection(items, &path),
    }
}

/// Whether every value of `schema` encodes in zero bytes (a named type it refers to by name is
/// taken to take some).
fn takes_no_bytes(schema: &apache_avro::Schema) -> bool {
    use apache_avro::Schema;
    match schema {
        Schema::Null => true,
        Schema::Fixed(f) => f.size == 0,
        Schema::Record(r) => r.fields.iter().all(|f| takes_no_bytes(&f.schema)),
        _ => false,
    }
}

/// The schema id and the body of a value in the Confluent wire format.
fn frame(value: Option<&[u8]>) -> Result<(u32, &[u8]), String> {
    let value = value.ok_or("value is null")?;
    match value {
        [0, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [0, ..] => Err(format!("value is {} bytes, too short for the Confluent wire format's header", value.len())),
        [magic, ..] => Err(format!(
            "value does not start with the Confluent wire format's magic byte 0 (it starts with {magic:#04x}): not written by a schema registry serializer"
        )),
        [] => Err("value is empty".into()),
    }
}

fn decode_with(reader: &Reader<'_>, id: u32, body: &[u8]) -> Decoded {
    match reader {
        Reader::Avro(reader) => {
            let mut rest = Bounded { rest: body, short: false };
            let value = reader
                .read_value(&mut rest)
                .map_err(|e| format!("value does not decode with its Avro schema (id {id}): {e}"))?;
            // apache-avro reads a value cut short as nulls: the reader tells.
            if rest.short {
                return Err(format!(
                    "value does not decode with its Avro schema (id {id}): its {} bytes end before the record does",
                    body.len()
                ));
            }
            if !rest.rest.is_empty() {
                return Err(format!(
                    "value has {} bytes after the record its Avro schema (id {id}) describes",
                    rest.rest.len()
                ));
            }
            serde_json::Value::try_from(value).map_err(|e| format!("value (schema id {id}) has no JSON form: {e}"))
        }
        Reader::Protobuf(schema) => schema.decode(id, body),
    }
}

/// A value's bytes as the Avro decoder reads them, noting a read past their end.
struct Bounded<'a> {
    rest: &'a [u8],
    short: bool,
}

impl std::io::Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.len() > self.rest.len() {
            self.short = true;
        }
        let n = buf.len().min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_header_is_read_or_refused() {
        assert_eq!(frame(Some(&[0, 0, 0, 1, 7, 42])).unwrap(), (263, &[42u8][..]));
        assert!(frame(Some(b"{\"title\": 1}")).unwrap_err().contains("magic byte 0"));
        assert!(frame(Some(&[0, 1])).unwrap_err().contains("too short"));
        assert_eq!(frame(None).unwrap_err(), "value is null");
    }

    #[test]
    fn collections_of_items_without_bytes_are_found() {
        let parse = |s: &str| apache_avro::Schema::parse_str(s).unwrap();
        let nulls = parse(
            r#"{"type": "record", "name": "P", "fields": [
            {"name": "title", "type": "string"},
            {"name": "details", "type": ["null", {"type": "record", "name": "D", "fields": [
                {"name": "marks", "type": {"type": "map", "values": {"type": "array", "items": "null"}}}]}]}]}"#,
        );
        assert_eq!(unbounded_collection(&nulls, "").as_deref(), Some("/details/marks/values/items"));
        let empty = parse(r#"{"type": "array", "items": {"type": "record", "name": "E", "fields": []}}"#);
        assert_eq!(unbounded_collection(&empty, "").as_deref(), Some("/items"));
        let fine = parse(r#"{"type": "array", "items": ["null", "string"]}"#);
        assert_eq!(unbounded_collection(&fine, ""), None, "a union's index takes a byte");
    }

    #[test]
    fn avro_records_decode_to_plain_json() {
        let schema = apache_avro::Schema::parse_str(
            r#"{"type": "record", "name": "P", "fields": [
                {"name": "title", "type": "string"},
                {"name": "brand", "type": ["null", "string"], "default": null},
                {"name": "tags", "type": {"type": "array", "items": "string"}}]}"#,
        )
        .unwrap();
        let record = apache_avro::types::Value::Record(vec![
            ("title".into(), apache_avro::types::Value::String("Red shoe".into())),
            (
                "brand".into(),
                apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::String("Acme".into()))),
            ),
            ("tags".into(), apache_avro::types::Value::Array(vec![apache_avro::types::Value::String("new".into())])),
        ]);
        #[allow(deprecated)] // the encoder that replaces it wants a builder; this is a test value
        let body = apache_avro::to_avro_datum(&schema, record).unwrap();
        let writer = Writer::Avro { schema, referenced: Vec::new() };
        let writer = writer.reader(3).unwrap();
        let json = decode_with(&writer, 3, &body).unwrap();
        assert_eq!(json, serde_json::json!({"title": "Red shoe", "brand": "Acme", "tags": ["new"]}));
        let mut longer = body.clone();
        longer.push(1);
        assert!(decode_with(&writer, 3, &longer).unwrap_err().contains("1 bytes after"));
        for cut in 0..body.len() {
            let got = decode_with(&writer, 3, &body[..cut]);
            assert!(got.as_ref().is_err_and(|e| e.contains("does not decode")), "cut at {cut}: {got:?}");
        }
    }
}
