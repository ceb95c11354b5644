//! Protobuf writer schemas from the registry, and messages decoded with them into JSON.
//!
//! A registry serves a Protobuf schema as `.proto` text (Confluent's) or as a base64
//! `FileDescriptorProto` (what confluent-kafka's Python serializer registers, which Apicurio
//! keeps as it is); either is compiled by protox, with the files its references name and
//! Google's well-known types, into a descriptor pool. A value's message indexes (after the
//! schema id: a count and then the indexes, zigzag varints; a lone 0 for `[0]`) pick the message:
//! the first index a top-level message of the schema's file, each next one a nested message of
//! the one before.

use base64::Engine;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

/// A compiled schema: its pool and the name of its own file there.
#[derive(Debug)]
pub struct ProtoSchema {
    pool: DescriptorPool,
    file: String,
}

/// One `.proto` file by name: the schema's, or one it imports (text or a base64 descriptor).
struct Files(Vec<(String, String)>);

impl FileResolver for Files {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let Some((_, text)) = self.0.iter().find(|(n, _)| n == name) else {
            return Err(protox::Error::file_not_found(name));
        };
        match descriptor(text) {
            Some(proto) => Ok(File::from_file_descriptor_proto(proto)),
            None => File::from_source(name, text),
        }
    }
}

/// The schema text as a `FileDescriptorProto`, when it is one in base64.
fn descriptor(text: &str) -> Option<prost_reflect::prost_types::FileDescriptorProto> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()?;
    prost_reflect::prost::Message::decode(&bytes[..])
        .ok()
        .filter(|f: &prost_reflect::prost_types::FileDescriptorProto| f.name.is_some() || !f.message_type.is_empty())
}

impl ProtoSchema {
    /// Compiles schema `id`'s text with the files its references name (`(import name, text)`).
    pub fn compile(id: u32, text: &str, imports: Vec<(String, String)>) -> Result<ProtoSchema, String> {
        let file = descriptor(text).and_then(|d| d.name).unwrap_or_else(|| format!("schema-{id}.proto"));
        let mut files = imports;
        files.push((file.clone(), text.to_string()));
        let mut resolver = ChainFileResolver::new();
        resolver.add(Files(files));
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler.open_file(&file).map_err(|e| format!("schema id {id} does not compile as Protobuf: {e}"))?;
        Ok(ProtoSchema { pool: compiler.descriptor_pool(), file })
    }

    /// The message a value's indexes name.
    fn message(&self, indexes: &[i64]) -> Option<MessageDescriptor> {
        let file = self.pool.get_file_by_name(&self.file)?;
        let (first, nested) = indexes.split_first()?;
        let mut message = file.messages().nth(usize::try_from(*first).ok()?)?;
        for i in nested {
            let child = message.child_messages().nth(usize::try_from(*i).ok()?)?;
            message = child;
        }
        Some(message)
    }

    /// Decodes `body` (the message indexes, then the message) into JSON, with the fields'
    /// names as the `.proto` file writes them and every field present (unset ones at their
    /// default), 64-bit integers as numbers.
    pub fn decode(&self, id: u32, body: &[u8]) -> Result<serde_json::Value, String> {
        let (indexes, message) = message_indexes(body)
            .ok_or_else(|| format!("value's Protobuf message indexes (schema id {id}) are cut short"))?;
        let descriptor =
            self.message(&indexes).ok_or_else(|| format!("schema id {id} has no message at indexes {indexes:?}"))?;
        let decoded = DynamicMessage::decode(descriptor.clone(), message)
            .map_err(|e| format!("value does not decode as {} (schema id {id}): {e}", descriptor.full_name()))?;
        let options = SerializeOptions::new()
            .use_proto_field_name(true)
            .stringify_64_bit_integers(false)
            .skip_default_fields(false);
        decoded
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| format!("value (schema id {id}) has no JSON form: {e}"))
    }
}

/// The message indexes at the start of `body`, and the message after them.
fn message_indexes(body: &[u8]) -> Option<(Vec<i64>, &[u8])> {
    let (count, mut rest) = zigzag(body)?;
    if count == 0 {
        return Some((vec![0], rest));
    }
    let mut indexes = Vec::new();
    for _ in 0..count.clamp(0, 64) {
        let (index, after) = zigzag(rest)?;
        indexes.push(index);
        rest = after;
    }
    Some((indexes, rest))
}

/// One zigzag-encoded varint and the bytes after it.
fn zigzag(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let mut value: u64 = 0;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((((value >> 1) as i64) ^ -((value & 1) as i64), &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"
        syntax = "proto3";
        package shop;
        import "google/protobuf/timestamp.proto";
        message Other { string x = 1; }
        message Product {
            message Details { string brand = 1; double price = 2; }
            string title = 1;
            Details details = 2;
            repeated string tags = 3;
            map<string, string> attributes = 4;
            google.protobuf.Timestamp listed = 5;
            int64 stock = 6;
        }"#;

    #[test]
    fn message_indexes_are_read_as_confluent_writes_them() {
        assert_eq!(message_indexes(&[0, 9]).unwrap(), (vec![0], &[9u8][..]));
        assert_eq!(message_indexes(&[2, 2, 9]).unwrap(), (vec![1], &[9u8][..]));
        assert_eq!(message_indexes(&[4, 2, 0]).unwrap(), (vec![1, 0], &[][..]));
        assert!(message_indexes(&[4, 2]).is_none());
    }

    #[test]
    fn proto_text_compiles_and_a_nested_message_decodes_to_json() {
        let schema = ProtoSchema::compile(7, SHOP, Vec::new()).unwrap();
        let product = schema.message(&[1]).unwrap();
        assert_eq!(product.full_name(), "shop.Product");
        assert_eq!(schema.message(&[1, 0]).unwrap().full_name(), "shop.Product.Details");
        let json = serde_json::json!({
            "title": "Red shoe", "details": {"brand": "Acme", "price": 2.5}, "tags": ["new"],
            "attributes": {"color": "red"}, "stock": 3
        });
        let message = DynamicMessage::deserialize(product, json).unwrap();
        let mut body = vec![2, 2];
        body.extend(prost_reflect::prost::Message::encode_to_vec(&message));
        let got = schema.decode(7, &body).unwrap();
        assert_eq!(got["title"], "Red shoe");
        assert_eq!(got["details"]["brand"], "Acme");
        assert_eq!(got["tags"][0], "new");
        assert_eq!(got["attributes"]["color"], "red");
        assert_eq!(got["stock"], 3);
        assert!(schema.decode(7, &[2, 2, 0x0a, 0x20, b'x']).unwrap_err().contains("does not decode as shop.Product"));
        assert!(schema.decode(7, &[2, 40]).unwrap_err().contains("no message at indexes [20]"));
        assert!(ProtoSchema::compile(8, "message {", Vec::new()).unwrap_err().contains("does not compile"));
    }
}
